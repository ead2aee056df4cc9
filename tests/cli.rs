//! The built binary's dry run and error paths against fixture flakes
//! (evaluated by the host's `nix`). Flag parsing is in `tests/cli_flags.rs`.

mod common;

use common::{fixture_flake, run_tool};

#[test]
fn dry_run_prints_the_plan() {
    let dir = fixture_flake("fleet");
    let flake = dir.path().to_str().unwrap();
    let (code, stdout, stderr) = run_tool(&[
        "--dry-run",
        "--all",
        "--flake",
        flake,
        "--exclude",
        "web-1",
        "--timeout",
        "confirm=45",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let want = format!(
        r#"dry run: 3 hosts from flake {flake}; nothing will be touched
parallel: 16; preflight: run; force: no
goal: switch (activate, confirm, then write the boot entry); pre-switch checks: run
rollout: every host at once (no waves, no soak)

db1
  ssh:           root@db1:22
  configuration: {flake}#nixosConfigurations.db1
  build on:      local
  copy:          the target substitutes what it can, the rest is copied from here
  self-check:    bin/db-check
  rollback:      off
  timeouts:      connect 10s, lock 10s, preflight 60s, copy 1200s, build 3600s, selfCheck 120s, activate 600s, confirm 45s, boot 300s, reboot 600s

odd "name" $(x)
  ssh:           deploy@odd.example.com:22
  escalation:    sudo
  configuration: {flake}#nixosConfigurations."odd 'name' $(x)"
  build on:      target
  self-check:    pre-activate-safety-checks, if present
  rollback:      automatic unless confirmed
  timeouts:      connect 10s, lock 10s, preflight 60s, copy 1200s, build 3600s, selfCheck 120s, activate 600s, confirm 45s, boot 300s, reboot 600s

web-2
  ssh:           deploy@[2001:db8::2]:2222
  escalation:    sudo
  configuration: {flake}#nixosConfigurations.web-2
  build on:      target
  self-check:    pre-activate-safety-checks, if present
  rollback:      automatic unless confirmed
  tags:          web, canary
  timeouts:      connect 10s, lock 10s, preflight 60s, copy 1200s, build 7200s, selfCheck 120s, activate 600s, confirm 45s, boot 300s, reboot 600s
"#
    );
    assert_eq!(stdout, want);
}

#[test]
fn dry_run_shows_the_waves_of_the_flake_s_rollout_and_the_command_line_s() {
    let dir = fixture_flake("rollout");
    let flake = dir.path().to_str().unwrap();
    let (code, stdout, stderr) = run_tool(&["--dry-run", "--all", "--flake", flake]);
    assert_eq!(code, 0, "{stderr}");
    let rollout = "rollout: 4 waves; a wave starts once the previous one ended; after each wave, \
                   60 s of soak, then its hosts are checked again; no further wave after more \
                   than 1 failed host (--max-failures 25%)\n  \
                   wave 1 (canary): app3, edge\n  wave 2: app1\n  wave 3: app2, app4\n  wave 4: app5\n";
    assert!(stdout.contains(rollout), "{stdout}");
    // The command line replaces the flake's settings key by key.
    let (code, stdout, stderr) = run_tool(&[
        "--dry-run",
        "--all",
        "--flake",
        flake,
        "--canary",
        "app5",
        "--batches",
        "100%",
        "--max-failures",
        "2",
        "--soak",
        "0",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let rollout = "rollout: 2 waves; a wave starts once the previous one ended; no soak; no \
                   further wave after more than 2 failed hosts (--max-failures 2)\n  \
                   wave 1 (canary): app5\n  wave 2: app1, app2, app3, app4, edge\n";
    assert!(stdout.contains(rollout), "{stdout}");
    let (code, stdout, stderr) = run_tool(&[
        "--dry-run",
        "--all",
        "--flake",
        flake,
        "--no-canary",
        "--batches",
        "100%",
        "--soak",
        "0",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("rollout: every host at once (no waves, no soak)\n"), "{stdout}");
}

#[test]
fn a_canary_that_matches_nothing_or_a_bad_size_is_refused_before_anything_runs() {
    let dir = fixture_flake("rollout");
    let flake = dir.path().to_str().unwrap();
    let (code, stdout, stderr) =
        run_tool(&["--dry-run", "--all", "--flake", flake, "--canary", "@canry"]);
    assert_eq!(code, 2, "{stdout}");
    assert!(
        stderr.contains("--canary `@canry`: no host has tag `@canry`: did you mean `@canary`?"),
        "{stderr}"
    );
    let (code, _, stderr) =
        run_tool(&["--dry-run", "--all", "--flake", flake, "--batches", "1,150%"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--batches `1,150%`: `150%`: a percentage over 100"), "{stderr}");
    let (code, _, stderr) = run_tool(&["--dry-run", "--all", "--flake", flake, "--batches", "0"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--batches `0`: 0: a wave of no host"), "{stderr}");
    let (code, _, stderr) =
        run_tool(&["--dry-run", "--all", "--flake", flake, "--max-failures", "x"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--max-failures `x`: `x` is neither a count nor N%"), "{stderr}");
}

#[test]
fn ad_hoc_destination_works_without_deploy_flake() {
    let dir = fixture_flake("no-deploy-flake");
    let flake = dir.path().to_str().unwrap();
    let (code, stdout, stderr) =
        run_tool(&["--dry-run", "--flake", flake, "nixos://ops@[fe80::1]:2222/alpha"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains("nixos://ops@[fe80::1]:2222/alpha\n  ssh:           ops@[fe80::1]:2222\n"),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!("  configuration: {flake}#nixosConfigurations.alpha\n")),
        "{stdout}"
    );
}

#[test]
fn flake_errors_exit_2_with_one_error_line() {
    let dir = fixture_flake("no-deploy-flake");
    let flake = dir.path().to_str().unwrap();
    let (code, stdout, stderr) = run_tool(&["--dry-run", "--all", "--flake", flake]);
    assert_eq!(code, 2);
    assert_eq!(stdout, "");
    assert!(
        stderr.starts_with(&format!(
            "error: flake `{flake}` has no deployFlake output; add these lines"
        )),
        "{stderr}"
    );

    let dir = fixture_flake("throwing");
    let flake = dir.path().to_str().unwrap();
    let (code, _, stderr) = run_tool(&["--dry-run", "--flake", flake, "alpah"]);
    assert_eq!(code, 2);
    assert_eq!(
        stderr,
        "error: unknown host `alpah`: did you mean `alpha`? (for a host outside deployFlake, write nixos://HOST or USER@HOST)\n"
    );
}

/// `-v` into a file or a pipe is plain text; `--color always` colors it
/// anyway, `NO_COLOR` never. (The ad hoc destination is a refused local
/// port: the run logs its local commands, then fails to connect.)
#[test]
fn the_verbose_log_is_colored_only_on_a_terminal_or_when_asked() {
    let dir = fixture_flake("fleet");
    let flake = dir.path().to_str().unwrap();
    let run = |extra: &[&str], no_color: Option<&str>| {
        let mut cmd = std::process::Command::new(common::BIN);
        cmd.args(["-v", "--progress", "plain", "--flake", flake]).args(extra);
        cmd.arg("nixos://root@127.0.0.1:1/web-1");
        match no_color {
            Some(v) => cmd.env("NO_COLOR", v),
            None => cmd.env_remove("NO_COLOR"),
        };
        let out = cmd.output().unwrap();
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let plain = run(&[], None);
    assert!(plain.contains("DEBUG run"), "{plain}");
    assert!(!plain.contains('\u{1b}'), "{plain:?}");
    assert!(run(&["--color", "always"], None).contains("\u{1b}["), "asked for");
    assert!(!run(&["--color", "auto"], Some("1")).contains('\u{1b}'));
}
