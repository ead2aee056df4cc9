# deployFlake.rollout: how a run over many hosts is staged.
#
#   rollout = {
#     canary = [ "@canary" ];      # these hosts form the first wave
#     batches = [ 1 "25%" "100%" ]; # the sizes of the following waves; the last repeats
#     maxFailures = 0;             # more failed hosts than this: no new wave starts
#     soak = 120;                  # seconds to wait after a wave, then check it again
#   };
#
# What each key accepts comes from rules.json (`rollout`), which the tool
# reads too: a fault reads the same from mkDeployFlake, deployChecks and
# deploy-flake. `rules` is lib/rules.nix.
{ rules }:
let
  inherit (builtins)
    all attrNames concatStringsSep elemAt filter genList hasAttr head isAttrs isInt isList
    isString length match removeAttrs stringLength substring toJSON;

  r = rules.data.rollout;
  keys = attrNames r.defaults;
  inherit (rules) describe;

  mismatch = expected: path: v: "${path}: expected ${expected}, got ${describe v}";

  # The first non-null of f 0 .. f (n - 1), or null.
  firstOf = n: f:
    let go = i: if i == n then null else let p = f i; in if p == null then go (i + 1) else p;
    in go 0;

  sizeOk = rule: v: (isInt v && v >= rule.min) || (isString v && match rule.percent v != null);
  selectorOk = v: isString v && match r.canary.selector.require v != null;
  soakOk = v: v == null || (isInt v && v >= r.soak.min && v <= r.soak.max);

  # The first fault of each key's value, or null.
  valueProblem = {
    canary = path: v:
      if !isList v then mismatch r.canary.expected path v
      else firstOf (length v) (i:
        let e = elemAt v i; in
        if selectorOk e then null else mismatch r.canary.selector.expected "${path}.${toString i}" e);
    batches = path: v:
      if !isList v || v == [ ] then mismatch r.batches.expected path v
      else firstOf (length v) (i:
        let e = elemAt v i; in
        if sizeOk r.batches.size e then null else mismatch r.batches.size.expected "${path}.${toString i}" e);
    maxFailures = path: v: if sizeOk r.maxFailures v then null else mismatch r.maxFailures.expected path v;
    soak = path: v: if soakOk v then null else mismatch r.soak.expected path v;
  };

  # The first fault of a rollout attrset (unknown keys first; `resolved`:
  # every key must be there), or null.
  problem = resolved: path: v:
    if !isAttrs v then "${path}: expected an attribute set, got ${describe v}"
    else
      let
        unknown = attrNames (removeAttrs v keys);
        missing = filter (k: !(hasAttr k v)) keys;
      in
      if unknown != [ ] then rules.unknownKey path (head unknown) keys
      else if resolved && missing != [ ] then
        "${path}.${head missing}: missing (a deployFlake must be fully resolved; mkDeployFlake fills in defaults)"
      else
        let given = attrNames v; in
        firstOf (length given) (i: let k = elemAt given i; in valueProblem.${k} "${path}.${k}" v.${k});

  # ---- canary selectors, as the tool reads them ---------------------------

  # A glob (`*`, `?`, `[...]`, `[!...]`) as a POSIX extended regex.
  globRegex = g:
    let
      n = stringLength g;
      special = [ "." "+" "(" ")" "{" "}" "^" "$" "|" "\\" ];
      go = i: inClass:
        if i >= n then ""
        else
          let c = substring i 1 g; in
          if inClass then
            (if c == "]" then "]" + go (i + 1) false else (if c == "\\" then "\\\\" else c) + go (i + 1) true)
          else if c == "*" then ".*" + go (i + 1) false
          else if c == "?" then "." + go (i + 1) false
          else if c == "[" then
            (if substring (i + 1) 1 g == "!" then "[^" + go (i + 2) true else "[" + go (i + 1) true)
          else if builtins.elem c special then "\\" + c + go (i + 1) false
          else c + go (i + 1) false;
    in
    go 0 false;

  isGlob = s: match ".*[][*?].*" s != null;

  # Does `sel` (a name, @tag or glob) match a host of `hosts` (resolved
  # host records)?
  matchesSome = hosts: sel:
    let names = attrNames hosts; in
    if substring 0 1 sel == "@" then
      let tag = substring 1 (stringLength sel) sel; in
      builtins.any (n: builtins.elem tag (hosts.${n}.tags or [ ])) names
    else if hasAttr sel hosts then true
    else if isGlob sel then
      let re = globRegex sel; in builtins.any (n: match re n != null) names
    else false;

  # The first canary selector that matches no host, as a message, or null.
  canaryProblem = path: hosts: canary:
    firstOf (length canary) (i:
      let sel = elemAt canary i; in
      if matchesSome hosts sel then null
      else "${path}.${toString i}: ${toJSON sel} matches no host of deployFlake.hosts (a name, @tag or glob)");

  # The resolved rollout of mkDeployFlake: the defaults, then the user's.
  resolve = path: hosts: user:
    let
      p = problem false path user;
      v = r.defaults // user;
      c = canaryProblem "${path}.canary" hosts v.canary;
    in
    if p != null then throw p
    else if c != null then throw c
    else v;
in
{
  inherit problem canaryProblem resolve globRegex;
  inherit (r) defaults;
}
