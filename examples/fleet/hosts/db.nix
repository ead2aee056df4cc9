# A host with its own self-check: deploy-flake runs
# <toplevel>/bin/db-preflight before activating, and stops if it fails.
{ pkgs, ... }:
{
  networking.hostName = "db1";
  services.postgresql.enable = true;

  system.extraSystemBuilderCmds = ''
    mkdir -p $out/bin
    ln -s ${pkgs.writeShellScript "db-preflight" ''
      # refuse to activate while the data disk is nearly full
      export PATH=${pkgs.coreutils}/bin
      used=$(df --output=pcent /var/lib/postgresql | tail -n 1 | tr -dc 0-9)
      [ "$used" -lt 90 ]
    ''} $out/bin/db-preflight
  '';
}
