//! `--ask-sudo-password` and `--sudo-password-command`: where the sudo
//! password of a run comes from, and reading it once, before any host is
//! touched. It is kept in memory only (a [`Secret`]): never an argument,
//! never the environment of a command, never a log line.

use std::io::{BufRead, Write};
use std::os::fd::AsRawFd;

use crate::secret::Secret;

/// The sudo password flags.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SudoArgs {
    /// Ask once for the password of the ssh user's sudo, on the terminal
    /// (not echoed), before any host is touched. It goes to `sudo -S` on the
    /// stdin of each command run as root (and of the confirming login),
    /// only on hosts whose sudo asks for one; a host that refuses it fails
    /// at connect (reason `auth`), tried once.
    #[arg(long, conflicts_with = "sudo_password_command", help_heading = "Sudo")]
    pub ask_sudo_password: bool,

    /// Run CMD here (`/bin/sh -c CMD`, e.g. reading a CI secret) and take
    /// its first line of output as the sudo password, as --ask-sudo-password
    /// does with what is typed.
    #[arg(long, value_name = "CMD", help_heading = "Sudo")]
    pub sudo_password_command: Option<String>,
}

/// Where the run's sudo password comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SudoPassword {
    /// Typed on the terminal.
    Ask,
    /// The first line of a command's output.
    Command(String),
}

/// Why the password could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SudoPasswordError {
    #[error("--ask-sudo-password: no terminal to ask on ({0}); use --sudo-password-command CMD")]
    NoTerminal(String),
    #[error("--ask-sudo-password: reading the password: {0}")]
    Read(String),
    #[error("--sudo-password-command `{cmd}`: {reason}")]
    Command { cmd: String, reason: String },
    #[error("{0}: the password is empty; nothing was touched")]
    Empty(&'static str),
}

impl SudoArgs {
    pub fn source(&self) -> Option<SudoPassword> {
        match (&self.sudo_password_command, self.ask_sudo_password) {
            (Some(cmd), _) => Some(SudoPassword::Command(cmd.clone())),
            (None, true) => Some(SudoPassword::Ask),
            (None, false) => None,
        }
    }
}

impl SudoPassword {
    /// Read the password (ask, or run the command): once per run.
    pub async fn read(&self) -> Result<Secret, SudoPasswordError> {
        let (text, flag) = match self {
            SudoPassword::Ask => (ask()?, "--ask-sudo-password"),
            SudoPassword::Command(cmd) => {
                let argv = ["/bin/sh", "-c", cmd.as_str()].map(String::from);
                let out = crate::keys::capture(&argv, crate::keys::COMMAND_SECS).await;
                let out =
                    out.map_err(|reason| SudoPasswordError::Command { cmd: cmd.clone(), reason })?;
                (first_line(out.as_bytes()), "--sudo-password-command")
            }
        };
        if text.is_empty() {
            return Err(SudoPasswordError::Empty(flag));
        }
        Ok(text)
    }
}

/// The first line, without its end (`\n` or `\r\n`).
pub fn first_line(bytes: &[u8]) -> Secret {
    let line = bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    Secret::new(line.strip_suffix(b"\r").unwrap_or(line).to_vec())
}

/// Ask on the terminal, with echo off while the password is typed.
fn ask() -> Result<Secret, SudoPasswordError> {
    let tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .map_err(|e| SudoPasswordError::NoTerminal(e.to_string()))?;
    let read = |e: std::io::Error| SudoPasswordError::Read(e.to_string());
    let mut out = &tty;
    out.write_all(b"deploy-flake: sudo password: ").map_err(read)?;
    out.flush().map_err(read)?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for an open fd.
    let mut saved: libc::termios = unsafe { std::mem::zeroed() };
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(SudoPasswordError::NoTerminal(std::io::Error::last_os_error().to_string()));
    }
    let mut quiet = saved;
    quiet.c_lflag &= !libc::ECHO;
    quiet.c_lflag |= libc::ECHONL;
    // SAFETY: the same fd, a termios derived from its own.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &quiet) };
    let mut line = Vec::new();
    let got = std::io::BufReader::new(&tty).read_until(b'\n', &mut line);
    // SAFETY: as above; echo is back whatever was read.
    unsafe { libc::tcsetattr(fd, libc::TCSANOW, &saved) };
    let line = Secret::new(line);
    got.map_err(read)?;
    Ok(first_line(line.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_is_the_first_line() {
        assert_eq!(first_line(b"s3cret\nrest\n").as_bytes(), b"s3cret");
        assert_eq!(first_line(b"s3cret\r\n").as_bytes(), b"s3cret");
        assert_eq!(first_line(b"s3cret").as_bytes(), b"s3cret");
        assert!(first_line(b"\nx").is_empty());
    }

    #[tokio::test]
    async fn a_command_gives_the_password_or_says_why_not_without_its_output() {
        let cmd = SudoPassword::Command("printf 'pw-from-ci\\nignored'".into());
        assert_eq!(cmd.read().await.unwrap().as_bytes(), b"pw-from-ci");
        let cmd = SudoPassword::Command("echo leaked; echo vault sealed >&2; exit 2".into());
        let e = cmd.read().await.unwrap_err().to_string();
        assert_eq!(
            e,
            "--sudo-password-command `echo leaked; echo vault sealed >&2; exit 2`: failed here (exit 2):\nvault sealed"
        );
        let e = SudoPassword::Command("true".into()).read().await.unwrap_err().to_string();
        assert_eq!(e, "--sudo-password-command: the password is empty; nothing was touched");
    }
}
