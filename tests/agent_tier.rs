//! The agent tier: the on-target agent (the files of src/agent/sh/, joined
//! into one text) checked and run in seconds, without root, containers or
//! systemd. shellcheck and the parsers of dash and bash read each file and
//! the joined text; then a copy of that text runs under dash in a
//! temporary directory, with stand-ins on its PATH (`systemctl`, `nix-env`,
//! each system's `bin/switch-to-configuration`) and its state, records,
//! system profile, `/run/current-system` and cgroup slice pointing into
//! that directory. The copy differs from the agent in just those lines
//! (each replaced exactly once, or the test fails), so every exit-code
//! branch of the activation, the rollback and the log reader are the
//! agent's own code. The lab tier runs the same agent on real systemd.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const RUN_ID: &str = "20261207-120000-tier";

/// The agent's files, in the order they are joined.
fn agent_parts() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/agent/sh");
    let mut parts: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .collect();
    parts.sort();
    assert!(parts.len() > 5, "the agent's files: {parts:?}");
    parts
}

/// The agent as a target runs it (the deployer's own text), in a file.
fn joined_agent() -> tempfile::NamedTempFile {
    let mut file = tempfile::Builder::new().suffix(".sh").tempfile().unwrap();
    file.write_all(deploy_flake::agent::SCRIPT.as_bytes()).unwrap();
    file
}

/// `program ARGS…` must exist: a missing tool fails the tier, loudly.
fn tool(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap_or_else(|e| {
        panic!("{program}: {e} (tests/prepare.sh installs it: Debian package {program})")
    })
}

/// shellcheck at severity warning finds nothing in FILE (`extra`: more
/// options); a plain `shellcheck`, which learns the dialect from the
/// file's own directive, agrees.
fn shellcheck_clean(file: &Path, extra: &[&str]) {
    let file = file.to_str().unwrap();
    for dialect in [&["--shell=sh"][..], &[]] {
        let mut args = vec!["--severity=warning"];
        args.extend(dialect);
        args.extend(extra);
        args.push(file);
        let out = tool("shellcheck", &args);
        assert!(
            out.status.success(),
            "shellcheck {args:?}:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

// ---- checked ------------------------------------------------------------------

/// Each file on its own, but for the findings that only the whole text can
/// judge (a variable set in one file and read in another, a function given
/// its arguments in another), then
/// the whole text, as the agent runs (by /bin/sh: POSIX sh, dash or bash
/// as sh), with nothing left out.
#[test]
fn shellcheck_finds_nothing_in_the_agent() {
    for part in agent_parts() {
        shellcheck_clean(&part, &["--exclude=SC2034,SC2120,SC2154"]);
    }
    shellcheck_clean(joined_agent().path(), &[]);
}

#[test]
fn dash_and_bash_parse_the_agent() {
    let joined = joined_agent();
    let mut files = agent_parts();
    files.push(joined.path().to_path_buf());
    for file in &files {
        for (shell, args) in
            [("dash", &["-n"][..]), ("bash", &["--posix", "-n"][..]), ("bash", &["-n"][..])]
        {
            let mut argv = args.to_vec();
            argv.push(file.to_str().unwrap());
            let out = tool(shell, &argv);
            let err = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{shell} {args:?} {}: {err}", file.display());
        }
    }
}

/// The checks above can fail: a part with a bashism, or that reads a
/// variable nobody sets, is found in the joined text.
#[test]
fn the_checks_find_a_bashism_and_an_unset_variable() {
    for (line, code) in
        [("if [ \"$1\" == x ]; then :; fi", "SC3014"), ("echo \"$no_such_var\"", "SC2154")]
    {
        let text = format!("{}{line}\n", deploy_flake::agent::SCRIPT);
        let mut file = tempfile::Builder::new().suffix(".sh").tempfile().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        let path = file.path().to_str().unwrap();
        let out = tool("shellcheck", &["--severity=warning", "--shell=sh", path]);
        let said = String::from_utf8_lossy(&out.stdout);
        assert!(!out.status.success() && said.contains(code), "{code} not found:\n{said}");
    }
}

// ---- a host in a directory ------------------------------------------------------

/// A host in a temporary directory: a copy of the agent whose paths point
/// into it, stand-ins for the commands the activation calls, two systems
/// (`old`, running, and `new`), and a log of every stand-in's call.
struct Host {
    _dir: tempfile::TempDir,
    root: PathBuf,
    agent: PathBuf,
    holder: Option<Child>,
}

/// `systemctl`: the failed units are the lines of ROOT/failed.
const SYSTEMCTL: &str = r#"#!/bin/sh
root=@ROOT@
echo "systemctl $*" >> "$root/calls"
case "$1" in
    list-units)
        case " $* " in
            *" --failed "*) awk 'NF {print $1 " loaded failed failed stand-in"}' "$root/failed" ;;
        esac
        ;;
    reset-failed)
        shift
        for unit; do grep -vxF "$unit" "$root/failed" > "$root/failed.tmp"; mv "$root/failed.tmp" "$root/failed"; done
        ;;
    show) echo SystemState=running; echo "NFailedUnits=$(grep -c . "$root/failed")" ;;
    is-system-running) echo running ;;
    is-active) exit 3 ;;
esac
exit 0
"#;

/// `nix-env -p PROFILE --set PATH`: a new generation, as Nix makes it.
const NIX_ENV: &str = r#"#!/bin/sh
root=@ROOT@
echo "nix-env $*" >> "$root/calls"
[ "$1" = -p ] && [ "$3" = --set ] || exit 1
n=1
while [ -e "$2-$n-link" ] || [ -L "$2-$n-link" ]; do n=$((n + 1)); done
ln -s "$4" "$2-$n-link" && ln -sfn "${2##*/}-$n-link" "$2"
"#;

/// A system's `switch-to-configuration ACTION`, told what to do by files
/// in the system: `rc-ACTION` (its exit status), `hang-ACTION` (it never
/// ends), `fails-ACTION` (units it leaves failed), `says-ACTION` (what it
/// prints, as is). Like NixOS's, it switches /run/current-system unless it
/// refuses first (11: the lock is taken; 100: an incompatible init).
const STC: &str = r#"#!/bin/sh
sys=@SYS@ root=@ROOT@
echo "switch-to-configuration $1 of ${sys##*/} NIXOS_NO_CHECK=${NIXOS_NO_CHECK:-}" >> "$root/calls"
rc=0
if [ -e "$sys/rc-$1" ]; then read -r rc < "$sys/rc-$1"; fi
case "$rc" in 11 | 100) exit "$rc" ;; esac
echo "activating ${sys##*/}"
if [ -e "$sys/says-$1" ]; then cat "$sys/says-$1"; fi
if [ "$1" = test ] || [ "$1" = switch ]; then ln -sfn "$sys" "$root/current-system"; fi
if [ -e "$sys/fails-$1" ]; then cat "$sys/fails-$1" >> "$root/failed"; fi
if [ -e "$sys/hang-$1" ]; then sleep 600; fi
exit "$rc"
"#;

fn write_exec(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The agent's text with `line` replaced by `by`: it must be there once.
fn replace_line(text: &str, line: &str, by: &str) -> String {
    let n = text.lines().filter(|l| *l == line).count();
    assert_eq!(n, 1, "the agent sets `{line}` once (the tier runs a copy with it replaced)");
    text.lines().map(|l| if l == line { by } else { l }).collect::<Vec<_>>().join("\n") + "\n"
}

/// Settings of `agent.sh activate`.
#[derive(Clone, Copy)]
struct Activate {
    activate_secs: u32,
    window_secs: u32,
    hard_secs: u32,
    magic: bool,
    then_boot: bool,
}

const ACTIVATE: Activate =
    Activate { activate_secs: 30, window_secs: 30, hard_secs: 60, magic: true, then_boot: false };

impl Host {
    fn new() -> Host {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let sub = |p: &str| root.join(p).to_str().unwrap().to_string();
        for d in ["bin", "state/runs", "records", "profiles", "slice"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join("failed"), "").unwrap();
        std::fs::write(root.join("calls"), "").unwrap();
        let with_root = |t: &str| t.replace("@ROOT@", &sub(""));
        write_exec(&root.join("bin/systemctl"), &with_root(SYSTEMCTL));
        write_exec(&root.join("bin/nix-env"), &with_root(NIX_ENV));
        for sys in ["old", "new"] {
            std::fs::create_dir_all(root.join(sys).join("bin")).unwrap();
            let stc = with_root(STC).replace("@SYS@", &sub(sys));
            write_exec(&root.join(sys).join("bin/switch-to-configuration"), &stc);
        }
        std::os::unix::fs::symlink(root.join("old"), root.join("current-system")).unwrap();

        let mut text = deploy_flake::agent::SCRIPT.to_string();
        let path = "PATH=/run/current-system/sw/bin:/nix/var/nix/profiles/default/bin:/run/wrappers/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
        for (line, by) in [
            (path.to_string(), format!("PATH={}:/usr/sbin:/usr/bin:/sbin:/bin", sub("bin"))),
            ("STATE=/run/deploy-flake".into(), format!("STATE={}", sub("state"))),
            ("RECORDS=/var/lib/deploy-flake".into(), format!("RECORDS={}", sub("records"))),
            (
                "PROFILE=/nix/var/nix/profiles/system".into(),
                format!("PROFILE={}", sub("profiles/system")),
            ),
            ("CURRENT=/run/current-system".into(), format!("CURRENT={}", sub("current-system"))),
            ("SLICE=/sys/fs/cgroup/system.slice".into(), format!("SLICE={}", sub("slice"))),
        ] {
            text = replace_line(&text, &line, &by);
        }
        let agent = root.join("agent.sh");
        std::fs::write(&agent, text).unwrap();
        std::fs::create_dir_all(root.join("state/runs").join(RUN_ID)).unwrap();
        Host { _dir: dir, root, agent, holder: None }
    }

    fn sys(&self, name: &str) -> String {
        self.root.join(name).to_str().unwrap().to_string()
    }

    fn rundir(&self) -> String {
        self.root.join("state/runs").join(RUN_ID).to_str().unwrap().to_string()
    }

    /// Tell system `sys`'s switch-to-configuration what to do (see STC).
    fn set(&self, sys: &str, file: &str, content: &str) {
        std::fs::write(self.root.join(sys).join(file), content).unwrap();
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new("dash");
        cmd.arg(&self.agent).args(args).current_dir(&self.root);
        cmd
    }

    fn run(&self, args: &[&str], stdin: &str) -> Output {
        let mut child = self
            .cmd(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin.as_bytes()).unwrap();
        wait_bounded(child, 30)
    }

    /// The run takes the host lock: the agent's own `hold`, whose stdin
    /// stays open (no heartbeat) until the host is dropped.
    fn hold_lock(&mut self) {
        self.hold_lock_as(&format!("run {RUN_ID} by tier"));
    }

    /// The same, with `owner` as the words other deployers are shown.
    fn hold_lock_as(&mut self, owner: &str) {
        let rundir = self.rundir();
        let mut holder = self
            .cmd(&["hold", owner, "600", &rundir])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let out = BufReader::new(holder.stdout.take().unwrap());
        let said: Vec<String> =
            out.lines().map_while(Result::ok).take_while(|l| l != "deploy-flake-locked").collect();
        assert!(self.root.join("state/lock.pid").exists(), "the lock is held: {said:?}");
        self.holder = Some(holder);
    }

    fn activate(&mut self, a: Activate) -> Child {
        if self.holder.is_none() {
            self.hold_lock();
        }
        let new = self.sys("new");
        let flag = |b: bool| if b { "1" } else { "0" };
        let args = [
            "activate".to_string(),
            self.rundir(),
            new,
            a.activate_secs.to_string(),
            a.window_secs.to_string(),
            a.hard_secs.to_string(),
            "30".into(),
            "1".into(),
            flag(a.magic).into(),
            flag(a.then_boot).into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.cmd(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    /// `activate` to its end: (its output, the final status line).
    fn activate_to_end(&mut self, a: Activate) -> (Output, String) {
        let out = wait_bounded(self.activate(a), 30);
        (out, self.status())
    }

    fn status(&self) -> String {
        std::fs::read_to_string(Path::new(&self.rundir()).join("status"))
            .unwrap_or_default()
            .trim_end_matches('\n')
            .to_string()
    }

    fn wait_for_status(&self, state: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.status().starts_with(state) {
            assert!(
                Instant::now() < deadline,
                "never {state}: status {:?}, log:\n{}",
                self.status(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn wait_for_call(&self, call: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.calls().contains(call) {
            assert!(Instant::now() < deadline, "never called {call}:\n{}", self.calls());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn current(&self) -> String {
        std::fs::read_link(self.root.join("current-system")).unwrap().to_str().unwrap().to_string()
    }

    fn calls(&self) -> String {
        std::fs::read_to_string(self.root.join("calls")).unwrap()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(Path::new(&self.rundir()).join("log")).unwrap_or_default()
    }

    fn failed(&self) -> String {
        std::fs::read_to_string(self.root.join("failed")).unwrap()
    }

    /// The host's record of the last deploy: its `outcome`.
    fn last_outcome(&self) -> String {
        let last = std::fs::read_to_string(self.root.join("records/last")).unwrap_or_default();
        last.lines().find_map(|l| l.strip_prefix("outcome ")).unwrap_or("").to_string()
    }

    fn confirm(&self) {
        let out = self.run(&["confirm", &self.rundir()], "");
        assert!(out.status.success(), "confirm: {}", String::from_utf8_lossy(&out.stderr));
    }

    fn abort(&self, line: &str) {
        let out = self.run(&["abort", &self.rundir()], line);
        assert!(out.status.success(), "abort: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        if let Some(mut holder) = self.holder.take() {
            drop(holder.stdin.take());
            let _ = holder.kill();
            let _ = holder.wait();
        }
    }
}

/// `child`'s output once it ended, within `secs` (killed and failed after).
fn wait_bounded(mut child: Child, secs: u64) -> Output {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "the agent did not end within {secs}s: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

// ---- the activation's exit codes ---------------------------------------------------

#[test]
fn exit_0_awaits_the_confirmation_and_a_confirmed_system_stays() {
    let mut host = Host::new();
    let agent = host.activate(ACTIVATE);
    host.wait_for_status("awaiting-confirmation");
    assert_eq!(host.current(), host.sys("new"));
    host.confirm();
    let out = wait_bounded(agent, 30);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(host.status(), "confirmed");
    assert_eq!(host.current(), host.sys("new"));
    assert_eq!(host.last_outcome(), "confirmed");
    assert!(host.root.join("records/confirmed/new").exists(), "the confirmation is recorded");
    assert!(!host.calls().contains("of old"), "nothing rolled back:\n{}", host.calls());
    assert!(
        host.log().contains("activating new\n"),
        "the activation's output is logged:\n{}",
        host.log()
    );
}

#[test]
fn a_confirmed_system_gets_its_boot_entry_when_asked() {
    let mut host = Host::new();
    let agent = host.activate(Activate { then_boot: true, ..ACTIVATE });
    host.wait_for_status("awaiting-confirmation");
    host.confirm();
    wait_bounded(agent, 30);
    assert_eq!(host.status(), "booted");
    assert_eq!(host.last_outcome(), "deployed");
    let profile = host.root.join("profiles/system");
    assert_eq!(profile.canonicalize().unwrap().to_str().unwrap(), host.sys("new"));
    assert!(host.calls().contains("switch-to-configuration boot of new"), "{}", host.calls());
}

#[test]
fn exit_2_rolls_back_to_the_previous_system() {
    let mut host = Host::new();
    host.set("new", "rc-test", "2");
    let (_, status) = host.activate_to_end(ACTIVATE);
    assert_eq!(
        status,
        "rolled-back activation-script the activation script failed (switch-to-configuration test exited with 2)"
    );
    assert_eq!(host.current(), host.sys("old"));
    // The previous system's own pre-switch checks do not refuse it.
    assert!(
        host.calls().contains("switch-to-configuration test of old NIXOS_NO_CHECK=1"),
        "{}",
        host.calls()
    );
    assert_eq!(host.last_outcome(), "rolled-back");
}

#[test]
fn exit_4_with_new_failed_units_rolls_back_and_clears_them() {
    let mut host = Host::new();
    host.set("new", "rc-test", "4");
    host.set("new", "fails-test", "web.service\n");
    let (_, status) = host.activate_to_end(ACTIVATE);
    assert_eq!(
        status,
        "rolled-back activation-failed switch-to-configuration test exited with 4; failed units: web.service "
    );
    assert_eq!(host.current(), host.sys("old"));
    assert!(host.calls().contains("systemctl reset-failed web.service"), "{}", host.calls());
    assert_eq!(host.failed(), "");
    assert!(host.log().contains("failed units: web.service"), "{}", host.log());
}

#[test]
fn exit_4_for_units_failed_before_goes_on_to_the_confirmation() {
    let mut host = Host::new();
    std::fs::write(host.root.join("failed"), "old.service\n").unwrap();
    host.set("new", "rc-test", "4");
    let agent = host.activate(ACTIVATE);
    host.wait_for_status("awaiting-confirmation");
    assert!(
        host.log().contains("exited with 4 only for units that had failed before: old.service"),
        "{}",
        host.log()
    );
    host.confirm();
    wait_bounded(agent, 30);
    assert_eq!(host.status(), "confirmed");
    assert_eq!(host.current(), host.sys("new"));
}

#[test]
fn exit_11_is_refused_busy_and_changes_nothing() {
    let mut host = Host::new();
    host.set("new", "rc-test", "11");
    let (_, status) = host.activate_to_end(ACTIVATE);
    assert!(
        status.starts_with("refused busy another switch-to-configuration holds its lock"),
        "{status}"
    );
    assert_eq!(host.current(), host.sys("old"));
    assert!(!host.calls().contains("of old"), "no rollback:\n{}", host.calls());
    assert_eq!(host.last_outcome(), "refused");
}

#[test]
fn exit_100_is_refused_reboot_required_and_changes_nothing() {
    let mut host = Host::new();
    host.set("new", "rc-test", "100");
    let (_, status) = host.activate_to_end(ACTIVATE);
    assert!(
        status.starts_with("refused reboot-required the new system's init is incompatible"),
        "{status}"
    );
    assert_eq!(host.current(), host.sys("old"));
    assert!(!host.calls().contains("of old"), "no rollback:\n{}", host.calls());
}

#[test]
fn any_other_exit_rolls_back() {
    let mut host = Host::new();
    host.set("new", "rc-test", "1");
    let (_, status) = host.activate_to_end(ACTIVATE);
    assert_eq!(status, "rolled-back activation-failed switch-to-configuration test exited with 1");
    assert_eq!(host.current(), host.sys("old"));
}

#[test]
fn an_activation_past_its_time_is_ended_and_rolled_back() {
    let mut host = Host::new();
    host.set("new", "hang-test", "");
    let started = Instant::now();
    let (_, status) = host.activate_to_end(Activate { activate_secs: 1, ..ACTIVATE });
    assert_eq!(status, "rolled-back timeout activation did not finish within 1s");
    assert_eq!(host.current(), host.sys("old"));
    // 1 s, then TERM (the stand-in's sleep ends with its group), and the rollback.
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

#[test]
fn an_activation_the_deployer_aborts_is_ended_and_rolled_back_with_its_cause() {
    let mut host = Host::new();
    host.set("new", "hang-test", "");
    let agent = host.activate(ACTIVATE);
    host.wait_for_call("switch-to-configuration test of new");
    host.abort("interrupted the deployer was interrupted (Ctrl-C)\n");
    wait_bounded(agent, 30);
    assert_eq!(
        host.status(),
        "rolled-back interrupted activation aborted by the deployer: the deployer was interrupted (Ctrl-C)"
    );
    assert_eq!(host.current(), host.sys("old"));
}

#[test]
fn a_confirmation_the_deployer_refuses_rolls_back_with_its_cause() {
    let mut host = Host::new();
    let agent = host.activate(ACTIVATE);
    host.wait_for_status("awaiting-confirmation");
    host.abort("health-check web.service is not active\n");
    wait_bounded(agent, 30);
    assert_eq!(host.status(), "rolled-back health-check not confirmed: web.service is not active");
    assert_eq!(host.current(), host.sys("old"));
}

#[test]
fn no_confirmation_within_the_window_rolls_back() {
    let mut host = Host::new();
    let started = Instant::now();
    let (_, status) = host.activate_to_end(Activate { window_secs: 1, ..ACTIVATE });
    assert_eq!(
        status,
        "rolled-back not-confirmed no confirmation within 1s of the deployer's last sign of life"
    );
    assert_eq!(host.current(), host.sys("old"));
    assert!(started.elapsed() < Duration::from_secs(10), "{:?}", started.elapsed());
}

/// Another switch puts the old system back while the run awaits its
/// confirmation: the confirmation is not recorded, nothing is rolled back,
/// and the run ends `superseded`, naming what the host runs. (The keys it
/// puts back need a root-owned directory: the lab proves those.)
#[test]
fn a_system_replaced_during_the_confirmation_is_superseded_and_not_recorded() {
    let mut host = Host::new();
    let agent = host.activate(ACTIVATE);
    host.wait_for_status("awaiting-confirmation");
    let current = host.root.join("current-system");
    std::fs::remove_file(&current).unwrap();
    std::os::unix::fs::symlink(host.root.join("old"), &current).unwrap();
    host.confirm();
    wait_bounded(agent, 30);
    let old = host.sys("old");
    assert_eq!(
        host.status(),
        format!(
            "superseded superseded another switch replaced the run's system before the \
             confirmation was recorded: the host runs {old}; no boot entry was written"
        )
    );
    assert_eq!(host.current(), old);
    assert!(!host.root.join("records/confirmed/new").exists(), "no confirmation recorded");
    assert!(!host.calls().contains("of old"), "nothing rolled back:\n{}", host.calls());
}

#[test]
fn without_the_host_lock_nothing_is_activated() {
    let mut host = Host::new();
    host.hold_lock();
    // Another run holds the lock now.
    let other = std::fs::read_to_string(host.root.join("state/lock.pid")).unwrap();
    let pid = other.split_whitespace().next().unwrap().to_string();
    std::fs::write(host.root.join("state/lock.pid"), format!("{pid} 20261207-120001-other\n"))
        .unwrap();
    let (_, status) = host.activate_to_end(ACTIVATE);
    assert!(status.starts_with("refused lock-lost this run lost the host lock"), "{status}");
    assert!(!host.calls().contains("switch-to-configuration"), "{}", host.calls());
}

#[test]
fn the_lock_owner_s_words_are_shown_and_never_read_back() {
    let mut host = Host::new();
    // Six finished runs older than this one: beyond the five kept, the
    // two oldest go, whatever the owner's words name.
    let old: Vec<String> = (0..6).map(|i| format!("2026120{i}-100000-old")).collect();
    for id in &old {
        let dir = host.root.join("state/runs").join(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("status"), "booted\n").unwrap();
    }
    host.hold_lock_as(&format!("run {} by someone", old[0]));
    // The holder prunes once it has said the lock is taken, newest first:
    // the oldest last.
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.root.join("state/runs").join(&old[0]).exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let left: Vec<bool> =
        old.iter().map(|id| host.root.join("state/runs").join(id).exists()).collect();
    assert_eq!(left, [false, false, true, true, true, true], "{old:?}");
    assert!(Path::new(&host.rundir()).exists(), "its own run stays");
    let pid = std::fs::read_to_string(host.root.join("state/lock.pid")).unwrap();
    assert_eq!(pid.split_whitespace().nth(1), Some(RUN_ID), "the holder's run id, as data");
}

// ---- the rollback ---------------------------------------------------------------------

#[test]
fn a_rollback_that_fails_to_reactivate_says_so() {
    let mut host = Host::new();
    host.set("new", "rc-test", "2");
    host.set("old", "rc-test", "1");
    let (_, status) = host.activate_to_end(ACTIVATE);
    let old = host.sys("old");
    assert_eq!(
        status,
        format!(
            "rollback-failed activation-script the activation script failed (switch-to-configuration test exited with 2); re-activating {old} exited with 1"
        )
    );
    assert_eq!(host.last_outcome(), "rollback-failed");
}

#[test]
fn a_rollback_that_leaves_units_failed_names_them() {
    let mut host = Host::new();
    host.set("new", "rc-test", "2");
    host.set("old", "fails-test", "db.service\n");
    let (_, status) = host.activate_to_end(ACTIVATE);
    assert!(
        status.ends_with("; back on the previous system, but these units failed: db.service "),
        "{status}"
    );
    assert!(status.starts_with("rollback-failed activation-script "), "{status}");
    assert_eq!(host.current(), host.sys("old"));
}

#[test]
fn a_rollback_ending_in_a_unit_failed_before_still_succeeds_and_says_so() {
    let mut host = Host::new();
    std::fs::write(host.root.join("failed"), "old.service\n").unwrap();
    host.set("new", "rc-test", "2");
    let (_, status) = host.activate_to_end(ACTIVATE);
    assert!(status.starts_with("rolled-back activation-script "), "{status}");
    assert!(
        status.ends_with("(units that had failed before are still failed: old.service )"),
        "{status}"
    );
}

#[test]
fn without_a_previous_system_there_is_nothing_to_roll_back_to() {
    let mut host = Host::new();
    std::fs::remove_file(host.root.join("current-system")).unwrap();
    host.set("new", "rc-test", "2");
    let (_, status) = host.activate_to_end(ACTIVATE);
    assert!(status.starts_with("rollback-failed activation-script "), "{status}");
    assert!(status.ends_with("; no previous system to return to"), "{status}");
}

#[test]
fn without_magic_rollback_a_failed_system_stays_unconfirmed() {
    let mut host = Host::new();
    host.set("new", "rc-test", "2");
    let (_, status) = host.activate_to_end(Activate { magic: false, ..ACTIVATE });
    assert_eq!(
        status,
        "failed activation-script the activation script failed (switch-to-configuration test exited with 2)"
    );
    assert_eq!(host.current(), host.sys("new"));
    assert_eq!(host.last_outcome(), "unconfirmed");
    assert!(!host.calls().contains("of old"), "{}", host.calls());
}

// ---- the log and its reader --------------------------------------------------------

#[test]
fn the_log_keeps_a_last_line_without_its_newline() {
    let mut host = Host::new();
    host.set("new", "says-test", "one\nno newline at the end");
    let agent = host.activate(ACTIVATE);
    host.wait_for_status("awaiting-confirmation");
    assert!(host.log().contains("one\nno newline at the end"), "{:?}", host.log());
    host.abort("refused not now\n");
    wait_bounded(agent, 30);
}

/// `watch` prints the log in whole lines: a line still being written is
/// held back until its newline comes, then printed whole, once.
#[test]
fn the_log_reader_prints_whole_lines_only() {
    let host = Host::new();
    let rundir = host.rundir();
    let log = Path::new(&rundir).join("log");
    std::fs::write(Path::new(&rundir).join("status"), "activating\n").unwrap();
    // The run's agent, alive: a process with the run directory on its command line.
    let mut alive =
        Command::new("sh").args(["-c", "sleep 60; :", "agent", &rundir, "x"]).spawn().unwrap();
    std::fs::write(Path::new(&rundir).join("pid"), format!("{}\n", alive.id())).unwrap();
    std::fs::write(&log, "skipped\nfirst\nsec").unwrap();
    let mut watch = host
        .cmd(&["watch", &rundir, "1", "starting,activating,rolling-back,booting"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(watch.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert_eq!(line, "first\n");
    // Let the watch read the partial line more than once.
    std::thread::sleep(Duration::from_millis(700));
    let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(b"ond\nthi").unwrap();
    std::thread::sleep(Duration::from_millis(700));
    f.write_all(b"rd\n").unwrap();
    std::fs::write(Path::new(&rundir).join("status"), "awaiting-confirmation\n").unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut out, &mut rest).unwrap();
    let status = wait_bounded(watch, 30);
    let _ = alive.kill();
    let _ = alive.wait();
    assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
    assert_eq!(
        rest,
        format!("second\nthird\ndeploy-flake-previous {RUN_ID} \ndeploy-flake-status {RUN_ID} awaiting-confirmation\n")
    );
}

// ---- the pre-switch check ---------------------------------------------------------

/// `check` says what switch-to-configuration check printed and its exit
/// status; what that means the deployer decides (`CheckVerdict::decide`).
#[test]
fn the_check_says_its_exit_status_and_the_deployer_decides_what_it_means() {
    use deploy_flake::agent::CheckVerdict;
    let host = Host::new();
    for (rc, says, want) in [
        ("0", "", CheckVerdict::Ok),
        ("1", "Pre-switch checks failed\n", CheckVerdict::Refused),
        ("1", "Usage: switch-to-configuration [switch|boot|test]\n", CheckVerdict::Unsupported),
        ("11", "", CheckVerdict::Busy),
    ] {
        host.set("new", "rc-check", &format!("{rc}\n"));
        host.set("new", "says-check", says);
        let out = host.run(&["check", &host.sys("new"), "10", ""], "");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
        let exit = stdout.lines().find_map(|l| l.strip_prefix("deploy-flake-check-exit "));
        assert_eq!(exit, Some(rc), "{stdout}");
        let said: Vec<&str> = stdout.lines().filter(|l| !l.starts_with("deploy-flake-")).collect();
        assert!(says.lines().all(|l| said.contains(&l)), "what it said is shown: {stdout}");
        assert_eq!(CheckVerdict::decide(exit, &said), want, "{stdout}");
    }
    assert!(host.calls().contains("switch-to-configuration check of new"), "{}", host.calls());
}

/// The watch waits while the run is in one of the states the deployer
/// names (its wait policy), and answers the first state that is not.
#[test]
fn the_watch_waits_through_the_states_it_is_given_and_no_other() {
    let host = Host::new();
    let rundir = host.rundir();
    let status = Path::new(&rundir).join("status");
    std::fs::write(&status, "awaiting-confirmation\n").unwrap();
    let watch = |states: &str| {
        host.cmd(&["watch", &rundir, "0", states])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let answered = format!("deploy-flake-status {RUN_ID} awaiting-confirmation");
    let out = wait_bounded(watch("starting,activating"), 10);
    assert!(String::from_utf8_lossy(&out.stdout).contains(&answered), "{out:?}");
    let mut waiting = watch("activating,awaiting-confirmation");
    std::thread::sleep(Duration::from_millis(1500));
    assert!(waiting.try_wait().unwrap().is_none(), "the watch waits through its states");
    std::fs::write(&status, "confirmed\n").unwrap();
    let out = wait_bounded(waiting, 10);
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(said.contains(&format!("deploy-flake-status {RUN_ID} confirmed")), "{said}");
}
