//! Systems built elsewhere, on real targets: a build host (a lab target
//! that builds for others), a signed binary cache served over HTTP from a
//! lab address, systems built before (`--systems`), and what goes wrong
//! there. Counted where it happens: `nix` calls by a wrapper on the build
//! host, the targets and this machine; bytes on the targets' links.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use serde_json::Value;

use super::helpers::{command, host_entry, Run};
use crate::common::{host_nix, nix_string, run_ok, Lab, Suite, Target};

/// Every `nix` call on a target goes through a wrapper that logs when it
/// started and ended and its arguments (`START END ARGS`).
const WRAPPER: &str = r#"#!/bin/sh
s=$(date +%s.%N)
/usr/bin/nix "$@"; rc=$?
printf '%s %s %s\n' "$s" "$(date +%s.%N)" "$*" >>/var/log/nix-calls
exit $rc
"#;

fn wrap_nix(t: &Target) {
    t.ssh_ok(&format!(
        "printf '%s' {} >/usr/local/bin/nix && chmod 0755 /usr/local/bin/nix \
         && : >/var/log/nix-calls && chmod 0666 /var/log/nix-calls",
        shell(WRAPPER)
    ));
}

/// The `nix` calls a wrapped target logged: (start, end, arguments).
fn nix_calls(t: &Target) -> Vec<(f64, f64, String)> {
    let log = t.ssh_ok("cat /var/log/nix-calls");
    log.lines()
        .filter_map(|l| {
            let mut w = l.splitn(3, ' ');
            Some((w.next()?.parse().ok()?, w.next()?.parse().ok()?, w.next()?.to_string()))
        })
        .collect()
}

/// The `nix` calls on `t` that evaluate, build or copy: all but the lock's
/// `nix --version` (which Nix the host runs, asked when its binary changes).
fn nix_work(t: &Target) -> Vec<(f64, f64, String)> {
    nix_calls(t).into_iter().filter(|c| c.2 != "--version").collect()
}

fn builds(t: &Target) -> Vec<(f64, f64, String)> {
    nix_calls(t).into_iter().filter(|c| c.2.split(' ').any(|w| w == "build")).collect()
}

fn shell(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// This machine's `nix`, wrapped the same way (first on the tool's PATH):
/// the calls land in `DIR/calls`.
struct LocalNix {
    dir: PathBuf,
}

impl LocalNix {
    fn new(lab: &Lab) -> LocalNix {
        let dir = lab.dir().join("local-nix");
        std::fs::create_dir_all(&dir).unwrap();
        let real = run_ok(Command::new("sh").args(["-c", "command -v nix"]));
        let script = format!(
            "#!/bin/sh\nprintf '%s\\n' \"$*\" >>{calls}\nexec {real} \"$@\"\n",
            calls = dir.join("calls").display()
        );
        let path = dir.join("nix");
        std::fs::write(&path, script).unwrap();
        run_ok(Command::new("chmod").arg("0755").arg(&path));
        LocalNix { dir }
    }

    fn calls(&self) -> Vec<String> {
        let text = std::fs::read_to_string(self.dir.join("calls")).unwrap_or_default();
        text.lines().map(String::from).collect()
    }

    /// `deploy-flake --json --flake FLAKE ARGS...` with this `nix` first.
    fn deploy(&self, flake: &Path, args: &[&str]) -> Run {
        let path = format!("{}:{}", self.dir.display(), std::env::var("PATH").unwrap_or_default());
        let started = std::time::Instant::now();
        let out = command(flake, args).env("PATH", path).output().expect("run deploy-flake");
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: started.elapsed(),
        }
    }

    /// No system was evaluated or built here: the only evaluation is the
    /// fleet's (`#deployFlake`), and nothing was built.
    fn assert_evaluated_no_system(&self) {
        let calls = self.calls();
        assert!(!calls.is_empty(), "the wrapper saw no nix call at all: is it on the PATH?");
        for c in &calls {
            let words: Vec<&str> = c.split(' ').collect();
            assert!(!words.contains(&"build"), "a build here: {c}");
            if words.contains(&"eval") {
                assert!(c.contains("#deployFlake"), "an evaluation here: {c}");
            }
        }
    }
}

/// The build host's settings for hosts.nix: `buildHost` as a destination
/// with the lab's key and known_hosts.
fn on_build_host(lab: &Lab, bh: &Target, extra: &str) -> String {
    format!(
        r#"buildOn = "host"; buildHost = {}; buildHostSshOpts = {}; {extra}"#,
        nix_string(&format!("root@{}", bh.address)),
        lab.ssh_opts_nix()
    )
}

fn flake_with(lab: &Lab, entries: &[String], salt: &str) -> PathBuf {
    let f = lab.fixture_flake_raw(&format!("{{\n{}}}\n", entries.concat()));
    std::fs::write(f.join("build-salt"), salt).unwrap();
    f
}

fn assert_deployed(run: &Run, host: &str, t: &Target, built_on: &str, copied_from: &str) {
    assert_eq!(run.outcome(host), "deployed", "{host}:\n{run}");
    let r = run.report(host);
    assert_eq!(r["built_on"], built_on, "{host}: {r}");
    assert_eq!(r["copied_from"], copied_from, "{host}: {r}");
    assert_eq!(t.current_system().as_deref(), Some(run.system(host).as_str()), "{host}");
}

/// Six hosts that share two systems, built on a build host: each system is
/// built there once, the two at once (its core count), nothing is
/// evaluated on the hosts or here, and every host runs its system (one
/// reached as a user with sudo). With `buildHostCapacity = 1` the builds
/// take turns.
#[test]
fn a_build_host_builds_each_system_once_for_six_hosts() {
    let suites = [Suite::Trixie, Suite::Bookworm, Suite::Trixie, Suite::Bookworm];
    let lab = Lab::boot_suites(&[&suites[..], &suites[..3]].concat());
    let (bh, targets) = lab.targets.split_first().unwrap();
    lab.targets.iter().for_each(wrap_nix);
    let local = LocalNix::new(&lab);
    let entry = |i: usize, t: &Target, capacity: &str| {
        let config = if i % 2 == 0 { "sleepy-1" } else { "sleepy-2" };
        // The last host is reached as a user with sudo.
        let user = if i == 5 { r#"sshUser = "deploy";"# } else { "" };
        let extra = format!("{user} {}", on_build_host(&lab, bh, capacity));
        host_entry(&lab, &format!("h{i}"), t, config, &extra)
    };
    let entries: Vec<String> = targets.iter().enumerate().map(|(i, t)| entry(i, t, "")).collect();
    let f = flake_with(&lab, &entries, "first");
    let run = local.deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    for (i, t) in targets.iter().enumerate() {
        assert_deployed(&run, &format!("h{i}"), t, "host", "deployer");
        assert!(nix_work(t).is_empty(), "nix ran on h{i}: {:?}", nix_calls(t));
    }
    local.assert_evaluated_no_system();
    let built = builds(bh);
    assert_eq!(built.len(), 2, "builds on the build host: {built:?}");
    let cores: u32 = bh.ssh_ok("nproc").parse().unwrap();
    let overlap = built[0].0 < built[1].1 && built[1].0 < built[0].1;
    assert_eq!(overlap, cores > 1, "{cores} core(s), builds {built:?}");
    assert_eq!(
        bh.ssh_ok("ls -d /tmp/deploy-flake-build.* 2>/dev/null || true"),
        "",
        "GC roots left"
    );

    // One at a time: two hosts of new systems (a new salt), capacity 1.
    let entries = [entry(0, &targets[0], "buildHostCapacity = 1;"), entry(1, &targets[1], "")];
    let f = flake_with(&lab, &entries, "second");
    bh.ssh_ok(": >/var/log/nix-calls");
    let run = local.deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    let built = builds(bh);
    assert_eq!(built.len(), 2, "builds on the build host: {built:?}");
    assert!(built[0].1 <= built[1].0 || built[1].1 <= built[0].0, "they overlap: {built:?}");
}

/// `buildOn = "local"` through a signed binary cache served over HTTP from
/// a lab address: the closure goes to the cache once and every host
/// substitutes it, so this machine sends the six hosts less than 1.2 times
/// one closure; without the cache, it sends each host the closure itself.
#[test]
fn a_signed_cache_sends_each_closure_once_for_six_hosts() {
    let suites = [Suite::Trixie, Suite::Bookworm];
    let lab = Lab::boot_suites(&[&suites[..], &suites[..], &suites[..], &suites[..1]].concat());
    let (cache_host, targets) = lab.targets.split_first().unwrap();
    let cache = Cache::serve(&lab, cache_host, targets);
    let local = LocalNix::new(&lab);
    let entry = |i: usize, t: &Target| {
        host_entry(&lab, &format!("h{i}"), t, "bulky", r#"buildOn = "local";"#)
    };
    let entries: Vec<String> = targets.iter().enumerate().map(|(i, t)| entry(i, t)).collect();

    let f = flake_with(&lab, &entries, "through the cache");
    let sent = Sent::start(targets);
    let uri = format!("file://{}?compression=none", cache.dir.display());
    let key = cache.key.display().to_string();
    let run = local.deploy(&f, &["--all", "--push-to", &uri, "--sign-key", &key]);
    // The push to the cache is a write here (file://): counted as sent.
    let pushed = dir_bytes(&cache.dir);
    let through_cache = sent.bytes() + pushed;
    assert_eq!(run.code, 0, "{run}");
    let closure = closure_bytes(&run.system("h0"));
    for (i, t) in targets.iter().enumerate() {
        assert_deployed(&run, &format!("h{i}"), t, "local", "cache");
        let sigs = t.ssh_ok(&format!("nix path-info --sigs {}", run.system(&format!("h{i}"))));
        assert!(sigs.contains("lab-cache-1:"), "h{i}: not signed by the cache's key: {sigs}");
    }

    let f = flake_with(&lab, &entries, "from here");
    let sent = Sent::start(targets);
    let run = local.deploy(&f, &["--all"]);
    let from_here = sent.bytes();
    assert_eq!(run.code, 0, "{run}");
    for (i, t) in targets.iter().enumerate() {
        assert_deployed(&run, &format!("h{i}"), t, "local", "deployer");
    }
    let ratio = |b: u64| b as f64 / closure as f64;
    eprintln!(
        "closure {closure} B; this machine sent the 6 hosts {through_cache} B through the cache \
         ({pushed} B of it to the cache; {:.2}x) and {from_here} B without ({:.2}x)",
        ratio(through_cache),
        ratio(from_here)
    );
    assert!(ratio(through_cache) < 1.2, "through the cache: {:.2}x", ratio(through_cache));
    assert!(ratio(from_here) > 5.0, "without the cache: {:.2}x", ratio(from_here));
}

/// The closure size of a path in this machine's store.
fn closure_bytes(path: &str) -> u64 {
    let out = run_ok(host_nix().args(["path-info", "--json", "--closure-size", path]));
    let v: Value = serde_json::from_str(&out).unwrap();
    let info = if v.is_array() { v[0].clone() } else { v[path].clone() };
    info["closureSize"].as_u64().unwrap_or_else(|| panic!("no closureSize in {out}"))
}

/// The bytes of the files below `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    let out = run_ok(Command::new("du").args(["-sb"]).arg(dir));
    out.split_whitespace().next().unwrap().parse().unwrap()
}

/// Bytes this machine sent the targets, from their links' counters.
struct Sent {
    links: Vec<String>,
    before: u64,
}

impl Sent {
    fn start(targets: &[Target]) -> Sent {
        let links = targets.iter().map(|t| format!("dfl{}", t.idx)).collect();
        let mut s = Sent { links, before: 0 };
        s.before = s.now();
        s
    }

    fn now(&self) -> u64 {
        let read = |l: &String| {
            let path = format!("/sys/class/net/{l}/statistics/tx_bytes");
            std::fs::read_to_string(&path).unwrap().trim().parse::<u64>().unwrap()
        };
        self.links.iter().map(read).sum()
    }

    fn bytes(&self) -> u64 {
        self.now() - self.before
    }
}

/// A binary cache: a directory here, served over HTTP from the lab address
/// of `host` (in its network namespace, linked to each target), whose
/// signing key every target trusts.
struct Cache {
    dir: PathBuf,
    key: PathBuf,
    server: Child,
}

impl Cache {
    fn serve(lab: &Lab, host: &Target, targets: &[Target]) -> Cache {
        let dir = lab.dir().join("cache");
        std::fs::create_dir_all(&dir).unwrap();
        Cache::serve_dir(lab, host, targets, dir)
    }

    /// The same, serving `dir` (which exists).
    fn serve_dir(lab: &Lab, host: &Target, targets: &[Target], dir: PathBuf) -> Cache {
        let key = lab.dir().join("cache.secret");
        let secret =
            run_ok(host_nix().args(["key", "generate-secret", "--key-name", "lab-cache-1"]));
        std::fs::write(&key, secret).unwrap();
        let public = run_ok(
            host_nix()
                .args(["key", "convert-secret-to-public"])
                .stdin(std::fs::File::open(&key).unwrap()),
        );
        // http.server's own HTTPServer looks its address up in DNS first.
        let serve = "import functools, http.server, socketserver, sys\n\
                     h = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[3])\n\
                     socketserver.ThreadingTCPServer.allow_reuse_address = True\n\
                     socketserver.ThreadingTCPServer((sys.argv[1], int(sys.argv[2])), h).serve_forever()";
        let server = Command::new("ip")
            .args([
                "netns",
                "exec",
                &host.name,
                "/usr/bin/python3",
                "-c",
                serve,
                &host.address,
                "8080",
            ])
            .arg(&dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the cache's HTTP server");
        for t in targets {
            lab.link(host, t);
            t.ssh_ok(&format!(
                "printf 'substituters = http://{}:8080\\ntrusted-public-keys = {}\\n' >>/etc/nix/nix.conf \
                 && systemctl restart nix-daemon",
                host.address,
                public.trim()
            ));
        }
        let url = format!("http://{}:8080/", host.address);
        super::helpers::eventually("the cache answers", std::time::Duration::from_secs(20), || {
            targets[0].ssh(&format!("curl -sf {url} >/dev/null")).status.success()
        });
        Cache { dir, key, server }
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// `configuration` of `flake` built here (as a CI job would), kept by a GC
/// root in the lab's directory; its toplevel.
fn build_here(lab: &Lab, flake: &Path, configuration: &str) -> String {
    let installable = format!(
        "path:{}#nixosConfigurations.\"{configuration}\".config.system.build.toplevel",
        flake.display()
    );
    let link = lab.dir().join(format!("result-{configuration}"));
    let out =
        run_ok(host_nix().args(["build", "--json", "--out-link"]).arg(&link).arg(installable));
    let v: Value = serde_json::from_str(&out).unwrap();
    v[0]["outputs"]["out"].as_str().unwrap().to_string()
}

/// `--systems`: systems built before the run (here, as a CI job would) are
/// deployed as they are, nothing evaluated or built anywhere; a path no
/// store has is refused with the substituters tried, a path that is no
/// system as `not-a-system`, and neither host changes; a host the file
/// does not list stops the run before anything is touched.
#[test]
fn systems_built_before_are_deployed_as_they_are() {
    let lab = Lab::boot_suites(&[Suite::Trixie, Suite::Bookworm]);
    let (a, b) = (&lab.targets[0], &lab.targets[1]);
    lab.targets.iter().for_each(wrap_nix);
    // Salted systems of their own: this machine's store keeps what is
    // built here, and other tests count on it lacking the fixture's systems.
    let entries =
        [host_entry(&lab, "a", a, "sleepy-2", ""), host_entry(&lab, "b", b, "sleepy-1", "")];
    let salt =
        format!("built before by {} at {:?}", std::process::id(), std::time::SystemTime::now());
    let f = flake_with(&lab, &entries, &salt);
    let (v2, v1) = (build_here(&lab, &f, "sleepy-2"), build_here(&lab, &f, "sleepy-1"));
    let systems = lab.dir().join("systems.json");
    // By host name, and by configuration name as `nix build --json` gives it.
    let listed = serde_json::json!({ "a": v2, "sleepy-1": { "outputs": { "out": v1 } } });
    std::fs::write(&systems, listed.to_string()).unwrap();
    let local = LocalNix::new(&lab);
    let run = local.deploy(&f, &["--all", "--systems", systems.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{run}");
    assert_deployed(&run, "a", a, "prebuilt", "deployer");
    assert_deployed(&run, "b", b, "prebuilt", "deployer");
    assert_eq!((run.system("a"), run.system("b")), (v2.clone(), v1.clone()));
    local.assert_evaluated_no_system();
    for t in [a, b] {
        assert!(nix_work(t).is_empty(), "nix ran on {}: {:?}", t.name, nix_calls(t));
    }

    // A substituter where nothing answers (a's own link, port 9).
    let substituter = format!("http://10.77.{}.1:9", a.idx);
    a.ssh_ok(&format!(
        "printf 'substituters = {substituter}\\n' >>/etc/nix/nix.conf && systemctl restart nix-daemon"
    ));
    let bogus = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-bogus";
    let file = lab.dir().join("not-a-system");
    std::fs::write(&file, "not a system\n").unwrap();
    let not_a_system = run_ok(Command::new("nix-store").arg("--add").arg(&file));
    let listed = serde_json::json!({ "a": bogus, "b": not_a_system });
    std::fs::write(&systems, listed.to_string()).unwrap();
    let run = local.deploy(&f, &["--all", "--systems", systems.to_str().unwrap()]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!((run.outcome("a"), run.reason("a")), ("failed".into(), "copy".into()), "{run}");
    let want = format!(
        "neither in this machine's store nor in the host's substituters (tried: {substituter})"
    );
    assert!(run.message("a").contains(&want), "{}", run.message("a"));
    assert_eq!(
        (run.outcome("b"), run.reason("b")),
        ("failed".into(), "not-a-system".into()),
        "{run}"
    );
    assert!(run.message("b").contains("is not a NixOS system"), "{}", run.message("b"));
    assert_eq!(a.current_system(), Some(v2.clone()));
    assert_eq!(b.current_system(), Some(v1.clone()));
    assert!(!b.ssh(&format!("nix-store --check-validity {not_a_system}")).status.success());

    std::fs::write(&systems, serde_json::json!({ "a": v2 }).to_string()).unwrap();
    let run = local.deploy(&f, &["--all", "--systems", systems.to_str().unwrap()]);
    assert_eq!(run.code, 2, "{run}");
    assert!(run.stderr.contains("--systems has no system for b"), "{run}");
}

/// A build host that does not answer fails every host that needs it, as
/// `build-host`, before anything changes on them.
#[test]
fn an_unreachable_build_host_fails_its_hosts_before_anything_changes() {
    let lab = Lab::boot_suites(&[Suite::Trixie, Suite::Bookworm]);
    // Port 1 of a lab address: nothing listens there.
    let dest = format!("root@{}:1", lab.targets[0].address);
    let extra = format!(
        r#"buildOn = "host"; buildHost = {}; buildHostSshOpts = {}; timeouts.connect = 3;"#,
        nix_string(&dest),
        lab.ssh_opts_nix()
    );
    let entries: Vec<String> = (lab.targets.iter().enumerate())
        .map(|(i, t)| host_entry(&lab, &format!("h{i}"), t, "healthy-v2", &extra))
        .collect();
    let f = flake_with(&lab, &entries, "unreachable");
    let run = super::helpers::deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    for (i, t) in lab.targets.iter().enumerate() {
        let h = format!("h{i}");
        assert_eq!(
            (run.outcome(&h), run.reason(&h), run.phase(&h)),
            ("failed".into(), "build-host".into(), "build".into()),
            "{run}"
        );
        let m = run.message(&h);
        assert!(
            m.contains(&format!("build host {dest}")) && m.contains("Connection refused"),
            "{m}"
        );
        assert!(m.contains("nothing was changed"), "{m}");
        assert_eq!(t.current_system(), None, "{h} changed");
    }
}

/// A build that fails on the build host (named by its deployFlake name)
/// is reported once: the hosts of that system fail as `build`, one with
/// Nix's output and error, the other naming it; the other system's hosts
/// are deployed, the build host among them (its own build host, reached
/// as a user with sudo).
#[test]
fn a_failed_build_fails_only_the_hosts_of_its_system() {
    let lab = Lab::boot_suites(&[
        Suite::Trixie,
        Suite::Bookworm,
        Suite::Trixie,
        Suite::Bookworm,
        Suite::Trixie,
    ]);
    let (bh, targets) = lab.targets.split_first().unwrap();
    wrap_nix(bh);
    let extra = r#"buildOn = "host"; buildHost = "builder";"#;
    // The build host is reached as a user with sudo.
    let own = format!(r#"{extra} sshUser = "deploy";"#);
    let mut entries = vec![host_entry(&lab, "builder", bh, "healthy-v2", &own)];
    for (i, t) in targets.iter().enumerate() {
        let config = if i < 2 { "fails-to-build" } else { "healthy-v2" };
        entries.push(host_entry(&lab, &format!("h{i}"), t, config, extra));
    }
    let f = flake_with(&lab, &entries, "fails");
    let run = super::helpers::deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    let failing = ["h0", "h1"];
    for h in failing {
        assert_eq!(
            (run.outcome(h), run.reason(h), run.phase(h)),
            ("failed".into(), "build".into(), "build".into()),
            "{run}"
        );
    }
    let full: Vec<&str> =
        failing.into_iter().filter(|h| run.message(h).contains("lab: this build fails")).collect();
    assert_eq!(full.len(), 1, "the build's error, once: {run}");
    let other = failing.into_iter().find(|h| *h != full[0]).unwrap();
    assert!(
        run.message(other).contains(&format!("(reported with host {})", full[0])),
        "{}",
        run.message(other)
    );
    let with_log: Vec<&str> = failing
        .into_iter()
        .filter(|h| run.lines(h).iter().any(|l| l.contains("this build fails")))
        .collect();
    assert_eq!(with_log, [full[0]], "the build's output, once");
    for (i, t) in targets.iter().enumerate().skip(2) {
        assert_deployed(&run, &format!("h{i}"), t, "host", "deployer");
    }
    assert_deployed(&run, "builder", bh, "host", "deployer");
    assert_eq!(targets[0].current_system(), None);
    assert_eq!(builds(bh).len(), 2, "{:?}", builds(bh));
}

/// `copyFrom = "build-host"`: the build host copies the closure to each
/// host itself, with its own ssh key and known_hosts, over the lab's links;
/// this machine sends the hosts a fraction of it. A host that does not
/// accept the build host's key is not touched.
#[test]
fn the_build_host_copies_to_the_hosts_with_its_own_login() {
    let lab = Lab::boot_suites(&[Suite::Trixie, Suite::Bookworm, Suite::Trixie]);
    let (bh, targets) = lab.targets.split_first().unwrap();
    wrap_nix(bh);
    bh.ssh_ok("ssh-keygen -q -t ed25519 -N '' -C build-host -f /root/.ssh/id_ed25519");
    let key = bh.ssh_ok("cat /root/.ssh/id_ed25519.pub");
    let known = std::fs::read_to_string(lab.known_hosts_path()).unwrap();
    bh.ssh_ok(&format!("printf '%s' {} >/root/.ssh/known_hosts", shell(&known)));
    for t in targets {
        lab.link(bh, t);
        t.ssh_ok(&format!("printf '%s\\n' {} >>/root/.ssh/authorized_keys", shell(&key)));
    }
    let extra = on_build_host(&lab, bh, r#"copyFrom = "build-host";"#);
    let entries: Vec<String> = (targets.iter().enumerate())
        .map(|(i, t)| host_entry(&lab, &format!("h{i}"), t, "bulky", &extra))
        .collect();
    let f = flake_with(&lab, &entries, "direct");
    let sent = Sent::start(targets);
    let run = super::helpers::deploy(&f, &["--all"]);
    let bytes = sent.bytes();
    assert_eq!(run.code, 0, "{run}");
    for (i, t) in targets.iter().enumerate() {
        assert_deployed(&run, &format!("h{i}"), t, "host", "build-host");
        let to = format!("--to ssh-ng://root@{}", t.address);
        assert!(nix_calls(bh).iter().any(|c| c.2.contains(" copy ") && c.2.contains(&to)), "{to}");
    }
    let closure = bh.ssh_ok(&format!("nix path-info --closure-size {}", run.system("h0")));
    let closure: u64 = closure.split_whitespace().last().unwrap().parse().unwrap();
    eprintln!("closure {closure} B; this machine sent the 2 hosts {bytes} B");
    assert!(bytes * 10 < closure, "this machine sent {bytes} B of a {closure} B closure");

    // The second host no longer accepts the build host's key.
    let before = targets[1].current_system();
    targets[1].ssh_ok("sed -i '/ build-host$/d' /root/.ssh/authorized_keys");
    let f = flake_with(&lab, &entries, "direct, again");
    let run = super::helpers::deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_deployed(&run, "h0", &targets[0], "host", "build-host");
    assert_eq!(
        (run.outcome("h1"), run.reason("h1"), run.phase("h1")),
        ("failed".into(), "copy".into(), "copy".into()),
        "{run}"
    );
    assert!(
        run.message("h1").contains("authorise it for root on the host"),
        "{}",
        run.message("h1")
    );
    assert_eq!(targets[1].current_system(), before);
}

/// Built on the build host and pushed from there to its own cache, signed
/// with a key that stays on this machine (`nix store sign` through the
/// build host's store): each host substitutes the closure, signed, and
/// this machine sends the hosts a fraction of it. A host that does not
/// substitute from the cache gets the closure relayed, and says why.
#[test]
fn a_build_host_pushes_to_a_cache_the_hosts_substitute_from() {
    let suites = [Suite::Bookworm, Suite::Trixie, Suite::Bookworm, Suite::Trixie];
    let lab = Lab::boot_suites(&suites);
    let (bh, all) = lab.targets.split_first().unwrap();
    let (targets, without) = all.split_at(2);
    wrap_nix(bh);
    bh.ssh_ok("mkdir -p /var/cache/lab");
    let served = lab.dir().join("targets").join(&bh.name).join("merged/var/cache/lab");
    let cache = Cache::serve_dir(&lab, bh, targets, served);
    let key = cache.key.display().to_string();
    let entries: Vec<String> = (all.iter().enumerate())
        .map(|(i, t)| host_entry(&lab, &format!("h{i}"), t, "bulky", &on_build_host(&lab, bh, "")))
        .collect();
    let f = flake_with(&lab, &entries, "pushed from the build host");
    let sent = Sent::start(targets);
    let uri = "file:///var/cache/lab?compression=none";
    let run = super::helpers::deploy(&f, &["--all", "--push-to", uri, "--sign-key", &key]);
    let bytes = sent.bytes();
    assert_eq!(run.code, 0, "{run}");
    for (i, t) in targets.iter().enumerate() {
        assert_deployed(&run, &format!("h{i}"), t, "host", "cache");
        let sigs = t.ssh_ok(&format!("nix path-info --sigs {}", run.system(&format!("h{i}"))));
        assert!(sigs.contains("lab-cache-1:"), "h{i}: not signed by the cache's key: {sigs}");
    }
    let pushes: Vec<String> = nix_calls(bh)
        .into_iter()
        .filter(|c| c.2.contains(" copy ") && c.2.contains("--to file:///var/cache/lab"))
        .map(|c| c.2)
        .collect();
    assert_eq!(pushes.len(), 1, "pushed once: {pushes:?}");
    assert_deployed(&run, "h2", &without[0], "host", "deployer");
    let said = run.lines("h2");
    assert!(said.iter().any(|l| l.contains("the host did not substitute")), "{said:?}");
    let closure = bh.ssh_ok(&format!("nix path-info --closure-size {}", run.system("h0")));
    let closure: u64 = closure.split_whitespace().last().unwrap().parse().unwrap();
    eprintln!("closure {closure} B; this machine sent the 2 hosts {bytes} B");
    assert!(bytes * 10 < closure, "this machine sent {bytes} B of a {closure} B closure");
}

/// Nix's own distributed builds on the build host are used as they are:
/// a build host that may not build itself (`max-jobs = 0`) hands the
/// build to its remote builder (`builders`), and the host gets the system
/// (shown first by `diff`, built there the same way).
#[test]
fn the_build_host_s_remote_builders_take_its_builds() {
    let lab = Lab::boot_suites(&[Suite::Bookworm, Suite::Bookworm, Suite::Trixie]);
    let (bh, builder, target) = (&lab.targets[0], &lab.targets[1], &lab.targets[2]);
    lab.link(bh, builder);
    bh.ssh_ok("ssh-keygen -q -t ed25519 -N '' -C build-host -f /root/.ssh/id_ed25519");
    let key = bh.ssh_ok("cat /root/.ssh/id_ed25519.pub");
    builder.ssh_ok(&format!("printf '%s\\n' {} >>/root/.ssh/authorized_keys", shell(&key)));
    let known = std::fs::read_to_string(lab.known_hosts_path()).unwrap();
    bh.ssh_ok(&format!("printf '%s' {} >/root/.ssh/known_hosts", shell(&known)));
    bh.ssh_ok(&format!(
        "printf 'builders = ssh-ng://root@{} x86_64-linux /root/.ssh/id_ed25519 2\\nmax-jobs = 0\\n' \
         >>/etc/nix/nix.conf && systemctl restart nix-daemon",
        builder.address
    ));
    let entry = host_entry(&lab, "h", target, "healthy-v2", &on_build_host(&lab, bh, ""));
    let f = flake_with(&lab, &[entry], "remote builder");
    // `diff` builds there as a deploy would, and changes nothing.
    // (A host that runs no system yet has no packages to compare with:
    // that part is unknown, and diff exits 1 for it.)
    let diff = super::helpers::deploy(&f, &["diff", "--all"]);
    assert_eq!(diff.code, 1, "{diff}");
    let shown = diff.looked();
    assert_eq!(shown["hosts"][0]["error"], Value::Null, "{diff}");
    let unknown = &shown["hosts"][0]["changes"]["unknown"];
    assert_eq!(unknown["packages"], "the host runs no system to compare with", "{diff}");
    let new = shown["hosts"][0]["new"].as_str().unwrap_or_else(|| panic!("{diff}")).to_string();
    assert_eq!(target.current_system(), None);
    let run = super::helpers::deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
    assert_deployed(&run, "h", target, "host", "deployer");
    let system = run.system("h");
    assert_eq!(system, new, "the deploy's system is the one diff showed");
    let built_there = builder.ssh(&format!("nix-store --check-validity {system}"));
    assert!(built_there.status.success(), "{system} is not in the remote builder's store");
}

/// A host whose sudo asks for a password can only be sent a closure from
/// this machine's store (the password goes over our own connection; no
/// `nix copy` can give it): built on the build host, the system is brought
/// here once through the build host's master, then sent to each such host
/// over its connection. The password never reaches the build host.
#[test]
fn a_sudo_password_host_gets_the_build_host_s_system_through_this_machine() {
    let lab = Lab::boot_suites(&[Suite::Trixie, Suite::Bookworm, Suite::Trixie]);
    let (bh, targets) = lab.targets.split_first().unwrap();
    wrap_nix(bh);
    let extra = on_build_host(&lab, bh, r#"sshUser = "pwuser";"#);
    let entries: Vec<String> = (targets.iter().enumerate())
        .map(|(i, t)| host_entry(&lab, &format!("h{i}"), t, "healthy-v2", &extra))
        .collect();
    let f = flake_with(&lab, &entries, "pw");
    let password = "--sudo-password-command=printf '%s\\n' lab-password-not-secret";
    let run = super::helpers::deploy(&f, &["--all", password]);
    assert_eq!(run.code, 0, "{run}");
    for (i, t) in targets.iter().enumerate() {
        let h = format!("h{i}");
        assert_deployed(&run, &h, t, "host", "deployer");
        assert_eq!(t.boot_profile().as_deref(), Some(run.system(&h).as_str()), "{h}");
    }
    let brought: Vec<String> = (0..targets.len())
        .flat_map(|i| run.lines(&format!("h{i}")))
        .filter(|l| l.starts_with("bringing ") && l.contains(" here from "))
        .collect();
    assert_eq!(brought.len(), 1, "brought here once for both hosts: {brought:?}\n{run}");
    assert_eq!(builds(bh).len(), 1, "built on the build host: {:?}", builds(bh));
    let seen = bh.ssh_ok("journalctl -o cat | grep -c lab-password-not-secret || true");
    assert_eq!(seen, "0", "the password reached the build host's journal");
    assert!(
        !run.stdout.contains("lab-password-not-secret")
            && !run.stderr.contains("lab-password-not-secret")
    );
}
