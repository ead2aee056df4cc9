//! How to reach a host, from how to log in to it (`fleet::SshLogin`):
//! user, host, port, escalation; and the one place a remote command line is made
//! ([`Destination::line_for`]): the escalation prefix, the remote bound
//! (`timeout`), then the argv, every argument quoted by [`quote_argv`].

use crate::fleet::SshLogin;
use crate::process::{quote_argv, Cmd};

/// How to reach a host: derived from how to log in to it.
#[derive(Debug, Clone)]
pub struct Destination {
    /// As ssh takes it: a name or a bare address (IPv6 without brackets).
    pub host: String,
    pub user: String,
    pub port: u16,
    pub ssh_opts: Vec<String>,
    /// argv prefix for root commands; empty when the user is root.
    pub escalate: Vec<String>,
    /// The run's sudo password, once the host's sudo asked for it (at
    /// connect): root commands then read it from their stdin.
    pub password: Option<std::sync::Arc<crate::secret::Secret>>,
    pub connect_timeout: u64,
}

impl Destination {
    pub fn new(login: SshLogin) -> Destination {
        let escalate = if login.user == "root" {
            Vec::new()
        } else {
            let mut words: Vec<String> = login.sudo.split_whitespace().map(String::from).collect();
            // Never let sudo (or doas) wait for a password nobody will type.
            let program = words.first().and_then(|w| w.rsplit('/').next());
            if matches!(program, Some("sudo" | "doas"))
                && !words.iter().any(|w| w == "-n" || w == "--non-interactive")
            {
                words.insert(1, "-n".into());
            }
            words
        };
        Destination {
            host: login.hostname,
            user: login.user,
            port: login.port,
            ssh_opts: login.ssh_opts,
            escalate,
            password: None,
            connect_timeout: login.connect_timeout,
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
            match self.password {
                Some(_) => v.extend(super::sudo::with_password(&self.escalate)),
                None => v.extend(self.escalate.iter().cloned()),
            }
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
    /// An IPv6 zone id's `%` is written `%25` (RFC 6874); the fleet's
    /// rules refuse every other character that would change the URI
    /// (`?`, `#`, `&`, `%`) in host names and users.
    pub fn store_uri(&self) -> String {
        let host = bracket_ipv6(&self.host.replace('%', "%25"));
        let mut uri = format!("ssh-ng://{}@{host}", self.user);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn login(user: &str, host: &str) -> SshLogin {
        SshLogin {
            hostname: host.into(),
            user: user.into(),
            port: 22,
            ssh_opts: Vec::new(),
            sudo: "sudo".into(),
            connect_timeout: 10,
        }
    }

    fn dest(user: &str, host: &str) -> Destination {
        Destination::new(login(user, host))
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
        let doas = SshLogin { sudo: "doas".into(), ..login("ops", "web1") };
        assert_eq!(Destination::new(doas).escalate, vec!["doas", "-n"]);
        let doas =
            SshLogin { sudo: "/run/wrappers/bin/doas -u root".into(), ..login("ops", "web1") };
        assert_eq!(Destination::new(doas).escalate, ["/run/wrappers/bin/doas", "-n", "-u", "root"]);
    }

    #[test]
    fn with_a_password_sudo_reads_it_from_stdin_and_the_line_never_holds_it() {
        let mut d = dest("pwuser", "web1");
        d.password = Some(std::sync::Arc::new(crate::secret::Secret::from("hunter2".to_string())));
        let line = d.line_for(&Cmd::new(["nix-store", "--import"]).secs(9));
        assert_eq!(line, "sudo -k -S -p '' -- timeout -k 5 9 nix-store --import");
        assert_eq!(d.line_for(&Cmd::new(["id"]).unprivileged()), "timeout -k 5 60 id");
        assert!(!format!("{d:?}").contains("hunter2"));
    }

    #[test]
    fn the_remote_line_quotes_every_argument() {
        let d = dest("root", "web1");
        let cmd = Cmd::new(["touch", "/tmp/a b", "$(x)"]).secs(3);
        assert_eq!(d.line_for(&cmd), "timeout -k 5 3 touch '/tmp/a b' '$(x)'");
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
        let zoned = dest("deploy", "fe80::1%eth0");
        assert_eq!(
            zoned.store_uri(),
            "ssh-ng://deploy@[fe80::1%25eth0]?remote-program=sudo%20-n%20nix-daemon"
        );
        assert_eq!(zoned.display(), "deploy@[fe80::1%eth0]:22");
    }
}
