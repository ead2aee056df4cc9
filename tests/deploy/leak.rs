//! The secrets check: after runs that used a key and a sudo password, each
//! holding a marker of its own, look for the markers everywhere a secret
//! must never be — every process's argv and environment seen on the
//! deployer and on the target during the runs (sampled from /proc), the
//! runs' stdout and stderr (`-vv`, `--json`, the human output), the
//! target's journal, both Nix stores (the paths created during the runs)
//! and `status --json`. The marker may be only in the key file itself (and
//! in the files it came from on this machine). Every place is first shown
//! able to find a marker (a control), so that a search that sees nothing
//! cannot pass for one that found nothing.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use crate::common::{nix_string, Lab, Suite, Target, BIN, NIX_CONFIG};
use crate::helpers::{flake, host_entry, Run};

/// Samples every process's argv and environment on this machine, from
/// /proc, until stopped; the distinct ones seen.
struct LocalSampler {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<BTreeSet<Vec<u8>>>>,
    rounds: Arc<Mutex<usize>>,
    thread: std::thread::JoinHandle<()>,
}

impl LocalSampler {
    fn start() -> LocalSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(BTreeSet::new()));
        let rounds = Arc::new(Mutex::new(0));
        let (s, v, r) = (stop.clone(), seen.clone(), rounds.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::SeqCst) {
                let mut round = Vec::new();
                for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
                    if !entry.file_name().to_string_lossy().bytes().all(|b| b.is_ascii_digit()) {
                        continue;
                    }
                    for f in ["cmdline", "environ"] {
                        if let Ok(b) = std::fs::read(entry.path().join(f)) {
                            round.push(b);
                        }
                    }
                }
                v.lock().unwrap().extend(round);
                *r.lock().unwrap() += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        LocalSampler { stop, seen, rounds, thread }
    }

    /// The distinct argv and environments seen, and how many rounds.
    fn stop(self) -> (BTreeSet<Vec<u8>>, usize) {
        self.stop.store(true, Ordering::SeqCst);
        self.thread.join().unwrap();
        let rounds = *self.rounds.lock().unwrap();
        (Arc::try_unwrap(self.seen).unwrap().into_inner().unwrap(), rounds)
    }
}

/// The same on a target: a loop that appends what it sees to a root-only
/// file (its own argv holds no marker), stopped by a file.
const TARGET_SAMPLER: &str = "rm -f /root/leak-stop /root/leak-seen; \
     (n=0; while [ ! -e /root/leak-stop ]; do \
        for f in /proc/[0-9]*/cmdline /proc/[0-9]*/environ; do tr '\\0' ' ' < $f 2>/dev/null; echo; done \
          | sort -u >> /root/leak-seen; n=$((n+1)); echo $n > /root/leak-rounds; sleep 0.05; done) \
     >/dev/null 2>&1 </dev/null & echo started";

/// How many lines of a target's `SOURCE` (a shell command) hold any of
/// the markers (/root/leak-patterns), or with `control`, the control word
/// (/root/leak-control).
fn target_hits(t: &Target, source: &str) -> usize {
    target_grep(t, source, "/root/leak-patterns")
}

/// How many files under the target's `PATHS` hold any pattern of `patterns`.
fn target_files(t: &Target, find_paths: &str, patterns: &str) -> usize {
    let cmd =
        format!("{find_paths} | xargs -0 -r grep -r -l -a -F -f {patterns} 2>/dev/null | wc -l");
    t.ssh_ok(&cmd).trim().parse().unwrap()
}

fn target_grep(t: &Target, source: &str, patterns: &str) -> usize {
    let out =
        t.ssh_ok(&format!("{{ {source}; }} 2>/dev/null | grep -c -a -F -f {patterns} || true"));
    out.trim().parse().unwrap_or_else(|_| panic!("{}: {out}", t.name))
}

/// Write `patterns` to /root/leak-patterns on the target through stdin
/// (never an argument).
fn target_patterns(t: &Target, file: &str, patterns: &[&str]) {
    let mut c = t.ssh_command("root");
    c.args(["--", &format!("umask 077; cat > {file}")]).stdin(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(format!("{}\n", patterns.join("\n")).as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
}

/// Files under the store paths created since `since` that hold `marker`.
fn local_store_hits(since: SystemTime, marker: &[u8]) -> (usize, Vec<PathBuf>) {
    let mut new = 0;
    let mut hits = Vec::new();
    for entry in std::fs::read_dir("/nix/store").unwrap().flatten() {
        let Ok(meta) = std::fs::symlink_metadata(entry.path()) else { continue };
        // Store paths get the epoch as mtime; a new one's ctime is its creation.
        use std::os::unix::fs::MetadataExt;
        let ctime = SystemTime::UNIX_EPOCH + Duration::from_secs(meta.ctime() as u64);
        if ctime < since || entry.file_name().to_string_lossy().ends_with(".lock") {
            continue;
        }
        new += 1;
        walk(&entry.path(), marker, &mut hits);
    }
    (new, hits)
}

fn walk(p: &Path, marker: &[u8], hits: &mut Vec<PathBuf>) {
    let Ok(meta) = std::fs::symlink_metadata(p) else { return };
    if meta.is_dir() {
        for e in std::fs::read_dir(p).into_iter().flatten().flatten() {
            walk(&e.path(), marker, hits);
        }
    } else if meta.is_file() {
        if let Ok(b) = std::fs::read(p) {
            if contains(&b, marker) {
                hits.push(p.to_path_buf());
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// `deploy-flake ARGS...` (a subcommand first), its stdout and stderr.
fn tool(args: &[&str]) -> Run {
    let started = std::time::Instant::now();
    let out = Command::new(BIN).args(args).env("NIX_CONFIG", NIX_CONFIG).output().unwrap();
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        elapsed: started.elapsed(),
    }
}

/// A key and a sudo password, each with a marker: after a deploy (`-vv
/// --json`), a human deploy that finds the host up to date and writes the
/// keys alone (`-vv`), `deploy-flake keys` and `status --json`, the markers
/// are nowhere but in the key files.
#[test]
fn neither_a_key_nor_the_sudo_password_leaks_anywhere() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let tag = format!("{}{}", std::process::id(), t.name.len());
    let key_marker = format!("KEYMARKER{tag}x7q");
    let pw_marker = format!("PWMARKER{tag}k2z");
    let markers = [key_marker.as_str(), pw_marker.as_str()];
    // pwuser's password becomes the marker (through chpasswd's stdin).
    let mut c = t.ssh_command("root");
    c.args(["--", "chpasswd"]).stdin(Stdio::piped());
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(format!("pwuser:{pw_marker}\n").as_bytes()).unwrap();
    assert!(child.wait().unwrap().success());
    t.ssh_ok("groupadd --system keys");
    let secrets = lab.dir().join("secrets");
    std::fs::create_dir(&secrets).unwrap();
    std::fs::write(secrets.join("key"), format!("{key_marker}\n")).unwrap();
    std::fs::write(secrets.join("pw"), format!("{pw_marker}\n")).unwrap();
    let key_path = secrets.join("key").display().to_string();
    let pw_command = format!("cat {}", secrets.join("pw").display());
    let extra = format!(
        r#"sshUser = "pwuser"; keys = {{
             from-command = {{ keyCommand = [ "cat" {k} ]; user = "nobody"; group = "keys"; }};
             from-file = {{ keyFile = {k}; uploadAt = "post-activation"; }};
           }};"#,
        k = nix_string(&key_path)
    );
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", &extra)]);
    let flake_arg = f.display().to_string();
    target_patterns(t, "/root/leak-patterns", &markers);
    // Controls: each sampler sees a marker-like word in an argv.
    let since = SystemTime::now() - Duration::from_secs(1);
    let stamp = t.ssh_ok("date +%s").parse::<u64>().unwrap() - 1;
    let local = LocalSampler::start();
    assert_eq!(t.ssh_ok(TARGET_SAMPLER), "started");
    let control = format!("CONTROL{tag}");
    let _ = Command::new("sh").args(["-c", "sleep 0.3", &control]).status();
    let _ = Command::new("sleep").arg("0.3").env("LEAKCONTROL", &control).status();
    t.ssh_ok(&format!("sh -c 'sleep 1' {control}"));
    target_patterns(t, "/root/leak-control", &[&control]);
    // (In the journal, and in a store path of each end, made now.)
    t.ssh_ok(&format!(
        "logger {control}; printf {control} > /root/control; nix-store --add /root/control"
    ));
    let control_file = lab.dir().join("control");
    std::fs::write(&control_file, &control).unwrap();
    let added = Command::new("nix-store")
        .arg("--add")
        .arg(&control_file)
        .env("NIX_CONFIG", NIX_CONFIG)
        .output()
        .unwrap();
    assert!(added.status.success(), "{added:?}");

    let pw = format!("--sudo-password-command={pw_command}");
    let common = ["--flake", flake_arg.as_str(), "--all", pw.as_str()];
    let mut runs = Vec::new();
    let json_vv = [&["-vv", "--json"][..], &common].concat();
    runs.push(("deploy -vv --json", tool(&json_vv)));
    let human_vv = [&["-vv", "--progress", "plain"][..], &common].concat();
    runs.push(("deploy -vv (human)", tool(&human_vv)));
    let keys_vv = [&["keys", "-vv"][..], &common].concat();
    runs.push(("keys -vv", tool(&keys_vv)));
    let status = [&["status", "--json"][..], &common].concat();
    runs.push(("status --json", tool(&status)));

    t.ssh_ok("touch /root/leak-stop; sleep 1");
    let (seen_here, rounds_here) = local.stop();
    for (what, run) in &runs {
        assert_eq!(run.code, 0, "{what}: {run}");
    }
    assert!(runs[1].1.stdout.contains("wrote 2 key(s); the system is up to date"), "{}", runs[1].1);
    let mut report = Vec::new();
    let mut leaks = Vec::new();
    // (a) argv and environments, here and there.
    let hits_here = |m: &str| seen_here.iter().filter(|b| contains(b, m.as_bytes())).count();
    assert!(hits_here(&control) >= 2, "the sampler here saw no control ({rounds_here} rounds)");
    report.push(format!(
        "deployer /proc/*/cmdline+environ: {} distinct in {rounds_here} samples (control seen {} times)",
        seen_here.len(),
        hits_here(&control)
    ));
    for m in markers {
        if hits_here(m) > 0 {
            leaks.push(format!("deployer argv/env holds {m}"));
        }
    }
    let rounds_there = t.ssh_ok("cat /root/leak-rounds");
    let control_there = t.ssh_ok(&format!("grep -c {control} /root/leak-seen || true"));
    assert_ne!(control_there, "0", "the sampler on the target saw no control");
    let there = target_hits(t, "cat /root/leak-seen");
    report.push(format!(
        "target /proc/*/cmdline+environ: {} distinct lines in {rounds_there} samples (control seen {control_there} times): {there} with a marker",
        t.ssh_ok("sort -u /root/leak-seen | wc -l")
    ));
    if there > 0 {
        leaks.push(format!(
            "target argv/env: {}",
            t.ssh_ok("grep -a -F -f /root/leak-patterns /root/leak-seen | head -3")
        ));
    }
    // (b) what the runs printed.
    for (what, run) in &runs {
        for m in markers {
            if run.stdout.contains(m) || run.stderr.contains(m) {
                leaks.push(format!("{what} printed {m}"));
            }
        }
        report.push(format!(
            "{what}: {} bytes of stdout, {} of stderr",
            run.stdout.len(),
            run.stderr.len()
        ));
    }
    // (c) the target's journal.
    let journal = target_hits(t, "journalctl -o cat");
    let journal_control = target_grep(t, "journalctl -o cat", "/root/leak-control");
    assert!(journal_control > 0, "the journal search finds no control");
    report.push(format!(
        "target journal: {} lines, {journal} with a marker (control found {journal_control} times)",
        t.ssh_ok("journalctl -o cat | wc -l")
    ));
    if journal > 0 {
        leaks.push("target journal".into());
    }
    // (d) the stores: the paths made during the runs, here and there.
    let (new_here, store_here) = local_store_hits(since, key_marker.as_bytes());
    let (_, pw_here) = local_store_hits(since, pw_marker.as_bytes());
    let (_, control_here) = local_store_hits(since, control.as_bytes());
    assert_eq!(control_here.len(), 1, "the store search here finds no control");
    report.push(format!(
        "deployer store: {new_here} new paths, {} files with a marker (control found)",
        store_here.len() + pw_here.len()
    ));
    leaks.extend(
        store_here.iter().chain(&pw_here).map(|p| format!("deployer store: {}", p.display())),
    );
    let new_paths =
        format!("find /nix/store -mindepth 1 -maxdepth 1 -newerct @{stamp} ! -name '*.lock'");
    let in_store = |patterns: &str| target_files(t, &format!("{new_paths} -print0"), patterns);
    let store_there = in_store("/root/leak-patterns");
    assert_eq!(in_store("/root/leak-control"), 1, "the store search there finds no control");
    report.push(format!(
        "target store: {} new paths, {store_there} files with a marker (control found)",
        t.ssh_ok(&format!("{new_paths} | wc -l"))
    ));
    if store_there > 0 {
        leaks.push("target store".into());
    }
    // (e) where the key must be, it is (the searches can find it).
    assert_eq!(target_hits(t, "cat /run/keys/from-command /run/keys/from-file"), 2);
    let elsewhere =
        "find /run /var/lib /home /tmp /var/tmp /etc -path /run/keys -prune -o -type f -print0";
    let leftovers = target_files(t, elsewhere, "/root/leak-patterns");
    // (The search finds what is there: the keys themselves.)
    assert_eq!(target_files(t, "find /run/keys -type f -print0", "/root/leak-patterns"), 2);
    report.push(format!(
        "target files besides the keys (/run, /var/lib, /home, /tmp, /var/tmp, /etc): {leftovers} with a marker"
    ));
    if leftovers > 0 {
        leaks.push("a file on the target besides the keys".into());
    }
    println!("leak check:\n  {}", report.join("\n  "));
    assert!(leaks.is_empty(), "LEAKS:\n{}\n\nchecked:\n{}", leaks.join("\n"), report.join("\n"));
}
