//! Keys: secrets read on this machine at deploy time (a `keyFile`, the
//! stdout of a `keyCommand`, or a `text`) and written to files on a host,
//! never through the Nix store, an argument or an environment. Each is
//! read once per run however many hosts use it (`host::Shared`); this
//! module reads one, and encodes a host's keys as the stream the agent
//! stages them from (metadata lines, then exactly that many bytes).

use std::sync::Arc;
use std::time::Duration;

use tokio::io::AsyncReadExt;

use crate::fleet::{KeySpec, UploadAt};
use crate::process::{self, Cmd, Local, Spawner};
use crate::secret::Secret;

/// How long a `keyCommand` (or `--sudo-password-command`) may take: it may
/// ask for a passphrase (a pinentry, a hardware token).
pub const COMMAND_SECS: u64 = 120;

/// The most a key may hold (a keytab, a certificate chain: far less), and
/// the most of a command's stderr that is read.
const KEY_CAP: u64 = 16 << 20;

/// Why a key could not be read. Never holds any of its content.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key {key}: reading keyFile {path} here: {reason}")]
    File { key: String, path: String, reason: String },
    #[error("key {key}: keyCommand {cmd}: {reason}")]
    Command { key: String, cmd: String, reason: String },
}

/// Where a key's content comes from: what is read once per run.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Source {
    File(String),
    Command(Vec<String>),
}

impl Source {
    /// The source of a key (`None`: its text, which needs no reading).
    pub fn of(spec: &KeySpec) -> Option<Source> {
        match (&spec.key_file, &spec.key_command) {
            (Some(f), _) => Some(Source::File(f.clone())),
            (None, Some(argv)) => Some(Source::Command(argv.clone())),
            (None, None) => None,
        }
    }

    /// Read it (the caller keeps it for the run).
    pub async fn read(&self, key: &str) -> Result<Arc<Secret>, KeyError> {
        match self {
            Source::File(path) => match tokio::fs::read(path).await {
                Ok(bytes) => Ok(Arc::new(Secret::new(bytes))),
                Err(e) => Err(KeyError::File {
                    key: key.to_string(),
                    path: path.clone(),
                    reason: e.to_string(),
                }),
            },
            Source::Command(argv) => {
                capture(argv, COMMAND_SECS).await.map(Arc::new).map_err(|reason| {
                    KeyError::Command {
                        key: key.to_string(),
                        cmd: process::quote_argv(argv),
                        reason,
                    }
                })
            }
        }
    }
}

/// A key of a host, with its content.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub spec: KeySpec,
    pub content: Arc<Secret>,
}

/// Run `argv` here (stdin empty) and take its stdout as bytes, never as
/// lines: nothing of it reaches the output. `Err`: how it failed, with the
/// tail of its stderr.
pub async fn capture(argv: &[String], secs: u64) -> Result<Secret, String> {
    let cmd = Cmd::new(argv.iter().cloned()).secs(secs);
    tracing::debug!(argv = %process::quote_argv(argv), "run (stdout kept secret)");
    let mut child = Local.spawn(&cmd).await.map_err(|e| e.to_string())?;
    let (mut out, mut err) = (Vec::new(), Vec::new());
    let read = async {
        let (mut stdout, mut stderr) =
            ((&mut child.stdout).take(KEY_CAP + 1), (&mut child.stderr).take(KEY_CAP));
        let (o, e) = tokio::join!(stdout.read_to_end(&mut out), stderr.read_to_end(&mut err));
        o.and(e).map_err(|e| e.to_string())?;
        if out.len() as u64 > KEY_CAP {
            // (Its process group is stopped as the child is dropped.)
            return Err(format!("printed more than {} MiB here; a key is smaller", KEY_CAP >> 20));
        }
        (&mut child.wait).await.map_err(|e| e.to_string())
    };
    let exit = match tokio::time::timeout(Duration::from_secs(secs), read).await {
        Ok(exit) => exit?,
        Err(_) => return Err(format!("did not finish within {secs} s")),
    };
    if let Some(g) = child.guard.as_mut() {
        g.reaped();
    }
    let out = Secret::new(out);
    if !exit.success() {
        let tail = process::tail_lines(&String::from_utf8_lossy(&err), 5);
        let tail = if tail.is_empty() { String::new() } else { format!(":\n{tail}") };
        return Err(format!("failed here ({exit}){tail}"));
    }
    Ok(out)
}

/// The stream the agent stages a host's keys from: per key, its upload
/// time, directory, name, user, group, mode and length on a line each, then
/// its content. (The rules keep control characters out of every field.)
pub fn stream(keys: &[Loaded]) -> Secret {
    let mut out = Vec::new();
    for k in keys {
        let s = &k.spec;
        let meta = [
            s.upload_at.as_str(),
            &s.dest_dir,
            &s.name,
            &s.user,
            &s.group,
            &s.permissions,
            &k.content.len().to_string(),
        ];
        for field in meta {
            out.extend_from_slice(field.as_bytes());
            out.push(b'\n');
        }
        out.extend_from_slice(k.content.as_bytes());
    }
    Secret::new(out)
}

/// One line per key, never its content: `db -> /run/keys/db
/// (postgres:postgres 0640, pre-activation, from keyCommand)`.
pub fn describe(spec: &KeySpec) -> String {
    let from = match (&spec.text, &spec.key_file, &spec.key_command) {
        (Some(_), _, _) => "text".to_string(),
        (_, Some(f), _) => format!("keyFile {f}"),
        (_, _, Some(argv)) => format!("keyCommand {}", process::quote_argv(argv)),
        _ => "nothing".into(),
    };
    format!(
        "{} -> {} ({}:{} {}, {}, from {from})",
        spec.name,
        spec.path(),
        spec.user,
        spec.group,
        spec.permissions,
        spec.upload_at.as_str()
    )
}

/// Does the host have keys to write at this time?
pub fn any_at(keys: &[Loaded], at: UploadAt) -> bool {
    keys.iter().any(|k| k.spec.upload_at == at)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str) -> KeySpec {
        KeySpec {
            name: name.into(),
            text: None,
            key_file: None,
            key_command: Some(vec!["pass".into(), "show".into(), name.into()]),
            dest_dir: "/run/keys".into(),
            user: "postgres".into(),
            group: "keys".into(),
            permissions: "0640".into(),
            upload_at: UploadAt::PostActivation,
        }
    }

    #[test]
    fn the_stream_is_lines_of_metadata_then_exactly_the_content() {
        let a = Loaded { spec: spec("db"), content: Arc::new(Secret::new(b"s3\ncr\0et".to_vec())) };
        let b = Loaded { spec: spec("b"), content: Arc::new(Secret::new(Vec::new())) };
        let s = stream(&[a, b]);
        assert_eq!(
            s.as_bytes(),
            b"post-activation\n/run/keys\ndb\npostgres\nkeys\n0640\n8\ns3\ncr\0etpost-activation\n/run/keys\nb\npostgres\nkeys\n0640\n0\n"
        );
    }

    #[test]
    fn a_key_is_described_without_its_content() {
        let mut s = spec("db");
        assert_eq!(
            describe(&s),
            "db -> /run/keys/db (postgres:keys 0640, post-activation, from keyCommand pass show db)"
        );
        s.key_command = None;
        s.text = Some(Secret::from("hunter2".to_string()));
        assert!(!describe(&s).contains("hunter2"));
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn a_failing_command_says_its_stderr_and_never_its_stdout() {
        let argv: Vec<String> =
            ["sh", "-c", "echo the-secret; echo nope >&2; exit 3"].map(String::from).into();
        let e = capture(&argv, 10).await.unwrap_err();
        assert_eq!(e, "failed here (exit 3):\nnope");
        let argv: Vec<String> = ["printf", "a\\nb"].map(String::from).into();
        assert_eq!(capture(&argv, 10).await.unwrap().as_bytes(), b"a\nb");
        let argv: Vec<String> = ["head", "-c", "16777217", "/dev/zero"].map(String::from).into();
        assert_eq!(
            capture(&argv, 10).await.unwrap_err(),
            "printed more than 16 MiB here; a key is smaller"
        );
        let e = Source::File("/nonexistent/k".into()).read("db").await.unwrap_err();
        assert_eq!(
            e.to_string(),
            "key db: reading keyFile /nonexistent/k here: No such file or directory (os error 2)"
        );
    }
}
