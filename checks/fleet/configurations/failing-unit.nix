# failing-unit: demo-broken.service fails to start, so
# `switch-to-configuration test` exits 4 and the host must be rolled back.
{ pkgs, ... }:
{
  demo.version = "failing-unit";
  systemd.services.demo-broken = {
    description = "a unit that fails to start";
    wantedBy = [ "multi-user.target" ];
    serviceConfig = {
      Type = "oneshot";
      ExecStart = "${pkgs.coreutils}/bin/false";
    };
  };
}
