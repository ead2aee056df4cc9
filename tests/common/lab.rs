//! A set of booted targets sharing one lab directory (ssh key, known_hosts,
//! per-target overlay layers, fixture flakes). Dropping the `Lab` stops
//! every target, also while a failing test unwinds.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;

use super::claim::Claim;
use super::target::Target;
use super::{describe_failure, lab_script, require_lab_prerequisites, run, run_ok};

/// The Debian suite a target's root file system is built from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Suite {
    /// Debian 12: Nix 2.8.0, systemd 252.
    Bookworm,
    /// Debian 13: Nix 2.26, systemd 257.
    Trixie,
    /// Debian unstable: Nix 2.34, systemd 262, OpenSSH 10.6.
    Sid,
}

impl Suite {
    pub fn as_str(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
            Suite::Sid => "sid",
        }
    }

    /// Every suite the lab runs, oldest first.
    pub const ALL: [Suite; 3] = [Suite::Bookworm, Suite::Trixie, Suite::Sid];

    /// What `nix --version` says on this suite, up to the minor version.
    pub fn nix_version_prefix(self) -> &'static str {
        match self {
            Suite::Bookworm => "nix (Nix) 2.8.",
            Suite::Trixie => "nix (Nix) 2.26.",
            Suite::Sid => "nix (Nix) 2.34.",
        }
    }

    /// `VERSION_CODENAME` of its /etc/os-release (sid names the next release).
    pub fn codename(self) -> &'static str {
        match self {
            Suite::Sid => "forky",
            other => other.as_str(),
        }
    }
}

/// Booted targets and the directory they share.
pub struct Lab {
    pub targets: Vec<Target>,
    dir: PathBuf,
    flakes: AtomicUsize,
}

impl Lab {
    /// Boots `n` targets of one suite, in parallel.
    pub fn boot(n: usize, suite: Suite) -> Lab {
        Lab::boot_suites(&vec![suite; n])
    }

    /// Boots one target per entry of `suites`, in parallel; all are
    /// `running` (systemd) and answer ssh when this returns.
    pub fn boot_suites(suites: &[Suite]) -> Lab {
        require_lab_prerequisites();
        let dir = tempfile::Builder::new()
            .prefix("deploy-flake-lab-")
            .tempdir()
            .expect("cannot create the lab directory")
            .keep();
        let mut keygen = Command::new(lab_script());
        keygen.arg("keygen").arg(&dir);
        run_ok(&mut keygen);

        let mut lab = Lab { targets: Vec::new(), dir, flakes: AtomicUsize::new(0) };
        let booted: Vec<Result<Target, String>> = thread::scope(|s| {
            let handles: Vec<_> = suites
                .iter()
                .map(|&suite| {
                    let dir = lab.dir.clone();
                    s.spawn(move || boot_one(&dir, suite))
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("boot thread panicked")).collect()
        });
        let mut errors = Vec::new();
        for b in booted {
            match b {
                Ok(t) => lab.targets.push(t),
                Err(e) => errors.push(e),
            }
        }
        // Dropping `lab` here stops the targets that did boot.
        assert!(errors.is_empty(), "lab boot failed:\n{}", errors.join("\n\n"));
        lab
    }

    /// The lab's directory (key, known_hosts, targets' layers, flakes).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The private key every target accepts for root, deploy and pwuser.
    pub fn key_path(&self) -> PathBuf {
        self.dir.join("id_ed25519")
    }

    /// known_hosts with the host key of every target of this lab.
    pub fn known_hosts_path(&self) -> PathBuf {
        self.dir.join("known_hosts")
    }

    /// ssh options for this lab: key, known_hosts, strict checking, batch mode.
    pub fn ssh_opts(&self) -> Vec<String> {
        vec![
            "-i".into(),
            self.key_path().display().to_string(),
            "-o".into(),
            format!("UserKnownHostsFile={}", self.known_hosts_path().display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
            "-o".into(),
            "BatchMode=yes".into(),
            "-o".into(),
            "ConnectTimeout=5".into(),
            "-o".into(),
            "ServerAliveInterval=5".into(),
            "-o".into(),
            "LogLevel=ERROR".into(),
        ]
    }

    /// `NIX_SSHOPTS` for `nix copy`/`nix flake archive` to a lab target.
    pub fn nix_sshopts(&self) -> String {
        self.ssh_opts().join(" ")
    }

    /// The sshOpts that fixture hosts get (key and known_hosts), as a Nix
    /// list literal.
    pub fn ssh_opts_nix(&self) -> String {
        let opts = [
            "-i".to_string(),
            self.key_path().display().to_string(),
            "-o".to_string(),
            format!("UserKnownHostsFile={}", self.known_hosts_path().display()),
        ];
        let items: Vec<String> = opts.iter().map(|o| super::nix_string(o)).collect();
        format!("[ {} ]", items.join(" "))
    }

    /// A direct link between two targets' network namespaces (`lab.sh
    /// link`): each reaches the other's address over it.
    pub fn link(&self, a: &Target, b: &Target) {
        let mut cmd = Command::new(lab_script());
        cmd.arg("link").arg(&a.name).arg(&b.name).arg(&self.dir);
        run_ok(&mut cmd);
    }

    /// A fresh copy of the fixture flake (tests/fixtures/lab + the repo's
    /// lib/) whose hosts.nix has one host per `(attribute, target,
    /// configuration)`, reached as root with this lab's key and known_hosts.
    pub fn fixture_flake(&self, hosts: &[(&str, &Target, &str)]) -> PathBuf {
        let mut nix = String::from("{\n");
        for (attr, target, configuration) in hosts {
            nix.push_str(&format!(
                "  {} = {{ hostname = {}; configuration = {}; sshOpts = {}; }};\n",
                super::nix_string(attr),
                super::nix_string(&target.address),
                super::nix_string(configuration),
                self.ssh_opts_nix()
            ));
        }
        nix.push_str("}\n");
        self.fixture_flake_raw(&nix)
    }

    /// Like `fixture_flake`, with hosts.nix written verbatim (for tags,
    /// sshUser, timeouts...; `ssh_opts_nix()` gives the sshOpts).
    pub fn fixture_flake_raw(&self, hosts_nix: &str) -> PathBuf {
        let n = self.flakes.fetch_add(1, Ordering::SeqCst);
        let dir = self.dir.join(format!("flake-{n}"));
        super::fixture::write_fixture(&dir, hosts_nix);
        dir
    }
}

fn boot_one(dir: &Path, suite: Suite) -> Result<Target, String> {
    let claim = Claim::take();
    let name = format!("dft-{}-{}", std::process::id(), claim.idx);
    let mut cmd = Command::new(lab_script());
    cmd.arg("boot").arg(&name).arg(claim.idx.to_string()).arg(suite.as_str()).arg(dir);
    let out = run(&mut cmd);
    let target = Target::new(name, claim, suite, dir.to_path_buf());
    if out.status.success() {
        Ok(target)
    } else {
        let msg = describe_failure(&cmd, &out);
        drop(target); // stops whatever half-booted
        Err(msg)
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let targets = std::mem::take(&mut self.targets);
        thread::scope(|s| {
            for t in targets {
                s.spawn(move || drop(t));
            }
        });
        // Only delete the directory when no overlay is mounted below it.
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let prefix = format!(" {}/", self.dir.display());
        if mounts.lines().any(|l| l.contains(&prefix)) {
            eprintln!("lab: keeping {} (something is still mounted below it)", self.dir.display());
        } else if std::env::var_os("DEPLOY_FLAKE_LAB_KEEP_DIR").is_none() {
            let _ = fs::remove_dir_all(&self.dir);
        }
    }
}
