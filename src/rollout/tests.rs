//! Rollouts planned from deployFlake.rollout: waves, canaries, the failure
//! budget, and the soak's verdicts.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::json;

use super::*;
use crate::fleet::HostSpec;

fn fleet(hosts: &[(&str, &[&str])]) -> (Inventory, Vec<Target>) {
    let mut map = BTreeMap::new();
    for (name, tags) in hosts {
        let mut spec = HostSpec::with_defaults(name);
        spec.tags = tags.iter().map(|t| t.to_string()).collect();
        map.insert(name.to_string(), spec);
    }
    let targets = map.iter().map(|(n, s)| Target { name: n.clone(), spec: s.clone() }).collect();
    (Inventory { schema_version: 1, hosts: map, rollout: None }, targets)
}

fn waves(plan: &Plan, targets: &[Target]) -> Vec<Vec<String>> {
    plan.waves.iter().map(|w| w.hosts.iter().map(|i| targets[*i].name.clone()).collect()).collect()
}

fn settings(canary: &[&str], batches: &[Size]) -> Settings {
    Settings {
        canary: canary.iter().map(|c| c.to_string()).collect(),
        batches: batches.to_vec(),
        ..Settings::default()
    }
}

#[test]
fn without_a_rollout_every_host_is_in_one_wave_and_nothing_is_staged() {
    let (inv, t) = fleet(&[("a", &[]), ("b", &[]), ("c", &[])]);
    let plan = plan(Some(&inv), &t, &Settings::default(), "x").unwrap();
    assert_eq!(waves(&plan, &t), vec![vec!["a", "b", "c"]]);
    assert!(!plan.is_staged());
    assert_eq!(plan, Plan::single(3));
}

#[test]
fn batches_count_and_percent_of_the_hosts_after_the_canaries_and_the_last_repeats() {
    let names: Vec<String> = (1..=5).map(|i| format!("h{i}")).collect();
    let hosts: Vec<(&str, &[&str])> = names.iter().map(|n| (n.as_str(), &[][..])).collect();
    let (inv, t) = fleet(&hosts);
    let b = [Size::Count(1), Size::Count(2), Size::Percent(100)];
    let p = plan(Some(&inv), &t, &settings(&[], &b), "x").unwrap();
    assert_eq!(waves(&p, &t), vec![vec!["h1"], vec!["h2", "h3"], vec!["h4", "h5"]]);
    // 40% of 5 is 2; repeated until every host has a wave.
    let p = plan(Some(&inv), &t, &settings(&[], &[Size::Percent(40)]), "x").unwrap();
    assert_eq!(waves(&p, &t), vec![vec!["h1", "h2"], vec!["h3", "h4"], vec!["h5"]]);
    // 1% of 5 rounds down to 0: a wave has at least one host.
    let p = plan(Some(&inv), &t, &settings(&[], &[Size::Percent(1)]), "x").unwrap();
    assert_eq!(p.waves.len(), 5);
}

#[test]
fn canaries_go_first_then_the_others_by_name() {
    let (inv, t) = fleet(&[("a", &[]), ("b", &["canary"]), ("c", &[]), ("d", &["canary"])]);
    let p = plan(Some(&inv), &t, &settings(&["@canary"], &[Size::Percent(50)]), "x").unwrap();
    assert_eq!(waves(&p, &t), vec![vec!["b", "d"], vec!["a"], vec!["c"]]);
    assert!(p.waves[0].canary && !p.waves[1].canary);
    assert!(p.is_staged());
    // Globs and names too; a canary outside the selection is left out.
    let only_ac: Vec<Target> = t.iter().filter(|x| x.name != "b").cloned().collect();
    let p = plan(Some(&inv), &only_ac, &settings(&["b", "c*"], &[Size::Percent(100)]), "x");
    assert_eq!(waves(&p.unwrap(), &only_ac), vec![vec!["c"], vec!["a", "d"]]);
}

#[test]
fn a_canary_that_matches_no_host_is_an_error_naming_it_and_its_origin() {
    let (inv, t) = fleet(&[("web1", &["canary"])]);
    let e = plan(Some(&inv), &t, &settings(&["@canry"], &[]), "--canary").unwrap_err();
    let msg = e.to_string();
    assert!(msg.starts_with("--canary `@canry`: no host has tag `@canry`"), "{msg}");
    assert!(msg.contains("@canary"), "suggests the tag: {msg}");
    let e = plan(Some(&inv), &t, &settings(&["db*"], &[]), "deployFlake.rollout.canary");
    assert!(e.unwrap_err().to_string().contains("`db*` matches no host"));
}

#[test]
fn the_budget_counts_or_takes_a_percentage_of_the_selected_hosts_rounding_down() {
    let (inv, t) = fleet(&[("a", &[]), ("b", &[]), ("c", &[]), ("d", &[])]);
    let with = |m| Settings { max_failures: m, ..Settings::default() };
    let p = plan(Some(&inv), &t, &with(Size::Count(1)), "x").unwrap();
    assert!(p.may_continue(1) && !p.may_continue(2));
    let p = plan(Some(&inv), &t, &with(Size::Percent(50)), "x").unwrap();
    assert_eq!(p.budget, 2);
    let p = plan(Some(&inv), &t, &with(Size::Percent(10)), "x").unwrap();
    assert_eq!(p.budget, 0, "10% of 4 hosts is none");
    assert!(p.may_continue(0) && !p.may_continue(1));
}

#[test]
fn the_command_line_replaces_the_flake_s_settings_key_by_key() {
    let flake = Settings {
        canary: vec!["@canary".into()],
        batches: vec![Size::Count(1)],
        max_failures: Size::Count(2),
        soak: Some(60),
    };
    let cli =
        Overrides { batches: Some(vec![Size::Percent(50)]), soak: Some(0), ..Default::default() };
    let s = super::settings(Some(&flake), &cli);
    assert_eq!(s.canary, vec!["@canary".to_string()]);
    assert_eq!(s.batches, vec![Size::Percent(50)]);
    assert_eq!(s.max_failures, Size::Count(2));
    assert_eq!(s.soak, None, "--soak 0: no soak");
    let none = Overrides { canary: Some(vec![]), ..Default::default() };
    assert!(super::settings(Some(&flake), &none).canary.is_empty(), "--no-canary");
}

#[test]
fn sizes_parse_as_counts_or_percentages() {
    assert_eq!(Size::parse("3"), Ok(Size::Count(3)));
    assert_eq!(Size::parse("25%"), Ok(Size::Percent(25)));
    assert!(Size::parse("150%").unwrap_err().contains("over 100"));
    assert!(Size::parse("x%").is_err() && Size::parse("-1").is_err() && Size::parse("").is_err());
    assert_eq!(Size::Percent(25).to_string(), "25%");
}

#[test]
fn the_flake_s_rollout_is_checked_with_lib_s_words() {
    let ok =
        json!({"canary": ["@canary"], "batches": [1, "25%"], "maxFailures": "10%", "soak": 30});
    let s = crate::rules::check_rollout("deployFlake.rollout", &ok).unwrap();
    assert_eq!(s.batches, vec![Size::Count(1), Size::Percent(25)]);
    assert_eq!((s.max_failures, s.soak), (Size::Percent(10), Some(30)));
    let cases = [
        (
            json!({"canary": [], "batches": ["150%"], "maxFailures": 0, "soak": null}),
            r#"deployFlake.rollout.batches.0: expected a wave size: a number of hosts (1 or more) or a percentage ("1%" to "100%") of the hosts after the canaries, got a string ("150%")"#,
        ),
        (
            json!({"canary": [], "batches": [], "maxFailures": 0, "soak": null}),
            "deployFlake.rollout.batches: expected a non-empty list of wave sizes, got a list",
        ),
        (
            json!({"canary": [], "batches": [0], "maxFailures": 0, "soak": null}),
            "deployFlake.rollout.batches.0: expected a wave size",
        ),
        (
            json!({"canary": [], "batches": [1], "maxFailures": "101%", "soak": null}),
            "deployFlake.rollout.maxFailures: expected a number of failed hosts",
        ),
        (
            json!({"canary": [], "batches": [1], "maxFailures": 0, "soak": 0}),
            "deployFlake.rollout.soak: expected null (no soak) or a whole number of seconds",
        ),
        (
            json!({"canary": ["-x"], "batches": [1], "maxFailures": 0, "soak": null}),
            "deployFlake.rollout.canary.0: expected a host selector",
        ),
        (
            json!({"canary": [], "bathces": [1], "maxFailures": 0, "soak": null}),
            r#"deployFlake.rollout.bathces: unknown option; did you mean "batches"?"#,
        ),
        (
            json!({"canary": [], "maxFailures": 0, "soak": null}),
            "deployFlake.rollout.batches: missing",
        ),
    ];
    for (v, want) in cases {
        let got = crate::rules::check_rollout("deployFlake.rollout", &v).unwrap_err();
        assert!(got.starts_with(want), "{v}:\n got {got}\nwant {want}");
    }
}

fn report(outcome: Outcome, system: &str, before: &str) -> HostReport {
    HostReport {
        host: "web1".into(),
        outcome,
        phase: Some(crate::events::Phase::Boot),
        duration: Duration::from_secs(10),
        system: Some(system.into()),
        boot: Some(system.into()),
        needs_reboot: None,
        before: Some(before.into()),
        reason: None,
        message: None,
        provenance: Default::default(),
    }
}

#[test]
fn a_soak_failure_reports_the_return_to_the_previous_system_or_why_it_failed() {
    let deployed = report(Outcome::Deployed, "/nix/store/new", "/nix/store/old");
    let back = report(Outcome::Deployed, "/nix/store/old", "/nix/store/new");
    let r = after_soak(&deployed, Some(&back), "system is degraded", 20);
    assert_eq!((r.outcome, r.reason), (Outcome::RolledBack, Some(Reason::Soak)));
    assert_eq!(r.system.as_deref(), Some("/nix/store/old"));
    assert_eq!(r.before.as_deref(), Some("/nix/store/old"), "what it ran before the run");
    assert_eq!(r.duration, Duration::from_secs(20));
    assert!(r
        .message
        .unwrap()
        .contains("failed its check 20 s after its wave: system is degraded"));

    let mut refused = report(Outcome::Failed, "/nix/store/new", "/nix/store/new");
    refused.message = Some("unreachable".into());
    let r = after_soak(&deployed, Some(&refused), "x", 20);
    let still = "still runs the new system: changed, and a known state";
    assert_eq!((r.outcome, r.reason), (Outcome::DeployedThenFailed, Some(Reason::Soak)), "{still}");
    assert_eq!(
        (r.system.as_deref(), r.boot.as_deref()),
        (Some("/nix/store/new"), Some("/nix/store/new"))
    );
    assert!(r.message.as_deref().unwrap().ends_with("failed: unreachable"));
    assert!(r.outcome.counts_as_failure());
    assert_eq!(crate::exit::exit_for(&[r]), crate::exit::Exit::HostsFailed);

    let lost = HostReport { outcome: Outcome::Unknown, ..refused.clone() };
    assert_eq!(after_soak(&deployed, Some(&lost), "x", 20).outcome, Outcome::Unknown);
    let unknown_before = HostReport { before: None, ..deployed.clone() };
    let kept = after_soak(&unknown_before, None, "x", 20);
    assert_eq!((kept.outcome, kept.reason), (Outcome::DeployedThenFailed, Some(Reason::Soak)));
    assert_eq!(kept.system.as_deref(), Some("/nix/store/new"));
    let msg = kept.message.unwrap();
    assert!(msg.ends_with("not known, so it keeps the system deployed"), "{msg}");
}

#[test]
fn a_host_whose_soak_was_interrupted_is_unchecked_and_the_run_fails() {
    let deployed = report(Outcome::Deployed, "/nix/store/new", "/nix/store/old");
    let r = super::unchecked(&deployed);
    assert_eq!((r.outcome, r.reason), (Outcome::Unchecked, Some(Reason::Cancelled)));
    assert_eq!(
        (r.system.as_deref(), r.boot.as_deref()),
        (Some("/nix/store/new"), Some("/nix/store/new"))
    );
    assert!(!r.outcome.is_success() && !r.outcome.counts_as_failure());
    assert!(r.message.as_deref().unwrap().contains("it runs /nix/store/new, unchecked"));
    assert_eq!(crate::exit::exit_for(&[deployed, r]), crate::exit::Exit::HostsFailed);
}
