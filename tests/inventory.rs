//! Parsing and validating a deployFlake JSON document: every bad input
//! with its exact message.

use deploy_flake::inventory::{self, classify_eval_failure, BuildOn, HostSpec, InventoryError};
use serde_json::{json, Value};

fn host() -> Value {
    serde_json::to_value(HostSpec::with_defaults("web1")).unwrap()
}

fn doc_with(field: &str, value: Value) -> String {
    let mut h = host();
    h[field] = value;
    json!({ "schemaVersion": 1, "hosts": { "web1": h } }).to_string()
}

fn err(json: &str) -> String {
    inventory::parse(json).unwrap_err().to_string()
}

#[test]
fn accepts_a_resolved_record() {
    let inv =
        inventory::parse(&json!({ "schemaVersion": 1, "hosts": { "web1": host() } }).to_string())
            .unwrap();
    assert_eq!(inv.hosts["web1"], HostSpec::with_defaults("web1"));
    assert_eq!(inv.hosts["web1"].build_on, BuildOn::Target);
}

#[test]
fn schema_versions() {
    assert_eq!(
        err(r#"{"schemaVersion": 2, "hosts": {}, "somethingNew": true}"#),
        "deployFlake has schemaVersion 2, but this deploy-flake understands only version 1: upgrade deploy-flake (or pin the flake's deploy-flake input to the version of this binary)"
    );
    assert_eq!(
        err(r#"{"schemaVersion": 0, "hosts": {}}"#),
        "deployFlake has schemaVersion 0, but this deploy-flake understands only version 1: update the flake's deploy-flake input"
    );
    assert_eq!(
        err(r#"{"hosts": {}}"#),
        "deployFlake has no schemaVersion; it must be the output of deploy-flake's lib.mkDeployFlake"
    );
    assert_eq!(
        err(r#"{"schemaVersion": "1", "hosts": {}}"#),
        "deployFlake.schemaVersion: expected an integer, got \"1\"; it must be the output of deploy-flake's lib.mkDeployFlake (same version as this binary)"
    );
}

#[test]
fn structural_errors() {
    assert_eq!(
        err("[]"),
        "deployFlake: expected an attribute set; it must be the output of deploy-flake's lib.mkDeployFlake (same version as this binary)"
    );
    assert!(err("{").starts_with("deployFlake is not valid JSON ("));
    assert_eq!(
        err(r#"{"schemaVersion": 1, "hosts": {}, "extra": 1}"#),
        "deployFlake.extra: unknown field; it must be the output of deploy-flake's lib.mkDeployFlake (same version as this binary)"
    );
    assert_eq!(
        err(r#"{"schemaVersion": 1}"#),
        "deployFlake.hosts: missing; it must be the output of deploy-flake's lib.mkDeployFlake (same version as this binary)"
    );
    let mut h = host();
    h["sshPrt"] = json!(22);
    let doc = json!({ "schemaVersion": 1, "hosts": { "my host": h } }).to_string();
    let e = err(&doc);
    assert!(
        e.starts_with("deployFlake.hosts.\"my host\": unknown field `sshPrt`, expected one of"),
        "{e}"
    );
}

#[test]
fn field_types_and_ranges() {
    let e = err(&doc_with("sshPort", json!(70000)));
    assert!(
        e.starts_with("deployFlake.hosts.web1: invalid value: integer `70000`, expected u16"),
        "{e}"
    );
    assert_eq!(
        err(&doc_with("sshPort", json!(0))),
        "deployFlake.hosts.web1.sshPort: 0 is not a port: use 1..65535; fix it in the flake's deployFlake"
    );
    let e = err(&doc_with("buildOn", json!("remote")));
    assert!(
        e.starts_with(
            "deployFlake.hosts.web1: unknown variant `remote`, expected `target` or `local`"
        ),
        "{e}"
    );
}

#[test]
fn hostile_hostnames_and_users() {
    let cases = [
        (
            "hostname",
            json!(""),
            r#"deployFlake.hosts.web1.hostname: "" is not a plausible host name: it is empty; fix it in the flake's deployFlake"#,
        ),
        (
            "hostname",
            json!("a b"),
            r#"deployFlake.hosts.web1.hostname: "a b" is not a plausible host name: contains whitespace; fix it in the flake's deployFlake"#,
        ),
        (
            "hostname",
            json!("-oProxyCommand=sh"),
            r#"deployFlake.hosts.web1.hostname: "-oProxyCommand=sh" is not a plausible host name: starts with '-'; fix it in the flake's deployFlake"#,
        ),
        (
            "hostname",
            json!("a\u{7}b"),
            r#"deployFlake.hosts.web1.hostname: "a\u0007b" is not a plausible host name: contains a control character; fix it in the flake's deployFlake"#,
        ),
        (
            "hostname",
            json!("root@h"),
            r#"deployFlake.hosts.web1.hostname: "root@h" is not a plausible host name: contains '@'; fix it in the flake's deployFlake"#,
        ),
        (
            "sshUser",
            json!("-l"),
            r#"deployFlake.hosts.web1.sshUser: "-l" is not a plausible user name: starts with '-'; fix it in the flake's deployFlake"#,
        ),
        (
            "sshUser",
            json!("a:b"),
            r#"deployFlake.hosts.web1.sshUser: "a:b" is not a plausible user name: contains ':'; fix it in the flake's deployFlake"#,
        ),
        (
            "configuration",
            json!(""),
            r#"deployFlake.hosts.web1.configuration: "" is empty: name a nixosConfigurations attribute; fix it in the flake's deployFlake"#,
        ),
        (
            "configuration",
            json!("a\nb"),
            r#"deployFlake.hosts.web1.configuration: "a\nb" contains a control character; fix it in the flake's deployFlake"#,
        ),
        (
            "selfCheck",
            json!("/bin/check"),
            r#"deployFlake.hosts.web1.selfCheck: "/bin/check" is absolute: it must be a path inside the toplevel, e.g. "bin/check"; fix it in the flake's deployFlake"#,
        ),
        (
            "selfCheck",
            json!("bin/../../etc/x"),
            r#"deployFlake.hosts.web1.selfCheck: "bin/../../etc/x" contains '..': it must stay inside the toplevel; fix it in the flake's deployFlake"#,
        ),
        (
            "selfCheck",
            json!(""),
            r#"deployFlake.hosts.web1.selfCheck: "" is empty: use null for auto-detection; fix it in the flake's deployFlake"#,
        ),
        (
            "sudo",
            json!(""),
            r#"deployFlake.hosts.web1.sudo: "" must be a non-empty command without control characters; fix it in the flake's deployFlake"#,
        ),
    ];
    for (field, value, want) in cases {
        assert_eq!(err(&doc_with(field, value.clone())), want, "{field} = {value}");
    }
}

#[test]
fn hostile_configuration_names_are_kept() {
    let doc = doc_with("configuration", json!("odd \"name\" $(rm -rf /)"));
    let inv = inventory::parse(&doc).unwrap();
    assert_eq!(inv.hosts["web1"].configuration, "odd \"name\" $(rm -rf /)");
}

#[test]
fn zero_timeout_is_rejected() {
    let mut t = serde_json::to_value(inventory::Timeouts::default()).unwrap();
    t["selfCheck"] = json!(0);
    assert_eq!(
        err(&doc_with("timeouts", t)),
        "deployFlake.hosts.web1.timeouts.selfCheck: 0 is not a timeout: use a positive number of seconds; fix it in the flake's deployFlake"
    );
}

#[test]
fn eval_failures_are_classified() {
    let missing = "warning: x\nerror: flake 'path:/tmp/f' does not provide attribute 'packages.x86_64-linux.deployFlake', 'legacyPackages.x86_64-linux.deployFlake' or 'deployFlake'\n";
    assert!(
        matches!(classify_eval_failure("/tmp/f", missing), InventoryError::NoDeployFlake { flake } if flake == "/tmp/f")
    );

    let long: String = (1..=30).map(|i| format!("line {i}\n")).collect();
    match classify_eval_failure(".", &long) {
        InventoryError::Eval { stderr_tail, .. } => {
            assert_eq!(stderr_tail.lines().next(), Some("line 11"));
            assert_eq!(stderr_tail.lines().last(), Some("line 30"));
        }
        e => panic!("{e:?}"),
    }
}

#[test]
fn eval_argv_is_one_argument_per_word() {
    assert_eq!(
        inventory::eval_argv("./my flake"),
        [
            "nix",
            "eval",
            "--json",
            "--extra-experimental-features",
            "nix-command flakes",
            "./my flake#deployFlake"
        ]
    );
}
