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
