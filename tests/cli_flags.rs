//! Flags into validated options, the binary's answers that need no flake
//! (version, help, usage errors), and how a plan writes Nix attributes and
//! ssh destinations. Pure: no `nix`, no ssh.

mod common;

use clap::Parser;
use common::run_tool;
use deploy_flake::cli::{Cli, CliError, Deploy, Goal, Intent, Mode, Options, OutputFormat, Reboot};
use deploy_flake::events::Phase;
use deploy_flake::inventory::HostSpec;
use deploy_flake::plan::{nix_attr, ssh_destination};
use deploy_flake::select::Target;

fn opts(args: &[&str]) -> Result<Options, CliError> {
    let mut argv = vec!["deploy-flake"];
    argv.extend_from_slice(args);
    Cli::try_parse_from(argv).expect("clap accepts it").into_options()
}

/// The options of a deploy (panics for another intent).
fn deploy(args: &[&str]) -> Deploy {
    match opts(args).unwrap().intent {
        Intent::Deploy(d) => d,
        other => panic!("{args:?}: not a deploy: {other:?}"),
    }
}

fn opts_err(args: &[&str]) -> String {
    opts(args).unwrap_err().to_string()
}

#[test]
fn defaults() {
    let o = opts(&["web1"]).unwrap();
    assert_eq!(o.flake, ".");
    assert_eq!(o.selection.hosts, ["web1"]);
    assert_eq!(o.max_parallel, Some(16));
    assert_eq!(o.intent, Intent::Deploy(Deploy::default()));
    let d = deploy(&["web1"]);
    assert!(d.preflight && !d.dry_run && !d.force);
    assert_eq!(
        (d.mode, d.goal, d.reboot, d.ask),
        (Mode::Deploy, Goal::Switch, Reboot::Never, None)
    );
    assert_eq!(o.output, OutputFormat::Human);
    assert_eq!(d.self_check, None);
    assert!(o.timeouts.is_empty());
}

#[test]
fn every_flag() {
    let o = opts(&[
        "--flake",
        "./infra",
        "--all",
        "--exclude",
        "@db",
        "--exclude",
        "web-*",
        "--max-parallel",
        "0",
        "--dry-run",
        "--json",
        "--force",
        "--skip-preflight",
        "--pre-activate-script=bin/check",
        "--timeout",
        "build=7200",
        "--timeout",
        "self-check=5",
    ])
    .unwrap();
    assert_eq!(o.flake, "./infra");
    assert!(o.selection.all);
    assert_eq!(o.selection.exclude, ["@db", "web-*"]);
    assert_eq!(o.max_parallel, None);
    let d = o.intent.deploy().unwrap();
    assert!(d.dry_run && d.force && !d.preflight);
    assert_eq!(o.output, OutputFormat::Json);
    assert_eq!(d.self_check.as_deref(), Some("bin/check"));
    assert_eq!(o.timeouts, [(Phase::Build, 7200), (Phase::SelfCheck, 5)]);
}

#[test]
fn original_preflight_flag() {
    assert!(!deploy(&["--all", "--preflight-check=skip"]).preflight);
    assert!(deploy(&["--all", "--preflight-check=run"]).preflight);
    assert_eq!(
        opts_err(&["--all", "--preflight-check=run", "--skip-preflight"]),
        "--skip-preflight contradicts --preflight-check=run: pass one of them"
    );
}

#[test]
fn bad_flags() {
    assert_eq!(
        opts_err(&[]),
        "no hosts selected: name hosts, @tags or globs, or pass --all (see --help)"
    );
    assert_eq!(
        opts_err(&["--all", "--flake", ".#web1"]),
        "--flake `.#web1`: give a flake reference without `#attribute` (deployFlake is read from it)"
    );
    assert_eq!(
        opts_err(&["--all", "--flake", ""]),
        "--flake: the flake reference is empty (use `.` for the current directory)"
    );
    assert_eq!(
        opts_err(&["--all", "--timeout", "build"]),
        "--timeout `build`: expected PHASE=SECONDS, e.g. --timeout build=7200"
    );
    assert_eq!(
        opts_err(&["--all", "--timeout", "biuld=5"]),
        "--timeout `biuld=5`: unknown phase `biuld` (did you mean `build`?); phases: connect, lock, preflight, copy, build, selfCheck, activate, confirm, boot, reboot"
    );
    for arg in ["build=0", "build=1h", "lock=31536001", "lock=18446744073709551615"] {
        assert_eq!(
            opts_err(&["--all", "--timeout", arg]),
            format!("--timeout `{arg}`: expected a whole number of seconds between 1 and 31536000 (365 days)")
        );
    }
    assert_eq!(
        opts(&["--all", "--timeout", "lock=31536000"]).unwrap().timeouts,
        [(Phase::Lock, 31536000)]
    );
    assert_eq!(
        opts_err(&["--all", "--pre-activate-script", "/etc/check"]),
        "--pre-activate-script `/etc/check` is absolute: it must be a path inside the toplevel, e.g. \"bin/check\""
    );
    assert_eq!(
        opts_err(&["--all", "--pre-activate-script", "../x"]),
        "--pre-activate-script `../x` contains '..': it must stay inside the toplevel"
    );
}

#[test]
fn reboot_flag() {
    assert_eq!(deploy(&["--all"]).reboot, Reboot::Never);
    for (word, want) in
        [("never", Reboot::Never), ("if-needed", Reboot::IfNeeded), ("always", Reboot::Always)]
    {
        assert_eq!(deploy(&["--all", "--reboot", word]).reboot, want, "{word}");
    }
    let d = deploy(&["--all", "--goal", "boot", "--reboot", "always"]);
    assert_eq!((d.goal, d.reboot), (Goal::Boot, Reboot::Always));
    assert_eq!(deploy(&["--all", "--test=skip", "--reboot=if-needed"]).goal, Goal::Boot);
    assert_eq!(deploy(&["rollback", "--all", "--reboot", "always"]).reboot, Reboot::Always);
    // A goal that writes no boot entry has nothing to reboot into.
    for goal in ["test", "dry-activate"] {
        assert_eq!(
            opts_err(&["--all", "--goal", goal, "--reboot", "always"]),
            format!("--reboot always reboots a host into its new boot entry, but --goal {goal} writes none: use --goal switch or --goal boot (nothing was touched)")
        );
    }
    assert!(opts(&["--all", "--goal", "test", "--reboot", "never"]).is_ok());
    assert!(Cli::try_parse_from(["deploy-flake", "--all", "--reboot", "sometimes"]).is_err());
}

#[test]
fn overrides_apply_to_every_target() {
    let o = opts(&[
        "--all",
        "--timeout",
        "copy=1",
        "--timeout",
        "copy=2",
        "--pre-activate-script",
        "bin/ok",
    ])
    .unwrap();
    let mut targets = vec![Target { name: "a".into(), spec: HostSpec::with_defaults("a") }];
    o.apply_overrides(&mut targets);
    assert_eq!(targets[0].spec.timeouts.copy, 2, "the last one wins");
    assert_eq!(targets[0].spec.timeouts.build, 3600);
    assert_eq!(targets[0].spec.self_check.as_deref(), Some("bin/ok"));
}

// ---------------------------------------------------------------------------
// The binary, without a flake

#[test]
fn usage_errors_exit_2_with_one_error_line() {
    let (code, _, stderr) = run_tool(&["--dry-run"]);
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        "error: no hosts selected: name hosts, @tags or globs, or pass --all (see --help)\n"
    );

    let (code, stdout, stderr) = run_tool(&["--all", "--goal", "test", "--reboot", "if-needed"]);
    assert_eq!((code, stdout.as_str()), (2, ""));
    assert_eq!(stderr, "error: --reboot if-needed reboots a host into its new boot entry, but --goal test writes none: use --goal switch or --goal boot (nothing was touched)\n");

    let (code, _, _) = run_tool(&["--no-such-flag"]);
    assert_eq!(code, 2, "clap usage errors exit 2 too");
}

#[test]
fn version_and_help() {
    let (code, stdout, _) = run_tool(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(stdout, format!("deploy-flake {}\n", env!("CARGO_PKG_VERSION")));
    let (code, stdout, _) = run_tool(&["--help"]);
    assert_eq!(code, 0);
    for needle in [
        "--pre-activate-script",
        "--preflight-check",
        "--timeout <PHASE=SECONDS>",
        "nixos://root@[fe80::1]:2222/web",
        "Exit status:",
    ] {
        assert!(stdout.contains(needle), "--help lacks {needle}:\n{stdout}");
    }
    let words = stdout.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        words.contains("Override a phase timeout for every host, in seconds (1 to 31536000); repeatable. Phases: connect, lock, preflight, copy, build, selfCheck, activate, confirm, boot, reboot."),
        "{stdout}"
    );
}

// ---------------------------------------------------------------------------
// The plan

#[test]
fn plan_quotes_nix_attributes_and_brackets_ipv6() {
    assert_eq!(nix_attr("web-1"), "web-1");
    assert_eq!(nix_attr("_x'"), "_x'");
    assert_eq!(nix_attr("1web"), "\"1web\"");
    assert_eq!(nix_attr("a b"), "\"a b\"");
    assert_eq!(nix_attr(r#"q"\${x}$y"#), r#""q\"\\\${x}$y""#);
    assert_eq!(nix_attr("a\nb"), "\"a\\nb\"");
    let mut h = HostSpec::with_defaults("h");
    assert_eq!(ssh_destination(&h), "root@h:22");
    h.hostname = "fe80::1".into();
    h.ssh_port = 2222;
    assert_eq!(ssh_destination(&h), "root@[fe80::1]:2222");
}

// ---------------------------------------------------------------------------
// --progress and --color

#[test]
fn display_flags_are_global() {
    use deploy_flake::cli::{ColorChoice, Progress};
    let cli = Cli::try_parse_from(["deploy-flake", "--all", "--progress", "plain"]).unwrap();
    assert_eq!((cli.display.progress, cli.display.color), (Progress::Plain, ColorChoice::Auto));
    let cli =
        Cli::try_parse_from(["deploy-flake", "rollback", "web1", "--color", "never"]).unwrap();
    assert_eq!((cli.display.progress, cli.display.color), (Progress::Auto, ColorChoice::Never));
    assert!(Cli::try_parse_from(["deploy-flake", "--all", "--progress", "fancy"]).is_err());
}

#[test]
fn live_progress_and_json_are_a_usage_error() {
    let (code, stdout, stderr) = run_tool(&["--all", "--json", "--progress", "live"]);
    assert_eq!(code, 2);
    assert_eq!(stdout, "");
    assert_eq!(
        stderr,
        "error: --progress live draws on a terminal: it cannot be combined with --json\n"
    );
    let (code, _, stderr) = run_tool(&["--all", "--color", "sometimes"]);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("[possible values: auto, always, never]"), "{stderr}");
}

#[test]
fn completions_and_man_deploy_nothing() {
    let (code, _, stderr) = run_tool(&["completions", "bash", "--all"]);
    assert_eq!(code, 2, "{stderr}");
    let (code, stdout, _) = run_tool(&["man"]);
    assert_eq!(code, 0);
    assert!(stdout.starts_with(".ie \\n(.g .ds Aq \\(aq"), "roff: {}", &stdout[..60]);
    assert_eq!(
        Cli::try_parse_from(["deploy-flake", "man"]).unwrap().into_options(),
        Err(CliError::NotADeploy("man"))
    );
}

/// A goal's wire word (what a host keeps of the run) is the word `--goal`
/// takes for it.
#[test]
fn each_goal_s_wire_word_is_its_goal_flag() {
    let words: Vec<&str> = Goal::ALL.iter().map(|g| g.as_str()).collect();
    assert_eq!(words, ["switch", "test", "boot"]);
    for goal in Goal::ALL {
        assert_eq!(deploy(&["--all", "--goal", goal.as_str()]).goal, goal);
    }
}

/// Each command line is one intent, with only what that command takes.
#[test]
fn each_command_is_one_intent() {
    let intent = |args: &[&str]| opts(args).unwrap().intent;
    assert_eq!(intent(&["status", "--all"]), Intent::Status);
    assert_eq!(intent(&["diff", "--all"]), Intent::Diff { mode: Mode::Deploy });
    assert_eq!(intent(&["--all", "--goal", "dry-activate"]), Intent::Diff { mode: Mode::Deploy });
    let back = Mode::Rollback { to_generation: Some(3) };
    let dry = ["rollback", "--all", "--to-generation", "3", "--goal", "dry-activate"];
    assert_eq!(intent(&dry), Intent::Diff { mode: back.clone() });
    assert_eq!(deploy(&["rollback", "--all", "--to-generation", "3"]).mode, back);
    assert_eq!(intent(&["keys", "--all", "--dry-run"]), Intent::Keys { dry_run: true });
    assert_eq!(intent(&["keys", "--all"]), Intent::Keys { dry_run: false });
    let ask = deploy(&["--all", "--ask", "--yes", "--soak", "30", "--no-check"]);
    assert_eq!((ask.ask, ask.rollout.soak, ask.switch_env.no_check), (Some(true), Some(30), true));
    // What a subcommand does not take, clap refuses.
    for args in [
        &["status", "--all", "--force"][..],
        &["diff", "--all", "--reboot", "always"],
        &["keys", "--all", "--goal", "boot"],
    ] {
        let mut argv = vec!["deploy-flake"];
        argv.extend_from_slice(args);
        assert!(Cli::try_parse_from(argv).is_err(), "{args:?} is accepted");
    }
    assert!(intent(&["--all", "--dry-run"]).dry_run() && !intent(&["diff", "--all"]).dry_run());
}
