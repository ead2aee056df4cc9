//! The ssh layer: one master connection per host, and the single choke
//! point through which every remote command runs.
//!
//! Every remote command is a [`Cmd`]: an argv, a timeout, and whether it
//! needs root. [`quote_argv`] is the only place that turns an argv into the
//! line that ssh hands to the remote shell; nothing else formats shell text.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};
use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::Command as LocalCommand;

use crate::inventory::HostSpec;

/// What can go wrong talking to one host.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("cannot connect to {dest}: {reason}{}", connect_hint(reason, dest))]
    Connect { dest: String, reason: String },
    #[error("connecting to {dest} did not finish within {secs} s (timeouts.connect)")]
    ConnectTimeout { dest: String, secs: u64 },
    #[error("`{cmd}` did not finish within {secs} s")]
    Timeout { cmd: String, secs: u64 },
    #[error("the ssh connection was lost while running `{cmd}`")]
    Disconnected { cmd: String },
    #[error(
        "`{sudo}` on the target asks user {user} for a password; allow passwordless \
         sudo for {user} (NOPASSWD) or deploy as root (sshUser = \"root\")"
    )]
    SudoNeedsPassword { sudo: String, user: String },
    #[error(
        "the host is locked by another deploy: {holder}; wait for it to finish \
         (the lock of a deployer that died is freed when its ssh connection ends)"
    )]
    Locked { holder: String },
    #[error("{0}")]
    LockFailed(String),
    #[error("sshOpts: {0}")]
    SshOpts(String),
    #[error("running ssh: {0}")]
    Io(#[from] std::io::Error),
}

/// The captured result of a remote command.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status.success()
    }

    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// The last lines of stderr (or stdout when stderr is empty), for errors.
    pub fn tail(&self) -> String {
        let text = if self.stderr.trim().is_empty() { &self.stdout } else { &self.stderr };
        tail_lines(text, 15)
    }
}

impl From<std::process::Output> for Output {
    fn from(out: std::process::Output) -> Output {
        Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }
}

/// The last `n` non-empty lines of `text`, joined with newlines.
pub fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let start = lines.len().saturating_sub(n);
    lines[start..].join("\n")
}

/// One remote command: argv only, never a shell string.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub argv: Vec<String>,
    pub timeout: Duration,
    /// Run as root (through the configured `sudo` when sshUser is not root).
    pub root: bool,
    /// Bound the command on the target too (coreutils `timeout`), so a
    /// command we give up on does not run on there: closing our end of an
    /// ssh channel does not stop a remote process.
    pub bounded: bool,
}

impl Cmd {
    pub fn new<I, S>(argv: I) -> Cmd
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Cmd {
            argv: argv.into_iter().map(Into::into).collect(),
            timeout: Duration::from_secs(60),
            root: true,
            bounded: true,
        }
    }

    pub fn timeout(mut self, t: Duration) -> Cmd {
        self.timeout = t;
        self
    }

    pub fn secs(self, s: u64) -> Cmd {
        self.timeout(Duration::from_secs(s))
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

    /// How long we wait locally: a little longer than the remote bound,
    /// so the remote `timeout` acts first and reports 124.
    fn local_limit(&self) -> Duration {
        if self.bounded {
            self.timeout + Duration::from_secs(10)
        } else {
            self.timeout
        }
    }

    /// A short rendering for messages.
    pub fn display(&self) -> String {
        let mut s = self.argv.iter().take(4).cloned().collect::<Vec<_>>().join(" ");
        if self.argv.len() > 4 {
            s.push_str(" …");
        }
        s
    }
}

/// Quote each argument separately for the remote shell, which is what
/// receives the joined command line that ssh sends. The only place that
/// produces remote shell text.
pub fn quote_argv(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_escape::unix::escape(a.as_str().into()).into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// How to reach a host: derived from its inventory record.
#[derive(Debug, Clone)]
pub struct Destination {
    pub host: String,
    pub user: String,
    pub port: u16,
    pub ssh_opts: Vec<String>,
    /// argv prefix for root commands; empty when the user is root.
    pub escalate: Vec<String>,
    pub connect_timeout: u64,
}

impl Destination {
    pub fn from_spec(spec: &HostSpec) -> Destination {
        let escalate = if spec.ssh_user == "root" {
            Vec::new()
        } else {
            let mut words: Vec<String> = spec.sudo.split_whitespace().map(String::from).collect();
            // Never let sudo wait for a password nobody will type.
            if words.first().map(|w| w.rsplit('/').next() == Some("sudo")).unwrap_or(false)
                && !words.iter().any(|w| w == "-n" || w == "--non-interactive")
            {
                words.insert(1, "-n".into());
            }
            words
        };
        Destination {
            host: spec.hostname.clone(),
            user: spec.ssh_user.clone(),
            port: spec.ssh_port,
            ssh_opts: spec.ssh_opts.clone(),
            escalate,
            connect_timeout: spec.timeouts.connect,
        }
    }

    /// `user@host` as ssh and Nix store URIs want it (IPv6 in brackets).
    pub fn user_at_host(&self) -> String {
        if self.host.contains(':') {
            format!("{}@[{}]", self.user, self.host)
        } else {
            format!("{}@{}", self.user, self.host)
        }
    }

    /// The full argv a command runs with on the target.
    pub fn argv_for(&self, cmd: &Cmd) -> Vec<String> {
        let mut v = Vec::new();
        if cmd.root && !self.escalate.is_empty() {
            v.extend(self.escalate.iter().cloned());
            v.push("--".into());
        }
        if cmd.bounded {
            v.extend([
                "timeout".to_string(),
                "-k".into(),
                "5".into(),
                cmd.timeout.as_secs().max(1).to_string(),
            ]);
        }
        v.extend(cmd.argv.iter().cloned());
        v
    }
}

/// Translate the inventory's `sshOpts` (ssh command-line options) into
/// ssh_config lines, so the master and every fresh login use them alike.
pub fn ssh_opts_to_config(opts: &[String]) -> Result<Vec<String>, RemoteError> {
    let mut out = Vec::new();
    let mut it = opts.iter();
    while let Some(opt) = it.next() {
        let (flag, inline) = if opt.starts_with('-') && opt.len() > 2 {
            (&opt[..2], Some(opt[2..].to_string()))
        } else {
            (opt.as_str(), None)
        };
        let mut value = |name: &str| -> Result<String, RemoteError> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| RemoteError::SshOpts(format!("{name} needs a value"))),
            }
        };
        let line = match flag {
            "-o" => {
                let v = value("-o")?;
                let (k, val) = v
                    .split_once('=')
                    .or_else(|| v.split_once(' '))
                    .ok_or_else(|| RemoteError::SshOpts(format!("`-o {v}`: expected Key=Value")))?;
                format!("{} {}", k.trim(), quote_config(val.trim()))
            }
            "-i" => format!("IdentityFile {}", quote_config(&value("-i")?)),
            "-p" => format!("Port {}", value("-p")?),
            "-l" => format!("User {}", value("-l")?),
            "-J" => format!("ProxyJump {}", value("-J")?),
            "-F" => format!("Include {}", quote_config(&value("-F")?)),
            "-4" if inline.is_none() => "AddressFamily inet".into(),
            "-6" if inline.is_none() => "AddressFamily inet6".into(),
            "-A" if inline.is_none() => "ForwardAgent yes".into(),
            "-C" if inline.is_none() => "Compression yes".into(),
            "-q" if inline.is_none() => "LogLevel QUIET".into(),
            _ => {
                return Err(RemoteError::SshOpts(format!(
                    "unsupported ssh option `{opt}`; write it as `-o Key=Value`"
                )))
            }
        };
        if line.contains('\n') || line.contains('\r') {
            return Err(RemoteError::SshOpts(format!("`{opt}` contains a line break")));
        }
        out.push(line);
    }
    Ok(out)
}

fn quote_config(v: &str) -> String {
    if v.contains(char::is_whitespace) {
        format!("\"{v}\"")
    } else {
        v.to_string()
    }
}

/// Options shared by the master and the fresh confirmation login.
fn common_ssh_args(dest: &Destination, config: Option<&Path>) -> Vec<String> {
    let mut v = vec![
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        format!("ConnectTimeout={}", dest.connect_timeout),
        "-o".into(),
        "ServerAliveInterval=5".into(),
        "-o".into(),
        "ServerAliveCountMax=3".into(),
        "-p".into(),
        dest.port.to_string(),
        "-l".into(),
        dest.user.clone(),
    ];
    if let Some(c) = config {
        v.push("-F".into());
        v.push(c.display().to_string());
    }
    v
}

/// A live connection to one host: the master plus the private directory
/// holding its control socket and our generated ssh config.
pub struct Remote {
    pub dest: Destination,
    session: Option<Arc<Session>>,
    dir: tempfile::TempDir,
    config: Option<PathBuf>,
}

impl Remote {
    /// Open the master connection, bounded by the connect timeout.
    pub async fn connect(dest: Destination) -> Result<Remote, RemoteError> {
        let dir = tempfile::Builder::new().prefix("deploy-flake-ssh.").tempdir()?;
        let config = if dest.ssh_opts.is_empty() {
            None
        } else {
            let mut lines = ssh_opts_to_config(&dest.ssh_opts)?;
            // -F replaces the default config files: include them after our
            // lines so the user's ~/.ssh/config is still honoured (first value wins).
            if let Some(home) = std::env::var_os("HOME") {
                let user_cfg = Path::new(&home).join(".ssh/config");
                if user_cfg.exists() {
                    lines
                        .push(format!("Include {}", quote_config(&user_cfg.display().to_string())));
                }
            }
            if Path::new("/etc/ssh/ssh_config").exists() {
                lines.push("Include /etc/ssh/ssh_config".into());
            }
            let path = dir.path().join("ssh_config");
            std::fs::write(&path, lines.join("\n") + "\n")?;
            Some(path)
        };
        let mut remote = Remote { dest, session: None, dir, config };
        remote.open_master().await?;
        Ok(remote)
    }

    async fn open_master(&mut self) -> Result<(), RemoteError> {
        let d = &self.dest;
        let mut b = SessionBuilder::default();
        b.user(d.user.clone())
            .port(d.port)
            .known_hosts_check(KnownHosts::Strict)
            .connect_timeout(Duration::from_secs(d.connect_timeout.max(1)))
            .server_alive_interval(Duration::from_secs(5))
            .control_directory(self.dir.path())
            // A deployer that dies leaves no master behind for long.
            .control_persist(ControlPersist::IdleFor(std::num::NonZeroUsize::new(30).unwrap()));
        if let Some(c) = &self.config {
            b.config_file(c);
        }
        let host = if d.host.contains(':') { format!("[{}]", d.host) } else { d.host.clone() };
        let secs = d.connect_timeout.max(1) + 5;
        let session =
            match tokio::time::timeout(Duration::from_secs(secs), b.connect_mux(&host)).await {
                Err(_) => {
                    return Err(RemoteError::ConnectTimeout {
                        dest: d.user_at_host(),
                        secs: d.connect_timeout,
                    })
                }
                Ok(Err(e)) => {
                    return Err(RemoteError::Connect {
                        dest: format!("{}:{}", d.user_at_host(), d.port),
                        reason: error_chain(&e),
                    })
                }
                Ok(Ok(s)) => s,
            };
        self.session = Some(Arc::new(session));
        Ok(())
    }

    /// Is the master still alive?
    pub async fn check(&self) -> bool {
        match &self.session {
            Some(s) => s.check().await.is_ok(),
            None => false,
        }
    }

    /// Drop a dead master and open a new one.
    pub async fn reconnect(&mut self) -> Result<(), RemoteError> {
        close_session(self.session.take()).await;
        self.open_master().await
    }

    /// The master, or an error when a reconnect has not succeeded yet.
    fn session(&self) -> Result<&Arc<Session>, RemoteError> {
        self.session
            .as_ref()
            .ok_or_else(|| RemoteError::Disconnected { cmd: "(no connection)".into() })
    }

    /// `NIX_SSHOPTS` that make Nix ride on our master: no new login.
    pub fn nix_sshopts(&self) -> Result<String, RemoteError> {
        Ok(format!("-S {} -o ControlMaster=no", self.session()?.control_socket().display()))
    }

    /// The ssh-ng store URI of the target. A non-root user reaches the
    /// store through the escalation command: an unprivileged user may be
    /// refused by the daemon socket, and is not trusted with unsigned paths.
    pub fn store_uri(&self) -> String {
        store_uri(&self.dest)
    }

    fn build(&self, cmd: &Cmd) -> Result<openssh::OwningCommand<Arc<Session>>, RemoteError> {
        let line = quote_argv(&self.dest.argv_for(cmd));
        let mut c = Session::to_raw_command(self.session()?.clone(), line);
        c.stdin(openssh::Stdio::null());
        Ok(c)
    }

    /// Run a command to completion and capture its output.
    pub async fn run(&self, cmd: &Cmd) -> Result<Output, RemoteError> {
        self.run_with_stdin(cmd, None).await
    }

    /// Run a command feeding it `stdin`.
    pub async fn run_with_stdin(
        &self,
        cmd: &Cmd,
        stdin: Option<&[u8]>,
    ) -> Result<Output, RemoteError> {
        let mut c = self.build(cmd)?;
        c.stdout(openssh::Stdio::piped()).stderr(openssh::Stdio::piped());
        if stdin.is_some() {
            c.stdin(openssh::Stdio::piped());
        }
        let fut = async {
            let mut child = c.spawn().await.map_err(|e| self.disconnected_or_io(cmd, e))?;
            if let Some(data) = stdin {
                use tokio::io::AsyncWriteExt;
                let mut w = child.stdin().take().expect("stdin is piped");
                w.write_all(data).await?;
                w.shutdown().await?;
                drop(w);
            }
            let out =
                child.wait_with_output().await.map_err(|e| self.disconnected_or_io(cmd, e))?;
            Ok::<_, RemoteError>(out)
        };
        let out = match tokio::time::timeout(cmd.local_limit(), fut).await {
            Err(_) => {
                return Err(RemoteError::Timeout {
                    cmd: cmd.display(),
                    secs: cmd.timeout.as_secs(),
                })
            }
            Ok(r) => r?,
        };
        let output = Output::from(out);
        self.check_escalation(cmd, &output)?;
        check_remote_timeout(cmd, output.status)?;
        Ok(output)
    }

    /// Run a command, handing each line of stdout and stderr to `on_line`.
    pub async fn stream(
        &self,
        cmd: &Cmd,
        mut on_line: impl FnMut(&str) + Send,
    ) -> Result<ExitStatus, RemoteError> {
        let mut c = self.build(cmd)?;
        c.stdout(openssh::Stdio::piped()).stderr(openssh::Stdio::piped());
        let fut = async {
            let mut child = c.spawn().await.map_err(|e| self.disconnected_or_io(cmd, e))?;
            let out = child.stdout().take().expect("stdout is piped");
            let err = child.stderr().take().expect("stderr is piped");
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
            let t1 = tokio::spawn(forward_lines(out, tx.clone()));
            let t2 = tokio::spawn(forward_lines(err, tx));
            while let Some(line) = rx.recv().await {
                on_line(&line);
            }
            let _ = t1.await;
            let _ = t2.await;
            let status = child.wait().await.map_err(|e| self.disconnected_or_io(cmd, e))?;
            Ok::<_, RemoteError>(status)
        };
        match tokio::time::timeout(cmd.local_limit(), fut).await {
            Err(_) => Err(RemoteError::Timeout { cmd: cmd.display(), secs: cmd.timeout.as_secs() }),
            Ok(r) => {
                let status = r?;
                check_remote_timeout(cmd, status)?;
                Ok(status)
            }
        }
    }

    fn disconnected_or_io(&self, cmd: &Cmd, e: openssh::Error) -> RemoteError {
        match e {
            openssh::Error::Disconnected | openssh::Error::RemoteProcessTerminated => {
                RemoteError::Disconnected { cmd: cmd.display() }
            }
            other => RemoteError::Io(std::io::Error::other(error_chain(&other))),
        }
    }

    fn check_escalation(&self, cmd: &Cmd, out: &Output) -> Result<(), RemoteError> {
        if cmd.root
            && !self.dest.escalate.is_empty()
            && !out.success()
            && (out.stderr.contains("a password is required")
                || out.stderr.contains("a terminal is required"))
        {
            return Err(RemoteError::SudoNeedsPassword {
                sudo: self.dest.escalate.join(" "),
                user: self.dest.user.clone(),
            });
        }
        Ok(())
    }

    /// Run a command over a brand-new ssh login that cannot reuse any
    /// master (ControlPath=none): the proof that a new login still works.
    pub async fn fresh_login(&self, cmd: &Cmd) -> Result<Output, RemoteError> {
        let d = &self.dest;
        let mut c = LocalCommand::new("ssh");
        c.args(["-o", "ControlPath=none", "-o", "ControlMaster=no"])
            .args(common_ssh_args(d, self.config.as_deref()))
            .arg("-T")
            .arg(&d.host)
            .arg(quote_argv(&d.argv_for(cmd)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            // A Ctrl-C in the terminal must not kill the confirmation halfway.
            .process_group(0);
        let out = match tokio::time::timeout(cmd.local_limit(), c.output()).await {
            Err(_) => {
                return Err(RemoteError::Timeout {
                    cmd: format!("fresh ssh login: {}", cmd.display()),
                    secs: cmd.timeout.as_secs(),
                })
            }
            Ok(r) => r?,
        };
        let output = Output::from(out);
        self.check_escalation(cmd, &output)?;
        Ok(output)
    }

    /// Take the host lock: `flock` held by a remote process for as long as
    /// our connection lives. A deployer that dies drops its connection, and
    /// with it the lock.
    pub async fn hold_lock(
        &self,
        agent: &str,
        owner: &str,
        secs: u64,
    ) -> Result<HostLock, RemoteError> {
        let lockfile = "/run/deploy-flake/lock";
        let cmd = Cmd::new(["flock", "-n", "-E", "75", lockfile, "/bin/sh", agent, "hold", owner])
            .secs(secs)
            .unbounded();
        let mut c = self.build(&cmd)?;
        c.stdin(openssh::Stdio::piped())
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
        let mut child = c.spawn().await.map_err(|e| self.disconnected_or_io(&cmd, e))?;
        let stdout = child.stdout().take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        // The holder names activation units of other runs that still go on,
        // then says "locked".
        let mut busy = Vec::new();
        let deadline = tokio::time::Instant::now() + cmd.timeout;
        loop {
            match tokio::time::timeout_at(deadline, lines.next_line()).await {
                Ok(Ok(Some(l))) if l.trim() == "locked" => {
                    return Ok(HostLock { _child: child, busy })
                }
                Ok(Ok(Some(l))) => {
                    busy.extend(l.strip_prefix("deploy-flake-busy ").map(String::from))
                }
                Err(_) => return Err(RemoteError::Timeout { cmd: "flock".into(), secs }),
                Ok(_) => break,
            }
        }
        let status = tokio::time::timeout(Duration::from_secs(secs), child.wait()).await;
        match status {
            Ok(Ok(s)) if s.code() == Some(75) => {
                let info =
                    self.run(&Cmd::new(["cat", "/run/deploy-flake/lock.info"]).secs(secs)).await?;
                let holder = info.stdout.trim();
                Err(RemoteError::Locked {
                    holder: if holder.is_empty() {
                        "another deploy".into()
                    } else {
                        holder.to_string()
                    },
                })
            }
            _ => {
                let out = self.run(&Cmd::new(["flock", "--version"]).secs(secs)).await?;
                let hint = if out.success() {
                    ""
                } else {
                    " (is util-linux's flock installed on the target?)"
                };
                Err(RemoteError::LockFailed(format!("could not take the host lock{hint}")))
            }
        }
    }

    /// Close the master.
    pub async fn close(mut self) {
        close_session(self.session.take()).await;
    }
}

async fn close_session(s: Option<Arc<Session>>) {
    if let Some(s) = s {
        match Arc::try_unwrap(s) {
            Ok(s) => {
                let _ = tokio::time::timeout(Duration::from_secs(5), s.close()).await;
            }
            // Still shared (a lock holder): dropping it ends the master.
            Err(s) => drop(s),
        }
    }
}

/// The host lock; released when dropped (the remote holder sees EOF).
pub struct HostLock {
    _child: openssh::Child<Arc<Session>>,
    /// Activation units of other runs that were still going when we took it.
    pub busy: Vec<String>,
}

pub fn store_uri(dest: &Destination) -> String {
    let mut uri = format!("ssh-ng://{}", dest.user_at_host());
    if !dest.escalate.is_empty() {
        let program: Vec<String> =
            dest.escalate.iter().cloned().chain(["nix-daemon".to_string()]).collect();
        uri.push_str("?remote-program=");
        for b in program.join(" ").bytes() {
            if b.is_ascii_alphanumeric() || b"-_./".contains(&b) {
                uri.push(b as char);
            } else {
                uri.push_str(&format!("%{b:02X}"));
            }
        }
    }
    uri
}

/// What to do about a failed connection, from ssh's own words.
pub fn connect_hint(reason: &str, dest: &str) -> String {
    let hint = if reason.contains("Host key verification failed")
        || reason.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
    {
        format!(
            "the host key of {dest} is not in known_hosts, or it changed; verify its fingerprint and add it \
             (deploy-flake never turns host key checking off)"
        )
    } else if reason.contains("Permission denied") {
        "the key was refused: check sshUser and that your key (or agent) is authorised on the host"
            .to_string()
    } else if reason.contains("Connection refused") {
        "nothing listens there: check hostname, sshPort and that sshd runs".to_string()
    } else if reason.contains("timed out")
        || reason.contains("No route to host")
        || reason.contains("unreachable")
    {
        "the host is unreachable: check hostname and the network (timeouts.connect bounds the wait)"
            .to_string()
    } else if reason.contains("Could not resolve hostname") {
        "the host name does not resolve: check hostname".to_string()
    } else {
        return String::new();
    };
    format!("\n  hint: {hint}")
}

/// `timeout` on the target exits 124 (137 after -k) when it stopped the command.
fn check_remote_timeout(cmd: &Cmd, status: ExitStatus) -> Result<(), RemoteError> {
    if cmd.bounded && matches!(status.code(), Some(124) | Some(137)) {
        return Err(RemoteError::Timeout { cmd: cmd.display(), secs: cmd.timeout.as_secs() });
    }
    Ok(())
}

async fn forward_lines(r: impl AsyncRead + Unpin, tx: tokio::sync::mpsc::UnboundedSender<String>) {
    let mut lines = BufReader::new(r).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        if tx.send(line).is_err() {
            break;
        }
    }
}

/// An error and its sources on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(m.trim());
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting_keeps_each_argument_whole() {
        let argv: Vec<String> =
            ["echo", "a b", "$(touch /tmp/x)", "it's", ""].iter().map(|s| s.to_string()).collect();
        assert_eq!(quote_argv(&argv), r#"echo 'a b' '$(touch /tmp/x)' 'it'\''s' ''"#);
    }

    #[test]
    fn sudo_gets_non_interactive_flag() {
        let mut spec = HostSpec::with_defaults("web1");
        spec.ssh_user = "deploy".into();
        let d = Destination::from_spec(&spec);
        assert_eq!(d.escalate, vec!["sudo", "-n"]);
        let argv = d.argv_for(&Cmd::new(["systemctl", "is-system-running"]).secs(7));
        assert_eq!(
            argv,
            vec!["sudo", "-n", "--", "timeout", "-k", "5", "7", "systemctl", "is-system-running"]
        );
        assert_eq!(d.argv_for(&Cmd::new(["id"]).unprivileged().unbounded()), vec!["id"]);
        spec.ssh_user = "root".into();
        assert!(Destination::from_spec(&spec).escalate.is_empty());
        spec.ssh_user = "ops".into();
        spec.sudo = "doas".into();
        assert_eq!(Destination::from_spec(&spec).escalate, vec!["doas"]);
    }

    #[test]
    fn ssh_opts_become_config_lines() {
        let opts: Vec<String> =
            ["-i", "/k/id key", "-oUserKnownHostsFile=/k/known", "-o", "ProxyJump bastion", "-4"]
                .iter()
                .map(|s| s.to_string())
                .collect();
        assert_eq!(
            ssh_opts_to_config(&opts).unwrap(),
            vec![
                "IdentityFile \"/k/id key\"",
                "UserKnownHostsFile /k/known",
                "ProxyJump bastion",
                "AddressFamily inet"
            ]
        );
        let bad: Vec<String> = vec!["-X".into()];
        assert_eq!(
            ssh_opts_to_config(&bad).unwrap_err().to_string(),
            "sshOpts: unsupported ssh option `-X`; write it as `-o Key=Value`"
        );
        let missing: Vec<String> = vec!["-i".into()];
        assert_eq!(
            ssh_opts_to_config(&missing).unwrap_err().to_string(),
            "sshOpts: -i needs a value"
        );
    }

    #[test]
    fn non_root_users_reach_the_store_through_sudo() {
        let mut spec = HostSpec::with_defaults("web1");
        assert_eq!(store_uri(&Destination::from_spec(&spec)), "ssh-ng://root@web1");
        spec.ssh_user = "deploy".into();
        assert_eq!(
            store_uri(&Destination::from_spec(&spec)),
            "ssh-ng://deploy@web1?remote-program=sudo%20-n%20nix-daemon"
        );
    }

    #[test]
    fn connection_failures_come_with_a_hint() {
        let e = RemoteError::Connect {
            dest: "root@web1:22".into(),
            reason: "Host key verification failed.".into(),
        };
        assert_eq!(
            e.to_string(),
            "cannot connect to root@web1:22: Host key verification failed.\n  hint: the host key of root@web1:22 is not in \
             known_hosts, or it changed; verify its fingerprint and add it (deploy-flake never turns host key checking off)"
        );
        assert!(connect_hint("ssh: connect to host x port 22: Connection refused", "x")
            .contains("sshPort"));
        assert!(connect_hint("Permission denied (publickey).", "x").contains("sshUser"));
        assert_eq!(connect_hint("something else", "x"), "");
    }

    #[test]
    fn ipv6_hosts_are_bracketed_in_uris() {
        let mut spec = HostSpec::with_defaults("v6");
        spec.hostname = "fe80::1".into();
        assert_eq!(Destination::from_spec(&spec).user_at_host(), "root@[fe80::1]");
    }
}
