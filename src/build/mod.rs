//! Where a host's system is built, and how its closure reaches the host.
//!
//! Four set-ups: the host builds it itself (`buildOn = "target"`, the
//! pipeline's own copy and build); this machine builds it (`"local"`); a
//! build host builds it (`"host"`, [`remote`]); or it was built elsewhere
//! already (`system`, `--systems`, [`systems`]). A closure built here or on
//! a build host reaches the host through a binary cache it substitutes from
//! (`pushTo`), straight from the build host (`copyFrom = "build-host"`), or
//! relayed by this machine ([`deliver`]); whatever the way, the host only
//! receives what it lacks. Which way a host takes is a pure decision of its
//! record ([`way`]); the run's shared state is a [`Registry`].

mod deliver;
mod remote;
mod systems;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

pub use deliver::{deliver, fetch_here};
pub use remote::BuildHost;
pub use systems::{apply_systems, read_systems};

use crate::events::Reason;
pub use crate::events::{BuiltOn, CopiedFrom, Provenance};
use crate::fleet::{BuildOn, CopyFrom, HostSpec, SshLogin};
use crate::nix::StorePath;
use crate::select::Target;
use crate::ssh::Destination;

/// Why a host did not get its system from elsewhere: its reason (a build
/// host that cannot be reached is `build-host`, a failed build `build`, a
/// store path that is no system `not-a-system`, a closure that could not
/// be brought `copy`) and the message.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct BuildError {
    pub reason: Reason,
    pub message: String,
}

impl BuildError {
    pub fn new(reason: Reason, message: impl Into<String>) -> BuildError {
        BuildError { reason, message: message.into() }
    }
}

/// What a host that does not build its own system gets it from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Build {
    /// Built here.
    Local { configuration: String },
    /// Built on the build host named (as `buildHost` names it).
    Host { build_host: String, configuration: String },
    /// Built elsewhere: this store path, as it is.
    Prebuilt(StorePath),
}

/// How a closure built here or on a build host reaches the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// Pushed once to this store; the host substitutes from it.
    Cache(String),
    /// Copied by the build host itself.
    Direct,
    /// Copied by this machine (from its store, or from the build host's).
    Relay,
}

/// A host's way to its system, when it does not build it itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Way {
    pub build: Build,
    pub route: Route,
    /// The host substitutes what it can before anything is sent to it.
    pub substitute: bool,
}

impl Way {
    pub fn built_on(&self) -> BuiltOn {
        match self.build {
            Build::Local { .. } => BuiltOn::Local,
            Build::Host { .. } => BuiltOn::Host,
            Build::Prebuilt(_) => BuiltOn::Prebuilt,
        }
    }
}

/// The way a host takes to its system; `None`: it builds it itself. Pure.
/// A `system` wins over `buildOn`; a cache (`pushTo`) over `copyFrom`.
pub fn way(spec: &HostSpec) -> Result<Option<Way>, BuildError> {
    let build = match (&spec.system, spec.build_on) {
        (Some(path), _) => Build::Prebuilt(StorePath::parse(path).map_err(|e| {
            BuildError::new(Reason::NotASystem, format!("system {path:?}: {e}"))
        })?),
        (None, BuildOn::Target) => return Ok(None),
        (None, BuildOn::Local) => Build::Local { configuration: spec.configuration.clone() },
        (None, BuildOn::Host) => Build::Host {
            build_host: spec.build_host.clone().ok_or_else(|| {
                BuildError::new(
                    Reason::BuildHost,
                    "buildOn is \"host\" but no buildHost is set: set buildHost, or pass --build-host",
                )
            })?,
            configuration: spec.configuration.clone(),
        },
    };
    let route = match (&spec.push_to, &build, spec.copy_from) {
        (Some(uri), _, _) => Route::Cache(uri.clone()),
        (None, Build::Host { .. }, CopyFrom::BuildHost) => Route::Direct,
        _ => Route::Relay,
    };
    Ok(Some(Way { build, route, substitute: spec.substitute_on_target }))
}

/// The dry-run's words for a host's way: where it is built, and how its
/// closure reaches the host (none: the host builds it itself). Pure.
pub fn describe(
    spec: &HostSpec,
    build_hosts: &BTreeMap<String, String>,
) -> (String, Option<String>) {
    let w = match way(spec) {
        Ok(Some(w)) => w,
        Ok(None) => return ("target".into(), None),
        Err(e) => return (format!("refused: {e}"), None),
    };
    let built = match &w.build {
        Build::Local { .. } => "local".to_string(),
        Build::Host { build_host, .. } => format!(
            "host {build_host} ({}; evaluates and builds each configuration once per run, {})",
            build_hosts.get(build_host).map_or("?", String::as_str),
            match spec.build_host_capacity {
                0 => "as many at once as it has cores".to_string(),
                n => format!("at most {n} at once"),
            }
        ),
        Build::Prebuilt(p) => format!("nothing: {p} was built elsewhere"),
    };
    let copy = match (&w.route, &w.build) {
        (Route::Cache(uri), Build::Prebuilt(_)) => {
            format!("pushed once to {uri} when this machine has it, then the host substitutes it")
        }
        (Route::Cache(uri), _) => format!("pushed once to {uri}, then the host substitutes it"),
        (Route::Direct, _) => {
            "from the build host, over its own ssh login to the host (only what the host lacks)"
                .into()
        }
        (Route::Relay, Build::Host { .. }) => {
            "relayed from the build host by this machine (only what the host lacks)".into()
        }
        (Route::Relay, Build::Prebuilt(_)) => {
            "from this machine's store when it has it, else from the host's substituters".into()
        }
        (Route::Relay, Build::Local { .. }) if w.substitute => {
            "the target substitutes what it can, the rest is copied from here".into()
        }
        (Route::Relay, Build::Local { .. }) => {
            "everything from here (substituteOnTarget = false)".into()
        }
    };
    (built, Some(copy))
}

/// A build host as the run reaches it.
#[derive(Debug, Clone)]
pub struct BuildHostSpec {
    /// As `buildHost` (or `--build-host`) names it.
    pub word: String,
    pub dest: Destination,
    /// Systems built at once (0: its core count).
    pub capacity: u32,
}

/// The build hosts the selected hosts need, each once: a host of the fleet
/// by its attribute name (its hostname, user, port and sshOpts), or a
/// destination `[user@]host[:port]` (with `buildHostSshOpts`). The
/// operator's ssh agent is not forwarded unless its ssh options say `-A`.
pub fn build_hosts(
    fleet: Option<&BTreeMap<String, HostSpec>>,
    targets: &[Target],
) -> Result<Vec<BuildHostSpec>, String> {
    let mut found: BTreeMap<String, BuildHostSpec> = BTreeMap::new();
    for t in targets {
        let Ok(Some(Way { build: Build::Host { build_host: word, .. }, .. })) = way(&t.spec) else {
            continue;
        };
        let capacity = t.spec.build_host_capacity;
        if let Some(known) = found.get_mut(&word) {
            known.capacity = known.capacity.max(capacity);
            continue;
        }
        let mut login = match fleet.and_then(|f| f.get(&word)) {
            Some(host) => host.login(),
            None => build_host_login(&word, &t.spec)
                .map_err(|e| format!("host {}: buildHost {word:?}: {e}", t.name))?,
        };
        if !forwards_agent(&login.ssh_opts) {
            login.ssh_opts.splice(0..0, ["-o".to_string(), "ForwardAgent=no".into()]);
        }
        let dest = Destination::new(login);
        found.insert(word.clone(), BuildHostSpec { word, dest, capacity });
    }
    Ok(found.into_values().collect())
}

/// A build host given as `[user@]host[:port]`, with the ssh options and
/// connect timeout of the host that names it.
fn build_host_login(word: &str, of: &HostSpec) -> Result<SshLogin, String> {
    let d = crate::select::parse_destination(word)?;
    if d.config.is_some() {
        return Err("a build host is [user@]host[:port], without /configuration".into());
    }
    let defaults = HostSpec::with_defaults(&d.host).login();
    Ok(SshLogin {
        user: d.user.unwrap_or(defaults.user),
        port: d.port.unwrap_or(defaults.port),
        ssh_opts: of.build_host_ssh_opts.clone(),
        connect_timeout: of.timeouts.connect,
        ..defaults
    })
}

/// Do these ssh options ask for the agent to be forwarded?
fn forwards_agent(opts: &[String]) -> bool {
    crate::rules::ssh_opts(opts).is_ok_and(|opts| {
        opts.iter().any(|o| match o {
            crate::rules::SshOpt::Flag('A') => true,
            crate::rules::SshOpt::Config { key, .. } => key.eq_ignore_ascii_case("ForwardAgent"),
            _ => false,
        })
    })
}

type Once<T> = Arc<tokio::sync::OnceCell<T>>;
/// A closure pushed to a store: each (path, store URI) once per run.
type Pushes = Mutex<HashMap<(StorePath, String), Once<Result<(), BuildError>>>>;

/// The run's shared state of systems built elsewhere: the build hosts (set
/// before the run), the signing key, the closures pushed to each cache and
/// what this machine's store holds (each asked once per run).
#[derive(Default)]
pub struct Registry {
    hosts: OnceLock<BTreeMap<String, Arc<BuildHost>>>,
    sign_key: OnceLock<PathBuf>,
    pushed: Pushes,
    here: Mutex<HashMap<StorePath, Once<bool>>>,
    /// The closures brought here from a build host (for hosts whose sudo
    /// asks for a password).
    fetched: Mutex<HashMap<StorePath, Once<Result<(), BuildError>>>>,
}

impl Registry {
    /// The build hosts of this run (once, before it starts).
    pub fn set_build_hosts(&self, specs: Vec<BuildHostSpec>) {
        let hosts = specs.into_iter().map(|s| (s.word.clone(), Arc::new(BuildHost::new(s))));
        let _ = self.hosts.set(hosts.collect());
    }

    /// The key the closures pushed to a cache are signed with (`--sign-key`).
    pub fn set_sign_key(&self, key: PathBuf) {
        let _ = self.sign_key.set(key);
    }

    /// The build host `word` names.
    pub fn build_host(&self, word: &str) -> Result<Arc<BuildHost>, BuildError> {
        let known = self.hosts.get().and_then(|h| h.get(word)).cloned();
        known.ok_or_else(|| {
            BuildError::new(Reason::Internal, format!("build host {word:?} was not prepared"))
        })
    }

    /// How each build host is reached, by its name (for the plan):
    /// `user@host:port` and its ssh options.
    pub fn destinations(specs: &[BuildHostSpec]) -> BTreeMap<String, String> {
        let shown = |s: &BuildHostSpec| match s.dest.ssh_opts.as_slice() {
            [] => s.dest.display(),
            opts => format!("{}, ssh options: {}", s.dest.display(), opts.join(" ")),
        };
        specs.iter().map(|s| (s.word.clone(), shown(s))).collect()
    }

    /// Remove the build hosts' GC roots of this run and close their
    /// connections.
    pub async fn close(&self) {
        for host in self.hosts.get().into_iter().flat_map(BTreeMap::values) {
            host.close().await;
        }
    }

    fn once<K: std::hash::Hash + Eq + Clone, T>(
        map: &Mutex<HashMap<K, Once<T>>>,
        key: &K,
    ) -> Once<T> {
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(key.clone()).or_default().clone()
    }
}
