//! A build host: one ssh master per run, the flake's source imported once,
//! each configuration evaluated and built once however many hosts deploy
//! it, and at most its capacity of builds at once (its core count unless
//! `buildHostCapacity` says otherwise). Nix on the build host runs as its
//! own configuration says: its remote builders (`builders`, `machines`)
//! take the builds it hands them. The run's GC roots there live in a
//! root-only directory of their own, removed when the run ends.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};

use tokio::sync::{OnceCell, Semaphore};

use super::{BuildError, BuildHostSpec};
use crate::events::Reason;
use crate::nix::{self, StorePath};
use crate::process::{self, Cmd, Lines, ProcessError, Script};
use crate::ssh::{Ssh, SshError};

/// A live connection to a build host.
pub struct Conn {
    pub ssh: Ssh,
    /// The run's directory of GC roots there.
    roots: String,
    /// One permit per build that may run at once.
    slots: Semaphore,
}

/// A configuration's build: its result, and the host whose deploy ran it
/// (its output and its full error went to that host).
#[derive(Clone)]
struct Built {
    result: Result<StorePath, BuildError>,
    by: String,
}

/// A build host of the run.
pub struct BuildHost {
    spec: BuildHostSpec,
    conn: OnceCell<Result<Arc<Conn>, BuildError>>,
    source: OnceCell<Result<(), BuildError>>,
    builds: Mutex<HashMap<String, Arc<OnceCell<Built>>>>,
}

/// Makes the run's root-only directory of GC roots, then says the core count.
const PREPARE: Script = Script(
    r#"d=$(umask 077 && mktemp -d "${TMPDIR:-/tmp}/deploy-flake-build.XXXXXXXX") || exit 1
echo "$d"
nproc 2>/dev/null || getconf _NPROCESSORS_ONLN 2>/dev/null || echo 1"#,
);

impl BuildHost {
    pub fn new(spec: BuildHostSpec) -> BuildHost {
        BuildHost { spec, conn: OnceCell::new(), source: OnceCell::new(), builds: Mutex::default() }
    }

    /// `build host NAME (user@host:port)`, for messages (the address once
    /// when the name is it).
    pub fn label(&self) -> String {
        match self.spec.dest.display() {
            shown if shown == self.spec.word => format!("build host {shown}"),
            shown => format!("build host {} ({shown})", self.spec.word),
        }
    }

    /// Connect (once per run; every host that needs it shares the outcome).
    pub async fn connect(&self) -> Result<Arc<Conn>, BuildError> {
        let conn = self.conn.get_or_init(|| async {
            let unreachable = |e: String| {
                BuildError::new(
                    Reason::BuildHost,
                    format!(
                        "{}: {e}; nothing was changed on the hosts that need it (a build \
                         host's address is buildHost or --build-host, its ssh options \
                         buildHostSshOpts, or those of the fleet's host it names)",
                        self.label()
                    ),
                )
            };
            let name = format!("build host {}", self.spec.word);
            let ssh = Ssh::connect(&name, self.spec.dest.clone())
                .await
                .map_err(|e: SshError| unreachable(e.to_string()))?;
            let cmd = Cmd::script(PREPARE, Vec::<String>::new()).secs(30).quiet_stdout();
            let out = process::run(&ssh, &cmd, None).await.and_then(|o| o.check());
            let out = out.map_err(|e| unreachable(e.to_string()))?;
            let mut lines = out.stdout.lines();
            let roots = lines.next().unwrap_or_default().trim().to_string();
            if !roots.starts_with('/') {
                return Err(unreachable(format!("mktemp printed {roots:?}")));
            }
            let cores = lines.next().and_then(|l| l.trim().parse::<u32>().ok()).unwrap_or(1);
            let capacity = if self.spec.capacity > 0 { self.spec.capacity } else { cores };
            tracing::debug!("{}: {capacity} build(s) at once", self.label());
            Ok(Arc::new(Conn { ssh, roots, slots: Semaphore::new(capacity.max(1) as usize) }))
        });
        conn.await.clone()
    }

    /// Bring the flake's source to the build host, once per run: `upload`
    /// does it (over the connection); it is not run when done already.
    pub async fn with_source<F>(&self, upload: F) -> Result<(), BuildError>
    where
        F: Future<Output = Result<(), String>>,
    {
        let done = self.source.get_or_init(|| async {
            upload.await.map_err(|e| {
                let msg = format!("copying the flake to {}: {e}", self.label());
                BuildError::new(Reason::BuildHost, msg)
            })
        });
        done.await.clone()
    }

    /// Build `configuration` (its `installable` on the build host), once
    /// per run: the first host to ask (`by`) runs it and sees its output;
    /// the others get its result, or a failure that names that host.
    pub async fn build(
        &self,
        conn: &Conn,
        by: &str,
        configuration: &str,
        installable: &str,
        secs: u64,
        out: Lines<'_>,
    ) -> Result<StorePath, BuildError> {
        let cell = {
            let mut builds = self.builds.lock().unwrap_or_else(|e| e.into_inner());
            builds.entry(configuration.to_string()).or_default().clone()
        };
        let built = cell
            .get_or_init(|| async {
                let _slot = conn.slots.acquire().await.expect("the semaphore is never closed");
                let root = format!("{}/{}", conn.roots, root_name(configuration));
                let built = nix::build(&conn.ssh, installable, &root, secs, out).await;
                let result = built.map_err(|e| self.failed(configuration, e));
                Built { result, by: by.to_string() }
            })
            .await
            .clone();
        match built.result {
            Err(e) if built.by != by => Err(BuildError::new(
                e.reason,
                format!(
                    "building configuration `{configuration}` on {} failed (reported with host {})",
                    self.label(),
                    built.by
                ),
            )),
            result => result,
        }
    }

    /// A failed build: the build's own fault (`build`), its timeout, or
    /// the build host's (`build-host`: the connection, a command missing).
    fn failed(&self, configuration: &str, e: nix::NixError) -> BuildError {
        let reason = match &e {
            nix::NixError::Process(ProcessError::Failed { .. }) => Reason::Build,
            nix::NixError::Process(ProcessError::Timeout { .. }) => Reason::Timeout,
            nix::NixError::Unexpected(_) => Reason::Build,
            _ => Reason::BuildHost,
        };
        let what = format!("building configuration `{configuration}` on {}", self.label());
        BuildError::new(reason, format!("{what}: {e}"))
    }

    /// Remove the run's GC roots and close the connection.
    pub async fn close(&self) {
        if let Some(Ok(conn)) = self.conn.get() {
            let rm = Cmd::new(["rm", "-rf", "--", conn.roots.as_str()]).secs(30);
            if let Err(e) = process::run(&conn.ssh, &rm, None).await.and_then(|o| o.check()) {
                tracing::warn!("{}: removing the run's GC roots: {e}", self.label());
            }
        }
    }
}

/// A GC root's file name for a configuration: its hash (any name is safe).
fn root_name(configuration: &str) -> String {
    use sha2::Digest;
    let hash = sha2::Sha256::digest(configuration);
    hash.iter().take(8).map(|b| format!("{b:02x}")).collect()
}
