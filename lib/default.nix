# The deploy-flake Nix library: builtins only, no nixpkgs.
#
#   deployFlake = deploy-flake.lib.mkDeployFlake {
#     inherit self;                 # hosts default to every nixosConfigurations name
#     defaults = { sshUser = "deploy"; };
#     hosts.web1 = { hostname = "203.0.113.7"; tags = [ "web" ]; };
#   };
#
# mkDeployFlake returns plain data (schema version 1): every host record is
# fully resolved (built-in defaults < `defaults` < per-host, timeouts merged
# key by key) and checked, with errors that name the attribute path.
#
# Evaluating it never forces a NixOS configuration: only the attribute
# *names* of `self.nixosConfigurations` are looked at.
let
  inherit (builtins)
    all attrNames concatStringsSep elemAt filter foldl' genList hasAttr
    isAttrs isBool isInt isList isString length mapAttrs match
    removeAttrs sort stringLength substring toJSON typeOf;

  schemaVersion = 1;

  timeoutDefaults = {
    connect = 10;
    lock = 10;
    preflight = 60;
    copy = 600;
    build = 3600;
    selfCheck = 120;
    activate = 600;
    confirm = 30;
    boot = 300;
  };

  # Settings shared by every host unless overridden. `hostname` and
  # `configuration` default to the attribute name and are per-host only.
  hostDefaults = {
    sshUser = "root";
    sshPort = 22;
    sshOpts = [ ];
    tags = [ ];
    buildOn = "target";
    selfCheck = null;
    sudo = "sudo";
    magicRollback = true;
    healthChecks = [ ];
    timeouts = timeoutDefaults;
  };

  # A user-declared health check, run after `switch-to-configuration test`
  # and before the confirmation: a command on the target (as root) or an
  # HTTP GET from the deploying machine; retried every `period` seconds
  # until it passes or `timeout` seconds have passed.
  healthCheckDefaults = { description = null; command = null; http = null; period = 2; timeout = 30; };

  perHostOnly = [ "hostname" "configuration" ];
  optionNames = perHostOnly ++ attrNames hostDefaults;

  # ---- error reporting -------------------------------------------------

  # `hosts.web1` or `hosts."my host"`: attribute names may be anything.
  attrPath = prefix: name:
    if match "[A-Za-z_][A-Za-z0-9_'-]*" name != null
    then "${prefix}.${name}"
    else "${prefix}.${toJSON name}";

  describe = v:
    let t = typeOf v; in
    if t == "string" then "a string (${toJSON v})"
    else if t == "int" then "an integer (${toString v})"
    else if t == "bool" then "a boolean (${if v then "true" else "false"})"
    else if t == "null" then "null"
    else if t == "list" then "a list"
    else if t == "set" then "an attribute set"
    else if t == "lambda" then "a function"
    else if t == "float" then "a float"
    else "a ${t}";

  min = a: b: if a < b then a else b;

  # Edit distance; only ever computed on the error path.
  levenshtein = a: b:
    let
      la = stringLength a;
      lb = stringLength b;
      ca = genList (i: substring i 1 a) la;
      cb = genList (j: substring j 1 b) lb;
      step = prev: i:
        let
          row = genList
            (j:
              if j == 0 then i + 1
              else
                min
                  (min (elemAt row (j - 1) + 1) (elemAt prev j + 1))
                  (elemAt prev (j - 1) + (if elemAt ca i == elemAt cb (j - 1) then 0 else 1)))
            (lb + 1);
        in
        row;
      last = foldl' step (genList (j: j) (lb + 1)) (genList (i: i) la);
    in
    elemAt last lb;

  # " (did you mean `x`?)" or "".
  suggest = word: candidates:
    let
      scored = map (c: { name = c; d = levenshtein word c; }) candidates;
      limit = 2 + stringLength word / 4;
      close = sort (x: y: x.d < y.d || (x.d == y.d && x.name < y.name))
        (filter (x: x.d <= limit) scored);
    in
    if close == [ ] then "" else "; did you mean ${toJSON (elemAt close 0).name}?";

  # ---- checks ----------------------------------------------------------

  isStringList = v: isList v && all isString v;
  isPlausibleHost = v:
    isString v && match "[^[:space:][:cntrl:]-][^[:space:][:cntrl:]]*" v != null;

  # option -> { ok : value -> bool; expected : string; }
  checks = {
    hostname = { ok = isPlausibleHost; expected = "a host name or address (non-empty, no spaces, not starting with '-')"; };
    sshUser = { ok = isPlausibleHost; expected = "a user name (non-empty, no spaces, not starting with '-')"; };
    sshPort = { ok = v: isInt v && v >= 1 && v <= 65535; expected = "an integer between 1 and 65535"; };
    sshOpts = { ok = isStringList; expected = "a list of strings"; };
    configuration = { ok = v: isString v && v != "" && match ".*[[:cntrl:]].*" v == null; expected = "a nixosConfigurations attribute name (non-empty string)"; };
    tags = { ok = isStringList; expected = "a list of strings"; };
    buildOn = { ok = v: v == "target" || v == "local"; expected = ''"target" or "local"''; };
    selfCheck = {
      ok = v: v == null || (isString v && v != ""
        && substring 0 1 v != "/"
        && match "(.*/)?\\.\\.(/.*)?" v == null);
      expected = "null or a relative path inside the toplevel (no leading '/', no '..')";
    };
    sudo = { ok = v: isString v && v != ""; expected = "a non-empty string"; };
    magicRollback = { ok = isBool; expected = "a boolean"; };
    healthChecks = {
      ok = v: isList v && all isHealthCheck v;
      expected = ''a list of checks, each { command = [ "argv" ... ]; } (run on the target) or { http = "http://..."; } (fetched from the deploying machine), with optional description, period and timeout (seconds)'';
    };
  };

  isHealthCheck = c:
    let
      has = k: c ? ${k} && c.${k} != null;
      posInt = k: !(has k) || (isInt c.${k} && c.${k} >= 1);
    in
    isAttrs c
    && all (k: hasAttr k healthCheckDefaults) (attrNames c)
    && (has "command" != has "http")
    && (!(has "command") || (isStringList c.command && c.command != [ ]))
    && (!(has "http") || (isString c.http && match "http://[^[:space:][:cntrl:]]+" c.http != null))
    && (!(has "description") || isString c.description)
    && posInt "period" && posInt "timeout";

  resolveHealthCheck = c:
    let r = healthCheckDefaults // c; in
    r // {
      description =
        if r.description != null then r.description
        else if r.command != null then concatStringsSep " " r.command
        else "GET ${r.http}";
    };

  checkTimeout = path: name: v:
    if isInt v && v >= 1 then v
    else throw "${path}.${name}: expected a positive integer (seconds), got ${describe v}";

  # Fails on unknown keys; returns the attrset unchanged.
  checkKeys = path: known: attrs:
    let unknown = filter (k: !(hasAttr k known)) (attrNames attrs); in
    if unknown == [ ] then attrs
    else
      let k = elemAt unknown 0; in
      throw "${attrPath path k}: unknown option${suggest k (attrNames known)} (known options: ${concatStringsSep ", " (attrNames known)})";

  checkTimeouts = path: v:
    if !isAttrs v then throw "${path}: expected an attribute set of phase timeouts, got ${describe v}"
    else mapAttrs (checkTimeout path) (checkKeys path timeoutDefaults v);

  knownOptions = checks // { timeouts = null; };

  # Checks every key of a user-written settings attrset (defaults or host).
  checkSettings = path: v:
    if !isAttrs v then throw "${path}: expected an attribute set, got ${describe v}"
    else
      mapAttrs
        (k: x:
          if k == "timeouts" then checkTimeouts "${path}.timeouts" x
          else if (checks.${k}).ok x then x
          else throw "${attrPath path k}: expected ${(checks.${k}).expected}, got ${describe x}")
        (checkKeys path knownOptions v);

  # ---- the fleet -------------------------------------------------------

  mkDeployFlake =
    { self
    , hosts ? mapAttrs (_: _: { }) (self.nixosConfigurations or { })
    , defaults ? { }
    }:
    let
      configs = self.nixosConfigurations or { };
      configNames = attrNames configs;

      userDefaults =
        let d = checkSettings "deployFlake.defaults" defaults; in
        foldl'
          (acc: k:
            if hasAttr k d
            then throw "deployFlake.defaults.${k}: per-host option, set it under deployFlake.hosts.<name>.${k}"
            else acc)
          d
          perHostOnly;

      baseTimeouts = timeoutDefaults // (userDefaults.timeouts or { });
      base = hostDefaults // userDefaults // { timeouts = baseTimeouts; };

      resolve = name: host:
        let
          path = attrPath "deployFlake.hosts" name;
          h = checkSettings path host;
          r = base // h // {
            hostname = h.hostname or name;
            configuration = h.configuration or name;
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
    builtins.seq (builtins.deepSeq userDefaults null) {
      inherit schemaVersion;
      hosts = mapAttrs resolve checkedHosts;
    };

  # (Not `self`: that name is the user's flake inside mkDeployFlake.)
  deployLib = {
    inherit mkDeployFlake schemaVersion hostDefaults timeoutDefaults optionNames;
    # The type rule of every option: { ok = value -> bool; expected = text; }.
    optionRules = checks;
    # How errors name paths and values (shared with deployChecks).
    inherit attrPath describe;
    deployChecks = import ./deploy-checks.nix { lib = deployLib; };
  };
in
deployLib
