//! What the agent answers: the health of a host, the facts a deployer
//! decides on, the verdict of `switch-to-configuration check`.

use super::{answer, answers};
pub use crate::events::{Changes, HostState, LastDeploy, LastOutcome, PackageChange, SystemState};

impl SystemState {
    /// Every state but `Other`, with systemd's word.
    const WORDS: [(SystemState, &'static str); 8] = [
        (SystemState::Initializing, "initializing"),
        (SystemState::Starting, "starting"),
        (SystemState::Running, "running"),
        (SystemState::Degraded, "degraded"),
        (SystemState::Maintenance, "maintenance"),
        (SystemState::Stopping, "stopping"),
        (SystemState::Offline, "offline"),
        (SystemState::Unknown, "unknown"),
    ];

    /// systemd's word (an empty one is `unknown`).
    pub fn parse(word: &str) -> SystemState {
        let word = if word.is_empty() { "unknown" } else { word };
        let known = Self::WORDS.iter().find(|(_, w)| *w == word);
        known.map_or_else(|| SystemState::Other(word.to_string()), |(s, _)| s.clone())
    }

    /// systemd's word.
    pub fn as_str(&self) -> &str {
        match self {
            SystemState::Other(word) => word,
            s => Self::WORDS.iter().find(|(k, _)| k == s).map_or("unknown", |(_, w)| w),
        }
    }
}

/// As systemd's word (`status --json`).
impl serde::Serialize for SystemState {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl std::fmt::Display for SystemState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The system state and the failed units.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Health {
    pub state: SystemState,
    pub failed_units: Vec<String>,
    /// The units that had failed before this run's activation.
    pub failed_before: Vec<String>,
}

impl Health {
    pub fn parse(stdout: &str) -> Health {
        Health {
            state: SystemState::parse(&answer(stdout, "state").unwrap_or_default()),
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
        let degraded_as_before =
            self.state == SystemState::Degraded && !self.failed_units.is_empty();
        (self.state == SystemState::Running || degraded_as_before) && self.new_failures().is_empty()
    }

    pub fn is_running(&self) -> bool {
        self.state == SystemState::Running && self.failed_units.is_empty()
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
    /// The system the newest generation of the system profile points at
    /// (what a bootloader that keeps only the newest entries boots).
    pub newest: Option<String>,
    /// The system the bootloader's default entry boots, where the
    /// bootloader says it (systemd-boot's loader.conf and entries).
    pub default_entry: Option<String>,
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
            newest: answer(stdout, "newest-generation"),
            default_entry: answer(stdout, "default-entry"),
            booted: answer(stdout, "booted-system"),
            switchable: answers(stdout, "switchable").next().is_some(),
            self_check: answer(stdout, "self-check-script"),
            systemd: answers(stdout, "systemd").next().is_some(),
            confirmed: answers(stdout, "confirmed-here").next().is_some(),
            boot_written: answers(stdout, "boot-written").next().is_some(),
            reboot_new: reboot(stdout, "parts-new"),
            reboot_profile: reboot(stdout, "parts-profile"),
            busy: answers(stdout, "busy").map(String::from).collect(),
        }
    }
}

impl Facts {
    /// What the next boot comes up in: the bootloader's default entry
    /// where it says, else the system profile.
    pub fn boots(&self) -> Option<&str> {
        self.default_entry.as_deref().or(self.profile.as_deref())
    }

    /// Does the next boot come up in `toplevel`, whichever bootloader the
    /// host has? The profile points at it, as its newest generation, and
    /// the default entry (where the bootloader says it) is it.
    pub fn boots_into(&self, toplevel: &str) -> bool {
        let is = |p: &Option<String>| p.as_deref() == Some(toplevel);
        let newest = self.newest.is_none() || is(&self.newest);
        let entry = self.default_entry.is_none() || is(&self.default_entry);
        is(&self.profile) && newest && entry
    }
}

/// What only a reboot brings in, in the order the agent names them:
/// kernel, initrd, kernel modules (their resolved paths), init (the init
/// interface's version).
const BOOT_PARTS: [&str; 4] = ["kernel", "initrd", "kernel-modules", "init"];

/// The parts of the system the agent described under `key` (`parts-new`,
/// `parts-profile`) that differ from the booted system's (`parts-booted`):
/// what only a reboot brings in; `None` when the host has no booted system.
fn reboot(stdout: &str, key: &str) -> Option<Vec<String>> {
    let (booted, of) = (parts(answers(stdout, "parts-booted")), parts(answers(stdout, key)));
    if booted.is_empty() {
        return None;
    }
    if of.is_empty() {
        return Some(vec![]);
    }
    let differs = |p: &&&str| booted.get(**p) != of.get(**p);
    Some(BOOT_PARTS.iter().filter(differs).map(|p| p.to_string()).collect())
}

/// `<part> <value>` lines, by part (an empty value: the part is missing).
fn parts<'a>(lines: impl Iterator<Item = &'a str>) -> std::collections::BTreeMap<&'a str, &'a str> {
    lines.map(|l| l.split_once(' ').unwrap_or((l, ""))).collect()
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
    /// What `switch-to-configuration check` meant by its exit status
    /// (`None`: the agent said none) and what it said (`said`, its lines):
    /// 11 is its lock, 124 the agent's bound; any other failure refuses,
    /// unless it did not know the action at all (a system before
    /// NixOS 24.11).
    pub fn decide(exit: Option<&str>, said: &[&str]) -> CheckVerdict {
        let says = |words: &[&str]| said.iter().any(|l| words.iter().any(|w| l.contains(w)));
        match exit.map(str::parse::<i32>) {
            None => CheckVerdict::Refused,
            Some(Ok(0)) => CheckVerdict::Ok,
            Some(Ok(11)) => CheckVerdict::Busy,
            Some(Ok(124)) => CheckVerdict::Timeout,
            _ if says(&["Pre-switch checks failed", "critical components"]) => {
                CheckVerdict::Refused
            }
            _ if says(&["Usage:", "usage:", "invalid action"]) => CheckVerdict::Unsupported,
            _ => CheckVerdict::Refused,
        }
    }
}

impl LastOutcome {
    pub const ALL: [LastOutcome; 8] = [
        LastOutcome::Deployed,
        LastOutcome::Confirmed,
        LastOutcome::Unconfirmed,
        LastOutcome::RolledBack,
        LastOutcome::RollbackFailed,
        LastOutcome::Refused,
        LastOutcome::BootFailed,
        LastOutcome::Superseded,
    ];

    pub fn parse(word: &str) -> Option<LastOutcome> {
        LastOutcome::ALL.into_iter().find(|o| o.as_str() == word)
    }

    /// It left its system running, confirmed, with its boot entry or
    /// before it (`--goal test`, or its boot step not done yet).
    pub fn deployed_its_system(self) -> bool {
        matches!(self, LastOutcome::Deployed | LastOutcome::Confirmed)
    }
}

/// For people: `rolled back`, `boot failed`.
impl std::fmt::Display for LastOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_str().replace('-', " "))
    }
}

impl LastDeploy {
    pub fn get(&self, field: &str) -> Option<&str> {
        self.fields.get(field).map(String::as_str)
    }
}

impl HostState {
    pub fn parse(stdout: &str) -> HostState {
        let mut fields: std::collections::BTreeMap<String, String> = stdout
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
        let outcome = fields.remove("outcome").and_then(|w| LastOutcome::parse(&w));
        let last = LastDeploy { outcome, fields };
        HostState {
            current: answer(stdout, "current"),
            profile: answer(stdout, "profile"),
            booted: answer(stdout, "booted-system"),
            default_entry: answer(stdout, "default-entry"),
            boot_id: answer(stdout, "boot-id"),
            state: SystemState::parse(&answer(stdout, "state").unwrap_or_default()),
            failed_units: answers(stdout, "failed").map(String::from).collect(),
            needs_reboot: reboot(stdout, "parts-profile"),
            lock: answer(stdout, "lock"),
            busy: answers(stdout, "busy").map(String::from).collect(),
            last,
        }
    }
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
            needs_reboot: reboot(stdout, "parts-new"),
            unknown: [
                ("packages", answer(stdout, "packages-unknown")),
                ("units", answer(stdout, "units-unknown")),
            ]
            .into_iter()
            .filter_map(|(part, why)| Some((part.to_string(), why?)))
            .collect(),
        }
    }
}

impl PackageChange {
    /// `firefox: 101.0 → 102.0, +2.3 MiB`; `∅` stands for "none".
    fn parse(line: &str) -> Option<PackageChange> {
        let (name, rest) = line.split_once(": ")?;
        let (versions, size) = match rest.split_once(", ") {
            Some((v, s)) => (v, Some(without_colors(s.trim()))),
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

/// `text` without the terminal's color sequences (`ESC [ … m`) Nix puts
/// around sizes.
fn without_colors(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("\x1b[") {
        out.push_str(&rest[..at]);
        let after = &rest[at + 2..];
        match after.find('m') {
            Some(end) if after[..end].chars().all(|c| c.is_ascii_digit() || c == ';') => {
                rest = &after[end + 1..];
            }
            _ => {
                out.push_str("\x1b[");
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}
