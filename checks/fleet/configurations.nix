# The fleet's nixosConfigurations: `<target>-<configuration>` for every
# target and each configuration it may be sent (`configurations.<target>`,
# names of modules under ./configurations). Used twice with the same
# arguments: by the VM tests (to prebuild the toplevels into the targets'
# stores) and by the fleet flake that deploy-flake archives to the targets.
# Equal inputs give equal toplevels, so the build on the target finds its
# result already present and needs no network.
#
# `network.<target>` is the test framework's network module of that node
# (addresses, /etc/hosts), as data.
{ nixpkgs, system, network, configurations }:
let
  mk = target: configuration:
    import "${nixpkgs}/nixos/lib/eval-config.nix" {
      system = null;
      modules = [
        "${nixpkgs}/nixos/modules/virtualisation/qemu-vm.nix"
        "${nixpkgs}/nixos/modules/testing/test-instrumentation.nix"
        network.${target}
        ./target-base.nix
        (./configurations + "/${configuration}.nix")
        {
          nixpkgs.hostPlatform = system;
          networking.hostName = target;
        }
      ];
    };
in
builtins.listToAttrs (builtins.concatMap
  (target: map
    (configuration: {
      name = "${target}-${configuration}";
      value = mk target configuration;
    })
    configurations.${target})
  (builtins.attrNames configurations))
