//! `deploy-flake diff` (and `--goal dry-activate`, `--ask`): build what a
//! deploy would (or find the generation a rollback returns to), then say
//! per host what activating it would change — packages, closure size,
//! units, reboot — and change nothing: the host lock is held while it
//! looks, and the run's GC root is dropped at the end. What could not be
//! found out is said to be unknown, and why; never "none". It talks to a
//! host through [`Host`] and emits the events of a run: `run-started`, the
//! build's `output` lines, one `host-diff` per host, `run-finished` with
//! the exit code.

use std::sync::Arc;

use crate::agent::Changes;
pub use crate::events::HostDiff;
use crate::events::{Event, Phase, Sink};
use crate::exit::Exit;
use crate::fanout::{Fanout, Look};
use crate::host::{Host, HostError, HostResult, Progress};
use crate::nix::StorePath;
use crate::select::Target;

/// What a run shares: the flake, who asks, and what it shows.
pub struct Run {
    pub flake: String,
    pub run_id: String,
    pub owner: String,
    pub shows: Shows,
}

/// The system whose changes are shown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shows {
    /// The flake's configuration, built as a deploy builds it.
    Build,
    /// The generation a rollback returns to (the one before the current,
    /// or the given one).
    Rollback { to_generation: Option<u32> },
}

/// 0 when every host's changes are known, 1 otherwise.
pub fn exit(all: &[HostDiff]) -> Exit {
    match all.iter().all(|d| d.unknowns().is_empty()) {
        true => Exit::Success,
        false => Exit::HostsFailed,
    }
}

/// Diff every host (through the run's fan-out; `open` gives the host of a
/// target), with the run's events to `sink`; in target order.
pub async fn diff_all<H: Host + 'static>(
    targets: &[Target],
    run: Arc<Run>,
    fanout: &Fanout,
    open: impl Fn(&Target) -> H + Send + Sync + 'static,
    sink: &Sink,
) -> Vec<HostDiff> {
    let (run_id, open) = (run.run_id.clone(), Arc::new(open));
    let (each, job_sink) = (run, sink.clone());
    let job = move |t: Target| {
        let (run, open, sink) = (each.clone(), open.clone(), job_sink.clone());
        async move { diff_one(&t, &run, open(&t), &sink).await }
    };
    fanout.look(&run_id, targets, sink, job).await
}

impl Look for HostDiff {
    /// Its `host-diff` event.
    fn event(&self) -> Event {
        Event::HostDiff { host: self.host.clone(), diff: self.clone() }
    }

    fn failed(host: &str, error: String) -> HostDiff {
        HostDiff {
            host: host.into(),
            error: Some(error),
            current: None,
            new: None,
            up_to_date: false,
            changes: None,
            keys: Vec::new(),
        }
    }

    fn exit(all: &[HostDiff]) -> Exit {
        exit(all)
    }
}

impl HostDiff {
    /// What is not known of the host's changes: why its diff failed, or
    /// each part that could not be found out.
    pub fn unknowns(&self) -> Vec<String> {
        if let Some(e) = &self.error {
            return vec![e.clone()];
        }
        let unknown = self.changes.iter().flat_map(|c| &c.unknown);
        unknown.map(|(part, why)| format!("{part}: unknown: {why}")).collect()
    }
}

/// One host's changes, through `host` (its GC root of the run dropped,
/// its lock released and its connection closed after). What the build
/// prints goes to `sink` as the host's `output`.
pub async fn diff_one<H: Host>(t: &Target, run: &Run, mut host: H, sink: &Sink) -> HostDiff {
    let (name, lines) = (t.name.clone(), sink.clone());
    let mut out = move |l: &str| {
        lines(Event::Output { host: name.clone(), phase: Phase::Build, line: l.to_string() })
    };
    let diff = look(t, run, &mut host, &mut out).await;
    let _ = host.drop_root(10).await;
    host.close().await;
    diff.unwrap_or_else(|e| HostDiff::failed(&t.name, e.to_string()))
}

async fn look<H: Host>(
    t: &Target,
    run: &Run,
    host: &mut H,
    out: crate::process::Lines<'_>,
) -> HostResult<HostDiff> {
    let timeouts = t.spec.timeouts;
    host.connect().await?;
    host.lock(&run.owner, "purpose diff\n", None, timeouts.lock).await?;
    let toplevel = match run.shows {
        Shows::Build => build(t, &run.flake, host, out).await?,
        Shows::Rollback { to_generation } => host.generation(to_generation, 30).await?.1,
    };
    let facts = host.facts(&toplevel, None, 30).await?;
    let current = facts.current.clone();
    let up_to_date = current.as_deref() == Some(toplevel.as_str());
    let changes = match up_to_date {
        true => None,
        false => Some(host.changes(current.as_deref(), &toplevel, timeouts.self_check).await?),
    };
    Ok::<_, HostError>(HostDiff {
        host: t.name.clone(),
        error: None,
        current,
        new: Some(toplevel.to_string()),
        up_to_date,
        changes,
        keys: t.spec.keys.values().map(crate::upload::Listed::of).collect(),
    })
}

/// Copy and build as a deploy would (on the target, or elsewhere and copied).
async fn build<H: Host>(
    t: &Target,
    flake: &str,
    host: &mut H,
    out: crate::process::Lines<'_>,
) -> HostResult<StorePath> {
    let mut progress = |p: Progress<'_>| {
        if let Progress::Line(line) = p {
            out(line)
        }
    };
    Ok(host.system(flake, &t.spec, None, &mut progress).await?.path)
}

/// Per host: running -> new, then packages, closure, units, reboot.
pub fn render(all: &[HostDiff]) -> String {
    let mut out = String::new();
    for d in all {
        match (&d.error, d.up_to_date, &d.changes) {
            (Some(e), _, _) => {
                out.push_str(&format!("{}: FAILED: {}\n", d.host, e.replace('\n', "\n    ")))
            }
            (None, true, _) => out.push_str(&format!("{}: up to date\n", d.host)),
            (None, false, changes) => {
                out.push_str(&format!("{}: {} -> {}\n", d.host, name(&d.current), name(&d.new)));
                if let Some(c) = changes {
                    out.push_str(&details(c));
                }
            }
        }
        for k in d.keys.iter().filter(|_| d.error.is_none()) {
            out.push_str(&format!(
                "  key:      {} -> {} ({}:{} {}, {})\n",
                k.name, k.path, k.user, k.group, k.permissions, k.upload_at
            ));
        }
    }
    out
}

fn details(c: &Changes) -> String {
    let mut out = String::new();
    let packages: Vec<String> = c
        .packages
        .iter()
        .map(|p| {
            let v = |x: &Option<String>| x.clone().unwrap_or_else(|| "∅".into());
            let size = p.size.as_deref().map(|s| format!(" ({s})")).unwrap_or_default();
            match (&p.old, &p.new) {
                (None, Some(n)) => format!("+{} {n}{size}", p.name),
                (Some(o), None) => format!("-{} {o}{size}", p.name),
                _ => format!("{} {} -> {}{size}", p.name, v(&p.old), v(&p.new)),
            }
        })
        .collect();
    // Nothing listed: none, unless finding out failed.
    let or_none = |part: &str, listed: Vec<String>| match (c.unknown.get(part), listed.is_empty()) {
        (Some(why), _) => format!("unknown: {why}"),
        (None, true) => "none".to_string(),
        (None, false) => listed.join(", "),
    };
    out.push_str(&format!("  packages: {}\n", or_none("packages", packages)));
    if let Some((old, new)) = c.closure_bytes {
        let mib = |b: u64| b as f64 / (1024.0 * 1024.0);
        let delta = new as f64 - old as f64;
        out.push_str(&format!(
            "  closure:  {:.1} MiB -> {:.1} MiB ({}{:.1} MiB)\n",
            mib(old),
            mib(new),
            if delta >= 0.0 { "+" } else { "-" },
            delta.abs() / (1024.0 * 1024.0)
        ));
    }
    let units: Vec<String> = ["stop", "restart", "reload", "start"]
        .iter()
        .filter_map(|verb| c.units.get(*verb).map(|u| format!("{verb} {}", u.join(", "))))
        .collect();
    let units =
        or_none("units", vec![units.join("; ")].into_iter().filter(|u| !u.is_empty()).collect());
    out.push_str(&format!("  units:    {units}\n"));
    let reboot = match &c.needs_reboot {
        None => "unknown".to_string(),
        Some(p) if p.is_empty() => "not needed".to_string(),
        Some(p) => format!("needed ({} changed)", p.join(", ")),
    };
    out.push_str(&format!("  reboot:   {reboot}\n"));
    out
}

fn name(p: &Option<String>) -> String {
    let Some(p) = p else { return "nothing".into() };
    p.strip_prefix("/nix/store/")
        .and_then(|n| n.split_once('-'))
        .map_or(p.clone(), |(_, n)| n.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::PackageChange;

    #[test]
    fn a_diff_reads_as_a_summary() {
        let changes = Changes {
            packages: vec![PackageChange {
                name: "hello".into(),
                old: None,
                new: Some("1.0".into()),
                size: Some("+0.2 KiB".into()),
            }],
            closure_bytes: Some((1 << 20, 3 << 20)),
            units: [("restart".to_string(), vec!["web.service".to_string()])].into(),
            needs_reboot: Some(vec!["kernel".into()]),
            unknown: Default::default(),
        };
        let d = HostDiff {
            host: "web1".into(),
            error: None,
            current: Some("/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a".into()),
            new: Some("/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b".into()),
            up_to_date: false,
            changes: Some(changes),
            keys: vec![crate::upload::Listed {
                name: "db".into(),
                path: "/run/keys/db".into(),
                user: "postgres".into(),
                group: "keys".into(),
                permissions: "0640".into(),
                upload_at: "pre-activation",
            }],
        };
        let mut unknown = d.clone();
        let mut c = unknown.changes.take().unwrap();
        c.packages.clear();
        c.units.clear();
        c.unknown = [
            ("packages".to_string(), "nix store diff-closures exited with 1: error: x".to_string()),
            (
                "units".to_string(),
                "switch-to-configuration dry-activate exited with 100: reboot".into(),
            ),
        ]
        .into();
        unknown.changes = Some(c);
        let text = render(std::slice::from_ref(&unknown));
        assert!(
            text.contains("  packages: unknown: nix store diff-closures exited with 1: error: x\n")
                && text.contains("  units:    unknown: switch-to-configuration dry-activate exited with 100: reboot\n"),
            "{text}"
        );
        assert_eq!(unknown.unknowns().len(), 2);
        assert!(d.unknowns().is_empty());
        assert_eq!(HostDiff::failed("x", "unreachable".into()).unknowns(), ["unreachable"]);
        let up = HostDiff {
            host: "db1".into(),
            up_to_date: true,
            ..HostDiff::failed("db1", String::new())
        };
        let up = HostDiff { error: None, ..up };
        assert_eq!(
            render(&[d, up]),
            "web1: nixos-system-a -> nixos-system-b\n  packages: +hello 1.0 (+0.2 KiB)\n  closure:  1.0 MiB -> 3.0 MiB (+2.0 MiB)\n  units:    restart web.service\n  reboot:   needed (kernel changed)\n  key:      db -> /run/keys/db (postgres:keys 0640, pre-activation)\ndb1: up to date\n"
        );
    }
}

/// `diff` against the fake host: each outcome, with its message.
#[cfg(test)]
mod through_a_host {
    use std::sync::{Arc, Mutex};

    use super::*;
    use crate::agent::{LockError, PackageChange};
    use crate::fleet::HostSpec;
    use crate::pipeline::fake::{self, Fake, NEW, OLD};

    fn run() -> Run {
        let (flake, run_id, owner) = (".".into(), "run1".into(), "run run1 by me".into());
        Run { flake, run_id, owner, shows: Shows::Build }
    }

    /// The diff, the calls the fake saw and the events sent.
    async fn diff(fake: Fake) -> (HostDiff, Vec<String>, Vec<Event>) {
        let t = Target { name: "web1".into(), spec: HostSpec::with_defaults("web1") };
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let sink: Sink = Arc::new(move |e| seen.lock().unwrap().push(e));
        let calls = fake.calls.clone();
        let d = diff_one(&t, &run(), fake, &sink).await;
        let calls = calls.lock().unwrap().clone();
        let events = events.lock().unwrap().clone();
        (d, calls, events)
    }

    fn runs(current: &str) -> crate::agent::Facts {
        let mut facts = Fake::new().facts.unwrap();
        facts.current = Some(current.into());
        facts
    }

    #[tokio::test]
    async fn a_host_that_runs_the_build_is_up_to_date_and_asked_nothing_more() {
        let mut fake = Fake::new();
        fake.facts = Ok(runs(NEW));
        let (d, calls, events) = diff(fake).await;
        assert!(d.up_to_date && d.error.is_none() && d.changes.is_none(), "{d:?}");
        assert_eq!(render(std::slice::from_ref(&d)), "web1: up to date\n");
        assert_eq!(exit(&[d]), Exit::Success);
        assert!(!calls.iter().any(|c| c.starts_with("changes")), "{calls:?}");
        assert_eq!(calls.first().map(String::as_str), Some("connect"));
        assert_eq!(&calls[calls.len() - 2..], ["drop-root", "close"], "{calls:?}");
        let building =
            Event::Output { host: "web1".into(), phase: Phase::Build, line: "building".into() };
        assert!(events.contains(&building), "the build's lines are the host's output: {events:?}");
    }

    #[tokio::test]
    async fn changes_are_shown_from_what_it_runs_to_what_was_built() {
        let mut fake = Fake::new();
        fake.changes = Ok(Changes {
            packages: vec![PackageChange {
                name: "hello".into(),
                old: Some("1.0".into()),
                new: Some("2.0".into()),
                size: None,
            }],
            units: [("restart".to_string(), vec!["web.service".to_string()])].into(),
            needs_reboot: Some(vec![]),
            ..Changes::default()
        });
        let (d, calls, _) = diff(fake).await;
        assert!(calls.contains(&format!("changes {OLD} {NEW}")), "{calls:?}");
        assert_eq!((d.current.as_deref(), d.new.as_deref()), (Some(OLD), Some(NEW)));
        assert_eq!(
            render(std::slice::from_ref(&d)),
            "web1: nixos-system-old -> nixos-system-new\n  packages: hello 1.0 -> 2.0\n  \
             units:    restart web.service\n  reboot:   not needed\n"
        );
        assert_eq!(exit(&[d]), Exit::Success);
    }

    #[tokio::test]
    async fn a_host_locked_by_another_run_is_not_built_for_and_says_by_whom() {
        let mut fake = Fake::new();
        let holder = "run 7 by bob@laptop (pid 12) since unix time 1".to_string();
        fake.lock = Err(HostError::Lock(LockError::Held { holder, run: None }));
        let (d, calls, _) = diff(fake).await;
        let e = d.error.as_deref().unwrap_or_default();
        assert!(e.contains("locked by another deploy: run 7 by bob@laptop"), "{e}");
        assert!(
            !calls.iter().any(|c| c.starts_with("build") || c.starts_with("copy")),
            "{calls:?}"
        );
        assert!(render(std::slice::from_ref(&d)).starts_with("web1: FAILED: the host is locked"));
        assert_eq!(exit(&[d]), Exit::HostsFailed);
    }

    #[tokio::test]
    async fn a_failed_build_is_the_host_s_error_with_what_nix_said() {
        let mut fake = Fake::new();
        fake.build = Err(fake::failed("nix build", "error: attribute 'web1' missing"));
        let (d, calls, _) = diff(fake).await;
        let e = d.error.as_deref().unwrap_or_default();
        assert!(e.contains("nix build") && e.contains("error: attribute 'web1' missing"), "{e}");
        assert!(!calls.iter().any(|c| c.starts_with("changes")), "{calls:?}");
        assert_eq!(d.unknowns(), [e.to_string()]);
        assert_eq!(exit(&[d]), Exit::HostsFailed);
    }

    #[tokio::test]
    async fn a_part_that_could_not_be_found_out_is_unknown_and_says_why() {
        let mut fake = Fake::new();
        let why = "switch-to-configuration dry-activate exited with 100: no space";
        let unknown = [("units".to_string(), why.to_string())].into();
        fake.changes = Ok(Changes { needs_reboot: Some(vec![]), unknown, ..Changes::default() });
        let (d, _, _) = diff(fake).await;
        assert!(d.error.is_none(), "{d:?}");
        assert_eq!(d.unknowns(), [format!("units: unknown: {why}")]);
        assert!(render(std::slice::from_ref(&d)).contains(&format!("  units:    unknown: {why}\n")));
        assert_eq!(exit(&[d]), Exit::HostsFailed);
    }

    #[tokio::test]
    async fn a_run_s_events_start_and_end_it_with_one_diff_per_host() {
        let events = Arc::new(Mutex::new(Vec::new()));
        let seen = events.clone();
        let sink: Sink = Arc::new(move |e| seen.lock().unwrap().push(e));
        let targets: Vec<Target> = ["web1", "db1"]
            .map(|n| Target { name: n.into(), spec: HostSpec::with_defaults(n) })
            .into();
        let open = |t: &Target| {
            let mut fake = Fake::new();
            if t.name == "db1" {
                fake.connect = Err(fake::timeout("ssh db1"));
            }
            fake
        };
        let all = diff_all(&targets, Arc::new(run()), &Fanout::new(1), open, &sink).await;
        assert_eq!(all.iter().map(|d| d.host.as_str()).collect::<Vec<_>>(), ["web1", "db1"]);
        assert!(all[0].error.is_none() && all[1].error.as_deref().unwrap().contains("ssh db1"));
        let events = events.lock().unwrap().clone();
        let names = vec!["web1".to_string(), "db1".to_string()];
        assert!(matches!(&events[0], Event::RunStarted { hosts, .. } if *hosts == names));
        let diffs: Vec<&Event> =
            events.iter().filter(|e| matches!(e, Event::HostDiff { .. })).collect();
        assert_eq!(diffs.len(), 2, "{events:?}");
        assert!(diffs.contains(&&all[0].event()) && diffs.contains(&&all[1].event()));
        let Some(Event::RunFinished { exit_code, reports, .. }) = events.last() else {
            panic!("{events:?}")
        };
        assert_eq!((*exit_code, reports.len()), (1, 0));
        let json = serde_json::to_value(all[0].event()).unwrap();
        assert_eq!(json["event"], "host-diff");
        assert_eq!(
            (json["host"].as_str(), json["diff"]["new"].as_str()),
            (Some("web1"), Some(NEW))
        );
    }
}
