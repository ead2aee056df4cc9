//! What an operator asks before and after changing hosts: what would
//! change (`diff`, `--goal dry-activate`, `--ask`), and what each host runs
//! now (`status`), on real targets — and that asking changes nothing.

use serde_json::Value;

use crate::common::{Lab, Suite, Target};
use crate::helpers::*;

/// What a `diff` or `status` run said of each host (`{"hosts": [...]}`).
fn document(run: &Run) -> Value {
    run.looked()
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
    // A changed service is stopped before the activation and started after.
    assert_eq!(h["changes"]["units"]["stop"], serde_json::json!(["demo-web.service"]));
    assert_eq!(h["changes"]["units"]["start"], serde_json::json!(["demo-web.service"]));
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
    assert!(
        text.contains("+lab-tool 1.0")
            && text.contains("units:    stop demo-web.service; start demo-web.service"),
        "{text}"
    );
    let dry = deploy(&f, &["--all", "--goal", "dry-activate"]);
    assert_eq!(dry.code, 0, "{dry}");
    assert_eq!(
        document(&dry)["hosts"][0]["changes"]["units"]["start"],
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
    assert_eq!(t.current_system(), Some(v1.clone()));
    assert_eq!(t.boot_profile(), Some(v1));
    assert!(no_run_roots(t), "the run's GC root was dropped");
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

/// The tool under a pseudo-terminal (util-linux `script`), whose input is
/// ours to type on: for `--ask`, which asks on a terminal only.
struct OnTerminal {
    child: std::process::Child,
    out: std::sync::mpsc::Receiver<Vec<u8>>,
    seen: Vec<u8>,
}

impl OnTerminal {
    fn start(flake: &std::path::Path, args: &[&str]) -> OnTerminal {
        use std::io::Read;
        let mut argv = vec![crate::common::BIN.to_string(), "--flake".into()];
        argv.push(flake.display().to_string());
        argv.extend(args.iter().map(|a| a.to_string()));
        let quoted: Vec<String> =
            argv.iter().map(|a| shell_escape::escape(a.as_str().into()).into_owned()).collect();
        let mut child = std::process::Command::new("timeout")
            .args(["--kill-after=10", "600", "script", "-qfec", &quoted.join(" "), "/dev/null"])
            .env("NIX_CONFIG", crate::common::NIX_CONFIG)
            .env("TERM", "dumb")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("run script(1) (util-linux)");
        let mut stdout = child.stdout.take().unwrap();
        let (tx, out) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        OnTerminal { child, out, seen: Vec::new() }
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).replace('\r', "")
    }

    /// Wait until the terminal shows `what`.
    fn wait_for(&mut self, what: &str, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        while !self.text().contains(what) {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.out.recv_timeout(left) {
                Ok(chunk) => self.seen.extend(chunk),
                Err(_) => panic!("the terminal never showed {what:?}:\n{}", self.text()),
            }
        }
    }

    /// Type a line.
    fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// Its exit code and everything the terminal showed.
    fn finish(mut self) -> (i32, String) {
        drop(self.child.stdin.take());
        let status = self.child.wait().unwrap();
        while let Ok(chunk) = self.out.recv_timeout(std::time::Duration::from_secs(2)) {
            self.seen.extend(chunk);
        }
        (status.code().unwrap_or(-1), self.text())
    }
}

/// The host reports of a `--json` run shown on a terminal.
fn reports_on(text: &str) -> std::collections::BTreeMap<String, Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str::<Value>(l.trim()).ok())
        .filter(|e| e["event"] == "host-finished")
        .map(|e| (e["report"]["host"].as_str().unwrap().to_string(), e["report"].clone()))
        .collect()
}

/// What `diff` cannot find out it says it does not know, with why, never
/// "none": units for a new init (dry-activate exits 100), packages for a
/// running system that is no store path. The exit code says so, and
/// `--ask` does not ask about a change it cannot show whole.
#[test]
fn diff_says_what_it_does_not_know_and_ask_does_not_ask_about_it() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "new-init", "")]);
    let run = deploy(&f, &["diff", "--all"]);
    eprintln!("{run}");
    assert_eq!(run.code, 1, "{run}");
    let h = &document(&run)["hosts"][0];
    let why = h["changes"]["unknown"]["units"].as_str().unwrap_or_default();
    assert!(why.starts_with("switch-to-configuration dry-activate exited with 100: "), "{h}");
    assert!(why.contains("won't take effect until you reboot"), "{why}");
    let mut human = std::process::Command::new(crate::common::BIN);
    human.args(["diff", "--all", "--flake"]).arg(&f).env("NIX_CONFIG", crate::common::NIX_CONFIG);
    let text = String::from_utf8_lossy(&crate::common::run(&mut human).stdout).into_owned();
    eprintln!("{text}");
    assert!(
        text.contains("  units:    unknown: switch-to-configuration dry-activate exited with 100"),
        "{text}"
    );
    assert!(!text.contains("none"), "{text}");

    let ask = OnTerminal::start(&f, &["--all", "--ask"]);
    let (code, shown) = ask.finish();
    eprintln!("{shown}");
    assert_eq!(code, 1, "{shown}");
    assert!(
        shown.contains("not asking: what would change is not known on h (units: unknown"),
        "{shown}"
    );
    assert!(!shown.contains("[y/N]"), "{shown}");
    assert_eq!(t.current_system(), Some(v1.clone()), "nothing deployed");
    assert_eq!(t.boot_profile(), Some(v1.clone()));

    // A running system that is no store path (linked by hand): the
    // package changes cannot be known either.
    t.ssh_ok(&format!(
        "mkdir -p /tmp/own && cp -r {v1}/. /tmp/own/ && ln -sfn /tmp/own /run/current-system"
    ));
    let f2 = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f2, &["diff", "--all"]);
    t.ssh_ok(&format!("ln -sfn {v1} /run/current-system"));
    assert_eq!(run.code, 1, "{run}");
    let h = &document(&run)["hosts"][0];
    let why = h["changes"]["unknown"]["packages"].as_str().unwrap_or_default();
    assert!(why.starts_with("nix store diff-closures exited with 1: "), "{h}");
    assert_eq!(h["changes"]["packages"], serde_json::json!([]), "{h}");
    assert_eq!(t.current_system(), Some(v1.clone()));
    assert_eq!(t.boot_profile(), Some(v1));
}

/// `rollback --ask` shows the rollback's own change (what runs -> the
/// generation it returns to) and, approved, deploys it.
#[test]
fn rollback_ask_shows_the_rollback_and_deploys_it() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let v2 = baseline(&lab, "h", t, "healthy-v2");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f, &["rollback", "--all", "--ask", "--yes"]);
    eprintln!("{run}");
    assert_eq!(run.code, 0, "{run}");
    assert!(
        run.stderr.contains("h: nixos-system-healthy-v2-2 -> nixos-system-healthy-v1-1"),
        "the rollback's own change was shown: {run}"
    );
    assert_eq!((run.outcome("h"), run.system("h")), ("deployed".into(), v1.clone()));
    assert_eq!(t.current_system(), Some(v1.clone()));
    assert_eq!(t.boot_profile(), Some(v1));
    let _ = v2;
}

/// `--ask` approves each host's change as shown: a host whose running
/// system changed between the showing and the answer is not touched.
#[test]
fn ask_leaves_a_host_whose_running_system_changed_since_it_was_shown() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let source = t.archive(&f, &lab.nix_sshopts());
    let other = t.build(&source, "healthy-v2-with-tool");
    let mut ask = OnTerminal::start(&f, &["--all", "--ask", "--json"]);
    ask.wait_for("[y/N]", std::time::Duration::from_secs(180));
    assert!(t.switch(&other, "test").status.success(), "an admin switches the host meanwhile");
    ask.type_line("y");
    let (code, shown) = ask.finish();
    eprintln!("{shown}");
    let report = &reports_on(&shown)["h"];
    assert_eq!(code, 1, "{shown}");
    assert_eq!(
        (report["outcome"].as_str(), report["reason"].as_str()),
        (Some("failed"), Some("not-approved"))
    );
    let msg = report["message"].as_str().unwrap();
    assert!(msg.contains("when its changes were shown and runs") && msg.contains(&other), "{msg}");
    assert_eq!(report["system"].as_str(), Some(other.as_str()), "the report says what it runs");
    assert_eq!(t.current_system(), Some(other), "left as the admin made it");
    assert_eq!(t.boot_profile(), Some(v1), "and booting what it did");
}
