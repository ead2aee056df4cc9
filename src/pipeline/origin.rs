//! The run's identity, made once per run: its id, who deploys, and the
//! origin each host keeps (who, which flake at which revision, which goal).

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

/// Who is deploying: shown to a concurrent deployer that finds the lock.
pub fn lock_owner(run_id: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let since = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    format!(
        "run {run_id} by {user}@{} (pid {}) since unix time {since}",
        host.trim(),
        std::process::id()
    )
}

/// [`origin`], with the flake's revision looked up once per run, beside
/// the run's first steps ([`Origin::prefetch`]) or when first needed.
pub struct Origin {
    flake: String,
    goal: String,
    text: tokio::sync::OnceCell<String>,
}

impl Origin {
    pub fn new(flake: &str, goal: super::Goal) -> Arc<Origin> {
        let (flake, goal) = (flake.to_string(), goal.as_str().to_string());
        Arc::new(Origin { flake, goal, text: tokio::sync::OnceCell::new() })
    }

    /// A known text (tests).
    pub fn fixed(text: &str) -> Arc<Origin> {
        let text = tokio::sync::OnceCell::new_with(Some(text.to_string()));
        Arc::new(Origin { flake: String::new(), goal: String::new(), text })
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
            let revision = crate::nix::flake_revision(&self.flake, 60).await;
            origin(&self.flake, revision.as_deref(), &self.goal)
        });
        text.await
    }
}

/// Who deploys from which flake, as each host keeps it (`<key> <value>`
/// lines; values on one line). The flake reference without its
/// credentials (`redact::flake_ref`).
pub fn origin(flake: &str, revision: Option<&str>, goal: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    let line = |k: &str, v: &str| format!("{k} {}\n", v.replace(['\n', '\r'], " "));
    [
        line("by", &format!("{user}@{}", host.trim())),
        line("flake", &crate::redact::flake_ref(flake)),
        line("revision", revision.unwrap_or("none")),
        line("goal", goal),
    ]
    .concat()
}

#[cfg(test)]
mod tests {
    #[test]
    fn run_ids_differ() {
        assert_ne!(super::new_run_id(), super::new_run_id());
    }
}
