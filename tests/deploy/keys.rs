//! Keys on real targets: written where and as whom the fleet says, before
//! the switch or once confirmed, put back when the host is rolled back or
//! its run superseded, written again after a reboot emptied /run/keys; a
//! key that cannot be read leaves the host unchanged without showing the
//! key.

use std::path::Path;

use crate::common::{nix_string, Lab, Suite, Target};
use std::time::Duration;

use crate::helpers::{deploy, eventually, flake, host_entry, phase_started, Background};

/// `stat` of a path on the target: `user:group mode`.
fn stat(t: &Target, path: &str) -> String {
    t.ssh_ok(&format!("stat -c '%U:%G %a' {path}"))
}

/// Files deploy-flake keeps beside keys while a run needs them: none are
/// left once a run has ended.
fn leftovers(t: &Target, dir: &str) -> String {
    t.ssh_ok(&format!(
        "ls -A {dir} | grep '^\\.deploy-flake' || true; ls /run/deploy-flake/runs/*/ 2>/dev/null | grep -E 'staged-keys|keys-' || true"
    ))
}

/// The keys of the lab's host entries: a pre-activation key the demo
/// service reads as `nobody` at start (from a file here), and a
/// post-activation key (from a command here) in a directory of its own;
/// `extra` is spliced into the attribute set of keys.
fn keys_nix(key_file: &Path, post_marker: &str, extra: &str) -> String {
    format!(
        r#"keys = {{
             demo-key = {{ keyFile = {}; user = "nobody"; group = "keys"; permissions = "0440"; }};
             post-key = {{ keyCommand = [ "printf" "%s" {} ]; uploadAt = "post-activation";
                          destDir = "/var/lib/lab-keys"; user = "deploy"; group = "pwuser"; permissions = "0640"; }};
             {extra}
           }};
           healthChecks = [ {{ command = [ "sh" "-c" "test -s /run/demo-keys/seen && test ! -e /var/lib/lab-keys/post-key" ]; }} ];"#,
        nix_string(&key_file.display().to_string()),
        nix_string(post_marker),
    )
}

/// Both suites: a key the command cannot give stops the host unchanged
/// (its stderr shown, its stdout never); then the pre-activation key is in
/// place, exact in owner, group and mode, for the service that reads it at
/// activation, and the post-activation key is written only once confirmed
/// (the health check before the confirmation finds it missing); then a
/// failed activation puts the previous content back and removes the key
/// that was new.
#[test]
fn keys_are_written_as_declared_and_put_back_on_rollback() {
    let lab = Lab::boot_suites(&[Suite::Trixie, Suite::Bookworm]);
    let key_file = lab.dir().join("demo-key");
    std::fs::write(&key_file, "first-key-content\n").unwrap();
    for t in &lab.targets {
        // NixOS has a `keys` group (and /run/keys is root:keys 0750).
        t.ssh_ok("groupadd --system keys");
    }
    let entries = |configuration: &str, extra: &str| -> Vec<String> {
        lab.targets.iter().map(|t| host_entry(&lab, &t.name, t, configuration, extra)).collect()
    };

    let failing = r#"fails = { keyCommand = [ "sh" "-c" "printf never-%s-stdout shown; echo no such secret >&2; exit 3" ]; };"#;
    let f = flake(&lab, &entries("needs-key", &keys_nix(&key_file, "post-1", failing)));
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    for t in &lab.targets {
        assert_eq!((run.outcome(&t.name), run.reason(&t.name)), ("failed".into(), "keys".into()));
        let msg = run.message(&t.name);
        assert!(
            msg.contains("key fails: keyCommand sh -c") && msg.contains("no such secret"),
            "{msg}"
        );
        assert_eq!(t.current_system(), None, "unchanged");
        let dirs = t.ssh_ok("ls -d /run/keys /var/lib/lab-keys 2>/dev/null || true");
        assert_eq!(dirs, "", "nothing written on {}", t.name);
    }
    assert!(
        !run.stdout.contains("never-shown-stdout") && !run.stderr.contains("never-shown-stdout")
    );

    let f = flake(&lab, &entries("needs-key", &keys_nix(&key_file, "post-1", "")));
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    for t in &lab.targets {
        let who = &t.name;
        assert_eq!(t.ssh_ok("cat /run/demo-keys/seen"), "first-key-content", "{who}");
        assert_eq!(stat(t, "/run/keys"), "root:keys 750", "{who}");
        assert_eq!(stat(t, "/run/keys/demo-key"), "nobody:keys 440", "{who}");
        assert_eq!(stat(t, "/var/lib/lab-keys"), "root:keys 750", "{who}");
        assert_eq!(stat(t, "/var/lib/lab-keys/post-key"), "deploy:pwuser 640", "{who}");
        assert_eq!(t.ssh_ok("cat /var/lib/lab-keys/post-key"), "post-1", "{who}");
        assert_eq!(stat(t, "/var/lib"), "root:root 755", "{who}");
        assert_eq!(leftovers(t, "/run/keys") + &leftovers(t, "/var/lib/lab-keys"), "", "{who}");
        let lines = run.lines(who).join("\n");
        assert!(lines.contains("key demo-key: wrote /run/keys/demo-key"), "{lines}");
    }
    let deployed: Vec<String> = lab.targets.iter().map(|t| t.current_system().unwrap()).collect();

    // New content, a new key, and a change that fails: all put back.
    std::fs::write(&key_file, "second-key-content\n").unwrap();
    let fresh = r#"fresh = { text = "fresh"; };"#;
    let f = flake(&lab, &entries("failing-unit", &keys_nix(&key_file, "post-2", fresh)));
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    for (t, before) in lab.targets.iter().zip(&deployed) {
        let who = &t.name;
        assert_eq!(run.outcome(who), "rolled-back", "{run}");
        assert_eq!(t.current_system().as_ref(), Some(before));
        assert_eq!(t.ssh_ok("cat /run/keys/demo-key"), "first-key-content", "{who}");
        assert_eq!(stat(t, "/run/keys/demo-key"), "nobody:keys 440", "{who}");
        assert_eq!(t.ssh_ok("cat /var/lib/lab-keys/post-key"), "post-1", "{who}");
        assert_eq!(t.ssh_ok("test -e /run/keys/fresh && echo there || echo gone"), "gone");
        assert_eq!(leftovers(t, "/run/keys") + &leftovers(t, "/var/lib/lab-keys"), "", "{who}");
        let lines = run.lines(who).join("\n");
        assert!(lines.contains("key demo-key: restored /run/keys/demo-key"), "{lines}");
        assert!(lines.contains("key fresh: removed /run/keys/fresh"), "{lines}");
    }
}

/// The lab's pwuser, whose sudo asks for a password (tests/lab/rootfs.sh).
const PWUSER_PASSWORD: &str = "lab-password-not-secret";

/// Both suites, as a user whose sudo asks for a password: given by a
/// command, it reaches every command run as root — the lock (the agent's
/// text follows it on stdin), the source's import (an archive follows it),
/// the keys, the confirmation over a fresh login — and a closure built here
/// (`buildOn = "local"`) goes over the same connection; a wrong one fails
/// the host at connect, tried once, with nothing changed.
#[test]
fn a_sudo_password_reaches_every_escalated_command_and_a_wrong_one_changes_nothing() {
    let lab = Lab::boot_suites(&[Suite::Trixie, Suite::Bookworm]);
    let entries = |configuration: &str| -> Vec<String> {
        lab.targets
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let build_on = if i == 0 { "target" } else { "local" };
                let extra = format!(
                    r#"sshUser = "pwuser"; buildOn = "{build_on}"; keys.k = {{ text = "over-sudo"; user = "pwuser"; }};"#
                );
                host_entry(&lab, &t.name, t, configuration, &extra)
            })
            .collect()
    };
    let f = flake(&lab, &entries("healthy-v2"));
    let wrong = "--sudo-password-command=printf '%s\\n' not-the-password";
    let run = deploy(&f, &["--all", wrong]);
    assert_eq!(run.code, 1, "{run}");
    for t in &lab.targets {
        assert_eq!((run.reason(&t.name), run.phase(&t.name)), ("auth".into(), "connect".into()));
        assert!(
            run.message(&t.name).contains("sudo refused the password for user pwuser"),
            "{run}"
        );
        assert_eq!(t.current_system(), None, "unchanged");
        let tries = t.ssh_ok("journalctl -o cat | grep -c 'incorrect password attempt' || true");
        assert_eq!(tries, "1", "{}: one try", t.name);
    }

    let right = format!("--sudo-password-command=printf '%s\\n' {PWUSER_PASSWORD}");
    let run = deploy(&f, &["--all", &right]);
    assert_eq!(run.code, 0, "{run}");
    for t in &lab.targets {
        let sys = run.system(&t.name);
        assert_eq!(t.current_system().as_deref(), Some(sys.as_str()), "{}", t.name);
        assert_eq!(t.boot_profile().as_deref(), Some(sys.as_str()), "{}", t.name);
        assert_eq!(t.ssh_ok("cat /run/keys/k"), "over-sudo");
        assert_eq!(stat(t, "/run/keys/k"), "pwuser:root 600");
    }
    // `status` and `diff` read the agent's text from stdin, after the password.
    let status = deploy(&f, &["status", "--all", &right]);
    assert_eq!(status.code, 0, "{status}");
    let diff = deploy(&f, &["diff", "--all", &right]);
    assert_eq!(diff.code, 0, "{diff}");
    // A refused confirmation reaches the agent as a line on stdin (`abort`).
    let failing_check = |configuration: &str| -> Vec<String> {
        lab.targets
            .iter()
            .map(|t| {
                let extra = r#"sshUser = "pwuser"; healthChecks = [ { command = [ "false" ]; timeout = 2; period = 1; } ];"#;
                host_entry(&lab, &t.name, t, configuration, extra)
            })
            .collect()
    };
    let f2 = flake(&lab, &failing_check("healthy-v1"));
    let run = deploy(&f2, &["--all", &right]);
    assert_eq!(run.code, 1, "{run}");
    for t in &lab.targets {
        assert_eq!(
            (run.outcome(&t.name), run.reason(&t.name)),
            ("rolled-back".into(), "health-check".into()),
            "{run}"
        );
    }
    // Without the password, the same user is told what to do.
    let run = deploy(&f, &["--all", "--force"]);
    assert_eq!(run.code, 1, "{run}");
    assert!(run.message(&lab.targets[0].name).contains("asks user pwuser for a password"), "{run}");
}

/// A reboot empties /run/keys (a tmpfs, as on NixOS): `deploy-flake keys`
/// writes them again, under the host lock, without touching the system.
#[test]
fn deploy_flake_keys_writes_them_again_after_a_reboot() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    t.ssh_ok("groupadd --system keys");
    let key_file = lab.dir().join("demo-key");
    std::fs::write(&key_file, "after-reboot\n").unwrap();
    let f = flake(&lab, &[host_entry(&lab, "h", t, "needs-key", &keys_nix(&key_file, "post", ""))]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    let sys = run.system("h");
    // (The service that needs the key fails at boot without it: lab.sh's
    // reboot would wait for a `running` system in vain.)
    let boot = t.boot_id();
    let _ = t.ssh("systemctl reboot");
    eventually("the target is back from its reboot", Duration::from_secs(120), || {
        let out = t.ssh("cat /proc/sys/kernel/random/boot_id");
        out.status.success() && String::from_utf8_lossy(&out.stdout).trim() != boot
    });
    assert_eq!(t.ssh_ok("systemctl is-failed demo-keys.service || true"), "failed");
    assert_eq!(t.ssh_ok("ls -A /run/keys 2>/dev/null || echo gone"), "gone");
    assert_eq!(t.current_system().as_deref(), Some(sys.as_str()));

    // What a run that is gone kept (a deployer that died in its soak, say)
    // goes with the next keys written there.
    t.ssh_ok("mkdir -m 0700 /var/lib/lab-keys/.deploy-flake-previous; mkdir -m 0700 /var/lib/lab-keys/.deploy-flake-previous/1-gone; echo old > /var/lib/lab-keys/.deploy-flake-previous/1-gone/post-key");
    let keys = deploy(&f, &["keys", "--all"]);
    assert_eq!(keys.code, 0, "{keys}");
    let v: serde_json::Value = serde_json::from_str(keys.stdout.trim()).unwrap();
    assert_eq!(v["hosts"][0]["written"], true, "{keys}");
    assert_eq!(t.ssh_ok("cat /run/keys/demo-key"), "after-reboot");
    assert_eq!(stat(t, "/run/keys/demo-key"), "nobody:keys 440");
    assert_eq!(stat(t, "/run/keys"), "root:keys 750");
    assert_eq!(t.ssh_ok("cat /var/lib/lab-keys/post-key"), "post");
    assert_eq!(leftovers(t, "/run/keys") + &leftovers(t, "/var/lib/lab-keys"), "");
    // The service that needs the key starts with it now; the system is as it was.
    t.ssh_ok("systemctl restart demo-keys.service");
    assert_eq!(t.ssh_ok("cat /run/demo-keys/seen"), "after-reboot");
    assert_eq!(t.current_system().as_deref(), Some(sys.as_str()));
    // Its dry run lists them and writes nothing.
    t.ssh_ok("rm /run/keys/demo-key");
    let listed = deploy(&f, &["keys", "--all", "--dry-run"]);
    assert_eq!(listed.code, 0, "{listed}");
    assert!(listed.stdout.contains("\"name\":\"demo-key\""), "{listed}");
    assert!(!listed.stdout.contains("after-reboot"), "{listed}");
    assert_eq!(t.ssh_ok("ls /run/keys"), "");
}

/// `--ask-sudo-password` under a pseudo-terminal: asked once for two hosts,
/// before any host is touched, and what is typed is not echoed.
#[test]
fn ask_sudo_password_asks_once_on_the_terminal_without_echo() {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    use std::sync::{Arc, Mutex};

    let lab = Lab::boot(2, Suite::Trixie);
    let entries: Vec<String> = lab
        .targets
        .iter()
        .map(|t| host_entry(&lab, &t.name, t, "healthy-v1", r#"sshUser = "pwuser";"#))
        .collect();
    let f = flake(&lab, &entries);
    let inner = format!(
        "exec {} --flake {} --all --ask-sudo-password --progress plain",
        crate::common::BIN,
        f.display()
    );
    let mut child = Command::new("timeout")
        .args(["--kill-after=10", "300", "script", "-qfec", &inner, "/dev/null"])
        .env("NIX_CONFIG", crate::common::NIX_CONFIG)
        .env("TERM", "dumb")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("script(1) (util-linux)");
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut out = child.stdout.take().unwrap();
    let reader = {
        let seen = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                seen.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        })
    };
    let prompt = "deploy-flake: sudo password: ";
    eventually("the password prompt", Duration::from_secs(60), || {
        String::from_utf8_lossy(&seen.lock().unwrap()).contains(prompt)
    });
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(format!("{PWUSER_PASSWORD}\n").as_bytes()).unwrap();
    let status = child.wait().unwrap();
    drop(stdin);
    reader.join().unwrap();
    let screen = String::from_utf8_lossy(&seen.lock().unwrap()).into_owned();
    assert_eq!(status.code(), Some(0), "{screen}");
    assert_eq!(screen.matches(prompt).count(), 1, "{screen}");
    assert!(!screen.contains(PWUSER_PASSWORD), "echoed:\n{screen}");
    let asked = screen.find(prompt).unwrap();
    let first_host_line = screen.find("] connect").expect("a host line");
    assert!(asked < first_host_line, "{screen}");
    for t in &lab.targets {
        assert!(t.current_system().is_some(), "{}: deployed\n{screen}", t.name);
    }
}

/// With a soak, a confirmed host keeps the previous content of its keys
/// until the soak's verdict: dropped once it passes; put back (and the
/// keys the run created removed) when the host is sent back.
#[test]
fn a_host_sent_back_by_its_soak_gets_its_previous_keys_back() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let key_file = lab.dir().join("k");
    let keys = |post: &str, extra: &str| {
        format!(
            r#"keys = {{ k = {{ keyFile = {}; }}; p = {{ text = {}; uploadAt = "post-activation"; }}; {extra} }};"#,
            nix_string(&key_file.display().to_string()),
            nix_string(post)
        )
    };
    std::fs::write(&key_file, "one").unwrap();
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v1", &keys("p-one", ""))]);
    assert_eq!(deploy(&f, &["--all"]).code, 0);

    std::fs::write(&key_file, "two").unwrap();
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", &keys("p-two", ""))]);
    let run = deploy(&f, &["--all", "--soak", "2"]);
    assert_eq!(run.code, 0, "{run}");
    let v2 = run.system("h");
    assert_eq!(t.ssh_ok("cat /run/keys/k /run/keys/p"), "twop-two");
    assert_eq!(leftovers(t, "/run/keys"), "", "dropped once the soak passed");

    std::fs::write(&key_file, "three").unwrap();
    let fresh = r#"fresh = { text = "fresh"; };"#;
    let f = flake(&lab, &[host_entry(&lab, "h", t, "dies-later", &keys("p-three", fresh))]);
    let run = deploy(&f, &["--all", "--soak", "25"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!((run.outcome("h"), run.reason("h")), ("rolled-back".into(), "soak".into()), "{run}");
    assert_eq!(t.current_system().as_deref(), Some(v2.as_str()));
    assert_eq!(t.ssh_ok("cat /run/keys/k /run/keys/p"), "twop-two");
    assert_eq!(t.ssh_ok("test -e /run/keys/fresh && echo there || echo gone"), "gone");
    assert_eq!(stat(t, "/run/keys/k"), "root:root 600");
    assert_eq!(leftovers(t, "/run/keys"), "");
}

/// Someone switches the host back to the old system while the deployer
/// runs its health check: the run ends `superseded`, and the keys it wrote
/// before the activation go with its system, as in a rollback: the
/// changed key has its previous content, owner and mode again, the key the
/// run created is removed, the post-activation key was never written, and
/// the lines say what was put back.
#[test]
fn a_run_superseded_during_its_confirmation_puts_the_previous_keys_back() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let keys = |k: &str, owner: &str, post: &str, extra: &str| {
        format!(
            r#"keys = {{ k = {{ text = {}; {owner} }}; p = {{ text = {}; uploadAt = "post-activation"; }}; {extra} }};"#,
            nix_string(k),
            nix_string(post)
        )
    };
    let first =
        keys("one", r#"user = "nobody"; group = "nogroup"; permissions = "0440";"#, "p-one", "");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v1", &first)]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    let v1 = run.system("h");

    let fresh = r#"fresh = { text = "fresh"; };"#;
    let second = keys("two", r#"permissions = "0600";"#, "p-two", fresh);
    let sleeps = r#"healthChecks = [ { command = [ "sleep" "6" ]; timeout = 20; } ];"#;
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", &(second + sleeps))]);
    let mut a = Background::start(&f, &["--all"]);
    a.wait_for("the confirmation", Duration::from_secs(180), phase_started("h", "confirm"));
    assert_eq!(t.ssh_ok("cat /run/keys/k /run/keys/fresh"), "twofresh", "written before");
    let out = t.switch(&v1, "test");
    assert!(out.status.success(), "the foreign switch: {out:?}");
    let run = a.finish(Duration::from_secs(120));
    eprintln!("{} {}: {}", run.outcome("h"), run.reason("h"), run.message("h"));
    assert_eq!(
        (run.outcome("h"), run.reason("h"), run.code),
        ("superseded".into(), "superseded".into(), 1),
        "{run}"
    );
    assert_eq!(t.current_system().as_deref(), Some(v1.as_str()));
    assert_eq!(t.ssh_ok("cat /run/keys/k"), "one");
    assert_eq!(stat(t, "/run/keys/k"), "nobody:nogroup 440");
    assert_eq!(t.ssh_ok("cat /run/keys/p"), "p-one", "never written");
    assert_eq!(t.ssh_ok("test -e /run/keys/fresh && echo there || echo gone"), "gone");
    assert_eq!(leftovers(t, "/run/keys"), "");
    let lines = run.lines("h").join("\n");
    assert!(lines.contains("key k: restored /run/keys/k"), "{lines}");
    assert!(lines.contains("key fresh: removed /run/keys/fresh"), "{lines}");
    assert!(run.message("h").contains("keys"), "the message says so: {run}");
}
