//! Driving the pipeline against the fake host (tests): one host's deploy,
//! what it reported, the events it sent and the calls the fake saw.

use std::sync::{Arc, Mutex};

use super::fake::Fake;
use super::{deploy, Context, Goal, Interrupt, Mode, Reboot};
use crate::agent::{AgentAction, SwitchEnv};
use crate::events::{Event, HostReport, Outcome, Phase, Reason};
use crate::fleet::HostSpec;
use crate::select::Target;

/// What a run against the fake did: its report, its events, the calls.
pub struct Ran {
    pub report: HostReport,
    pub events: Vec<Event>,
    pub calls: Vec<String>,
    pub actions: Vec<AgentAction>,
}

impl Ran {
    pub fn phases(&self) -> Vec<Phase> {
        let started = self.events.iter().filter_map(|e| match e {
            Event::PhaseStarted { phase, .. } => Some(*phase),
            _ => None,
        });
        started.collect()
    }

    pub fn notes(&self) -> Vec<&str> {
        let notes = self.events.iter().filter_map(|e| match e {
            Event::Note { text, .. } => Some(text.as_str()),
            _ => None,
        });
        notes.collect()
    }

    pub fn rolled_back(&self) -> Option<Option<Reason>> {
        self.events.iter().find_map(|e| match e {
            Event::RolledBack { cause, .. } => Some(*cause),
            _ => None,
        })
    }

    /// Was `what` called (with or without further words)?
    pub fn called(&self, what: &str) -> bool {
        self.calls
            .iter()
            .any(|c| c == what || c.strip_prefix(what).is_some_and(|r| r.starts_with(' ')))
    }

    pub fn message(&self) -> &str {
        self.report.message.as_deref().unwrap_or("")
    }

    /// Outcome, reason and the last phase, in one comparison.
    pub fn ended(&self) -> (Outcome, Option<Reason>, Option<Phase>) {
        (self.report.outcome, self.report.reason, self.report.phase)
    }
}

pub async fn drive(fake: Fake, tweak: impl FnOnce(&mut Target, &mut Context)) -> Ran {
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink_events = events.clone();
    let mut target = Target { name: "web1".into(), spec: HostSpec::with_defaults("web1") };
    let mut ctx = Context {
        run_id: "run1".into(),
        flake: ".".into(),
        force: false,
        skip_preflight: false,
        lock_owner: "me".into(),
        origin: super::Origin::fixed("by me"),
        mode: Mode::Deploy,
        goal: Goal::Switch,
        reboot: Reboot::Never,
        switch_env: SwitchEnv::default(),
        interrupt: Interrupt::new().1,
        changing: Arc::default(),
        approved: None,
        keep_keys: false,
        sink: Arc::new(move |e| sink_events.lock().unwrap().push(e)),
    };
    tweak(&mut target, &mut ctx);
    let (calls, actions) = (fake.calls.clone(), fake.actions.clone());
    let report = deploy(&target, &ctx, fake).await;
    let events = events.lock().unwrap().clone();
    assert_eq!(events.last(), Some(&Event::HostFinished { report: report.clone() }));
    let calls = calls.lock().unwrap().clone();
    let actions = actions.lock().unwrap().clone();
    Ran { report, events, calls, actions }
}

pub async fn run(fake: Fake) -> Ran {
    drive(fake, |_, _| {}).await
}
