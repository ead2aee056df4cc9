# What every target configuration shares, in the VM nodes and in the fleet
# flake alike: sshd with a pinned host key, the deployer's key for root,
# offline Nix with flakes, a real boot loader (so a reboot boots whatever
# `switch-to-configuration boot` installed), and the demo service the
# scenarios change.
{ config, lib, ... }:
let
  # Committed test-only keys (see keys/default.nix): no build, no IFD.
  keys = import ./keys;
in
{
  options.demo.version = lib.mkOption {
    type = lib.types.str;
    description = "What demo-web.service writes to /run/demo-web/version: the configuration's name.";
  };

  config = {
    system.stateVersion = lib.trivial.release;
    documentation.enable = false;

    services.openssh = {
      enable = true;
      settings.PermitRootLogin = "prohibit-password";
      hostKeys = [{ type = "ed25519"; path = "/etc/ssh/ssh_host_ed25519_key"; }];
    };
    environment.etc."ssh/ssh_host_ed25519_key" = {
      source = keys.hosts.${config.networking.hostName}.private;
      mode = "0600";
    };
    users.users.root.openssh.authorizedKeys.keys = [ keys.deployer.public ];

    nix.settings = {
      experimental-features = [ "nix-command" "flakes" ];
      substituters = lib.mkForce [ ];
    };

    # With a boot loader, qemu-vm.nix boots a disk image made by
    # nixos/lib/make-disk-image.nix that holds the whole store (the
    # system's closure and `virtualisation.additionalPaths`, registered
    # without signatures), so what a deploy adds survives a reboot. Its root
    # filesystem is sized to its contents (`diskSize = "auto"`,
    # `additionalSpace = "0M"`); `diskSize` here only sizes the qcow2
    # overlay the VM writes to, which must not be smaller than that image
    # (the overlay is sparse: a larger size costs nothing).
    virtualisation = {
      memorySize = 2048;
      cores = 2;
      diskSize = 8192;
      useBootLoader = true;
      useEFIBoot = true;
    };
    boot.loader.systemd-boot.enable = true;
    boot.loader.efi.canTouchEfiVariables = true;

    systemd.services.demo-web = {
      description = "deploy-flake demo service";
      wantedBy = [ "multi-user.target" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        RuntimeDirectory = "demo-web";
        RuntimeDirectoryPreserve = true;
      };
      script = "echo ${lib.escapeShellArg config.demo.version} > /run/demo-web/version";
    };
  };
}
