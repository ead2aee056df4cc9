//! Commands on this machine: each in a process group of its own, stopped
//! with everything it started when the command is given up on.

use std::future::Future;
use std::process::Stdio;

use super::{Child, Cmd, Exit, Place, ProcessError, Reader, Spawner, Waiter, Writer};

/// Commands on this machine. Each runs in its own process group, outside
/// the terminal's: Ctrl-C is ours to handle, and stopping a command stops
/// everything it started (nix's own ssh and builders too).
#[derive(Debug, Clone, Copy, Default)]
pub struct Local;

impl Spawner for Local {
    fn place(&self) -> Place {
        Place::Local
    }

    #[allow(clippy::manual_async_fn)]
    fn spawn(&self, cmd: &Cmd) -> impl Future<Output = Result<Child, ProcessError>> + Send {
        async move { spawn_local(cmd) }
    }
}

fn spawn_local(cmd: &Cmd) -> Result<Child, ProcessError> {
    let program = cmd.argv.first().cloned().unwrap_or_default();
    let mut c = tokio::process::Command::new(&program);
    c.args(&cmd.argv[1..])
        .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(match &cmd.stdout_to {
            Some(path) => {
                Stdio::from(std::fs::File::create(path).map_err(|e| ProcessError::Spawn {
                    program: program.clone(),
                    place: Place::Local,
                    reason: format!("creating {}: {e}", path.display()),
                })?)
            }
            None => Stdio::piped(),
        })
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    for (k, v) in &cmd.env {
        c.env(k, v);
    }
    let mut child = c.spawn().map_err(|e| ProcessError::Spawn {
        program: program.clone(),
        place: Place::Local,
        reason: e.to_string(),
    })?;
    if let (true, Some(pid)) = (cmd.ahead, child.id()) {
        lower_priority(pid);
    }
    let guard = child.id().map(GroupGuard::new);
    let stdin = child.stdin.take().map(|w| Box::pin(w) as Writer);
    let stdout = match child.stdout.take() {
        Some(out) => Box::pin(out) as Reader,
        None => Box::pin(tokio::io::empty()) as Reader,
    };
    let stderr = Box::pin(child.stderr.take().expect("stderr is piped")) as Reader;
    let wait = Box::pin(async move {
        child.wait().await.map(Exit::from).map_err(|e| ProcessError::Spawn {
            program,
            place: Place::Local,
            reason: e.to_string(),
        })
    }) as Waiter;
    Ok(Child { stdin, stdout, stderr, wait, guard })
}

/// Stops a local process group unless its leader was reaped normally.
#[derive(Debug)]
pub struct GroupGuard {
    pgid: i32,
    done: bool,
}

/// The process groups of local commands still running, so that quitting
/// (a second Ctrl-C) can stop them: `std::process::exit` runs no drops.
static LIVE_GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

impl GroupGuard {
    fn new(pid: u32) -> GroupGuard {
        let pgid = pid as i32;
        LIVE_GROUPS.lock().unwrap_or_else(|e| e.into_inner()).push(pgid);
        GroupGuard { pgid, done: false }
    }

    /// The leader ended by itself: nothing to stop.
    pub fn reaped(&mut self) {
        self.done = true;
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        LIVE_GROUPS.lock().unwrap_or_else(|e| e.into_inner()).retain(|g| *g != self.pgid);
        if !self.done {
            signal_group(self.pgid);
        }
    }
}

/// The niceness of work done ahead of need: it gets what the work a host
/// waits for leaves of the cores, and most of them when nothing else runs.
const AHEAD_NICENESS: i32 = 5;

fn lower_priority(pid: u32) {
    // SAFETY: setpriority(2) on a process we just started; it only fails
    // when the process is already gone, which is no matter.
    unsafe {
        libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, AHEAD_NICENESS);
    }
}

fn signal_group(pgid: i32) {
    if pgid > 1 {
        // SAFETY: kill(2) with a negative pid signals a process group we
        // created (process_group(0) made the child its leader).
        unsafe {
            libc::kill(-pgid, libc::SIGTERM);
        }
    }
}

/// Stop every local command still running (before quitting at once).
pub fn stop_all() {
    let groups = LIVE_GROUPS.lock().unwrap_or_else(|e| e.into_inner()).clone();
    groups.into_iter().for_each(signal_group);
}
