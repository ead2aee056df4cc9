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

/// A fleet with keys: what `--dry-run` and `keys --dry-run` show of them
/// (name, file, owner, mode, where the content comes from; never the
/// content), with no key read and no host touched.
#[test]
fn dry_runs_list_keys_without_their_content() {
    let dir = common::flake_from(
        r#"{
  outputs = { self }: {
    nixosConfigurations.web1 = throw "never evaluated";
    deployFlake = (import ./lib).mkDeployFlake {
      inherit self;
      defaults.keys.api = { text = "text-never-shown"; permissions = "0400"; };
      hosts.web1 = {
        hostname = "192.0.2.1";
        keys.db = { keyCommand = [ "false" ]; user = "postgres"; group = "keys"; permissions = "0640"; };
        keys.tls = { keyFile = "/nonexistent/tls.key"; destDir = "/var/lib/tls"; uploadAt = "post-activation"; };
      };
    };
  };
}"#,
    );
    let flake = dir.path().to_str().unwrap();
    let (code, stdout, stderr) = run_tool(&["--dry-run", "--all", "--flake", flake]);
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "  key:           api -> /run/keys/api (root:root 0400, pre-activation, from text)",
        "  key:           db -> /run/keys/db (postgres:keys 0640, pre-activation, from keyCommand false)",
        "  key:           tls -> /var/lib/tls/tls (root:root 0600, post-activation, from keyFile /nonexistent/tls.key)",
    ] {
        assert!(stdout.contains(&format!("{line}\n")), "{line}\n{stdout}");
    }
    let (code, stdout, stderr) = run_tool(&["keys", "--dry-run", "--all", "--flake", flake]);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "web1: 3 key(s)\n  api -> /run/keys/api (root:root 0400, pre-activation)\n  db -> /run/keys/db (postgres:keys 0640, pre-activation)\n  tls -> /var/lib/tls/tls (root:root 0600, post-activation)\n"
    );
    let (code, stdout, _) = run_tool(&["keys", "--dry-run", "--json", "--all", "--flake", flake]);
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(v["hosts"][0]["keys"][1]["user"], "postgres");
    for out in [&stdout, &stderr] {
        assert!(!out.contains("text-never-shown"), "{out}");
    }
}

/// Where each host's system is built and how it comes, as the dry run
/// shows it: a build host by fleet name or destination, a cache, systems
/// built before; and what is refused before anything runs.
#[test]
fn dry_run_shows_where_systems_are_built() {
    let dir = fixture_flake("fleet");
    let flake = dir.path().to_str().unwrap();
    let key = dir.path().join("cache.secret");
    std::fs::write(&key, "lab-1:not-a-real-key\n").unwrap();
    let key = key.to_str().unwrap();
    let (code, stdout, stderr) = run_tool(&[
        "--dry-run",
        "--flake",
        flake,
        "web-1",
        "db1",
        "--build-host",
        "web-2",
        "--push-to",
        "s3://cache?region=eu",
        "--sign-key",
        key,
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stdout.contains(&format!("signing: what is pushed to a cache is signed with {key}\n")),
        "{stdout}"
    );
    let built = "  build on:      host web-2 (deploy@[2001:db8::2]:2222, ssh options: -o \
                 ForwardAgent=no; evaluates and builds each configuration once per run, as many \
                 at once as it has cores)\n  copy:          pushed once to s3://cache?region=eu, \
                 then the host substitutes it\n";
    assert_eq!(stdout.matches(built).count(), 2, "{stdout}");

    let (code, stdout, stderr) = run_tool(&[
        "--dry-run",
        "--flake",
        flake,
        "web-1",
        "--build-host",
        "nix@builder.example:2222",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let built = "  build on:      host nix@builder.example:2222 (nix@builder.example:2222, ssh \
                 options: -o ForwardAgent=no; evaluates and builds each configuration once per \
                 run, as many at once as it has cores)\n  copy:          relayed from the build \
                 host by this machine (only what the host lacks)\n";
    assert!(stdout.contains(built), "{stdout}");

    let systems = dir.path().join("systems.json");
    let path = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web-1";
    std::fs::write(&systems, format!(r#"{{"web-1": "{path}"}}"#)).unwrap();
    let systems = systems.to_str().unwrap();
    let (code, stdout, stderr) =
        run_tool(&["--dry-run", "--flake", flake, "web-1", "--systems", systems]);
    assert_eq!(code, 0, "{stderr}");
    let built = format!(
        "  build on:      nothing: {path} was built elsewhere\n  copy:          from this \
         machine's store when it has it, else from the host's substituters\n"
    );
    assert!(stdout.contains(&built), "{stdout}");

    for (args, want) in [
        (vec!["web-1", "db1", "--systems", systems], "--systems has no system for db1"),
        (vec!["web-1", "--build-host=-oProxyCommand=x"], "--build-host `-oProxyCommand=x` starts with '-'"),
        (vec!["web-1", "--build-host", "root@h:99999"], "buildHost \"root@h:99999\": port `99999` is not a number in 1..65535; nothing was touched"),
        (vec!["web-1", "--push-to", "/srv/cache"], "--push-to `/srv/cache` is not a store URI"),
        (vec!["web-1", "--sign-key", "/nonexistent/key"], "--sign-key /nonexistent/key: cannot read the key"),
    ] {
        let mut all = vec!["--dry-run", "--flake", flake];
        all.extend(args.iter());
        let (code, stdout, stderr) = run_tool(&all);
        assert_eq!(code, 2, "{args:?}: {stdout}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
    }
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
