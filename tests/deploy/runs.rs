//! The agent's state in `/run` (memory) stays bounded and is checked: old
//! run directories go, a run's log is capped, and a host whose `/run` has
//! no room for a run is refused before anything is written.

use std::time::Duration;

use crate::common::{Lab, Suite, Target};
use crate::helpers::*;

/// What the agent keeps (`RUNS_KEPT`, `LOG_CAP` in src/agent/sh/00-head.sh).
const RUNS_KEPT: usize = 5;
const LOG_CAP: u64 = 1 << 20;

fn assert_on(t: &Target, sys: &str) {
    assert_eq!(t.current_system().as_deref(), Some(sys), "{}: runs", t.name);
    assert_eq!(t.boot_profile().as_deref(), Some(sys), "{}: boots", t.name);
}

/// The run directories on the host, oldest first.
fn runs(t: &Target) -> Vec<String> {
    let out = t.ssh_ok("ls /run/deploy-flake/runs");
    out.lines().map(String::from).collect()
}

/// Twenty deploys that each print thousands of lines leave the newest few
/// run directories, and of those only the newest keeps its log.
#[test]
fn twenty_chatty_deploys_leave_the_newest_few_runs() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "chatty-activation", "")]);
    let mut last = String::new();
    for i in 0..20 {
        let run = deploy(&f, &["--all", "--force"]);
        assert_eq!((i, run.code, run.outcome("h")), (i, 0, "deployed".into()), "{run}");
        last = events(&run.stdout)[0]["run_id"].as_str().unwrap().to_string();
    }
    let left = runs(t);
    eprintln!("run directories left: {}", left.len());
    assert!(left.len() <= RUNS_KEPT, "{} run directories: {left:?}", left.len());
    assert_eq!(left.last(), Some(&last), "the newest run is kept");
    let logs = t.ssh_ok("ls /run/deploy-flake/runs/*/log");
    assert_eq!(logs, format!("/run/deploy-flake/runs/{last}/log"), "only the newest log");
    let sys = t.current_system().unwrap();
    assert!(sys.contains("chatty-activation"), "{sys}");
    assert_on(t, &sys);
}

/// An activation that prints 2 MB: its log on the host stops at the cap,
/// and says so; the activation itself is not held up or broken by it.
#[test]
fn an_activation_that_floods_its_log_is_capped() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "flooding-activation", "")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!((run.code, run.outcome("h")), (0, "deployed".into()), "{}", run.code);
    let sys = run.system("h");
    assert_on(t, &sys);
    let id = events(&run.stdout)[0]["run_id"].as_str().unwrap().to_string();
    let log = format!("/run/deploy-flake/runs/{id}/log");
    let size: u64 = t.ssh_ok(&format!("wc -c < {log}")).parse().unwrap();
    eprintln!("log of a 2 MB activation: {size} bytes");
    assert!(size <= LOG_CAP + 4096, "{size} bytes");
    let capped =
        "deploy-flake: the log is capped at 1048576 bytes; the rest of this output is dropped";
    assert!(t.ssh_ok(&format!("grep -c 'the log is capped' {log}")) == "1");
    assert!(run.lines("h").iter().any(|l| l == capped), "the deployer was told");
}

/// A host whose /run is full: refused at preflight, with what to free, and
/// nothing written or changed; once there is room, it deploys.
#[test]
fn a_host_with_a_full_run_is_refused_at_preflight_unchanged() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let before = runs(t);
    t.ssh_ok(
        "free=$(df -Pk /run | awk 'NR == 2 {print $4}'); fallocate -l $((free - 8))K /run/lab-fill",
    );
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f, &["--all"]);
    eprintln!("{run}");
    t.ssh_ok("rm -f /run/lab-fill");
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(
        (run.outcome("h").as_str(), run.phase("h").as_str(), run.reason("h").as_str()),
        ("failed", "preflight", "preflight"),
        "{run}"
    );
    let msg = run.message("h");
    assert!(msg.contains("/run has") && msg.contains("KiB free"), "{msg}");
    assert_on(t, &v1);
    assert_eq!(runs(t), before, "no run directory was made");

    let run = deploy(&f, &["--all"]);
    assert_eq!((run.code, run.outcome("h")), (0, "deployed".into()), "{run}");
}

/// The agent can no longer record its state (its run's directory turned
/// read-only under it, as a full /run would refuse the write): it stops at
/// once, returning to the previous system first, and the deployer reports
/// what the agent said, not "stopped or killed".
#[test]
fn an_agent_that_cannot_record_its_state_says_so_and_goes_back() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-activation", "timeouts.activate = 20;")]);
    let before = runs(t);
    let bg = Background::start(&f, &["--all"]);
    // Watched on the host itself: the deployer's output may come later.
    let newest = || t.ssh_ok("ls -d /run/deploy-flake/runs/* | tail -n 1");
    eventually("the activation", Duration::from_secs(120), || {
        !before.iter().any(|r| newest().ends_with(r.as_str()))
            && t.ssh_ok(&format!("grep -c 'slow activation: started' {}/log || true", newest()))
                == "1"
    });
    let dir = newest();
    t.ssh_ok(&format!("mount --bind {dir} {dir} && mount -o remount,bind,ro {dir}"));
    let run = bg.finish(Duration::from_secs(180));
    t.ssh_ok(&format!("umount {dir}"));
    assert_eq!(run.code, 3, "{run}");
    assert_eq!((run.outcome("h").as_str(), run.reason("h").as_str()), ("unknown", "lost"));
    let msg = run.message("h");
    assert!(msg.contains("could not record the state 'awaiting-confirmation'"), "{msg}");
    assert!(msg.contains("rolled-back not-confirmed"), "{msg}");
    assert_eq!(run.system("h"), v1, "{run}");
    assert_on(t, &v1);
}
