# needs-key: a service that reads its key (deployFlake's keys, written to
# /run/keys by deploy-flake) as its own user when it starts, and fails
# without it: the key must be there before switch-to-configuration runs.
{ pkgs, ... }:
{
  demo.version = "needs-key";
  systemd.services.demo-keys = {
    description = "a service that needs its key";
    wantedBy = [ "multi-user.target" ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      User = "nobody";
      SupplementaryGroups = [ "keys" ];
      RuntimeDirectory = "demo-keys";
      ExecStart = pkgs.writeShellScript "demo-keys" ''
        ${pkgs.coreutils}/bin/cat /run/keys/demo-key > /run/demo-keys/seen
      '';
    };
  };
}
