//! The on-target agent's protocol, whole: where its state lives on a
//! target, the answer lines it prints, its states and actions, the host
//! lock, the confirmation and the abort. The script itself is `agent.sh`
//! (embedded); this module is the only Rust code that knows its file
//! names, its answer prefix and its words.
//!
//! A run's state is a root-only directory of its own, so nothing from an
//! earlier run can confirm a later one. The agent runs `activate` and
//! `boot` as transient systemd units: they outlive our ssh connection and
//! finish by themselves (confirmed: the new system; otherwise: the
//! previous one).

use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::events::Reason;
use crate::nix::StorePath;
use crate::process::{self, Cmd, Lines, ProcessError, Script, Spawner};

/// The agent script, embedded in the binary.
pub const SCRIPT: &str = include_str!("agent.sh");

/// Root-only state of the deployer on a target.
const STATE_DIR: &str = "/run/deploy-flake";
/// Every answer line meant for the deployer starts with this.
const ANSWER: &str = "deploy-flake-";
/// `flock` exits with this when another run holds the lock.
const LOCK_HELD: i32 = 75;

/// Creates the state directories (root-only) and installs the agent under
/// its content hash, through a temporary file and a rename: a script that
/// another run is executing is never rewritten in place.
const INSTALL: Script = Script(
    r#"umask 077
install -d -m 0700 "$1" "$1/runs" "$2" || exit 1
[ -s "$3" ] && exit 0
cat > "$2/agent.sh" && chmod 0700 "$2/agent.sh" && mv -f "$2/agent.sh" "$3""#,
);

/// The paths of one run's state on a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    id: String,
    dir: String,
    agent: String,
}

impl RunDir {
    pub fn new(run_id: &str) -> RunDir {
        let hash: String =
            Sha256::digest(SCRIPT.as_bytes()).iter().take(8).map(|b| format!("{b:02x}")).collect();
        RunDir {
            id: run_id.to_string(),
            dir: format!("{STATE_DIR}/runs/{run_id}"),
            agent: format!("{STATE_DIR}/agent-{hash}.sh"),
        }
    }

    /// The run directory on the target (for "inspect ..." messages).
    pub fn dir(&self) -> &str {
        &self.dir
    }

    fn file(&self, name: &str) -> String {
        format!("{}/{}", self.dir, name)
    }

    /// What to read on the host when its state is in doubt.
    pub fn inspect_hint(&self) -> String {
        format!(
            "`cat {} {}` and `readlink /run/current-system` on the host",
            self.file("status"),
            self.file("log")
        )
    }

    /// The GC root that holds the run's system until the profile does.
    pub fn gc_root(&self) -> String {
        self.file("toplevel")
    }

    /// `/bin/sh <agent> <command> ARGS...`
    fn cmd<I, S>(&self, command: &str, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut argv = vec!["/bin/sh".to_string(), self.agent.clone(), command.into()];
        argv.extend(args.into_iter().map(Into::into));
        Cmd::new(argv)
    }
}

/// What the agent is doing or how it ended (the first word of its status).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentState {
    /// Started; no status written yet.
    Starting,
    Activating,
    AwaitingConfirmation,
    Confirmed,
    RollingBack,
    RolledBack,
    RollbackFailed,
    /// Activation failed and magicRollback is off: the new system runs.
    Failed,
    Booting,
    Booted,
    BootFailed,
    /// A word this deployer does not know (a newer agent?).
    Other(String),
}

const STATE_WORDS: [(AgentState, &str); 11] = [
    (AgentState::Starting, "starting"),
    (AgentState::Activating, "activating"),
    (AgentState::AwaitingConfirmation, "awaiting-confirmation"),
    (AgentState::Confirmed, "confirmed"),
    (AgentState::RollingBack, "rolling-back"),
    (AgentState::RolledBack, "rolled-back"),
    (AgentState::RollbackFailed, "rollback-failed"),
    (AgentState::Failed, "failed"),
    (AgentState::Booting, "booting"),
    (AgentState::Booted, "booted"),
    (AgentState::BootFailed, "boot-failed"),
];

impl AgentState {
    pub fn parse(word: &str) -> AgentState {
        match STATE_WORDS.iter().find(|(_, w)| *w == word) {
            Some((s, _)) => s.clone(),
            None if word.is_empty() => AgentState::Starting,
            None => AgentState::Other(word.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            AgentState::Other(w) => w,
            s => STATE_WORDS.iter().find(|(x, _)| x == s).map_or("", |(_, w)| w),
        }
    }
}

/// The agent's status: its state, and for an end other than success the
/// cause (machine-readable) and the reason (words).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub state: AgentState,
    pub cause: Option<Reason>,
    pub reason: String,
    /// The system that ran before this run's activation, when recorded.
    pub previous: Option<String>,
}

impl AgentStatus {
    /// `rolled-back not-confirmed no confirmation within 30s`
    pub fn parse(line: &str) -> AgentStatus {
        let line = line.trim();
        let (state, rest) = line.split_once(' ').unwrap_or((line, ""));
        let (cause, reason) = match rest.split_once(' ') {
            Some((word, text)) if Reason::parse(word).is_some() => (Reason::parse(word), text),
            _ if Reason::parse(rest).is_some() => (Reason::parse(rest), ""),
            _ => (None, rest),
        };
        AgentStatus {
            state: AgentState::parse(state),
            cause,
            reason: reason.to_string(),
            previous: None,
        }
    }
}

/// What the agent is asked to do, as a transient unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAction {
    /// Record the running system, `switch-to-configuration test`, then wait
    /// `confirm_secs` for the confirmation; otherwise go back.
    Activate { toplevel: StorePath, activate_secs: u64, confirm_secs: u64, magic_rollback: bool },
    /// Point the system profile at `toplevel` (or switch it back to
    /// `generation`) and `switch-to-configuration boot`.
    Boot { toplevel: StorePath, generation: Option<u32> },
}

impl AgentAction {
    fn name(&self) -> &'static str {
        match self {
            AgentAction::Activate { .. } => "activate",
            AgentAction::Boot { .. } => "boot",
        }
    }

    /// The agent's arguments after the action's name.
    fn args(&self, run: &RunDir) -> Vec<String> {
        let mut v = vec![run.dir.clone()];
        match self {
            AgentAction::Activate { toplevel, activate_secs, confirm_secs, magic_rollback } => {
                v.push(toplevel.to_string());
                v.push(activate_secs.to_string());
                v.push(confirm_secs.to_string());
                v.push(if *magic_rollback { "1" } else { "0" }.into());
            }
            AgentAction::Boot { toplevel, generation } => {
                v.push(toplevel.to_string());
                v.extend(generation.map(|g| g.to_string()));
            }
        }
        v
    }

    /// The transient unit the action runs as.
    pub fn unit(&self, run: &RunDir) -> String {
        format!("{ANSWER}{}-{}", run.id, self.name())
    }

    /// `systemd-run … /bin/sh <agent> <action> ARGS…`
    fn start_cmd(&self, run: &RunDir) -> Cmd {
        let mut argv = vec![
            "systemd-run".to_string(),
            format!("--unit={}", self.unit(run)),
            "--description=deploy-flake activation agent".into(),
            "--collect".into(),
            "--quiet".into(),
            "--property=KillMode=control-group".into(),
        ];
        argv.extend(run.cmd(self.name(), self.args(run)).argv);
        Cmd::new(argv)
    }
}

// ---- answers ----------------------------------------------------------------

/// The values of the answer lines `deploy-flake-<key> <value>`.
fn answers<'a>(stdout: &'a str, key: &str) -> impl Iterator<Item = &'a str> {
    let bare = format!("{ANSWER}{key}");
    stdout.lines().filter_map(move |l| {
        let rest = l.strip_prefix(bare.as_str())?;
        if rest.is_empty() {
            Some("")
        } else {
            rest.strip_prefix(' ')
        }
    })
}

fn answer(stdout: &str, key: &str) -> Option<String> {
    answers(stdout, key).next().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// The system state and the failed units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub state: String,
    pub failed_units: Vec<String>,
}

impl Health {
    pub fn parse(stdout: &str) -> Health {
        Health {
            state: answer(stdout, "state").unwrap_or_else(|| "unknown".into()),
            failed_units: answers(stdout, "failed").map(String::from).collect(),
        }
    }

    pub fn is_running(&self) -> bool {
        self.state == "running" && self.failed_units.is_empty()
    }

    pub fn describe(&self) -> String {
        if self.failed_units.is_empty() {
            format!("system is {}", self.state)
        } else {
            format!("system is {} (failed units: {})", self.state, self.failed_units.join(", "))
        }
    }
}

/// What the deployer needs to know about a target and a built system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub current: Option<String>,
    pub profile: Option<String>,
    /// The toplevel has bin/switch-to-configuration.
    pub switchable: bool,
    /// The self-check to run, when the toplevel has it.
    pub self_check: Option<String>,
    pub systemd: bool,
}

impl Facts {
    pub fn parse(stdout: &str) -> Facts {
        Facts {
            current: answer(stdout, "current"),
            profile: answer(stdout, "profile"),
            switchable: answers(stdout, "switchable").next().is_some(),
            self_check: answer(stdout, "selfcheck"),
            systemd: answers(stdout, "systemd").next().is_some(),
        }
    }
}

// ---- commands -----------------------------------------------------------------

/// Create the state directories and install the agent.
pub async fn install<S: Spawner>(on: &S, run: &RunDir, secs: u64) -> Result<(), ProcessError> {
    let cmd = Cmd::script(INSTALL, [STATE_DIR, &run.dir, &run.agent]).stdin(SCRIPT).secs(secs);
    process::run(on, &cmd, None).await?.check()?;
    Ok(())
}

/// Why the host lock could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error(
        "the host is locked by another deploy: {holder}; wait for it to finish \
         (the lock of a deployer that died is freed when its ssh connection ends)"
    )]
    Held { holder: String },
    #[error("could not take the host lock{hint}")]
    Failed { hint: String },
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// The host lock: held by a remote process for as long as this lives (and
/// our connection with it). Dropping it ends the holder.
pub struct HostLock {
    _holder: process::Child,
    /// Activation units of other runs that were still going when we took it.
    pub busy: Vec<String>,
}

/// Take the host lock: `flock` on the agent's `hold`, which waits for its
/// stdin to close. Refused at once when another run holds it.
pub async fn lock<S: Spawner>(
    on: &S,
    run: &RunDir,
    owner: &str,
    secs: u64,
) -> Result<HostLock, LockError> {
    let lockfile = format!("{STATE_DIR}/lock");
    let flock = ["flock", "-n", "-E", &LOCK_HELD.to_string(), &lockfile].map(String::from);
    let hold = run.cmd("hold", [owner]);
    let cmd = Cmd::new(flock.into_iter().chain(hold.argv)).stdin(Vec::new()).secs(secs).unbounded();
    let mut child = on.spawn(&cmd).await?;
    let mut lines = BufReader::new(&mut child.stdout).lines();
    let mut busy = Vec::new();
    let deadline = tokio::time::Instant::now() + cmd.timeout;
    let locked = format!("{ANSWER}locked");
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) if l.trim() == locked => return Ok(HostLock { _holder: child, busy }),
            Ok(Ok(Some(l))) => busy.extend(answers(&l, "busy").map(String::from)),
            Ok(_) => break,
            Err(_) => {
                let place = on.place();
                return Err(ProcessError::Timeout { cmd: "flock".into(), secs, place }.into());
            }
        }
    }
    drop(lines);
    let exit = tokio::time::timeout(cmd.timeout, child.wait).await;
    if let Ok(Ok(e)) = exit {
        if e.code() == Some(LOCK_HELD) {
            let info = Cmd::new(["cat", &format!("{STATE_DIR}/lock.info")]).secs(secs);
            let out = process::run(on, &info, None).await?;
            let holder = out.stdout.trim();
            let holder = if holder.is_empty() { "another deploy" } else { holder };
            return Err(LockError::Held { holder: holder.to_string() });
        }
    }
    let out = process::run(on, &Cmd::new(["flock", "--version"]).secs(secs), None).await?;
    let hint = if out.success() { "" } else { " (is util-linux's flock installed on the target?)" };
    Err(LockError::Failed { hint: hint.into() })
}

/// `systemctl is-system-running --wait` (bounded by `secs`) and the failed
/// units, in one round trip.
pub async fn health<S: Spawner>(on: &S, run: &RunDir, secs: u64) -> Result<Health, ProcessError> {
    let cmd = run.cmd("health", [secs.to_string()]).secs(secs + 10).quiet_stdout();
    Ok(Health::parse(&process::run(on, &cmd, None).await?.stdout))
}

/// One round trip: running and boot systems, and what `toplevel` offers.
pub async fn facts<S: Spawner>(
    on: &S,
    run: &RunDir,
    toplevel: &StorePath,
    self_check: Option<&str>,
    secs: u64,
) -> Result<Facts, ProcessError> {
    let args = std::iter::once(toplevel.to_string()).chain(self_check.map(String::from));
    let cmd = run.cmd("facts", args).secs(secs).quiet_stdout();
    Ok(Facts::parse(&process::run(on, &cmd, None).await?.check()?.stdout))
}

/// Start an action as a transient systemd unit (it survives the ssh
/// connection that started it).
pub async fn start<S: Spawner>(
    on: &S,
    run: &RunDir,
    action: &AgentAction,
    secs: u64,
) -> Result<(), ProcessError> {
    process::run(on, &action.start_cmd(run).secs(secs), None).await?.check()?;
    Ok(())
}

/// Stream the run's log from line `seen` until the agent reaches a state
/// that needs the deployer (or an end), also waiting through `patient`;
/// then its status. `seen` counts the log lines received, so a watch
/// re-attached after a lost connection continues where it was.
pub async fn watch<S: Spawner>(
    on: &S,
    run: &RunDir,
    seen: &mut usize,
    patient: Option<&AgentState>,
    secs: u64,
    on_line: Lines<'_>,
) -> Result<AgentStatus, ProcessError> {
    let args = [run.dir.clone(), seen.to_string()].into_iter();
    let cmd = run.cmd("watch", args.chain(patient.map(|s| s.as_str().to_string()))).secs(secs);
    let status_marker = format!("{ANSWER}status {} ", run.id);
    let previous_marker = format!("{ANSWER}previous {} ", run.id);
    let (mut status, mut previous) = (None, None);
    let mut sink = |l: &str| {
        if let Some(rest) = l.strip_prefix(status_marker.as_str()) {
            status = Some(AgentStatus::parse(rest));
        } else if let Some(rest) = l.strip_prefix(previous_marker.as_str()) {
            previous = Some(rest.trim().to_string()).filter(|p| !p.is_empty());
        } else {
            *seen += 1;
            on_line(l);
        }
    };
    process::run(on, &cmd, Some(&mut sink)).await?;
    let mut status = status.ok_or_else(|| ProcessError::Disconnected { cmd: cmd.display() })?;
    status.previous = previous;
    Ok(status)
}

/// Ask the agent to stop the activation, or not to wait for the
/// confirmation any longer: it goes back to the previous system.
pub async fn abort<S: Spawner>(
    on: &S,
    run: &RunDir,
    cause: Reason,
    reason: &str,
    secs: u64,
) -> Result<(), ProcessError> {
    let text = format!("{} {}\n", cause.as_str(), reason.replace('\n', " "));
    let cmd = Cmd::new(["dd", &format!("of={}", run.file("abort")), "status=none"]).stdin(text);
    process::run(on, &cmd.secs(secs), None).await?.check()?;
    Ok(())
}

/// Confirm the activation. `fresh` must be a brand-new login: that it
/// works at all is what the confirmation proves.
pub async fn confirm<S: Spawner>(fresh: &S, run: &RunDir, secs: u64) -> Result<(), ProcessError> {
    let cmd = Cmd::new(["touch", &run.file("confirmed")]).secs(secs);
    process::run(fresh, &cmd, None).await?.check()?;
    Ok(())
}

/// Remove the run's GC root (the profile holds the system, or nothing
/// needs to).
pub async fn drop_root<S: Spawner>(on: &S, run: &RunDir, secs: u64) -> Result<(), ProcessError> {
    process::run(on, &Cmd::new(["rm", "-f", &run.gc_root()]).secs(secs), None).await?.check()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_parsed() {
        let facts = Facts::parse(
            "deploy-flake-current /nix/store/a-sys\ndeploy-flake-profile \ndeploy-flake-switchable yes\n\
             deploy-flake-systemd yes\ndeploy-flake-systemdx no\nnoise\n",
        );
        let want = Facts {
            current: Some("/nix/store/a-sys".into()),
            profile: None,
            switchable: true,
            self_check: None,
            systemd: true,
        };
        assert_eq!(facts, want);
        let h = Health::parse(
            "deploy-flake-state degraded\ndeploy-flake-failed a.service\ndeploy-flake-failed b.service\n",
        );
        assert_eq!(h.failed_units, ["a.service", "b.service"]);
        assert_eq!(h.describe(), "system is degraded (failed units: a.service, b.service)");
        assert!(!h.is_running());
        assert_eq!(Health::parse("").state, "unknown");
    }

    #[test]
    fn status_lines_carry_state_cause_and_reason() {
        let s = AgentStatus::parse("rolled-back not-confirmed no confirmation within 30s\n");
        assert_eq!(s.state, AgentState::RolledBack);
        assert_eq!(s.cause, Some(Reason::NotConfirmed));
        assert_eq!(s.reason, "no confirmation within 30s");
        let s = AgentStatus::parse("awaiting-confirmation");
        assert_eq!(
            (s.state, s.cause, s.reason.as_str()),
            (AgentState::AwaitingConfirmation, None, "")
        );
        let s = AgentStatus::parse("exploded the reactor");
        assert_eq!(s.state, AgentState::Other("exploded".into()));
        assert_eq!((s.cause, s.reason.as_str()), (None, "the reactor"));
        for (state, word) in STATE_WORDS {
            assert_eq!(AgentState::parse(word), state);
            assert_eq!(state.as_str(), word);
        }
    }

    #[test]
    fn actions_become_transient_units_of_the_run() {
        let run = RunDir::new("20261126-abc");
        assert_eq!(run.dir(), "/run/deploy-flake/runs/20261126-abc");
        assert!(run.agent.starts_with("/run/deploy-flake/agent-"));
        let top = StorePath::parse("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-sys").unwrap();
        let act = AgentAction::Activate {
            toplevel: top.clone(),
            activate_secs: 600,
            confirm_secs: 30,
            magic_rollback: true,
        };
        assert_eq!(act.unit(&run), "deploy-flake-20261126-abc-activate");
        let argv = act.start_cmd(&run).argv;
        assert_eq!(argv[0], "systemd-run");
        assert_eq!(
            argv[6..],
            ["/bin/sh", &run.agent, "activate", run.dir(), top.as_str(), "600", "30", "1"]
        );
        let boot = AgentAction::Boot { toplevel: top.clone(), generation: Some(41) };
        assert_eq!(boot.start_cmd(&run).argv[8..], ["boot", run.dir(), top.as_str(), "41"]);
    }
}
