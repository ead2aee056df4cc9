//! `deploy-flake status`: what every selected host runs and boots, in
//! parallel, one login each (bounded by its connect timeout), read-only:
//! nothing is installed or written on a host.

use std::sync::Arc;

use serde::Serialize;
use tokio::sync::Semaphore;

use crate::agent::{self, HostState};
use crate::select::Target;
use crate::ssh::{Destination, Ssh};

/// One host's answer, or why there is none.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Status {
    pub host: String,
    /// `None`: reachable.
    pub error: Option<String>,
    pub state: Option<HostState>,
    /// Where what the host runs, boots and was last given disagree.
    pub drift: Vec<String>,
}

/// Ask every host, at most `max_parallel` at once; in target order.
pub async fn query_all(targets: &[Target], max_parallel: usize) -> Vec<Status> {
    let permits = Arc::new(Semaphore::new(max_parallel.max(1)));
    let tasks: Vec<_> = targets
        .iter()
        .cloned()
        .map(|t| {
            let permits = permits.clone();
            tokio::spawn(async move {
                let _permit = permits.acquire_owned().await.expect("never closed");
                query(&t).await
            })
        })
        .collect();
    let mut all = Vec::with_capacity(tasks.len());
    for (task, t) in tasks.into_iter().zip(targets) {
        all.push(task.await.unwrap_or_else(|e| Status {
            host: t.name.clone(),
            error: Some(format!("internal error: {e}")),
            state: None,
            drift: Vec::new(),
        }));
    }
    all
}

async fn query(t: &Target) -> Status {
    let secs = t.spec.timeouts.connect;
    let answer = async {
        let ssh = Ssh::connect(&t.name, Destination::new(t.spec.login()))
            .await
            .map_err(|e| e.to_string())?;
        let secs = secs.saturating_add(crate::budget::REMOTE_MARGIN_SECS);
        let state = agent::status(&ssh, secs).await.map_err(|e| e.to_string());
        ssh.close().await;
        state
    };
    match answer.await {
        Ok(state) => {
            Status { host: t.name.clone(), error: None, drift: drift(&state), state: Some(state) }
        }
        Err(e) => Status { host: t.name.clone(), error: Some(e), state: None, drift: Vec::new() },
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

/// One JSON document: `{"v":1,"hosts":[...]}`.
pub fn json(all: &[Status]) -> String {
    let v = serde_json::json!({ "v": crate::events::JSON_VERSION, "hosts": all });
    format!("{v}\n")
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
}
