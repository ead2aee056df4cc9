//! Installing the agent on a target, and what travels with it: the agent's
//! text and the run's origin (who deploys from which flake) come on the
//! installing command's stdin, never in its argv (a target's process list
//! and sudo's journal show every argv). The installed file is checked
//! against the text's SHA-256, before the rename that installs it and
//! before it is used again: a file cut short by a dropped connection is
//! replaced, never run.

use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use super::{RunDir, SCRIPT, STATE_DIR};
use crate::process::{Cmd, Script};

/// Creates the state directories (root-only) and installs the agent under
/// its content hash, through a temporary file and a rename: a script that
/// another run is executing is never rewritten in place. stdin: the agent's
/// text, exactly `$5` bytes (read whether or not it is needed), then the
/// run's origin, `$4` bytes (kept as `$2/origin` when `$2` is given), then
/// whatever the rest of the command line (`exec`) reads. A file whose
/// SHA-256 is not `$6` is never kept nor used. A new run is refused before
/// anything is written when the file system of the state has less than
/// `$7` KiB free ([`NO_SPACE_EXIT`]).
const INSTALL: Script = Script(
    r#"umask 077
if [ -n "$2" ]; then
    free=$(df -Pk "${1%/*}" 2>/dev/null | awk 'NR == 2 {print $4}')
    if [ -n "$free" ] && [ "$free" -lt "$7" ]; then
        echo "${1%/*} has $free KiB free; a run needs $7 KiB there (its state and the activation's log): free some (df ${1%/*})" >&2
        exit 28
    fi
fi
install -d -m 0700 "$1" "$1/runs" || exit 1
intact() { printf '%s  %s\n' "$2" "$1" | sha256sum -c --status 2> /dev/null; }
if intact "$3" "$6"; then
    head -c "$5" > /dev/null || exit 1
else
    tmp="$1/.agent.$$"
    head -c "$5" > "$tmp" || exit 1
    if ! intact "$tmp" "$6"; then
        echo "deploy-flake: the agent arrived incomplete or changed ($(wc -c < "$tmp") of $5 bytes); nothing was installed" >&2
        rm -f "$tmp"
        exit 1
    fi
    chmod 0700 "$tmp" && mv -f "$tmp" "$3" || exit 1
fi
if [ -n "$2" ]; then install -d -m 0700 "$2" && head -c "$4" > "$2/origin" || exit 1; fi
shift 7
exec "$@""#,
);

/// How INSTALL says the state's file system is too full for a new run.
pub(super) const NO_SPACE_EXIT: i32 = 28;
/// What a run needs free in `/run` (KiB): the agent's log is capped at
/// 1 MiB (`LOG_CAP` in sh/00-head.sh), and its state, its rollback and the
/// switch's own files need a little more.
const RUN_SPACE_KIB: &str = "4096";

/// The agent text's SHA-256, in hex.
pub(super) fn script_sha256() -> &'static str {
    static HASH: OnceLock<String> = OnceLock::new();
    HASH.get_or_init(|| {
        Sha256::digest(SCRIPT.as_bytes()).iter().map(|b| format!("{b:02x}")).collect()
    })
}

/// `then`, after creating the state directories (the run's own only when
/// `new_run`: after a reboot its absence is how the run learns it) and
/// installing the agent; its stdin must begin with [`input`] of the same
/// `new_run`. `new_run`: the run's origin, who runs the deploy from which
/// flake, one `<key> <value>` per line, kept with the run (and as the
/// host's last deploy).
pub(super) fn installed(run: &RunDir, new_run: Option<&str>, then: Cmd) -> Cmd {
    let (run_dir, origin) = match new_run {
        Some(origin) => (run.dir.as_str(), origin),
        None => ("", ""),
    };
    let (origin_len, len) = (origin.len().to_string(), SCRIPT.len().to_string());
    let args = [STATE_DIR, run_dir, &run.agent, &origin_len, &len, script_sha256(), RUN_SPACE_KIB];
    let mut argv = Cmd::script(INSTALL, args).argv;
    argv.extend(then.argv);
    Cmd { argv, ..then }
}

/// What an [`installed`] command reads first on its stdin: the agent's
/// text, then the origin (when `new_run`).
pub(super) fn input(new_run: Option<&str>) -> Vec<u8> {
    let mut v = Vec::with_capacity(SCRIPT.len() + new_run.map_or(0, str::len));
    v.extend_from_slice(SCRIPT.as_bytes());
    v.extend_from_slice(new_run.unwrap_or("").as_bytes());
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs INSTALL here with `dir` as the state directory; stdin is
    /// `stdin`, and the installed command prints what is left of it.
    fn install(dir: &std::path::Path, origin: &str, stdin: &[u8]) -> (bool, String, String) {
        install_needing(dir, origin, stdin, "0")
    }

    /// The same, asking that much free space (KiB) for a new run.
    fn install_needing(
        dir: &std::path::Path,
        origin: &str,
        stdin: &[u8],
        space: &str,
    ) -> (bool, String, String) {
        use std::io::Write;
        let state = dir.display().to_string();
        let (agent, run) = (format!("{state}/agent.sh"), format!("{state}/runs/r1"));
        let args = [&state, &run, &agent, &origin.len().to_string(), &SCRIPT.len().to_string()];
        let mut argv = Cmd::script(
            INSTALL,
            args.into_iter().map(String::as_str).chain([script_sha256(), space, "cat"]),
        )
        .argv;
        let program = argv.remove(0);
        let mut child = std::process::Command::new(program)
            .args(argv)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // A refusal ends the script before it reads its stdin: what the
        // pipe does not hold then finds no reader.
        match child.stdin.take().unwrap().write_all(stdin) {
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
            written => written.unwrap(),
        }
        let out = child.wait_with_output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        (out.status.success(), text(&out.stdout), text(&out.stderr))
    }

    #[test]
    fn the_agent_and_the_origin_come_on_stdin_and_the_rest_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let origin = "by me@here\nflake .\n";
        let mut stdin = input(Some(origin));
        stdin.extend_from_slice(b"heartbeat\n");
        let (ok, out, err) = install(dir.path(), origin, &stdin);
        assert!(ok, "{err}");
        assert_eq!(out, "heartbeat\n");
        assert_eq!(std::fs::read_to_string(dir.path().join("agent.sh")).unwrap(), SCRIPT);
        assert_eq!(std::fs::read_to_string(dir.path().join("runs/r1/origin")).unwrap(), origin);
    }

    #[test]
    fn an_agent_file_cut_short_is_replaced_and_a_short_text_never_installed() {
        let dir = tempfile::tempdir().unwrap();
        let agent = dir.path().join("agent.sh");
        std::fs::write(&agent, &SCRIPT.as_bytes()[..5000]).unwrap();
        let (ok, _, err) = install(dir.path(), "", &input(None));
        assert!(ok, "{err}");
        assert_eq!(std::fs::read_to_string(&agent).unwrap(), SCRIPT, "replaced");
        std::fs::remove_file(&agent).unwrap();
        // The connection drops while the text is in flight.
        let (ok, out, err) = install(dir.path(), "", &SCRIPT.as_bytes()[..5000]);
        assert!(!ok && out.is_empty(), "{out}");
        assert!(err.contains("the agent arrived incomplete or changed (5000 of"), "{err}");
        assert!(!agent.exists(), "nothing installed under the agent's name");
        let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only runs/ is left: {left:?}");
    }

    #[test]
    fn a_new_run_without_room_for_its_state_is_refused_before_anything_is_written() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (ok, out, err) =
            install_needing(&state, "by me\n", &input(Some("by me\n")), "1099511627776");
        assert!(!ok && out.is_empty(), "{out}");
        assert!(err.contains("KiB free; a run needs 1099511627776 KiB there"), "{err}");
        assert!(!state.exists(), "nothing written");
    }
}
