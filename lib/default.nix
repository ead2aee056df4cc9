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
# key by key) and checked, with errors that name the attribute path. That
# document is also what the value prints as (`nix eval --json`, `toJSON`:
# its `outPath`); beside it, `compact` holds the same fleet in a fraction
# of the text, which the tool asks for (see the end of mkDeployFlake).
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
  inherit (rules) userSettingsOk;
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

  # The keys a user wrote (`defaults.keys`, or a host's), resolved: each
  # field's default (null means the default too), `name` the attribute's.
  # The resolved set is checked again as a whole: two keys must not write
  # the same file.
  keyDefaults = rules.data.options.keys.key.defaults;
  resolveKey = attr: k: keyDefaults // { name = attr; } // removeAttrs k (filter (n: k.${n} == null) (attrNames k));
  checkKeys = path: keys:
    let p = rules.resolved.keys.problem path keys; in
    if p == null then keys else throw p;

  # A user-written settings attrset (the `defaults`, or one host), returned
  # unchanged once every key and value passed its rule.
  checkSettings = path: v:
    if !isAttrs v then throw "${path}: expected an attribute set, got ${describe v}"
    else if rules.userSettingsOk v then v
    else throw (rules.userSettingsProblem path v);

  # A value mkDeployFlake derives from the host's attribute name: the
  # fast check, and the fault (thrown) for the host at `path`.
  derivedOk = option: rules.user.${option}.ok;
  derivedFault = option: path: v: throw (rules.user.${option}.problem "${path}.${option}" v);

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
      # Keys merge by attribute name: a host's key replaces the one of the
      # same name in `defaults`.
      baseKeys = checkKeys "deployFlake.defaults.keys" (mapAttrs resolveKey (userDefaults.keys or { }));
      base = hostDefaults // userDefaults // { timeouts = baseTimeouts; keys = baseKeys; };

      # What a host that sets nothing gets: every option but `hostname` and
      # `configuration`, health checks resolved.
      resolvedDefaults = base // { healthChecks = map resolveHealthCheck base.healthChecks; };

      # What a host sets itself, checked, with its timeouts and health checks
      # resolved; `hostname` and `configuration` are there when it sets
      # them, else they are its attribute name (checked here too). The
      # checks of every host, in the order the faults are reported.
      hostnameOk = derivedOk "hostname";
      configurationOk = derivedOk "configuration";
      own = name: h:
        if !(isAttrs h && userSettingsOk h) then
          checkSettings (attrPath "deployFlake.hosts" name) h
        else if !(h ? configuration || configurationOk name) then
          derivedFault "configuration" (attrPath "deployFlake.hosts" name) name
        else if !(hasAttr (h.configuration or name) configs) then
          let path = attrPath "deployFlake.hosts" name; c = h.configuration or name; in
          throw "${path}.configuration: host ${toJSON name} uses configuration ${toJSON c}, which is not in nixosConfigurations${suggest c configNames}"
        else if !(h ? hostname || hostnameOk name) then
          derivedFault "hostname" (attrPath "deployFlake.hosts" name) name
        else if !(rules.togetherOk (k: h.${k} or base.${k})) then
          throw (rules.togetherProblem (attrPath "deployFlake.hosts" name) (k: h.${k} or base.${k}))
        else if !(h ? timeouts || h ? healthChecks || h ? keys) then h
        else
          h
          // (if h ? timeouts then { timeouts = baseTimeouts // h.timeouts; } else { })
          // (if h ? healthChecks then { healthChecks = map resolveHealthCheck h.healthChecks; } else { })
          // (if h ? keys then { keys = checkKeys "${attrPath "deployFlake.hosts" name}.keys" (baseKeys // mapAttrs resolveKey h.keys); } else { });

      checkedHosts =
        if isAttrs hosts then hosts
        else throw "deployFlake.hosts: expected an attribute set of hosts, got ${describe hosts}";

      owns = mapAttrs own checkedHosts;

      # Schema version 1: every host's record in full.
      resolved = rec {
        inherit schemaVersion;
        hosts = mapAttrs (name: o: resolvedDefaults // { hostname = name; configuration = name; } // o) owns;
        # Canary selectors are matched against the hosts' names and tags.
        rollout = rolloutLib.resolve "deployFlake.rollout" hosts userRollout;
      };
    in
    # `seq`: a bad `defaults` is reported even when every host overrides it.
    builtins.seq userDefaults (resolved // {
      # What `nix eval --json` and `toJSON` print of this value: the
      # resolved document, as every reader of schema version 1 expects.
      outPath = resolved;
      # The same fleet for the tool, which asks for it when it is there
      # (`--apply 'd: d.compact or d'`): the resolved `defaults` once, then
      # per host only what it sets itself. A fraction of the text for Nix
      # to print and for the tool to read; the tool fills in the rest and
      # checks each record as it checks a resolved one.
      compact = { inherit schemaVersion; inherit (resolved) rollout; defaults = resolvedDefaults; hosts = owns; };
    });

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
