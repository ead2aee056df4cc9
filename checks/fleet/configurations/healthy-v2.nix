# healthy-v2: a healthy change (demo-web changes: it is stopped and started
# again, and reports "healthy-v2"), with a passing pre-activate-safety-checks.
{ pkgs, ... }:
{
  demo.version = "healthy-v2";
  system.systemBuilderCommands = ''
    ln -s ${pkgs.writeShellScript "pre-activate-safety-checks" "exit 0"} $out/pre-activate-safety-checks
  '';
}
