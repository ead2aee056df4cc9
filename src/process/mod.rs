//! One way to run a process, here or on a target. Every command the tool
//! runs is a [`Cmd`] handed to [`run`]: one timeout path, one place that
//! streams output, and one conversion of an exit status into an error
//! ([`Output::check`]). Where a command runs is a [`Spawner`]: [`Local`]
//! here, or an ssh connection (see `ssh`).

use std::future::Future;
use std::pin::Pin;
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

/// How many lines of stderr a failure shows.
pub const TAIL_LINES: usize = 20;
/// At most this much of stdout is kept (JSON answers are far smaller).
const STDOUT_CAP: usize = 16 << 20;
/// At most this many stderr lines are kept for the error tail.
const STDERR_KEEP: usize = 200;

/// A shell script that is part of the program, never built from data: the
/// only way shell text reaches a shell. Data goes in as positional
/// arguments (`$1`, `$2`, ...), quoted like every other argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Script(pub &'static str);

/// One command: argv only, never a shell string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub argv: Vec<String>,
    /// Environment for a local command (a remote command's environment is
    /// not ours to set: pass values as arguments).
    pub env: Vec<(String, String)>,
    pub stdin: Option<Input>,
    /// A local command's stdout goes to this file instead of the pipe.
    pub stdout_to: Option<std::path::PathBuf>,
    pub timeout: Duration,
    /// On a target: run as root (through the host's `sudo` when the ssh
    /// user is not root).
    pub root: bool,
    /// On a target: bound the command there too (coreutils `timeout`), so a
    /// command we give up on does not go on running.
    pub bounded: bool,
    /// Hand stdout lines to the line sink too (false when stdout is data).
    pub echo_stdout: bool,
    /// Here: work done ahead of need, at a lower CPU priority than what
    /// a host waits for now (its key exchange).
    pub ahead: bool,
}

impl Cmd {
    pub fn new<I, S>(argv: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cmd {
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            stdin: None,
            stdout_to: None,
            timeout: Duration::from_secs(60),
            root: true,
            bounded: true,
            echo_stdout: true,
            ahead: false,
        }
    }

    /// `/bin/sh -c SCRIPT sh ARGS...`
    pub fn script<I, S>(script: Script, args: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut argv = vec!["/bin/sh".to_string(), "-c".into(), script.0.into(), "sh".into()];
        argv.extend(args.into_iter().map(Into::into));
        Cmd::new(argv)
    }

    pub fn secs(mut self, s: u64) -> Cmd {
        self.timeout = Duration::from_secs(s);
        self
    }

    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }

    pub fn env(mut self, key: &str, value: impl Into<String>) -> Cmd {
        self.env.push((key.to_string(), value.into()));
        self
    }

    pub fn stdin(mut self, data: impl Into<Vec<u8>>) -> Cmd {
        self.stdin = Some(Input::Bytes(data.into()));
        self
    }

    /// Feed stdin from files, streamed (never all in memory).
    pub fn stdin_input(mut self, input: Input) -> Cmd {
        self.stdin = Some(input);
        self
    }

    /// Write a local command's stdout to `path`.
    pub fn stdout_to(mut self, path: impl Into<std::path::PathBuf>) -> Cmd {
        self.stdout_to = Some(path.into());
        self
    }

    /// Run as the ssh user, without privilege escalation.
    pub fn unprivileged(mut self) -> Cmd {
        self.root = false;
        self
    }

    /// A command that lives as long as our connection (the lock holder).
    pub fn unbounded(mut self) -> Cmd {
        self.bounded = false;
        self
    }

    /// stdout is data (JSON, answers): keep it out of the host's output.
    pub fn quiet_stdout(mut self) -> Cmd {
        self.echo_stdout = false;
        self
    }

    /// Run it as work done ahead of need (see [`Cmd::ahead`]) when `ahead`.
    pub fn ahead_of_need(mut self, ahead: bool) -> Cmd {
        self.ahead = ahead;
        self
    }

    /// A short rendering for messages: the first words.
    pub fn display(&self) -> String {
        let words: Vec<&str> = match self.argv.first().map(String::as_str) {
            // A script is shown by its arguments, not its text.
            Some("/bin/sh") if self.argv.get(1).map(String::as_str) == Some("-c") => {
                std::iter::once("sh -c …")
                    .chain(self.argv.iter().skip(4).map(String::as_str))
                    .collect()
            }
            _ => self.argv.iter().map(String::as_str).collect(),
        };
        let mut s = words.iter().take(5).copied().collect::<Vec<_>>().join(" ");
        if words.len() > 5 {
            s.push_str(" …");
        }
        s
    }
}

/// What a command reads on its stdin.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Input {
    Bytes(Vec<u8>),
    /// A secret (a host's keys): never shown, also not by `Debug`.
    Secret(std::sync::Arc<crate::secret::Secret>),
    /// The first `len` bytes of each file, in order, then `trailer`.
    Files {
        parts: Vec<(std::path::PathBuf, u64)>,
        trailer: Vec<u8>,
    },
}

impl Input {
    async fn feed(&self, w: &mut Writer) -> std::io::Result<()> {
        use tokio::io::AsyncReadExt;
        match self {
            Input::Bytes(b) => w.write_all(b).await?,
            Input::Secret(s) => w.write_all(s.as_bytes()).await?,
            Input::Files { parts, trailer } => {
                for (path, len) in parts {
                    let file = tokio::fs::File::open(path).await?;
                    tokio::io::copy(&mut file.take(*len), w).await?;
                }
                w.write_all(trailer).await?;
            }
        }
        w.shutdown().await
    }
}

/// Where a command ran, for messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Local,
    /// On a target (its name).
    Remote(String),
}

impl std::fmt::Display for Place {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Place::Local => f.write_str("here"),
            Place::Remote(host) => write!(f, "on {host}"),
        }
    }
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn success(self) -> bool {
        self == Exit::Code(0)
    }

    pub fn code(self) -> Option<i32> {
        match self {
            Exit::Code(c) => Some(c),
            Exit::Signal(_) => None,
        }
    }
}

impl From<ExitStatus> for Exit {
    fn from(s: ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (s.code(), s.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(sig)) => Exit::Signal(sig),
            // A remote process whose status ssh could not tell.
            (None, None) => Exit::Signal(0),
        }
    }
}

impl std::fmt::Display for Exit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Exit::Code(c) => write!(f, "exit {c}"),
            Exit::Signal(0) => f.write_str("killed"),
            Exit::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// What can go wrong running a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot run `{program}` {place}: {reason}")]
    Spawn { program: String, place: Place, reason: String },
    #[error("`{cmd}` did not finish within {secs} s ({place})")]
    Timeout { cmd: String, secs: u64, place: Place },
    #[error("`{cmd}` failed {place} ({exit}){}", tail_block(tail))]
    Failed { cmd: String, place: Place, exit: Exit, tail: String },
    #[error("the ssh connection was lost while running `{cmd}`")]
    Disconnected { cmd: String },
    #[error(
        "`{sudo}` on the target asks user {user} for a password; allow passwordless \
         sudo for {user} (NOPASSWD) or deploy as root (sshUser = \"root\")"
    )]
    NeedsPassword { sudo: String, user: String },
}

fn tail_block(tail: &str) -> String {
    if tail.is_empty() {
        String::new()
    } else {
        format!(":\n{tail}")
    }
}

/// The result of a finished command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Output {
    pub exit: Exit,
    pub stdout: String,
    /// The last lines of stderr.
    pub stderr: String,
    pub cmd: String,
    pub place: Place,
}

impl Output {
    pub fn success(&self) -> bool {
        self.exit.success()
    }

    /// The last lines of stderr (or of stdout when stderr is empty).
    pub fn tail(&self) -> String {
        let text = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        tail_lines(text, TAIL_LINES)
    }

    /// The one conversion of an exit status into an error.
    pub fn check(self) -> Result<Output, ProcessError> {
        if self.success() {
            return Ok(self);
        }
        Err(ProcessError::Failed {
            tail: self.tail(),
            cmd: self.cmd,
            place: self.place,
            exit: self.exit,
        })
    }
}

/// Quote each argument separately for a POSIX shell. The only place that
/// produces shell text from data: ssh hands the joined line to the remote
/// user's shell, so every remote command line is made here.
pub fn quote_argv(argv: &[String]) -> String {
    argv.iter().map(|a| shell_escape::unix::escape(a.as_str().into())).collect::<Vec<_>>().join(" ")
}

/// A command whose output is nobody's still never hides a warning (Nix's
/// deprecations, its unknown settings): it becomes a line of the run.
/// Without the credentials of a URL among its arguments (`redact`).
fn unheard<S: Spawner + ?Sized>(cmd: &Cmd, on: &S, line: &str) {
    if !is_warning(line) {
        return;
    }
    let place = on.place();
    let urls = cmd.argv.iter().filter(|a| a.contains("://"));
    let line = urls.fold(line.trim().to_string(), |l, url| crate::redact::scrub(&l, url));
    let shown = Cmd::new(cmd.argv.iter().map(|a| crate::redact::argument(a))).display();
    tracing::warn!("{shown} ({place}): {line}");
}

/// A warning as Nix (`warning: …`, `evaluation warning: …`) and OpenSSH
/// (`Warning: …`, `** WARNING: …`) print them, colored or not.
pub fn is_warning(line: &str) -> bool {
    let plain: String = strip_ansi(line).trim_start().trim_start_matches("** ").to_lowercase();
    plain.starts_with("warning:") || plain.starts_with("evaluation warning:")
}

/// `line` without terminal escape sequences (`ESC [ … letter`).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// The last `n` non-empty lines of `text`, joined with newlines.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

pub type Reader = Pin<Box<dyn AsyncRead + Send>>;
pub type Writer = Pin<Box<dyn AsyncWrite + Send>>;
pub type Waiter = Pin<Box<dyn Future<Output = Result<Exit, ProcessError>> + Send>>;

/// A started process: its pipes and a future for its end. Dropping it
/// stops the process (a local one with its whole process group).
pub struct Child {
    pub stdin: Option<Writer>,
    pub stdout: Reader,
    pub stderr: Reader,
    pub wait: Waiter,
    pub guard: Option<GroupGuard>,
}

/// Where commands run: here, or on a target over ssh.
pub trait Spawner: Sync {
    fn place(&self) -> Place;
    /// Start `cmd` with stdout and stderr piped (and stdin when it has some).
    fn spawn(&self, cmd: &Cmd) -> impl Future<Output = Result<Child, ProcessError>> + Send;
    /// How long to wait here before giving up on `cmd`.
    fn limit(&self, cmd: &Cmd) -> Duration {
        cmd.timeout
    }
    /// What the place can tell from a finished command (a remote timeout,
    /// a sudo asking for a password).
    fn inspect(&self, _cmd: &Cmd, _out: &Output) -> Result<(), ProcessError> {
        Ok(())
    }
}

/// A line sink: every line a command prints, as it comes.
pub type Lines<'a> = &'a mut (dyn FnMut(&str) + Send);

/// Run `cmd` to its end within its timeout; lines go to `on_line`.
pub async fn run<S: Spawner + ?Sized>(
    on: &S,
    cmd: &Cmd,
    on_line: Option<Lines<'_>>,
) -> Result<Output, ProcessError> {
    let started = Instant::now();
    let place = on.place();
    // A URL's credentials never reach the log (`redact`).
    let shown: Vec<String> = cmd.argv.iter().map(|a| crate::redact::argument(a)).collect();
    tracing::debug!(%place, argv = %quote_argv(&shown), "run");
    let limit = on.limit(cmd);
    let result = tokio::time::timeout(limit, drive(on, cmd, on_line)).await;
    let secs = started.elapsed().as_secs_f64();
    let out = match result {
        Err(_) => {
            tracing::debug!(%place, cmd = %cmd.display(), secs, "timed out");
            return Err(ProcessError::Timeout {
                cmd: cmd.display(),
                secs: cmd.timeout.as_secs(),
                place,
            });
        }
        Ok(r) => r?,
    };
    tracing::debug!(%place, cmd = %cmd.display(), exit = %out.exit, secs, "done");
    on.inspect(cmd, &out)?;
    Ok(out)
}

async fn drive<S: Spawner + ?Sized>(
    on: &S,
    cmd: &Cmd,
    mut on_line: Option<Lines<'_>>,
) -> Result<Output, ProcessError> {
    let mut child = on.spawn(cmd).await?;
    let feeder = match (child.stdin.take(), &cmd.stdin) {
        (Some(mut w), Some(input)) => {
            let input = input.clone();
            // A target that does not read its stdin must not stall us.
            Some(tokio::spawn(async move { input.feed(&mut w).await }))
        }
        _ => None,
    };
    // Lines for people are capped (LINE_MAX); stdout that is data only as
    // a whole (STDOUT_CAP): an endless line costs no more than that.
    let out_cap = if cmd.echo_stdout { lines::shown_cap() } else { STDOUT_CAP };
    let mut out_lines = LineReader::new(child.stdout, out_cap);
    let mut err_lines = LineReader::new(child.stderr, lines::shown_cap());
    let (mut stdout, mut stderr) = (String::new(), std::collections::VecDeque::new());
    let (mut out_open, mut err_open) = (true, true);
    while out_open || err_open {
        tokio::select! {
            l = out_lines.next_line(), if out_open => match l {
                Ok(Some(Line { text: line, .. })) => {
                    if cmd.echo_stdout {
                        if let Some(f) = on_line.as_mut() { f(&line) }
                    }
                    if stdout.len() < STDOUT_CAP {
                        stdout.push_str(&line);
                        stdout.push('\n');
                    }
                }
                _ => out_open = false,
            },
            l = err_lines.next_line(), if err_open => match l {
                Ok(Some(Line { text: line, .. })) => {
                    if let Some(f) = on_line.as_mut() { f(&line) } else { unheard(cmd, on, &line) }
                    stderr.push_back(line);
                    if stderr.len() > STDERR_KEEP {
                        stderr.pop_front();
                    }
                }
                _ => err_open = false,
            },
        }
    }
    let exit = child.wait.await?;
    if let Some(g) = child.guard.as_mut() {
        g.reaped();
    }
    if let Some(f) = feeder {
        // A stdin that could not be fed is the command's failure too; one
        // the command did not read to the end (it had no need) is not.
        if let Ok(Ok(Err(e))) = tokio::time::timeout(Duration::from_millis(10), f).await {
            if exit.success() && e.kind() != std::io::ErrorKind::BrokenPipe {
                let reason = format!("feeding its stdin: {e}");
                return Err(ProcessError::Spawn {
                    program: cmd.display(),
                    place: on.place(),
                    reason,
                });
            }
        }
    }
    let stderr = stderr.into_iter().collect::<Vec<_>>().join("\n");
    Ok(Output { exit, stdout, stderr, cmd: cmd.display(), place: on.place() })
}

mod lines;
mod local;
#[cfg(test)]
mod tests;

pub use lines::{shown as shown_line, Line, LineReader, LINE_MAX};
pub use local::{stop_all, GroupGuard, Local};
