# new-init: an init incompatible with the running one (a different
# init-interface-version), so `switch-to-configuration test` exits 100
# without activating anything; `switch-to-configuration check` passes (it
# returns before that comparison).
#
# nixpkgs' nixos/modules/system/activation/top-level.nix writes
# $out/init-interface-version ("systemd <interfaceVersion>") before it runs
# `system.systemBuilderCommands`, so this overwrites it.
{
  demo.version = "new-init";
  system.systemBuilderCommands = ''
    echo -n "systemd 999" > $out/init-interface-version
  '';
}
