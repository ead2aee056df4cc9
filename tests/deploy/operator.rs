//! What an operator asks before and after changing hosts: what would
//! change (`diff`, `--goal dry-activate`, `--ask`), and what each host runs
//! now (`status`), on real targets — and that asking changes nothing.

use serde_json::Value;

use crate::common::{Lab, Suite, Target};
use crate::helpers::*;

/// The JSON document a `diff` or `status` run printed.
fn document(run: &Run) -> Value {
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {run}"))
}

/// No GC root of a run is left on the target.
fn no_run_roots(t: &Target) -> bool {
    t.ssh_ok("ls /run/deploy-flake/runs/*/toplevel 2>/dev/null | wc -l") == "0"
}

on_every_suite!(
    diff_names_the_package_and_the_unit_and_changes_nothing,
    status_shows_what_hosts_run_and_flags_drift,
);

/// A change that adds a package and changes a unit: `diff` names both,
/// and the host runs and boots what it did, its service untouched.
fn diff_names_the_package_and_the_unit_and_changes_nothing(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    t.reboot();
    let unit = invocation(t, "demo-web.service");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2-with-tool", "")]);
    let run = deploy(&f, &["diff", "--all"]);
    assert_eq!(run.code, 0, "{run}");
    let h = &document(&run)["hosts"][0];
    assert_eq!(h["host"], "h");
    assert_eq!(h["current"], v1.as_str());
    assert_eq!(h["up_to_date"], false);
    let packages = &h["changes"]["packages"];
    assert!(
        packages
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["name"] == "lab-tool" && p["old"].is_null() && p["new"] == "1.0"),
        "{packages}"
    );
    assert_eq!(h["changes"]["units"]["restart"], serde_json::json!(["demo-web.service"]));
    assert_eq!(h["changes"]["needs_reboot"], serde_json::json!([]));
    assert_eq!(t.current_system(), Some(v1.clone()), "nothing activated");
    assert_eq!(t.boot_profile(), Some(v1.clone()));
    assert_eq!(invocation(t, "demo-web.service"), unit, "demo-web untouched");
    assert!(no_run_roots(t), "the run's GC root was dropped");

    // The same, in words, for a person; and as --goal dry-activate.
    let mut human = std::process::Command::new(crate::common::BIN);
    human.args(["diff", "--all", "--flake"]).arg(&f).env("NIX_CONFIG", crate::common::NIX_CONFIG);
    let text = crate::common::run_ok(&mut human);
    assert!(
        text.contains("h: nixos-system-healthy-v1-1 -> nixos-system-healthy-v2-with-tool-17"),
        "{text}"
    );
    assert!(text.contains("+lab-tool 1.0") && text.contains("restart demo-web.service"), "{text}");
    let dry = deploy(&f, &["--all", "--goal", "dry-activate"]);
    assert_eq!(dry.code, 0, "{dry}");
    assert_eq!(
        document(&dry)["hosts"][0]["changes"]["units"]["restart"],
        serde_json::json!(["demo-web.service"])
    );
    assert_eq!(t.current_system(), Some(v1), "still nothing activated");
}

/// A host already running the system: `diff` says so.
#[test]
fn diff_of_a_host_running_the_system_says_up_to_date() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v1", "")]);
    let run = deploy(&f, &["diff", "--all"]);
    assert_eq!(run.code, 0, "{run}");
    let h = &document(&run)["hosts"][0];
    assert_eq!((h["up_to_date"].as_bool(), h["new"].as_str()), (Some(true), Some(v1.as_str())));
}

/// `status` says what each host runs and boots and its last deploy; after
/// a manual `switch-to-configuration test` it flags the drift; a host that
/// does not answer is named, and the exit code says so.
fn status_shows_what_hosts_run_and_flags_drift(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let ghost = format!(
        "  ghost = {{ hostname = \"10.77.{}.3\"; configuration = \"healthy-v1\"; sshOpts = {}; timeouts.connect = 2; }};\n",
        t.idx,
        lab.ssh_opts_nix()
    );
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v1", ""), ghost]);
    let run = deploy(&f, &["status", "h"]);
    assert_eq!(run.code, 0, "{run}");
    let h = &document(&run)["hosts"][0];
    assert_eq!(h["state"]["current"], v1.as_str());
    assert_eq!(h["state"]["profile"], v1.as_str());
    assert_eq!(h["state"]["last"]["outcome"], "deployed");
    assert_eq!(h["state"]["last"]["system"], v1.as_str());
    assert_eq!(h["drift"], serde_json::json!([]));

    let source = t.archive(&f, &lab.nix_sshopts());
    let v2 = t.build(&source, "healthy-v2");
    assert!(t.switch(&v2, "test").status.success());
    let run = deploy(&f, &["status", "--all"]);
    assert_eq!(run.code, 1, "the ghost does not answer: {run}");
    let doc = document(&run);
    let h = doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == "h").unwrap();
    assert_eq!(h["state"]["current"], v2.as_str());
    let drift: Vec<&str> =
        h["drift"].as_array().unwrap().iter().map(|d| d.as_str().unwrap()).collect();
    assert!(drift.iter().any(|d| d.contains("but boots nixos-system-healthy-v1-1")), "{drift:?}");
    assert!(drift.iter().any(|d| d.contains("not what run")), "{drift:?}");
    let ghost = doc["hosts"].as_array().unwrap().iter().find(|h| h["host"] == "ghost").unwrap();
    assert!(ghost["error"].as_str().unwrap().contains("10.77"), "{ghost}");
    assert_eq!(t.current_system(), Some(v2), "status changed nothing");
}

/// --ask without a terminal refuses before touching anything; with --yes
/// it shows the changes and deploys exactly them.
#[test]
fn ask_refuses_without_a_terminal_and_yes_deploys_what_was_shown() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2-with-tool", "")]);
    let runs = || t.ssh_ok("ls /run/deploy-flake/runs | wc -l");
    let before = runs();
    let run = deploy(&f, &["--all", "--ask"]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("--ask needs a terminal") && run.stderr.contains("--yes"), "{run}");
    assert_eq!(t.current_system(), Some(v1.clone()));
    assert_eq!(runs(), before, "no run reached the host");

    let run = deploy(&f, &["--all", "--ask", "--yes"]);
    assert_eq!(run.code, 0, "{run}");
    assert!(run.stderr.contains("+lab-tool 1.0"), "the changes were shown: {run}");
    let sys = run.system("h");
    assert!(sys.contains("healthy-v2-with-tool"));
    assert_eq!(t.current_system(), Some(sys.clone()));
    assert_eq!(t.boot_profile(), Some(sys));
}
