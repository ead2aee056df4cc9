# hanging-activation: the activation script never returns; the `activate`
# timeout must fire and the host must be rolled back.
{
  demo.version = "hanging-activation";
  system.activationScripts.demo-hang = "sleep 86400";
}
