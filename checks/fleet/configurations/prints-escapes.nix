# prints-escapes: the activation prints terminal escapes (a window title,
# a cleared screen, the cursor moved, the clipboard set); the deploy's
# output must show them escaped, never pass them on raw.
{
  demo.version = "prints-escapes";
  system.activationScripts.deploy-flake-escapes = ''
    printf 'title \033]0;pwned\007 clear \033[2J\033[H up \033[3A clip \033]52;c;cHduZWQ=\007 end\n'
  '';
}
