//! One booted lab target: a container with systemd, a Nix daemon and sshd
//! at 10.77.IDX.2, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use shell_escape::unix::escape;

use super::claim::Claim;
use super::lab::Suite;
use super::{describe_failure, host_nix, lab_script, run, run_ok};

/// Bound on every ssh command the harness runs (seconds).
const SSH_TIMEOUT: &str = "300";

#[derive(Debug)]
pub struct Target {
    /// Container, network namespace and host name (`dft-<pid>-<idx>`).
    pub name: String,
    /// `10.77.<idx>.2`
    pub address: String,
    /// `fd77:0:0:<idx>::2`
    pub address6: String,
    pub idx: u8,
    pub suite: Suite,
    lab_dir: PathBuf,
    claim: Claim,
}

impl Target {
    pub(super) fn new(name: String, claim: Claim, suite: Suite, lab_dir: PathBuf) -> Target {
        Target {
            address: format!("10.77.{}.2", claim.idx),
            address6: format!("fd77:0:0:{}::2", claim.idx),
            idx: claim.idx,
            name,
            suite,
            lab_dir,
            claim,
        }
    }

    /// `root@10.77.IDX.2`
    pub fn destination(&self) -> String {
        format!("root@{}", self.address)
    }

    /// `ssh-ng://root@10.77.IDX.2` (use with `NIX_SSHOPTS`, see `Lab::nix_sshopts`).
    pub fn store_uri(&self) -> String {
        format!("ssh-ng://root@{}", self.address)
    }

    fn key_path(&self) -> PathBuf {
        self.lab_dir.join("id_ed25519")
    }

    fn known_hosts_path(&self) -> PathBuf {
        self.lab_dir.join("known_hosts")
    }

    /// The ssh command for `user` with the lab's key and known_hosts,
    /// strict host key checking and batch mode, bounded by a timeout.
    pub fn ssh_command(&self, user: &str) -> Command {
        let mut cmd = Command::new("timeout");
        cmd.args(["--kill-after=5", SSH_TIMEOUT, "ssh", "-i"])
            .arg(self.key_path())
            .arg("-o")
            .arg(format!("UserKnownHostsFile={}", self.known_hosts_path().display()))
            .args([
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "BatchMode=yes",
                "-o",
                "ConnectTimeout=5",
                "-o",
                "ServerAliveInterval=5",
                "-o",
                "LogLevel=ERROR",
            ])
            .arg(format!("{user}@{}", self.address));
        cmd
    }

    /// Runs the shell command line `cmd` as root on the target.
    pub fn ssh(&self, cmd: &str) -> Output {
        self.ssh_as("root", cmd)
    }

    /// Runs the shell command line `cmd` as `user` on the target.
    pub fn ssh_as(&self, user: &str, cmd: &str) -> Output {
        let mut c = self.ssh_command(user);
        c.arg("--").arg(cmd);
        run(&mut c)
    }

    /// Runs `cmd` as root; panics (with the target, command and output)
    /// unless it succeeded; returns stdout, trimmed.
    pub fn ssh_ok(&self, cmd: &str) -> String {
        let mut c = self.ssh_command("root");
        c.arg("--").arg(cmd);
        let out = run(&mut c);
        if !out.status.success() {
            panic!("{} ({}): {}", self.name, self.address, describe_failure(&c, &out));
        }
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// Where /run/current-system points (resolved), if anywhere.
    pub fn current_system(&self) -> Option<String> {
        non_empty(self.ssh_ok("readlink -e /run/current-system || true"))
    }

    /// Where the system profile (the next boot) points (resolved), if anywhere.
    pub fn boot_profile(&self) -> Option<String> {
        non_empty(self.ssh_ok("readlink -e /nix/var/nix/profiles/system || true"))
    }

    /// `systemctl is-system-running --wait` (bounded): running, degraded, ...
    pub fn system_state(&self) -> String {
        let out = self.ssh("timeout 60 systemctl is-system-running --wait");
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    /// The kernel's boot id as seen inside (changes on every reboot).
    pub fn boot_id(&self) -> String {
        self.ssh_ok("cat /proc/sys/kernel/random/boot_id")
    }

    /// `systemctl reboot` inside; returns once a new boot is `running`.
    pub fn reboot(&self) {
        let mut cmd = Command::new(lab_script());
        cmd.arg("reboot").arg(&self.name).arg(&self.lab_dir);
        run_ok(&mut cmd);
    }

    /// Where /run/booted-system points (resolved), if anywhere.
    pub fn booted_system(&self) -> Option<String> {
        non_empty(self.ssh_ok("readlink -e /run/booted-system || true"))
    }

    /// The target's next reboot powers it off instead: it never comes
    /// back (lab.sh's launcher honours /etc/lab-no-return).
    pub fn stay_down_at_next_reboot(&self) {
        self.ssh_ok("touch /etc/lab-no-return");
    }

    /// What the target's launcher logged (its boots, nspawn's exits) and
    /// what the target printed on its console.
    pub fn console_log(&self) -> String {
        let path = self.lab_dir.join("targets").join(&self.name).join("console.log");
        // (It holds what the target printed on its console: any bytes.)
        String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
    }

    /// Makes the target `degraded`: a transient unit that failed.
    pub fn make_degraded(&self) {
        let _ = self.ssh("systemd-run --unit=lab-broken /bin/false");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        while self.system_state() != "degraded" {
            assert!(std::time::Instant::now() < deadline, "{}: did not become degraded", self.name);
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }

    /// Copies `flake` (a local directory) to the target's store with
    /// `nix flake archive`; returns the store path of its source.
    pub fn archive(&self, flake: &Path, nix_sshopts: &str) -> String {
        let mut cmd = host_nix();
        cmd.args(["flake", "archive", "--json", "--to", &self.store_uri()])
            .arg(format!("path:{}", flake.display()))
            .env("NIX_SSHOPTS", nix_sshopts);
        let out = run_ok(&mut cmd);
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("nix flake archive --json printed {out:?}: {e}"));
        v["path"].as_str().expect("no path in nix flake archive --json").to_string()
    }

    /// Builds `nixosConfigurations.<configuration>` of the flake source at
    /// `source` (a store path on the target) ON the target; returns the
    /// toplevel's store path.
    pub fn build(&self, source: &str, configuration: &str) -> String {
        let installable = format!(
            "path:{source}#nixosConfigurations.\"{configuration}\".config.system.build.toplevel"
        );
        let out =
            self.ssh_ok(&format!("nix build --json --no-link {}", escape(installable.into())));
        let v: serde_json::Value = serde_json::from_str(&out)
            .unwrap_or_else(|e| panic!("nix build --json printed {out:?}: {e}"));
        v[0]["outputs"]["out"].as_str().expect("no out path in nix build --json").to_string()
    }

    /// Runs `<toplevel>/bin/switch-to-configuration <action>` in a transient
    /// unit (as a deployer does) and returns its output.
    pub fn switch(&self, toplevel: &str, action: &str) -> Output {
        self.ssh(&format!(
            "systemd-run --collect --quiet --wait --pipe {}/bin/switch-to-configuration {}",
            escape(toplevel.into()),
            escape(action.into())
        ))
    }

    /// Puts `configuration` of `flake` on the target the way a finished
    /// deploy would leave it (built here on the target, profile set,
    /// `switch`); returns the toplevel. For setting up a starting state.
    pub fn install(&self, flake: &Path, nix_sshopts: &str, configuration: &str) -> String {
        let source = self.archive(flake, nix_sshopts);
        let top = self.build(&source, configuration);
        self.ssh_ok(&format!(
            "nix-env -p /nix/var/nix/profiles/system --set {}",
            escape(top.as_str().into())
        ));
        let out = self.switch(&top, "switch");
        assert!(
            out.status.success(),
            "{}: switch-to-configuration switch of {configuration} failed: {}\n{}",
            self.name,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        top
    }

    /// Stops the target now (also done on drop); idempotent.
    pub fn stop(&self) {
        let mut cmd = Command::new(lab_script());
        cmd.arg("stop").arg(&self.name).arg(&self.lab_dir);
        let out = run(&mut cmd);
        if !out.status.success() {
            eprintln!("lab: stopping {}: {}", self.name, describe_failure(&cmd, &out));
        }
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        self.stop();
        let _ = &self.claim; // released after the target is gone
    }
}

fn non_empty(s: String) -> Option<String> {
    if s.is_empty() {
        None
    } else {
        Some(s)
    }
}
