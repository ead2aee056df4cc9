# What every target configuration shares, in the VM nodes and in the fleet
# flake alike: sshd with a pinned host key, the deployer's key for root,
# offline Nix with flakes, a real boot loader (so a reboot boots whatever
# `switch-to-configuration boot` installed), and the demo service the
# scenarios change.
{ config, lib, pkgs, ... }:
let
  keys = config.deployFlakeTest.keys;
in
{
  options.demo.version = lib.mkOption {
    type = lib.types.str;
    description = "What demo-web.service writes to /run/demo-web/version: the configuration's name.";
  };
  # The VM nodes set this to the fleet's own keys derivation, so the host key
  # a target starts with is the one every deployed configuration keeps.
  options.deployFlakeTest.keys = lib.mkOption {
    type = lib.types.package;
    default = import ./keys.nix pkgs;
    description = "The test's ssh keys (see keys.nix).";
  };

  config = {
    system.build.deployFlakeTestKeys = keys;
    system.stateVersion = lib.trivial.release;
    documentation.enable = false;

    services.openssh = {
      enable = true;
      settings.PermitRootLogin = "prohibit-password";
      hostKeys = [{ type = "ed25519"; path = "/etc/ssh/ssh_host_ed25519_key"; }];
    };
    environment.etc."ssh/ssh_host_ed25519_key" = {
      source = "${keys}/${config.networking.hostName}";
      mode = "0600";
    };
    users.users.root.openssh.authorizedKeys.keyFiles = [ "${keys}/deployer.pub" ];

    nix.settings = {
      experimental-features = [ "nix-command" "flakes" ];
      substituters = lib.mkForce [ ];
    };

    virtualisation = {
      memorySize = 2048;
      cores = 2;
      diskSize = 4096;
      useBootLoader = true;
      useEFIBoot = true;
      # Paths copied during the test must survive a reboot.
      writableStoreUseTmpfs = false;
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
