# Shared by every host: the deploy user, sshd, and flakes for the build
# that deploy-flake runs on the target.
{ ... }:
{
  system.stateVersion = "25.05";

  boot.loader.grub.device = "/dev/sda";
  fileSystems."/" = { device = "/dev/disk/by-label/nixos"; fsType = "ext4"; };

  services.openssh = {
    enable = true;
    settings.PasswordAuthentication = false;
  };

  users.users.deploy = {
    isNormalUser = true;
    extraGroups = [ "wheel" ];
    openssh.authorizedKeys.keys = [
      "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExampleExampleExampleExampleExampleExample deployer@example"
    ];
  };
  security.sudo.wheelNeedsPassword = false;

  nix.settings = {
    experimental-features = [ "nix-command" "flakes" ];
    # The deploy user copies the flake into the store and builds there.
    trusted-users = [ "deploy" ];
  };
}
