# deployChecks: a flake check that validates a fleet's `deployFlake` output
# at `nix flake check` time, without evaluating or building any NixOS system.
#
#   checks.x86_64-linux.deploy = deploy-flake.lib.deployChecks {
#     inherit self;
#     system = "x86_64-linux";
#   };
#
# Arguments:
#   self                 the user's flake; supplies the two below by default
#   system               the platform the (trivial) check derivation builds on
#   deployFlake          the inventory to check (default: self.deployFlake);
#                        may come from mkDeployFlake or be written by hand
#   nixosConfigurations  default: self.nixosConfigurations; only its attribute
#                        NAMES are read, never a configuration
#   name                 the check derivation's name
#
# A valid fleet yields a derivation built with builtins only (`/bin/sh`, which
# the Nix sandbox provides on Linux and which exists on macOS); its output is
# the resolved inventory as JSON. A bad fleet makes evaluation fail with every
# problem found, each naming its attribute path (`deployFlake.hosts.web1.sshPrt`).
#
# `lib` is this library (lib/default.nix) and `rules` its interpreter of
# rules.json: the schema's version, the options and what each accepts come
# from there, so mkDeployFlake, this check and the tool never drift apart.
{ lib, rules, rollout }:
let
  inherit (builtins)
    attrNames concatLists concatStringsSep filter hasAttr isAttrs length
    toJSON;

  schemaVersion = lib.schemaVersion;
  hostOptions = lib.optionNames;
  topLevelKeys = [ "schemaVersion" "hosts" ];
  # Optional: a hand-written fleet without it deploys every host at once.
  optionalKeys = [ "rollout" ];

  inherit (lib) attrPath describe;

  # Every unknown key of a host (with the closest option), then every
  # missing one, as error lines. Values are not forced.
  keyErrors = path: attrs:
    map (k: rules.unknownKey path k hostOptions)
      (filter (k: !(builtins.elem k hostOptions)) (attrNames attrs))
    ++ map (k: "${attrPath path k}: missing (a deployFlake must be fully resolved; mkDeployFlake fills in defaults)")
      (filter (k: !(hasAttr k attrs) && !(builtins.elem k rules.data.optionalInRecords)) hostOptions);

  hostErrors = configNames: name: host:
    let path = attrPath "deployFlake.hosts" name; in
    if !isAttrs host then [ "${path}: expected an attribute set, got ${describe host}" ]
    else
      keyErrors path host
      ++ concatLists (map
        (k:
          if !(hasAttr k host) then [ ]
          else
            let p = rules.resolved.${k}.problem (attrPath path k) host.${k}; in
            if p == null then [ ] else [ p ])
        hostOptions)
      ++ (
        let p = rules.togetherProblem path (k: host.${k} or null); in
        if p == null then [ ] else [ p ]
      )
      ++ (
        let c = host.configuration or null; in
        if c == null || !(rules.resolved.configuration.ok c) || builtins.elem c configNames then [ ]
        else [
          ("${path}.configuration: ${toJSON c} is not an attribute of nixosConfigurations"
            + " (available: ${if configNames == [ ] then "none" else concatStringsSep ", " configNames})")
        ]
      );

  # What `nix eval --json` prints of a fleet, and so what the tool reads:
  # mkDeployFlake's value prints as its `outPath`, the resolved document
  # (beside it, the `compact` view the tool asks for is derived from the
  # same checked hosts).
  document = fleet: if isAttrs fleet && fleet ? outPath then fleet.outPath else fleet;

  fleetErrors = configNames: fleet:
    if !isAttrs fleet then [ "deployFlake: expected an attribute set (the result of mkDeployFlake), got ${describe fleet}" ]
    else if !(hasAttr "schemaVersion" fleet) then [ "deployFlake.schemaVersion: missing (this deploy-flake reads schema version ${toString schemaVersion})" ]
    else if fleet.schemaVersion != schemaVersion then [
      ("deployFlake.schemaVersion: expected ${toString schemaVersion}, got ${describe fleet.schemaVersion}"
        + " (this deploy-flake reads schema version ${toString schemaVersion} only)")
    ]
    else
      map (k: "${attrPath "deployFlake" k}: unknown attribute (allowed: ${concatStringsSep ", " (topLevelKeys ++ optionalKeys)})")
        (filter (k: !(builtins.elem k (topLevelKeys ++ optionalKeys))) (attrNames fleet))
      ++ map (k: "deployFlake.${k}: missing (a deployFlake must be fully resolved; mkDeployFlake fills in defaults)")
        (filter (k: !(hasAttr k fleet)) topLevelKeys)
      ++ (
        if !(hasAttr "hosts" fleet) then [ ]
        else if !isAttrs fleet.hosts then [ "deployFlake.hosts: expected an attribute set of hosts, got ${describe fleet.hosts}" ]
        else concatLists (map (n: hostErrors configNames n fleet.hosts.${n}) (attrNames fleet.hosts))
      )
      ++ rolloutErrors fleet;

  # The rollout's first fault, then the first canary selector that matches
  # no host.
  rolloutErrors = fleet:
    if !(hasAttr "rollout" fleet) then [ ]
    else
      let p = rollout.problem true "deployFlake.rollout" fleet.rollout; in
      if p != null then [ p ]
      else if !(isAttrs (fleet.hosts or null)) then [ ]
      else
        let c = rollout.canaryProblem "deployFlake.rollout.canary" fleet.hosts fleet.rollout.canary; in
        if c == null then [ ] else [ c ];

  deployChecks =
    { self ? null
    , system
    , deployFlake ?
        if self != null && self ? deployFlake then self.deployFlake
        else throw "deployChecks: pass `self` (a flake with a `deployFlake` output) or `deployFlake`"
    , nixosConfigurations ? if self != null then self.nixosConfigurations or { } else { }
    , name ? "deploy-flake-check"
    }:
    let
      configNames =
        if isAttrs nixosConfigurations then attrNames nixosConfigurations
        else throw "deployChecks: nixosConfigurations: expected an attribute set, got ${describe nixosConfigurations}";
      errors = fleetErrors configNames (document deployFlake);
      count = length errors;
      report =
        "deployChecks: deployFlake has ${toString count} problem${if count == 1 then "" else "s"}:\n"
        + concatStringsSep "\n" (map (e: "  - ${e}") errors);
    in
    if errors != [ ] then throw report
    else
    # deepSeq: any value mkDeployFlake (or a hand-written fleet) left lazy and
    # failing is reported here, not by the tool at deploy time.
      builtins.deepSeq deployFlake (derivation {
        inherit name system;
        builder = "/bin/sh";
        args = [ "-c" ''printf '%s\n' "$inventory" > "$out"'' ];
        # Strings in the inventory carry no dependency: the check must never
        # build anything but itself.
        inventory = builtins.unsafeDiscardStringContext (toJSON deployFlake);
        hosts = concatStringsSep " " (attrNames deployFlake.hosts);
        preferLocalBuild = true;
        allowSubstitutes = false;
      });
in
deployChecks
