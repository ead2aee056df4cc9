# new-init: an init incompatible with the running one (a different
# init-interface-version), so `switch-to-configuration test` exits 100
# without activating anything.
{
  demo.version = "new-init";
  system.systemBuilderCommands = ''
    rm -f $out/init-interface-version
    echo -n "systemd 999" > $out/init-interface-version
  '';
}
