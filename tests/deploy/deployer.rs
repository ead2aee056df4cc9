//! Deploying from a machine on current Nix and OpenSSH: the same binary run
//! in a Debian sid container (Nix 2.34, OpenSSH 10.6) that shares the lab's
//! network (`lab.sh deployer`), against targets of every suite (Nix 2.8,
//! 2.26 and 2.34 daemons; OpenSSH 9.2, 10.0 and 10.6 servers).

use serde_json::Value;

use crate::common::{Deployer, Lab, Suite, Target};
use crate::helpers::*;

const SID: Deployer = Deployer::On(Suite::Sid);

/// `deploy_on` the sid deployer.
fn from_sid(lab: &Lab, flake: &std::path::Path, args: &[&str]) -> Run {
    deploy_on(SID, lab, flake, args)
}

/// One host per target, each `h<i>`, all deploying `configuration`.
fn hosts(lab: &Lab, configuration: &str, extra: &str) -> std::path::PathBuf {
    let entries: Vec<String> = lab
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| host_entry(lab, &format!("h{i}"), t, configuration, extra))
        .collect();
    flake(lab, &entries)
}

fn assert_runs_and_boots(t: &Target, sys: &str, version: &str) {
    assert_eq!(t.current_system().as_deref(), Some(sys), "{}", t.name);
    assert_eq!(t.boot_profile().as_deref(), Some(sys), "{}", t.name);
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), version, "{}", t.name);
}

/// What a `diff` or `status` run said of each host (`{"hosts": [...]}`).
fn document(run: &Run) -> Value {
    run.looked()
}

/// A change, confirmed over a fresh login, on a target of every suite.
#[test]
fn a_change_from_a_sid_deployer_is_confirmed_on_every_suite() {
    let lab = Lab::boot_suites(&Suite::ALL);
    let nix = SID.nix_version(lab.dir());
    assert!(nix.starts_with(Suite::Sid.nix_version_prefix()), "the deployer runs {nix}");
    let first = from_sid(&lab, &hosts(&lab, "healthy-v1", ""), &["--all"]);
    assert_eq!(first.code, 0, "{first}");
    let run = from_sid(&lab, &hosts(&lab, "healthy-v2", ""), &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    for (i, t) in lab.targets.iter().enumerate() {
        let h = format!("h{i}");
        assert_eq!(run.outcome(&h), "deployed", "{} ({:?}): {run}", t.name, t.suite);
        assert!(run.lines(&h).iter().any(|l| l.contains("deploy-flake: confirmed")), "{run}");
        assert_runs_and_boots(t, &run.system(&h), "healthy-v2");
    }
    assert!(!run.stderr.contains("warning:"), "Nix warned:\n{}", run.stderr);
}

/// A unit that fails during `test`: rolled back, the boot entry untouched.
#[test]
fn a_failing_unit_from_a_sid_deployer_is_rolled_back() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let first = from_sid(&lab, &hosts(&lab, "healthy-v1", ""), &["--all"]);
    assert_eq!(first.code, 0, "{first}");
    let v1 = first.system("h0");
    let run = from_sid(&lab, &hosts(&lab, "failing-unit", ""), &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("h0"), "rolled-back", "{run}");
    assert_eq!(run.reason("h0"), "activation-failed", "{run}");
    assert_eq!(run.system("h0"), v1);
    assert_runs_and_boots(t, &v1, "healthy-v1");
    assert_eq!(t.system_state(), "running");
}

/// `buildOn = "local"`: built in the sid deployer's own store, copied with
/// its Nix 2.34 (`nix copy` over ssh-ng, OpenSSH 10.6) to a Nix 2.8, 2.26
/// and 2.34 daemon: the same store path a build on the target makes.
#[test]
fn a_local_build_on_a_sid_deployer_is_copied_to_every_suite() {
    let lab = Lab::boot_suites(&Suite::ALL);
    let run = from_sid(&lab, &hosts(&lab, "healthy-v2", r#"buildOn = "local";"#), &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    let sys = run.system("h0");
    for (i, t) in lab.targets.iter().enumerate() {
        assert_eq!(run.system(&format!("h{i}")), sys, "one build, one path");
        assert_runs_and_boots(t, &sys, "healthy-v2");
        // Built there: the target never saw the flake's source.
        assert_eq!(t.ssh_ok("ls -d /nix/store/*-source 2>/dev/null | wc -l"), "0", "{}", t.name);
    }
    let built_there = from_sid(&lab, &hosts(&lab, "healthy-v2", ""), &["--all", "--force"]);
    assert_eq!(built_there.code, 0, "{built_there}");
    assert_eq!(built_there.system("h0"), sys, "the target's own build is the same path");
}

/// `diff` names the change and changes nothing; `status` says what the
/// host runs and who deployed it.
#[test]
fn diff_and_status_from_a_sid_deployer() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let first = from_sid(&lab, &hosts(&lab, "healthy-v1", ""), &["--all"]);
    assert_eq!(first.code, 0, "{first}");
    let v1 = first.system("h0");
    let run = from_sid(&lab, &hosts(&lab, "healthy-v2-with-tool", ""), &["diff", "--all"]);
    assert_eq!(run.code, 0, "{run}");
    let h = &document(&run)["hosts"][0];
    assert_eq!(
        (h["current"].as_str(), h["up_to_date"].as_bool()),
        (Some(v1.as_str()), Some(false))
    );
    let packages = h["changes"]["packages"].as_array().unwrap();
    assert!(packages.iter().any(|p| p["name"] == "lab-tool" && p["new"] == "1.0"), "{run}");
    // A changed service is stopped before the activation and started after.
    let units = &h["changes"]["units"];
    assert_eq!(units["stop"], serde_json::json!(["demo-web.service"]), "{run}");
    assert_eq!(units["start"], serde_json::json!(["demo-web.service"]), "{run}");
    assert_runs_and_boots(t, &v1, "healthy-v1");

    let status = from_sid(&lab, &hosts(&lab, "healthy-v1", ""), &["status", "--all"]);
    assert_eq!(status.code, 0, "{status}");
    let h = &document(&status)["hosts"][0];
    assert_eq!(h["state"]["current"], v1.as_str());
    assert_eq!(h["state"]["profile"], v1.as_str());
    assert_eq!(h["state"]["last"]["outcome"], "deployed");
    assert_eq!(h["drift"], serde_json::json!([]));
}

/// `rollback` returns to the previous generation; `--dry-run` shows the
/// plan and touches nothing.
#[test]
fn rollback_and_dry_run_from_a_sid_deployer() {
    let lab = Lab::boot(1, Suite::Sid);
    let t = &lab.targets[0];
    let v1 = from_sid(&lab, &hosts(&lab, "healthy-v1", ""), &["--all"]).system("h0");
    let f = hosts(&lab, "healthy-v2", "");
    let run = from_sid(&lab, &f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    let v2 = run.system("h0");
    assert_runs_and_boots(t, &v2, "healthy-v2");

    let back = from_sid(&lab, &f, &["rollback", "--all"]);
    assert_eq!(back.code, 0, "{back}");
    assert_eq!(back.system("h0"), v1);
    assert_runs_and_boots(t, &v1, "healthy-v1");

    let dry = from_sid(&lab, &f, &["--dry-run", "--all"]);
    assert_eq!(dry.code, 0, "{dry}");
    assert!(dry.stdout.contains("h0") && dry.stdout.contains(&t.address), "{dry}");
    assert_runs_and_boots(t, &v1, "healthy-v1");
}

/// What Nix warns about reaches the user, from the deploying machine's Nix
/// and from the target's, also for the commands whose output is data (an
/// unknown setting makes every Nix command warn).
#[test]
fn nix_warnings_reach_the_user_from_both_ends() {
    let lab = Lab::boot(1, Suite::Sid);
    let t = &lab.targets[0];
    t.ssh_ok("echo 'lab-target-setting = 1' >> /etc/nix/nix.conf");
    let f = hosts(&lab, "healthy-v1", "");
    let config = format!("{}\nlab-deployer-setting = 1", crate::common::NIX_CONFIG);
    let args = crate::helpers::tool_args(&f, &["--all"]);
    let out = SID.tool(lab.dir(), &args, &[("NIX_CONFIG", config)]).output().unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let said = |cmd: &str, place: &str, setting: &str| {
        stderr.lines().any(|l| {
            l.contains(cmd)
                && l.contains(place)
                && l.contains(&format!("unknown setting '{setting}'"))
        })
    };
    // Plain lines: stderr is no terminal here.
    assert!(!stderr.contains('\u{1b}'), "{stderr}");
    // The run's own commands, here, whose answers are data.
    assert!(said("nix eval", "deployFlake", "lab-deployer-setting"), "{stderr}");
    assert!(said("flake metadata", "(here)", "lab-deployer-setting"), "{stderr}");
    assert!(said("nix-store --export", "(here)", "lab-deployer-setting"), "{stderr}");
    // The host's, on the target.
    assert!(said("nix-store --check-validity", "(on h0)", "lab-target-setting"), "{stderr}");
    // The archive's (`nix flake archive`, then `nix path-info`) and the
    // build's are the host's output lines.
    let output = |setting: &str| {
        let needle = format!("unknown setting '{setting}'");
        stdout.lines().filter(|l| l.contains(r#""event":"output""#) && l.contains(&needle)).count()
    };
    assert_eq!(output("lab-deployer-setting"), 2, "{stdout}");
    assert!(output("lab-target-setting") >= 1, "{stdout}");
}
