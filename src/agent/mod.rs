//! The on-target agent's protocol, whole: where its state lives on a
//! target, the answer lines it prints, its states and actions, the host
//! lock, the confirmation and the abort. The script itself is the files of
//! `sh/` (embedded, joined into one text); this module is the only Rust code that knows its file
//! names, its answer prefix and its words.
//!
//! A run's state is a root-only directory of its own, so nothing from an
//! earlier run can confirm a later one. The agent runs `activate` and
//! `boot` as transient systemd units: they outlive our ssh connection and
//! finish by themselves (confirmed: the new system; otherwise: the
//! previous one).

mod answers;
mod follow;
mod install;
pub mod keys;
mod lock;
#[cfg(test)]
mod tests;

use crate::budget::REMOTE_MARGIN_SECS;
use crate::events::Reason;
use crate::nix::StorePath;
use crate::process::{self, Cmd, Lines, ProcessError, Script, Spawner};

/// The agent script, embedded in the binary: the files of `sh/` joined in
/// the order of their names (the settings first, the dispatcher last),
/// one text on the wire, installed and hashed whole.
pub const SCRIPT: &str = concat!(
    include_str!("sh/00-head.sh"),
    include_str!("sh/10-state.sh"),
    include_str!("sh/20-wait.sh"),
    include_str!("sh/30-bounded.sh"),
    include_str!("sh/40-activate.sh"),
    include_str!("sh/50-boot.sh"),
    include_str!("sh/60-watch.sh"),
    include_str!("sh/70-lock.sh"),
    include_str!("sh/80-facts.sh"),
    include_str!("sh/90-keys.sh"),
    include_str!("sh/99-main.sh"),
);

/// Root-only state of the deployer on a target.
const STATE_DIR: &str = "/run/deploy-flake";
/// Every answer line meant for the deployer starts with this.
const ANSWER: &str = "deploy-flake-";

pub use answers::{
    Changes, CheckVerdict, Facts, Health, HostState, LastDeploy, LastOutcome, PackageChange,
    SystemState,
};
pub use follow::{confirm, launch, watch};
pub use lock::{lock, HostLock, LockError};

/// The paths of one run's state on a target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunDir {
    id: String,
    dir: String,
    agent: String,
}

impl RunDir {
    pub fn new(run_id: &str) -> RunDir {
        let hash = &install::script_sha256()[..16];
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

    /// The run's id.
    pub fn id(&self) -> &str {
        &self.id
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

/// The lock file, the file that says who holds it (in words, for people)
/// and the file its holder writes its pid and run id in (data).
fn lock_files() -> (String, String, String) {
    let at = |f: &str| format!("{STATE_DIR}/{f}");
    (at("lock"), at("lock.info"), at("lock.pid"))
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
    /// switch-to-configuration refused before changing anything (another
    /// switch holds its lock; the new init needs a reboot).
    Refused,
    Booting,
    Booted,
    BootFailed,
    /// The run's state or its agent is gone (the host rebooted, the agent
    /// was killed).
    Vanished,
    /// Another switch replaced the run's system before its confirmation
    /// was recorded or its boot entry written: nothing more was done.
    Superseded,
    /// A word this deployer does not know (a newer agent?).
    Other(String),
}

const STATE_WORDS: [(AgentState, &str); 14] = [
    (AgentState::Starting, "starting"),
    (AgentState::Activating, "activating"),
    (AgentState::AwaitingConfirmation, "awaiting-confirmation"),
    (AgentState::Confirmed, "confirmed"),
    (AgentState::RollingBack, "rolling-back"),
    (AgentState::RolledBack, "rolled-back"),
    (AgentState::RollbackFailed, "rollback-failed"),
    (AgentState::Failed, "failed"),
    (AgentState::Refused, "refused"),
    (AgentState::Booting, "booting"),
    (AgentState::Booted, "booted"),
    (AgentState::BootFailed, "boot-failed"),
    (AgentState::Vanished, "vanished"),
    (AgentState::Superseded, "superseded"),
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

    /// The watch's wait policy, sent with each watch: the states it waits
    /// through (comma-separated words), those the agent leaves on its own
    /// (its action under way: nothing for the deployer to do yet) and
    /// `patient`, where the deployer waits for the agent too.
    fn waited_through(patient: Option<&AgentState>) -> String {
        let own = [AgentState::Starting, AgentState::Activating, AgentState::RollingBack];
        let mut states: Vec<&AgentState> = own.iter().chain([&AgentState::Booting]).collect();
        states.extend(patient);
        states.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(",")
    }
}

impl LastOutcome {
    /// The word the agent records (`rolled-back`).
    pub fn as_str(self) -> &'static str {
        match self {
            LastOutcome::Deployed => "deployed",
            LastOutcome::Confirmed => "confirmed",
            LastOutcome::Unconfirmed => "unconfirmed",
            LastOutcome::RolledBack => "rolled-back",
            LastOutcome::RollbackFailed => "rollback-failed",
            LastOutcome::Refused => "refused",
            LastOutcome::BootFailed => "boot-failed",
            LastOutcome::Superseded => "superseded",
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
    /// The host's health, when the watch that saw this state was asked
    /// for it (only with `awaiting-confirmation`).
    pub health: Option<Health>,
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
            health: None,
        }
    }
}

/// What switch-to-configuration is told through its environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SwitchEnv {
    /// `NIXOS_NO_CHECK=1`: skip the pre-switch checks and switch inhibitors.
    pub no_check: bool,
    /// `NIXOS_INSTALL_BOOTLOADER=1`: (re)install the bootloader itself.
    pub install_bootloader: bool,
}

impl SwitchEnv {
    /// The agent's ENV words.
    fn words(self) -> Vec<String> {
        let mut v = Vec::new();
        if self.no_check {
            v.push("NIXOS_NO_CHECK=1".to_string());
        }
        if self.install_bootloader {
            v.push("NIXOS_INSTALL_BOOTLOADER=1".to_string());
        }
        v
    }
}

/// What the agent is asked to do, as a transient unit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentAction {
    /// Record the running system, `switch-to-configuration test` (bounded
    /// by `activate_secs`), then wait for the confirmation up to
    /// `window_secs` after the deployer's last sign of life (`hard_secs`
    /// after the activation at most); otherwise go back (bounded by
    /// `rollback_secs`; each bound ends with a TERM, then a KILL
    /// `grace_secs` later). With `then_boot`, once confirmed, go on as
    /// [`AgentAction::Boot`] (in the same unit: no round trip between the
    /// confirmation and the boot entry, which is written even if the
    /// deployer is gone by then). The numbers are the host's
    /// [`crate::budget::Budget`].
    Activate {
        toplevel: StorePath,
        activate_secs: u64,
        window_secs: u64,
        hard_secs: u64,
        rollback_secs: u64,
        grace_secs: u64,
        magic_rollback: bool,
        then_boot: bool,
        env: SwitchEnv,
    },
    /// Make `toplevel` the newest generation of the system profile (so that
    /// every bootloader boots it) and `switch-to-configuration boot`.
    Boot { toplevel: StorePath, env: SwitchEnv },
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
            AgentAction::Activate {
                toplevel,
                activate_secs,
                window_secs,
                hard_secs,
                rollback_secs,
                grace_secs,
                magic_rollback,
                then_boot,
                env,
            } => {
                v.push(toplevel.to_string());
                for secs in [activate_secs, window_secs, hard_secs, rollback_secs, grace_secs] {
                    v.push(secs.to_string());
                }
                v.push(if *magic_rollback { "1" } else { "0" }.into());
                v.push(if *then_boot { "1" } else { "0" }.into());
                v.extend(env.words());
            }
            AgentAction::Boot { toplevel, env } => {
                v.push(toplevel.to_string());
                v.extend(env.words());
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

// ---- answers ---------------------------------------------------------------

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

/// Is `line` an answer (not output for people)?
fn is_answer(line: &str) -> bool {
    line.starts_with(ANSWER)
}

// ---- commands -----------------------------------------------------------------

/// `systemctl is-system-running --wait` (bounded by `secs`), the failed
/// units, and those that had failed before this run's activation, in one
/// round trip.
pub async fn health<S: Spawner>(on: &S, run: &RunDir, secs: u64) -> Result<Health, ProcessError> {
    let cmd = run.cmd("health", [secs.to_string(), run.dir.clone()]);
    let cmd = cmd.secs(secs.saturating_add(REMOTE_MARGIN_SECS)).quiet_stdout();
    Ok(Health::parse(&process::run(on, &cmd, None).await?.stdout))
}

/// The host's [`health`] and what it runs, with the agent's text on stdin:
/// nothing needs to be installed (a host rebooted by someone else has
/// lost what was).
pub async fn look<S: Spawner>(
    on: &S,
    run: &RunDir,
    secs: u64,
) -> Result<(Health, Option<String>), ProcessError> {
    let args = ["/bin/sh", "-s", "look", &secs.to_string(), &run.dir];
    let cmd = Cmd::new(args).stdin(SCRIPT).secs(secs + 10).quiet_stdout();
    let out = process::run(on, &cmd, None).await?.check()?;
    Ok((Health::parse(&out.stdout), answer(&out.stdout, "current")))
}

/// `switch-to-configuration check`: the system's pre-switch checks and
/// switch inhibitors, before anything changes; after `self_check` (a
/// script of the new system, each bounded by `secs`), when given, in the
/// same round trip. Their output goes to `on_line`. `Ok(Err(exit, last
/// lines))`: the self-check failed, and nothing else ran.
pub async fn check<S: Spawner>(
    on: &S,
    run: &RunDir,
    toplevel: &StorePath,
    env: SwitchEnv,
    self_check: Option<&str>,
    secs: u64,
    on_line: Lines<'_>,
) -> Result<Result<CheckVerdict, (i32, String)>, ProcessError> {
    let args = [toplevel.to_string(), secs.to_string(), self_check.unwrap_or("").to_string()];
    let cmd = run.cmd("check", args.into_iter().chain(env.words()));
    let cmd = cmd.secs(secs.saturating_mul(2).saturating_add(REMOTE_MARGIN_SECS)).quiet_stdout();
    let out = process::run(on, &cmd, None).await?.check()?;
    let said: Vec<&str> =
        out.stdout.lines().filter(|l| !l.trim().is_empty() && !is_answer(l)).collect();
    said.iter().for_each(|l| on_line(&process::shown_line(l)));
    match answer(&out.stdout, "self-check-exit").map(|rc| rc.parse::<i32>()) {
        Some(Ok(0)) | None => {
            // What switch-to-configuration said: after the self-check's.
            let from = out.stdout.find(&format!("{ANSWER}self-check-exit ")).unwrap_or(0);
            let own: Vec<&str> = out.stdout[from..].lines().filter(|l| !is_answer(l)).collect();
            let exit = answer(&out.stdout, "check-exit");
            Ok(Ok(CheckVerdict::decide(exit.as_deref(), &own)))
        }
        Some(rc) => Ok(Err((rc.unwrap_or(-1), process::tail_lines(&said.join("\n"), 5)))),
    }
}

impl HostState {
    /// The system the last deploy left running, with its run id (`None`
    /// when it left nothing new running: rolled back, refused, ...).
    pub fn last_deployed(&self) -> Option<(&str, &str)> {
        if !self.last.outcome.is_some_and(LastOutcome::deployed_its_system) {
            return None;
        }
        Some((self.last.get("system").unwrap_or(""), self.last.get("run").unwrap_or("?")))
    }
}

/// What a host runs, boots and lacks, without installing or changing
/// anything (the agent script is read from stdin).
pub async fn status<S: Spawner>(on: &S, secs: u64) -> Result<HostState, ProcessError> {
    let cmd = Cmd::new(["/bin/sh", "-s", "status"]).stdin(SCRIPT).secs(secs).quiet_stdout();
    Ok(HostState::parse(&process::run(on, &cmd, None).await?.check()?.stdout))
}

/// What activating `toplevel` would change (packages, closure size,
/// units, reboot), changing nothing.
pub async fn changes<S: Spawner>(
    on: &S,
    current: Option<&str>,
    toplevel: &StorePath,
    secs: u64,
) -> Result<Changes, ProcessError> {
    let cmd = Cmd::new(["/bin/sh", "-s", "diff", toplevel.as_str()]).stdin(SCRIPT);
    let out = process::run(on, &cmd.secs(secs).quiet_stdout(), None).await?.check()?;
    Ok(Changes::parse(&out.stdout, current.unwrap_or(""), toplevel.as_str()))
}

/// Did an action of the run start (after an error starting it)?
pub async fn probe<S: Spawner>(on: &S, run: &RunDir, secs: u64) -> Result<bool, ProcessError> {
    let cmd = run.cmd("probe", [run.dir.clone()]).secs(secs).quiet_stdout();
    let out = process::run(on, &cmd, None).await?.check()?;
    Ok(answer(&out.stdout, "started").is_some())
}

/// A build that leaves its result at the run's GC root, then `facts` of
/// what it built.
const BUILD_THEN_FACTS: Script = Script(
    r#"agent=$1 gc=$2 selfcheck=$3
shift 3
"$@" || exit
toplevel=$(readlink -f "$gc") || exit
exec /bin/sh "$agent" facts "$toplevel" ${selfcheck:+"$selfcheck"}"#,
);

/// Run `build` (which must leave its result at the run's GC root), then
/// answer [`facts`] of what it built, in one round trip: the build's own
/// stdout, and the facts.
pub async fn build_then_facts<S: Spawner>(
    on: &S,
    run: &RunDir,
    build: Cmd,
    self_check: Option<&str>,
    on_line: Lines<'_>,
) -> Result<(String, Facts), ProcessError> {
    let mut args = vec![run.agent.clone(), run.gc_root(), self_check.unwrap_or("").to_string()];
    args.extend(build.argv.iter().cloned());
    let cmd = Cmd { argv: Cmd::script(BUILD_THEN_FACTS, args).argv, ..build.clone() };
    // A failure is the build's (what it printed tells): named as the build.
    let mut out = process::run(on, &cmd, Some(on_line)).await.map_err(|e| match e {
        ProcessError::Timeout { secs, place, .. } => {
            ProcessError::Timeout { cmd: build.display(), secs, place }
        }
        e => e,
    })?;
    out.cmd = build.display();
    let out = out.check()?;
    let own: Vec<&str> = out.stdout.lines().filter(|l| !is_answer(l)).collect();
    Ok((own.join("\n"), Facts::parse(&out.stdout)))
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
    let cmd = run.cmd("abort", [run.dir.clone()]).stdin(text);
    process::run(on, &cmd.secs(secs), None).await?.check()?;
    Ok(())
}

/// Remove the run's GC root (the profile holds the system, or nothing
/// needs to).
pub async fn drop_root<S: Spawner>(on: &S, run: &RunDir, secs: u64) -> Result<(), ProcessError> {
    process::run(on, &Cmd::new(["rm", "-f", &run.gc_root()]).secs(secs), None).await?.check()?;
    Ok(())
}

/// The kernel's boot id: a new one at every boot.
pub async fn boot_id<S: Spawner>(on: &S, secs: u64) -> Result<String, ProcessError> {
    let cmd = Cmd::new(["cat", "/proc/sys/kernel/random/boot_id"]).secs(secs).quiet_stdout();
    let id = process::run(on, &cmd, None).await?.check()?.stdout.trim().to_string();
    if id.is_empty() {
        return Err(ProcessError::Disconnected { cmd: cmd.display() });
    }
    Ok(id)
}

/// `systemd-run --on-active=1 … systemctl reboot`: the host reboots a
/// second after this returns, from a transient timer, so the command that
/// asked for it never hangs on a host going down.
fn reboot_cmd(run: &RunDir) -> Cmd {
    Cmd::new([
        "systemd-run".to_string(),
        format!("--unit={ANSWER}{}-reboot", run.id),
        "--description=deploy-flake reboot".into(),
        "--on-active=1".into(),
        "--timer-property=AccuracySec=100ms".into(),
        "--collect".into(),
        "--quiet".into(),
        "systemctl".into(),
        "reboot".into(),
    ])
}

/// Ask the host to reboot (into its boot entry) a second from now.
pub async fn reboot<S: Spawner>(on: &S, run: &RunDir, secs: u64) -> Result<(), ProcessError> {
    process::run(on, &reboot_cmd(run).secs(secs), None).await?.check()?;
    Ok(())
}
