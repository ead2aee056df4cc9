//! Reading what `nix eval` prints of `deployFlake` in one pass: the resolved
//! document (schema version 1: every host's record in full), or lib's
//! compact view of it (`deployFlake.compact`: the resolved `defaults` once,
//! then per host only what it sets itself; `hostname` and `configuration`
//! default to the host's attribute name).
//!
//! Anything this pass does not read (a wrong type, key or version) is left
//! to the generic reading in `inventory.rs`, which words every fault; the
//! compact view goes there expanded into the resolved document
//! ([`expand_compact`]), so a fault reads the same in either form.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::{BuildOn, CopyFrom, HealthCheck, HostSpec, KeySpec, Timeouts};
use crate::fleet::Settings;
use crate::rules;

/// The options that default to the host's attribute name.
const NAMED: [&str; 2] = ["hostname", "configuration"];

/// A document read in one pass: its version, its hosts, the first host
/// that breaks the rules (reported only once the version is known), and
/// its rollout (checked after the hosts).
pub(super) struct Document {
    pub schema_version: u32,
    pub hosts: BTreeMap<String, HostSpec>,
    pub first_fault: Option<String>,
    pub rollout: Option<Settings>,
}

#[derive(Deserialize)]
#[serde(field_identifier, rename_all = "camelCase")]
enum Key {
    Defaults,
    Hosts,
    Rollout,
    SchemaVersion,
}

/// The compact view's `defaults` as a record (its `hostname` and
/// `configuration` empty), and whether its values passed their rules:
/// then what a host takes from them is not checked again.
pub(super) struct Defaults {
    record: HostSpec,
    valid: bool,
}

impl<'de> Deserialize<'de> for Defaults {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let mut values = Map::deserialize(d)?;
        for k in NAMED {
            if values.insert(k.into(), Value::String(String::new())).is_some() {
                return Err(de::Error::custom(format!("defaults set {k}")));
            }
        }
        let record = HostSpec::deserialize(Value::Object(values)).map_err(de::Error::custom)?;
        let valid = rules::check_named_spec("defaults", &record, &|k| NAMED.contains(&k)).is_ok();
        Ok(Defaults { record, valid })
    }
}

/// What a host of the compact view sets itself. A key that is there has a
/// value (`null` is a value only for `selfCheck`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct Own {
    #[serde(default, deserialize_with = "present")]
    hostname: Option<String>,
    #[serde(default, deserialize_with = "present")]
    ssh_user: Option<String>,
    #[serde(default, deserialize_with = "present")]
    ssh_port: Option<u16>,
    #[serde(default, deserialize_with = "present")]
    ssh_opts: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    configuration: Option<String>,
    #[serde(default, deserialize_with = "present")]
    tags: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    build_on: Option<BuildOn>,
    #[serde(default, deserialize_with = "present")]
    self_check: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    sudo: Option<String>,
    #[serde(default, deserialize_with = "present")]
    magic_rollback: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    substitute_on_target: Option<bool>,
    #[serde(default, deserialize_with = "present")]
    health_checks: Option<Vec<HealthCheck>>,
    #[serde(default, deserialize_with = "present")]
    keys: Option<BTreeMap<String, KeySpec>>,
    #[serde(default, deserialize_with = "present")]
    timeouts: Option<Timeouts>,
    #[serde(default, deserialize_with = "present")]
    build_host: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    build_host_ssh_opts: Option<Vec<String>>,
    #[serde(default, deserialize_with = "present")]
    build_host_capacity: Option<u32>,
    #[serde(default, deserialize_with = "present")]
    copy_from: Option<CopyFrom>,
    #[serde(default, deserialize_with = "present")]
    push_to: Option<Option<String>>,
    #[serde(default, deserialize_with = "present")]
    system: Option<Option<String>>,
}

pub(super) fn present<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<T>, D::Error> {
    T::deserialize(d).map(Some)
}

impl Own {
    /// Does the host set option `key` itself, rather than take it from
    /// the defaults? (`hostname` and `configuration`, and an option this
    /// does not know of, count as set: their values are checked.)
    fn sets(&self, key: &str) -> bool {
        match key {
            "sshUser" => self.ssh_user.is_some(),
            "sshPort" => self.ssh_port.is_some(),
            "sshOpts" => self.ssh_opts.is_some(),
            "tags" => self.tags.is_some(),
            "buildOn" => self.build_on.is_some(),
            "selfCheck" => self.self_check.is_some(),
            "sudo" => self.sudo.is_some(),
            "magicRollback" => self.magic_rollback.is_some(),
            "healthChecks" => self.health_checks.is_some(),
            "timeouts" => self.timeouts.is_some(),
            "keys" => self.keys.is_some(),
            "substituteOnTarget" => self.substitute_on_target.is_some(),
            "buildHost" => self.build_host.is_some(),
            "buildHostSshOpts" => self.build_host_ssh_opts.is_some(),
            "buildHostCapacity" => self.build_host_capacity.is_some(),
            "copyFrom" => self.copy_from.is_some(),
            "pushTo" => self.push_to.is_some(),
            "system" => self.system.is_some(),
            _ => true,
        }
    }

    /// The host's record: what it sets, else its name or the default.
    /// What it sets is moved out; [`Own::sets`] still tells what that was.
    fn resolve(&mut self, name: &str, d: &HostSpec) -> HostSpec {
        fn take<T: Default>(v: &mut Option<T>) -> Option<T> {
            v.as_mut().map(std::mem::take)
        }
        HostSpec {
            hostname: take(&mut self.hostname).unwrap_or_else(|| name.to_string()),
            ssh_user: take(&mut self.ssh_user).unwrap_or_else(|| d.ssh_user.clone()),
            ssh_port: self.ssh_port.unwrap_or(d.ssh_port),
            ssh_opts: take(&mut self.ssh_opts).unwrap_or_else(|| d.ssh_opts.clone()),
            configuration: take(&mut self.configuration).unwrap_or_else(|| name.to_string()),
            tags: take(&mut self.tags).unwrap_or_else(|| d.tags.clone()),
            build_on: self.build_on.unwrap_or(d.build_on),
            self_check: take(&mut self.self_check).unwrap_or_else(|| d.self_check.clone()),
            sudo: take(&mut self.sudo).unwrap_or_else(|| d.sudo.clone()),
            magic_rollback: self.magic_rollback.unwrap_or(d.magic_rollback),
            substitute_on_target: self.substitute_on_target.unwrap_or(d.substitute_on_target),
            health_checks: take(&mut self.health_checks).unwrap_or_else(|| d.health_checks.clone()),
            keys: take(&mut self.keys).unwrap_or_else(|| d.keys.clone()),
            timeouts: self.timeouts.unwrap_or(d.timeouts),
            build_host: take(&mut self.build_host).unwrap_or_else(|| d.build_host.clone()),
            build_host_ssh_opts: take(&mut self.build_host_ssh_opts)
                .unwrap_or_else(|| d.build_host_ssh_opts.clone()),
            build_host_capacity: self.build_host_capacity.unwrap_or(d.build_host_capacity),
            copy_from: self.copy_from.unwrap_or(d.copy_from),
            push_to: take(&mut self.push_to).unwrap_or_else(|| d.push_to.clone()),
            system: take(&mut self.system).unwrap_or_else(|| d.system.clone()),
        }
    }
}

impl<'de> Deserialize<'de> for Document {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(DocumentVisitor)
    }
}

struct DocumentVisitor;

impl<'de> Visitor<'de> for DocumentVisitor {
    type Value = Document;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a deployFlake document")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Document, A::Error> {
        let (mut defaults, mut hosts, mut rollout, mut version) = (None, None, None, None);
        while let Some(key) = map.next_key::<Key>()? {
            match key {
                // Nix prints keys sorted: `defaults` comes before `hosts`.
                Key::Defaults if defaults.is_none() && hosts.is_none() => {
                    defaults = Some(map.next_value()?);
                }
                Key::Hosts if hosts.is_none() => {
                    hosts = Some(map.next_value_seed(HostsSeed { defaults: defaults.as_ref() })?);
                }
                Key::Rollout if rollout.is_none() => rollout = Some(map.next_value()?),
                Key::SchemaVersion if version.is_none() => version = Some(map.next_value()?),
                _ => return Err(de::Error::custom("unexpected or repeated key")),
            }
        }
        let hosts: Hosts = hosts.ok_or_else(|| de::Error::missing_field("hosts"))?;
        let schema_version = version.ok_or_else(|| de::Error::missing_field("schemaVersion"))?;
        Ok(hosts.into_document(schema_version, rollout))
    }
}

/// Hosts as they are read, each checked until one breaks the rules.
#[derive(Default)]
pub(super) struct Hosts {
    map: BTreeMap<String, HostSpec>,
    first_fault: Option<String>,
}

impl Hosts {
    /// A host of the resolved document.
    fn push_record(&mut self, name: String, spec: HostSpec) {
        if self.first_fault.is_none() {
            self.first_fault = rules::check_named_spec(&name, &spec, &|_| false).err();
        }
        self.map.insert(name, spec);
    }

    /// A host of the compact view: what it sets, on top of `d`.
    pub(super) fn push_own(&mut self, name: String, mut own: Own, d: &Defaults) {
        let spec = own.resolve(&name, &d.record);
        if self.first_fault.is_none() {
            // What the host takes from valid defaults is valid.
            let skip = |k: &str| d.valid && !own.sets(k);
            self.first_fault = rules::check_named_spec(&name, &spec, &skip).err();
        }
        self.map.insert(name, spec);
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.map.len()
    }

    pub(super) fn into_document(self, schema_version: u32, rollout: Option<Settings>) -> Document {
        Document { schema_version, hosts: self.map, first_fault: self.first_fault, rollout }
    }
}

/// `hosts`: full records, or (after `defaults`) what each host sets.
struct HostsSeed<'a> {
    defaults: Option<&'a Defaults>,
}

impl<'de> DeserializeSeed<'de> for HostsSeed<'_> {
    type Value = Hosts;

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Hosts, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for HostsSeed<'_> {
    type Value = Hosts;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an attribute set of hosts")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Hosts, A::Error> {
        let mut hosts = Hosts::default();
        while let Some(name) = map.next_key::<String>()? {
            match self.defaults {
                None => hosts.push_record(name, map.next_value()?),
                Some(d) => hosts.push_own(name, map.next_value()?, d),
            }
        }
        Ok(hosts)
    }
}

/// The compact view as the resolved document it stands for: `defaults`
/// merged into every host that is an attribute set (one that is not is
/// left for the checks to name). `Err`: what is malformed, and how.
pub(super) fn expand_compact(doc: &mut Map<String, Value>) -> Result<(), (String, String)> {
    let defaults = match doc.remove("defaults") {
        Some(Value::Object(d)) => d,
        _ => return Err((".compact.defaults".into(), "expected an attribute set".into())),
    };
    if let Some(k) = NAMED.into_iter().find(|k| defaults.contains_key(*k)) {
        return Err((format!(".compact.defaults.{k}"), "unknown field".into()));
    }
    if let Some(Value::Object(hosts)) = doc.get_mut("hosts") {
        for (name, host) in hosts.iter_mut() {
            let Value::Object(record) = host else { continue };
            for k in NAMED {
                record.entry(k).or_insert_with(|| Value::String(name.clone()));
            }
            for (k, v) in &defaults {
                record.entry(k.as_str()).or_insert_with(|| v.clone());
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every option a record has, as a host's own value: a new option must
    /// be added to [`Own`] too.
    #[test]
    fn a_host_may_set_every_option() {
        let record = serde_json::to_value(HostSpec::with_defaults("web1")).unwrap();
        let mut own = Own::deserialize(&record).unwrap();
        let keys: Vec<&String> = record.as_object().unwrap().keys().collect();
        assert_eq!(keys, rules::rules().option_names());
        for k in rules::rules().option_names() {
            assert!(own.sets(k), "{k}");
        }
        assert_eq!(
            own.resolve("other", &HostSpec::with_defaults("x")),
            HostSpec::with_defaults("web1")
        );
        // Moved out, and still known as set.
        for k in rules::rules().option_names() {
            assert!(own.sets(k), "{k}");
        }
    }

    /// What a host does not set comes from the defaults (or is its name),
    /// and is known as such, so that its check is not repeated.
    #[test]
    fn a_host_that_sets_nothing_takes_the_defaults() {
        let mut none = Own::deserialize(serde_json::json!({})).unwrap();
        for k in rules::rules().option_names() {
            assert_eq!(none.sets(k), NAMED.contains(&k), "{k}");
        }
        let mut d = HostSpec::with_defaults("");
        d.ssh_user = "deploy".into();
        d.self_check = Some("bin/check".into());
        let spec = none.resolve("web1", &d);
        assert_eq!((spec.hostname.as_str(), spec.configuration.as_str()), ("web1", "web1"));
        assert_eq!(
            (spec.ssh_user.as_str(), spec.self_check.as_deref()),
            ("deploy", Some("bin/check"))
        );
        let mut null = Own::deserialize(serde_json::json!({ "selfCheck": null })).unwrap();
        assert_eq!(null.resolve("web1", &d).self_check, None);
    }
}
