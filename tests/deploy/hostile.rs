//! A hostile world, on real targets: credentials in a flake reference, an
//! agent file cut short, a master connection that dies before `nix copy`,
//! ssh options with spaces, targets that print terminal escapes or one
//! endless line, a tight open-file limit, the umask of what the system
//! writes. Each test guards one way a deploy could leak, hang, reach the
//! wrong machine or take over the operator's terminal.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::common::{Lab, Suite, Target};
use crate::helpers::*;

fn assert_on(t: &Target, sys: &str) {
    assert_eq!(t.current_system().as_deref(), Some(sys), "{}: runs", t.name);
    assert_eq!(t.boot_profile().as_deref(), Some(sys), "{}: boots", t.name);
}

/// A static HTTP server on loopback for the files below `root` (enough for
/// git's dumb HTTP protocol); lives as long as the test. Its port.
fn serve(root: PathBuf) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let root = root.clone();
            std::thread::spawn(move || {
                let mut conn = conn;
                let mut request = String::new();
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                if reader.read_line(&mut request).is_err() {
                    return;
                }
                // The headers (credentials included) are not looked at.
                let mut line = String::new();
                while reader.read_line(&mut line).is_ok_and(|n| n > 2) {
                    line.clear();
                }
                let path = request.split_whitespace().nth(1).unwrap_or("/");
                let path = path.split('?').next().unwrap().trim_start_matches('/');
                let file = root.join(path);
                let reply = match std::fs::read(&file) {
                    Ok(body) if !path.contains("..") => {
                        let head = format!(
                            "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        );
                        [head.into_bytes(), body].concat()
                    }
                    _ => b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n".to_vec(),
                };
                let _ = conn.write_all(&reply);
            });
        }
    });
    port
}

fn git(dir: &Path, args: &[&str]) {
    let out = Command::new("git").arg("-C").arg(dir).args(args).output().expect("git");
    assert!(out.status.success(), "git {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// `flake` committed to a bare git repository served over HTTP on
/// loopback; the flake reference, with `user_info` in it.
fn git_http_flake(flake: &Path, user_info: &str) -> String {
    git(flake, &["init", "-q"]);
    git(flake, &["add", "-A"]);
    git(flake, &["-c", "user.name=lab", "-c", "user.email=lab@lab", "commit", "-qm", "fleet"]);
    let served = flake.with_extension("served");
    let bare = served.join("fleet.git");
    std::fs::create_dir_all(&served).unwrap();
    let out =
        Command::new("git").args(["clone", "-q", "--bare"]).arg(flake).arg(&bare).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    git(&bare, &["update-server-info"]);
    let port = serve(served);
    format!("git+http://{user_info}@127.0.0.1:{port}/fleet.git")
}

/// Every command line of every process on `t`, one per line.
fn process_list(t: &Target) -> String {
    t.ssh_ok("for f in /proc/[0-9]*/cmdline; do tr '\\0' ' ' < \"$f\"; echo; done 2>/dev/null")
}

/// A token in a flake reference's user info reaches no target: not the
/// process list (argv), not the journal (sudo logs every command), not
/// the host's records, not `status --json`; the reference itself is kept
/// without it.
#[test]
fn a_token_in_the_flake_reference_reaches_no_target() {
    let lab = Lab::boot_suites(&Suite::ALL);
    let marker = format!("tok{}marker", std::process::id());
    let entries: Vec<String> = lab
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| {
            host_entry(&lab, &format!("h{i}"), t, "slow-activation", r#"sshUser = "deploy";"#)
        })
        .collect();
    let dir = flake(&lab, &entries);
    let reference = git_http_flake(&dir, &format!("oauth2:{marker}"));
    let mut a = Background::start(&reference, &["--all"]);
    a.wait_for("both activate", Duration::from_secs(180), |v| {
        v["event"] == "output"
            && v["host"] == "h1"
            && v["line"].as_str().unwrap_or("").contains("slow activation: started")
    });
    let during: Vec<String> = lab.targets.iter().map(process_list).collect();
    let run = a.finish(Duration::from_secs(180));
    assert_eq!(run.code, 0, "{run}");
    assert!(!run.stdout.contains(&marker), "the deployer's own output: {run}");
    let status = deploy(&reference, &["status", "--all"]);
    assert_eq!(status.code, 0, "{status}");
    for (i, (t, ps)) in lab.targets.iter().zip(&during).enumerate() {
        assert!(ps.contains("hold"), "{}: the lock holder was running: {ps}", t.name);
        assert!(!ps.contains(&marker), "{}: a process's argv: {ps}", t.name);
        let journal = t.ssh_ok("journalctl --no-pager -o cat");
        assert!(journal.contains("COMMAND="), "{}: sudo logs its commands", t.name);
        assert!(!journal.contains(&marker), "{}: the journal", t.name);
        let records = t.ssh_ok("cat /var/lib/deploy-flake/last /run/deploy-flake/runs/*/origin");
        assert!(!records.contains(&marker), "{}: records: {records}", t.name);
        assert!(records.contains("flake git+http://127.0.0.1:"), "{}: {records}", t.name);
        assert_on(t, &run.system(&format!("h{i}")));
    }
    assert!(!status.stdout.contains(&marker), "status --json: {status}");
    assert!(status.stdout.contains("git+http://127.0.0.1:"), "{status}");
}

/// An agent file cut short (a connection dropped while its text was in
/// flight) under the agent's own name: the next deploy replaces it and
/// deploys.
#[test]
fn an_agent_file_cut_short_is_replaced() {
    let lab = Lab::boot_suites(&Suite::ALL);
    for (i, t) in lab.targets.iter().enumerate() {
        baseline(&lab, &format!("h{i}"), t, "healthy-v1");
        t.ssh_ok(
            "for a in /run/deploy-flake/agent-*.sh; do head -c 5000 \"$a\" > /tmp/a && cat /tmp/a > \"$a\"; done",
        );
        assert_eq!(t.ssh_ok("wc -c < /run/deploy-flake/agent-*.sh"), "5000");
    }
    let entries: Vec<String> = lab
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| host_entry(&lab, &format!("h{i}"), t, "healthy-v2", ""))
        .collect();
    let run = deploy(&flake(&lab, &entries), &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    let whole = deploy_flake::agent::SCRIPT.len().to_string();
    for (i, t) in lab.targets.iter().enumerate() {
        assert_eq!(run.outcome(&format!("h{i}")), "deployed", "{run}");
        assert_on(t, &run.system(&format!("h{i}")));
        assert_eq!(t.ssh_ok("wc -c < /run/deploy-flake/agent-*.sh"), whole);
    }
}

/// The host key line of `t` in the lab's known_hosts, under `name`.
fn known_host_as(lab: &Lab, t: &Target, name: &str) -> String {
    let all = std::fs::read_to_string(lab.known_hosts_path()).unwrap();
    let line = all
        .lines()
        .find(|l| l.split([',', ' ']).next() == Some(t.address.as_str()))
        .unwrap_or_else(|| panic!("{} is not in known_hosts", t.address));
    let key = line.split_once(' ').unwrap().1;
    format!("{name} {key}\n")
}

/// `ssh` to `t` as root on `port`, checking its key under its address.
fn ssh_port(lab: &Lab, t: &Target, port: u16, cmd: &str) -> String {
    let out = Command::new("timeout")
        .args(["60", "ssh", "-i"])
        .arg(lab.key_path())
        .arg("-o")
        .arg(format!("UserKnownHostsFile={}", lab.known_hosts_path().display()))
        .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o"])
        .arg(format!("HostKeyAlias={}", t.address))
        .args(["-p", &port.to_string(), &format!("root@{}", t.address), "--", cmd])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}: {cmd}: {}", t.name, String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The pid of this machine's deploy-flake ssh master to `address`.
fn master_pid(address: &str) -> u32 {
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        let cmdline = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
        let args: Vec<String> =
            cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let ours = args.iter().any(|a| a.contains("deploy-flake-ssh."));
        if ours && args.iter().any(|a| a == "-M") && args.iter().any(|a| a == address) {
            return pid;
        }
    }
    panic!("no deploy-flake ssh master to {address}");
}

/// Nix's ssh for a `buildOn = "local"` copy rides our master; with the
/// master gone, it makes no login of its own: the target's sshd listens on
/// 2222 and another sshd (another host key) on 22, the master dies while
/// the system builds here, and the copy fails with nothing connecting to
/// port 22.
#[test]
fn a_copy_whose_master_is_gone_logs_in_nowhere() {
    let lab = Lab::boot_suites(&Suite::ALL);
    let opts = |t: &Target| {
        format!(
            "[ \"-i\" {} \"-o\" {} \"-o\" \"HostKeyAlias={}\" ]",
            crate::common::nix_string(&lab.key_path().display().to_string()),
            crate::common::nix_string(&format!(
                "UserKnownHostsFile={}",
                lab.known_hosts_path().display()
            )),
            t.address
        )
    };
    let entry = |i: usize, t: &Target, cfg: &str| {
        format!(
            "  h{i} = {{ hostname = \"{}\"; sshPort = 2222; configuration = \"{cfg}\"; sshOpts = {}; buildOn = \"local\"; }};\n",
            t.address,
            opts(t)
        )
    };
    for t in &lab.targets {
        t.ssh_ok("systemd-run --quiet --unit=lab-sshd-2222 /usr/sbin/sshd -D -p 2222");
    }
    // A normal copy over the master works on 2222.
    let cfgs: Vec<String> =
        lab.targets.iter().enumerate().map(|(i, t)| entry(i, t, "healthy-v1")).collect();
    let run = deploy(&flake(&lab, &cfgs), &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    // Port 22 now answers with another host key.
    for t in &lab.targets {
        ssh_port(
            &lab,
            t,
            2222,
            "systemctl stop ssh.socket ssh.service 2>/dev/null; mkdir -p -m 0755 /run/sshd; \
             ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/impostor_key && \
             systemd-run --quiet --unit=lab-impostor /usr/sbin/sshd -D -p 22 -h /etc/ssh/impostor_key \
               -o LogLevel=VERBOSE -E /var/log/impostor.log && sleep 1",
        );
    }
    let connections = |t: &Target| {
        ssh_port(&lab, t, 2222, "grep -c 'Connection from' /var/log/impostor.log || true")
    };
    // The impostor logs who connects (a probe of our own).
    let mut probed = Vec::new();
    for t in &lab.targets {
        let _ = Command::new("timeout").args(["10", "ssh-keyscan", &t.address]).output();
        let n = connections(t);
        assert_ne!(n, "0", "{}: the impostor logs connections", t.name);
        probed.push(n);
    }
    let cfgs: Vec<String> =
        lab.targets.iter().enumerate().map(|(i, t)| entry(i, t, "slowish-build")).collect();
    let f = flake(&lab, &cfgs);
    let salt = format!("{}-{:?}", std::process::id(), std::time::Instant::now());
    std::fs::write(f.join("build-salt"), salt).unwrap();
    // All build the same system here (one build, 8 s); meanwhile their
    // masters die.
    let mut a = Background::start(&f, &["--all"]);
    let building = std::cell::RefCell::new(std::collections::BTreeSet::new());
    a.wait_for("all build here", Duration::from_secs(120), |v| {
        if v["event"] == "phase-started" && v["phase"] == "build" {
            building.borrow_mut().insert(v["host"].to_string());
        }
        building.borrow().len() == lab.targets.len()
    });
    for t in &lab.targets {
        let pid = master_pid(&t.address);
        assert!(Command::new("kill").args(["-KILL", &pid.to_string()]).status().unwrap().success());
    }
    let run = a.finish(Duration::from_secs(180));
    assert_eq!(run.code, 1, "{run}");
    for (i, t) in lab.targets.iter().enumerate() {
        let h = format!("h{i}");
        assert_eq!((run.outcome(&h).as_str(), run.phase(&h).as_str()), ("failed", "copy"), "{run}");
        assert_eq!(connections(t), probed[i], "{}: nothing logged in on port 22: {run}", t.name);
        assert!(
            ssh_port(&lab, t, 2222, "readlink -e /run/current-system").contains("healthy-v1"),
            "{}: unchanged",
            t.name
        );
    }
}

/// A private link between two targets: `b` is reachable as 10.78.B.2 from
/// `a` only (this machine has no route there).
fn link(a: &Target, b: &Target) -> String {
    let (ea, eb) = (format!("dfj{}a{}", a.idx, b.idx), format!("dfj{}b{}", a.idx, b.idx));
    let addr = format!("10.78.{}", b.idx);
    for cmd in [
        format!("ip link add {ea} type veth peer name {eb}"),
        format!("ip link set {ea} netns {}", a.name),
        format!("ip link set {eb} netns {}", b.name),
        format!("ip -n {} addr add {addr}.1/24 dev {ea}", a.name),
        format!("ip -n {} link set {ea} up", a.name),
        format!("ip -n {} addr add {addr}.2/24 dev {eb}", b.name),
        format!("ip -n {} link set {eb} up", b.name),
    ] {
        let ok = Command::new("sh").args(["-c", &cmd]).status().unwrap().success();
        assert!(ok, "{cmd}");
    }
    format!("{addr}.2")
}

/// ProxyJump through a second lab host, and a ProxyCommand with spaces
/// (an ssh -W through it): the host behind it deploys both ways.
#[test]
fn a_host_behind_a_jump_host_deploys_through_proxy_jump_and_proxy_command() {
    let lab = Lab::boot(2, Suite::Trixie);
    let (a, b) = (&lab.targets[0], &lab.targets[1]);
    let behind = link(a, b);
    let kh = lab.dir().join("known_hosts.behind");
    let all = std::fs::read_to_string(lab.known_hosts_path()).unwrap();
    std::fs::write(&kh, all + &known_host_as(&lab, b, &behind)).unwrap();
    let key = lab.key_path().display().to_string();
    let kh_opt = format!("UserKnownHostsFile={}", kh.display());
    let proxy = format!(
        "ProxyCommand=ssh -i {key} -o {kh_opt} -o BatchMode=yes -W %h:%p root@{}",
        a.address
    );
    for (cfg, opts) in [
        ("healthy-v1", vec!["-i", &key, "-o", &kh_opt, "-J", &format!("root@{}", a.address)]),
        ("healthy-v2", vec!["-i", &key, "-o", &kh_opt, "-o", &proxy]),
    ] {
        let list: Vec<String> = opts.iter().map(|o| crate::common::nix_string(o)).collect();
        let entry = format!(
            "  h = {{ hostname = \"{behind}\"; configuration = \"{cfg}\"; sshOpts = [ {} ]; }};\n",
            list.join(" ")
        );
        let run = deploy(&flake(&lab, &[entry]), &["--all"]);
        assert_eq!(run.code, 0, "{opts:?}: {run}");
        assert_on(b, &run.system("h"));
    }
}

/// KnownHostsCommand and LocalCommand with spaces reach ssh whole; a
/// RemoteCommand never replaces the commands the deploy runs.
#[test]
fn known_hosts_local_and_remote_commands_with_spaces_reach_ssh_whole() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let key = lab.key_path().display().to_string();
    let ran = lab.dir().join("local command ran");
    let opts = [
        "-i".to_string(),
        key,
        "-o".into(),
        "UserKnownHostsFile=/dev/null".into(),
        "-o".into(),
        format!("KnownHostsCommand=/bin/cat {}", lab.known_hosts_path().display()),
        "-o".into(),
        "PermitLocalCommand=yes".into(),
        "-o".into(),
        format!("LocalCommand=/bin/sh -c 'echo %n >> \"{}\"'", ran.display()),
        "-o".into(),
        "RemoteCommand=echo not our command".into(),
    ];
    let list: Vec<String> = opts.iter().map(|o| crate::common::nix_string(o)).collect();
    let entry = format!(
        "  h = {{ hostname = \"{}\"; configuration = \"healthy-v2\"; sshOpts = [ {} ]; }};\n",
        t.address,
        list.join(" ")
    );
    let run = deploy(&flake(&lab, &[entry]), &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    assert_on(t, &run.system("h"));
    let said = std::fs::read_to_string(&ran).unwrap_or_default();
    assert!(said.contains(&t.address), "LocalCommand ran: {said:?}");
}

/// Terminal escapes a target prints (a window title, a cleared screen, the
/// clipboard) reach neither a plain log nor a failure message raw; --json
/// keeps them exact; -v into a file is not colored.
#[test]
fn terminal_escapes_from_targets_never_reach_the_terminal_raw() {
    let lab = Lab::boot(2, Suite::Bookworm);
    let entries = [
        host_entry(&lab, "out", &lab.targets[0], "prints-escapes", ""),
        host_entry(&lab, "fails", &lab.targets[1], "escapes-in-failure", ""),
    ];
    let f = flake(&lab, &entries);
    let plain = Command::new(crate::common::BIN)
        .args(["--progress", "plain", "--color", "never", "-v", "--flake"])
        .arg(&f)
        .arg("--all")
        .env("NIX_CONFIG", crate::common::NIX_CONFIG)
        .output()
        .unwrap();
    let (stdout, stderr) =
        (String::from_utf8_lossy(&plain.stdout), String::from_utf8_lossy(&plain.stderr));
    assert_eq!(plain.status.code(), Some(1), "{stdout}\n{stderr}");
    for (what, text) in [("stdout", &stdout), ("-v on stderr", &stderr)] {
        assert!(!text.contains('\u{1b}') && !text.contains('\u{7}'), "{what}: {text:?}");
    }
    assert!(stdout.contains(r"title \x1b]0;pwned\x07 clear \x1b[2J"), "shown escaped: {stdout}");
    assert!(stdout.contains(r"refusing \x1b]0;pwned\x07 \x1b[2J here"), "{stdout}");
    let json = deploy(&f, &["--all", "--force"]);
    let lines = json.lines("out");
    let raw = "title \u{1b}]0;pwned\u{7} clear \u{1b}[2J\u{1b}[H up \u{1b}[3A clip \u{1b}]52;c;cHduZWQ=\u{7} end";
    assert!(lines.iter().any(|l| l == raw), "--json keeps the line exact: {lines:?}");
    assert!(json.message("fails").contains("refusing \u{1b}]0;pwned\u{7}"), "{json}");
    let out = &lab.targets[0];
    assert_eq!(out.current_system(), Some(json.system("out")));
    assert_eq!(out.boot_profile(), Some(json.system("out")));
    assert_never_activated(&lab.targets[1]);
}

/// One 100 MB line without a newline: the deploy ends as usual, the
/// line arrives cut and marked, and the deployer's memory stays bounded.
#[test]
fn an_endless_line_costs_bounded_memory_and_arrives_cut() {
    let lab = Lab::boot_suites(&Suite::ALL);
    let entries: Vec<String> = lab
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| host_entry(&lab, &format!("h{i}"), t, "endless-line", ""))
        .collect();
    let a = Background::start(&flake(&lab, &entries), &["--all"]);
    let pid = a.child.id();
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let watcher = {
        let peak = peak.clone();
        std::thread::spawn(move || loop {
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return };
            let kb = status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .unwrap_or(0);
            peak.fetch_max(kb, std::sync::atomic::Ordering::Relaxed);
            std::thread::sleep(Duration::from_millis(50));
        })
    };
    let run = a.finish(Duration::from_secs(300));
    let _ = watcher.join();
    let peak_mib = peak.load(std::sync::atomic::Ordering::Relaxed) / 1024;
    eprintln!("deployer peak RSS with a 100 MB line per host: {peak_mib} MiB");
    assert_eq!(run.code, 0, "{}", crate::common::tail(&run.stdout, 20));
    let longest = run.stdout.lines().map(str::len).max().unwrap_or(0);
    assert!(longest < 80 * 1024, "no event is longer than a capped line: {longest} bytes");
    for (i, t) in lab.targets.iter().enumerate() {
        let h = format!("h{i}");
        let lines = run.lines(&h);
        let cut = lines.iter().find(|l| l.starts_with("xxxx")).expect("the long line");
        assert!(cut.len() <= 65 * 1024 && cut.contains("truncated"), "{}", &cut[cut.len() - 80..]);
        assert!(lines.iter().any(|l| l == "after the endless line"), "{h}");
        let log = t.ssh_ok("du -k /run/deploy-flake/runs/*/log | cut -f1");
        assert!(
            log.parse::<u64>().unwrap() < 1024,
            "{}: the run's log stays small: {log} KiB",
            t.name
        );
        assert_on(t, &run.system(&h));
    }
    assert!(peak_mib < 64, "peak RSS {peak_mib} MiB");
}

/// switch-to-configuration and the bootloader run under umask 022, as
/// nixos-rebuild runs them: boot entries are readable; the agent's own
/// files stay root-only.
#[test]
fn the_system_is_switched_under_umask_022_and_the_agents_files_stay_private() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let run = deploy(&flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]), &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    let modes = |glob: &str| t.ssh_ok(&format!("stat -c '%a %n' {glob}"));
    let boot = modes("/boot/loader/loader.conf /boot/loader/entries/*.conf");
    assert!(boot.lines().all(|l| l.starts_with("644 ")), "boot entries: {boot}");
    let private = modes(
        "/run/deploy-flake /run/deploy-flake/agent-*.sh /run/deploy-flake/runs/* /var/lib/deploy-flake",
    );
    assert!(private.lines().all(|l| l.starts_with("700 ")), "{private}");
    let files = modes(
        "/run/deploy-flake/runs/*/status /run/deploy-flake/runs/*/log /var/lib/deploy-flake/last",
    );
    assert!(files.lines().all(|l| l.starts_with("600 ")), "{files}");
}

/// Under a tight open-file limit: the soft limit is raised to the hard
/// one; where the hard one is tight too, no more hosts run at once than
/// the descriptors allow (said once), and every host deploys.
#[test]
fn a_tight_open_file_limit_admits_fewer_hosts_and_every_host_deploys() {
    let lab = Lab::boot(4, Suite::Trixie);
    let entries: Vec<String> = lab
        .targets
        .iter()
        .enumerate()
        .map(|(i, t)| host_entry(&lab, &format!("h{i}"), t, "healthy-v2", ""))
        .collect();
    let f = flake(&lab, &entries);
    for (limit, said) in [("32:4096", false), ("32:32", true)] {
        let out = Command::new("prlimit")
            .arg(format!("--nofile={limit}"))
            .arg(crate::common::BIN)
            .args(["--json", "--max-parallel", "0", "--force", "--flake"])
            .arg(&f)
            .arg("--all")
            .env("NIX_CONFIG", crate::common::NIX_CONFIG)
            .output()
            .unwrap();
        let (stdout, stderr) =
            (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert_eq!(out.status.code(), Some(0), "{limit}: {stdout}\n{stderr}");
        let notes = stderr.matches("open files allow").count();
        assert_eq!(notes, usize::from(said), "{limit}: {stderr}");
    }
    for t in &lab.targets {
        assert_on_configuration(t, "healthy-v2");
    }
}
