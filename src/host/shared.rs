//! What the hosts of a run share, done once per run however many hosts
//! need it: the flake archived (and its store paths exported, to stream to
//! each target over its own connection), each configuration built here,
//! and how much CPU-heavy work (key exchanges, local Nix) runs at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use tokio::sync::{OnceCell, Semaphore, SemaphorePermit};

use super::{HostError, HostResult};
use crate::fleet::KeySpec;
use crate::keys::{self, KeyError, Loaded};
use crate::nix::{self, Archive, StorePath};
use crate::process::{Lines, ProcessError, Spawner};
use crate::redact;
use crate::secret::Secret;

type Once<T> = Arc<OnceCell<HostResult<T>>>;
type KeyOnce = Arc<OnceCell<Result<Arc<Secret>, KeyError>>>;

/// The run's shared work.
pub struct Shared {
    /// The archive, and what `nix flake archive` said (each host shows it).
    archive: OnceCell<(HostResult<Archive>, Vec<String>)>,
    /// Store path -> the length of its part of its export file.
    exports: Mutex<HashMap<StorePath, Once<u64>>>,
    /// Configuration -> the system built here.
    builds: Mutex<HashMap<String, Once<StorePath>>>,
    /// A key's source -> its content, read once per run.
    keys: Mutex<HashMap<keys::Source, KeyOnce>>,
    /// Export files and GC roots of local builds, for the run's lifetime.
    dir: OnceLock<Result<tempfile::TempDir, String>>,
    cpu: Semaphore,
    /// Systems got from elsewhere: build hosts, caches, this machine's store.
    pub elsewhere: crate::build::Registry,
}

impl Default for Shared {
    fn default() -> Shared {
        // Key exchanges and local Nix processes are CPU-bound: run at most
        // about two per core at once, whatever --max-parallel says, so that
        // a busy deployer stays responsive (its heartbeats, its fresh logins).
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        Shared {
            archive: OnceCell::new(),
            exports: Mutex::default(),
            builds: Mutex::default(),
            keys: Mutex::default(),
            dir: OnceLock::new(),
            cpu: Semaphore::new((2 * cores).max(2)),
            elsewhere: crate::build::Registry::default(),
        }
    }
}

/// The entry of `key` in a map of once-cells (created on first use).
fn once<K: std::hash::Hash + Eq + Clone, T>(
    map: &Mutex<HashMap<K, Arc<OnceCell<T>>>>,
    key: &K,
) -> Arc<OnceCell<T>> {
    let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
    map.entry(key.clone()).or_default().clone()
}

impl Shared {
    /// Wait for a slot of CPU-heavy work.
    pub async fn cpu(&self) -> SemaphorePermit<'_> {
        self.cpu.acquire().await.expect("the semaphore is never closed")
    }

    fn dir(&self) -> HostResult<&std::path::Path> {
        let dir = self.dir.get_or_init(|| {
            let made = tempfile::Builder::new().prefix("deploy-flake-run.").tempdir();
            made.map_err(|e| format!("creating a directory for the run: {e}"))
        });
        dir.as_ref().map(|d| d.path()).map_err(|e| HostError::Unexpected(e.clone()))
    }

    /// The flake and its inputs in this machine's store, archived once.
    pub async fn archive(&self, flake: &str, secs: u64, out: Lines<'_>) -> HostResult<Archive> {
        self.archive_once(flake, secs, false, out).await
    }

    async fn archive_once(
        &self,
        flake: &str,
        secs: u64,
        ahead: bool,
        out: Lines<'_>,
    ) -> HostResult<Archive> {
        let (archived, said) = self
            .archive
            .get_or_init(|| async {
                let _slot = self.cpu().await;
                let mut said = Vec::new();
                let mut keep = |l: &str| {
                    let l = redact::scrub(l, flake);
                    tracing::debug!("nix flake archive: {l}");
                    said.push(l)
                };
                let archived = nix::archive(flake, secs, ahead, &mut keep).await;
                (archived.map_err(|e| scrubbed(e.into(), flake)), said)
            })
            .await;
        said.iter().for_each(|l| out(l));
        archived.clone()
    }

    /// Start archiving the flake now, beside the hosts' first steps (their
    /// connection, lock and preflight), and export its own source, which a
    /// change makes new to every target: at a lower CPU priority than the
    /// hosts' key exchanges, which are waited for now. The hosts' copies
    /// then find both done, or wait for them.
    pub fn prefetch(self: &Arc<Self>, flake: &str, secs: u64) {
        let (shared, flake) = (self.clone(), flake.to_string());
        tokio::spawn(async move {
            if let Ok(archive) = shared.archive_once(&flake, secs, true, &mut |_| {}).await {
                let _ = shared.export_once(&archive.source, secs, true).await;
            }
        });
    }

    /// Ask which paths of the archive the store behind `on` lacks, and
    /// stream just those over its connection into `nix-store --import`: no
    /// local process per host, no new login, no signature needed.
    pub async fn upload(
        &self,
        on: &impl Spawner,
        to: &str,
        archive: &Archive,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<()> {
        let missing = nix::missing(on, &archive.paths, secs).await?;
        if missing.is_empty() {
            out(&format!("{to} has all {} paths already", archive.paths.len()));
            return Ok(());
        }
        let mut parts = Vec::with_capacity(missing.len());
        for path in &missing {
            parts.push(self.export(path, secs).await?);
        }
        out(&format!("copying {} of {} paths to {to}", missing.len(), archive.paths.len()));
        Ok(nix::import(on, parts, secs, out).await?)
    }

    /// The export file of `path` and the length of its part (once per run).
    pub async fn export(&self, path: &StorePath, secs: u64) -> HostResult<(PathBuf, u64)> {
        self.export_once(path, secs, false).await
    }

    async fn export_once(
        &self,
        path: &StorePath,
        secs: u64,
        ahead: bool,
    ) -> HostResult<(PathBuf, u64)> {
        let file = self.dir()?.join(format!("{}.export", path.name()));
        let cell = once(&self.exports, path);
        let len = cell
            .get_or_init(|| async {
                let _slot = self.cpu().await;
                nix::export(path, &file, secs, ahead).await.map_err(HostError::from)
            })
            .await
            .clone()?;
        Ok((file, len))
    }

    /// A host's keys with their content: each source read once per run
    /// (the first host to need it reads it, the others wait for it).
    pub async fn keys(
        &self,
        specs: &std::collections::BTreeMap<String, KeySpec>,
    ) -> Result<Vec<Loaded>, KeyError> {
        let mut loaded = Vec::with_capacity(specs.len());
        for spec in specs.values() {
            let content = match (keys::Source::of(spec), &spec.text) {
                (Some(source), _) => {
                    let cell = once(&self.keys, &source);
                    let read = cell.get_or_init(|| async { source.read(&spec.name).await });
                    read.await.clone()?
                }
                (None, text) => Arc::new(text.clone().unwrap_or_default()),
            };
            loaded.push(Loaded { spec: spec.clone(), content });
        }
        Ok(loaded)
    }

    /// A configuration built here, once however many hosts deploy it; its
    /// GC root lives as long as the run.
    pub async fn build(
        &self,
        flake: &str,
        configuration: &str,
        secs: u64,
        out: Lines<'_>,
    ) -> HostResult<StorePath> {
        use sha2::Digest;
        let key: String = sha2::Sha256::digest(configuration)
            .iter()
            .take(8)
            .map(|b| format!("{b:02x}"))
            .collect();
        let root = self.dir()?.join(format!("build-{key}"));
        let cell = once(&self.builds, &configuration.to_string());
        let built = cell.get_or_init(|| async {
            let _slot = self.cpu().await;
            let installable = nix::toplevel_installable(flake, configuration);
            let local = crate::process::Local;
            let root = root.display().to_string();
            let mut said = |l: &str| out(&redact::scrub(l, flake));
            let built = nix::build(&local, &installable, &root, secs, &mut said).await;
            built.map_err(|e| scrubbed(e.into(), flake))
        });
        built.await.clone()
    }
}

/// What a local Nix command said about `flake` (its output, the tail of
/// its error), without the reference's credentials (`redact::scrub`).
fn scrubbed(e: HostError, flake: &str) -> HostError {
    match e {
        HostError::Process(ProcessError::Failed { cmd, place, exit, tail }) => {
            let tail = redact::scrub(&tail, flake);
            HostError::Process(ProcessError::Failed { cmd, place, exit, tail })
        }
        HostError::Unexpected(m) => HostError::Unexpected(redact::scrub(&m, flake)),
        e => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fleet::UploadAt;
    use crate::process::{Exit, Place};

    fn spec(name: &str, argv: &[&str]) -> KeySpec {
        KeySpec {
            name: name.into(),
            text: None,
            key_file: None,
            key_command: Some(argv.iter().map(|s| s.to_string()).collect()),
            dest_dir: "/run/keys".into(),
            user: "root".into(),
            group: "root".into(),
            permissions: "0600".into(),
            upload_at: UploadAt::PreActivation,
        }
    }

    /// However many hosts use a key (and however many at once), its command
    /// runs once per run.
    #[tokio::test]
    async fn each_key_is_read_once_per_run() {
        let dir = tempfile::tempdir().unwrap();
        let count = dir.path().join("count");
        let script = format!("echo x >> {}; printf secret", count.display());
        let shared = Arc::new(Shared::default());
        let specs: std::collections::BTreeMap<String, KeySpec> =
            [("db".to_string(), spec("db", &["sh", "-c", &script]))].into();
        let hosts = (0..8).map(|_| {
            let (shared, specs) = (shared.clone(), specs.clone());
            tokio::spawn(async move { shared.keys(&specs).await })
        });
        for h in hosts.collect::<Vec<_>>() {
            let loaded = h.await.unwrap().unwrap();
            assert_eq!(loaded[0].content.as_bytes(), b"secret");
        }
        assert_eq!(std::fs::read_to_string(&count).unwrap(), "x\n");
        // A failing one fails every host that uses it, read once too.
        let failing: std::collections::BTreeMap<String, KeySpec> = [(
            "f".to_string(),
            spec("f", &["sh", "-c", &format!("echo y >> {}; exit 1", count.display())]),
        )]
        .into();
        assert!(shared.keys(&failing).await.is_err());
        assert!(shared.keys(&failing).await.is_err());
        assert_eq!(std::fs::read_to_string(&count).unwrap(), "x\ny\n");
    }

    #[test]
    fn what_nix_says_of_a_flake_loses_its_credentials() {
        let flake = "git+https://oauth2:TOKEN@git.example.com/fleet";
        let tail =
            "error: unable to download 'https://oauth2:TOKEN@git.example.com/fleet': 401".into();
        let e = HostError::Process(ProcessError::Failed {
            cmd: "nix".into(),
            place: Place::Local,
            exit: Exit::Code(1),
            tail,
        });
        let shown = scrubbed(e, flake).to_string();
        assert!(
            !shown.contains("TOKEN") && shown.contains("https://***@git.example.com"),
            "{shown}"
        );
    }
}
