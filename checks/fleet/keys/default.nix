# Throwaway ssh keys FOR THE NIXOS VM TESTS ONLY (checks/), committed on
# purpose, like the snake-oil keys of nixpkgs' nixos/tests/ssh-keys.nix:
# their private halves are public and end up world-readable in the Nix
# store. Never use them anywhere else.
#
# `deployer` is the deployer's client key (authorized for root on every
# target); `hosts.<target>` is that target's sshd host key (pinned in the
# deployer's known_hosts). Plain files, read without building anything, so
# evaluating the tests needs no import-from-derivation. Paths are copied to
# the store by content, so the VM test and the fleet flake archived to the
# targets refer to the same store paths.
#
# Made with: ssh-keygen -t ed25519 -N "" -C "deploy-flake-vm-test-NAME (test only)" -f NAME
let
  key = name: {
    private = ./. + "/${name}";
    # The one line of NAME.pub, without its newline.
    public = builtins.head (builtins.match "([^\n]*)\n*" (builtins.readFile (./. + "/${name}.pub")));
  };
in
{
  deployer = key "deployer";
  hosts = {
    target1 = key "target1";
    target2 = key "target2";
  };
}
