//! Bringing a closure built here or on a build host (or elsewhere) to a
//! host, with Nix's own means: `nix copy` from this machine's store, from
//! the build host's relayed through this machine (both stores reached
//! through our masters), or run on the build host with its own ssh login;
//! or pushed once to a binary cache (signed with `--sign-key` here: the
//! key never leaves this machine) that the host substitutes from. Every
//! way copies only what the host lacks, and ends with the system GC-rooted
//! on the host.

use std::sync::Arc;

use super::remote::Conn;
use super::{Build, BuildError, BuildHost, CopiedFrom, Registry, Route, Way};
use crate::events::Reason;
use crate::nix::{self, nix_argv, StorePath};
use crate::process::{self, Cmd, Lines, Local, ProcessError};
use crate::ssh::Ssh;

/// Where the closure is before it reaches the host.
enum Source {
    /// This machine's store.
    Here,
    /// The build host's store.
    BuildHost(Arc<BuildHost>, Arc<Conn>),
}

/// Bring `path`, got the `way`, to the host behind `target` and GC-root it
/// there at `gc_root`.
pub async fn deliver(
    reg: &Registry,
    target: &Ssh,
    gc_root: &str,
    way: &Way,
    path: &StorePath,
    secs: u64,
    out: Lines<'_>,
) -> Result<CopiedFrom, BuildError> {
    let source = match &way.build {
        Build::Local { .. } => Source::Here,
        Build::Host { build_host, .. } => {
            let host = reg.build_host(build_host)?;
            let conn = host.connect().await?;
            Source::BuildHost(host, conn)
        }
        Build::Prebuilt(_) if reg.here(path, secs).await => {
            if !std::path::Path::new(&path.join("bin/switch-to-configuration")).exists() {
                let msg = format!(
                    "{path} has no bin/switch-to-configuration: it is not a NixOS system; nothing changed"
                );
                return Err(BuildError::new(Reason::NotASystem, msg));
            }
            Source::Here
        }
        Build::Prebuilt(_) => {
            out(&format!("{path} is not in this machine's store: the host substitutes it"));
            return substitute(target, gc_root, path, secs, out).await;
        }
    };
    let substitute = way.substitute;
    let copied = match (&way.route, &source) {
        (Route::Cache(uri), _) => {
            match via_cache(reg, &source, target, gc_root, path, uri, secs, out).await? {
                Some(from) => return Ok(from),
                None => relay(&source, target, path, substitute, secs, out).await?,
            }
        }
        (Route::Direct, Source::BuildHost(host, conn)) => {
            direct(host, conn, target, path, substitute, secs, out).await?
        }
        (Route::Direct | Route::Relay, _) => {
            relay(&source, target, path, substitute, secs, out).await?
        }
    };
    root(target, gc_root, path, secs).await?;
    Ok(copied)
}

/// Push the closure to the cache (once per run), then let the host
/// substitute it. `None`: the host could not (Nix's words are in its
/// output), so the caller copies it another way.
#[allow(clippy::too_many_arguments)]
async fn via_cache(
    reg: &Registry,
    source: &Source,
    target: &Ssh,
    gc_root: &str,
    path: &StorePath,
    uri: &str,
    secs: u64,
    out: Lines<'_>,
) -> Result<Option<CopiedFrom>, BuildError> {
    let cell = Registry::once(&reg.pushed, &(path.clone(), uri.to_string()));
    let pushed = cell.get_or_init(|| push(reg, source, path, uri, secs, &mut *out));
    pushed.await.clone()?;
    match realise(target, gc_root, path, secs, out).await {
        Ok(()) => Ok(Some(CopiedFrom::Cache)),
        Err(e) => {
            out(&format!(
                "the host did not substitute {path} from {uri} ({}); copying it from {} instead \
                 (add {uri} to the host's substituters and its key to trusted-public-keys)",
                e.lines().last().unwrap_or_default(),
                match source {
                    Source::Here => "here",
                    Source::BuildHost(..) => "the build host, relayed here",
                }
            ));
            Ok(None)
        }
    }
}

/// Sign the closure where it is (the signatures are made here, with the
/// key here), then copy it to the cache from there.
async fn push(
    reg: &Registry,
    source: &Source,
    path: &StorePath,
    uri: &str,
    secs: u64,
    out: Lines<'_>,
) -> Result<(), BuildError> {
    let failed = |what: &str, e: ProcessError| {
        BuildError::new(Reason::Copy, format!("{what} {path} to {uri}: {e}"))
    };
    if let Some(key) = reg.sign_key.get() {
        let mut args: Vec<String> =
            ["store", "sign", "--recursive", "--key-file"].map(String::from).into();
        args.push(key.display().to_string());
        let mut opts = None;
        if let Source::BuildHost(_, conn) = source {
            args.extend(["--store".to_string(), conn.ssh.dest.store_uri()]);
            opts = Some(conn.ssh.nix_sshopts().map_err(|e| failed("signing", e))?);
        }
        args.push(path.to_string());
        let mut cmd = Cmd::new(nix_argv(args)).secs(secs);
        if let Some(opts) = opts {
            cmd = cmd.env("NIX_SSHOPTS", opts);
        }
        let signed = process::run(&Local, &cmd, Some(&mut *out)).await;
        signed.and_then(|o| o.check()).map_err(|e| failed("signing", e))?;
    }
    let copy = Cmd::new(nix_argv(["copy", "--no-check-sigs", "--to", uri, path.as_str()]));
    let copied = match source {
        Source::Here => process::run(&Local, &copy.secs(secs), Some(out)).await,
        Source::BuildHost(_, conn) => process::run(&conn.ssh, &copy.secs(secs), Some(out)).await,
    };
    copied.and_then(|o| o.check()).map_err(|e| failed("pushing", e))?;
    Ok(())
}

/// `nix-store --realise PATH --add-root GC_ROOT` on the host: what it
/// lacks comes from its substituters. `Err`: the tail of what Nix said.
async fn realise(
    target: &Ssh,
    gc_root: &str,
    path: &StorePath,
    secs: u64,
    out: Lines<'_>,
) -> Result<(), String> {
    let argv = ["nix-store", "--realise", path.as_str(), "--add-root", gc_root, "--indirect"];
    let cmd = Cmd::new(argv).secs(secs).quiet_stdout();
    let realised = process::run(target, &cmd, Some(out)).await.and_then(|o| o.check());
    realised.map(drop).map_err(|e| e.to_string())
}

/// GC-root a path the host has now.
async fn root(target: &Ssh, gc_root: &str, path: &StorePath, secs: u64) -> Result<(), BuildError> {
    let rooted = nix::add_root(target, path, gc_root, secs).await;
    rooted.map_err(|e| BuildError::new(Reason::Copy, format!("keeping {path} on the host: {e}")))
}

/// A system built elsewhere, not here: the host's substituters have it, or
/// the host is not deployed (the substituters it tried are named).
async fn substitute(
    target: &Ssh,
    gc_root: &str,
    path: &StorePath,
    secs: u64,
    out: Lines<'_>,
) -> Result<CopiedFrom, BuildError> {
    match realise(target, gc_root, path, secs, out).await {
        Ok(()) => Ok(CopiedFrom::Substituters),
        Err(e) => {
            let tried = match substituters(target).await {
                list if list.is_empty() => "none: the host has no substituters".to_string(),
                list => list.join(", "),
            };
            let said = crate::process::tail_lines(&e, 3);
            Err(BuildError::new(
                Reason::Copy,
                format!(
                    "system {path} is neither in this machine's store nor in the host's \
                     substituters (tried: {tried}); nothing changed: build it here, or push it \
                     to a cache the host substitutes from\n{said}"
                ),
            ))
        }
    }
}

/// The host's substituters, as its Nix says them (`nix show-config`).
async fn substituters(target: &Ssh) -> Vec<String> {
    let cmd = Cmd::new(nix_argv(["show-config"])).secs(30).quiet_stdout().unprivileged();
    let Ok(out) = process::run(target, &cmd, None).await else { return Vec::new() };
    out.stdout
        .lines()
        .find_map(|l| l.strip_prefix("substituters = "))
        .map(|l| l.split_whitespace().map(String::from).collect())
        .unwrap_or_default()
}

/// Copy from this machine: from its store, or from the build host's,
/// relayed (the `nix copy` here reaches both through our masters).
async fn relay(
    source: &Source,
    target: &Ssh,
    path: &StorePath,
    substitute: bool,
    secs: u64,
    out: Lines<'_>,
) -> Result<CopiedFrom, BuildError> {
    let failed =
        |e: String| BuildError::new(Reason::Copy, format!("copying {path} to the host: {e}"));
    let to = target.dest.store_uri();
    let Source::BuildHost(host, conn) = source else {
        let opts = target.nix_sshopts().map_err(|e| failed(e.to_string()))?;
        let copied = nix::copy(std::slice::from_ref(path), &to, &opts, substitute, secs, out).await;
        return copied.map(|()| CopiedFrom::Deployer).map_err(|e| failed(e.to_string()));
    };
    let sockets = Sockets::new(&[&conn.ssh, target]).map_err(failed)?;
    let (from, to) = (sockets.store_uri(0, &conn.ssh), sockets.store_uri(1, target));
    let mut argv = nix::copy_argv(std::slice::from_ref(path), &to, substitute);
    let at = argv.iter().position(|a| a == "copy").map_or(argv.len(), |i| i + 1);
    argv.splice(at..at, ["--from".to_string(), from]);
    let cmd = Cmd::new(argv).env("NIX_SSHOPTS", sockets.nix_sshopts()).secs(secs);
    let copied = process::run(&Local, &cmd, Some(out)).await.and_then(|o| o.check());
    copied.map_err(|e| failed(format!("relaying from {}: {e}", host.label())))?;
    Ok(CopiedFrom::Deployer)
}

/// Copy from the build host, by the build host: `nix copy` there, over
/// its own ssh login to the host (its own key and known_hosts; no agent is
/// forwarded to it unless its ssh options say `-A`).
async fn direct(
    host: &BuildHost,
    conn: &Conn,
    target: &Ssh,
    path: &StorePath,
    substitute: bool,
    secs: u64,
    out: Lines<'_>,
) -> Result<CopiedFrom, BuildError> {
    let d = &target.dest;
    let opts = format!(
        "-p {} -o BatchMode=yes -o StrictHostKeyChecking=yes -o ConnectTimeout={}",
        d.port,
        d.connect_timeout.max(1)
    );
    let mut argv = vec!["env".to_string(), format!("NIX_SSHOPTS={opts}")];
    argv.extend(nix::copy_argv(std::slice::from_ref(path), &d.store_uri(), substitute));
    let cmd = Cmd::new(argv).unprivileged().secs(secs);
    let copied = process::run(&conn.ssh, &cmd, Some(out)).await.and_then(|o| o.check());
    copied.map_err(|e| {
        BuildError::new(
            Reason::Copy,
            format!(
                "{} could not copy {path} to the host ({}): {e}\n  hint: the build host logs in \
                 with its own ssh key: authorise it for {} on the host and put the host's key in \
                 its known_hosts, or set copyFrom = \"deployer\"",
                host.label(),
                d.display(),
                d.user
            ),
        )
    })?;
    Ok(CopiedFrom::BuildHost)
}

/// Our masters, as one `nix` process here reaches them all: a private
/// directory of links to their control sockets, one per master, each
/// named by an alias the store URIs use as their host (so two masters
/// never share a link, whatever their names and ports).
struct Sockets {
    dir: tempfile::TempDir,
}

impl Sockets {
    fn new(masters: &[&Ssh]) -> Result<Sockets, String> {
        let made = tempfile::Builder::new().prefix("deploy-flake-relay.").tempdir();
        let dir = made.map_err(|e| format!("creating a directory for the relay: {e}"))?;
        for (i, ssh) in masters.iter().enumerate() {
            let socket = ssh.control_socket().map_err(|e| e.to_string())?;
            let link = dir.path().join(Sockets::alias(i));
            std::os::unix::fs::symlink(&socket, &link)
                .map_err(|e| format!("linking {}: {e}", link.display()))?;
        }
        Ok(Sockets { dir })
    }

    fn alias(i: usize) -> String {
        format!("deploy-flake-master-{i}")
    }

    /// The store URI of master `i` (`ssh` is its connection): its user
    /// and escalation, the alias as its host.
    fn store_uri(&self, i: usize, ssh: &Ssh) -> String {
        let mut dest = ssh.dest.clone();
        dest.host = Sockets::alias(i);
        dest.store_uri()
    }

    /// Every login rides on a master; without one, none is made (a
    /// `ProxyCommand` that fails), so the copy fails closed.
    fn nix_sshopts(&self) -> String {
        format!(
            "-o ControlPath={}/%n -o ControlMaster=no -o ProxyCommand=false -o BatchMode=yes \
             -o StrictHostKeyChecking=yes",
            self.dir.path().display()
        )
    }
}

/// Bring a closure to this machine's store, for a host that can only be
/// sent it from here (its sudo asks for a password, which no `nix copy`
/// can give): from the build host it was built on, through that host's
/// master, once per path per run. A system built here, or one this
/// machine has, is here already.
pub async fn fetch_here(
    reg: &Registry,
    way: &Way,
    path: &StorePath,
    secs: u64,
    out: Lines<'_>,
) -> Result<(), BuildError> {
    let cant = |why: &str| {
        BuildError::new(
            Reason::Copy,
            format!(
                "with a sudo password, a system can only be sent from this machine's store, \
                 and {why}: give the ssh user passwordless sudo for nix-daemon, build here \
                 (buildOn = \"local\") or on the host"
            ),
        )
    };
    let build_host = match &way.build {
        Build::Local { .. } => return Ok(()),
        Build::Prebuilt(_) if reg.here(path, secs).await => return Ok(()),
        Build::Prebuilt(_) => return Err(cant(&format!("{path} is not in it"))),
        Build::Host { build_host, .. } => build_host,
    };
    let host = reg.build_host(build_host)?;
    let cell = Registry::once(&reg.fetched, path);
    let fetched = cell.get_or_init(|| async {
        let failed =
            |e: String| cant(&format!("bringing {path} here from {} failed: {e}", host.label()));
        let conn = host.connect().await?;
        let sockets = Sockets::new(&[&conn.ssh]).map_err(failed)?;
        let from = sockets.store_uri(0, &conn.ssh);
        let argv = nix_argv(["copy", "--no-check-sigs", "--from", &from, path.as_str()]);
        let cmd = Cmd::new(argv).env("NIX_SSHOPTS", sockets.nix_sshopts()).secs(secs);
        out(&format!("bringing {path} here from {}, to send it over the connection", host.label()));
        let copied = process::run(&Local, &cmd, Some(&mut *out)).await.and_then(|o| o.check());
        copied.map(drop).map_err(|e| failed(e.to_string()))
    });
    fetched.await.clone()
}

impl Registry {
    /// Does this machine's store have `path`? (Asked once per run.)
    pub(super) async fn here(&self, path: &StorePath, secs: u64) -> bool {
        let cell = Registry::once(&self.here, path);
        let valid = cell.get_or_init(|| async {
            let cmd = Cmd::new(["nix-store", "--check-validity", path.as_str()]).secs(secs);
            process::run(&Local, &cmd, None).await.is_ok_and(|o| o.success())
        });
        *valid.await
    }
}
