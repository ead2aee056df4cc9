# NixOS VM tests of full deploys: one test per scenario of
# tests/fixtures/scenarios.nix (the list the lab tests read too, so both
# suites stay in step), named `vm-<scenario>`. Each test boots a deployer and
# two targets, offline; see scenario.nix.
#
# Every configuration a scenario names is a NixOS module in
# fleet/configurations/<name>.nix: a scenario without one fails evaluation.
#
# What the tests share, so that `nix flake check` fits a CI runner (see the
# README, "What `nix flake check` needs for the NixOS VM tests"): the
# fleet's NixOS configurations are evaluated once for all scenarios, and
# each target node is the same in every scenario. A target's disk image
# holds the toplevel of every configuration it can be sent in any scenario,
# so the checks build one image per target (two in all) instead of one per
# target and scenario.
{ pkgs, nixpkgs, self }:
let
  inherit (pkgs) lib;
  system = pkgs.stdenv.hostPlatform.system;
  scenarios = import ../tests/fixtures/scenarios.nix;
  targets = [ "target1" "target2" ];

  available = map (lib.removeSuffix ".nix")
    (lib.attrNames (lib.filterAttrs (f: type: type == "regular" && lib.hasSuffix ".nix" f)
      (builtins.readDir ./fleet/configurations)));

  used = lib.unique (lib.concatMap
    (s: [ s.configuration ] ++ lib.optional (s.from != null) s.from)
    (lib.attrValues scenarios));

  missing = lib.subtractLists available used;

  # Per scenario and target: what it runs before the deploy under test
  # (null: the VM's own first system), what it is sent, and what must
  # follow. target1 takes the scenario's configuration while target2 takes
  # the healthy change (healthy-v2) in the same run, in parallel.
  plans = lib.mapAttrs
    (_: scenario: {
      target1 = { from = scenario.from; to = scenario.configuration; inherit (scenario) expect; };
      target2 = {
        from = scenario.from;
        to = "healthy-v2";
        expect = { result = "success"; running = "configuration"; boot = "configuration"; };
      };
    })
    scenarios;

  # Every configuration each target can be sent, in any scenario.
  configurations = lib.genAttrs targets (t: lib.unique (lib.filter (c: c != null)
    (lib.concatMap (plan: [ plan.${t}.from plan.${t}.to ]) (lib.attrValues plans))));

  # The test framework's network module of each target node, as data. It
  # depends only on the nodes' names, so one evaluation serves every
  # scenario (scenario.nix checks that its own nodes get the same).
  probe = pkgs.testers.runNixOSTest {
    name = "deploy-flake-network";
    nodes = lib.genAttrs ([ "deployer" ] ++ targets) (_: { });
    testScript = "";
  };
  network = lib.genAttrs targets (t: probe.nodes.${t}.system.build.networkConfig);

  fleet = {
    inherit targets configurations network;
    nixosConfigurations = import ./fleet/configurations.nix {
      inherit nixpkgs system network configurations;
    };
  };
in
assert lib.assertMsg (missing == [ ])
  "checks/fleet/configurations/ has no module for ${lib.concatStringsSep ", " missing}, used by tests/fixtures/scenarios.nix";
lib.mapAttrs'
  (name: scenario: lib.nameValuePair "vm-${name}"
    (import ./scenario.nix {
      inherit pkgs nixpkgs self name scenario fleet;
      plan = plans.${name};
    }))
  scenarios
