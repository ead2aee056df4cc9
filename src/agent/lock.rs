//! The host lock: `flock` held by the agent's `hold` on the target for as
//! long as our connection lives and we say we are alive. A deployer that
//! dies closes its connection; one lost in a network partition stops
//! sending heartbeats, and the holder gives the lock up after a while.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use super::{answers, lock_files, RunDir, ANSWER};
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
}

impl Drop for HostLock {
    fn drop(&mut self) {
        self.heartbeat.abort();
    }
}

/// Take the host lock: refused at once when another run holds it.
pub async fn lock<S: Spawner>(
    on: &S,
    run: &RunDir,
    owner: &str,
    secs: u64,
) -> Result<HostLock, LockError> {
    let (lockfile, infofile) = lock_files();
    let flock = ["flock", "-n", "-o", "-E", &LOCK_HELD.to_string(), &lockfile].map(String::from);
    let args = [owner.to_string(), HEARTBEAT_LOST_SECS.to_string(), run.dir.clone()];
    let hold = run.cmd("hold", args);
    let cmd = Cmd::new(flock.into_iter().chain(hold.argv)).stdin(Vec::new()).secs(secs).unbounded();
    let mut child = on.spawn(&cmd).await?;
    let mut lines = BufReader::new(&mut child.stdout).lines();
    let mut busy = Vec::new();
    let deadline = tokio::time::Instant::now() + cmd.timeout;
    let locked = format!("{ANSWER}locked");
    let mut held = false;
    loop {
        match tokio::time::timeout_at(deadline, lines.next_line()).await {
            Ok(Ok(Some(l))) if l.trim() == locked => {
                held = true;
                break;
            }
            Ok(Ok(Some(l))) => busy.extend(answers(&l, "busy").map(String::from)),
            Ok(_) => break,
            Err(_) => {
                let place = on.place();
                return Err(ProcessError::Timeout { cmd: "flock".into(), secs, place }.into());
            }
        }
    }
    drop(lines);
    if held {
        let heartbeat = beat(child.stdin.take());
        return Ok(HostLock { _holder: child, heartbeat, busy });
    }
    let exit = tokio::time::timeout(cmd.timeout, child.wait).await;
    if let Ok(Ok(e)) = exit {
        if e.code() == Some(LOCK_HELD) {
            let out = process::run(on, &Cmd::new(["cat", &infofile]).secs(secs), None).await?;
            let holder = out.stdout.trim();
            let holder = if holder.is_empty() { "another deploy" } else { holder };
            return Err(LockError::Held { holder: holder.to_string() });
        }
    }
    let out = process::run(on, &Cmd::new(["flock", "--version"]).secs(secs), None).await?;
    let hint = if out.success() { "" } else { " (is util-linux's flock installed on the target?)" };
    Err(LockError::Failed { hint: hint.into() })
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
