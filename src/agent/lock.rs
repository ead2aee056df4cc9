//! The host lock: `flock` held by the agent's `hold` on the target for as
//! long as our connection lives and we say we are alive. A deployer that
//! dies closes its connection; one lost in a network partition (or stalled)
//! stops sending heartbeats, and the holder gives the lock up after a
//! while ([`LOCK_PATIENCE_SECS`]). A deployer that comes back learns it
//! lost the lock (its holder ended): [`HostLock::lost`].

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::install::{input, installed, NO_SPACE_EXIT};
use super::{answer, answers, lock_files, Health, RunDir, ANSWER};
use crate::budget::{HEARTBEAT_SECS, LOCK_PATIENCE_SECS};
use crate::nix::version::NixVersion;
use crate::process::{self, Cmd, ProcessError, Spawner};

/// `flock` exits with this when another run holds the lock.
const LOCK_HELD: i32 = 75;

/// Why the host lock could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error(
        "the host is locked by another deploy: {holder}; wait for it to finish (the lock of a \
         deployer that died or was cut off is freed within {LOCK_PATIENCE_SECS} s)"
    )]
    Held {
        holder: String,
        /// The holder's run id, as its holder wrote it (`None`: not said).
        run: Option<String>,
    },
    /// The target lacks util-linux's `flock`.
    #[error("could not take the host lock: the target has no `flock` (util-linux)")]
    NoFlock,
    #[error("could not take the host lock: {said}")]
    Failed { said: String },
    /// The host's `/run` is too full for a run's state (nothing written).
    #[error("{said}")]
    NoSpace { said: String },
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// The host lock, held while this lives. Dropping it stops the heartbeat
/// and closes the holder's stdin: the lock is free at once.
pub struct HostLock {
    heartbeat: tokio::task::JoinHandle<()>,
    holder: tokio::task::JoinHandle<()>,
    /// Why the holder let the lock go, once it did.
    lost: Arc<Mutex<Option<String>>>,
    /// Switches that were going on when we took it (other runs'
    /// activations, nixos-rebuild, automatic upgrades).
    pub busy: Vec<String>,
    /// The host's health once locked, when asked for.
    pub health: Option<Health>,
    /// The lock's count of holders on the host (since its boot): a run that
    /// takes its lock back learns whether another run held it meanwhile.
    pub serial: Option<u64>,
    /// The host's Nix, when it said one we can read.
    pub nix: Option<NixVersion>,
}

impl HostLock {
    /// Let the lock go, and wait until nothing of it is left here (its
    /// command holds on to the connection until then).
    pub async fn release(mut self) {
        self.heartbeat.abort();
        self.holder.abort();
        let _ = (&mut self.heartbeat).await;
        let _ = (&mut self.holder).await;
    }

    /// The holder on the target ended: the lock is no longer ours (it may
    /// be another run's by now). Why, as far as we know.
    pub fn lost(&self) -> Option<String> {
        self.lost.lock().expect("not poisoned").clone()
    }
}

impl Drop for HostLock {
    fn drop(&mut self) {
        self.heartbeat.abort();
        self.holder.abort();
    }
}

/// Install the agent (the `installed` way) and take the host lock, in one
/// round trip: refused at once when another run holds it. With
/// `health_secs`, the host's health comes with the lock (bounded by
/// `health_secs`, on top of `secs`).
pub async fn lock<S: Spawner>(
    on: &S,
    run: &RunDir,
    owner: &str,
    new_run: Option<&str>,
    health_secs: Option<u64>,
    secs: u64,
) -> Result<HostLock, LockError> {
    let (lockfile, infofile, pidfile) = lock_files();
    let flock = ["flock", "-n", "-o", "-E", &LOCK_HELD.to_string(), &lockfile].map(String::from);
    let mut args = vec![owner.to_string(), LOCK_PATIENCE_SECS.to_string(), run.dir.clone()];
    args.extend(health_secs.map(|s| s.to_string()));
    let hold = run.cmd("hold", args);
    let limit = secs.saturating_add(health_secs.unwrap_or(0));
    let mut argv: Vec<String> = flock.into_iter().chain(hold.argv).collect();
    // Taken again by a run that held it (after a lost connection): its own
    // holder of the lost connection is ended first, not waited for.
    if new_run.is_none() {
        argv.splice(0..0, run.cmd("displace", [run.id.clone()]).argv);
    }
    let cmd = Cmd::new(argv).stdin(Vec::new()).secs(limit).unbounded();
    let cmd = installed(run, new_run, cmd);
    let mut child = on.spawn(&cmd).await?;
    // The agent's text and the origin first (whether or not the host has
    // the agent), then the heartbeats. A host that stops reading early
    // says why on stdout.
    if let Some(w) = child.stdin.as_mut() {
        let _ = w.write_all(&input(new_run)).await;
        let _ = w.flush().await;
    }
    let mut lines = process::LineReader::new(&mut child.stdout, process::LINE_MAX);
    let (mut busy, mut said, mut nix) = (Vec::new(), String::new(), None);
    let deadline = tokio::time::Instant::now() + cmd.timeout;
    let locked = format!("{ANSWER}locked");
    let mut held = false;
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(process::Line { text: l, .. }))) if l.trim() == locked => {
                held = true;
                break;
            }
            Ok(Ok(Some(process::Line { text: l, .. }))) => {
                busy.extend(answers(&l, "busy").map(String::from));
                nix = nix.or(answers(&l, "nix").find_map(NixVersion::parse));
                said.push_str(&l);
                said.push('\n');
            }
            Ok(_) => break,
            Err(_) => {
                let place = on.place();
                let secs = limit;
                return Err(ProcessError::Timeout { cmd: "flock".into(), secs, place }.into());
            }
        }
    }
    drop(lines);
    if held {
        let lost = Arc::new(Mutex::new(None));
        let heartbeat = beat(child.stdin.take(), lost.clone());
        let health = health_secs.map(|_| Health::parse(&said));
        let holder = watch_holder(child, lost.clone());
        let serial = answer(&said, "serial").and_then(|n| n.parse().ok());
        return Ok(HostLock { heartbeat, holder, lost, busy, health, serial, nix });
    }
    Err(refused(on, child, cmd.timeout, [&infofile, &pidfile], secs).await?)
}

/// Follow the holder until it ends, and say why in `lost`: its last word
/// (no heartbeat for a while), or how it ended. The holder says nothing
/// else once it holds the lock.
fn watch_holder(
    mut child: process::Child,
    lost: Arc<Mutex<Option<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        // Read in bounded memory: only its last word is kept.
        let mut lines = process::LineReader::new(&mut child.stdout, process::LINE_MAX);
        let mut said = String::new();
        while let Ok(Some(process::Line { text, .. })) = lines.next_line().await {
            if answer(&text, "lost").is_some() {
                said = text;
            }
        }
        let why = match (answer(&said, "lost"), child.wait.await) {
            (Some(why), _) => why,
            (None, Ok(exit)) => format!("its holder on the host ended ({exit})"),
            (None, Err(e)) => format!("the connection to its holder was lost ({e})"),
        };
        // The holder's own word comes first.
        *lost.lock().expect("not poisoned") = Some(why);
    })
}

/// The run id in the holder's `<pid> <run id>` line, if it says one.
fn holder_run(pid_line: &str) -> Option<String> {
    pid_line.split_whitespace().nth(1).map(String::from)
}

/// Why a lock command ended without the lock.
async fn refused<S: Spawner>(
    on: &S,
    mut child: process::Child,
    limit: Duration,
    [infofile, pidfile]: [&str; 2],
    secs: u64,
) -> Result<LockError, LockError> {
    let exit = match tokio::time::timeout(limit, child.wait).await {
        Ok(Ok(e)) => Some(e),
        Ok(Err(e)) => return Err(e.into()),
        Err(_) => None,
    };
    if exit.and_then(|e| e.code()) == Some(LOCK_HELD) {
        let out = process::run(on, &Cmd::new(["cat", infofile]).secs(secs), None).await?;
        let holder = out.stdout.trim();
        let holder = if holder.is_empty() { "another deploy" } else { holder }.to_string();
        let out = process::run(on, &Cmd::new(["cat", pidfile]).secs(secs), None).await?;
        let run = holder_run(&out.stdout);
        return Ok(LockError::Held { holder, run });
    }
    let mut err = Vec::new();
    let mut stderr = (&mut child.stderr).take(process::LINE_MAX as u64);
    let _ = tokio::time::timeout(Duration::from_secs(2), stderr.read_to_end(&mut err)).await;
    let said = process::tail_lines(&String::from_utf8_lossy(&err), 5);
    if exit.and_then(|e| e.code()) == Some(NO_SPACE_EXIT) {
        return Ok(LockError::NoSpace { said });
    }
    let out = process::run(on, &Cmd::new(["flock", "--version"]).secs(secs), None).await?;
    if !out.success() {
        return Ok(LockError::NoFlock);
    }
    let said = match (said.is_empty(), exit) {
        (false, _) => said,
        (true, Some(exit)) => format!("the lock command ended ({exit}) without a word"),
        (true, None) => "the lock command said nothing and did not end".into(),
    };
    Ok(LockError::Failed { said })
}

/// A line to the holder every few seconds, for as long as the lock lives;
/// one that cannot be written means the holder is gone.
fn beat(
    stdin: Option<process::Writer>,
    lost: Arc<Mutex<Option<String>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(mut w) = stdin else { return };
        loop {
            tokio::time::sleep(Duration::from_secs(HEARTBEAT_SECS)).await;
            if let Err(e) = async {
                w.write_all(b"\n").await?;
                w.flush().await
            }
            .await
            {
                // The holder says why it ended, when it can: a moment for that.
                tokio::time::sleep(Duration::from_secs(1)).await;
                let why = format!("a heartbeat could not be sent to its holder: {e}");
                lost.lock().expect("not poisoned").get_or_insert(why);
                return;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_holder_s_run_is_read_from_its_pid_line() {
        let table = [
            ("1234 1700000000-1-ab\n", Some("1700000000-1-ab")),
            ("1234 1700000000-1-ab-revert\n", Some("1700000000-1-ab-revert")),
            ("1234\n", None),
            ("", None),
        ];
        for (line, want) in table {
            assert_eq!(super::holder_run(line).as_deref(), want, "{line:?}");
        }
    }
}
