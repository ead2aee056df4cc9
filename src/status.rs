//! `deploy-flake status`: what every selected host runs and boots, in
//! parallel (the run's fan-out), one login each (bounded by its connect
//! timeout), read-only: nothing is installed or written on a host. It talks
//! to a host through [`Host`] and emits the events of a run: `run-started`,
//! one `host-status` per host, `run-finished` with the exit code.

use std::sync::Arc;

use crate::agent::HostState;
pub use crate::events::Status;
use crate::events::{Event, Sink};
use crate::exit::Exit;
use crate::fanout::{Fanout, Look};
use crate::host::Host;
use crate::select::Target;

impl Look for Status {
    /// Its `host-status` event.
    fn event(&self) -> Event {
        Event::HostStatus { host: self.host.clone(), status: self.clone() }
    }

    fn failed(host: &str, error: String) -> Status {
        Status { host: host.into(), error: Some(error), state: None, drift: Vec::new() }
    }

    fn exit(all: &[Status]) -> Exit {
        exit(all)
    }
}

/// 0 when every host answered, 1 otherwise.
pub fn exit(all: &[Status]) -> Exit {
    match all.iter().all(|s| s.error.is_none()) {
        true => Exit::Success,
        false => Exit::HostsFailed,
    }
}

/// Ask every host (through the run's fan-out; `open` gives the host of a
/// target), with the run's events to `sink`; in target order.
pub async fn query_all<H: Host + 'static>(
    targets: &[Target],
    run_id: &str,
    fanout: &Fanout,
    open: impl Fn(&Target) -> H + Send + Sync + 'static,
    sink: &Sink,
) -> Vec<Status> {
    let open = Arc::new(open);
    let job = move |t: Target| {
        let open = open.clone();
        async move { query(&t, open(&t)).await }
    };
    fanout.look(run_id, targets, sink, job).await
}

/// One host's answer, through `host` (which is closed after).
pub async fn query<H: Host>(t: &Target, mut host: H) -> Status {
    let secs = t.spec.timeouts.connect.saturating_add(crate::budget::REMOTE_MARGIN_SECS);
    let answer = match host.connect().await {
        Ok(()) => host.status(secs).await,
        Err(e) => Err(e),
    };
    host.close().await;
    match answer {
        Ok(state) => {
            Status { host: t.name.clone(), error: None, drift: drift(&state), state: Some(state) }
        }
        Err(e) => Status::failed(&t.name, e.to_string()),
    }
}

/// Where a host's systems disagree. Pure.
pub fn drift(s: &HostState) -> Vec<String> {
    let mut d = Vec::new();
    if s.current.is_some() && s.current != s.profile {
        d.push(format!("runs {} but boots {}", short(&s.current), short(&s.profile)));
    }
    if let Some(entry) = s.default_entry.as_ref().filter(|e| s.profile.as_ref() != Some(*e)) {
        d.push(format!(
            "its system profile points at {}, but the bootloader's default entry boots {}",
            short(&s.profile),
            short(&Some(entry.clone()))
        ));
    }
    if let Some((system, run)) =
        s.last_deployed().filter(|(sys, _)| Some(*sys) != s.current.as_deref())
    {
        d.push(format!(
            "runs {}, not what run {run} deployed ({})",
            short(&s.current),
            short(&Some(system.to_string()))
        ));
    }
    if let Some(parts) = s.needs_reboot.as_ref().filter(|p| !p.is_empty()) {
        d.push(format!("needs a reboot to run what it boots ({} changed)", parts.join(", ")));
    }
    d
}

/// `nixos-system-web1-24.11 (abcd1234)` for a store path; `-` for none.
fn short(p: &Option<String>) -> String {
    let Some(p) = p else { return "-".into() };
    let name = p.strip_prefix("/nix/store/").unwrap_or(p);
    match name.split_once('-') {
        Some((hash, rest)) if hash.len() == 32 => format!("{rest} ({})", &hash[..8]),
        _ => name.to_string(),
    }
}

/// A table, then the drift of each host that has some.
pub fn render(all: &[Status]) -> String {
    let mut rows =
        vec![["HOST", "STATE", "RUNNING", "BOOTS", "FAILED", "LOCK", "LAST DEPLOY"]
            .map(String::from)];
    for s in all {
        rows.push(match (&s.error, &s.state) {
            (Some(e), _) => [
                s.host.clone(),
                "unreachable".into(),
                first_line(e),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
            (None, Some(st)) => row(&s.host, st),
            (None, None) => [
                s.host.clone(),
                "?".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
            ],
        });
    }
    let mut out = crate::table::table(&rows);
    for s in all.iter().filter(|s| !s.drift.is_empty()) {
        for d in &s.drift {
            out.push_str(&format!("{}: {d}\n", s.host));
        }
    }
    out
}

fn row(host: &str, st: &HostState) -> [String; 7] {
    let boots = if st.profile == st.current { "same".to_string() } else { short(&st.profile) };
    let failed =
        if st.failed_units.is_empty() { "-".to_string() } else { st.failed_units.join(",") };
    let lock = st
        .lock
        .as_deref()
        .map_or("-".to_string(), |l| l.split(" (pid").next().unwrap_or(l).to_string());
    let last = match (st.last.outcome, st.last.get("when")) {
        (Some(o), Some(w)) => format!("{o} {} by {}", utc(w), st.last.get("by").unwrap_or("?")),
        _ => "-".into(),
    };
    [host.to_string(), st.state.to_string(), short(&st.current), boots, failed, lock, last]
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or("").to_string()
}

/// Unix seconds as `2026-11-27 17:40Z`.
fn utc(secs: &str) -> String {
    let Ok(t) = secs.parse::<i64>() else { return secs.to_string() };
    let (days, rem) = (t.div_euclid(86_400), t.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y}-{m:02}-{d:02} {:02}:{:02}Z", rem / 3600, rem % 3600 / 60)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::LastOutcome;

    fn state(current: &str, profile: &str) -> HostState {
        HostState {
            current: Some(current.into()),
            profile: Some(profile.into()),
            state: crate::agent::SystemState::Running,
            ..HostState::default()
        }
    }

    const A: &str = "/nix/store/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa-nixos-system-a";
    const B: &str = "/nix/store/bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb-nixos-system-b";

    #[test]
    fn drift_names_what_disagrees() {
        assert!(drift(&state(A, A)).is_empty());
        assert_eq!(
            drift(&state(A, B)),
            ["runs nixos-system-a (aaaaaaaa) but boots nixos-system-b (bbbbbbbb)"]
        );
        let mut s = state(A, A);
        s.last.outcome = Some(LastOutcome::Deployed);
        s.last.fields = [("system", B), ("run", "7")].map(|(k, v)| (k.into(), v.into())).into();
        assert_eq!(
            drift(&s),
            ["runs nixos-system-a (aaaaaaaa), not what run 7 deployed (nixos-system-b (bbbbbbbb))"]
        );
        s.last.outcome = Some(LastOutcome::RolledBack);
        assert!(drift(&s).is_empty(), "a rolled-back run deployed nothing");
        let mut s = state(A, A);
        s.needs_reboot = Some(vec!["kernel".into()]);
        assert_eq!(drift(&s), ["needs a reboot to run what it boots (kernel changed)"]);
        let mut s = state(A, A);
        s.default_entry = Some(B.into());
        assert_eq!(
            drift(&s),
            ["its system profile points at nixos-system-a (aaaaaaaa), but the bootloader's default entry boots nixos-system-b (bbbbbbbb)"]
        );
        s.default_entry = Some(A.into());
        assert!(drift(&s).is_empty());
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(utc("0"), "1970-01-01 00:00Z");
        assert_eq!(utc("1795800000"), "2026-11-27 17:20Z");
    }

    /// `status` against the fake host: one host, through [`query`].
    async fn ask(fake: crate::pipeline::fake::Fake) -> (Status, Vec<String>) {
        use crate::fleet::HostSpec;
        let t = Target { name: "web1".into(), spec: HostSpec::with_defaults("web1") };
        let calls = fake.calls.clone();
        let status = query(&t, fake).await;
        let calls = calls.lock().unwrap().clone();
        (status, calls)
    }

    #[tokio::test]
    async fn a_host_s_answer_is_its_row() {
        let mut fake = crate::pipeline::fake::Fake::new();
        let mut st = state(A, A);
        st.failed_units = vec!["web.service".into()];
        st.lock = Some("run 7 by bob@laptop (pid 12) since unix time 1".into());
        fake.status = Ok(st.clone());
        let (s, calls) = ask(fake).await;
        assert_eq!(s, Status { host: "web1".into(), error: None, state: Some(st), drift: vec![] });
        assert_eq!(
            calls,
            ["connect", "host-state", "close"],
            "read-only: no lock, nothing installed"
        );
        let text = render(std::slice::from_ref(&s));
        let row = text.lines().nth(1).unwrap();
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(
            cells,
            [
                "web1",
                "running",
                "nixos-system-a",
                "(aaaaaaaa)",
                "same",
                "web.service",
                "run",
                "7",
                "by",
                "bob@laptop",
                "-"
            ]
        );
        assert_eq!(exit(&[s]), Exit::Success);
    }

    #[tokio::test]
    async fn an_unreachable_host_says_why_and_is_not_asked() {
        let mut fake = crate::pipeline::fake::Fake::new();
        fake.connect = Err(crate::pipeline::fake::timeout("ssh web1"));
        let (s, calls) = ask(fake).await;
        let e = s.error.clone().unwrap_or_default();
        assert!(e.contains("ssh web1") && e.contains("5"), "{e}");
        assert_eq!((s.state.as_ref(), s.drift.len()), (None, 0));
        assert_eq!(calls, ["connect", "close"]);
        let text = render(std::slice::from_ref(&s));
        assert!(text.lines().nth(1).unwrap().starts_with("web1  unreachable  "), "{text}");
        assert_eq!(exit(&[s]), Exit::HostsFailed);
    }

    #[tokio::test]
    async fn a_host_that_boots_another_system_than_it_runs_drifts() {
        let mut fake = crate::pipeline::fake::Fake::new();
        fake.status = Ok(state(A, B));
        let (s, _) = ask(fake).await;
        let says = "runs nixos-system-a (aaaaaaaa) but boots nixos-system-b (bbbbbbbb)";
        assert_eq!(s.drift, [says]);
        assert!(render(std::slice::from_ref(&s)).ends_with(&format!("web1: {says}\n")));
        // Drift is said, but the host answered.
        assert_eq!(exit(std::slice::from_ref(&s)), Exit::Success);
        let json = serde_json::to_value(s.event()).unwrap();
        assert_eq!(json["event"], "host-status");
        let object = serde_json::to_value(&s).unwrap();
        assert!(json.as_object().unwrap().values().any(|v| *v == object), "{json}");
        assert_eq!(object["drift"][0], says);
    }
}
