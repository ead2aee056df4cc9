//! A sudo that asks for a password: the password given for this run
//! (`--ask-sudo-password`, `--sudo-password-command`) goes to `sudo -S` as
//! the first line of each escalated command's stdin — never an argument,
//! never the environment — and sudo reads exactly that line, so the rest of
//! stdin (the agent's text, an archive, the keys) reaches the command.
//!
//! Each host is asked once, at connect: first without the password (a
//! sudo that does not ask never gets it), then with it, once: a wrong one
//! fails the host there, and is never tried three times. The answer holds
//! for every root command: one sudo policy per user is assumed (a policy
//! that asks for some commands and not others would hand the password
//! line to a command that does not ask).

use std::sync::{Arc, OnceLock};

use tokio::io::AsyncWriteExt;

use super::{Ssh, SshError};
use crate::process::{self, Cmd, ProcessError, Writer};
use crate::secret::Secret;

/// The run's sudo password, once given.
static PASSWORD: OnceLock<Arc<Secret>> = OnceLock::new();

/// The sudo password of this run (set once, before any host is touched).
pub fn set_password(password: Secret) {
    let _ = PASSWORD.set(Arc::new(password));
}

/// How the escalation command is told to read the password: on stdin
/// (`-S`), with no prompt (`-p ''`), ignoring cached credentials (`-k`), so
/// that it always reads exactly the line we send.
pub const READ_PASSWORD: [&str; 4] = ["-k", "-S", "-p", ""];

/// Is `escalate` (the host's `sudo` words) sudo itself?
pub fn is_sudo(escalate: &[String]) -> bool {
    escalate.first().is_some_and(|w| w.rsplit('/').next() == Some("sudo"))
}

/// The escalation words that read the password from stdin.
pub fn with_password(escalate: &[String]) -> Vec<String> {
    let mut words: Vec<String> =
        escalate.iter().filter(|w| *w != "-n" && *w != "--non-interactive").cloned().collect();
    words.extend(READ_PASSWORD.map(String::from));
    words
}

/// Write the password line first on an escalated command's stdin.
pub async fn send(password: &Secret, stdin: &mut Writer) -> std::io::Result<()> {
    let mut line = Vec::with_capacity(password.len() + 1);
    line.extend_from_slice(password.as_bytes());
    line.push(b'\n');
    let line = Secret::new(line);
    stdin.write_all(line.as_bytes()).await?;
    stdin.flush().await
}

impl Ssh {
    /// With a password for this run and a user that is not root: does the
    /// host's sudo ask for one? Then check it, once.
    pub(super) async fn sudo_password(&mut self) -> Result<(), SshError> {
        let Some(password) = PASSWORD.get() else { return Ok(()) };
        if self.dest.escalate.is_empty() {
            return Ok(());
        }
        let secs = self.dest.connect_timeout.max(1) + super::LOGIN_GRACE;
        let probe = Cmd::new(["true"]).secs(secs).unbounded();
        let failed = |e: ProcessError| SshError::Io(format!("checking sudo: {e}"));
        match process::run(&*self, &probe, None).await {
            Ok(out) if out.success() => return Ok(()),
            Err(ProcessError::NeedsPassword { .. }) => {}
            Ok(out) => {
                return Err(failed(
                    out.check().err().unwrap_or(ProcessError::Disconnected { cmd: "sudo".into() }),
                ))
            }
            Err(e) => return Err(failed(e)),
        }
        let (dest, user) = (self.dest.display(), self.dest.user.clone());
        let sudo = self.dest.escalate.join(" ");
        if !is_sudo(&self.dest.escalate) {
            return Err(SshError::Sudo {
                dest,
                reason: format!(
                    "`{sudo}` asks user {user} for a password, and only sudo can be given one \
                     (on stdin): allow {user} without a password (doas: `permit nopass`), or \
                     set the host's sudo to \"sudo\""
                ),
            });
        }
        self.dest.password = Some(password.clone());
        match process::run(&*self, &probe, None).await {
            Ok(out) if out.success() => Ok(()),
            Ok(out) => Err(SshError::Sudo {
                dest,
                reason: format!(
                    "sudo refused the password for user {user} (tried once: a wrong password is \
                     never tried again){}",
                    tail(&out.stderr)
                ),
            }),
            Err(ProcessError::NeedsPassword { .. }) => Err(SshError::Sudo {
                dest,
                reason: format!(
                    "sudo refused the password for user {user} (tried once: a wrong password is \
                     never tried again)"
                ),
            }),
            Err(e) => Err(failed(e)),
        }
    }
}

/// What sudo said, without the lines that only say "try again".
fn tail(stderr: &str) -> String {
    let said = process::tail_lines(stderr, 3);
    if said.is_empty() {
        String::new()
    } else {
        format!(": {}", said.replace('\n', "; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_read_from_stdin_without_a_prompt_and_never_cached() {
        let words = |s: &[&str]| s.iter().map(|w| w.to_string()).collect::<Vec<_>>();
        assert_eq!(with_password(&words(&["sudo", "-n"])), ["sudo", "-k", "-S", "-p", ""]);
        assert_eq!(
            with_password(&words(&["/run/wrappers/bin/sudo", "-n", "-u", "root"])),
            ["/run/wrappers/bin/sudo", "-u", "root", "-k", "-S", "-p", ""]
        );
        assert!(is_sudo(&words(&["/run/wrappers/bin/sudo", "-n"])));
        assert!(!is_sudo(&words(&["doas", "-n"])));
    }
}
