# cuts-network: activation takes the test network's interface down; the
# target must roll itself back without the deployer. Stopping the unit (as
# the rollback's activation does) brings the link back up.
{ pkgs, ... }:
{
  demo.version = "cuts-network";
  systemd.services.demo-cut-network = {
    description = "take eth1 down while active";
    wantedBy = [ "multi-user.target" ];
    serviceConfig = {
      Type = "oneshot";
      RemainAfterExit = true;
      ExecStart = "${pkgs.iproute2}/bin/ip link set eth1 down";
      ExecStop = "${pkgs.iproute2}/bin/ip link set eth1 up";
    };
  };
}
