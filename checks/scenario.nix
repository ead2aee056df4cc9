# One NixOS VM test: a scenario of tests/fixtures/scenarios.nix, deployed by
# deploy-flake from `deployer` to `target1` while `target2` takes the
# healthy change (healthy-v2) in the same run, in parallel (see `plans` in
# default.nix). Afterwards both targets reboot, which must bring up exactly
# what the system profile says.
#
# Offline by construction: no substituters anywhere. The deploy builds on
# the targets, so each target's store is given, at VM build time, nixpkgs'
# source and the prebuilt toplevels of the configurations it can be sent
# (see fleet/configurations.nix): the build on the target evaluates the
# archived fleet flake, finds the result already valid, and builds nothing.
# (`system.includeBuildDependencies` would let the targets really build,
# but drags a whole bootstrap toolchain into every VM image.)
#
# Signatures: the VM test framework registers each VM's store paths from a
# closure-info registration (nixpkgs' pkgs/build-support/closure-info.nix:
# path, NAR hash and size, references), so they carry no signature and no
# content address. The fleet flake's `path:` inputs name such paths, which
# Nix reuses as they are, and each target (which requires signatures, as
# NixOS does by default) lacks deploy-flake's source: every deploy here
# copies an unsigned input to a target, which works only if deploy-flake
# copies over a trusted session without signature checks. The script checks
# both ends of that.
{ pkgs, nixpkgs, self, name, scenario, plan, fleet }:
let
  inherit (pkgs) lib;
  system = pkgs.stdenv.hostPlatform.system;
  inherit (fleet) targets;
  keys = import ./fleet/keys;

  success = scenario.expect.result == "success";
  exitCode = scenario.expect.exitCode or (if success then 0 else 1);
  precondition = scenario.precondition or null;

  # The fleet's timeouts, and what the script waits for accordingly. The
  # agent gives up on an activation after `activate` seconds (the deployer
  # aborts it 15 s later); the rollback that follows is bounded by
  # max(activate, 300) s and cannot be aborted, so a target may still be
  # rolling back for that long after the deployer reports.
  timeouts = { build = 1800; activate = 120; };
  rollbackBound = lib.max timeouts.activate 300;

  # deployFlake hosts: `<target>-from` (tag "from") sets up the starting
  # configuration; `<target>` (tag "to") is the deploy under test.
  hosts = lib.foldl' (acc: t: acc
    // { ${t} = { hostname = t; configuration = "${t}-${plan.${t}.to}"; tags = [ "to" ]; }
      // lib.optionalAttrs (t == "target1") { keys = scenario.keys or { }; }; }
    // lib.optionalAttrs (plan.${t}.from != null) {
      "${t}-from" = { hostname = t; configuration = "${t}-${plan.${t}.from}"; tags = [ "from" ]; };
    })
    { }
    targets;

  fleetFlake = pkgs.writeText "flake.nix" ''
    {
      inputs.nixpkgs.url = "path:${nixpkgs}";
      inputs.deploy-flake.url = "path:${self}";
      inputs.deploy-flake.inputs.nixpkgs.follows = "nixpkgs";

      outputs = { self, nixpkgs, deploy-flake }: {
        nixosConfigurations = import ./configurations.nix {
          inherit nixpkgs;
          system = "${system}";
          network = {
            ${lib.concatMapStrings (t: ''
              ${t} = builtins.fromJSON (builtins.readFile ./network-${t}.json);
            '') targets}
          };
          configurations = builtins.fromJSON (builtins.readFile ./configurations.json);
        };

        deployFlake = deploy-flake.lib.mkDeployFlake {
          inherit self;
          defaults.timeouts = { build = ${toString timeouts.build}; activate = ${toString timeouts.activate}; };
          hosts = builtins.fromJSON (builtins.readFile ./hosts.json);
        };

        checks."${system}".deploy = deploy-flake.lib.deployChecks {
          inherit self;
          system = "${system}";
        };
      };
    }
  '';

  toplevelOf = t: c: fleet.nixosConfigurations."${t}-${c}".config.system.build.toplevel;

  fleetSrc = pkgs.runCommand "deploy-flake-vm-fleet" { } ''
    mkdir -p $out
    cp ${fleetFlake} $out/flake.nix
    cp ${./fleet/configurations.nix} $out/configurations.nix
    cp ${./fleet/target-base.nix} $out/target-base.nix
    cp -r ${./fleet/keys} $out/keys
    cp -r ${./fleet/configurations} $out/configurations
    cp ${pkgs.writeText "configurations.json" (builtins.toJSON fleet.configurations)} $out/configurations.json
    cp ${pkgs.writeText "hosts.json" (builtins.toJSON hosts)} $out/hosts.json
    ${lib.concatMapStrings (t: ''
      cp ${pkgs.writeText "network-${t}.json" (builtins.toJSON fleet.network.${t})} $out/network-${t}.json
    '') targets}
  '';

  # Nothing here depends on the scenario, so each target's VM and disk
  # image are the same in every check and built once for all of them.
  targetNode = t: {
    imports = [ ./fleet/target-base.nix ];
    demo.version = "initial";
    # nixpkgs' source (the fleet flake's input, evaluated on the target)
    # and the prebuilt toplevel of every configuration this target can be
    # sent, in any scenario.
    virtualisation.additionalPaths = [ "${nixpkgs}" ]
      ++ map (toplevelOf t) fleet.configurations.${t};
  };

  # What the deploy under test must print, where a scenario says more than
  # its exit code and the targets' state can show (one line of Python).
  outputChecks = {
    chatty-activation = ''assert_lines(out, "chatty activation line ", 3000)'';
    escapes-in-failure = ''assert "\x1b" not in out and "\x07" not in out and r"refusing \x1b]0;pwned\x07 \x1b[2J here" in out, "the refusal's escapes reached the output raw, or not at all"'';
    prints-escapes = ''assert "\x1b" not in out and "\x07" not in out and r"title \x1b]0;pwned\x07 clear" in out, "escapes reached the output raw, or not at all"'';
  };

  # What a scenario leaves on target1 beyond what it runs and boots (one
  # line of Python).
  targetChecks = {
    needs-key = ''assert target1.succeed("cat /run/demo-keys/seen").strip() == "demo-key-content" and target1.succeed("stat -c '%U:%G %a' /run/keys/demo-key").strip() == "nobody:keys 440", "the service did not read its key, or the key's owner or mode is wrong"'';
  };
in
pkgs.testers.runNixOSTest ({ config, ... }:
let
  toplevel = t: c: if c == null then config.nodes.${t}.system.build.toplevel else toplevelOf t c;

  # The fleet's configurations were evaluated with the network of default.nix's
  # probe; this test's nodes must have the same.
  networkAgrees = lib.all (t: config.nodes.${t}.system.build.networkConfig == fleet.network.${t}) targets;

  # Per target: the toplevels and demo-web versions to expect.
  expected = lib.genAttrs targets (t:
    let
      p = plan.${t};
      pick = which: if which == "configuration" then p.to else p.from;
      nameOf = c: if c == null then "initial" else c;
    in
    {
      from = toString (toplevel t p.from);
      running = toString (toplevel t (pick p.expect.running));
      runningName = nameOf (pick p.expect.running);
      boot = toString (toplevel t (pick p.expect.boot));
      bootName = nameOf (pick p.expect.boot);
      # Before any deploy the profile may not name the VM's first system.
      checkBoot = pick p.expect.boot != null;
    });

  # The fleet flake's inputs as the script must find them locked.
  inputs = { deploy-flake = "${self}"; nixpkgs = "${nixpkgs}"; };
in
{
  name = "deploy-flake-${name}";

  nodes = {
    deployer = { lib, ... }: {
      documentation.enable = false;
      environment.systemPackages = [ self.packages.${system}.deploy-flake ];
      nix.settings = {
        experimental-features = [ "nix-command" "flakes" ];
        substituters = lib.mkForce [ ];
      };
      programs.ssh.knownHosts = lib.genAttrs targets (t: {
        hostNames = [ t ];
        publicKey = keys.hosts.${t}.public;
      });
      virtualisation = {
        memorySize = 1536;
        cores = 2;
        diskSize = 4096;
        # The fleet flake; its closure holds nixpkgs' and deploy-flake's
        # source (registered unsigned, as every VM's additional paths).
        additionalPaths = [ fleetSrc ];
      };
    };
    target1 = targetNode "target1";
    target2 = targetNode "target2";
  };

  testScript =
    assert lib.assertMsg networkAgrees
      "checks/scenario.nix: the nodes of vm-${name} do not get the network the fleet's configurations were evaluated with (checks/default.nix)";
    ''
    import json

    expected = json.loads(${builtins.toJSON (builtins.toJSON expected)})
    inputs = json.loads(${builtins.toJSON (builtins.toJSON inputs)})
    # (Not `machines`: the driver defines that name, a list of every VM.)
    targets = {"target1": target1, "target2": target2}
    NIX = "nix --extra-experimental-features 'nix-command flakes'"


    def deploy(selection):
        # A deploy includes evaluating NixOS on each target VM: allow more
        # than execute()'s default timeout. -v logs every command it runs.
        status, out = deployer.execute(
            f"deploy-flake -v --flake /root/fleet {selection} 2> /tmp/deploy-flake.log",
            timeout=${toString (timeouts.build + 600)},
        )
        print(out)
        print(deployer.succeed("cat /tmp/deploy-flake.log"))
        return status, out


    def current(m):
        return m.succeed("readlink /run/current-system").strip()


    def profile(m):
        return m.succeed("readlink -f /nix/var/nix/profiles/system").strip()


    def valid(m, path):
        return m.execute(f"nix-store --check-validity {path}")[0] == 0


    def unsigned(m, path):
        # Neither a signature nor a content address: the kind of path a
        # target that requires signatures refuses from an untrusted copy.
        # (`path-info --json` gives a list before Nix 2.19, an object since.)
        info = json.loads(m.succeed(f"{NIX} path-info --json {path}"))
        info = info[0] if isinstance(info, list) else info[path]
        return not info.get("signatures") and not info.get("ca")


    def assert_lines(out, text, count):
        lines = [line for line in out.splitlines() if text in line]
        assert len(lines) == count, f"{len(lines)} of {count} lines with {text!r} reached the deployer"


    def locked_inputs():
        # The fleet's inputs as locked, by name: {"nixpkgs": path, ...}
        # (without --to, `flake archive` only fetches, into the local store).
        archive = json.loads(deployer.succeed(f"{NIX} flake archive --json /root/fleet"))
        return {name: i["path"] for name, i in archive["inputs"].items()}


    start_all()
    deployer.wait_for_unit("multi-user.target")
    for m in targets.values():
        m.wait_for_unit("sshd.service")

    deployer.succeed(
        "install -Dm600 ${keys.deployer.private} /root/.ssh/id_ed25519",
        "cp -r ${fleetSrc} /root/fleet && chmod -R u+w /root/fleet",
        f"{NIX} flake lock /root/fleet",
    )
    for t in targets:
        deployer.wait_until_succeeds(f"ssh -o BatchMode=yes root@{t} true", timeout=120)

    with subtest("the fleet's inputs reach the targets unsigned"):
        locked = locked_inputs()
        assert locked == inputs, f"the fleet's inputs are locked as {locked}, not {inputs}"
        for name, path in locked.items():
            assert unsigned(deployer, path), f"{name} ({path}) is signed or content-addressed"
        # What each deploy must copy to a target that requires signatures.
        to_copy: dict[str, list[str]] = {}
        for t, m in targets.items():
            m.succeed("grep -qx 'require-sigs = true' /etc/nix/nix.conf")
            to_copy[t] = [p for p in locked.values() if not valid(m, p)]
            assert to_copy[t], f"{t} already holds every input: nothing unsigned is copied"

    ${lib.optionalString (scenario.from != null) ''
      with subtest("deploy the starting configuration (${scenario.from})"):
          status, _ = deploy("@from")
          assert status == 0, f"setting up ${scenario.from} exited {status}"
          for t, m in targets.items():
              assert current(m) == expected[t]["from"], f"{t} runs {current(m)}"
    ''}

    ${lib.optionalString (precondition == "degraded") ''
      with subtest("precondition: target1 is degraded"):
          target1.execute(
              "systemd-run --unit=deploy-flake-test-degraded --property=Type=oneshot /run/current-system/sw/bin/false"
          )
          target1.wait_until_succeeds('test "$(systemctl is-system-running)" = degraded')
    ''}
    ${lib.optionalString (precondition != null && precondition != "degraded")
      (throw "checks/scenario.nix: unknown precondition ${builtins.toJSON precondition} in scenario ${name}")}

    with subtest("deploy ${name}: ${lib.escape [ "\"" "\\" ] scenario.description}"):
        status, out = deploy("@to")
        assert status == ${toString exitCode}, f"deploy-flake exited {status}, expected ${toString exitCode}"
        ${lib.optionalString (precondition == "degraded") ''
          assert "deploy-flake-test-degraded" in out, "preflight did not name the failed unit"
        ''}
        ${outputChecks.${name} or ""}

    with subtest("each target runs what the scenario expects"):
        for t, m in targets.items():
            e = expected[t]
            # A target that rolls itself back may still be doing so.
            m.wait_until_succeeds(
                f'test "$(readlink /run/current-system)" = {e["running"]}',
                timeout=${toString (rollbackBound + 60)},
            )
            m.wait_until_succeeds(f"grep -qx {e['runningName']} /run/demo-web/version", timeout=60)
            m.succeed("systemctl is-active demo-web.service")
            if e["checkBoot"]:
                assert profile(m) == e["boot"], f"{t}: system profile is {profile(m)}"
        for t in targets:
            deployer.wait_until_succeeds(f"ssh -o BatchMode=yes root@{t} true", timeout=120)
        ${targetChecks.${name} or ""}

    with subtest("the targets took the unsigned inputs as they are"):
        for t, m in targets.items():
            for path in to_copy[t]:
                assert valid(m, path), f"{t} never received {path}"
                assert unsigned(m, path), f"{t} holds {path} signed or content-addressed"

    with subtest("a reboot comes up in the system profile"):
        for t, m in targets.items():
            e = expected[t]
            if not e["checkBoot"]:
                continue
            m.shutdown()
            m.start()
            m.wait_for_unit("multi-user.target")
            booted = m.succeed("readlink /run/booted-system").strip()
            assert booted == e["boot"], f"{t} booted {booted}"
            assert current(m) == e["boot"], f"{t} runs {current(m)}"
            m.succeed(f"grep -qx {e['bootName']} /run/demo-web/version")
  '';
})
