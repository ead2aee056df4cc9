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

db1
  ssh:           root@db1:22
  configuration: {flake}#nixosConfigurations.db1
  build on:      local
  self-check:    bin/db-check
  rollback:      off
  timeouts:      connect 10s, lock 10s, preflight 60s, copy 1200s, build 3600s, selfCheck 120s, activate 600s, confirm 45s, boot 300s

odd "name" $(x)
  ssh:           deploy@odd.example.com:22
  escalation:    sudo
  configuration: {flake}#nixosConfigurations."odd 'name' $(x)"
  build on:      target
  self-check:    pre-activate-safety-checks, if present
  rollback:      automatic unless confirmed
  timeouts:      connect 10s, lock 10s, preflight 60s, copy 1200s, build 3600s, selfCheck 120s, activate 600s, confirm 45s, boot 300s

web-2
  ssh:           deploy@[2001:db8::2]:2222
  escalation:    sudo
  configuration: {flake}#nixosConfigurations.web-2
  build on:      target
  self-check:    pre-activate-safety-checks, if present
  rollback:      automatic unless confirmed
  tags:          web, canary
  timeouts:      connect 10s, lock 10s, preflight 60s, copy 1200s, build 7200s, selfCheck 120s, activate 600s, confirm 45s, boot 300s
"#
    );
    assert_eq!(stdout, want);
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
