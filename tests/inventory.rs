//! Parsing and validating a deployFlake JSON document: every bad input
//! with its exact message.

use deploy_flake::events::Phase;
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
    assert_eq!(
        err(&doc),
        r#"deployFlake.hosts."my host".sshPrt: unknown option; did you mean "sshPort"? (known options: buildHost, buildHostCapacity, buildHostSshOpts, buildOn, configuration, copyFrom, healthChecks, hostname, keys, magicRollback, pushTo, selfCheck, sshOpts, sshPort, sshUser, substituteOnTarget, sudo, system, tags, timeouts); fix it in the flake's deployFlake"#
    );
    let mut h = host();
    h.as_object_mut().unwrap().remove("sudo");
    assert_eq!(
        err(&json!({ "schemaVersion": 1, "hosts": { "web1": h } }).to_string()),
        "deployFlake.hosts.web1.sudo: missing (a deployFlake must be fully resolved; mkDeployFlake fills in defaults); fix it in the flake's deployFlake"
    );
    assert_eq!(
        err(r#"{"schemaVersion": 1, "hosts": {"web1": "x"}}"#),
        r#"deployFlake.hosts.web1: expected an attribute set, got a string ("x"); fix it in the flake's deployFlake"#
    );
}

#[test]
fn field_types_and_ranges() {
    let cases = [
        (
            "sshPort",
            json!(70000),
            "deployFlake.hosts.web1.sshPort: expected an integer between 1 and 65535, got an integer (70000); fix it in the flake's deployFlake",
        ),
        (
            "sshPort",
            json!(0),
            "deployFlake.hosts.web1.sshPort: expected an integer between 1 and 65535, got an integer (0); fix it in the flake's deployFlake",
        ),
        (
            "sshPort",
            json!("22"),
            r#"deployFlake.hosts.web1.sshPort: expected an integer between 1 and 65535, got a string ("22"); fix it in the flake's deployFlake"#,
        ),
        (
            "buildOn",
            json!("remote"),
            r#"deployFlake.hosts.web1.buildOn: expected "target", "local" or "host", got a string ("remote"); fix it in the flake's deployFlake"#,
        ),
        (
            "tags",
            json!(["web", 1]),
            "deployFlake.hosts.web1.tags.1: expected a string, got an integer (1); fix it in the flake's deployFlake",
        ),
        (
            "magicRollback",
            json!(null),
            "deployFlake.hosts.web1.magicRollback: expected a boolean, got null; fix it in the flake's deployFlake",
        ),
    ];
    for (field, value, want) in cases {
        assert_eq!(err(&doc_with(field, value.clone())), want, "{field} = {value}");
    }
}

#[test]
fn hostile_hostnames_and_users() {
    const HOST: &str = "expected a host name or address (not empty, without whitespace, '@', '/', '?', '#', '&', or '%' but before an IPv6 zone id, not starting with '-')";
    const USER: &str = "expected a user name (not empty, without whitespace, '@', '/', ':', '?', '#', '&' or '%', not starting with '-')";
    const CONFIG: &str = r#"expected a nixosConfigurations attribute name (not empty, without '"' or control characters)"#;
    const SELF_CHECK: &str = r#"expected null (run pre-activate-safety-checks if the system has one) or a relative path inside the toplevel, e.g. "bin/check""#;
    let cases = [
        ("hostname", json!(""), format!(r#"{HOST}, got a string (""): is empty"#)),
        ("hostname", json!("a b"), format!(r#"{HOST}, got a string ("a b"): contains whitespace"#)),
        (
            "hostname",
            json!("-oProxyCommand=sh"),
            format!(r#"{HOST}, got a string ("-oProxyCommand=sh"): starts with '-'"#),
        ),
        (
            "hostname",
            json!("a\u{7}b"),
            format!(r#"{HOST}, got a string ("a\u0007b"): contains a control character"#),
        ),
        (
            "hostname",
            json!("root@h"),
            format!(r#"{HOST}, got a string ("root@h"): contains '@': set the user in sshUser"#),
        ),
        ("hostname", json!("h/x"), format!(r#"{HOST}, got a string ("h/x"): contains '/'"#)),
        ("sshUser", json!("-l"), format!(r#"{USER}, got a string ("-l"): starts with '-'"#)),
        ("sshUser", json!("a:b"), format!(r#"{USER}, got a string ("a:b"): contains ':'"#)),
        ("configuration", json!(""), format!(r#"{CONFIG}, got a string (""): is empty"#)),
        (
            "configuration",
            json!("a\nb"),
            format!(
                r#"{CONFIG}, got a string ("a\nb"): contains a control character: rename the nixosConfigurations attribute"#
            ),
        ),
        (
            "configuration",
            json!("odd \"name\""),
            format!(
                r#"{CONFIG}, got a string ("odd \"name\""): contains '"', which a flake attribute path cannot hold: rename the nixosConfigurations attribute"#
            ),
        ),
        (
            "selfCheck",
            json!("/bin/check"),
            format!(
                r#"{SELF_CHECK}, got a string ("/bin/check"): is absolute: it must be a path inside the toplevel, e.g. "bin/check""#
            ),
        ),
        (
            "selfCheck",
            json!("bin/../../etc/x"),
            format!(
                r#"{SELF_CHECK}, got a string ("bin/../../etc/x"): contains '..': it must stay inside the toplevel"#
            ),
        ),
        (
            "selfCheck",
            json!(""),
            format!(r#"{SELF_CHECK}, got a string (""): is empty: use null for auto-detection"#),
        ),
        (
            "sudo",
            json!(""),
            r#"expected a command (not empty, no control characters), got a string (""): is empty"#
                .to_string(),
        ),
    ];
    for (field, value, want) in cases {
        assert_eq!(
            err(&doc_with(field, value.clone())),
            format!("deployFlake.hosts.web1.{field}: {want}; fix it in the flake's deployFlake"),
            "{field} = {value}"
        );
    }
}

#[test]
fn hostile_but_quotable_names_are_kept() {
    let mut h = host();
    h["configuration"] = json!("it's $(rm -rf /)");
    h["hostname"] = json!("fe80::1");
    let doc = json!({ "schemaVersion": 1, "hosts": { "odd \"name\" $(x)": h } }).to_string();
    let inv = inventory::parse(&doc).unwrap();
    let spec = &inv.hosts["odd \"name\" $(x)"];
    assert_eq!(spec.configuration, "it's $(rm -rf /)");
    assert_eq!(spec.hostname, "fe80::1");
}

#[test]
fn timeouts_are_bounded() {
    let with = |phase: &str, value: Value| {
        let mut t = serde_json::to_value(inventory::Timeouts::default()).unwrap();
        t[phase] = value;
        doc_with("timeouts", t)
    };
    for (phase, value, got) in [
        ("selfCheck", json!(0), "an integer (0)"),
        ("lock", json!(u64::MAX), "an integer (18446744073709551615)"),
        ("lock", json!(31536001), "an integer (31536001)"),
        ("boot", json!(null), "null"),
        ("boot", json!(30.5), "a float"),
    ] {
        assert_eq!(
            err(&with(phase, value)),
            format!("deployFlake.hosts.web1.timeouts.{phase}: expected a whole number of seconds between 1 and 31536000 (365 days), got {got}; fix it in the flake's deployFlake")
        );
    }
    let inv = inventory::parse(&with("lock", json!(31536000))).unwrap();
    assert_eq!(inv.hosts["web1"].timeouts.get(Phase::Lock), 31536000);
    // Records from a lib/ without the reboot timeout still read, with its default.
    let mut t = serde_json::to_value(inventory::Timeouts::default()).unwrap();
    t.as_object_mut().unwrap().remove("reboot");
    let inv = inventory::parse(&doc_with("timeouts", t)).unwrap();
    assert_eq!(inv.hosts["web1"].timeouts.get(Phase::Reboot), 600);
    assert_eq!(
        err(&with("reboot", json!(0))),
        "deployFlake.hosts.web1.timeouts.reboot: expected a whole number of seconds between 1 and 31536000 (365 days), got an integer (0); fix it in the flake's deployFlake"
    );
    let mut t = serde_json::to_value(inventory::Timeouts::default()).unwrap();
    t["biuld"] = json!(5);
    assert_eq!(
        err(&doc_with("timeouts", t)),
        r#"deployFlake.hosts.web1.timeouts.biuld: unknown option; did you mean "build"? (known options: activate, boot, build, confirm, connect, copy, lock, preflight, reboot, selfCheck); fix it in the flake's deployFlake"#
    );
}

#[test]
fn health_checks_are_checked_as_resolved_records() {
    let check = json!({ "description": "up", "command": ["true"], "http": null, "period": 2, "timeout": 30 });
    let inv = inventory::parse(&doc_with("healthChecks", json!([check]))).unwrap();
    assert_eq!(inv.hosts["web1"].health_checks[0].command, Some(vec!["true".to_string()]));
    let mut null_period = check.clone();
    null_period["period"] = json!(null);
    assert_eq!(
        err(&doc_with("healthChecks", json!([null_period]))),
        "deployFlake.hosts.web1.healthChecks.0.period: expected a whole number of seconds between 1 and 31536000 (365 days), got null; fix it in the flake's deployFlake"
    );
    let mut both = check.clone();
    both["http"] = json!("http://x/");
    assert_eq!(
        err(&doc_with("healthChecks", json!([both]))),
        r#"deployFlake.hosts.web1.healthChecks.0: expected a health check ({ command = [ "argv" ... ]; } run on the target as root, or { http = "http://..."; } fetched from the deploying machine; optional: description, period, timeout), got an attribute set: needs exactly one of command (a non-empty argv) or http (an http:// URL); fix it in the flake's deployFlake"#
    );
    // Records from a lib/ without health checks still read.
    let mut h = host();
    h.as_object_mut().unwrap().remove("healthChecks");
    let inv = inventory::parse(&json!({ "schemaVersion": 1, "hosts": { "web1": h } }).to_string())
        .unwrap();
    assert!(inv.hosts["web1"].health_checks.is_empty());
}

#[test]
fn ssh_opts_are_checked() {
    const OPT: &str =
        "expected an ssh option (-o Key=Value, -i FILE, -J HOST, -F FILE, -4, -6, -A, -C or -q)";
    let cases = [
        (json!(["-p", "22"]), format!(r#"sshOpts.0: {OPT}, got a string ("-p"): set sshPort instead"#)),
        (json!(["-l", "x"]), format!(r#"sshOpts.0: {OPT}, got a string ("-l"): set sshUser instead"#)),
        (
            json!(["-X"]),
            format!(r#"sshOpts.0: {OPT}, got a string ("-X"): not supported: write it as -o Key=Value"#),
        ),
        (
            json!(["-4", "-o"]),
            format!(r#"sshOpts.1: {OPT}, got a string ("-o"): needs a value: put it in the next element or right after the flag"#),
        ),
        (json!(["-i", 5]), "sshOpts.1: expected a file name after -i, got an integer (5)".into()),
        (
            json!("-p 22"),
            r#"sshOpts: expected a list of ssh options (-o Key=Value, -i FILE, -J HOST, -F FILE, -4, -6, -A, -C, -q), got a string ("-p 22")"#.into(),
        ),
    ];
    for (value, want) in cases {
        assert_eq!(
            err(&doc_with("sshOpts", value.clone())),
            format!("deployFlake.hosts.web1.{want}; fix it in the flake's deployFlake"),
            "{value}"
        );
    }
    let good = json!(["-i", "/k", "-oUserKnownHostsFile=/k", "-o", "ProxyJump b", "-4"]);
    inventory::parse(&doc_with("sshOpts", good)).unwrap();
}

#[test]
fn ad_hoc_records_are_checked_too() {
    let mut spec = HostSpec::with_defaults("web1");
    inventory::validate_host("nixos://h", &spec).unwrap();
    spec.ssh_opts = vec!["-p".into(), "22".into()];
    assert_eq!(
        inventory::validate_host("nixos://h", &spec).unwrap_err().to_string(),
        r#"nixos://h.sshOpts.0: expected an ssh option (-o Key=Value, -i FILE, -J HOST, -F FILE, -4, -6, -A, -C or -q), got a string ("-p"): set sshPort instead; fix it in the flake's deployFlake"#
    );
}

#[test]
fn defaults_come_from_the_rule_set() {
    let spec = HostSpec::with_defaults("web1");
    assert_eq!((spec.ssh_user.as_str(), spec.ssh_port, spec.sudo.as_str()), ("root", 22, "sudo"));
    assert!(spec.magic_rollback && spec.ssh_opts.is_empty() && spec.self_check.is_none());
    let t = spec.timeouts;
    assert_eq!(
        Phase::ALL.map(|p| t.get(p)),
        [10, 10, 60, 600, 3600, 120, 600, 30, 300, 600],
        "connect, lock, preflight, copy, build, selfCheck, activate, confirm, boot, reboot"
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
            "./my flake#deployFlake",
            "--apply",
            "d: d.compact or d"
        ]
    );
}

// ---------------------------------------------------------------------------
// lib's compact view: `defaults` once, then what each host sets itself

/// A compact view: `defaults` are those of `host()` but the per-host
/// options, changed by `defaults`; `hosts` as given.
fn compact(defaults: Value, hosts: Value) -> Value {
    let mut d = host();
    let d = d.as_object_mut().unwrap();
    d.remove("hostname");
    d.remove("configuration");
    for (k, v) in defaults.as_object().unwrap() {
        d.insert(k.clone(), v.clone());
    }
    json!({ "schemaVersion": 1, "defaults": d, "hosts": hosts })
}

/// The resolved document a compact view stands for, put together here
/// independently of the tool: a host's own values, else its name for
/// `hostname` and `configuration`, else the defaults.
fn resolved(compact: &Value) -> String {
    let mut hosts = serde_json::Map::new();
    for (name, own) in compact["hosts"].as_object().unwrap() {
        let mut record = compact["defaults"].clone();
        record["hostname"] = json!(name);
        record["configuration"] = json!(name);
        match own.as_object() {
            Some(own) => own.iter().for_each(|(k, v)| record[k] = v.clone()),
            None => record = own.clone(),
        }
        hosts.insert(name.clone(), record);
    }
    let mut doc = json!({ "schemaVersion": compact["schemaVersion"], "hosts": hosts });
    if let Some(rollout) = compact.get("rollout") {
        doc["rollout"] = rollout.clone();
    }
    doc.to_string()
}

#[test]
fn the_compact_view_reads_as_the_document_it_stands_for() {
    let check = json!({ "description": "GET http://db1/", "command": null, "http": "http://db1/", "period": 2, "timeout": 30 });
    let view = compact(
        json!({ "sshUser": "deploy", "tags": ["all"], "selfCheck": "bin/check" }),
        json!({
            "web1": { "hostname": "203.0.113.7", "tags": ["web"] },
            "db1": { "buildOn": "local", "selfCheck": null, "magicRollback": false,
                     "sshOpts": ["-o", "Compression=yes"], "healthChecks": [check],
                     "timeouts": serde_json::to_value(inventory::Timeouts::default()).unwrap() },
            "odd \"name\" $(x)": { "hostname": "odd.example.com", "configuration": "web1", "sudo": "doas", "sshPort": 2222, "sshUser": "root" },
            "plain": {},
        }),
    );
    let inv = inventory::parse(&view.to_string()).unwrap();
    assert_eq!(inv, inventory::parse(&resolved(&view)).unwrap());
    assert_eq!(inv.hosts["plain"].hostname, "plain");
    assert_eq!(inv.hosts["plain"].ssh_user, "deploy");
    assert_eq!(inv.hosts["db1"].self_check, None);
    assert_eq!(inv.hosts["web1"].self_check.as_deref(), Some("bin/check"));
    assert_eq!(inv.hosts["odd \"name\" $(x)"].configuration, "web1");
}

#[test]
fn a_fault_in_the_compact_view_reads_as_in_the_resolved_document() {
    let bad_hosts = [
        json!({ "web1": { "sshPort": 0 } }),
        json!({ "web1": { "sshPort": null } }),
        json!({ "web1": { "sshPrt": 22 } }),
        json!({ "web1": { "tags": ["web", 1] } }),
        json!({ "a": {}, "my host": {} }),
        json!({ "web1": { "hostname": "-oProxyCommand=x" } }),
        json!({ "web1": "x" }),
        json!({ "web1": { "timeouts": { "build": 5 } } }),
    ];
    for hosts in bad_hosts {
        let view = compact(json!({}), hosts);
        let want = err(&resolved(&view));
        assert!(want.starts_with("deployFlake.hosts."), "{want}");
        assert_eq!(err(&view.to_string()), want, "{view}");
    }
    // A bad default is reported on the first host that takes it.
    let view = compact(json!({ "sudo": "" }), json!({ "a": { "sudo": "doas" }, "b": {}, "c": {} }));
    assert_eq!(
        err(&view.to_string()),
        r#"deployFlake.hosts.b.sudo: expected a command (not empty, no control characters), got a string (""): is empty; fix it in the flake's deployFlake"#
    );
    assert_eq!(err(&view.to_string()), err(&resolved(&view)));
    // The rollout is checked after the hosts, and reads as it does beside
    // resolved records.
    let rollout = json!({ "batches": [], "canary": [], "maxFailures": 0, "soak": null });
    for hosts in [json!({ "web1": {} }), json!({ "web1": { "sshPort": 0 } })] {
        let mut view = compact(json!({}), hosts);
        view["rollout"] = rollout.clone();
        assert_eq!(err(&view.to_string()), err(&resolved(&view)), "{view}");
    }
    let mut view = compact(json!({}), json!({ "web1": {} }));
    view["rollout"] =
        json!({ "batches": ["25%"], "canary": ["web1"], "maxFailures": 1, "soak": 30 });
    let inv = inventory::parse(&view.to_string()).unwrap();
    assert_eq!(inv, inventory::parse(&resolved(&view)).unwrap());
    assert_eq!(inv.rollout.unwrap().soak, Some(30));
    // A newer version is reported as such, whatever the rest holds.
    let mut view = compact(json!({}), json!({ "web1": { "sshPort": 0 } }));
    view["schemaVersion"] = json!(2);
    assert!(err(&view.to_string()).starts_with("deployFlake has schemaVersion 2,"));
}

#[test]
fn a_malformed_compact_view_is_named() {
    let doc = r#"{"schemaVersion": 1, "defaults": [], "hosts": {}}"#;
    assert_eq!(
        err(doc),
        "deployFlake.compact.defaults: expected an attribute set; it must be the output of deploy-flake's lib.mkDeployFlake (same version as this binary)"
    );
    let view = compact(json!({ "hostname": "h" }), json!({ "web1": {} }));
    assert_eq!(
        err(&view.to_string()),
        "deployFlake.compact.defaults.hostname: unknown field; it must be the output of deploy-flake's lib.mkDeployFlake (same version as this binary)"
    );
}
