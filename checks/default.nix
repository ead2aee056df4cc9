# NixOS VM tests of full deploys: one test per scenario of
# tests/fixtures/scenarios.nix (the list the lab tests read too, so both
# suites stay in step), named `vm-<scenario>`. Each test boots a deployer and
# two targets, offline; see scenario.nix.
#
# Every configuration a scenario names is a NixOS module in
# fleet/configurations/<name>.nix: a scenario without one fails evaluation.
{ pkgs, nixpkgs, self }:
let
  inherit (pkgs) lib;
  scenarios = import ../tests/fixtures/scenarios.nix;

  available = map (lib.removeSuffix ".nix")
    (lib.attrNames (lib.filterAttrs (f: type: type == "regular" && lib.hasSuffix ".nix" f)
      (builtins.readDir ./fleet/configurations)));

  used = lib.unique (lib.concatMap
    (s: [ s.configuration ] ++ lib.optional (s.from != null) s.from)
    (lib.attrValues scenarios));

  missing = lib.subtractLists available used;
in
assert lib.assertMsg (missing == [ ])
  "checks/fleet/configurations/ has no module for ${lib.concatStringsSep ", " missing}, used by tests/fixtures/scenarios.nix";
lib.mapAttrs'
  (name: scenario: lib.nameValuePair "vm-${name}"
    (import ./scenario.nix { inherit pkgs nixpkgs self name scenario; }))
  scenarios
