//! lib/ through a real `nix eval`: defaults, precedence, errors with their
//! attribute paths, and the promise never to force a NixOS configuration.

mod common;

use common::{error_line, eval_expr, eval_flake, fixture_flake, flake_from, repo_root};
use serde_json::json;

use deploy_flake::inventory::{self, InventoryError};

/// `mkDeployFlake` over a `self` whose configurations all throw.
fn mk(args: &str) -> Result<serde_json::Value, String> {
    eval_expr(&format!(
        r#"let lib = import {}/lib; in lib.mkDeployFlake ({{ self = {{ nixosConfigurations = {{ web1 = throw "web1 forced"; db1 = throw "db1 forced"; "odd'$(x)" = throw "forced"; }}; }}; }} // {args})"#,
        repo_root().display()
    ))
}

/// `mkDeployFlake` as [`mk`], then `.ATTR` of its value.
fn mk_attr(args: &str, attr: &str) -> Result<serde_json::Value, String> {
    eval_expr(&format!(
        r#"(let lib = import {}/lib; in lib.mkDeployFlake ({{ self = {{ nixosConfigurations = {{ web1 = throw "web1 forced"; db1 = throw "db1 forced"; "odd'$(x)" = throw "forced"; }}; }}; }} // {args})).{attr}"#,
        repo_root().display()
    ))
}

#[test]
fn defaults_fill_every_field() {
    let v = mk("{ hosts.web1 = { }; }").unwrap();
    assert_eq!(
        v,
        json!({ "schemaVersion": 1, "hosts": { "web1": {
            "hostname": "web1", "sshUser": "root", "sshPort": 22, "sshOpts": [],
            "configuration": "web1", "tags": [], "buildOn": "target", "selfCheck": null,
            "sudo": "sudo", "magicRollback": true, "substituteOnTarget": true, "healthChecks": [],
            "buildHost": null, "buildHostSshOpts": [], "buildHostCapacity": 0,
            "copyFrom": "deployer", "pushTo": null, "system": null,
            "timeouts": { "connect": 10, "lock": 10, "preflight": 60, "copy": 600,
                          "build": 3600, "selfCheck": 120, "activate": 600,
                          "confirm": 30, "boot": 300, "reboot": 600 }, "keys": {} } },
               "rollout": { "canary": [], "batches": ["100%"], "maxFailures": 0, "soak": null } })
    );
    // And the Rust side accepts it unchanged.
    let inv = inventory::parse(&v.to_string()).unwrap();
    assert_eq!(inv.hosts["web1"], inventory::HostSpec::with_defaults("web1"));
}

#[test]
fn hosts_default_to_every_configuration_without_forcing_them() {
    let v = mk("{ }").unwrap();
    let names: Vec<&String> = v["hosts"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["db1", "odd'$(x)", "web1"]);
    assert_eq!(v["hosts"]["odd'$(x)"]["hostname"], "odd'$(x)");
}

#[test]
fn values_derived_from_the_attribute_name_are_checked() {
    // The tool would refuse "my host" as a hostname, so lib does too.
    let err = mk(r#"{ hosts."my host".configuration = "web1"; }"#).unwrap_err();
    assert_eq!(
        error_line(&err),
        r#"error: deployFlake.hosts."my host".hostname: expected a host name or address (not empty, without whitespace, '@', '/', '?', '#', '&', or '%' but before an IPv6 zone id, not starting with '-'), got a string ("my host"): contains whitespace"#
    );
    let err = eval_expr(&format!(
        r#"(import {}/lib).mkDeployFlake {{ self.nixosConfigurations."a\"b" = throw "forced"; hosts."a\"b".hostname = "h"; }}"#,
        repo_root().display()
    ))
    .unwrap_err();
    assert_eq!(
        error_line(&err),
        r#"error: deployFlake.hosts."a\"b".configuration: expected a nixosConfigurations attribute name (not empty, without '"' or control characters), got a string ("a\"b"): contains '"', which a flake attribute path cannot hold: rename the nixosConfigurations attribute"#
    );
}

#[test]
fn precedence_builtin_then_defaults_then_host_and_timeouts_merge_per_key() {
    let v = mk(r#"{ defaults = { sshUser = "deploy"; sshPort = 2200; timeouts = { copy = 5; build = 6; }; };
                   hosts.web1 = { sshPort = 22; timeouts.build = 7; };
                   hosts.db1 = { }; }"#)
    .unwrap();
    let web1 = &v["hosts"]["web1"];
    assert_eq!(web1["sshUser"], "deploy");
    assert_eq!(web1["sshPort"], 22);
    assert_eq!(web1["timeouts"]["copy"], 5);
    assert_eq!(web1["timeouts"]["build"], 7);
    assert_eq!(web1["timeouts"]["connect"], 10);
    let db1 = &v["hosts"]["db1"];
    assert_eq!(db1["sshPort"], 2200);
    assert_eq!(db1["timeouts"]["build"], 6);
}

#[test]
fn unknown_host_key_names_its_path_and_the_closest_key() {
    let err = mk("{ hosts.web1.sshPrt = 22; }").unwrap_err();
    assert_eq!(
        error_line(&err),
        "error: deployFlake.hosts.web1.sshPrt: unknown option; did you mean \"sshPort\"? (known options: buildHost, buildHostCapacity, buildHostSshOpts, buildOn, configuration, copyFrom, healthChecks, hostname, keys, magicRollback, pushTo, selfCheck, sshOpts, sshPort, sshUser, substituteOnTarget, sudo, system, tags, timeouts)"
    );
}

#[test]
fn unknown_key_in_defaults_and_in_timeouts() {
    let err = mk("{ defaults.tag = [ ]; }").unwrap_err();
    assert!(
        error_line(&err)
            .starts_with("error: deployFlake.defaults.tag: unknown option; did you mean \"tags\"?"),
        "{err}"
    );
    let err = mk("{ hosts.web1.timeouts.biuld = 5; }").unwrap_err();
    assert!(
        error_line(&err).starts_with(
            "error: deployFlake.hosts.web1.timeouts.biuld: unknown option; did you mean \"build\"?"
        ),
        "{err}"
    );
}

#[test]
fn hostile_attribute_name_is_quoted_in_the_path() {
    let err = mk(r#"{ hosts."my host".x = 1; }"#).unwrap_err();
    assert!(
        error_line(&err)
            .starts_with(r#"error: deployFlake.hosts."my host".x: unknown option (known options:"#),
        "{err}"
    );
}

#[test]
fn wrong_types_name_the_path_expected_and_got() {
    let cases = [
        (
            r#"{ hosts.web1.sshPort = "22"; }"#,
            r#"error: deployFlake.hosts.web1.sshPort: expected an integer between 1 and 65535, got a string ("22")"#,
        ),
        (
            r#"{ defaults.sshPort = 70000; }"#,
            r#"error: deployFlake.defaults.sshPort: expected an integer between 1 and 65535, got an integer (70000)"#,
        ),
        (
            r#"{ hosts.web1.tags = "web"; }"#,
            r#"error: deployFlake.hosts.web1.tags: expected a list of strings, got a string ("web")"#,
        ),
        (
            r#"{ hosts.web1.buildOn = "remote"; }"#,
            r#"error: deployFlake.hosts.web1.buildOn: expected "target", "local" or "host", got a string ("remote")"#,
        ),
        (
            r#"{ hosts.web1.magicRollback = "yes"; }"#,
            r#"error: deployFlake.hosts.web1.magicRollback: expected a boolean, got a string ("yes")"#,
        ),
        (
            r#"{ hosts.web1.selfCheck = "/bin/check"; }"#,
            r#"error: deployFlake.hosts.web1.selfCheck: expected null (run pre-activate-safety-checks if the system has one) or a relative path inside the toplevel, e.g. "bin/check", got a string ("/bin/check"): is absolute: it must be a path inside the toplevel, e.g. "bin/check""#,
        ),
        (
            r#"{ hosts.web1.hostname = "-oProxyCommand=x"; }"#,
            r#"error: deployFlake.hosts.web1.hostname: expected a host name or address (not empty, without whitespace, '@', '/', '?', '#', '&', or '%' but before an IPv6 zone id, not starting with '-'), got a string ("-oProxyCommand=x"): starts with '-'"#,
        ),
        (
            r#"{ hosts.web1.timeouts.copy = 0; }"#,
            r#"error: deployFlake.hosts.web1.timeouts.copy: expected a whole number of seconds between 1 and 31536000 (365 days), got an integer (0)"#,
        ),
        (
            r#"{ hosts.web1.timeouts.lock = 9223372036854775807; }"#,
            r#"error: deployFlake.hosts.web1.timeouts.lock: expected a whole number of seconds between 1 and 31536000 (365 days), got an integer (9223372036854775807)"#,
        ),
        (
            r#"{ hosts.web1 = "x"; }"#,
            r#"error: deployFlake.hosts.web1: expected an attribute set, got a string ("x")"#,
        ),
        (
            r#"{ defaults.hostname = "x"; }"#,
            r#"error: deployFlake.defaults.hostname: per-host option, set it under deployFlake.hosts.<name>.hostname"#,
        ),
    ];
    for (args, want) in cases {
        let err = mk(args).unwrap_err();
        assert_eq!(error_line(&err), want, "for {args}");
    }
}

#[test]
fn bad_defaults_fail_even_when_every_host_overrides_them() {
    let err = mk(r#"{ defaults.sshUser = 5; hosts.web1.sshUser = "root"; }"#).unwrap_err();
    assert!(
        error_line(&err).starts_with("error: deployFlake.defaults.sshUser: expected a user name"),
        "{err}"
    );
}

#[test]
fn missing_configuration_names_host_and_configuration() {
    let err = mk(r#"{ hosts.web1.configuration = "web"; }"#).unwrap_err();
    assert_eq!(
        error_line(&err),
        r#"error: deployFlake.hosts.web1.configuration: host "web1" uses configuration "web", which is not in nixosConfigurations; did you mean "web1"?"#
    );
    let err = mk(r#"{ hosts.mail = { }; }"#).unwrap_err();
    assert!(error_line(&err).starts_with(r#"error: deployFlake.hosts.mail.configuration: host "mail" uses configuration "mail", which is not in nixosConfigurations"#), "{err}");
}

#[test]
fn fixture_flake_with_throwing_configurations_evaluates() {
    let dir = fixture_flake("throwing");
    let v = eval_flake(dir.path()).unwrap();
    let names: Vec<&String> = v["hosts"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["alpha", "beta"]);
}

#[tokio::test]
async fn load_reads_the_fleet_fixture() {
    let dir = fixture_flake("fleet");
    let inv = inventory::load(dir.path().to_str().unwrap(), inventory::DEFAULT_EVAL_TIMEOUT)
        .await
        .unwrap();
    assert_eq!(inv.hosts.len(), 4);
    let web2 = &inv.hosts["web-2"];
    assert_eq!(web2.hostname, "2001:db8::2");
    assert_eq!(web2.ssh_port, 2222);
    assert_eq!(web2.ssh_user, "deploy");
    assert_eq!(web2.timeouts.build, 7200);
    assert_eq!(web2.timeouts.copy, 1200);
    let odd = &inv.hosts["odd \"name\" $(x)"];
    assert_eq!(odd.configuration, "odd 'name' $(x)");
    let db1 = &inv.hosts["db1"];
    assert_eq!(db1.build_on, inventory::BuildOn::Local);
    assert_eq!(db1.self_check.as_deref(), Some("bin/db-check"));
    assert!(!db1.magic_rollback);
}

#[tokio::test]
async fn no_deploy_flake_output_shows_the_lines_to_add() {
    let dir = fixture_flake("no-deploy-flake");
    let flake = dir.path().to_str().unwrap().to_string();
    let err = inventory::load(&flake, inventory::DEFAULT_EVAL_TIMEOUT).await.unwrap_err();
    assert!(matches!(err, InventoryError::NoDeployFlake { .. }), "{err:?}");
    assert_eq!(
        err.to_string(),
        format!(
            "flake `{flake}` has no deployFlake output; add these lines to the outputs of its flake.nix (with deploy-flake as an input):\n\n    deployFlake = deploy-flake.lib.mkDeployFlake {{\n      inherit self;\n    }};\n\nor name ad hoc destinations instead (nixos://[user@]host[:port][/config])"
        )
    );
}

#[tokio::test]
async fn newer_schema_asks_to_upgrade() {
    let dir = fixture_flake("newer-schema");
    let err = inventory::load(dir.path().to_str().unwrap(), inventory::DEFAULT_EVAL_TIMEOUT)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "deployFlake has schemaVersion 2, but this deploy-flake understands only version 1: upgrade deploy-flake (or pin the flake's deploy-flake input to the version of this binary)"
    );
}

#[tokio::test]
async fn evaluation_error_shows_the_tail_of_nix_stderr() {
    let dir = flake_from(
        r#"{ outputs = { self }: { nixosConfigurations.a = throw "x"; deployFlake = (import ./lib).mkDeployFlake { inherit self; hosts.a.sshPrt = 1; }; }; }"#,
    );
    let err = inventory::load(dir.path().to_str().unwrap(), inventory::DEFAULT_EVAL_TIMEOUT)
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("evaluating `{}#deployFlake` failed:\n", dir.path().display())),
        "{msg}"
    );
    assert!(
        msg.contains(
            "error: deployFlake.hosts.a.sshPrt: unknown option; did you mean \"sshPort\"?"
        ),
        "{msg}"
    );
    assert!(msg.lines().count() <= 21, "{msg}");
}

#[tokio::test]
async fn a_slow_evaluation_times_out() {
    let dir = flake_from(
        r#"{ outputs = { self }: { deployFlake = let f = n: if n == 0 then 0 else f (n - 1) + 0 * f (n - 1); in { schemaVersion = f 200; hosts = { }; }; }; }"#,
    );
    let err = inventory::load(dir.path().to_str().unwrap(), std::time::Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, InventoryError::Timeout { .. }), "{err:?}");
    assert!(
        err.to_string().starts_with(&format!(
            "`nix eval {}#deployFlake` did not finish within 300ms:",
            dir.path().display()
        )),
        "{err}"
    );
}

#[test]
fn health_checks_are_resolved_and_checked() {
    let v = mk(r#"{ defaults.healthChecks = [ { command = [ "true" ]; } ];
                   hosts.db1 = { };
                   hosts.web1.healthChecks = [ { http = "http://web1:8080/health"; period = 1; } ]; }"#)
    .unwrap();
    assert_eq!(
        v["hosts"]["web1"]["healthChecks"],
        serde_json::json!([{ "description": "GET http://web1:8080/health", "command": null,
                             "http": "http://web1:8080/health", "period": 1, "timeout": 30 }])
    );
    assert_eq!(
        v["hosts"]["db1"]["healthChecks"],
        serde_json::json!([{ "description": "true", "command": ["true"], "http": null, "period": 2, "timeout": 30 }])
    );
    // null is the default.
    let v = mk(r#"{ hosts.web1.healthChecks = [ { command = [ "true" ]; description = null; http = null; period = null; timeout = null; } ]; }"#)
        .unwrap();
    assert_eq!(
        v["hosts"]["web1"]["healthChecks"],
        serde_json::json!([{ "description": "true", "command": ["true"], "http": null, "period": 2, "timeout": 30 }])
    );
    const CHECK: &str = r#"expected a health check ({ command = [ "argv" ... ]; } run on the target as root, or { http = "http://..."; } fetched from the deploying machine; optional: description, period, timeout), got an attribute set"#;
    for (bad, want) in [
        (
            r#"[ { command = [ "true" ]; http = "http://x/"; } ]"#,
            format!("0: {CHECK}: needs exactly one of command (a non-empty argv) or http (an http:// URL)"),
        ),
        (
            r#"[ { } ]"#,
            format!("0: {CHECK}: needs exactly one of command (a non-empty argv) or http (an http:// URL)"),
        ),
        (
            r#"[ { http = "https://x/"; } ]"#,
            r#"0.http: expected an http:// URL, got a string ("https://x/"): does not start with http:// (https is not supported)"#.into(),
        ),
        (
            r#"[ { command = [ ]; } ]"#,
            "0.command: expected a non-empty list of strings (the command and its arguments), got a list: is empty".into(),
        ),
        (
            r#"[ { command = [ "true" ]; timeout = 0; } ]"#,
            "0.timeout: expected a whole number of seconds between 1 and 31536000 (365 days), got an integer (0)".into(),
        ),
        (
            r#"[ { comand = [ "true" ]; } ]"#,
            r#"0.comand: unknown option; did you mean "command"? (known options: command, description, http, period, timeout)"#.into(),
        ),
        (
            r#"{ command = [ "true" ]; }"#,
            ": expected a list of health checks, got an attribute set".into(),
        ),
    ] {
        let err = mk(&format!("{{ hosts.web1.healthChecks = {bad}; }}")).unwrap_err();
        let want = format!("error: deployFlake.hosts.web1.healthChecks{}", if want.starts_with(':') { want } else { format!(".{want}") });
        assert_eq!(error_line(&err), want, "{bad}");
    }
}

#[test]
fn a_rollout_is_resolved_from_its_defaults_and_read_by_the_tool() {
    let v = mk(r#"{ hosts = { web1.tags = [ "canary" ]; db1 = { }; };
                   rollout = { canary = [ "@canary" ]; batches = [ 1 "25%" ]; soak = 30; }; }"#)
    .unwrap();
    assert_eq!(
        v["rollout"],
        json!({ "canary": ["@canary"], "batches": [1, "25%"], "maxFailures": 0, "soak": 30 })
    );
    let inv = inventory::parse(&v.to_string()).unwrap();
    let r = inv.rollout.unwrap();
    assert_eq!(
        r.batches,
        [deploy_flake::rollout::Size::Count(1), deploy_flake::rollout::Size::Percent(25)]
    );
    assert_eq!(r.soak, Some(30));
}

/// A bad rollout: lib/ and the tool (reading a resolved fleet with the same
/// value) name the same path with the same words.
#[test]
fn a_bad_rollout_is_named_alike_by_lib_and_by_the_tool() {
    let cases = [
        ("{ bathces = [ 1 ]; }", None),
        ("{ batches = [ ]; }", Some(json!({"batches": []}))),
        (r#"{ batches = [ 1 "150%" ]; }"#, Some(json!({"batches": [1, "150%"]}))),
        ("{ batches = [ 0 ]; }", Some(json!({"batches": [0]}))),
        (r#"{ maxFailures = "101%"; }"#, Some(json!({"maxFailures": "101%"}))),
        ("{ maxFailures = -1; }", Some(json!({"maxFailures": -1}))),
        ("{ soak = 0; }", Some(json!({"soak": 0}))),
        (r#"{ canary = "web1"; }"#, Some(json!({"canary": "web1"}))),
        (r#"{ canary = [ "-x" ]; }"#, Some(json!({"canary": ["-x"]}))),
    ];
    for (rollout, resolved) in cases {
        let err = mk(&format!("{{ hosts.web1 = {{ }}; rollout = {rollout}; }}")).unwrap_err();
        let lib_line = error_line(&err);
        assert!(lib_line.starts_with("error: deployFlake.rollout."), "{rollout}: {lib_line}");
        let Some(patch) = resolved else { continue };
        let mut fleet = mk("{ hosts.web1 = { }; }").unwrap();
        for (k, v) in patch.as_object().unwrap() {
            fleet["rollout"][k] = v.clone();
        }
        let tool = inventory::parse(&fleet.to_string()).unwrap_err().to_string();
        let want = format!("{}; fix it in the flake's deployFlake", &lib_line["error: ".len()..]);
        assert_eq!(tool, want, "{rollout}");
    }
}

#[test]
fn a_canary_selector_must_match_a_host() {
    let err = mk(r#"{ hosts = { web1.tags = [ "canary" ]; db1 = { }; };
                     rollout.canary = [ "web*" "@canry" ]; }"#)
    .unwrap_err();
    assert_eq!(
        error_line(&err),
        r#"error: deployFlake.rollout.canary.1: "@canry" matches no host of deployFlake.hosts (a name, @tag or glob)"#
    );
    for ok in [r#""db1""#, r#""[!w]*""#, r#""d?1""#, r#""@canary""#] {
        let v = mk(&format!(
            r#"{{ hosts = {{ web1.tags = [ "canary" ]; db1 = {{ }}; }}; rollout.canary = [ {ok} ]; }}"#
        ));
        assert!(v.is_ok(), "{ok}: {v:?}");
    }
}

/// What the tool asks for (`deployFlake.compact`) reads as the same fleet
/// as what every reader of schema version 1 gets (the value as JSON), and
/// holds per host only what the host sets.
#[test]
fn the_compact_view_is_the_same_fleet() {
    let fleet = r#"{ defaults = { sshUser = "deploy"; timeouts.copy = 1200; selfCheck = "bin/check";
                                  healthChecks = [ { command = [ "true" ]; } ]; };
                     hosts.web1 = { hostname = "203.0.113.7"; tags = [ "web" ]; timeouts.build = 7; };
                     hosts.db1 = { buildOn = "local"; selfCheck = null; magicRollback = false;
                                   sshOpts = [ "-o" "Compression=yes" ];
                                   healthChecks = [ { http = "http://db1/"; period = 1; } ]; };
                     hosts."odd'$(x)" = { hostname = "odd.example.com"; configuration = "web1"; sudo = "doas"; }; }"#;
    let full = mk(fleet).unwrap();
    let compact = mk_attr(fleet, "compact").unwrap();
    assert_eq!(
        inventory::parse(&compact.to_string()).unwrap(),
        inventory::parse(&full.to_string()).unwrap()
    );
    assert_eq!(
        compact["hosts"]["web1"],
        json!({ "hostname": "203.0.113.7", "tags": ["web"],
        "timeouts": full["hosts"]["web1"]["timeouts"].clone() })
    );
    assert_eq!(compact["hosts"]["db1"]["healthChecks"], full["hosts"]["db1"]["healthChecks"]);
    assert_eq!(compact["defaults"]["healthChecks"], full["hosts"]["web1"]["healthChecks"]);
    assert!(compact["defaults"].get("hostname").is_none(), "{compact}");
    // Faults are found the same way through either.
    let bad = r#"{ hosts.web1.sshPort = 0; }"#;
    assert_eq!(mk_attr(bad, "compact").unwrap_err(), mk(bad).unwrap_err());
}

/// A fleet without the compact view (an older lib's, or one written by
/// hand) reads as the same inventory.
#[tokio::test]
async fn load_reads_a_document_without_the_compact_view() {
    let flake = |deploy_flake: &str| {
        flake_from(&format!(
            r#"{{ outputs = {{ self }}: {{
                 nixosConfigurations = {{ web1 = throw "web1 forced"; db1 = throw "db1 forced"; }};
                 fleet = (import ./lib).mkDeployFlake {{ inherit self;
                   defaults = {{ sshUser = "deploy"; }};
                   hosts = {{ web1.tags = [ "web" ]; db1 = {{ buildOn = "local"; sshPort = 2222; }}; }}; }};
                 deployFlake = {deploy_flake}; }}; }}"#
        ))
    };
    let (with_view, by_hand) =
        (flake("self.fleet"), flake("builtins.fromJSON (builtins.toJSON self.fleet)"));
    let load = |dir: &std::path::Path| {
        let flake = dir.to_str().unwrap().to_string();
        async move { inventory::load(&flake, inventory::DEFAULT_EVAL_TIMEOUT).await.unwrap() }
    };
    let inv = load(by_hand.path()).await;
    assert_eq!(inv.hosts["db1"].ssh_port, 2222);
    assert_eq!(inv, load(with_view.path()).await);
}

#[test]
fn keys_merge_by_name_over_the_defaults_and_are_resolved() {
    let v = mk(r#"{ defaults.keys = { db = { keyCommand = [ "pass" "db" ]; }; api = { text = "t"; }; };
                    hosts.web1.keys = { db = { keyFile = "/srv/db"; user = "postgres"; uploadAt = "post-activation"; }; tls.keyFile = "/srv/tls"; };
                    hosts.db1 = { }; }"#)
    .unwrap();
    let web1 = &v["hosts"]["web1"]["keys"];
    assert_eq!(
        web1["db"],
        json!({ "name": "db", "text": null, "keyFile": "/srv/db", "keyCommand": null,
                "destDir": "/run/keys", "user": "postgres", "group": "root",
                "permissions": "0600", "uploadAt": "post-activation" })
    );
    assert_eq!(web1["api"]["text"], "t");
    assert_eq!(web1["tls"]["name"], "tls");
    let names: Vec<&String> = v["hosts"]["db1"]["keys"].as_object().unwrap().keys().collect();
    assert_eq!(names, ["api", "db"]);
    assert_eq!(v["hosts"]["db1"]["keys"]["db"]["keyCommand"], json!(["pass", "db"]));
    // The tool reads the same, from the document and from the compact view.
    let inv = inventory::parse(&v.to_string()).unwrap();
    assert_eq!(inv.hosts["web1"].keys["db"].key_file.as_deref(), Some("/srv/db"));
    let compact = mk_attr(
        r#"{ defaults.keys.api.text = "t"; hosts.web1.keys.tls.keyFile = "/k"; hosts.db1 = { }; }"#,
        "compact",
    )
    .unwrap();
    let inv = inventory::parse(&compact.to_string()).unwrap();
    let web1: Vec<&String> = inv.hosts["web1"].keys.keys().collect();
    assert_eq!(web1, ["api", "tls"]);
    assert_eq!(inv.hosts["db1"].keys.len(), 1);
}

/// A `keyFile` written as a Nix path would put the key into the store (Nix
/// copies a path literal there the moment it becomes a string): refused
/// with why, before anything is copied.
#[test]
fn a_key_file_as_a_nix_path_is_refused_without_reaching_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let marker = format!("never-in-the-store-{}", std::process::id());
    let file = dir.path().join("db.key");
    std::fs::write(&file, &marker).unwrap();
    let err = mk(&format!("{{ hosts.web1.keys.db.keyFile = {}; }}", file.display())).unwrap_err();
    assert_eq!(
        error_line(&err),
        format!(
            "error: deployFlake.hosts.web1.keys.db.keyFile: expected an absolute path on the deploying machine, as a string (\"/run/secrets/db\"), got a path ({}): is a Nix path, which copies the file into the Nix store, readable by every user (and by every target that builds from the flake): write the path as a string",
            file.display()
        )
    );
    // In defaults too, and in the same words as deployChecks would use.
    let err = mk(&format!("{{ defaults.keys.db.keyFile = {}; }}", file.display())).unwrap_err();
    assert!(
        error_line(&err)
            .contains("deployFlake.defaults.keys.db.keyFile: expected an absolute path"),
        "{err}"
    );
    let stored = std::process::Command::new("grep")
        .args(["-rl", "--include=*db.key", &marker, "/nix/store"])
        .output()
        .unwrap();
    assert!(stored.stdout.is_empty(), "{}", String::from_utf8_lossy(&stored.stdout));
}

/// A build host may come from the defaults or the host, `buildOn` from
/// either: what a host ends up with must name one when it builds on one.
#[test]
fn build_on_host_needs_a_build_host_from_the_defaults_or_the_host() {
    let v =
        mk(r#"{ defaults = { buildOn = "host"; buildHost = "bh"; }; hosts.web1 = { }; }"#).unwrap();
    assert_eq!(
        (&v["hosts"]["web1"]["buildOn"], &v["hosts"]["web1"]["buildHost"]),
        (&json!("host"), &json!("bh"))
    );
    let v = mk(r#"{ defaults.buildOn = "host"; hosts.web1.buildHost = "root@b:2222"; }"#).unwrap();
    assert_eq!(v["hosts"]["web1"]["buildHost"], "root@b:2222");
    let err =
        mk(r#"{ defaults.buildOn = "host"; hosts = { web1.buildHost = "bh"; db1 = { }; }; }"#)
            .unwrap_err();
    assert_eq!(
        error_line(&err),
        r#"error: deployFlake.hosts.db1.buildHost: expected null or the build host: a host of deployFlake, or a destination [user@]host[:port], got null: buildOn is "host": name the build host (a host of deployFlake, or [user@]host[:port]), or pass --build-host"#
    );
}
