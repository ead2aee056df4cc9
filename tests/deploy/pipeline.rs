//! The per-host pipeline on real targets, many hosts in parallel.

use std::time::Duration;

use crate::common::{Lab, Suite};
use crate::helpers::*;

on_every_suite!(
    an_unsigned_input_reaches_a_target_that_requires_signatures,
    unit_failing_during_test_is_rolled_back_and_boot_entry_untouched,
);

/// `--all` on a 3-host fleet of every suite: every host runs and boots the
/// built system; a reboot comes up in it.
#[test]
fn all_hosts_deploy_and_a_reboot_comes_up_in_the_new_system() {
    let lab = Lab::boot_suites(&[Suite::Trixie, Suite::Sid, Suite::Bookworm]);
    let [a, b, c] = [&lab.targets[0], &lab.targets[1], &lab.targets[2]];
    let f = flake(
        &lab,
        &[
            host_entry(&lab, "web1", a, "healthy-v2", r#"tags = [ "web" ];"#),
            host_entry(&lab, "web2", b, "healthy-v2", r#"tags = [ "web" ];"#),
            host_entry(&lab, "db1", c, "healthy-v1", ""),
        ],
    );
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    for (host, t, version) in
        [("web1", a, "healthy-v2"), ("web2", b, "healthy-v2"), ("db1", c, "healthy-v1")]
    {
        assert_eq!(run.outcome(host), "deployed", "{run}");
        let sys = run.system(host);
        assert!(sys.contains(&format!("nixos-system-{version}")), "{host}: {sys}");
        assert_eq!(t.current_system().as_deref(), Some(sys.as_str()), "{host} runs it");
        assert_eq!(t.boot_profile().as_deref(), Some(sys.as_str()), "{host} boots it");
        assert_eq!(t.ssh_ok("cat /run/demo-web/version"), version);
        assert_eq!(t.system_state(), "running");
    }
    // Every output line is tagged with the host it came from.
    assert!(run.lines("web1").iter().any(|l| l.contains("activating")), "{run}");

    let before = c.boot_id();
    c.reboot();
    assert_ne!(c.boot_id(), before, "a real reboot");
    let sys = run.system("db1");
    assert_eq!(
        c.current_system().as_deref(),
        Some(sys.as_str()),
        "rebooted into the deployed system"
    );
    assert_eq!(c.ssh_ok("cat /run/demo-web/version"), "healthy-v1");
}

/// A second run finds every host up to date and activates nothing.
#[test]
fn second_run_is_up_to_date_and_activates_nothing() {
    let lab = Lab::boot(2, Suite::Trixie);
    let f = flake(
        &lab,
        &[
            host_entry(&lab, "a", &lab.targets[0], "healthy-v1", ""),
            host_entry(&lab, "b", &lab.targets[1], "healthy-v2", ""),
        ],
    );
    let first = deploy(&f, &["--all"]);
    assert_eq!(first.code, 0, "{first}");
    let units: Vec<String> =
        lab.targets.iter().map(|t| invocation(t, "demo-web.service")).collect();
    // Every activation points /run/current-system anew (a new link).
    let activated = |t: &crate::common::Target| t.ssh_ok("stat -c %y /run/current-system");
    let links: Vec<String> = lab.targets.iter().map(activated).collect();

    let second = deploy(&f, &["--all"]);
    assert_eq!(second.code, 0, "{second}");
    let hosts = [("a", &lab.targets[0], &units[0]), ("b", &lab.targets[1], &units[1])];
    for (i, (host, t, unit)) in hosts.into_iter().enumerate() {
        assert_eq!(second.outcome(host), "up-to-date", "{second}");
        assert_eq!(second.system(host), first.system(host));
        assert_eq!(&invocation(t, "demo-web.service"), unit, "{host}: demo-web was not restarted");
        assert!(!second.lines(host).iter().any(|l| l.contains("activating")), "{second}");
        assert_eq!(activated(t), links[i], "{host}: nothing was activated");
    }

    // --force activates the same systems again, and the hosts end on them.
    let forced = deploy(&f, &["--all", "--force"]);
    assert_eq!(forced.code, 0, "{forced}");
    for (i, (host, t, _)) in hosts.into_iter().enumerate() {
        assert_eq!(forced.outcome(host), "deployed", "{forced}");
        assert!(forced.lines(host).iter().any(|l| l.contains("activating")), "{forced}");
        assert!(forced.lines(host).iter().any(|l| l == "deploy-flake: confirmed"), "{forced}");
        assert_ne!(activated(t), links[i], "{host}: activated again");
        let sys = first.system(host);
        assert_eq!(forced.system(host), sys);
        assert_eq!(t.current_system(), Some(sys.clone()), "{host} runs it");
        assert_eq!(t.boot_profile(), Some(sys), "{host} boots it");
    }
}

/// A degraded target is refused with its failed unit named and is left
/// exactly as it was; the other host goes ahead; the exit code says failure.
#[test]
fn degraded_target_is_refused_and_unchanged() {
    let lab = Lab::boot(2, Suite::Trixie);
    let (bad, good) = (&lab.targets[0], &lab.targets[1]);
    let v1 = baseline(&lab, "bad", bad, "healthy-v1");
    bad.make_degraded();
    let f = flake(
        &lab,
        &[
            host_entry(&lab, "bad", bad, "healthy-v2", ""),
            host_entry(&lab, "good", good, "healthy-v2", ""),
        ],
    );
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("bad"), "failed");
    assert_eq!((run.phase("bad").as_str(), run.reason("bad").as_str()), ("preflight", "preflight"));
    let msg = run.message("bad");
    assert!(msg.contains("degraded") && msg.contains("lab-broken.service"), "{msg}");
    assert_eq!(bad.current_system(), Some(v1.clone()), "still running v1");
    assert_eq!(bad.boot_profile(), Some(v1), "still booting v1");
    assert_eq!(run.outcome("good"), "deployed", "{run}");
    assert_eq!(good.ssh_ok("cat /run/demo-web/version"), "healthy-v2");

    // --skip-preflight gets past it. switch-to-configuration resets the
    // failed units as it switches (as NixOS does), so the unit that had
    // failed before is no longer failed: nothing of the new system failed,
    // and it is confirmed.
    let skip = deploy(&f, &["bad", "--skip-preflight"]);
    assert_eq!(skip.code, 0, "{skip}");
    assert_eq!(skip.outcome("bad"), "deployed", "{skip}");
    let v2 = skip.system("bad");
    assert_eq!(bad.current_system(), Some(v2.clone()));
    assert_eq!(bad.boot_profile(), Some(v2));
    assert_eq!(bad.ssh_ok("cat /run/demo-web/version"), "healthy-v2");
    assert_eq!(bad.ssh_ok("systemctl is-failed lab-broken.service || true"), "inactive");
    assert_eq!(bad.system_state(), "running");
}

/// A failing self-check stops the host before anything changes.
#[test]
fn failing_self_check_leaves_the_host_unchanged() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "failing-selfcheck", "")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("h"), "failed");
    assert_eq!((run.phase("h").as_str(), run.reason("h").as_str()), ("self-check", "self-check"));
    assert!(run.message("h").contains("refusing to activate"), "{run}");
    assert_eq!(t.current_system(), Some(v1.clone()));
    assert_eq!(t.boot_profile(), Some(v1));
}

/// A unit that fails during `test`: rolled back, the boot entry never
/// touched, and the report names the failed unit.
fn unit_failing_during_test_is_rolled_back_and_boot_entry_untouched(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let generations = t.ssh_ok("ls /nix/var/nix/profiles | grep -c '^system-'");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "failing-unit", "")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("h"), "rolled-back", "{run}");
    assert_eq!(
        (run.phase("h").as_str(), run.reason("h").as_str()),
        ("activate", "activation-failed")
    );
    assert!(run.message("h").contains("exited with 4"), "{run}");
    assert_eq!(run.system("h"), v1, "the report names the system the host is back on");
    assert!(
        run.lines("h").iter().any(|l| l.contains("failed units: demo-broken.service")),
        "{run}"
    );
    assert_eq!(t.current_system(), Some(v1.clone()));
    assert_eq!(t.boot_profile(), Some(v1));
    assert_eq!(
        t.ssh_ok("ls /nix/var/nix/profiles | grep -c '^system-'"),
        generations,
        "no new generation"
    );
    assert_eq!(t.system_state(), "running");
}

/// An unreachable host fails within its connect timeout; the others succeed.
#[test]
fn unreachable_host_fails_fast_and_others_succeed() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    // A routed address where nothing answers: the veth's host end is ours,
    // and 10.77.IDX.3 does not exist behind it.
    let ghost = format!("10.77.{}.3", t.idx);
    let entries = vec![
        host_entry(&lab, "ok", t, "healthy-v1", ""),
        format!(
            "  ghost = {{ hostname = \"{ghost}\"; configuration = \"healthy-v1\"; sshOpts = {}; timeouts.connect = 3; }};\n",
            lab.ssh_opts_nix()
        ),
    ];
    let f = flake(&lab, &entries);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("ok"), "deployed", "{run}");
    assert_eq!(run.outcome("ghost"), "failed");
    assert_eq!(
        (run.phase("ghost").as_str(), run.reason("ghost").as_str()),
        ("connect", "unreachable")
    );
    let msg = run.message("ghost");
    assert!(msg.contains(&ghost), "names the destination: {msg}");
    let ms = run.report("ghost")["duration"].as_u64().unwrap();
    assert!(ms < 3_000 + 6_000, "failed within the connect timeout (+ margin): {ms} ms");
    let sys = run.system("ok");
    assert_eq!(t.current_system(), Some(sys.clone()), "ok runs it");
    assert_eq!(t.boot_profile(), Some(sys), "ok boots it");
}

/// A host that answers but whose login never finishes (here: a local port
/// that sends an ssh banner, then nothing) is tried three times — a login
/// slowed by a starved deployer is worth another try, a host that does not
/// answer is not — and then fails, unchanged, saying how long it waited.
#[test]
fn a_login_that_never_finishes_is_tried_three_times_then_fails() {
    use std::io::Write;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let lab = Lab::boot(1, Suite::Bookworm);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let logins = Arc::new(AtomicUsize::new(0));
    let counted = logins.clone();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for mut conn in listener.incoming().map_while(Result::ok) {
            counted.fetch_add(1, Ordering::SeqCst);
            let _ = conn.write_all(b"SSH-2.0-stalled\r\n");
            held.push(conn); // never answers its key exchange
        }
    });
    let entry = format!(
        "  stalled = {{ hostname = \"127.0.0.1\"; sshPort = {port}; configuration = \"healthy-v1\"; sshOpts = {}; timeouts.connect = 2; }};\n",
        lab.ssh_opts_nix()
    );
    let run = deploy(&flake(&lab, &[entry]), &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(
        (run.phase("stalled"), run.reason("stalled")),
        ("connect".into(), "unreachable".into())
    );
    let msg = run.message("stalled");
    assert!(msg.contains("did not finish within 7 s"), "{msg}");
    assert_eq!(logins.load(Ordering::SeqCst), 3, "three logins tried: {run}");
    let ms = run.report("stalled")["duration"].as_u64().unwrap();
    assert!((3 * 7_000..3 * 7_000 + 10_000).contains(&ms), "three bounded tries: {ms} ms");
}

/// The ssh connection dies during activation: the activation completes on
/// the target, the tool reconnects, re-attaches and reports the truth.
#[test]
fn connection_killed_during_activation_reattaches() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "slow-activation", "")]);
    let mut bg = Background::start(&f, &["--all"]);
    bg.wait_for("activation started", Duration::from_secs(120), |v| {
        v["event"] == "output"
            && v["host"] == "h"
            && v["line"].as_str().unwrap_or("").contains("slow activation: started")
    });
    // Kill the deployer's ssh master (and with it every channel) for this target.
    let killed = kill_ssh_masters_to(&t.address);
    assert!(killed > 0, "found the deployer's ssh master");
    let run = bg.finish(Duration::from_secs(120));
    assert_eq!(run.code, 0, "{run}");
    let events = events(&run.stdout);
    assert!(
        events
            .iter()
            .any(|e| e["event"] == "note"
                && e["text"].as_str().unwrap_or("").contains("reconnected")),
        "reconnected:\n{run}"
    );
    assert_eq!(run.outcome("h"), "deployed");
    let sys = run.system("h");
    assert!(sys.contains("slow-activation"));
    assert_eq!(t.current_system().as_deref(), Some(sys.as_str()));
    assert_eq!(t.boot_profile().as_deref(), Some(sys.as_str()));
    assert!(
        run.lines("h").iter().any(|l| l.contains("slow activation: done")),
        "log after re-attaching:\n{run}"
    );
}

/// Kill (SIGKILL) every local process with a TCP connection to `addr`:22.
/// During a deploy that is the deployer's ssh master alone (its commands,
/// and nix's copies, ride on the master's unix socket). The master renames
/// itself (`ssh: <ControlPath> [mux]`), so it is found by its socket.
fn kill_ssh_masters_to(addr: &str) -> usize {
    let out = std::process::Command::new("ss")
        .args(["-tnpH", "dst", &format!("{addr}:22")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let mut pids: Vec<String> = text
        .split("pid=")
        .skip(1)
        .filter_map(|s| s.split(|c: char| !c.is_ascii_digit()).next())
        .map(String::from)
        .collect();
    pids.sort();
    pids.dedup();
    pids.iter()
        .filter(|pid| {
            std::process::Command::new("kill").args(["-KILL", pid]).status().unwrap().success()
        })
        .count()
}

/// A non-root sshUser with passwordless sudo deploys end to end; one whose
/// sudo wants a password gets a clear error and an unchanged host.
#[test]
fn non_root_user_with_sudo() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", r#"sshUser = "deploy";"#)]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    let sys = run.system("h");
    assert_eq!(t.current_system().as_deref(), Some(sys.as_str()));
    assert_eq!(t.boot_profile().as_deref(), Some(sys.as_str()));

    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v1", r#"sshUser = "pwuser";"#)]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.reason("h"), "auth", "{run}");
    let msg = run.message("h");
    assert!(msg.contains("asks user pwuser for a password") && msg.contains("NOPASSWD"), "{msg}");
    assert_eq!(t.current_system().as_deref(), Some(sys.as_str()), "unchanged");
}

/// Hostile host and configuration names are data, never shell: they deploy
/// correctly or are refused with a clear error, and nothing runs on either side.
#[test]
fn hostile_names_are_never_executed() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let canary = lab.dir().join("pwned");
    let hostile_attr = format!("web 1'; touch {} #$(touch {})", canary.display(), canary.display());
    let hostile_cfg = "it's $(touch /tmp/pwned) `touch /tmp/pwned` here".to_string();
    let entry = format!(
        "  {} = {{ hostname = \"{}\"; configuration = {}; sshOpts = {}; }};\n",
        crate::common::nix_string(&hostile_attr),
        t.address,
        crate::common::nix_string(&hostile_cfg),
        lab.ssh_opts_nix()
    );
    let f = lab.fixture_flake_raw(&format!("{{\n{entry}}}\n"));
    // The fixture flake offers every scenario under a hostile alias too.
    std::fs::write(
        f.join("aliases.nix"),
        format!("{{ {} = \"healthy-v2\"; }}\n", crate::common::nix_string(&hostile_cfg)),
    )
    .unwrap();
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(run.outcome(&hostile_attr), "deployed");
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), "healthy-v2");
    assert!(!canary.exists(), "nothing ran on the deploying side");
    assert_eq!(
        t.ssh_ok("test -e /tmp/pwned && echo yes || echo no"),
        "no",
        "nothing ran on the target"
    );
    assert!(!std::path::Path::new("/tmp/pwned").exists());

    // A hostname that would be an ssh option is refused before anything runs.
    let f = lab.fixture_flake_raw(&format!(
        "{{ h = {{ hostname = \"-oProxyCommand=touch {}\"; configuration = \"healthy-v1\"; }}; }}\n",
        canary.display()
    ));
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("hostname"), "{run}");
    assert!(!canary.exists());
}

/// `buildOn = "local"`: the system is built on the deploying machine and its
/// (unsigned) closure copied over to a Nix 2.8, 2.26 and 2.34 daemon; it is
/// the very store path a build on the target produces.
#[test]
fn local_build_is_copied_and_activated() {
    let lab = Lab::boot_suites(&[Suite::Bookworm, Suite::Trixie, Suite::Sid, Suite::Trixie]);
    let (locals, remote) = (&lab.targets[..3], &lab.targets[3]);
    let mut hosts: Vec<String> = locals
        .iter()
        .map(|t| host_entry(&lab, t.suite.as_str(), t, "healthy-v2", r#"buildOn = "local";"#))
        .collect();
    hosts.push(host_entry(&lab, "remote", remote, "healthy-v2", ""));
    let run = deploy(&flake(&lab, &hosts), &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    let sys = run.system("remote");
    for local in locals {
        let name = local.suite.as_str();
        assert_eq!(run.system(name), sys, "{name}: same derivation, same output path");
        assert_eq!(local.current_system().as_deref(), Some(sys.as_str()), "{name}");
        assert_eq!(local.boot_profile().as_deref(), Some(sys.as_str()), "{name}");
        assert_eq!(local.ssh_ok("cat /run/demo-web/version"), "healthy-v2", "{name}");
        // Built here: the target never saw the flake's source.
        assert_eq!(local.ssh_ok("ls -d /nix/store/*-source 2>/dev/null | wc -l"), "0", "{name}");
    }
}

/// A host whose key is not in known_hosts is refused (host key checking
/// stays on) with a message that says what to do; nothing on it changes.
#[test]
fn unknown_host_key_is_refused_with_the_fix() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let empty = lab.dir().join("empty_known_hosts");
    std::fs::write(&empty, "").unwrap();
    let entry = format!(
        "  h = {{ hostname = \"{}\"; configuration = \"healthy-v1\"; sshOpts = [ \"-i\" \"{}\" \"-o\" \"UserKnownHostsFile={}\" ]; }};\n",
        t.address,
        lab.key_path().display(),
        empty.display()
    );
    let f = flake(&lab, &[entry]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!((run.phase("h").as_str(), run.reason("h").as_str()), ("connect", "host-key"));
    let msg = run.message("h");
    assert!(
        msg.contains("Host key verification failed")
            && msg.contains("never turns host key checking off"),
        "{msg}"
    );
    assert_eq!(t.current_system(), None, "nothing was activated");
    assert_eq!(t.ssh_ok("ls /run/deploy-flake 2>/dev/null | wc -l"), "0", "nothing was written");
}

/// A flake input that is a valid store path with no signature and no
/// content address on the deploying machine (registered from a
/// closure-info style dump, as in a NixOS test VM): it reaches a target
/// that requires signatures, and the deploy goes through.
fn an_unsigned_input_reaches_a_target_that_requires_signatures(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    let settings = t.ssh_ok("nix --extra-experimental-features nix-command show-config");
    assert!(settings.lines().any(|l| l == "require-sigs = true"), "{settings}");
    // The input: added, then registered again without its content address.
    let dir = tempfile::tempdir().unwrap();
    let salt = format!("{}-{:?}-{suite:?}", std::process::id(), std::time::Instant::now());
    std::fs::write(dir.path().join("data"), salt).unwrap();
    let mut add = crate::common::host_nix();
    add.args(["store", "add-path", "--name", "source"]).arg(dir.path());
    let input = crate::common::run_ok(&mut add);
    let dump =
        crate::common::run_ok(std::process::Command::new("nix-store").args(["--dump-db", &input]));
    let mut load = std::process::Command::new("nix-store")
        .arg("--load-db")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    load.stdin.take().unwrap().write_all(format!("{dump}\n").as_bytes()).unwrap();
    assert!(load.wait().unwrap().success());
    let mut info = crate::common::host_nix();
    info.args(["path-info", "--json", &input]);
    let info: serde_json::Value = serde_json::from_str(&crate::common::run_ok(&mut info)).unwrap();
    assert!(info[0].get("ca").is_none() && info[0].get("signatures").is_none(), "{info}");

    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let text = std::fs::read_to_string(f.join("flake.nix")).unwrap();
    let with_input = text.replacen(
        "outputs = { self }:",
        &format!("inputs.extra = {{ url = \"path:{input}\"; flake = false; }};\n  outputs = {{ self, ... }}:"),
        1,
    );
    assert_ne!(text, with_input, "the fixture's outputs line changed");
    std::fs::write(f.join("flake.nix"), with_input).unwrap();
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(t.ssh_ok(&format!("nix-store --check-validity {input} && echo valid")), "valid");
    let sys = run.system("h");
    assert_eq!(t.current_system(), Some(sys.clone()));
    assert_eq!(t.boot_profile(), Some(sys));
}
