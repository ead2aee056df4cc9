# activation-script-fails: a snippet of the activation script fails, so
# `switch-to-configuration test` exits 2 (the switch goes on); the host must
# be rolled back.
#
# nixpkgs' nixos/modules/system/activation/activation-script.nix runs every
# snippet in one script under `trap "_status=1 _localstatus=\$?" ERR` and
# ends with `exit $_status`: the failing `false` makes `activate` exit 1,
# which switch-to-configuration reports as exit code 2 after finishing the
# switch (it has pointed /run/current-system at this system by then).
{
  demo.version = "activation-script-fails";
  system.activationScripts.deploy-flake-fails = ''
    echo "activation script: a snippet fails (scenario)" >&2
    false
  '';
}
