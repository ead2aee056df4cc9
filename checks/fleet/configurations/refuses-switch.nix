# refuses-switch: the system's own pre-switch check refuses it, so
# `switch-to-configuration check` fails and nothing may change.
{
  demo.version = "refuses-switch";
  system.preSwitchChecks.lab-refuses = ''
    echo "pre-switch check: refusing $1 for $2 (scenario)" >&2
    exit 1
  '';
}
