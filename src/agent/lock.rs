//! The host lock: `flock` held by the agent's `hold` on the target for as
//! long as our connection lives and we say we are alive. A deployer that
//! dies closes its connection; one lost in a network partition stops
//! sending heartbeats, and the holder gives the lock up after a while.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::install::{input, installed};
use super::{answers, lock_files, Health, RunDir, ANSWER};
use crate::nix::version::NixVersion;
use crate::process::{self, Cmd, ProcessError, Spawner};

/// `flock` exits with this when another run holds the lock.
const LOCK_HELD: i32 = 75;
/// How often the deployer says it is alive.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long the holder waits for a heartbeat before it gives the lock up.
pub const HEARTBEAT_LOST_SECS: u64 = 30;

/// Why the host lock could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error(
        "the host is locked by another deploy: {holder}; wait for it to finish (the lock of a \
         deployer that died or was cut off is freed within {HEARTBEAT_LOST_SECS} s)"
    )]
    Held { holder: String },
    #[error("could not take the host lock{hint}")]
    Failed { hint: String },
    #[error(transparent)]
    Process(#[from] ProcessError),
}

/// The host lock, held while this lives. Dropping it stops the heartbeat
/// and closes the holder's stdin: the lock is free at once.
pub struct HostLock {
    _holder: process::Child,
    heartbeat: tokio::task::JoinHandle<()>,
    /// Switches that were going on when we took it (other runs'
    /// activations, nixos-rebuild, automatic upgrades).
    pub busy: Vec<String>,
    /// The host's health once locked, when asked for.
    pub health: Option<Health>,
    /// The host's Nix, when it said one we can read.
    pub nix: Option<NixVersion>,
}

impl Drop for HostLock {
    fn drop(&mut self) {
        self.heartbeat.abort();
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
    let (lockfile, infofile) = lock_files();
    let flock = ["flock", "-n", "-o", "-E", &LOCK_HELD.to_string(), &lockfile].map(String::from);
    let mut args = vec![owner.to_string(), HEARTBEAT_LOST_SECS.to_string(), run.dir.clone()];
    args.extend(health_secs.map(|s| s.to_string()));
    let hold = run.cmd("hold", args);
    let limit = secs.saturating_add(health_secs.unwrap_or(0));
    let cmd =
        Cmd::new(flock.into_iter().chain(hold.argv)).stdin(Vec::new()).secs(limit).unbounded();
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
        let heartbeat = beat(child.stdin.take());
        let health = health_secs.map(|_| Health::parse(&said));
        return Ok(HostLock { _holder: child, heartbeat, busy, health, nix });
    }
    Err(refused(on, child, cmd.timeout, &infofile, secs).await?)
}

/// Why a lock command ended without the lock.
async fn refused<S: Spawner>(
    on: &S,
    mut child: process::Child,
    limit: Duration,
    infofile: &str,
    secs: u64,
) -> Result<LockError, LockError> {
    let exit = tokio::time::timeout(limit, child.wait).await;
    if let Ok(Ok(e)) = exit {
        if e.code() == Some(LOCK_HELD) {
            let out = process::run(on, &Cmd::new(["cat", infofile]).secs(secs), None).await?;
            let holder = out.stdout.trim();
            let holder = if holder.is_empty() { "another deploy" } else { holder };
            return Ok(LockError::Held { holder: holder.to_string() });
        }
    }
    let mut err = Vec::new();
    let mut stderr = (&mut child.stderr).take(process::LINE_MAX as u64);
    let _ = tokio::time::timeout(Duration::from_secs(2), stderr.read_to_end(&mut err)).await;
    let said = process::tail_lines(&String::from_utf8_lossy(&err), 5);
    let out = process::run(on, &Cmd::new(["flock", "--version"]).secs(secs), None).await?;
    let hint = match (out.success(), said.is_empty()) {
        (false, _) => " (is util-linux's flock installed on the target?)".to_string(),
        (true, false) => format!(": {said}"),
        (true, true) => String::new(),
    };
    Ok(LockError::Failed { hint })
}

/// A line to the holder every few seconds, for as long as the lock lives.
fn beat(stdin: Option<process::Writer>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Some(mut w) = stdin else { return };
        loop {
            tokio::time::sleep(HEARTBEAT).await;
            if w.write_all(b"\n").await.is_err() || w.flush().await.is_err() {
                return;
            }
        }
    })
}
