//! The run's identity, made once per run (in `main`): its id, who deploys
//! from which machine, the flake and the goal. The lock owner other
//! deployers are shown and the origin each host keeps (who, which flake at
//! which revision, which goal) are both written from it.

use std::sync::Arc;

/// A new id per run: names the run's state dir and units on each target.
pub fn new_run_id() -> String {
    let now =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let mut seed = [0u8; 4];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut seed);
    }
    format!("{}-{}-{:08x}", now.as_secs(), std::process::id(), u32::from_le_bytes(seed))
}

/// This machine's host name (`gethostname`, on every Unix), or `unknown`.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at
    // most that many bytes.
    let ok = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) } == 0;
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    match String::from_utf8_lossy(&buf[..end]).trim() {
        name if ok && !name.is_empty() => name.to_string(),
        _ => "unknown".into(),
    }
}

/// Who runs what, once per run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub run_id: String,
    /// `$USER` here.
    pub user: String,
    /// This machine's host name.
    pub host: String,
    pub pid: u32,
    /// When the run started (Unix seconds).
    pub since: u64,
    /// The flake reference as given (credentials and all: never written
    /// as is).
    pub flake: String,
    /// What the run does: the goal's wire word, or the subcommand.
    pub goal: String,
}

impl Identity {
    /// This run's, from here and now.
    pub fn new(flake: &str, goal: &str) -> Arc<Identity> {
        let since = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        Arc::new(Identity {
            run_id: new_run_id(),
            user: std::env::var("USER").unwrap_or_else(|_| "unknown".into()),
            host: host_name(),
            pid: std::process::id(),
            since,
            flake: flake.to_string(),
            goal: goal.to_string(),
        })
    }

    /// The same, for a run of its own within this one (`--ask`'s diff):
    /// its id is this run's with `suffix`.
    pub fn part(&self, suffix: &str, goal: &str) -> Arc<Identity> {
        let run_id = format!("{}-{suffix}", self.run_id);
        Arc::new(Identity { run_id, goal: goal.to_string(), ..self.clone() })
    }

    /// Who is deploying: shown to a concurrent deployer that finds the lock.
    pub fn lock_owner(&self) -> String {
        let Identity { run_id, user, host, pid, since, .. } = self;
        format!("run {run_id} by {user}@{host} (pid {pid}) since unix time {since}")
    }

    /// Who deploys from which flake at which revision, as each host keeps
    /// it (`<key> <value>` lines; values on one line). The flake reference
    /// without its credentials (`redact::flake_ref`).
    pub fn origin(&self, revision: Option<&str>) -> String {
        let mut lines = self.lines();
        lines.insert(2, line("revision", revision.unwrap_or("none")));
        lines.concat()
    }

    /// The same without a revision (none was looked up: `keys`).
    pub fn origin_unrevised(&self) -> String {
        self.lines().concat()
    }

    fn lines(&self) -> Vec<String> {
        vec![
            line("by", &format!("{}@{}", self.user, self.host)),
            line("flake", &crate::redact::flake_ref(&self.flake)),
            line("goal", &self.goal),
        ]
    }
}

fn line(key: &str, value: &str) -> String {
    format!("{key} {}\n", value.replace(['\n', '\r'], " "))
}

/// The origin of a run, with the flake's revision looked up once per run,
/// beside the run's first steps ([`Origin::prefetch`]) or when first
/// needed.
pub struct Origin {
    identity: Option<Arc<Identity>>,
    text: tokio::sync::OnceCell<String>,
}

impl Origin {
    pub fn new(identity: Arc<Identity>) -> Arc<Origin> {
        Arc::new(Origin { identity: Some(identity), text: tokio::sync::OnceCell::new() })
    }

    /// A known text (tests).
    pub fn fixed(text: &str) -> Arc<Origin> {
        let text = tokio::sync::OnceCell::new_with(Some(text.to_string()));
        Arc::new(Origin { identity: None, text })
    }

    /// Look the revision up now, in the background.
    pub fn prefetch(self: &Arc<Self>) {
        let origin = self.clone();
        tokio::spawn(async move {
            origin.get().await;
        });
    }

    pub async fn get(&self) -> &str {
        let text = self.text.get_or_init(|| async {
            let Some(id) = &self.identity else { return String::new() };
            let revision = crate::nix::flake_revision(&id.flake, 60).await;
            id.origin(revision.as_deref())
        });
        text.await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_differ() {
        assert_ne!(new_run_id(), new_run_id());
    }

    #[test]
    fn the_lock_owner_and_the_origin_come_from_one_identity() {
        let id = Identity {
            run_id: "1-2-ab".into(),
            user: "alice".into(),
            host: "laptop".into(),
            pid: 42,
            since: 1700000000,
            flake: "git+https://alice:secret@example.org/f".into(),
            goal: "switch".into(),
        };
        assert_eq!(
            id.lock_owner(),
            "run 1-2-ab by alice@laptop (pid 42) since unix time 1700000000"
        );
        let origin = id.origin(Some("abc"));
        assert_eq!(
            origin,
            format!(
                "by alice@laptop\nflake {}\nrevision abc\ngoal switch\n",
                crate::redact::flake_ref("git+https://alice:secret@example.org/f")
            )
        );
        assert!(!origin.contains("secret"), "{origin}");
        assert_eq!(id.origin(None).lines().nth(2), Some("revision none"));
        assert!(!id.origin_unrevised().contains("revision"));
        let diff = id.part("diff", "diff");
        assert_eq!((diff.run_id.as_str(), diff.goal.as_str()), ("1-2-ab-diff", "diff"));
    }

    #[test]
    fn the_host_name_is_this_machine_s() {
        let name = host_name();
        let uname = std::process::Command::new("uname").arg("-n").output().unwrap();
        assert_eq!(name, String::from_utf8_lossy(&uname.stdout).trim());
    }
}
