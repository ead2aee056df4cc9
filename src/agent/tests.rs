//! The agent protocol's words and commands, without a host.

use super::*;
use crate::events::Reason;

#[test]
fn answers_are_parsed() {
    let facts = Facts::parse(
        "deploy-flake-current /nix/store/a-sys\ndeploy-flake-profile \ndeploy-flake-switchable yes\n\
         deploy-flake-systemd yes\ndeploy-flake-systemdx no\nnoise\n",
    );
    let want = Facts {
        current: Some("/nix/store/a-sys".into()),
        profile: None,
        switchable: true,
        systemd: true,
        ..Facts::default()
    };
    assert_eq!(facts, want);
    let facts = Facts::parse(&format!(
        "deploy-flake-booted-system /nix/store/b-sys\ndeploy-flake-confirmed-here yes\n{}{}{}\
         deploy-flake-busy nixos-upgrade.service\n",
        parts(
            "booted",
            ["/nix/store/k1/bzImage", "/nix/store/i/initrd", "/nix/store/m", "systemd 1 "]
        ),
        parts(
            "new",
            ["/nix/store/k2/bzImage", "/nix/store/i/initrd", "/nix/store/m", "systemd 2 "]
        ),
        parts(
            "profile",
            ["/nix/store/k1/bzImage", "/nix/store/i/initrd", "/nix/store/m", "systemd 1 "]
        ),
    ));
    assert!(facts.confirmed && !facts.boot_written);
    assert_eq!(facts.booted.as_deref(), Some("/nix/store/b-sys"));
    assert_eq!(facts.reboot_new, Some(vec!["kernel".to_string(), "init".to_string()]));
    assert_eq!(facts.reboot_profile, Some(vec![]), "booted: nothing differs for the profile");
    assert_eq!(facts.busy, ["nixos-upgrade.service"]);
    assert_eq!(Facts::parse("deploy-flake-booted-system \n").reboot_new, None, "never booted");
    let h = Health::parse(
        "deploy-flake-state degraded\ndeploy-flake-failed a.service\ndeploy-flake-failed b.service\n",
    );
    assert_eq!(h.failed_units, ["a.service", "b.service"]);
    assert_eq!(h.describe(), "system is degraded (failed units: a.service, b.service)");
    assert!(!h.is_running());
    assert_eq!(Health::parse("").state, SystemState::Unknown);
    // After an activation: only units that had failed before may be failed.
    let h = Health::parse(
        "deploy-flake-state degraded\ndeploy-flake-failed old.service\ndeploy-flake-failed-already old.service\n",
    );
    assert!(h.healthy_after_activation() && h.new_failures().is_empty());
    let h = Health::parse(
        "deploy-flake-state degraded\ndeploy-flake-failed new.service\ndeploy-flake-failed-already old.service\n",
    );
    assert!(!h.healthy_after_activation());
    assert_eq!(h.new_failures(), ["new.service"]);
    assert!(!Health::parse("deploy-flake-state starting\n").healthy_after_activation());
}

#[test]
fn status_lines_carry_state_cause_and_reason() {
    let s = AgentStatus::parse("rolled-back not-confirmed no confirmation within 30s\n");
    assert_eq!(s.state, AgentState::RolledBack);
    assert_eq!(s.cause, Some(Reason::NotConfirmed));
    assert_eq!(s.reason, "no confirmation within 30s");
    let s = AgentStatus::parse("awaiting-confirmation");
    assert_eq!((s.state, s.cause, s.reason.as_str()), (AgentState::AwaitingConfirmation, None, ""));
    let s = AgentStatus::parse("exploded the reactor");
    assert_eq!(s.state, AgentState::Other("exploded".into()));
    assert_eq!((s.cause, s.reason.as_str()), (None, "the reactor"));
}

/// The state words the agent writes, read from its text: `set_status WORD`
/// and its watch's `deploy-flake-status $runid WORD` lines.
fn states_the_agent_writes() -> std::collections::BTreeSet<&'static str> {
    let mut words = std::collections::BTreeSet::new();
    for line in SCRIPT.lines() {
        for marker in ["set_status ", "deploy-flake-status $runid "] {
            if let Some((_, rest)) = line.split_once(marker) {
                let word = rest.split([' ', '"']).next().unwrap_or("");
                if !word.is_empty() && !word.starts_with('$') {
                    words.insert(word);
                }
            }
        }
    }
    words
}

/// Every state word the agent writes is one the deployer reads as that
/// state (not as an unknown word), and every word the deployer knows is
/// one the agent writes.
#[test]
fn the_agents_state_words_are_the_deployers() {
    let written = states_the_agent_writes();
    assert!(written.len() >= 10, "the agent's state words were not found: {written:?}");
    for word in &written {
        let state = AgentState::parse(word);
        assert!(
            !matches!(state, AgentState::Other(_)),
            "the agent writes the state `{word}`, which the deployer does not know"
        );
        assert_eq!(state.as_str(), *word);
        assert_eq!(AgentStatus::parse(&format!("{word} rebooted x")).cause, Some(Reason::Rebooted));
    }
    for (state, word) in STATE_WORDS {
        // `starting` is a status not written yet, for the agent's watch too.
        let unwritten =
            state == AgentState::Starting && SCRIPT.contains("${watch_state:-starting}");
        assert!(
            written.contains(word) || unwritten,
            "the deployer reads the state `{word}`, which the agent never writes"
        );
    }
}

#[test]
fn actions_become_transient_units_of_the_run() {
    let run = RunDir::new("20261126-abc");
    assert_eq!(run.dir(), "/run/deploy-flake/runs/20261126-abc");
    assert!(run.agent.starts_with("/run/deploy-flake/agent-"));
    let top = StorePath::parse("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-sys").unwrap();
    let act = AgentAction::Activate {
        toplevel: top.clone(),
        activate_secs: 600,
        window_secs: 30,
        hard_secs: 630,
        rollback_secs: 600,
        grace_secs: 5,
        magic_rollback: true,
        then_boot: false,
        env: SwitchEnv::default(),
    };
    assert_eq!(act.unit(&run), "deploy-flake-20261126-abc-activate");
    let argv = act.start_cmd(&run).argv;
    assert_eq!(argv[0], "systemd-run");
    assert_eq!(
        argv[6..],
        [
            "/bin/sh",
            &run.agent,
            "activate",
            run.dir(),
            top.as_str(),
            "600",
            "30",
            "630",
            "600",
            "5",
            "1",
            "0"
        ]
    );
    let switch = AgentAction::Activate {
        toplevel: top.clone(),
        activate_secs: 600,
        window_secs: 30,
        hard_secs: 630,
        rollback_secs: 600,
        grace_secs: 5,
        magic_rollback: false,
        then_boot: true,
        env: SwitchEnv::default(),
    };
    assert_eq!(switch.start_cmd(&run).argv[16..], ["0", "1"]);
    let env = SwitchEnv { no_check: true, install_bootloader: true };
    let boot = AgentAction::Boot { toplevel: top.clone(), env };
    assert_eq!(
        boot.start_cmd(&run).argv[8..],
        ["boot", run.dir(), top.as_str(), "NIXOS_NO_CHECK=1", "NIXOS_INSTALL_BOOTLOADER=1"]
    );
    // A reboot a second later, from a timer: the command returns first.
    assert_eq!(
        reboot_cmd(&run).argv,
        [
            "systemd-run",
            "--unit=deploy-flake-20261126-abc-reboot",
            "--description=deploy-flake reboot",
            "--on-active=1",
            "--timer-property=AccuracySec=100ms",
            "--collect",
            "--quiet",
            "systemctl",
            "reboot"
        ]
    );
}

#[test]
fn check_verdicts_are_decided_from_the_exit_status_and_what_the_check_said() {
    for (exit, said, want) in [
        (Some("0"), "", CheckVerdict::Ok),
        (Some("0"), "Usage: whatever", CheckVerdict::Ok),
        (
            Some("1"),
            "Usage: switch-to-configuration [switch|boot|test|dry-activate]",
            CheckVerdict::Unsupported,
        ),
        (Some("1"), "error: usage: ...", CheckVerdict::Unsupported),
        (Some("100"), "invalid action check", CheckVerdict::Unsupported),
        (Some("11"), "Could not acquire lock", CheckVerdict::Busy),
        (Some("1"), "Pre-switch checks failed", CheckVerdict::Refused),
        (Some("1"), "Usage: x\nPre-switch checks failed", CheckVerdict::Refused),
        (Some("1"), "not switching: critical components changed", CheckVerdict::Refused),
        (Some("4"), "something else", CheckVerdict::Refused),
        (Some("124"), "", CheckVerdict::Timeout),
        (Some("x"), "", CheckVerdict::Refused),
        (None, "Usage: no exit status said", CheckVerdict::Refused),
    ] {
        let lines: Vec<&str> = said.lines().collect();
        assert_eq!(CheckVerdict::decide(exit, &lines), want, "{exit:?} {said}");
    }
}

#[test]
fn status_and_changes_are_read() {
    let st = HostState::parse(
        "deploy-flake-current /nix/store/a\ndeploy-flake-profile /nix/store/b\ndeploy-flake-booted-system \n\
         deploy-flake-state degraded\ndeploy-flake-failed x.service\ndeploy-flake-lock run 7 by ops@h\n\
         deploy-flake-last-run 7\ndeploy-flake-last-outcome deployed\ndeploy-flake-last-by ops@h\n",
    );
    assert_eq!(
        (st.current.as_deref(), st.profile.as_deref()),
        (Some("/nix/store/a"), Some("/nix/store/b"))
    );
    assert_eq!((st.booted, st.needs_reboot), (None, None));
    assert_eq!(st.failed_units, ["x.service"]);
    assert_eq!(st.lock.as_deref(), Some("run 7 by ops@h"));
    assert_eq!((st.last.outcome, st.last.get("by")), (Some(LastOutcome::Deployed), Some("ops@h")));
    assert_eq!(st.last.get("outcome"), None, "read into its enum only");
    let json = serde_json::to_value(&st.last).unwrap();
    assert_eq!(json, serde_json::json!({"outcome": "deployed", "run": "7", "by": "ops@h"}));
    let odd = HostState::parse(
        "deploy-flake-last-outcome exploded
deploy-flake-last-run 8
",
    );
    assert_eq!((odd.last.outcome, odd.last.get("run")), (None, Some("8")));
    let ch = Changes::parse(
        "deploy-flake-package hello-lab: ∅ → 1.0, +0.2 KiB\ndeploy-flake-package linux: 6.1 → 6.2\n\
         deploy-flake-package gone: 2.0 → ∅, -1.0 KiB\n\
         deploy-flake-closure /nix/store/a 1000\ndeploy-flake-closure /nix/store/b 1300\n\
         deploy-flake-units restart demo-web.service, other.service\ndeploy-flake-units start new.service\n",
        "/nix/store/a",
        "/nix/store/b",
    );
    let names: Vec<(&str, Option<&str>, Option<&str>)> =
        ch.packages.iter().map(|p| (p.name.as_str(), p.old.as_deref(), p.new.as_deref())).collect();
    assert_eq!(
        names,
        [
            ("hello-lab", None, Some("1.0")),
            ("linux", Some("6.1"), Some("6.2")),
            ("gone", Some("2.0"), None)
        ]
    );
    assert_eq!(ch.packages[0].size.as_deref(), Some("+0.2 KiB"));
    assert_eq!(ch.closure_bytes, Some((1000, 1300)));
    assert_eq!(ch.units["restart"], ["demo-web.service", "other.service"]);
    assert_eq!(ch.units["start"], ["new.service"]);
    assert!(ch.unknown.is_empty());
    let ch = Changes::parse("deploy-flake-package x: 1 → ∅, \x1b[32;1m-12.6 KiB\x1b[0m\n", "", "");
    assert_eq!(ch.packages[0].size.as_deref(), Some("-12.6 KiB"), "without Nix's colors");
    let ch = Changes::parse(
        "deploy-flake-units-unknown switch-to-configuration dry-activate exited with 100: reboot\n\
         deploy-flake-packages-unknown the host runs no system to compare with\n",
        "",
        "/nix/store/b",
    );
    assert_eq!(ch.unknown["units"], "switch-to-configuration dry-activate exited with 100: reboot");
    assert_eq!(ch.unknown["packages"], "the host runs no system to compare with");
}

/// The text of the agent's shell function `name` (`name() {` to `}`).
fn shell_function(name: &str) -> &'static str {
    let start = SCRIPT.find(&format!("\n{name}() {{\n")).expect("the function") + 1;
    let len = SCRIPT[start..].find("\n}\n").expect("its end") + 3;
    &SCRIPT[start..start + len]
}

/// The agent cuts a line where the deployer does: its head sets
/// `LINE_MAX`, once, among its limits, to [`crate::process::LINE_MAX`].
#[test]
fn the_agent_cuts_a_line_where_the_deployer_does() {
    let head = include_str!("sh/00-head.sh");
    let set = format!("\nLINE_MAX={}\n", crate::process::LINE_MAX);
    assert!(head.contains(&set), "00-head.sh sets{set}");
    assert_eq!(SCRIPT.matches("\nLINE_MAX=").count(), 1, "set once");
}

/// Runs `script` after the agent's `cap_lines` and `system` with /bin/sh
/// here, umask 077 and LINE_MAX as the agent has them; its stdout.
fn agent_sh(script: &str) -> String {
    let text = format!(
        "umask 077\nLINE_MAX={}\n{}{}{script}",
        crate::process::LINE_MAX,
        shell_function("cap_lines"),
        shell_function("system")
    );
    let out = std::process::Command::new("/bin/sh").args(["-c", &text]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn the_agent_cuts_an_endless_line_and_keeps_the_others() {
    let out = agent_sh(
        "{ head -c 3000000 /dev/zero | tr '\\000' x; echo; echo after; printf 'no newline'; } | cap_lines",
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{:?}", lines.iter().map(|l| l.len()).collect::<Vec<_>>());
    assert_eq!(lines[0], format!("{} [truncated at 65536 bytes]", "x".repeat(65536)));
    assert_eq!(&lines[1..], ["after", "no newline"]);
}

#[test]
fn what_the_system_runs_runs_under_umask_022() {
    let out = agent_sh(
        "sysrc=$(mktemp)\nsystem sh -c 'umask; echo oops >&2; exit 3' | cap_lines\n\
         read -r rc < \"$sysrc\"; rm -f \"$sysrc\"; echo \"rc $rc\"; umask",
    );
    assert_eq!(out, "0022\noops\nrc 3\n0077\n");
}

#[test]
fn system_states_are_systemd_s_words_and_a_new_word_is_kept() {
    let table = [
        ("initializing", SystemState::Initializing),
        ("starting", SystemState::Starting),
        ("running", SystemState::Running),
        ("degraded", SystemState::Degraded),
        ("maintenance", SystemState::Maintenance),
        ("stopping", SystemState::Stopping),
        ("offline", SystemState::Offline),
        ("unknown", SystemState::Unknown),
        ("hibernating", SystemState::Other("hibernating".into())),
    ];
    for (word, state) in table {
        let h = Health::parse(&format!("deploy-flake-state {word}\n"));
        assert_eq!(h.state, state, "{word}");
        assert_eq!(h.state.to_string(), word);
        assert_eq!(serde_json::to_value(&h.state).unwrap(), word);
        assert_eq!(h.describe(), format!("system is {word}"));
        // Healthy only when running (no unit failed).
        assert_eq!(h.is_running(), word == "running", "{word}");
        assert_eq!(h.healthy_after_activation(), word == "running", "{word}");
    }
    assert_eq!(HostState::parse("deploy-flake-state degraded\n").state, SystemState::Degraded);
    assert_eq!(HostState::parse("").state, SystemState::Unknown);
}

// ---- answer keys: the agent's and the deployer's -------------------------------

/// The answer keys the agent prints (`deploy-flake-<key> <value>`), read
/// from its text: a key ending in `-` is a family (`last-run`, ...), and
/// `boot_parts KEY` prints KEY.
fn keys_the_agent_prints() -> std::collections::BTreeSet<String> {
    let mut keys = std::collections::BTreeSet::new();
    for line in SCRIPT.lines().filter(|l| !l.trim_start().starts_with('#')) {
        for (at, _) in line.match_indices(ANSWER) {
            let rest = &line[at + ANSWER.len()..];
            let key: String =
                rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '-').collect();
            let next = rest[key.len()..].chars().next();
            let family = key.ends_with('-') && next == Some('/');
            let ends = matches!(next, Some(' ' | '"'));
            if !key.is_empty() && (ends || family) && !line[..at].ends_with('.') {
                keys.insert(key);
            }
        }
        if let Some((_, rest)) = line.split_once("boot_parts ") {
            keys.insert(rest.split(' ').next().unwrap().to_string());
        }
    }
    keys
}

/// The answer keys the deployer reads, from the sources of src/agent/
/// (their inline test modules left out): `answer(.., "KEY")`, `answers(.., "KEY")`,
/// `reboot(.., "KEY")`, `{ANSWER}KEY` and a family's
/// `strip_prefix(ANSWER)?.strip_prefix("KEY-")`.
fn keys_the_deployer_reads() -> std::collections::BTreeSet<String> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/agent");
    let mut keys = std::collections::BTreeSet::new();
    let mut files = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_none_or(|e| e != "rs") || path.ends_with("tests.rs") {
            continue;
        }
        files += 1;
        let text = std::fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]\nmod tests {").next().unwrap();
        for line in code.lines() {
            for call in ["answer(", "answers(", "reboot(", "strip_prefix("] {
                for (at, _) in line.match_indices(call) {
                    let before = line[..at].chars().next_back();
                    if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
                        continue;
                    }
                    if call == "strip_prefix(" && !line[..at].contains("ANSWER)?.") {
                        continue;
                    }
                    let args = line[at + call.len()..].split(')').next().unwrap();
                    if let Some(key) = args.split('"').nth(1) {
                        keys.insert(key.to_string());
                    }
                }
            }
            for (at, _) in line.match_indices("{ANSWER}") {
                let rest = &line[at + "{ANSWER}".len()..];
                let key: String =
                    rest.chars().take_while(|c| c.is_ascii_lowercase() || *c == '-').collect();
                if !key.is_empty() {
                    keys.insert(key);
                }
            }
        }
    }
    assert!(files >= 5, "read the sources of {}", dir.display());
    keys
}

/// Every answer the agent prints has a reader in the deployer, every key
/// the deployer reads is one the agent prints, and a reader matches one key
/// exactly (`answers` takes `KEY` followed by a space or the end of the
/// line): no two keys differ only by punctuation, so neither side can
/// print or read the look-alike of another.
#[test]
fn every_answer_key_has_its_reader_and_no_two_look_alike() {
    let printed = keys_the_agent_prints();
    let read = keys_the_deployer_reads();
    assert!(printed.len() >= 30, "the agent's keys were not found: {printed:?}");
    let unread: Vec<_> = printed.difference(&read).collect();
    assert!(unread.is_empty(), "the agent prints keys the deployer never reads: {unread:?}");
    let unprinted: Vec<_> = read.difference(&printed).collect();
    assert!(unprinted.is_empty(), "the deployer reads keys the agent never prints: {unprinted:?}");
    let mut plain = std::collections::BTreeMap::new();
    for key in &printed {
        let letters: String = key.chars().filter(char::is_ascii_alphanumeric).collect();
        if let Some(other) = plain.insert(letters, key) {
            panic!("the answer keys `{other}` and `{key}` differ only by punctuation");
        }
    }
    let text = |keys: &[&str]| keys.iter().map(|k| format!("{ANSWER}{k} 1\n")).collect::<String>();
    // A reader takes its own key only, not one that begins with it.
    assert_eq!(answer(&text(&["self-check-exit"]), "self-check"), None);
    assert_eq!(answer(&text(&["self-check-exit"]), "self-check-exit").as_deref(), Some("1"));
}

/// The outcome words the agent records (`remember WORD`, and the states
/// whose own word it records, `STATE | ...) remember "$1"`), read from its
/// text.
fn outcomes_the_agent_records() -> Vec<&'static str> {
    let mut words = Vec::new();
    let calls = SCRIPT.lines().filter(|l| !l.trim_start().starts_with('#'));
    for line in calls.filter(|l| l.contains("remember ")) {
        let (labels, word) = line
            .trim()
            .split_once(") remember ")
            .unwrap_or_else(|| panic!("a record written in an unknown way: {line}"));
        match word.trim_end_matches(" ;;") {
            "\"$1\"" => words.extend(labels.split('|').map(str::trim)),
            word => words.push(word),
        }
    }
    words
}

/// Every outcome word the agent records is the word of exactly one
/// `LastOutcome`, and every `LastOutcome` is recorded by the agent.
#[test]
fn the_agents_record_words_are_one_enum() {
    let recorded = outcomes_the_agent_records();
    assert!(recorded.len() >= 8, "the agent's record words were not found: {recorded:?}");
    for word in &recorded {
        let matching: Vec<_> =
            LastOutcome::ALL.into_iter().filter(|o| o.as_str() == *word).collect();
        assert_eq!(matching.len(), 1, "the agent records `{word}`: {matching:?}");
        assert_eq!(LastOutcome::parse(word), Some(matching[0]));
        assert_eq!(serde_json::to_value(matching[0]).unwrap(), *word);
    }
    for outcome in LastOutcome::ALL {
        assert!(
            recorded.contains(&outcome.as_str()),
            "the deployer reads `{}`, which the agent never records",
            outcome.as_str()
        );
    }
}

/// The agent on the wire is every file of `sh/`, in the order of their
/// names, each whole: a file added there is part of it (or this fails),
/// and the flake check, which joins them so, checks the same text.
#[test]
fn the_agent_is_its_files_joined_in_the_order_of_their_names() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/agent/sh");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".sh"))
        .collect();
    names.sort();
    assert!(names.len() > 5, "{names:?}");
    assert_eq!(names.first().map(String::as_str), Some("00-head.sh"), "the settings come first");
    assert_eq!(names.last().map(String::as_str), Some("99-main.sh"), "the dispatcher comes last");
    let joined: String =
        names.iter().map(|n| std::fs::read_to_string(dir.join(n)).unwrap()).collect();
    assert!(joined == SCRIPT, "src/agent/mod.rs's SCRIPT must join exactly {names:?}");
    for n in &names {
        let text = std::fs::read_to_string(dir.join(n)).unwrap();
        assert!(text.ends_with('\n'), "{n} ends its last line");
    }
}

/// The watch's wait policy is the deployer's: the states the agent leaves
/// on its own, and the one the deployer waits in; every word one the
/// agent writes (`starting`: its word for none written yet).
#[test]
fn the_watch_waits_through_the_agents_own_states_and_the_patient_one() {
    let own = "starting,activating,rolling-back,booting";
    assert_eq!(AgentState::waited_through(None), own);
    let patient = AgentState::waited_through(Some(&AgentState::AwaitingConfirmation));
    assert_eq!(patient, format!("{own},awaiting-confirmation"));
    let written = states_the_agent_writes();
    for word in patient.split(',') {
        assert!(written.contains(word) || word == "starting", "{word}");
    }
    assert!(SCRIPT.contains("${watch_state:-starting}"), "the agent's word for no state");
}

/// The agent's `boot_parts KEY` lines: kernel, initrd, modules, init.
fn parts(key: &str, values: [&str; 4]) -> String {
    let names = ["kernel", "initrd", "kernel-modules", "init"];
    names.iter().zip(values).map(|(n, v)| format!("deploy-flake-parts-{key} {n} {v}\n")).collect()
}

/// What a reboot would bring in is decided here, from the parts the agent
/// names: each that differs from the booted system's, an empty one (a
/// system without an initrd) equal only to an empty one.
#[test]
fn what_needs_a_reboot_is_what_differs_from_the_booted_system() {
    let booted = ["/k1", "/i1", "/m1", "systemd 1 "];
    for (new, want) in [
        (booted, vec![]),
        (["/k2", "/i1", "/m1", "systemd 1 "], vec!["kernel"]),
        (["/k1", "/i2", "/m2", "systemd 1 "], vec!["initrd", "kernel-modules"]),
        (["/k1", "/i1", "/m1", "systemd 2 "], vec!["init"]),
        (["/k1", "", "/m1", ""], vec!["initrd", "init"]),
    ] {
        let said = format!("{}{}", parts("booted", booted), parts("new", new));
        assert_eq!(
            Facts::parse(&said).reboot_new,
            Some(want.iter().map(|p| p.to_string()).collect())
        );
        assert_eq!(Changes::parse(&said, "", "").needs_reboot, Facts::parse(&said).reboot_new);
    }
    let empty = ["", "", "", ""];
    let said = format!("{}{}", parts("booted", empty), parts("profile", empty));
    assert_eq!(HostState::parse(&said).needs_reboot, Some(vec![]), "nothing differs");
    assert_eq!(
        Facts::parse(&parts("booted", booted)).reboot_new,
        Some(vec![]),
        "no system: nothing"
    );
    assert_eq!(Facts::parse(&parts("new", booted)).reboot_new, None, "no booted system: unknown");
}
