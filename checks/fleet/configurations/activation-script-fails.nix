# activation-script-fails: a snippet of the activation script fails, so
# `switch-to-configuration test` exits 2 (the switch goes on); the host must
# be rolled back.
{
  demo.version = "activation-script-fails";
  system.activationScripts.lab-fails = ''
    echo "activation script: a snippet fails (scenario)" >&2
    false
  '';
}
