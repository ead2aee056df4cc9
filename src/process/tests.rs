//! Running processes here, for real: output, failures, timeouts, stdin.

use super::*;

fn sh(script: &'static str) -> Cmd {
    Cmd::script(Script(script), Vec::<String>::new()).secs(5)
}

#[tokio::test]
async fn output_is_captured_and_lines_stream() {
    let mut seen = Vec::new();
    let mut sink = |l: &str| seen.push(l.to_string());
    let out = run(&Local, &sh("echo out1; echo err1 >&2; echo out2"), Some(&mut sink)).await;
    let out = out.unwrap().check().unwrap();
    assert_eq!(out.stdout, "out1\nout2\n");
    assert_eq!(out.stderr, "err1");
    seen.sort();
    assert_eq!(seen, ["err1", "out1", "out2"]);
}

#[tokio::test]
async fn a_failure_names_the_command_the_exit_and_the_tail() {
    let out = run(&Local, &sh("echo why >&2; exit 3"), None).await.unwrap();
    assert_eq!(out.exit, Exit::Code(3));
    let e = out.check().unwrap_err();
    assert_eq!(e.to_string(), "`sh -c …` failed here (exit 3):\nwhy");
    let out = run(&Local, &sh("kill -9 $$"), None).await.unwrap();
    assert_eq!(out.exit, Exit::Signal(9));
}

#[tokio::test]
async fn a_timeout_stops_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let flag = dir.path().join("still-running");
    // The grandchild would create the flag after 2 s unless stopped.
    let cmd = Cmd::script(Script("(sleep 2; touch \"$1\") & wait"), [flag.display().to_string()])
        .timeout(Duration::from_millis(300));
    let e = run(&Local, &cmd, None).await.unwrap_err();
    assert!(matches!(e, ProcessError::Timeout { place: Place::Local, .. }), "{e:?}");
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!flag.exists(), "the grandchild outlived the timeout");
}

#[tokio::test]
async fn a_command_given_up_on_cleans_up_first_and_one_that_will_not_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let (cleaned, lingered) = (dir.path().join("cleaned"), dir.path().join("lingered"));
    // Given SIGTERM, it cleans up (as nix removes its build directory).
    let tidy = Cmd::script(
        Script("trap 'touch \"$1\"; exit 1' TERM; sleep 30 & wait"),
        [cleaned.display().to_string()],
    );
    let e = run(&Local, &tidy.timeout(Duration::from_millis(300)), None).await.unwrap_err();
    assert!(matches!(e, ProcessError::Timeout { .. }), "{e:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(cleaned.exists(), "it was given the chance to clean up");
    // One that ignores SIGTERM is killed after the grace period.
    let stubborn = Cmd::script(
        Script("trap '' TERM; sleep 7; touch \"$1\""),
        [lingered.display().to_string()],
    );
    let e = run(&Local, &stubborn.timeout(Duration::from_millis(300)), None).await.unwrap_err();
    assert!(matches!(e, ProcessError::Timeout { .. }), "{e:?}");
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(!lingered.exists(), "killed within the grace period");
}

#[tokio::test]
async fn stdin_streams_from_file_parts_and_stdout_goes_to_a_file() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b, out) = (dir.path().join("a"), dir.path().join("b"), dir.path().join("out"));
    std::fs::write(&a, "first-DROPPED").unwrap();
    std::fs::write(&b, "second").unwrap();
    let input = Input::Files { parts: vec![(a, 5), (b, 6)], trailer: b"+end".to_vec() };
    let cmd = sh("cat").stdin_input(input).stdout_to(&out);
    let done = run(&Local, &cmd, None).await.unwrap().check().unwrap();
    assert_eq!(done.stdout, "", "stdout went to the file");
    assert_eq!(std::fs::read_to_string(&out).unwrap(), "firstsecond+end");
    let missing = Input::Files { parts: vec![(dir.path().join("nope"), 1)], trailer: vec![] };
    let e = run(&Local, &sh("cat >/dev/null").stdin_input(missing), None).await.unwrap_err();
    assert!(e.to_string().contains("feeding its stdin"), "{e}");
}

#[tokio::test]
async fn stdin_is_fed_and_a_missing_program_is_named() {
    let out = run(&Local, &sh("cat").stdin("fed\n"), None).await.unwrap();
    assert_eq!(out.stdout, "fed\n");
    let e = run(&Local, &Cmd::new(["/nonexistent/prog"]), None).await.unwrap_err();
    assert!(e.to_string().starts_with("cannot run `/nonexistent/prog` here: "), "{e}");
}

#[test]
fn quoting_keeps_each_argument_whole() {
    let argv: Vec<String> =
        ["echo", "a b", "$(touch /tmp/x)", "it's", ""].iter().map(|s| s.to_string()).collect();
    assert_eq!(quote_argv(&argv), r#"echo 'a b' '$(touch /tmp/x)' 'it'\''s' ''"#);
}

#[test]
fn scripts_are_displayed_by_their_arguments() {
    let c = Cmd::script(Script("echo \"$1\""), ["a", "b"]);
    assert_eq!(c.display(), "sh -c … a b");
    assert_eq!(Cmd::new(["a", "b", "c", "d", "e", "f"]).display(), "a b c d e …");
}

#[test]
fn warnings_are_told_apart_from_other_lines() {
    for (line, warning) in [
        ("warning: '--json' without '--json-format' is deprecated", true),
        ("\u{1b}[35;1mwarning:\u{1b}[0m unknown setting 'x'", true),
        ("evaluation warning: 'foo' has been renamed", true),
        ("Warning: Permanently added '10.0.0.1' (ED25519) to the list of known hosts.", true),
        ("** WARNING: connection is not using a post-quantum key exchange algorithm.", true),
        ("building '/nix/store/…-x.drv'...", false),
        ("error: warning: is not a warning here", false),
        ("copying path '/nix/store/…-warning' from 'ssh-ng://h'", false),
    ] {
        assert_eq!(is_warning(line), warning, "{line:?}");
    }
}

/// A writer for a test's tracing subscriber: everything in one buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The warnings this thread logs from now on, while the guard lives.
fn capture_warnings() -> (Captured, tracing::subscriber::DefaultGuard) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::WARN)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    (captured, tracing::subscriber::set_default(subscriber))
}

#[tokio::test]
async fn a_warning_of_a_command_without_a_line_sink_is_still_told() {
    let (captured, _default) = capture_warnings();
    let cmd =
        sh("echo 'warning: this will become an error' >&2; echo 'other noise' >&2; echo data");
    let out = run(&Local, &cmd.quiet_stdout(), None).await.unwrap().check().unwrap();
    assert_eq!(out.stdout, "data\n");
    let said = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(said.contains("sh -c … (here): warning: this will become an error"), "{said}");
    assert!(!said.contains("other noise"), "{said}");
}

#[tokio::test]
async fn an_endless_line_reaches_the_sink_cut_and_marked() {
    let mut seen = Vec::new();
    let mut sink = |l: &str| seen.push(l.to_string());
    // 4 MB on stderr and stdout without a newline, then one more line.
    let cmd = sh("head -c 4000000 /dev/zero | tr '\\0' x >&2; echo >&2; echo done >&2; \
                  head -c 4000000 /dev/zero | tr '\\0' y; echo")
    .secs(60);
    let out = run(&Local, &cmd, Some(&mut sink)).await.unwrap().check().unwrap();
    assert_eq!(seen.len(), 3, "{:?}", seen.iter().map(String::len).collect::<Vec<_>>());
    for l in &seen {
        assert!(l.len() < LINE_MAX + 200, "{}", l.len());
    }
    assert!(seen.iter().any(|l| l.starts_with("xxx") && l.ends_with("of 4000000 bytes]")));
    assert!(seen.contains(&"done".to_string()));
    assert!(out.stdout.len() < LINE_MAX + 200, "{}", out.stdout.len());
}

#[tokio::test]
async fn a_told_warning_keeps_no_credentials() {
    let (captured, _default) = capture_warnings();
    let url = "git+https://oauth2:s3cr3t-token@git.example/fleet?ref=main&access_token=s3cr3t2";
    let cmd = Cmd::script(Script("echo \"warning: Git tree '$1' is dirty\" >&2"), [url]).secs(5);
    run(&Local, &cmd, None).await.unwrap().check().unwrap();
    let said = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(said.contains("warning: Git tree 'git+https://"), "{said}");
    assert!(!said.contains("s3cr3t"), "{said}");
}
