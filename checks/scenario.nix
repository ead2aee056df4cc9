# One NixOS VM test: a scenario of tests/fixtures/scenarios.nix, deployed by
# deploy-flake from `deployer` to `target1` while `target2` takes the
# healthy change (healthy-v2) in the same run, in parallel. Afterwards both
# targets reboot, which must bring up exactly what the system profile says.
#
# Offline by construction: no substituters anywhere. The deploy builds on
# the targets, so each target's store is given, at VM build time, nixpkgs'
# source and the prebuilt toplevels of the configurations it will receive
# (see fleet/configurations.nix): the build on the target evaluates the
# archived fleet flake, finds the result already valid, and builds nothing.
# (`system.includeBuildDependencies` would let the targets really build,
# but drags a whole bootstrap toolchain into every VM image.)
{ pkgs, nixpkgs, self, name, scenario }:
let
  inherit (pkgs) lib;
  system = pkgs.stdenv.hostPlatform.system;
  targets = [ "target1" "target2" ];

  success = scenario.expect.result == "success";
  exitCode = scenario.expect.exitCode or (if success then 0 else 1);
  precondition = scenario.precondition or null;

  # What each target runs before the deploy under test (null: the VM's own
  # first system) and what it is given.
  plan = {
    target1 = { from = scenario.from; to = scenario.configuration; inherit (scenario) expect; };
    target2 = {
      from = scenario.from;
      to = "healthy-v2";
      expect = { result = "success"; running = "configuration"; boot = "configuration"; };
    };
  };

  configurations = lib.unique (lib.filter (c: c != null)
    (lib.concatMap (t: [ plan.${t}.from plan.${t}.to ]) targets));

  # deployFlake hosts: `<target>-from` (tag "from") sets up the starting
  # configuration; `<target>` (tag "to") is the deploy under test.
  hosts = lib.foldl' (acc: t: acc
    // { ${t} = { hostname = t; configuration = "${t}-${plan.${t}.to}"; tags = [ "to" ]; }; }
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
          defaults.timeouts = { build = 1800; activate = 120; };
          hosts = builtins.fromJSON (builtins.readFile ./hosts.json);
        };

        checks."${system}".deploy = deploy-flake.lib.deployChecks {
          inherit self;
          system = "${system}";
        };
      };
    }
  '';
in
pkgs.testers.runNixOSTest ({ config, ... }:
let
  # The test framework's network module of each target, as plain data: the
  # fleet flake reads the same values back from JSON.
  network = lib.genAttrs targets (t: config.nodes.${t}.system.build.networkConfig);

  fleetConfigurations = import ./fleet/configurations.nix {
    inherit nixpkgs system network configurations;
  };

  # The keys exactly as the deployed configurations build them (not as this
  # test's pkgs would): nodes, deployer and fleet share one derivation.
  keys = fleetConfigurations."target1-${plan.target1.to}".config.system.build.deployFlakeTestKeys;

  toplevel = t: c:
    if c == null then config.nodes.${t}.system.build.toplevel
    else fleetConfigurations."${t}-${c}".config.system.build.toplevel;

  fleetSrc = pkgs.runCommand "deploy-flake-vm-fleet" { } ''
    mkdir -p $out
    cp ${fleetFlake} $out/flake.nix
    cp ${./fleet/configurations.nix} $out/configurations.nix
    cp ${./fleet/target-base.nix} $out/target-base.nix
    cp ${./fleet/keys.nix} $out/keys.nix
    cp -r ${./fleet/configurations} $out/configurations
    cp ${pkgs.writeText "configurations.json" (builtins.toJSON configurations)} $out/configurations.json
    cp ${pkgs.writeText "hosts.json" (builtins.toJSON hosts)} $out/hosts.json
    ${lib.concatMapStrings (t: ''
      cp ${pkgs.writeText "network-${t}.json" (builtins.toJSON network.${t})} $out/network-${t}.json
    '') targets}
  '';

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

  targetNode = t: {
    imports = [ ./fleet/target-base.nix ];
    demo.version = "initial";
    deployFlakeTest.keys = keys;
    virtualisation.additionalPaths = [ "${nixpkgs}" ]
      ++ map (c: toplevel t c) (lib.filter (c: c != null) [ plan.${t}.from plan.${t}.to ]);
  };
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
        publicKeyFile = "${keys}/${t}.pub";
      });
      virtualisation = {
        memorySize = 1536;
        cores = 2;
        diskSize = 4096;
        # The fleet flake; its closure holds nixpkgs' and deploy-flake's source.
        additionalPaths = [ fleetSrc ];
      };
    };
    target1 = targetNode "target1";
    target2 = targetNode "target2";
  };

  testScript = ''
    import json

    expected = json.loads(${builtins.toJSON (builtins.toJSON expected)})
    machines = {"target1": target1, "target2": target2}


    def deploy(selection):
        # A deploy includes evaluating NixOS on each target VM: allow more
        # than execute()'s default timeout.
        status, out = deployer.execute(
            f"deploy-flake --flake /root/fleet {selection} 2>&1", timeout=1800
        )
        print(out)
        return status, out


    def current(m):
        return m.succeed("readlink /run/current-system").strip()


    def profile(m):
        return m.succeed("readlink -f /nix/var/nix/profiles/system").strip()


    start_all()
    deployer.wait_for_unit("multi-user.target")
    for m in machines.values():
        m.wait_for_unit("sshd.service")

    deployer.succeed(
        "install -Dm600 ${keys}/deployer /root/.ssh/id_ed25519",
        "cp -r ${fleetSrc} /root/fleet && chmod -R u+w /root/fleet",
        "nix --extra-experimental-features 'nix-command flakes' flake lock /root/fleet",
    )
    for t in machines:
        deployer.wait_until_succeeds(f"ssh -o BatchMode=yes root@{t} true", timeout=120)

    ${lib.optionalString (scenario.from != null) ''
      with subtest("deploy the starting configuration (${scenario.from})"):
          status, _ = deploy("@from")
          assert status == 0, f"setting up ${scenario.from} exited {status}"
          for t, m in machines.items():
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

    with subtest("each target runs what the scenario expects"):
        for t, m in machines.items():
            e = expected[t]
            # A target that rolls itself back may still be doing so.
            m.wait_until_succeeds(
                f'test "$(readlink /run/current-system)" = {e["running"]}', timeout=300
            )
            m.wait_until_succeeds(f"grep -qx {e['runningName']} /run/demo-web/version", timeout=60)
            m.succeed("systemctl is-active demo-web.service")
            if e["checkBoot"]:
                assert profile(m) == e["boot"], f"{t}: system profile is {profile(m)}"
        for t in machines:
            deployer.wait_until_succeeds(f"ssh -o BatchMode=yes root@{t} true", timeout=120)

    with subtest("a reboot comes up in the system profile"):
        for t, m in machines.items():
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
