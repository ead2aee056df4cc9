# The deploy-flake Nix library: builtins only, no nixpkgs.
#
#   deployFlake = deploy-flake.lib.mkDeployFlake {
#     inherit self;                 # hosts default to every nixosConfigurations name
#     defaults = { sshUser = "deploy"; };
#     hosts.web1 = { hostname = "203.0.113.7"; tags = [ "web" "canary" ]; };
#     rollout = { canary = [ "@canary" ]; batches = [ "25%" ]; soak = 120; };  # see rollout.nix
#   };
#
# mkDeployFlake returns plain data (schema version 1): every host record is
# fully resolved (built-in defaults < `defaults` < per-host, timeouts merged
# key by key) and checked, with errors that name the attribute path.
#
# The defaults and what each option accepts come from rules.json, which the
# tool reads too (see rules.nix): a fleet this library accepts, the tool
# accepts, and a fault is reported in the same words by both.
#
# Evaluating it never forces a NixOS configuration: only the attribute
# *names* of `self.nixosConfigurations` are looked at.
let
  inherit (builtins) attrNames filter hasAttr head isAttrs mapAttrs removeAttrs toJSON;

  rules = import ./rules.nix;
  rolloutLib = import ./rollout.nix { inherit rules; };
  inherit (rules) schemaVersion timeoutDefaults healthCheckDefaults perHostOnly attrPath describe suggest;

  # Settings shared by every host unless overridden. `hostname` and
  # `configuration` default to the attribute name and are per-host only.
  hostDefaults = rules.hostDefaults // { timeouts = timeoutDefaults; };

  inherit (rules) optionNames;

  # A user-declared health check, run after `switch-to-configuration test`
  # and before the confirmation: a command on the target (as root) or an
  # HTTP GET from the deploying machine; retried every `period` seconds
  # until it passes or `timeout` seconds have passed. A null value is the
  # default.
  resolveHealthCheck = c:
    let r = healthCheckDefaults // removeAttrs c (filter (k: c.${k} == null) (attrNames c)); in
    r // {
      description =
        if r.description != null then r.description
        else if r.command != null then builtins.concatStringsSep " " r.command
        else "GET ${r.http}";
    };

  # A user-written settings attrset (the `defaults`, or one host), returned
  # unchanged once every key and value passed its rule.
  checkSettings = path: v:
    if !isAttrs v then throw "${path}: expected an attribute set, got ${describe v}"
    else if rules.userSettingsOk v then v
    else throw (rules.userSettingsProblem path v);

  # A value mkDeployFlake derives from the host's attribute name.
  checkDerived = path: option: v:
    if rules.user.${option}.ok v then v
    else throw (rules.user.${option}.problem "${path}.${option}" v);

  # ---- the fleet -------------------------------------------------------

  mkDeployFlake =
    { self
    , hosts ? mapAttrs (_: _: { }) (self.nixosConfigurations or { })
    , defaults ? { }
    , rollout ? { }
    }:
    let
      configs = self.nixosConfigurations or { };
      configNames = attrNames configs;
      userRollout = rollout;

      userDefaults =
        if !isAttrs defaults then checkSettings "deployFlake.defaults" defaults
        else
          let perHost = filter (k: hasAttr k defaults) perHostOnly; in
          if perHost != [ ] then
            let k = head perHost; in
            throw "deployFlake.defaults.${k}: per-host option, set it under deployFlake.hosts.<name>.${k}"
          else checkSettings "deployFlake.defaults" defaults;

      baseTimeouts = timeoutDefaults // (userDefaults.timeouts or { });
      base = hostDefaults // userDefaults // { timeouts = baseTimeouts; };

      resolve = name: host:
        let
          path = attrPath "deployFlake.hosts" name;
          h = checkSettings path host;
          r = base // h // {
            hostname = h.hostname or (checkDerived path "hostname" name);
            configuration = h.configuration or (checkDerived path "configuration" name);
            timeouts = if h ? timeouts then baseTimeouts // h.timeouts else baseTimeouts;
            healthChecks = map resolveHealthCheck (h.healthChecks or base.healthChecks);
          };
        in
        if hasAttr r.configuration configs then r
        else
          throw "${path}.configuration: host ${toJSON name} uses configuration ${toJSON r.configuration}, which is not in nixosConfigurations${suggest r.configuration configNames}";

      checkedHosts =
        if isAttrs hosts then hosts
        else throw "deployFlake.hosts: expected an attribute set of hosts, got ${describe hosts}";
    in
    # `seq`: a bad `defaults` is reported even when every host overrides it.
    builtins.seq userDefaults rec {
      inherit schemaVersion;
      hosts = mapAttrs resolve checkedHosts;
      # Canary selectors are matched against the hosts' names and tags.
      rollout = rolloutLib.resolve "deployFlake.rollout" hosts userRollout;
    };

  # (Not `self`: that name is the user's flake inside mkDeployFlake.)
  deployLib = {
    inherit mkDeployFlake schemaVersion hostDefaults timeoutDefaults healthCheckDefaults optionNames;
    # rules.json as Nix data: per option its type, "expected" text and checks.
    rules = rules.data;
    # How errors name paths and values (shared with deployChecks and the tool).
    inherit attrPath describe;
    deployChecks = import ./deploy-checks.nix { lib = deployLib; inherit rules; rollout = rolloutLib; };
  };
in
deployLib
