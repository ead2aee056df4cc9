# escapes-in-failure: pre-activate-safety-checks refuses with terminal
# escapes (a window title, a cleared screen) in what it says; nothing may
# be activated, and the report's message shows them escaped, never raw.
{ pkgs, ... }:
let
  check = pkgs.writeShellScript "pre-activate-safety-checks" ''
    printf 'refusing \033]0;pwned\007 \033[2J here\n' >&2
    exit 1
  '';
in
{
  demo.version = "escapes-in-failure";
  system.systemBuilderCommands = ''
    ln -s ${check} $out/pre-activate-safety-checks
  '';
}
