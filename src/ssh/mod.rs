//! The ssh layer: one master connection per host, and running commands
//! over it (a [`Spawner`]). It knows nothing of what the commands do.

mod config;
mod destination;
mod sudo;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};

use crate::budget::{REMOTE_MARGIN_SECS, SERVER_ALIVE_COUNT, SERVER_ALIVE_SECS};
use config::config_file;
pub use config::{connect_hint, ssh_opts_to_config};
pub use destination::{bracket_ipv6, percent_encode, Destination};
pub use sudo::set_password as set_sudo_password;

use crate::process::{
    Child, Cmd, Exit, Local, Output, Place, ProcessError, Reader, Spawner, Waiter, Writer,
};

/// Seconds a login may take once the host is reached (on top of
/// `timeouts.connect`, ssh's own ConnectTimeout).
pub const LOGIN_GRACE: u64 = 5;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {dest}: {reason}{}", connect_hint(reason, dest))]
    Connect { dest: String, reason: String },
    #[error(
        "connecting to {dest} did not finish within {} s (timeouts.connect = {secs} s to reach \
         it, plus {LOGIN_GRACE} s for the login)", secs + LOGIN_GRACE
    )]
    ConnectTimeout { dest: String, secs: u64 },
    #[error("{0}")]
    SshOpts(String),
    #[error("preparing the ssh connection: {0}")]
    Io(String),
    /// The host's sudo wants a password it cannot be given, or refused it.
    #[error("{dest}: {reason}")]
    Sudo { dest: String, reason: String },
}

impl SshError {
    /// The host's key is unknown or changed.
    pub fn is_host_key(&self) -> bool {
        matches!(self, SshError::Connect { reason, .. } if host_key_refused(reason))
    }

    /// The host answered but refused our key.
    pub fn is_auth(&self) -> bool {
        matches!(self, SshError::Connect { reason, .. } if reason.contains("Permission denied"))
            || matches!(self, SshError::Sudo { .. })
    }
}

fn host_key_refused(reason: &str) -> bool {
    reason.contains("Host key verification failed")
        || reason.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
}

/// A live connection to one host: the master, plus the private directory
/// holding its control socket and our generated ssh config.
pub struct Ssh {
    pub dest: Destination,
    /// The host's name in the run, for messages.
    name: String,
    session: Option<Arc<Session>>,
    dir: tempfile::TempDir,
    config: Option<PathBuf>,
}

impl Ssh {
    /// Open the master connection, bounded by the connect timeout.
    pub async fn connect(name: &str, dest: Destination) -> Result<Ssh, SshError> {
        let io = |e: std::io::Error| SshError::Io(e.to_string());
        let dir = tempfile::Builder::new().prefix("deploy-flake-ssh.").tempdir().map_err(io)?;
        let config = if dest.ssh_opts.is_empty() {
            None
        } else {
            let path = dir.path().join("ssh_config");
            std::fs::write(&path, config_file(&dest.ssh_opts, &dest.host)?).map_err(io)?;
            Some(path)
        };
        let mut ssh = Ssh { dest, name: name.to_string(), session: None, dir, config };
        ssh.open_master().await?;
        ssh.sudo_password().await?;
        Ok(ssh)
    }

    async fn open_master(&mut self) -> Result<(), SshError> {
        let d = &self.dest;
        let mut b = SessionBuilder::default();
        b.user(d.user.clone())
            .port(d.port)
            .known_hosts_check(KnownHosts::Strict)
            .connect_timeout(Duration::from_secs(d.connect_timeout.max(1)))
            // (ssh's own ServerAliveCountMax is 3: SERVER_ALIVE_COUNT.)
            .server_alive_interval(Duration::from_secs(SERVER_ALIVE_SECS))
            .control_directory(self.dir.path())
            // A deployer that dies leaves no master behind for long.
            .control_persist(ControlPersist::IdleFor(std::num::NonZeroUsize::new(30).unwrap()));
        if let Some(c) = &self.config {
            b.config_file(c);
        }
        let secs = d.connect_timeout.max(1) + LOGIN_GRACE;
        // ssh takes an IPv6 literal bare: brackets are URI syntax only.
        let session =
            match tokio::time::timeout(Duration::from_secs(secs), b.connect_mux(&d.host)).await {
                Err(_) => {
                    return Err(SshError::ConnectTimeout {
                        dest: d.display(),
                        secs: d.connect_timeout.max(1),
                    })
                }
                Ok(Err(e)) => {
                    return Err(SshError::Connect { dest: d.display(), reason: error_chain(&e) })
                }
                Ok(Ok(s)) => s,
            };
        self.session = Some(Arc::new(session));
        Ok(())
    }

    /// Is the master still alive?
    pub async fn alive(&self) -> bool {
        match &self.session {
            Some(s) => s.check().await.is_ok(),
            None => false,
        }
    }

    /// Drop a dead master and open a new one.
    pub async fn reconnect(&mut self) -> Result<(), SshError> {
        close_session(self.session.take()).await;
        self.open_master().await
    }

    fn session(&self, cmd: &Cmd) -> Result<&Arc<Session>, ProcessError> {
        self.session.as_ref().ok_or_else(|| ProcessError::Disconnected { cmd: cmd.display() })
    }

    /// `NIX_SSHOPTS` that make Nix ride on our master, and fail closed
    /// without it ([`nix_sshopts`]).
    pub fn nix_sshopts(&self) -> Result<String, ProcessError> {
        let cmd = Cmd::new(["nix"]);
        Ok(nix_sshopts(self.session(&cmd)?.control_socket()))
    }

    /// The master's control socket, for a Nix process that reaches
    /// several hosts through their masters at once.
    pub fn control_socket(&self) -> Result<PathBuf, ProcessError> {
        let cmd = Cmd::new(["nix"]);
        Ok(self.session(&cmd)?.control_socket().to_path_buf())
    }

    /// A runner for commands over a brand-new ssh login that cannot reuse
    /// any master (ControlPath=none): the proof that a new login works.
    pub fn fresh_login(&self) -> FreshLogin<'_> {
        FreshLogin(self)
    }

    /// Close the master.
    pub async fn close(mut self) {
        close_session(self.session.take()).await;
    }

    fn disconnected_or_spawn(&self, cmd: &Cmd, e: openssh::Error) -> ProcessError {
        match e {
            openssh::Error::Disconnected | openssh::Error::RemoteProcessTerminated => {
                ProcessError::Disconnected { cmd: cmd.display() }
            }
            other => ProcessError::Spawn {
                program: cmd.display(),
                place: self.place(),
                reason: error_chain(&other),
            },
        }
    }

    /// The password a command's stdin starts with: a root command's, once
    /// the host's sudo asked for one.
    fn password_for(&self, cmd: &Cmd) -> Option<std::sync::Arc<crate::secret::Secret>> {
        if cmd.root && !self.dest.escalate.is_empty() {
            self.dest.password.clone()
        } else {
            None
        }
    }

    /// After a remote command: a remote timeout, or sudo wanting a password.
    fn inspect_remote(&self, cmd: &Cmd, out: &Output) -> Result<(), ProcessError> {
        let d = &self.dest;
        if cmd.root
            && !d.escalate.is_empty()
            && !out.success()
            && (out.stderr.contains("a password is required")
                || out.stderr.contains("a terminal is required"))
        {
            return Err(ProcessError::NeedsPassword {
                sudo: d.escalate.join(" "),
                user: d.user.clone(),
            });
        }
        // `timeout` on the target exits 124 (137 after -k) when it stopped the command.
        if cmd.bounded && matches!(out.exit, Exit::Code(124) | Exit::Code(137)) {
            return Err(ProcessError::Timeout {
                cmd: cmd.display(),
                secs: cmd.timeout.as_secs(),
                place: self.place(),
            });
        }
        Ok(())
    }
}

impl Spawner for Ssh {
    fn place(&self) -> Place {
        Place::Remote(self.name.clone())
    }

    fn spawn(&self, cmd: &Cmd) -> impl Future<Output = Result<Child, ProcessError>> + Send {
        let session = self.session(cmd).cloned();
        let line = self.dest.line_for(cmd);
        let password = self.password_for(cmd);
        async move {
            let mut c = Session::to_raw_command(session?, line);
            c.stdin(if cmd.stdin.is_some() || password.is_some() {
                openssh::Stdio::piped()
            } else {
                openssh::Stdio::null()
            })
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
            let mut child = c.spawn().await.map_err(|e| self.disconnected_or_spawn(cmd, e))?;
            let mut stdin = child.stdin().take().map(|w| Box::pin(w) as Writer);
            if let (Some(p), Some(w)) = (password, stdin.as_mut()) {
                sudo::send(&p, w)
                    .await
                    .map_err(|_| ProcessError::Disconnected { cmd: cmd.display() })?;
            }
            let stdout = Box::pin(child.stdout().take().expect("stdout is piped")) as Reader;
            let stderr = Box::pin(child.stderr().take().expect("stderr is piped")) as Reader;
            let display = cmd.display();
            let wait = Box::pin(async move {
                child
                    .wait()
                    .await
                    .map(Exit::from)
                    .map_err(|_| ProcessError::Disconnected { cmd: display })
            }) as Waiter;
            Ok(Child { stdin, stdout, stderr, wait, guard: None })
        }
    }

    /// A little longer than the remote bound, so the target's `timeout`
    /// acts first and the command does not go on there.
    fn limit(&self, cmd: &Cmd) -> Duration {
        if cmd.bounded {
            cmd.timeout + Duration::from_secs(REMOTE_MARGIN_SECS)
        } else {
            cmd.timeout
        }
    }

    fn inspect(&self, cmd: &Cmd, out: &Output) -> Result<(), ProcessError> {
        self.inspect_remote(cmd, out)
    }
}

/// Commands over a fresh login: a local `ssh` that may not use a master.
pub struct FreshLogin<'a>(&'a Ssh);

impl FreshLogin<'_> {
    /// The local `ssh` command that runs `cmd` on the target.
    pub fn local_cmd(&self, cmd: &Cmd) -> Cmd {
        let d = &self.0.dest;
        let mut argv: Vec<String> =
            ["ssh", "-o", "ControlPath=none", "-o", "ControlMaster=no"].map(String::from).into();
        // Our command is the command: none from sshOpts or ~/.ssh/config.
        for o in [
            "RemoteCommand=none".to_string(),
            "BatchMode=yes".to_string(),
            "StrictHostKeyChecking=yes".into(),
            format!("ConnectTimeout={}", d.connect_timeout),
            format!("ServerAliveInterval={SERVER_ALIVE_SECS}"),
            format!("ServerAliveCountMax={SERVER_ALIVE_COUNT}"),
        ] {
            argv.extend(["-o".to_string(), o]);
        }
        argv.extend(["-p".to_string(), d.port.to_string(), "-l".into(), d.user.clone()]);
        if let Some(c) = &self.0.config {
            argv.extend(["-F".to_string(), c.display().to_string()]);
        }
        argv.extend(["-T".to_string(), "--".into(), d.host.clone(), d.line_for(cmd)]);
        let mut local = Cmd::new(argv).timeout(self.limit(cmd));
        local.stdin = cmd.stdin.clone();
        local
    }
}

impl Spawner for FreshLogin<'_> {
    fn place(&self) -> Place {
        self.0.place()
    }

    fn spawn(&self, cmd: &Cmd) -> impl Future<Output = Result<Child, ProcessError>> + Send {
        let mut local = self.local_cmd(cmd);
        let password = self.0.password_for(cmd);
        if password.is_some() && local.stdin.is_none() {
            // A pipe, for the password line alone.
            local.stdin = Some(crate::process::Input::Bytes(Vec::new()));
        }
        async move {
            let mut child = Local.spawn(&local).await?;
            if let (Some(p), Some(w)) = (password, child.stdin.as_mut()) {
                let failed = |e: std::io::Error| ProcessError::Spawn {
                    program: local.display(),
                    place: Place::Local,
                    reason: format!("writing the sudo password: {e}"),
                };
                sudo::send(&p, w).await.map_err(failed)?;
            }
            Ok(child)
        }
    }

    fn limit(&self, cmd: &Cmd) -> Duration {
        self.0.limit(cmd) + Duration::from_secs(self.0.dest.connect_timeout)
    }

    fn inspect(&self, cmd: &Cmd, out: &Output) -> Result<(), ProcessError> {
        self.0.inspect_remote(cmd, out)
    }
}

/// `NIX_SSHOPTS` for a Nix command (`nix copy`, `nix flake archive`, ...)
/// that must reach a host only through our master at `socket`: the one
/// way every such command gets its ssh options. With the master gone, ssh
/// would otherwise open a login of its own (to port 22, without the
/// host's sshOpts, keys or known hosts); `ProxyCommand=false` makes that
/// fail at once instead, and a working master is used before any proxy.
/// (Nix splits the value at whitespace: no option may hold a space.)
pub fn nix_sshopts(socket: &std::path::Path) -> String {
    format!(
        "-S {} -o ControlMaster=no -o ProxyCommand=false -o BatchMode=yes -o StrictHostKeyChecking=yes",
        socket.display()
    )
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
    #[test]
    fn nix_rides_the_master_and_may_not_log_in_on_its_own() {
        let opts = super::nix_sshopts(std::path::Path::new("/tmp/deploy-flake-ssh.x/master"));
        // Nix splits NIX_SSHOPTS at whitespace: each option is one word.
        let words: Vec<&str> = opts.split_whitespace().collect();
        assert_eq!(
            words,
            [
                "-S",
                "/tmp/deploy-flake-ssh.x/master",
                "-o",
                "ControlMaster=no",
                "-o",
                "ProxyCommand=false",
                "-o",
                "BatchMode=yes",
                "-o",
                "StrictHostKeyChecking=yes"
            ]
        );
    }
}
