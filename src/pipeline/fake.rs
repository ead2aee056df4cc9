//! A scripted host for the pipeline's unit tests: each operation answers
//! what the test set up (by default, a healthy host that deploys), and
//! every call is recorded in order.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

pub use super::drive::{drive, run, Ran};

use crate::agent::{AgentAction, AgentState, AgentStatus, CheckVerdict, Facts, Health, SwitchEnv};
use crate::build::{Build, CopiedFrom, Route, Way};
use crate::events::Reason;
use crate::fleet::HealthCheck;
use crate::host::{Followed, Host, HostError, HostResult, Locked, Look};
use crate::nix::{Archive, StorePath};
use crate::process::{Lines, Place, ProcessError};

pub const OLD: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-old";
pub const NEW: &str = "/nix/store/zyxwvsrqpnmlkjihgfdcba9876543210-nixos-system-new";

pub fn path(p: &str) -> StorePath {
    StorePath::parse(p).unwrap()
}

/// What a watch of the agent answers.
pub fn status(state: AgentState, cause: Option<Reason>, reason: &str) -> HostResult<AgentStatus> {
    Ok(AgentStatus {
        state,
        cause,
        reason: reason.into(),
        previous: Some(OLD.into()),
        health: None,
    })
}

/// A state without a cause.
pub fn at(state: AgentState) -> HostResult<AgentStatus> {
    status(state, None, "")
}

pub fn timeout(cmd: &str) -> HostError {
    HostError::Process(ProcessError::Timeout {
        cmd: cmd.into(),
        secs: 5,
        place: Place::Remote("web1".into()),
    })
}

pub fn disconnected() -> HostError {
    HostError::Process(ProcessError::Disconnected { cmd: "agent watch".into() })
}

pub fn failed(cmd: &str, tail: &str) -> HostError {
    HostError::Process(ProcessError::Failed {
        cmd: cmd.into(),
        place: Place::Remote("web1".into()),
        exit: crate::process::Exit::Code(1),
        tail: tail.into(),
    })
}

pub fn health(state: &str, failed: &[&str]) -> HostResult<Health> {
    let failed_units = failed.iter().map(|u| u.to_string()).collect();
    let state = crate::agent::SystemState::parse(state);
    Ok(Health { state, failed_units, failed_before: Vec::new() })
}

pub struct Fake {
    pub calls: Arc<Mutex<Vec<String>>>,
    /// Every agent action started, in order.
    pub actions: Arc<Mutex<Vec<AgentAction>>>,
    pub connect: HostResult<()>,
    pub lock: HostResult<Vec<String>>,
    /// Answers of `lock` after the first (after a reboot), in order; then `lock`.
    pub later_locks: VecDeque<HostResult<Vec<String>>>,
    /// Answers of `health`, in order (preflight, then confirm); then running.
    pub health: VecDeque<HostResult<Health>>,
    pub copy: HostResult<StorePath>,
    pub build: HostResult<StorePath>,
    /// What `deliver` answers (a closure built elsewhere brought here).
    pub deliver: HostResult<CopiedFrom>,
    pub generation: HostResult<(u32, StorePath)>,
    pub facts: HostResult<Facts>,
    pub self_check: HostResult<()>,
    pub pre_switch_check: HostResult<CheckVerdict>,
    /// The copy never ends (until the run drops it).
    pub copy_hangs: bool,
    /// After an error starting an action: did it start?
    pub probe: HostResult<bool>,
    /// Answers of `start`, in order; then Ok.
    pub start: VecDeque<HostResult<()>>,
    /// Answers of `watch`, in order; a watch with nothing left is lost.
    pub watch: VecDeque<HostResult<AgentStatus>>,
    pub checks: VecDeque<Result<(), String>>,
    pub confirm: HostResult<()>,
    pub alive: bool,
    pub reconnect: HostResult<()>,
    /// Why the host lock was lost, from the `lock_lost`-th question on
    /// (counting from 1; a relock finds it held again).
    pub lock_lost: Option<(usize, String)>,
    /// Answers of `relock`, in order; then the lock, free of switches.
    pub relock: VecDeque<HostResult<Locked>>,
    lost_asked: usize,
    /// Answers of `boot_id`, in order; then the last one again.
    pub boot_ids: VecDeque<HostResult<String>>,
    pub reboot: HostResult<()>,
    /// Answers of `facts` after the first, in order; then `facts` again.
    pub later_facts: VecDeque<HostResult<Facts>>,
    /// How many times the facts were asked for (with a build, or alone).
    facts_asked: usize,
    /// Log lines each watch hands out.
    pub log: Vec<String>,
    /// Reading the keys here.
    pub read_keys: Result<(), crate::keys::KeyError>,
    pub stage_keys: HostResult<()>,
    pub upload_keys: HostResult<()>,
    /// What `status` answers (`deploy-flake status`).
    pub status: HostResult<crate::agent::HostState>,
    /// What `changes` answers (`deploy-flake diff`).
    pub changes: HostResult<crate::agent::Changes>,
}

impl Fake {
    /// A healthy host running OLD that deploys NEW.
    pub fn new() -> Fake {
        let facts = Facts {
            current: Some(OLD.into()),
            profile: Some(OLD.into()),
            switchable: true,
            systemd: true,
            ..Facts::default()
        };
        Fake {
            calls: Arc::default(),
            actions: Arc::default(),
            connect: Ok(()),
            lock: Ok(Vec::new()),
            later_locks: VecDeque::new(),
            health: VecDeque::new(),
            copy: Ok(path("/nix/store/00000000000000000000000000000000-source")),
            build: Ok(path(NEW)),
            deliver: Ok(CopiedFrom::Deployer),
            generation: Ok((1, path(OLD))),
            facts: Ok(facts),
            self_check: Ok(()),
            pre_switch_check: Ok(CheckVerdict::Ok),
            copy_hangs: false,
            probe: Ok(false),
            start: VecDeque::new(),
            watch: [
                at(AgentState::AwaitingConfirmation),
                at(AgentState::Confirmed),
                at(AgentState::Booted),
            ]
            .into(),
            checks: VecDeque::new(),
            confirm: Ok(()),
            alive: false,
            reconnect: Ok(()),
            lock_lost: None,
            relock: VecDeque::new(),
            lost_asked: 0,
            boot_ids: VecDeque::new(),
            reboot: Ok(()),
            later_facts: VecDeque::new(),
            facts_asked: 0,
            log: vec!["activating".into()],
            read_keys: Ok(()),
            stage_keys: Ok(()),
            upload_keys: Ok(()),
            status: Ok(crate::agent::HostState::default()),
            changes: Ok(crate::agent::Changes::default()),
        }
    }

    fn call(&self, what: impl Into<String>) {
        self.calls.lock().unwrap().push(what.into());
    }

    /// `facts` the first time, then `later_facts` in order.
    fn next_facts(&mut self) -> HostResult<Facts> {
        self.facts_asked += 1;
        in_turn(self.facts_asked, &self.facts, &mut self.later_facts)
    }
}

/// What the `asked`-th question gets: `first` the first time, then the
/// answers of `later` in order, then `first` again.
fn in_turn<T: Clone>(asked: usize, first: &T, later: &mut VecDeque<T>) -> T {
    let answer = if asked > 1 { later.pop_front() } else { None };
    answer.unwrap_or_else(|| first.clone())
}

impl Host for Fake {
    async fn connect(&mut self) -> HostResult<()> {
        self.call("connect");
        self.connect.clone()
    }

    async fn lock(
        &mut self,
        _owner: &str,
        _origin: &str,
        health_secs: Option<u64>,
        _secs: u64,
    ) -> HostResult<Locked> {
        self.call("lock");
        let asked = self.calls.lock().unwrap().iter().filter(|c| *c == "lock").count();
        let busy = in_turn(asked, &self.lock, &mut self.later_locks)?;
        // As the agent does: the health comes with the lock when asked for.
        let health = match health_secs {
            Some(_) => Some(self.health.pop_front().unwrap_or_else(|| health("running", &[]))?),
            None => None,
        };
        Ok(Locked { busy, health, held_meanwhile: false })
    }

    async fn health(&mut self, _secs: u64) -> HostResult<Health> {
        self.call("health");
        self.health.pop_front().unwrap_or_else(|| health("running", &[]))
    }

    /// The health as `health` answers it, and the current system of `facts`.
    async fn look(&mut self, _secs: u64) -> HostResult<Look> {
        self.call("look");
        let health = self.health.pop_front().unwrap_or_else(|| health("running", &[]))?;
        let current = self.facts.as_ref().ok().and_then(|f| f.current.clone());
        Ok(Look { health, current })
    }

    async fn status(&mut self, _secs: u64) -> HostResult<crate::agent::HostState> {
        self.call("host-state");
        self.status.clone()
    }

    async fn changes(
        &mut self,
        current: Option<&str>,
        toplevel: &StorePath,
        _secs: u64,
    ) -> HostResult<crate::agent::Changes> {
        self.call(format!("changes {} {toplevel}", current.unwrap_or("-")));
        self.changes.clone()
    }

    async fn archive(&mut self, flake: &str, _s: u64, out: Lines<'_>) -> HostResult<Archive> {
        self.call(format!("archive {flake}"));
        out("archiving");
        let source = self.copy.clone()?;
        Ok(Archive { paths: vec![source.clone()], source })
    }

    async fn copy_source(&mut self, archive: &Archive, _s: u64, out: Lines<'_>) -> HostResult<()> {
        self.call(format!("copy {}", archive.paths.len()));
        out("copying path");
        if self.copy_hangs {
            std::future::pending::<()>().await;
        }
        Ok(())
    }

    /// As the real host does: the facts come with the build.
    async fn build(
        &mut self,
        _source: &StorePath,
        configuration: &str,
        _self_check: Option<&str>,
        _secs: u64,
        out: Lines<'_>,
    ) -> HostResult<(StorePath, Facts)> {
        self.call(format!("build {configuration}"));
        out("building");
        let built = self.build.clone()?;
        Ok((built, self.next_facts()?))
    }

    async fn build_elsewhere(
        &mut self,
        _flake: &str,
        way: &Way,
        _secs: u64,
        out: Lines<'_>,
    ) -> HostResult<StorePath> {
        match &way.build {
            Build::Local { configuration } => self.call(format!("build-local {configuration}")),
            Build::Host { build_host, configuration } => {
                self.call(format!("build-on {build_host} {configuration}"))
            }
            Build::Prebuilt(path) => {
                self.call(format!("prebuilt {path}"));
                return Ok(path.clone());
            }
        }
        out("building elsewhere");
        self.build.clone()
    }

    async fn deliver(
        &mut self,
        way: &Way,
        _p: &StorePath,
        _s: u64,
        _out: Lines<'_>,
    ) -> HostResult<CopiedFrom> {
        let route = match &way.route {
            Route::Cache(uri) => format!("cache {uri}"),
            Route::Direct => "direct".into(),
            Route::Relay => "relay".into(),
        };
        self.call(format!("deliver {route}"));
        self.deliver.clone()
    }

    async fn generation(
        &mut self,
        requested: Option<u32>,
        _s: u64,
    ) -> HostResult<(u32, StorePath)> {
        self.call(format!("generation {requested:?}"));
        self.generation.clone()
    }

    async fn facts(&mut self, _t: &StorePath, _sc: Option<&str>, _s: u64) -> HostResult<Facts> {
        self.call("facts");
        self.next_facts()
    }

    /// As the agent does: the self-check first, when given.
    async fn pre_switch_check(
        &mut self,
        _toplevel: &StorePath,
        env: SwitchEnv,
        self_check: Option<&str>,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<Result<CheckVerdict, HostError>> {
        if let Some(script) = self_check {
            if let Err(e) = self.self_check(script, secs, out).await {
                return Ok(Err(e));
            }
        }
        self.call(format!("pre-switch-check{}", words(env)));
        out("pre-switch check output");
        self.pre_switch_check.clone().map(Ok)
    }

    async fn self_check(&mut self, script: &str, _secs: u64, out: Lines<'_>) -> HostResult<()> {
        self.call(format!("self-check {script}"));
        out("checking");
        self.self_check.clone()
    }

    async fn start(&mut self, action: &AgentAction, _secs: u64) -> HostResult<()> {
        let name = match action {
            AgentAction::Activate { env, then_boot, .. } => {
                let then = if *then_boot { " then-boot" } else { "" };
                format!("start activate{then}{}", words(*env))
            }
            AgentAction::Boot { env, .. } => format!("start boot{}", words(*env)),
        };
        self.call(name);
        self.actions.lock().unwrap().push(action.clone());
        self.start.pop_front().unwrap_or(Ok(()))
    }

    /// As the agent does: a start, then (once started) a watch.
    async fn launch(
        &mut self,
        action: &AgentAction,
        seen: &mut usize,
        health_secs: Option<u64>,
        secs: u64,
        out: Lines<'_>,
    ) -> Followed {
        if let Err(e) = self.start(action, secs).await {
            return Followed { delivered: false, status: Err(e) };
        }
        Followed { delivered: true, status: self.watch(seen, None, health_secs, secs, out).await }
    }

    async fn probe(&mut self, _secs: u64) -> HostResult<bool> {
        self.call("probe");
        self.probe.clone()
    }

    async fn watch(
        &mut self,
        seen: &mut usize,
        patient: Option<&AgentState>,
        health_secs: Option<u64>,
        _secs: u64,
        out: Lines<'_>,
    ) -> HostResult<AgentStatus> {
        let asks = if health_secs.is_some() { " health" } else { "" };
        self.call(format!("watch {}{asks}", patient.map_or("-", |p| p.as_str())));
        for l in &self.log[(*seen).min(self.log.len())..] {
            out(l);
        }
        *seen = self.log.len();
        let mut status = self.watch.pop_front().unwrap_or_else(|| Err(disconnected()))?;
        // As the agent does: the health comes with a watch that ends
        // awaiting the confirmation, from what `health` would answer (a
        // failing one is left for the deployer's own `health`).
        if health_secs.is_some() && status.state == AgentState::AwaitingConfirmation {
            match self.health.pop_front().unwrap_or_else(|| health("running", &[])) {
                Ok(h) => status.health = Some(h),
                Err(e) => self.health.push_front(Err(e)),
            }
        }
        Ok(status)
    }

    async fn abort(&mut self, cause: Reason, _why: &str, _secs: u64) -> HostResult<()> {
        self.call(format!("abort {}", cause.as_str()));
        Ok(())
    }

    async fn health_check(&mut self, check: &HealthCheck) -> Result<(), String> {
        self.call(format!("check {}", check.description));
        self.checks.pop_front().unwrap_or(Ok(()))
    }

    /// As the agent does: a confirmation, then (once recorded) a watch.
    async fn confirm(&mut self, seen: &mut usize, secs: u64, out: Lines<'_>) -> Followed {
        self.call("confirm");
        if let Err(e) = self.confirm.clone() {
            return Followed { delivered: false, status: Err(e) };
        }
        let awaiting = AgentState::AwaitingConfirmation;
        Followed {
            delivered: true,
            status: self.watch(seen, Some(&awaiting), None, secs, out).await,
        }
    }

    async fn alive(&mut self) -> bool {
        self.call("is-alive");
        self.alive
    }

    async fn reconnect(&mut self) -> HostResult<()> {
        self.call("reconnect");
        self.reconnect.clone()
    }

    fn lock_lost(&mut self) -> Option<String> {
        self.lost_asked += 1;
        match &self.lock_lost {
            Some((from, why)) if self.lost_asked >= *from => {
                self.call("lock-lost");
                Some(why.clone())
            }
            _ => None,
        }
    }

    async fn relock(&mut self, _secs: u64) -> HostResult<Locked> {
        self.call("relock");
        // Taken back, it is held again.
        self.lock_lost = None;
        self.relock.pop_front().unwrap_or(Ok(Locked::default()))
    }

    async fn boot_id(&mut self, _secs: u64) -> HostResult<String> {
        self.call("boot-id");
        match self.boot_ids.len() {
            0 => Ok("boot-1".into()),
            1 => self.boot_ids[0].clone(),
            _ => self.boot_ids.pop_front().unwrap(),
        }
    }

    async fn reboot(&mut self, _secs: u64) -> HostResult<()> {
        self.call("reboot");
        self.reboot.clone()
    }

    async fn read_keys(
        &mut self,
        keys: &std::collections::BTreeMap<String, crate::fleet::KeySpec>,
    ) -> Result<Vec<crate::keys::Loaded>, crate::keys::KeyError> {
        self.call(format!("read-keys {}", keys.len()));
        self.read_keys.clone()?;
        let content = Arc::new(crate::secret::Secret::from("content".to_string()));
        Ok(keys
            .values()
            .map(|spec| crate::keys::Loaded { spec: spec.clone(), content: content.clone() })
            .collect())
    }

    async fn stage_keys(
        &mut self,
        keys: &[crate::keys::Loaded],
        keep: bool,
        _secs: u64,
        _out: Lines<'_>,
    ) -> HostResult<()> {
        self.call(format!("stage-keys {}{}", keys.len(), if keep { " keep" } else { "" }));
        self.stage_keys.clone()
    }

    async fn upload_keys(
        &mut self,
        keys: &[crate::keys::Loaded],
        _secs: u64,
        _out: Lines<'_>,
    ) -> HostResult<()> {
        self.call(format!("upload-keys {}", keys.len()));
        self.upload_keys.clone()
    }

    async fn adopt_keys(&mut self, from_run: &str, _secs: u64) -> HostResult<()> {
        self.call(format!("adopt-keys {from_run}"));
        Ok(())
    }

    async fn drop_kept_keys(&mut self, _secs: u64) -> HostResult<()> {
        self.call("drop-kept-keys");
        Ok(())
    }

    async fn discard_keys(&mut self, _secs: u64) -> HostResult<()> {
        self.call("discard-keys");
        Ok(())
    }

    async fn drop_root(&mut self, _secs: u64) -> HostResult<()> {
        self.call("drop-root");
        Ok(())
    }

    async fn close(self) {
        self.call("close");
    }

    fn inspect_hint(&self) -> String {
        "the run's status".into()
    }
}

/// ` no-check install-bootloader` (what a call passed on), or nothing.
fn words(env: SwitchEnv) -> String {
    let mut s = String::new();
    if env.no_check {
        s.push_str(" no-check");
    }
    if env.install_bootloader {
        s.push_str(" install-bootloader");
    }
    s
}
