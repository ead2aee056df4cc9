//! What the agent answers: the health of a host, the facts a deployer
//! decides on, the verdict of `switch-to-configuration check`.

use super::{answer, answers};

/// The system state and the failed units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub state: String,
    pub failed_units: Vec<String>,
    /// The units that had failed before this run's activation.
    pub failed_before: Vec<String>,
}

impl Health {
    pub fn parse(stdout: &str) -> Health {
        Health {
            state: answer(stdout, "state").unwrap_or_else(|| "unknown".into()),
            failed_units: answers(stdout, "failed").map(String::from).collect(),
            failed_before: answers(stdout, "failed-already").map(String::from).collect(),
        }
    }

    /// Failed units that had not failed before this run's activation.
    pub fn new_failures(&self) -> Vec<String> {
        let old = &self.failed_before;
        self.failed_units.iter().filter(|u| !old.contains(u)).cloned().collect()
    }

    /// Healthy after an activation: running, or degraded only by units
    /// that had failed before it (a host deployed with --skip-preflight).
    pub fn healthy_after_activation(&self) -> bool {
        let degraded_as_before = self.state == "degraded" && !self.failed_units.is_empty();
        (self.state == "running" || degraded_as_before) && self.new_failures().is_empty()
    }

    pub fn is_running(&self) -> bool {
        self.state == "running" && self.failed_units.is_empty()
    }

    pub fn describe(&self) -> String {
        if self.failed_units.is_empty() {
            format!("system is {}", self.state)
        } else {
            format!("system is {} (failed units: {})", self.state, self.failed_units.join(", "))
        }
    }
}

/// What the deployer needs to know about a target and a built system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub current: Option<String>,
    pub profile: Option<String>,
    /// The system the host booted (`/run/booted-system`).
    pub booted: Option<String>,
    /// The toplevel has bin/switch-to-configuration.
    pub switchable: bool,
    /// The self-check to run, when the toplevel has it.
    pub self_check: Option<String>,
    pub systemd: bool,
    /// The toplevel was confirmed on this host (by a run of deploy-flake).
    pub confirmed: bool,
    /// The toplevel's boot entry was written on this host.
    pub boot_written: bool,
    /// What only a reboot brings in for the toplevel / for the system the
    /// profile points at (`None`: the host does not say what it booted).
    pub reboot_new: Option<Vec<String>>,
    pub reboot_profile: Option<Vec<String>>,
    /// Switches going on now (other runs, nixos-rebuild, automatic upgrades).
    pub busy: Vec<String>,
}

impl Facts {
    pub fn parse(stdout: &str) -> Facts {
        Facts {
            current: answer(stdout, "current"),
            profile: answer(stdout, "profile"),
            booted: answer(stdout, "booted-system"),
            switchable: answers(stdout, "switchable").next().is_some(),
            self_check: answer(stdout, "selfcheck"),
            systemd: answers(stdout, "systemd").next().is_some(),
            confirmed: answers(stdout, "confirmed-here").next().is_some(),
            boot_written: answers(stdout, "boot-written").next().is_some(),
            reboot_new: reboot(stdout, "reboot-new"),
            reboot_profile: reboot(stdout, "reboot-profile"),
            busy: answers(stdout, "busy").map(String::from).collect(),
        }
    }
}

/// The parts that need a reboot; `None` when the host has no booted system.
fn reboot(stdout: &str, key: &str) -> Option<Vec<String>> {
    let booted = answer(stdout, "booted-system").is_some();
    booted.then(|| answers(stdout, key).map(String::from).collect())
}

/// What `switch-to-configuration check` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckVerdict {
    Ok,
    /// The system has no `check` action (before NixOS 24.11).
    Unsupported,
    /// Another switch holds switch-to-configuration's lock.
    Busy,
    /// The pre-switch checks or the switch inhibitors refuse a live switch.
    Refused,
    Timeout,
}

impl CheckVerdict {
    pub fn parse(stdout: &str) -> CheckVerdict {
        match answer(stdout, "check").as_deref() {
            Some("ok") => CheckVerdict::Ok,
            Some("unsupported") => CheckVerdict::Unsupported,
            Some("busy") => CheckVerdict::Busy,
            Some("timeout") => CheckVerdict::Timeout,
            _ => CheckVerdict::Refused,
        }
    }
}

/// What `status` says about a host (read-only).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HostState {
    pub current: Option<String>,
    pub profile: Option<String>,
    pub booted: Option<String>,
    pub boot_id: Option<String>,
    /// `systemctl is-system-running`.
    pub state: String,
    pub failed_units: Vec<String>,
    /// What only a reboot brings in for what it boots (`None`: unknown).
    pub needs_reboot: Option<Vec<String>>,
    /// Who holds the host lock, when someone does.
    pub lock: Option<String>,
    /// Switches going on now.
    pub busy: Vec<String>,
    /// The last deploy the host recorded (`run`, `when`, `outcome`,
    /// `system`, `by`, `flake`, `revision`, `goal`).
    pub last: std::collections::BTreeMap<String, String>,
}

impl HostState {
    pub fn parse(stdout: &str) -> HostState {
        let last = stdout
            .lines()
            .filter_map(|l| l.strip_prefix(super::ANSWER)?.strip_prefix("last-"))
            .filter_map(|kv| kv.split_once(' '))
            .map(|(k, v)| {
                // A record written before flake references lost their
                // credentials is shown without them too.
                let v =
                    if k == "flake" { crate::redact::flake_ref(v.trim()) } else { v.trim().into() };
                (k.to_string(), v)
            })
            .collect();
        HostState {
            current: answer(stdout, "current"),
            profile: answer(stdout, "profile"),
            booted: answer(stdout, "booted-system"),
            boot_id: answer(stdout, "boot-id"),
            state: answer(stdout, "state").unwrap_or_else(|| "unknown".into()),
            failed_units: answers(stdout, "failed").map(String::from).collect(),
            needs_reboot: reboot(stdout, "reboot-profile"),
            lock: answer(stdout, "lock"),
            busy: answers(stdout, "busy").map(String::from).collect(),
            last,
        }
    }
}

/// What activating a system would change on a host (read-only).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct Changes {
    /// `nix store diff-closures` lines: `name: old → new, +size`.
    pub packages: Vec<PackageChange>,
    /// Closure sizes in bytes: running, new.
    pub closure_bytes: Option<(u64, u64)>,
    /// Units that would `stop`, `restart`, `start`, `reload`.
    pub units: std::collections::BTreeMap<String, Vec<String>>,
    pub needs_reboot: Option<Vec<String>>,
}

/// One package whose versions differ.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PackageChange {
    pub name: String,
    /// `None`: added (not in the running system).
    pub old: Option<String>,
    /// `None`: removed.
    pub new: Option<String>,
    /// As Nix says it, e.g. `+12.3 KiB`.
    pub size: Option<String>,
}

impl Changes {
    /// `current`/`new`: the two systems, to tell their closure sizes apart.
    pub fn parse(stdout: &str, current: &str, new: &str) -> Changes {
        let size = |p: &str| {
            answers(stdout, "closure")
                .filter_map(|l| l.split_once(' '))
                .find(|(path, _)| *path == p)
                .and_then(|(_, n)| n.trim().parse().ok())
        };
        let mut units = std::collections::BTreeMap::new();
        for l in answers(stdout, "units") {
            if let Some((verb, list)) = l.split_once(' ') {
                let names = list.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty());
                units.entry(verb.to_string()).or_insert_with(Vec::new).extend(names);
            }
        }
        Changes {
            packages: answers(stdout, "package").filter_map(PackageChange::parse).collect(),
            closure_bytes: size(current).zip(size(new)),
            units,
            needs_reboot: reboot(stdout, "reboot-new"),
        }
    }
}

impl PackageChange {
    /// `firefox: 101.0 → 102.0, +2.3 MiB`; `∅` stands for "none".
    fn parse(line: &str) -> Option<PackageChange> {
        let (name, rest) = line.split_once(": ")?;
        let (versions, size) = match rest.split_once(", ") {
            Some((v, s)) => (v, Some(s.trim().to_string())),
            None => (rest, None),
        };
        let (old, new) = versions.split_once(" → ")?;
        let version = |v: &str| {
            let v = v.trim();
            (v != "∅").then(|| v.to_string())
        };
        Some(PackageChange {
            name: name.trim().to_string(),
            old: version(old),
            new: version(new),
            size,
        })
    }
}
