//! The rule set against itself and against the values it must accept and refuse.

use super::*;
use crate::fleet::Probe;
use serde_json::json;

#[test]
fn the_rule_set_parses_and_names_every_phase() {
    let r = rules();
    assert_eq!(r.schema_version, crate::fleet::SCHEMA_VERSION);
    let mut keys: Vec<&str> = Phase::ALL.iter().map(|p| p.timeout_key()).collect();
    keys.sort_unstable();
    let json: Vec<&str> = r.timeout_defaults.keys().map(String::as_str).collect();
    assert_eq!(keys, json, "Phase::ALL and lib/rules.json timeoutDefaults differ");
    // Every option has a default but the per-host ones and timeouts.
    let mut defaulted: Vec<&str> = r.host_defaults.keys().map(String::as_str).collect();
    defaulted.extend(r.per_host_only.iter().map(String::as_str));
    defaulted.push("timeouts");
    defaulted.sort_unstable();
    assert_eq!(defaulted, r.option_names());
    assert_eq!(seconds().0, 1..=31_536_000);
}

/// Every rule: int texts name their bounds, checks are well-formed.
#[test]
fn every_rule_is_well_formed() {
    fn walk(r: &Rules, rule: &Rule, seen: &mut usize) {
        *seen += 1;
        let checks_ok = |checks: &[Check], list: bool| {
            for c in checks {
                for p in [&c.require, &c.forbid].into_iter().flatten() {
                    p.regex();
                }
                let n = [c.require.is_some(), c.forbid.is_some(), c.min_length.is_some()]
                    .iter()
                    .filter(|x| **x)
                    .count();
                assert_eq!(n, 1, "a check has exactly one of require, forbid, minLength");
                assert!(!list || c.min_length.is_some(), "a list check is minLength");
            }
        };
        match rule {
            Rule::Int { expected, min, max } => {
                assert!(expected.contains(&min.to_string()), "{expected}");
                assert!(expected.contains(&max.to_string()), "{expected}");
            }
            Rule::String { checks, accept, .. } => {
                checks_ok(checks, false);
                if let Some(a) = accept {
                    a.regex();
                }
            }
            Rule::List { checks, element, .. } => {
                checks_ok(checks, true);
                walk(r, r.resolve(element), seen);
            }
            Rule::Timeouts { each, .. } => walk(r, r.resolve(each), seen),
            Rule::HealthChecks { check, .. } => {
                for f in check.fields.values() {
                    walk(r, r.resolve(f), seen);
                }
                for k in &check.exactly_one_of.fields {
                    assert!(check.fields.contains_key(k), "{k}");
                }
            }
            Rule::SshOpts { option, flags, .. } => {
                checks_ok(&option.checks, false);
                for (name, f) in flags {
                    assert!(name.len() == 2 && name.starts_with('-'), "{name}");
                    assert!(f.value.is_none() || f.refused.is_none(), "{name}");
                    if let Some(v) = &f.value {
                        checks_ok(&v.checks, false);
                    }
                }
            }
            Rule::Keys { key, .. } => {
                for f in key.fields.values() {
                    walk(r, r.resolve(f), seen);
                }
                for k in &key.exactly_one_of.fields {
                    assert!(key.fields.contains_key(k), "{k}");
                }
                assert!(key.clash.contains("%FILE%") && key.clash.contains("%OTHER%"));
            }
            Rule::Bool { .. } | Rule::Enum { .. } => {}
        }
    }
    let r = rules();
    let mut seen = 0;
    for name in r.option_names() {
        walk(r, r.option(name), &mut seen);
    }
    assert!(seen > 12, "{seen}");
}

/// `accept` is only a fast path: whatever it matches passes every check.
#[test]
fn accept_never_lets_through_what_a_check_rejects() {
    let alphabet = [
        "a", "Z", "0", "-", "@", "/", ":", " ", "\t", "\n", "\u{7}", "\"", "'", "$", ".", "é", "[",
        "]",
    ];
    let mut corpus = vec![String::new()];
    for a in alphabet {
        for b in alphabet {
            corpus.push(format!("{a}{b}"));
            for c in alphabet {
                corpus.push(format!("{a}x{b}{c}"));
            }
        }
    }
    let r = rules();
    let mut accepted = 0;
    let mut strings: Vec<(String, &Rule)> =
        r.option_names().into_iter().map(|n| (n.to_string(), r.option(n))).collect();
    if let Rule::Keys { key, .. } = r.option("keys") {
        strings.extend(key.fields.iter().map(|(n, f)| (format!("keys.{n}"), r.resolve(f))));
    }
    for (name, rule) in strings {
        if let Rule::String { accept: Some(accept), checks, .. } = rule {
            for s in &corpus {
                if accept.matches(s) {
                    accepted += 1;
                    assert_eq!(first_failing(checks, Subject::Str(s)), None, "{name}: {s:?}");
                }
            }
        }
    }
    assert!(accepted > 1000, "{accepted}");
}

#[test]
fn words_values_as_nix_does() {
    assert_eq!(
        nix_json_string("a\"b\\c\n\r\t\u{8}\u{1b}\u{7f}é"),
        r#""a\"b\\c\n\r\t\u0008\u001b"#.to_string() + "\u{7f}é\""
    );
    assert_eq!(describe(&json!(null)), "null");
    assert_eq!(describe(&json!(5)), "an integer (5)");
    assert_eq!(describe(&json!(u64::MAX)), "an integer (18446744073709551615)");
    assert_eq!(describe(&json!(1.5)), "a float");
    assert_eq!(describe(&json!(true)), "a boolean (true)");
    assert_eq!(describe(&json!([1])), "a list");
    assert_eq!(describe(&json!({})), "an attribute set");
    assert_eq!(attr_path("p", "web-1"), "p.web-1");
    assert_eq!(attr_path("p", "my host"), "p.\"my host\"");
    assert_eq!(suggest("sshPrt", &["sshPort", "sshOpts", "sudo"]), "; did you mean \"sshPort\"?");
    assert_eq!(suggest("zzzzzz", &["sshPort"]), "");
    assert_eq!(levenshtein("kitten", "sitting"), 3);
}

#[test]
fn ssh_opts_are_read_as_ssh_reads_them() {
    let opts: Vec<String> = [
        "-i",
        "/k/id key",
        "-oUserKnownHostsFile=/k/known",
        "-o",
        "ProxyJump bastion",
        "-4",
        "-o",
        "ServerAliveInterval = 5",
        "-Jjump",
        "-F",
        "/etc/x",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(
        ssh_opts(&opts).unwrap(),
        vec![
            SshOpt::WithValue { flag: 'i', value: "/k/id key" },
            SshOpt::Config { key: "UserKnownHostsFile", value: "/k/known" },
            SshOpt::Config { key: "ProxyJump", value: "bastion" },
            SshOpt::Flag('4'),
            SshOpt::Config { key: "ServerAliveInterval", value: "5" },
            SshOpt::WithValue { flag: 'J', value: "jump" },
            SshOpt::WithValue { flag: 'F', value: "/etc/x" },
        ]
    );
}

#[test]
fn ssh_opts_are_refused_with_the_element_and_the_fix() {
    let err = |o: &[&str]| {
        let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
        ssh_opts(&o).unwrap_err()
    };
    let opt =
        "expected an ssh option (-o Key=Value, -i FILE, -J HOST, -F FILE, -4, -6, -A, -C or -q)";
    let unsupported = "not supported: write it as -o Key=Value";
    let table: [(&[&str], String); 9] = [
        (&["-X"], format!(r#"sshOpts.0: {opt}, got a string ("-X"): {unsupported}"#)),
        (
            &["-4", "-i"],
            format!(
                r#"sshOpts.1: {opt}, got a string ("-i"): needs a value: put it in the next element or right after the flag"#
            ),
        ),
        (&["-p", "22"], format!(r#"sshOpts.0: {opt}, got a string ("-p"): set sshPort instead"#)),
        (&["-lroot"], format!(r#"sshOpts.0: {opt}, got a string ("-lroot"): set sshUser instead"#)),
        (&["-4x"], format!(r#"sshOpts.0: {opt}, got a string ("-4x"): {unsupported}"#)),
        (&["-é"], format!(r#"sshOpts.0: {opt}, got a string ("-é"): {unsupported}"#)),
        (
            &["-o", "Key="],
            r#"sshOpts.1: expected Key=Value or "Key Value" after -o, got a string ("Key="): is not Key=Value"#.into(),
        ),
        (
            &["-oA=b\nHost *"],
            format!(r#"sshOpts.0: {opt}, got a string ("-oA=b\nHost *"): contains a control character"#),
        ),
        (
            &["-i", "a\"b"],
            r#"sshOpts.1: expected a file name after -i, got a string ("a\"b"): contains '"', which an ssh_config file cannot quote"#.into(),
        ),
    ];
    for (opts, want) in table {
        assert_eq!(err(opts), want, "{opts:?}");
    }
}

/// A record serde has read is checked field by field as its JSON is.
#[test]
fn typed_records_read_as_their_json() {
    let base = {
        let mut h = HostSpec::with_defaults("web1");
        h.ssh_opts = vec!["-i".into(), "/k".into()];
        h.tags = vec!["web".into()];
        h.self_check = Some("bin/check".into());
        h.health_checks = vec![
            HealthCheck {
                description: "up".into(),
                probe: Probe::Command(vec!["true".into()]),
                period: 2,
                timeout: 30,
            },
            HealthCheck {
                description: "GET".into(),
                probe: Probe::Http("http://h/".into()),
                period: 1,
                timeout: 31_536_000,
            },
        ];
        h
    };
    let r = rules();
    for name in r.option_names() {
        assert!(View::Host(&base).get(name).is_some(), "{name}");
    }
    for phase in r.timeout_defaults.keys() {
        assert!(View::Timeouts(&base.timeouts).get(phase).is_some(), "{phase}");
    }
    let Rule::HealthChecks { check, .. } = r.option("healthChecks") else { panic!() };
    for field in check.fields.keys() {
        assert!(View::Check(&base.health_checks[0]).get(field).is_some(), "{field}");
    }

    type Change = fn(&mut HostSpec);
    // (A check with both command and http, or neither, is no HealthCheck:
    // it does not read, and only the JSON is checked; tests/inventory.rs.)
    let changes: [Change; 18] = [
        |_| {},
        |h| h.hostname = "root@h".into(),
        |h| h.hostname = String::new(),
        |h| h.ssh_user = "a:b".into(),
        |h| h.ssh_port = 0,
        |h| h.ssh_opts = vec!["-p".into(), "22".into()],
        |h| h.ssh_opts = vec!["-o".into()],
        |h| h.configuration = "a\"b".into(),
        |h| h.self_check = Some("/x".into()),
        |h| h.self_check = Some(String::new()),
        |h| h.sudo = "\n".into(),
        |h| h.health_checks[0].period = 0,
        |h| h.health_checks[1].timeout = u64::MAX,
        |h| h.health_checks[0].probe = Probe::Command(vec![]),
        |h| h.health_checks[1].probe = Probe::Http("https://x/".into()),
        |h| h.timeouts.self_check = 0,
        |h| h.timeouts.boot = 31_536_001,
        |h| h.timeouts.connect = u64::MAX,
    ];
    let mut rejected = 0;
    for change in changes {
        let mut h = base.clone();
        change(&mut h);
        let typed = check_spec("p", &h);
        assert_eq!(typed, check_host("p", &serde_json::to_value(&h).unwrap()));
        rejected += usize::from(typed.is_err());
    }
    assert_eq!(rejected, changes.len() - 1);
}

#[test]
fn string_problems_for_the_command_line() {
    assert_eq!(string_problem("hostname", "fe80::1"), None);
    assert_eq!(string_problem("hostname", "it's$(x)"), None);
    assert_eq!(string_problem("hostname", "a b"), Some("contains whitespace"));
    assert_eq!(string_problem("sshUser", "a:b"), Some("contains ':'"));
    assert_eq!(string_problem("configuration", "it's $(touch x)"), None);
    assert_eq!(
        string_problem("selfCheck", "bin/../x"),
        Some("contains '..': it must stay inside the toplevel")
    );
}
