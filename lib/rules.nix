# The interpreter of rules.json, the rule set that mkDeployFlake,
# deployChecks and the tool (src/rules/) share. Builtins only.
#
# Each option's rule compiles to `{ ok; problem; }`: `ok value` is the fast
# path (it builds no message), `problem path value` is null for a valid value,
# else the message of its first fault, worded exactly as the tool words it:
#
#   deployFlake.hosts.web1.hostname: expected a host name or address (...),
#   got a string ("root@web1"): contains '@': set the user in sshUser
#
# Two modes: `user` checks what a user writes for mkDeployFlake (keys may be
# left out; in a health check, null means "use the default"), `resolved` a
# record as mkDeployFlake returns it (every key present).
let
  inherit (builtins)
    all attrNames concatStringsSep elemAt filter foldl' fromJSON genList
    hasAttr head isAttrs isBool isInt isList isPath isString length
    mapAttrs match readFile sort stringLength substring toJSON typeOf;

  data = fromJSON (readFile ./rules.json);

  # ---- wording ---------------------------------------------------------

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

  # A secret's value is never shown: only what kind of value it is.
  kind = v: let t = typeOf v; in
    if t == "null" then "null" else head (builtins.split " [(]" (describe v));

  mismatch = expected: path: v: "${path}: expected ${expected}, got ${describe v}";
  fault = expected: path: v: problem: "${mismatch expected path v}: ${problem}";

  min = a: b: if a < b then a else b;

  # Edit distance over bytes; only ever computed on the error path.
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

  # "; did you mean "x"?" or "".
  suggest = word: candidates:
    let
      scored = map (c: { name = c; d = levenshtein word c; }) candidates;
      limit = 2 + stringLength word / 4;
      close = sort (x: y: x.d < y.d || (x.d == y.d && x.name < y.name))
        (filter (x: x.d <= limit) scored);
    in
    if close == [ ] then "" else "; did you mean ${toJSON (head close).name}?";

  unknownKey = path: k: known:
    "${attrPath path k}: unknown option${suggest k known} (known options: ${concatStringsSep ", " known})";

  missingKey = path: k:
    "${attrPath path k}: missing (a deployFlake must be fully resolved; mkDeployFlake fills in defaults)";

  # The first unknown key of `v` (then, for a resolved record, the first
  # missing one) as a message, or null. `known`: the sorted key names.
  keyProblem = resolved: path: known: v:
    let unknown = attrNames (removeAttrs v known); in
    if unknown != [ ] then unknownKey path (head unknown) known
    else if !resolved then null
    else
      let missing = filter (k: !(hasAttr k v)) known; in
      if missing == [ ] then null else missingKey path (head missing);

  # Are the keys of `v` all in `known` (and, resolved, all of them there)?
  keysOk = resolved: known: v:
    removeAttrs v known == { } && (!resolved || length (attrNames v) == length known);

  # f 0, f 1, ... f (n - 1): the first non-null result, or null.
  firstOf = n: f:
    let go = i: if i == n then null else let p = f i; in if p == null then go (i + 1) else p;
    in go 0;

  firstOfList = xs: f: firstOf (length xs) (i: f (elemAt xs i));

  # ---- checks ------------------------------------------------------------

  # The problem of the first check `v` fails, or null.
  firstFailing = checks:
    let
      fails = c: v:
        if c ? require then match c.require v == null
        else if c ? forbid then match c.forbid v != null
        else (if isString v then stringLength v else length v) < c.minLength;
    in
    v: firstOfList checks (c: if fails c v then c.problem else null);

  # A named rule: one of `types`, or else another option's.
  ref = rule: if !isString rule then rule else data.types.${rule} or (ref data.options.${rule});

  # A rule of rules.json, compiled for one mode into
  #   ok      : value -> bool    (the fast path: builds no message)
  #   problem : path -> value -> null | the message of the value's first fault
  compile = resolved: rule0:
    let
      rule = ref rule0;
      t = rule.type;
      inherit (rule) expected;
      nullable = rule.nullable or false;
      checks = rule.checks or [ ];
      failing = firstFailing checks;
      orNull = ok: if nullable then v: v == null || ok v else ok;
      # `explain` words the fault of a value that is not ok.
      compiled = ok: explain: {
        inherit ok;
        problem = path: v: if ok v then null else explain path v;
      };
      # A record of `c.fields` with exactly one of `c.exactlyOneOf.fields`
      # (a health check, a key): `ok`, and the `problem` of one that is not
      # (its keys, then each value, then the one-of); `notRecord` words a
      # value that is no attribute set.
      record = c: notRecord:
        let
          fields = mapAttrs (_: compile resolved) c.fields;
          fieldNames = attrNames fields;
          one = c.exactlyOneOf;
          # Written by a user, null means "the default".
          given = r: if resolved then attrNames r else filter (n: r.${n} != null) (attrNames r);
          oneOk = r: length (filter (n: (r.${n} or null) != null) one.fields) == 1;
        in
        {
          ok = r:
            isAttrs r && keysOk resolved fieldNames r
            && all (n: fields.${n}.ok r.${n}) (given r) && oneOk r;
          problem = path: r:
            if !isAttrs r then notRecord path r
            else
              let u = keyProblem resolved path fieldNames r; in
              if u != null then u
              else
                let p = firstOfList (given r) (n: fields.${n}.problem (attrPath path n) r.${n}); in
                if p != null then p
                else if !(oneOk r) then fault c.expected path r one.problem
                else null;
        };
    in
    if t == "string" then
      let
        # One regex for a common valid value; the checks decide the rest.
        accept = rule.accept or null;
        # A secret is described by its kind alone; a Nix path literal (for
        # a file that must stay out of the store) has a fault of its own,
        # found before anything coerces it to a string (which would copy it).
        said = if rule.secret or false then (e: p: v: "${p}: expected ${e}, got ${kind v}") else mismatch;
        pathFault = rule.pathLiteral or null;
        ok =
          if accept != null then v: isString v && (match accept v != null || failing v == null)
          else if checks == [ ] then isString
          else v: isString v && failing v == null;
      in
      compiled (orNull ok) (path: v:
        if pathFault != null && isPath v then "${path}: expected ${expected}, got a path (${toString v}): ${pathFault}"
        else if !isString v then said expected path v else fault expected path v (failing v))
    else if t == "int" then
      compiled (v: isInt v && v >= rule.min && v <= rule.max) (mismatch expected)
    else if t == "bool" then
      compiled isBool (mismatch expected)
    else if t == "enum" then
      compiled (v: builtins.elem v rule.values) (mismatch expected)
    else if t == "list" then
      let
        element = compile resolved rule.element;
        elementOk = element.ok;
        ok =
          if checks == [ ] then v: isList v && all elementOk v
          else v: isList v && failing v == null && all elementOk v;
      in
      compiled
        (orNull ok)
        (path: v:
          if !isList v then mismatch expected path v
          else
            let p = failing v; in
            if p != null then fault expected path v p
            else firstOf (length v) (i: element.problem "${path}.${toString i}" (elemAt v i)))
    else if t == "timeouts" then
      let
        each = compile resolved rule.each;
        phases = attrNames data.timeoutDefaults;
      in
      compiled
        (v: isAttrs v && keysOk resolved phases v && all (k: each.ok v.${k}) (attrNames v))
        (path: v:
          if !isAttrs v then mismatch expected path v
          else
            let k = keyProblem resolved path phases v; in
            if k != null then k
            else firstOfList (attrNames v) (p: each.problem (attrPath path p) v.${p}))
    else if t == "healthChecks" then
      let hc = record rule.check (mismatch rule.check.expected); in
      compiled
        (v: isList v && all hc.ok v)
        (path: v:
          if !isList v then mismatch expected path v
          else firstOf (length v) (i: hc.problem "${path}.${toString i}" (elemAt v i)))
    else if t == "keys" then
      let
        c = rule.key;
        # A key that is not an attribute set may be the secret itself: only
        # its kind is said.
        key = record c (path: k: "${path}: expected ${c.expected}, got ${kind k}");
        # Resolved keys only (every field there): the first key, in name
        # order, that writes the file an earlier one writes.
        clash = path: v:
          let
            names = attrNames v;
            file = n: "${v.${n}.destDir}/${v.${n}.name}";
            earlier = i: filter (j: j < i && file (elemAt names j) == file (elemAt names i)) (genList (j: j) i);
          in
          if !resolved then null
          else firstOf (length names) (i:
            let e = earlier i; in
            if e == [ ] then null
            else "${attrPath path (elemAt names i)}: "
              + builtins.replaceStrings [ "%FILE%" "%OTHER%" ] [ (file (elemAt names i)) (attrPath "keys" (elemAt names (head e))) ] c.clash);
      in
      compiled
        (v: isAttrs v && all (n: key.ok v.${n}) (attrNames v) && clash "" v == null)
        (path: v:
          if !isAttrs v then mismatch expected path v
          else
            let p = firstOfList (attrNames v) (n: key.problem (attrPath path n) v.${n}); in
            if p != null then p else clash path v)
    else if t == "sshOpts" then
      let
        opt = rule.option;
        optFailing = firstFailing opt.checks;
        flags = mapAttrs
          (_: f: f // (if f ? value then { failing = firstFailing f.value.checks; } else { }))
          rule.flags;
        # The first fault of a list of strings and others, read as ssh reads
        # its command line, or null.
        walk = path: v:
          let
            n = length v;
            # Reads the option at `i` (and its value) and goes on after it.
            go = i:
              if i >= n then null
              else
                let
                  e = elemAt v i;
                  at = "${path}.${toString i}";
                  bad = fault opt.expected at e;
                  p = optFailing e;
                  # `-oKey=Value`: the flag and its value in one element.
                  joined = stringLength e > 2 && substring 0 1 e == "-";
                  f = flags.${if joined then substring 0 2 e else e} or null;
                  next = elemAt v (i + 1);
                  nextAt = "${path}.${toString (i + 1)}";
                in
                if !isString e then mismatch opt.expected at e
                else if p != null then bad p
                else if f == null then bad rule.unsupported
                else if f ? refused then bad f.refused
                else if !(f ? value) then (if joined then bad rule.unsupported else go (i + 1))
                else if joined then
                  let q = f.failing (substring 2 (stringLength e) e); in
                  if q != null then fault f.value.expected at e q else go (i + 1)
                else if i + 1 >= n then bad rule.needsValue
                else if !isString next then mismatch f.value.expected nextAt next
                else
                  let q = f.failing next; in
                  if q != null then fault f.value.expected nextAt next q else go (i + 2);
          in
          go 0;
      in
      compiled
        (v: isList v && (v == [ ] || walk "" v == null))
        (path: v: if !isList v then mismatch expected path v else walk path v)
    else throw "deploy-flake lib/rules.json: unknown rule type ${toJSON t}";

  # `together`: what one option's value needs of another, checked on a
  # host's values (`get key` its value, defaults included). The fault:
  # "<path>.<needs>: expected <its expected>, got <value>: <problem>".
  together = data.together or [ ];
  togetherOk = get: all (t: get t.when != t.is || get t.needs != null) together;
  togetherProblem = path: get:
    firstOfList together (t:
      if get t.when != t.is || get t.needs != null then null
      else fault (ref data.options.${t.needs}).expected "${path}.${t.needs}" (get t.needs) t.problem);

  optionNames = attrNames data.options;
  userOptions = mapAttrs (_: compile false) data.options;
  userOks = mapAttrs (_: o: o.ok) userOptions;
  resolvedOptions = mapAttrs (_: compile true) data.options;
in
{
  inherit data attrPath describe suggest unknownKey optionNames kind togetherOk togetherProblem;
  inherit (data) schemaVersion perHostOnly hostDefaults timeoutDefaults healthCheckDefaults;

  # Per option, for values written for mkDeployFlake and for resolved
  # records: { ok; problem; } (see `compile`).
  user = userOptions;
  resolved = resolvedOptions;

  # Is a settings attrset written for mkDeployFlake (the `defaults`, or one
  # host) valid? Its first fault as a message: unknown keys first.
  # (Unknown keys first, without forcing a value: a known key's value may
  # throw, and the unknown key is the fault to report.)
  userSettingsOk = v:
    let keys = attrNames v; in
    all (k: userOks ? ${k}) keys && all (k: userOks.${k} v.${k}) keys;
  userSettingsProblem = path: v:
    let k = keyProblem false path optionNames v; in
    if k != null then k
    else firstOfList (attrNames v) (k: userOptions.${k}.problem (attrPath path k) v.${k});
}
