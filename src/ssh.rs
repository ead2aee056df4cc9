//! The ssh layer: how to reach a host, one master connection per host, and
//! running commands over it (a [`Spawner`]). It knows nothing of what the
//! commands do.
//!
//! A remote command line is made in one place ([`Destination::line_for`]):
//! the escalation prefix, the remote bound (`timeout`), then the argv,
//! every argument quoted by [`quote_argv`].

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use openssh::{ControlPersist, KnownHosts, Session, SessionBuilder};

use crate::inventory::HostSpec;
use crate::process::{
    quote_argv, Child, Cmd, Exit, Local, Output, Place, ProcessError, Reader, Spawner, Waiter,
    Writer,
};

/// Why a connection could not be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SshError {
    #[error("cannot connect to {dest}: {reason}{}", connect_hint(reason, dest))]
    Connect { dest: String, reason: String },
    #[error("connecting to {dest} did not finish within {secs} s (timeouts.connect)")]
    ConnectTimeout { dest: String, secs: u64 },
    #[error("sshOpts: {0}")]
    SshOpts(String),
    #[error("preparing the ssh connection: {0}")]
    Io(String),
}

impl SshError {
    /// The host's key is unknown or changed.
    pub fn is_host_key(&self) -> bool {
        matches!(self, SshError::Connect { reason, .. } if host_key_refused(reason))
    }

    /// The host answered but refused our key.
    pub fn is_auth(&self) -> bool {
        matches!(self, SshError::Connect { reason, .. } if reason.contains("Permission denied"))
    }
}

fn host_key_refused(reason: &str) -> bool {
    reason.contains("Host key verification failed")
        || reason.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
}

/// How to reach a host: derived from its inventory record.
#[derive(Debug, Clone)]
pub struct Destination {
    /// As ssh takes it: a name or a bare address (IPv6 without brackets).
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
            if words.first().is_some_and(|w| w.rsplit('/').next() == Some("sudo"))
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

    /// The host as a URI authority wants it: IPv6 addresses in brackets.
    pub fn uri_host(&self) -> String {
        bracket_ipv6(&self.host)
    }

    /// `user@host:port` for messages (IPv6 in brackets).
    pub fn display(&self) -> String {
        format!("{}@{}:{}", self.user, self.uri_host(), self.port)
    }

    /// The full argv a command runs with on the target.
    pub fn argv_for(&self, cmd: &Cmd) -> Vec<String> {
        let mut v = Vec::new();
        if cmd.root && !self.escalate.is_empty() {
            v.extend(self.escalate.iter().cloned());
            v.push("--".into());
        }
        if cmd.bounded {
            let secs = cmd.timeout.as_secs().max(1).to_string();
            v.extend(["timeout".to_string(), "-k".into(), "5".into(), secs]);
        }
        v.extend(cmd.argv.iter().cloned());
        v
    }

    /// The line ssh hands to the remote shell.
    pub fn line_for(&self, cmd: &Cmd) -> String {
        quote_argv(&self.argv_for(cmd))
    }

    /// The ssh-ng store URI. A non-root user reaches the store through the
    /// escalation command: the daemon socket may refuse an unprivileged
    /// user, and would not trust it with unsigned paths.
    pub fn store_uri(&self) -> String {
        let mut uri = format!("ssh-ng://{}@{}", self.user, self.uri_host());
        if !self.escalate.is_empty() {
            let program: Vec<&str> =
                self.escalate.iter().map(String::as_str).chain(["nix-daemon"]).collect();
            uri.push_str("?remote-program=");
            uri.push_str(&percent_encode(&program.join(" ")));
        }
        uri
    }
}

/// `fe80::1` -> `[fe80::1]`; names and IPv4 addresses stay as they are.
pub fn bracket_ipv6(host: &str) -> String {
    if host.contains(':') {
        format!("[{host}]")
    } else {
        host.to_string()
    }
}

/// Percent-encodes everything but unreserved characters (and `/`).
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Translate the inventory's `sshOpts` (ssh command-line options) into
/// ssh_config lines, so the master and every fresh login use them alike.
pub fn ssh_opts_to_config(opts: &[String]) -> Result<Vec<String>, SshError> {
    let mut out = Vec::new();
    let mut it = opts.iter();
    while let Some(opt) = it.next() {
        let (flag, inline) = if opt.starts_with('-') && opt.len() > 2 {
            (&opt[..2], Some(opt[2..].to_string()))
        } else {
            (opt.as_str(), None)
        };
        let mut value = |name: &str| -> Result<String, SshError> {
            match inline.clone() {
                Some(v) => Ok(v),
                None => it
                    .next()
                    .cloned()
                    .ok_or_else(|| SshError::SshOpts(format!("{name} needs a value"))),
            }
        };
        let line = match flag {
            "-o" => {
                let v = value("-o")?;
                let (k, val) = v
                    .split_once('=')
                    .or_else(|| v.split_once(' '))
                    .ok_or_else(|| SshError::SshOpts(format!("`-o {v}`: expected Key=Value")))?;
                format!("{} {}", k.trim(), quote_config(val.trim()))
            }
            "-i" => format!("IdentityFile {}", quote_config(&value("-i")?)),
            "-J" => format!("ProxyJump {}", value("-J")?),
            "-F" => format!("Include {}", quote_config(&value("-F")?)),
            "-4" if inline.is_none() => "AddressFamily inet".into(),
            "-6" if inline.is_none() => "AddressFamily inet6".into(),
            "-A" if inline.is_none() => "ForwardAgent yes".into(),
            "-C" if inline.is_none() => "Compression yes".into(),
            "-q" if inline.is_none() => "LogLevel QUIET".into(),
            "-p" => return Err(SshError::SshOpts(format!("`{opt}`: set sshPort instead"))),
            "-l" => return Err(SshError::SshOpts(format!("`{opt}`: set sshUser instead"))),
            _ => {
                return Err(SshError::SshOpts(format!(
                    "unsupported ssh option `{opt}`; write it as `-o Key=Value`"
                )))
            }
        };
        if line.contains('\n') || line.contains('\r') {
            return Err(SshError::SshOpts(format!("`{opt}` contains a line break")));
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
            std::fs::write(&path, config_file(&dest.ssh_opts)?).map_err(io)?;
            Some(path)
        };
        let mut ssh = Ssh { dest, name: name.to_string(), session: None, dir, config };
        ssh.open_master().await?;
        Ok(ssh)
    }

    async fn open_master(&mut self) -> Result<(), SshError> {
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
        let secs = d.connect_timeout.max(1) + 5;
        // ssh takes an IPv6 literal bare: brackets are URI syntax only.
        let session = match tokio::time::timeout(Duration::from_secs(secs), b.connect_mux(&d.host))
            .await
        {
            Err(_) => {
                return Err(SshError::ConnectTimeout { dest: d.display(), secs: d.connect_timeout })
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

    /// `NIX_SSHOPTS` that make Nix ride on our master: no new login.
    pub fn nix_sshopts(&self) -> Result<String, ProcessError> {
        let cmd = Cmd::new(["nix"]);
        let socket = self.session(&cmd)?.control_socket().display().to_string();
        Ok(format!("-S {socket} -o ControlMaster=no"))
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

/// The generated ssh config: the user's sshOpts, then the default files
/// (`-F` replaces them, and the first value of an option wins).
fn config_file(ssh_opts: &[String]) -> Result<String, SshError> {
    let mut lines = ssh_opts_to_config(ssh_opts)?;
    if let Some(home) = std::env::var_os("HOME") {
        let user_cfg = Path::new(&home).join(".ssh/config");
        if user_cfg.exists() {
            lines.push(format!("Include {}", quote_config(&user_cfg.display().to_string())));
        }
    }
    if Path::new("/etc/ssh/ssh_config").exists() {
        lines.push("Include /etc/ssh/ssh_config".into());
    }
    Ok(lines.join("\n") + "\n")
}

impl Spawner for Ssh {
    fn place(&self) -> Place {
        Place::Remote(self.name.clone())
    }

    fn spawn(&self, cmd: &Cmd) -> impl Future<Output = Result<Child, ProcessError>> + Send {
        let session = self.session(cmd).cloned();
        let line = self.dest.line_for(cmd);
        async move {
            let mut c = Session::to_raw_command(session?, line);
            c.stdin(if cmd.stdin.is_some() {
                openssh::Stdio::piped()
            } else {
                openssh::Stdio::null()
            })
            .stdout(openssh::Stdio::piped())
            .stderr(openssh::Stdio::piped());
            let mut child = c.spawn().await.map_err(|e| self.disconnected_or_spawn(cmd, e))?;
            let stdin = child.stdin().take().map(|w| Box::pin(w) as Writer);
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
            cmd.timeout + Duration::from_secs(10)
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
        for o in [
            "BatchMode=yes".to_string(),
            "StrictHostKeyChecking=yes".into(),
            format!("ConnectTimeout={}", d.connect_timeout),
            "ServerAliveInterval=5".into(),
            "ServerAliveCountMax=3".into(),
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
        let local = self.local_cmd(cmd);
        async move { Local.spawn(&local).await }
    }

    fn limit(&self, cmd: &Cmd) -> Duration {
        self.0.limit(cmd) + Duration::from_secs(self.0.dest.connect_timeout)
    }

    fn inspect(&self, cmd: &Cmd, out: &Output) -> Result<(), ProcessError> {
        self.0.inspect_remote(cmd, out)
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

/// What to do about a failed connection, from ssh's own words.
pub fn connect_hint(reason: &str, dest: &str) -> String {
    let hint = if host_key_refused(reason) {
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

    fn dest(user: &str, host: &str) -> Destination {
        let mut spec = HostSpec::with_defaults("web1");
        spec.ssh_user = user.into();
        spec.hostname = host.into();
        Destination::from_spec(&spec)
    }

    #[test]
    fn sudo_gets_non_interactive_flag() {
        let d = dest("deploy", "web1");
        assert_eq!(d.escalate, vec!["sudo", "-n"]);
        let argv = d.argv_for(&Cmd::new(["systemctl", "is-system-running"]).secs(7));
        assert_eq!(
            argv,
            vec!["sudo", "-n", "--", "timeout", "-k", "5", "7", "systemctl", "is-system-running"]
        );
        assert_eq!(d.argv_for(&Cmd::new(["id"]).unprivileged().unbounded()), vec!["id"]);
        assert!(dest("root", "web1").escalate.is_empty());
        let mut spec = HostSpec::with_defaults("web1");
        spec.ssh_user = "ops".into();
        spec.sudo = "doas".into();
        assert_eq!(Destination::from_spec(&spec).escalate, vec!["doas"]);
    }

    #[test]
    fn the_remote_line_quotes_every_argument() {
        let d = dest("root", "web1");
        let cmd = Cmd::new(["touch", "/tmp/a b", "$(x)"]).secs(3);
        assert_eq!(d.line_for(&cmd), "timeout -k 5 3 touch '/tmp/a b' '$(x)'");
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
        let err = |o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            ssh_opts_to_config(&o).unwrap_err().to_string()
        };
        assert_eq!(
            err(&["-X"]),
            "sshOpts: unsupported ssh option `-X`; write it as `-o Key=Value`"
        );
        assert_eq!(err(&["-i"]), "sshOpts: -i needs a value");
        assert_eq!(err(&["-p", "22"]), "sshOpts: `-p`: set sshPort instead");
        assert_eq!(err(&["-lroot"]), "sshOpts: `-lroot`: set sshUser instead");
    }

    #[test]
    fn non_root_users_reach_the_store_through_sudo() {
        assert_eq!(dest("root", "web1").store_uri(), "ssh-ng://root@web1");
        assert_eq!(
            dest("deploy", "web1").store_uri(),
            "ssh-ng://deploy@web1?remote-program=sudo%20-n%20nix-daemon"
        );
    }

    #[test]
    fn ipv6_hosts_are_bare_for_ssh_and_bracketed_in_uris() {
        let d = dest("root", "fe80::1");
        assert_eq!(d.host, "fe80::1");
        assert_eq!(d.store_uri(), "ssh-ng://root@[fe80::1]");
        assert_eq!(d.display(), "root@[fe80::1]:22");
    }

    #[test]
    fn connection_failures_come_with_a_hint() {
        let e = SshError::Connect {
            dest: "root@web1:22".into(),
            reason: "Host key verification failed.".into(),
        };
        assert!(e.is_host_key() && !e.is_auth());
        assert_eq!(
            e.to_string(),
            "cannot connect to root@web1:22: Host key verification failed.\n  hint: the host key of root@web1:22 is not in \
             known_hosts, or it changed; verify its fingerprint and add it (deploy-flake never turns host key checking off)"
        );
        let refused = "ssh: connect to host x port 22: Connection refused";
        assert!(connect_hint(refused, "x").contains("sshPort"));
        assert!(connect_hint("Permission denied (publickey).", "x").contains("sshUser"));
        assert_eq!(connect_hint("something else", "x"), "");
    }
}
