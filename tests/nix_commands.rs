//! Every Nix command the tool issues, on every Nix the lab has, on both
//! ends: a deploying machine and a target of one suite (bookworm: Nix 2.8,
//! this machine; trixie: Nix 2.26 and sid: Nix 2.34, deploying from a
//! container of the suite, `lab.sh deployer`). `nix`, `nix-store`,
//! `nix-env` and `nix-daemon` are recorded on both (tests/fixtures/
//! nix-recorder.sh, in front of the real ones): the test fails on any line
//! a command printed that says it is deprecated, will become an error or
//! will be removed, and shows the command and the line. The runs cover
//! what the tool does with Nix: a deploy built on the target (eval,
//! archive, path-info, metadata, export, validity, import, build, the
//! profile), one built here (build, copy, the remote daemon, a GC root),
//! `diff`, `rollback`, `status` and `--dry-run`; the test checks that the
//! commands of each were seen, and that the target was asked its Nix
//! version once (with the first lock; later locks find it remembered).
//!
//! Runs as root, in the lab: `cargo test --test nix_commands`.

mod common;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use common::{describe_failure, nix_string, run, Deployer, Lab, Suite, Target};

/// Declares one test per suite for each named function taking a `Suite`.
macro_rules! on_every_suite {
    ($($name:ident),* $(,)?) => {
        mod bookworm {
            $( #[test] fn $name() { super::$name(super::Suite::Bookworm) } )*
        }
        mod trixie {
            $( #[test] fn $name() { super::$name(super::Suite::Trixie) } )*
        }
        mod sid {
            $( #[test] fn $name() { super::$name(super::Suite::Sid) } )*
        }
    };
}

on_every_suite!(no_nix_command_is_deprecated);

/// The Nix commands the recorder stands in front of.
const RECORDED: [&str; 4] = ["nix", "nix-store", "nix-env", "nix-daemon"];
/// Where a target's recorder writes.
const TARGET_LOG: &str = "/var/log/nix-recorder";

/// The recorder's text, writing to `log`.
fn recorder(log: &str) -> String {
    let text = fs::read_to_string(common::repo_root().join("tests/fixtures/nix-recorder.sh"))
        .expect("read tests/fixtures/nix-recorder.sh");
    assert!(text.contains("log=@LOG@"), "the recorder has no log=@LOG@ line");
    text.replace("log=@LOG@", &format!("log={}", shell_escape::unix::escape(log.into())))
}

/// The recorder in front of the deploying machine's Nix: a directory to
/// put first on its PATH (inside the lab's directory, which a deploying
/// container sees at the same path).
fn record_here(lab: &Lab) -> (PathBuf, PathBuf) {
    let (bin, log) = (lab.dir().join("recorder/bin"), lab.dir().join("recorder/log"));
    fs::create_dir_all(&bin).unwrap();
    let text = recorder(&log.display().to_string());
    for name in RECORDED {
        let path = bin.join(name);
        fs::write(&path, &text).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).unwrap();
    }
    (bin, log)
}

/// The recorder in front of the target's Nix, in /usr/local/bin: first on
/// the PATH of an ssh login, of sudo and of the agent.
fn record_on(t: &Target) {
    let text = shell_escape::unix::escape(recorder(TARGET_LOG).into()).into_owned();
    for name in RECORDED {
        let file = format!("/usr/local/bin/{name}");
        t.ssh_ok(&format!("printf '%s' {text} > {file} && chmod 0755 {file}"));
    }
    let which = t.ssh_ok("command -v nix");
    assert_eq!(which, "/usr/local/bin/nix", "{}: the recorder is not first on PATH", t.name);
}

fn read(path: &Path) -> String {
    fs::read_to_string(path).unwrap_or_default()
}

/// Runs the tool on `deployer`; panics unless it exits 0.
fn tool(lab: &Lab, deployer: Deployer, path: &str, args: &[&str]) {
    let env = [("PATH", path.to_string())];
    let mut cmd = deployer.tool(lab.dir(), args, &env);
    let out = run(&mut cmd);
    assert!(out.status.success(), "{}", describe_failure(&cmd, &out));
}

/// Which of `wanted` (parts of a recorded call) no recorded call shows.
fn unseen<'a>(commands: &str, wanted: &[&'a str]) -> Vec<&'a str> {
    wanted.iter().copied().filter(|w| !commands.lines().any(|l| l.contains(w))).collect()
}

fn no_nix_command_is_deprecated(suite: Suite) {
    let lab = Lab::boot(1, suite);
    let t = &lab.targets[0];
    let deployer = match suite {
        Suite::Bookworm => Deployer::Here,
        other => Deployer::On(other),
    };
    let version = deployer.nix_version(lab.dir());
    assert!(version.starts_with(suite.nix_version_prefix()), "{deployer:?} runs {version}");
    let (bin, log) = record_here(&lab);
    record_on(t);
    let path = match deployer {
        Deployer::Here => format!("{}:{}", bin.display(), std::env::var("PATH").unwrap()),
        Deployer::On(_) => format!(
            "{}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            bin.display()
        ),
    };
    let host = |configuration: &str, extra: &str| {
        format!(
            "{{ web1 = {{ hostname = {}; configuration = {}; sshOpts = {}; {extra} }}; }}\n",
            nix_string(&t.address),
            nix_string(configuration),
            lab.ssh_opts_nix()
        )
    };
    let on_target = lab.fixture_flake_raw(&host("healthy-v1", ""));
    let built_here = lab.fixture_flake_raw(&host("healthy-v2", "buildOn = \"local\";"));
    let flake = |f: &PathBuf| f.display().to_string();
    tool(&lab, deployer, &path, &["--json", "--flake", &flake(&on_target), "--all"]);
    tool(&lab, deployer, &path, &["--json", "--flake", &flake(&built_here), "--all"]);
    tool(&lab, deployer, &path, &["diff", "--json", "--flake", &flake(&on_target), "--all"]);
    tool(&lab, deployer, &path, &["rollback", "--json", "--flake", &flake(&on_target), "--all"]);
    tool(&lab, deployer, &path, &["status", "--json", "--flake", &flake(&on_target), "--all"]);
    tool(&lab, deployer, &path, &["--dry-run", "--flake", &flake(&on_target), "--all"]);

    let here = read(&log.join("deprecations"));
    let there = t.ssh_ok(&format!("cat {TARGET_LOG}/deprecations 2>/dev/null || true"));
    assert!(
        here.is_empty() && there.is_empty(),
        "deprecated Nix commands ({version} on both ends)\n--- on the deploying machine\n{here}\n--- on {}\n{there}",
        t.name
    );
    let (here, there) =
        (read(&log.join("commands")), t.ssh_ok(&format!("cat {TARGET_LOG}/commands")));
    let local = [
        " eval --json",
        " flake archive --json",
        " path-info --recursive",
        " flake metadata --json",
        "nix-store --export",
        " build --json",
        " copy --no-check-sigs",
    ];
    let remote = [
        "nix-store --check-validity",
        "nix-store --import",
        " build --json",
        "nix-store --realise",
        "nix-daemon --stdio",
        "nix-env -p /nix/var/nix/profiles/system --set",
        "nix-env -p /nix/var/nix/profiles/system --list-generations",
        " store diff-closures",
        " path-info --closure-size",
        "nix --version",
    ];
    let (missed_here, missed_there) = (unseen(&here, &local), unseen(&there, &remote));
    assert!(
        missed_here.is_empty() && missed_there.is_empty(),
        "commands not seen here: {missed_here:?}, on the target: {missed_there:?}\n--- here\n{here}\n--- there\n{there}"
    );
    // The target's version came with the first lock and was remembered.
    let asked = there.lines().filter(|l| *l == "nix --version").count();
    assert_eq!(asked, 1, "the target was asked its Nix version {asked} times:\n{there}");
    eprintln!(
        "{suite:?}: {} Nix calls here, {} on the target, none deprecated",
        here.lines().count(),
        there.lines().count()
    );
}
