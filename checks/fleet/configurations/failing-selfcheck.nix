# failing-selfcheck: pre-activate-safety-checks exits 1; nothing may be
# activated.
{ pkgs, ... }:
{
  demo.version = "failing-selfcheck";
  system.systemBuilderCommands = ''
    ln -s ${pkgs.writeShellScript "pre-activate-safety-checks" "echo 'self-check: refusing' >&2; exit 1"} $out/pre-activate-safety-checks
  '';
}
