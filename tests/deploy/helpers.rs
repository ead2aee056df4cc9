//! Running the deploy-flake binary against lab targets and reading what it
//! reported (its `--json` stream).

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Deployer, Lab, Target, BIN, NIX_CONFIG};

/// What one run of the tool said and did.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Run {
    /// The `host-finished` reports, by host.
    pub fn reports(&self) -> BTreeMap<String, Value> {
        events(&self.stdout)
            .into_iter()
            .filter(|e| e["event"] == "host-finished")
            .map(|e| (e["report"]["host"].as_str().unwrap().to_string(), e["report"].clone()))
            .collect()
    }

    pub fn report(&self, host: &str) -> Value {
        self.reports().remove(host).unwrap_or_else(|| panic!("no report for {host}:\n{self}"))
    }

    pub fn outcome(&self, host: &str) -> String {
        self.report(host)["outcome"].as_str().unwrap().to_string()
    }

    /// The machine-readable reason of a host that did not succeed.
    pub fn reason(&self, host: &str) -> String {
        self.report(host)["reason"].as_str().unwrap_or("").to_string()
    }

    /// The last phase the host started.
    pub fn phase(&self, host: &str) -> String {
        self.report(host)["phase"].as_str().unwrap_or("").to_string()
    }

    pub fn message(&self, host: &str) -> String {
        self.report(host)["message"].as_str().unwrap_or("").to_string()
    }

    /// The system the host ended on, as reported.
    pub fn system(&self, host: &str) -> String {
        self.report(host)["system"]
            .as_str()
            .unwrap_or_else(|| panic!("no system for {host}:\n{self}"))
            .to_string()
    }

    /// Every note the tool made about `host`.
    pub fn notes(&self, host: &str) -> Vec<String> {
        events(&self.stdout)
            .into_iter()
            .filter(|e| e["event"] == "note" && e["host"] == host)
            .map(|e| e["text"].as_str().unwrap().to_string())
            .collect()
    }

    /// What `status --json` or `diff --json` said of each host (the
    /// `status` of each `host-status` event, the `diff` of each
    /// `host-diff`), in target order, as `{"hosts": [...]}`; the stream is
    /// checked to be a run's: started first, then one answer per host,
    /// finished last with the process's exit code.
    pub fn looked(&self) -> Value {
        let all = events(&self.stdout);
        let lines = self.stdout.lines().filter(|l| !l.trim().is_empty()).count();
        assert_eq!(lines, all.len(), "every line is one JSON object:\n{self}");
        assert_eq!(all.first().map(|e| &e["event"]), Some(&Value::from("run-started")), "{self}");
        let last = all.last().unwrap();
        assert_eq!(last["event"], "run-finished", "{self}");
        assert_eq!(last["exit_code"], self.code, "{self}");
        let names: Vec<&Value> = all[0]["hosts"].as_array().unwrap().iter().collect();
        let mut hosts = Vec::new();
        for name in names {
            let answer = all.iter().find_map(|e| match e["event"].as_str() {
                Some("host-status") if &e["host"] == name => Some(e["status"].clone()),
                Some("host-diff") if &e["host"] == name => Some(e["diff"].clone()),
                _ => None,
            });
            hosts.push(answer.unwrap_or_else(|| panic!("no answer of {name}:\n{self}")));
        }
        serde_json::json!({ "hosts": hosts })
    }

    /// Every output line the tool tagged with `host`.
    pub fn lines(&self, host: &str) -> Vec<String> {
        events(&self.stdout)
            .into_iter()
            .filter(|e| e["event"] == "output" && e["host"] == host)
            .map(|e| e["line"].as_str().unwrap().to_string())
            .collect()
    }
}

impl std::fmt::Display for Run {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {} after {:?}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.elapsed, self.stdout, self.stderr
        )
    }
}

pub fn events(stdout: &str) -> Vec<Value> {
    stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

/// `deploy-flake --json --flake FLAKE ARGS...`, to completion.
pub fn deploy<F: AsRef<OsStr> + ?Sized>(flake: &F, args: &[&str]) -> Run {
    let started = Instant::now();
    let out: Output = command(flake, args).output().expect("run deploy-flake");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// A subcommand (`rollback`, `status`, `diff`) comes first, the run's
/// options after it.
pub fn command<F: AsRef<OsStr> + ?Sized>(flake: &F, args: &[&str]) -> Command {
    let mut c = Command::new("timeout");
    c.args(["--kill-after=10", "600", BIN]).args(tool_args(flake, args));
    c.env("NIX_CONFIG", NIX_CONFIG);
    c
}

/// `[SUBCOMMAND] --json --flake FLAKE ARGS...`
pub fn tool_args<F: AsRef<OsStr> + ?Sized>(flake: &F, args: &[&str]) -> Vec<std::ffi::OsString> {
    let (sub, args) = match args.first() {
        Some(&sub @ ("rollback" | "status" | "diff" | "keys")) => (Some(sub), &args[1..]),
        _ => (None, args),
    };
    let mut argv: Vec<std::ffi::OsString> = sub.into_iter().map(Into::into).collect();
    argv.extend(["--json".into(), "--flake".into(), flake.as_ref().to_owned()]);
    argv.extend(args.iter().map(Into::into));
    argv
}

/// `deploy`, on another deploying machine (see `Deployer`).
pub fn deploy_on<F: AsRef<OsStr> + ?Sized>(
    deployer: Deployer,
    lab: &Lab,
    flake: &F,
    args: &[&str],
) -> Run {
    let started = Instant::now();
    let out = deployer.tool(lab.dir(), &tool_args(flake, args), &[]).output().expect("run it");
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// A run in the background whose stdout lines can be waited for.
pub struct Background {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    pub seen: Vec<String>,
}

impl Background {
    pub fn start<F: AsRef<OsStr> + ?Sized>(flake: &F, args: &[&str]) -> Background {
        Background::start_with(flake, args, &[])
    }

    /// The same, with `env` added to its environment.
    pub fn start_with<F: AsRef<OsStr> + ?Sized>(
        flake: &F,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Background {
        let mut c = Command::new(BIN);
        c.args(["--json", "--flake"])
            .arg(flake)
            .args(args)
            .env("NIX_CONFIG", NIX_CONFIG)
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = c.spawn().expect("start deploy-flake");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Background { child, lines: rx, seen: Vec::new() }
    }

    /// Wait until an event satisfies `pred`; panics after `limit`.
    pub fn wait_for(&mut self, what: &str, limit: Duration, pred: impl Fn(&Value) -> bool) {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => {
                    let hit = serde_json::from_str::<Value>(&l).map(|v| pred(&v)).unwrap_or(false);
                    self.seen.push(l);
                    if hit {
                        return;
                    }
                }
                Err(_) => panic!("deploy-flake never reached: {what}\n{}", self.seen.join("\n")),
            }
        }
    }

    /// Send a signal to the deployer process.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Wait for the process to exit and collect the rest of its output.
    pub fn finish(mut self, limit: Duration) -> Run {
        let started = Instant::now();
        let deadline = started + limit;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
                    self.seen.push(l);
                }
                return Run {
                    code: status.code().unwrap_or(-1),
                    stdout: self.seen.join("\n"),
                    stderr: String::new(),
                    elapsed: started.elapsed(),
                };
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                // Everything it printed, up to the kill: not only what was
                // waited for before.
                while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(500)) {
                    self.seen.push(l);
                }
                panic!("deploy-flake did not exit within {limit:?}\n{}", self.seen.join("\n"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// `phase-started` of `phase` for `host`.
pub fn phase_started(host: &'static str, phase: &'static str) -> impl Fn(&Value) -> bool {
    move |v: &Value| v["event"] == "phase-started" && v["host"] == host && v["phase"] == phase
}

/// How long `host`'s `phase` took, as the run reported it.
pub fn phase_took(run: &Run, host: &str, phase: &str) -> Option<Duration> {
    events(&run.stdout).into_iter().find_map(|e| {
        let hit = e["event"] == "phase-finished" && e["host"] == host && e["phase"] == phase;
        hit.then(|| Duration::from_millis(e["duration"].as_u64().unwrap()))
    })
}

/// The lab configuration a system store path was built from
/// (`/nix/store/…-nixos-system-<configuration>-<version>`).
pub fn configuration_of(system: &str) -> Option<&str> {
    let (_, name) = system.split_once("-nixos-system-")?;
    name.rsplit_once('-').map(|(configuration, _)| configuration)
}

/// `t` runs and boots a system of `configuration`: for runs whose report
/// is a screen, not `--json` with the system's store path.
pub fn assert_on_configuration(t: &Target, configuration: &str) {
    let runs = t.current_system();
    assert_eq!(
        runs.as_deref().and_then(configuration_of),
        Some(configuration),
        "{}: runs {runs:?}",
        t.name
    );
    assert_eq!(t.boot_profile(), runs, "{}: boots what it runs", t.name);
}

/// `t` was never activated: no system runs, none is its boot entry.
pub fn assert_never_activated(t: &Target) {
    assert_eq!(t.current_system(), None, "{}: runs a system", t.name);
    assert_eq!(t.boot_profile(), None, "{}: has a boot entry", t.name);
}

/// A host entry for hosts.nix reaching `t` with the lab's key; `extra` is
/// spliced in verbatim (Nix attribute syntax).
pub fn host_entry(lab: &Lab, attr: &str, t: &Target, configuration: &str, extra: &str) -> String {
    format!(
        "  {} = {{ hostname = {}; configuration = {}; sshOpts = {}; {extra} }};\n",
        crate::common::nix_string(attr),
        crate::common::nix_string(&t.address),
        crate::common::nix_string(configuration),
        lab.ssh_opts_nix()
    )
}

/// A fixture flake whose hosts.nix holds `entries` (from `host_entry`).
pub fn flake(lab: &Lab, entries: &[String]) -> std::path::PathBuf {
    lab.fixture_flake_raw(&format!("{{\n{}}}\n", entries.concat()))
}

/// Deploy `configuration` to `t` as the starting state of a scenario and
/// return its toplevel (through the tool itself: the happy path is tested
/// elsewhere, so a failure here is reported as a broken precondition).
pub fn baseline(lab: &Lab, attr: &str, t: &Target, configuration: &str) -> String {
    let f = flake(lab, &[host_entry(lab, attr, t, configuration, "")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "baseline deploy of {configuration} failed:\n{run}");
    let sys = run.system(attr);
    assert_eq!(t.current_system().as_deref(), Some(sys.as_str()));
    sys
}

/// `systemctl show -p InvocationID --value UNIT`: changes on every (re)start.
pub fn invocation(t: &Target, unit: &str) -> String {
    t.ssh_ok(&format!("systemctl show -p InvocationID --value {unit}"))
}

/// Poll `f` until it is true or `limit` passes; returns the time it took.
pub fn eventually(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !f() {
        assert!(started.elapsed() < limit, "not within {limit:?}: {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
    started.elapsed()
}

/// The local port and pid of this machine's ssh master to `addr`:22.
pub fn master_to(addr: &str) -> (u16, u32) {
    let out = Command::new("ss").args(["-tnpH", "dst", &format!("{addr}:22")]).output().unwrap();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        let local = line.split_whitespace().nth(3).unwrap_or("");
        let port = local.rsplit(':').next().and_then(|p| p.parse().ok());
        let pid = line
            .split("pid=")
            .nth(1)
            .and_then(|s| s.split(',').next())
            .and_then(|p| p.parse().ok());
        if let (Some(port), Some(pid)) = (port, pid) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("deploy-flake-ssh.") {
                return (port, pid);
            }
        }
    }
    panic!("no deploy-flake ssh master to {addr}: {}", String::from_utf8_lossy(&out.stdout));
}

/// Drop every packet of the TCP flow from local port `port` in the
/// target's network namespace: that connection hangs, new ones pass.
pub fn blackhole(t: &Target, port: u16) {
    let nft = format!(
        "table inet partition {{ chain input {{ type filter hook input priority 0; tcp sport {port} drop; }}; \
         chain output {{ type filter hook output priority 0; tcp dport {port} drop; }}; }}"
    );
    let ok = Command::new("ip")
        .args(["netns", "exec", &t.name, "nft", &nft])
        .status()
        .unwrap()
        .success();
    assert!(ok, "nft rule in {}", t.name);
}
