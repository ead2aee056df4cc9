# stops-sshd: activation stops sshd; no fresh login can confirm the
# deploy, so the target rolls itself back.
{ lib, ... }:
{
  demo.version = "stops-sshd";
  services.openssh.enable = lib.mkForce false;
}
