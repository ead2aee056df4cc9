# refuses-switch: the system's own pre-switch check refuses it, so
# `switch-to-configuration check` exits 1 ("Pre-switch checks failed") and
# nothing may change.
#
# `system.preSwitchChecks` (nixpkgs' nixos/modules/system/activation/
# pre-switch-check.nix) is an attribute set of shell snippets; each runs in
# a subshell of one script (a writeShellApplication: shellcheck, errexit,
# nounset) that switch-to-configuration runs before every action, `check`
# included, unless NIXOS_NO_CHECK=1. Recent releases pass it the new
# toplevel and the action as $1 and $2; `${1-}` stays valid where they are
# not passed.
{
  demo.version = "refuses-switch";
  system.preSwitchChecks.deploy-flake-refuses = ''
    echo "pre-switch check: refusing ''${1-} for ''${2-} (scenario)" >&2
    exit 1
  '';
}
