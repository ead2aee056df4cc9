//! `deploy-flake keys [HOSTS]`: write every selected host's keys now (after
//! a reboot emptied /run/keys), under the host lock, each atomically; no
//! system changes. With `--dry-run`, list them (name, file, owner, mode),
//! never their content.

use std::sync::Arc;

use serde::Serialize;

pub use crate::events::Listed;
use crate::fanout::Fanout;
use crate::fleet::KeySpec;
use crate::host::{Host, HostError, Shared, SshHost};
use crate::select::Target;
use crate::ssh::Destination;

impl Listed {
    pub fn of(spec: &KeySpec) -> Listed {
        Listed {
            name: spec.name.clone(),
            path: spec.path(),
            user: spec.user.clone(),
            group: spec.group.clone(),
            permissions: spec.permissions.clone(),
            upload_at: spec.upload_at.as_str(),
        }
    }
}

/// What `deploy-flake keys` did to one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostKeys {
    pub host: String,
    pub keys: Vec<Listed>,
    /// Written (false with --dry-run, or when it failed).
    pub written: bool,
    pub error: Option<String>,
}

/// The run: who holds the locks, the run's id.
pub struct Run {
    pub run_id: String,
    pub owner: String,
    pub origin: String,
}

/// Every host's keys, listed (`--dry-run`).
pub fn list(targets: &[Target]) -> Vec<HostKeys> {
    targets.iter().map(|t| listed(t, false, None)).collect()
}

fn listed(t: &Target, written: bool, error: Option<String>) -> HostKeys {
    let keys = t.spec.keys.values().map(Listed::of).collect();
    HostKeys { host: t.name.clone(), keys, written, error }
}

/// Write the keys of every host that has some (through the run's
/// fan-out); in target order.
pub async fn upload_all(targets: &[Target], run: Arc<Run>, fanout: &Fanout) -> Vec<HostKeys> {
    let shared = Arc::new(Shared::default());
    let done = fanout
        .each(targets.to_vec(), move |t: Target| {
            let (shared, run) = (shared.clone(), run.clone());
            async move {
                if t.spec.keys.is_empty() {
                    return listed(&t, false, None);
                }
                let dest = Destination::new(t.spec.login());
                let mut host = SshHost::new(&t.name, dest, &run.run_id, shared);
                let done = upload_one(&t, &run, &mut host).await;
                host.close().await;
                match done {
                    Ok(()) => listed(&t, true, None),
                    Err(e) => listed(&t, false, Some(e)),
                }
            }
        })
        .await;
    let failed = |(d, t): (Result<HostKeys, _>, &Target)| {
        d.unwrap_or_else(|p: crate::fanout::Panicked| listed(t, false, Some(p.to_string())))
    };
    done.into_iter().zip(targets).map(failed).collect()
}

async fn upload_one(t: &Target, run: &Run, host: &mut SshHost) -> Result<(), String> {
    let s = &t.spec;
    let loaded = host.read_keys(&s.keys).await.map_err(|e| format!("{e}; nothing was written"))?;
    let locked = async {
        host.connect().await?;
        host.lock(&run.owner, &run.origin, None, s.timeouts.lock).await?;
        let secs = s.timeouts.activate.min(120);
        host.upload_keys(&loaded, secs, &mut |l| tracing::info!("{}: {l}", t.name)).await?;
        Ok::<_, HostError>(())
    };
    locked.await.map_err(|e| e.to_string())
}

/// A line per key of each host, then whether it was written.
pub fn render(all: &[HostKeys], dry_run: bool) -> String {
    let mut out = String::new();
    for h in all {
        let state = match (&h.error, h.written, dry_run) {
            (_, _, _) if h.keys.is_empty() => "no keys".to_string(),
            (Some(e), _, _) => {
                // What the host said is shown escaped, never raw.
                format!("FAILED: {}", crate::report::safe::text(e).replace('\n', "\n    "))
            }
            (None, true, _) => format!("wrote {} key(s)", h.keys.len()),
            (None, false, _) => format!("{} key(s)", h.keys.len()),
        };
        out.push_str(&format!("{}: {state}\n", h.host));
        for k in &h.keys {
            out.push_str(&format!(
                "  {} -> {} ({}:{} {}, {})\n",
                k.name, k.path, k.user, k.group, k.permissions, k.upload_at
            ));
        }
    }
    out
}

/// One JSON document: `{"v":1,"hosts":[...]}`.
pub fn json(all: &[HostKeys]) -> String {
    let v = serde_json::json!({ "v": crate::events::JSON_VERSION, "hosts": all });
    format!("{v}\n")
}
