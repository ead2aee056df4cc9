//! Never half-deployed: automatic rollback, confirmation over a fresh login,
//! timeouts, the host lock, the rollback command, and a deployer that dies.

use std::time::Duration;

use crate::common::{Lab, Suite};
use crate::helpers::*;

/// The host stays reachable and on `v1`, its boot entry untouched.
fn assert_back_on(t: &crate::common::Target, v1: &str) {
    assert_eq!(t.current_system().as_deref(), Some(v1), "{}: runs the previous system", t.name);
    assert_eq!(t.boot_profile().as_deref(), Some(v1), "{}: boot entry unchanged", t.name);
    assert_eq!(t.system_state(), "running");
}

/// A configuration that stops sshd: no fresh login can confirm it. The
/// refused login is acted on at once (the deployer tells the agent over
/// the connection it still has), so the host is back on the previous
/// system, sshd answering again, before the 10 s window would have ended.
#[test]
fn config_that_stops_sshd_is_rolled_back() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "stops-sshd", "timeouts.confirm = 10;")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("h"), "rolled-back", "{run}");
    assert_eq!((run.phase("h").as_str(), run.reason("h").as_str()), ("confirm", "not-confirmed"));
    assert!(run.message("h").contains("fresh ssh login"), "{run}");
    assert_eq!(run.system("h"), v1);
    let took = phase_took(&run, "h", "confirm").expect("a confirm phase");
    eprintln!("confirm phase, rollback included: {took:?}");
    assert!(took < Duration::from_secs(10), "not at once, as if waiting out a window: {took:?}");
    assert_back_on(t, &v1);
}

/// The same when the activation cuts the target's network: the deployer
/// cannot even tell the agent; the agent's own timer brings the host back,
/// after the host's window (not the 30 s default), counted from the
/// deployer's last sign of life. The 8 s asked for is less than two
/// heartbeats and their slack: the window is raised to 15 s, and a note
/// says so.
#[test]
fn config_that_cuts_the_network_is_rolled_back() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(
        &lab,
        &[host_entry(&lab, "h", t, "cuts-network", "timeouts = { confirm = 8; connect = 3; };")],
    );
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("h"), "rolled-back", "{run}");
    assert_eq!(run.reason("h"), "not-confirmed", "{run}");
    // From the activation's start to the rollback's report.
    let took = ["activate", "confirm"].map(|p| phase_took(&run, "h", p).unwrap_or_default());
    let took = took[0] + took[1];
    eprintln!("activation to rollback: {took:?}");
    assert!(took >= Duration::from_secs(15), "back before the window ended: {took:?}");
    assert!(took < Duration::from_secs(15 + 15), "not the 15 s window: {took:?}\n{run}");
    assert!(run.message("h").contains("within 15s of the deployer's last sign of life"), "{run}");
    assert!(
        run.notes("h").iter().any(|n| n.contains("gives the host 8 s") && n.contains("waits 15 s")),
        "the raised window is said: {run}"
    );
    assert_back_on(t, &v1);
}

/// The processes of the `hanging-activation` configuration's activation on
/// `t`: its `switch-to-configuration`, its hook (both under its store path)
/// and the hook's endless `sleep`. The bracket keeps the pattern from
/// matching the command line that runs `pgrep`.
fn hanging_activation_processes(t: &crate::common::Target) -> String {
    t.ssh_ok("pgrep -af 'hanging-activatio[n]|/bin/sleep 360[0]' || true")
}

/// An activation that hangs is stopped at the activate timeout and rolled back.
#[test]
fn hanging_activation_is_stopped_and_rolled_back() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "hanging-activation", "")]);
    let mut bg = Background::start(&f, &["--all", "--timeout", "activate=5"]);
    bg.wait_for("activation", Duration::from_secs(120), phase_started("h", "activate"));
    // What is looked for below is there while the activation hangs.
    eventually("the activation hangs", Duration::from_secs(30), || {
        hanging_activation_processes(t).contains("/bin/sleep 3600")
    });
    let run = bg.finish(Duration::from_secs(120));
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("h"), "rolled-back", "{run}");
    assert_eq!((run.phase("h").as_str(), run.reason("h").as_str()), ("activate", "timeout"));
    assert!(run.message("h").contains("did not finish within 5s"), "{run}");
    assert!(run.elapsed < Duration::from_secs(5 + 30), "{:?}", run.elapsed);
    assert_back_on(t, &v1);
    // Nothing of the hanging activation is left running.
    assert_eq!(hanging_activation_processes(t), "");
    assert_eq!(t.ssh_ok("systemctl list-units --no-legend --plain 'deploy-flake-*' | wc -l"), "0");
}

/// The guard that ends a hanging activation is killed on its own: the
/// activation is still stopped (by coreutils' `timeout`, a few seconds
/// after the guard would have) and rolled back.
#[test]
fn a_hanging_activation_whose_guard_was_killed_is_still_stopped() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "hanging-activation", "")]);
    let mut bg = Background::start(&f, &["--all", "--timeout", "activate=5"]);
    bg.wait_for("activation", Duration::from_secs(120), phase_started("h", "activate"));
    // The agent's children: the guard (a shell) and `timeout` (the
    // activation's group leader).
    let kill_guard = "unit=$(systemctl list-units --plain --no-legend 'deploy-flake-*-activate.service' | awk '{print $1; exit}'); \
        main=$([ -n \"$unit\" ] && systemctl show -p MainPID --value \"$unit\"); \
        for p in $(pgrep -P \"${main:-0}\"); do \
            if [ \"$(cat /proc/$p/comm)\" = sh ]; then kill -KILL $p && echo $p; fi; \
        done; true";
    eventually("the activation hangs", Duration::from_secs(30), || {
        hanging_activation_processes(t).contains("/bin/sleep 3600")
    });
    eventually("the guard killed", Duration::from_secs(20), || !t.ssh_ok(kill_guard).is_empty());
    let run = bg.finish(Duration::from_secs(120));
    assert_eq!(run.outcome("h"), "rolled-back", "{run}");
    assert_eq!((run.phase("h").as_str(), run.reason("h").as_str()), ("activate", "timeout"));
    assert!(run.elapsed < Duration::from_secs(5 + 5 + 30), "{:?}", run.elapsed);
    assert_back_on(t, &v1);
    assert_eq!(hanging_activation_processes(t), "");
    assert_eq!(t.ssh_ok("systemctl list-units --no-legend --plain 'deploy-flake-*' | wc -l"), "0");
}

/// The deployer is SIGKILLed after activation started: the target
/// converges to the previous system on its own, and a retry of the same
/// closure afterwards succeeds (nothing stale confirms or blocks it).
#[test]
fn deployer_killed_during_activation_target_rolls_back_then_retry_succeeds() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "timeouts.confirm = 5;")]);
    let mut bg = Background::start(&f, &["--all"]);
    bg.wait_for("activation", Duration::from_secs(120), phase_started("h", "activate"));
    bg.signal("KILL");
    let _ = bg.finish(Duration::from_secs(10));
    // It activated v2, then nobody confirmed: back to v1 within the confirm timeout.
    let took = eventually("target back on v1", Duration::from_secs(5 + 30), || {
        t.current_system().as_deref() == Some(v1.as_str())
            && t.ssh_ok("systemctl list-units --no-legend --plain 'deploy-flake-*' | wc -l") == "0"
    });
    eprintln!("converged to the previous system {took:?} after the deployer died");
    assert_back_on(t, &v1);

    // The retry (same closure) is not confirmed by anything from the dead
    // run and is not blocked by its lock.
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    let v2 = run.system("h");
    assert!(v2.contains("healthy-v2"));
    assert_eq!(t.current_system(), Some(v2.clone()));
    assert_eq!(t.boot_profile(), Some(v2));
}

/// The deployer dies right after confirmation: the host stays on the new
/// system and the agent writes its boot entry by itself; a boot step that
/// did not happen is finished by a re-run, without activating again.
#[test]
fn deployer_killed_after_confirmation_rerun_finishes_boot() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "timeouts.confirm = 5;")]);
    let mut bg = Background::start(&f, &["--all"]);
    bg.wait_for("confirmation", Duration::from_secs(120), |v| {
        v["event"] == "output" && v["host"] == "h" && v["line"] == "deploy-flake: confirmed"
    });
    bg.signal("KILL");
    let _ = bg.finish(Duration::from_secs(10));
    std::thread::sleep(Duration::from_secs(5 + 2));
    let cur = t.current_system().unwrap();
    assert!(cur.contains("healthy-v2"), "confirmed, so it stays on the new system: {cur}");
    // Once confirmed, the agent writes the boot entry by itself: the
    // deployer's death does not leave a running system that would not boot.
    assert_eq!(t.boot_profile(), Some(cur.clone()), "the agent wrote the boot entry");
    // A boot step that did not happen (say the host lost power before it)
    // is what a re-run finishes: put the boot entry back to v1.
    t.ssh_ok(&format!("nix-env -p /nix/var/nix/profiles/system --set {v1} && {v1}/bin/switch-to-configuration boot"));
    assert_eq!(t.boot_profile().as_deref(), Some(v1.as_str()), "the boot entry is v1 again");
    let unit = invocation(t, "demo-web.service");
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.outcome("h"), "deployed", "{run}");
    assert!(
        events(&run.stdout).iter().any(|e| e["event"] == "note"
            && e["text"] == "already running this system, confirmed; writing its boot entry"),
        "{run}"
    );
    assert!(!run.lines("h").iter().any(|l| l.contains("activating")), "not activated again: {run}");
    assert_eq!(invocation(t, "demo-web.service"), unit, "demo-web was not restarted");
    assert_eq!(t.current_system(), Some(cur.clone()));
    assert_eq!(t.boot_profile(), Some(cur), "boot entry written");
}

/// Two concurrent deploys to one host: one is refused at once, saying who
/// holds the host; the other succeeds. "At once": its lock step takes a
/// fraction of the lock timeout (60 s here), it does not wait for the lock.
#[test]
fn concurrent_deploys_to_one_host_second_is_refused() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-activation", "")]);
    let mut first = Background::start(&f, &["--all"]);
    first.wait_for(
        "first holds the lock",
        Duration::from_secs(120),
        phase_started("h", "preflight"),
    );
    let second = deploy(&f, &["--all", "--timeout", "lock=60"]);
    assert_eq!(second.code, 1, "{second}");
    let took = phase_took(&second, "h", "lock").expect("a lock phase");
    assert!(took < Duration::from_secs(10), "refused at once, not at the timeout: {took:?}");
    assert_eq!((second.phase("h").as_str(), second.reason("h").as_str()), ("lock", "locked"));
    let msg = second.message("h");
    assert!(msg.contains("locked by another deploy") && msg.contains("since"), "{msg}");
    let first = first.finish(Duration::from_secs(180));
    assert_eq!(first.code, 0, "{first}");
    let sys = first.system("h");
    assert_eq!(t.current_system(), Some(sys.clone()));
    assert_eq!(t.boot_profile(), Some(sys));
}

/// An ssh config with `ControlMaster auto` and `ControlPersist` does not
/// fool the confirmation: it is still a fresh login, so a lockout is caught.
#[test]
fn control_master_in_ssh_config_does_not_fake_the_fresh_login() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let cfg = lab.dir().join("user_ssh_config");
    let sockets = lab.dir().join("cm");
    std::fs::create_dir_all(&sockets).unwrap();
    std::fs::write(
        &cfg,
        format!(
            "Host *\n  ControlMaster auto\n  ControlPath {}/%C\n  ControlPersist 120\n",
            sockets.display()
        ),
    )
    .unwrap();
    let extra = format!(
        "timeouts.confirm = 10; sshOpts = [ \"-F\" \"{}\" ] ++ {};",
        cfg.display(),
        lab.ssh_opts_nix()
    );
    // sshOpts given twice would be a Nix error: build the entry by hand.
    let entry = format!(
        "  h = {{ hostname = \"{}\"; configuration = \"stops-sshd\"; {extra} }};\n",
        t.address
    );
    let f = flake(&lab, &[entry]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("h"), "rolled-back", "{run}");
    assert_back_on(t, &v1);
}

on_every_suite!(rollback_command_returns_to_the_previous_generation);

/// `rollback` returns a host to its previous generation, current and boot.
fn rollback_command_returns_to_the_previous_generation(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    let v2 = run.system("h");
    assert_eq!(t.boot_profile(), Some(v2.clone()));

    let back = deploy(&f, &["rollback", "--all"]);
    assert_eq!(back.code, 0, "{back}");
    assert_eq!(back.system("h"), v1);
    assert_back_on(t, &v1);
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), "healthy-v1");

    // And forward again to an explicit generation: it becomes the newest
    // generation (what every bootloader boots).
    let gen = t.ssh_ok(&format!(
        "for l in /nix/var/nix/profiles/system-*-link; do [ \"$(readlink -f $l)\" = {v2} ] && echo $l; done \
         | sed 's/.*system-\\([0-9]*\\)-link/\\1/' | sort -n | head -1"
    ));
    assert_eq!(gen, "2", "v2 is the second generation");
    let fwd = deploy(&f, &["rollback", "--all", "--to-generation", &gen]);
    assert_eq!(fwd.code, 0, "{fwd}");
    assert_eq!(t.current_system(), Some(v2.clone()));
    assert_eq!(t.boot_profile(), Some(v2.clone()));
    let newest = t.ssh_ok("ls /nix/var/nix/profiles | sed -n 's/^system-\\([0-9]*\\)-link$/\\1/p' | sort -n | tail -1");
    assert_eq!(newest, "4", "a new generation: 1 v1, 2 v2, 3 v1, 4 v2");
}

/// A failing user-declared health check (a command on the target) rolls back.
#[test]
fn failing_health_check_rolls_back() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let checks = r#"healthChecks = [ { command = [ "sh" "-c" "grep -q healthy-v1 /run/demo-web/version" ]; period = 1; timeout = 4; } ];"#;
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", checks)]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("h"), "rolled-back", "{run}");
    assert_eq!((run.phase("h").as_str(), run.reason("h").as_str()), ("confirm", "health-check"));
    assert!(run.message("h").contains("health check"), "{run}");
    assert_back_on(t, &v1);

    // A passing check lets the deploy through.
    let ok = r#"healthChecks = [ { command = [ "sh" "-c" "grep -q healthy-v2 /run/demo-web/version" ]; } ];"#;
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", ok)]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
}

/// Ctrl-C while a host is activating: no new host starts, but the one
/// activating is confirmed and finished (it never stays in between), and
/// the exit code says it succeeded.
#[test]
fn interrupt_during_activation_finishes_the_activating_host() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-activation", "timeouts.confirm = 5;")]);
    let mut bg = Background::start(&f, &["--all"]);
    bg.wait_for("activation", Duration::from_secs(120), phase_started("h", "activate"));
    bg.signal("INT");
    let run = bg.finish(Duration::from_secs(120));
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.outcome("h"), "deployed", "{run}");
    let sys = run.system("h");
    assert!(sys.contains("slow-activation"), "{sys}");
    std::thread::sleep(Duration::from_secs(5 + 2));
    assert_eq!(t.current_system(), Some(sys.clone()), "running the new system");
    assert_eq!(t.boot_profile(), Some(sys), "and booting it");
}

/// A rollback that itself fails (the previous system can no longer be
/// activated: a fault forced by hand) gets its own exit code and a loud
/// report that says what to inspect.
#[test]
fn failed_rollback_reports_unknown_state() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    // Break the previous system's activation script.
    t.ssh_ok(&format!("chmod a-x {v1}/bin/switch-to-configuration"));
    let f = flake(&lab, &[host_entry(&lab, "h", t, "failing-unit", "")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 3, "{run}");
    assert_eq!(run.outcome("h"), "unknown", "{run}");
    assert_eq!(run.reason("h"), "rollback-failed", "{run}");
    let msg = run.message("h");
    assert!(msg.contains("ROLLBACK FAILED") && msg.contains("inspect"), "{msg}");
    assert_eq!(t.boot_profile(), Some(v1), "the boot entry was never touched");
}

/// A failing HTTP health check, fetched from the deploying machine (here a
/// real server on loopback that answers 503), rolls the host back.
#[test]
fn failing_http_health_check_rolls_back() {
    use std::io::{Read, Write};
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let server = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let served = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = served.clone();
    std::thread::spawn(move || {
        for conn in server.incoming().flatten() {
            let mut conn = conn;
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf);
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let _ =
                conn.write_all(b"HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let checks = format!(
        r#"healthChecks = [ {{ http = "http://127.0.0.1:{port}/health"; period = 1; timeout = 3; }} ];"#
    );
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", &checks)]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("h"), "rolled-back", "{run}");
    assert_eq!(run.reason("h"), "health-check", "{run}");
    assert!(run.message("h").contains("HTTP 503"), "{run}");
    assert!(served.load(std::sync::atomic::Ordering::SeqCst) >= 2, "retried every period");
    assert_back_on(t, &v1);
}
