//! The lab itself, on every suite (bookworm, trixie, sid): a target is a real host for a deployer
//! (strict ssh, systemd `running`, its own Nix daemon and store, transient
//! units that outlive the ssh client), and the NixOS stand-in behaves like
//! NixOS's switch-to-configuration (test, boot + reboot, exit code 4).
//!
//! Runs as root: `cargo test --test lab_selftest`.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{eval_expr, host_nix, nix_path, run, run_ok, scenario_names, Lab, Suite};

/// Declares one test per suite for each named function taking a `Suite`.
macro_rules! on_every_suite {
    ($($name:ident),* $(,)?) => {
        mod bookworm {
            $( #[test] fn $name() { super::$name(super::Suite::Bookworm) } )*
        }
        mod trixie {
            $( #[test] fn $name() { super::$name(super::Suite::Trixie) } )*
        }
        mod sid {
            $( #[test] fn $name() { super::$name(super::Suite::Sid) } )*
        }
    };
}

on_every_suite!(
    ssh_is_strict_and_the_system_is_running,
    target_has_its_own_nix_daemon_and_store,
    transient_unit_survives_a_killed_ssh_client,
    fixture_closure_activates_by_hand,
    boot_entry_is_what_a_reboot_comes_up_in,
    failing_unit_makes_test_exit_4,
    broken_configurations_break_and_the_previous_one_heals,
    the_stand_in_switches_as_the_real_program_was_seen_to,
    systemd_keeps_answering_through_many_re_executions,
);

fn ssh_is_strict_and_the_system_is_running(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    assert_eq!(t.ssh_ok("hostname"), t.name);
    assert_eq!(t.system_state(), "running");

    // Another host key for the same address: refused, never overridden.
    let other = lab.dir().join("other");
    run_ok(Command::new("ssh-keygen").args(["-q", "-t", "ed25519", "-N", "", "-f"]).arg(&other));
    let other_pub = std::fs::read_to_string(other.with_extension("pub")).unwrap();
    let wrong = lab.dir().join("wrong_known_hosts");
    let key_fields: Vec<&str> = other_pub.split_whitespace().take(2).collect();
    std::fs::write(&wrong, format!("{} {}\n", t.address, key_fields.join(" "))).unwrap();
    let empty = lab.dir().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    for known_hosts in [&wrong, &empty] {
        let out = run(Command::new("ssh")
            .arg("-i")
            .arg(lab.key_path())
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", known_hosts.display()))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["-o", "ConnectTimeout=5"])
            .arg(t.destination())
            .arg("true"));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "ssh with {} was accepted", known_hosts.display());
        assert!(stderr.contains("Host key verification failed"), "unexpected refusal: {stderr}");
    }

    // The users a deployer may log in as: deploy sudoes without a password,
    // pwuser's sudo would prompt.
    let deploy = t.ssh_as("deploy", "sudo -n id -u");
    assert!(deploy.status.success(), "{}", String::from_utf8_lossy(&deploy.stderr));
    assert_eq!(String::from_utf8_lossy(&deploy.stdout).trim(), "0");
    let pwuser = t.ssh_as("pwuser", "sudo -n id -u");
    assert!(!pwuser.status.success());
    assert!(
        String::from_utf8_lossy(&pwuser.stderr).contains("password is required"),
        "{}",
        String::from_utf8_lossy(&pwuser.stderr)
    );
}

fn target_has_its_own_nix_daemon_and_store(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    // The daemon answers (not just the local store of the root user).
    t.ssh_ok("nix store ping --store daemon");
    let version = t.ssh_ok("nix --version");
    let expected = suite.nix_version_prefix();
    assert!(version.starts_with(expected), "{suite:?} target runs {version}");

    // A path added on the target exists there, not here.
    let unique = format!("{}-{}", t.name, t.boot_id());
    let path = t.ssh_ok(&format!(
        "printf %s {unique} >/tmp/lab-unique && nix store add-file --store daemon /tmp/lab-unique"
    ));
    assert!(path.starts_with("/nix/store/"), "nix store add-file printed {path:?}");
    t.ssh_ok(&format!("test -e {path}"));
    assert!(!Path::new(&path).exists(), "{path} exists on the host: the stores are shared");
}

fn transient_unit_survives_a_killed_ssh_client(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    let mut client = Command::new("ssh");
    client
        .args(lab.ssh_opts())
        .arg(t.destination())
        .arg("systemd-run --unit=lab-survivor --quiet --wait /bin/sleep 600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut child = client.spawn().expect("spawn ssh");
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.ssh("systemctl is-active --quiet lab-survivor.service").status.code() != Some(0) {
        assert!(Instant::now() < deadline, "lab-survivor never became active");
        sleep(Duration::from_millis(100));
    }
    child.kill().unwrap(); // SIGKILL

    child.wait().unwrap();
    sleep(Duration::from_secs(2));
    assert_eq!(t.ssh_ok("systemctl is-active lab-survivor.service"), "active");
    t.ssh_ok("systemctl stop lab-survivor.service");
}

fn fixture_closure_activates_by_hand(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    let flake = lab.fixture_flake(&[("web1", t, "healthy-v1")]);

    // The fixture's deployFlake is evaluated by the repository's lib/.
    let hostname = run_ok(
        host_nix()
            .args(["eval", "--raw"])
            .arg(format!("path:{}#deployFlake.hosts.web1.hostname", flake.display())),
    );
    assert_eq!(hostname, t.address);

    let source = t.archive(&flake, &lab.nix_sshopts());
    let v1 = t.build(&source, "healthy-v1");
    // Whether the host's store also holds it depends on what other tests
    // built there (a local build of the same configuration); that the two
    // stores are apart is `target_has_its_own_nix_daemon_and_store`'s.
    t.ssh_ok(&format!("nix-store --check-validity {v1}"));
    assert_eq!(t.current_system(), None, "a fresh target runs no configuration");

    let out = t.switch(&v1, "test");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(t.current_system().as_deref(), Some(v1.as_str()));
    assert_eq!(t.ssh_ok("systemctl is-active demo-web.service"), "active");
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), "healthy-v1");
    assert_eq!(t.ssh_ok(&format!("cat {v1}/nixos-version")), "1");

    // A changed unit is stopped and started again; dry-activate says so first.
    let v2 = t.build(&source, "healthy-v2");
    let dry = t.ssh_ok(&format!("{v2}/bin/switch-to-configuration dry-activate 2>&1"));
    assert!(dry.contains("would stop the following units: demo-web.service"), "{dry}");
    assert!(dry.contains("would start the following units: demo-web.service"), "{dry}");
    let pid_before = t.ssh_ok("systemctl show -P MainPID demo-web.service");
    let out = t.switch(&v2, "test");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(t.current_system().as_deref(), Some(v2.as_str()));
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), "healthy-v2");
    assert_ne!(t.ssh_ok("systemctl show -P MainPID demo-web.service"), pid_before);
    t.ssh_ok(&format!("{v2}/pre-activate-safety-checks"));
    assert_eq!(t.system_state(), "running");
    assert_eq!(t.boot_profile(), None, "test must not touch the boot profile");
}

fn boot_entry_is_what_a_reboot_comes_up_in(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    let flake = lab.fixture_flake(&[("web1", t, "healthy-v2")]);
    let v1 = t.install(&flake, &lab.nix_sshopts(), "healthy-v1");
    let source = t.archive(&flake, &lab.nix_sshopts());
    let v2 = t.build(&source, "healthy-v2");

    // While the profile points elsewhere, `boot` finds no entry for v2 and
    // leaves the default as it is (as systemd-boot does): still v1.
    let default_entry = || t.ssh_ok("cat /boot/loader/loader.conf");
    let before_entry = default_entry();
    let early = t.switch(&v2, "boot");
    assert!(early.status.success(), "{}", String::from_utf8_lossy(&early.stderr));
    assert_eq!(default_entry(), before_entry, "the default entry stays v1's");

    t.ssh_ok(&format!("nix-env -p /nix/var/nix/profiles/system --set {v2}"));
    let out = t.switch(&v2, "boot");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(t.current_system().as_deref(), Some(v1.as_str()), "boot must not activate");
    assert_eq!(t.boot_profile().as_deref(), Some(v2.as_str()));

    let before = t.boot_id();
    let started = Instant::now();
    t.reboot();
    eprintln!("{suite:?}: reboot took {:.2?}", started.elapsed());
    assert_ne!(t.boot_id(), before);
    assert_eq!(t.current_system().as_deref(), Some(v2.as_str()));
    assert_eq!(
        t.booted_system().as_deref(),
        Some(v2.as_str()),
        "/run/booted-system is set at boot"
    );
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), "healthy-v2");
    assert_eq!(t.system_state(), "running");
}

/// A target told not to come back from a reboot stays down: the launcher
/// does not start it again, and ssh gets no answer.
#[test]
fn a_target_told_not_to_come_back_from_a_reboot_stays_down() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    t.stay_down_at_next_reboot();
    let _ = t.ssh("systemctl reboot");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !t.console_log().contains("staying down instead of rebooting") {
        assert!(Instant::now() < deadline, "still up:\n{}", t.console_log());
        sleep(Duration::from_millis(200));
    }
    sleep(Duration::from_secs(2));
    assert!(!t.ssh("true").status.success(), "no ssh after the reboot");
    assert_eq!(t.console_log().matches("=== boot ").count(), 1, "never booted again");
}

/// systemd re-executing itself again and again (`systemctl
/// daemon-reexec`) keeps answering, and what it prints on its console each
/// time is in the target's console log: the console is read. (One nobody
/// read filled up after some 30 re-executions, and systemd blocked for
/// good on a write to it.)
fn systemd_keeps_answering_through_many_re_executions(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    let out = t.ssh(
        "for i in $(seq 100); do timeout 20 systemctl daemon-reexec || \
         { echo \"re-execution $i: exit $?\"; exit 1; }; done",
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(t.system_state(), "running");
    let started = t.console_log().matches("running in system mode").count();
    assert!(started > 100, "systemd started {started} times on the console:\n{}", t.console_log());
}

fn failing_unit_makes_test_exit_4(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    let flake = lab.fixture_flake(&[("web1", t, "failing-unit")]);
    let v1 = t.install(&flake, &lab.nix_sshopts(), "healthy-v1");
    let source = t.archive(&flake, &lab.nix_sshopts());
    let broken = t.build(&source, "failing-unit");

    let out = t.switch(&broken, "test");
    assert_eq!(out.status.code(), Some(4), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("demo-broken.service"));
    assert_eq!(t.system_state(), "degraded");

    // Re-activating the previous configuration repairs the host.
    let out = t.switch(&v1, "test");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(t.current_system().as_deref(), Some(v1.as_str()));
    assert_eq!(t.system_state(), "running");
}

/// Targets of every suite in one lab, booted in parallel.
#[test]
fn mixed_suites_boot_in_parallel() {
    let started = Instant::now();
    let lab = Lab::boot_suites(&[Suite::Trixie, Suite::Bookworm, Suite::Sid]);
    eprintln!("3 targets running after {:.2?}", started.elapsed());
    let mut addresses: Vec<&str> = lab.targets.iter().map(|t| t.address.as_str()).collect();
    addresses.sort();
    addresses.dedup();
    assert_eq!(addresses.len(), 3);
    for t in &lab.targets {
        assert_eq!(t.system_state(), "running", "{}", t.name);
        let os = t.ssh_ok(". /etc/os-release && echo $VERSION_CODENAME");
        assert_eq!(os, t.suite.codename());
    }
    // Every target is reachable from every other one's perspective too:
    // distinct machine ids and host keys.
    let ids: Vec<String> = lab.targets.iter().map(|t| t.ssh_ok("cat /etc/machine-id")).collect();
    assert!(ids[0] != ids[1] && ids[1] != ids[2] && ids[0] != ids[2], "{ids:?}");
}

/// Every scenario of tests/fixtures/scenarios.nix names a configuration the
/// fixture flake defines (no lab needed).
#[test]
fn every_scenario_has_a_fixture_configuration() {
    let eval = |expr: String| -> Vec<String> {
        let value = eval_expr(&expr).unwrap_or_else(|e| panic!("{expr}:\n{e}"));
        serde_json::from_value(value).expect("a list of strings")
    };
    let fixtures = common::repo_root().join("tests/fixtures");
    let configs = eval(format!(
        "builtins.attrNames (import {})",
        nix_path(&fixtures.join("lab/configurations.nix"))
    ));
    let used = eval(format!(
        "map (s: s.configuration) (builtins.attrValues (import {}))",
        nix_path(&fixtures.join("scenarios.nix"))
    ));
    for c in &used {
        assert!(configs.contains(c), "scenario configuration {c} is not in configurations.nix");
    }
    let lab_only = eval(format!(
        "let c = import {}; in builtins.filter (n: c.${{n}} ? labOnly) (builtins.attrNames c)",
        nix_path(&fixtures.join("lab/configurations.nix"))
    ));
    assert!(lab_only.len() < configs.len() / 2, "most configurations are shared: {lab_only:?}");
    for c in &configs {
        let covered = scenario_names().contains(c) || used.contains(c) || lab_only.contains(c);
        assert!(covered, "configuration {c} has no scenario (or a `labOnly` reason)");
    }
}

/// Waits until `f` holds, for at most `secs` seconds.
fn wait_for(what: &str, secs: u64, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(Instant::now() < deadline, "timed out after {secs}s waiting for {what}");
        sleep(Duration::from_millis(200));
    }
}

/// The scenario configurations do what scenarios.nix says, and activating
/// the previous configuration from a timer on the target (no ssh needed)
/// repairs what they broke.
fn broken_configurations_break_and_the_previous_one_heals(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    let flake = lab.fixture_flake(&[("web1", t, "healthy-v1")]);
    let v1 = t.install(&flake, &lab.nix_sshopts(), "healthy-v1");
    let source = t.archive(&flake, &lab.nix_sshopts());

    let selfcheck = t.build(&source, "failing-selfcheck");
    let out = t.ssh(&format!("{selfcheck}/pre-activate-safety-checks"));
    assert_eq!(out.status.code(), Some(1));

    let hanging = t.build(&source, "hanging-activation");
    t.ssh_ok(&format!(
        "systemd-run --quiet --collect --unit=lab-hang {hanging}/bin/switch-to-configuration test"
    ));
    sleep(Duration::from_secs(3));
    assert_eq!(t.ssh_ok("systemctl is-active lab-hang.service"), "active");
    t.ssh_ok("systemctl stop lab-hang.service");
    assert!(t.switch(&v1, "test").status.success());

    for breaker in ["stops-sshd", "cuts-network"] {
        let top = t.build(&source, breaker);
        t.ssh_ok(&format!(
            "systemd-run --quiet --collect --unit=lab-heal --on-active=20 \
             --timer-property=AccuracySec=100ms {v1}/bin/switch-to-configuration test"
        ));
        t.ssh_ok(&format!(
            "systemd-run --quiet --collect --unit=lab-break {top}/bin/switch-to-configuration test"
        ));
        wait_for(&format!("{breaker}: new logins to fail"), 15, || !t.ssh("true").status.success());
        wait_for(&format!("{breaker}: the timer to heal the host"), 45, || {
            t.ssh("true").status.success()
        });
        assert_eq!(t.current_system().as_deref(), Some(v1.as_str()), "{breaker}");
        assert_eq!(t.system_state(), "running", "{breaker}");
    }
}

/// What nixpkgs' switch-to-configuration-ng was seen to do on a systemd
/// host, the stand-in does: everything on stderr; a changed service
/// stopped before the activation and started after it; an unchanged unit
/// left alone; failed units reset, so only what fails now counts; exit 100
/// for a new init from dry-activate too, and from every action when the
/// running system names no init; `switch` writes the boot entry first.
fn the_stand_in_switches_as_the_real_program_was_seen_to(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    let flake = lab.fixture_flake(&[("web1", t, "healthy-v1")]);
    t.install(&flake, &lab.nix_sshopts(), "healthy-v1");
    let source = t.archive(&flake, &lab.nix_sshopts());
    let v2 = t.build(&source, "healthy-v2");
    let tool = t.build(&source, "healthy-v2-with-tool");
    let init = t.build(&source, "new-init");
    let said = |o: &std::process::Output| {
        (o.status.code(), String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    let dry = t.switch(&v2, "dry-activate");
    assert_eq!(said(&dry), (Some(0), String::new()), "{}", stderr(&dry));
    let dry = stderr(&dry);
    assert!(dry.contains("would stop the following units: demo-web.service"), "{dry}");
    assert!(dry.contains("would start the following units: demo-web.service"), "{dry}");
    let dry = t.switch(&init, "dry-activate");
    assert_eq!(said(&dry), (Some(100), String::new()), "{}", stderr(&dry));
    assert!(stderr(&dry).contains("won't take effect until you reboot"), "{}", stderr(&dry));

    // A unit that had failed is reset: the switch exits 0.
    t.make_degraded();
    let out = t.switch(&v2, "test");
    assert_eq!(said(&out), (Some(0), String::new()), "{}", stderr(&out));
    let err = stderr(&out);
    let at = |what: &str| err.find(what).unwrap_or_else(|| panic!("no {what:?} in {err}"));
    assert!(
        at("stopping the following units: demo-web.service") < at("activating the configuration")
            && at("activating the configuration")
                < at("starting the following units: demo-web.service"),
        "{err}"
    );
    assert_eq!(t.ssh_ok("systemctl is-failed lab-broken.service || true"), "inactive");
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), "healthy-v2");
    assert_eq!(t.system_state(), "running");

    // demo-web is the same in both: stopped by hand, it stays stopped.
    t.ssh_ok("systemctl stop demo-web.service");
    let out = t.switch(&tool, "test");
    assert_eq!(said(&out), (Some(0), String::new()), "{}", stderr(&out));
    assert_eq!(t.ssh_ok("systemctl is-active demo-web.service || true"), "inactive");
    t.ssh_ok("systemctl start demo-web.service");

    // `switch` of a new init writes its boot entry, then refuses to activate.
    t.ssh_ok(&format!("nix-env -p /nix/var/nix/profiles/system --set {init}"));
    let out = t.switch(&init, "switch");
    assert_eq!(out.status.code(), Some(100), "{}", stderr(&out));
    let entry = t.ssh_ok(
        "e=$(sed -n 's/^default //p' /boot/loader/loader.conf); sed -n 's/^system //p' /boot/loader/entries/$e",
    );
    assert_eq!(entry, init);
    assert_eq!(t.current_system().as_deref(), Some(tool.as_str()), "nothing activated");

    // A running system that names no init: every action that activates
    // refuses, and /run/current-system stays where it was.
    // (Its switch inhibitors are the same: only the init is in question.)
    t.ssh_ok(&format!(
        "mkdir -p /tmp/no-init && cp {tool}/switch-inhibitors /tmp/no-init/ && \
         ln -sfn /tmp/no-init /run/current-system"
    ));
    for action in ["test", "dry-activate"] {
        let out = t.switch(&v2, action);
        assert_eq!(out.status.code(), Some(100), "{action}: {}", stderr(&out));
    }
    assert_eq!(t.current_system().as_deref(), Some("/tmp/no-init"));
}
