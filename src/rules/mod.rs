//! The rule set of a deployFlake host: `lib/rules.json`, the file the Nix
//! library (`mkDeployFlake`, `deployChecks`) interprets too, so that what
//! `lib/` accepts the tool accepts, and a fault is worded the same on both
//! sides:
//!
//! ```text
//! deployFlake.hosts.web1.hostname: expected a host name or address (...),
//! got a string ("root@web1"): contains '@': set the user in sshUser
//! ```
//!
//! This side checks resolved records (every key present), as `deployChecks`
//! does; the defaults (`hostDefaults`, `timeoutDefaults`) come from here too.

mod check;
mod rollout;
#[cfg(test)]
mod tests;
mod wording;

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::OnceLock;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::events::Phase;
use crate::fleet::{HealthCheck, HostSpec, KeySpec, Timeouts};

use check::*;
use wording::*;

pub use check::SshOpt;
pub use rollout::check_rollout;
pub use wording::{attr_path, describe, is_plain_nix_identifier, nix_json_string, suggest};

/// `lib/rules.json`, as built into this binary.
pub const RULES_JSON: &str = include_str!("../../lib/rules.json");

/// The parsed rule set (parsed once; `lib/rules.json` is part of the build,
/// and a unit test proves it parses).
pub fn rules() -> &'static Rules {
    static RULES: OnceLock<Rules> = OnceLock::new();
    RULES.get_or_init(|| {
        serde_json::from_str(RULES_JSON)
            .unwrap_or_else(|e| panic!("lib/rules.json does not parse as a rule set: {e}"))
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Rules {
    #[serde(rename = "about")]
    _about: String,
    pub schema_version: u32,
    /// Options that only a host may set (not `defaults`).
    pub per_host_only: Vec<String>,
    /// Options a record may lack (an older lib/ wrote none): defaults apply.
    pub optional_in_records: Vec<String>,
    /// Every option's default but `hostname`, `configuration` (the
    /// attribute name) and `timeouts` (`timeout_defaults`).
    pub host_defaults: Map<String, Value>,
    /// Seconds per phase, by [`Phase::timeout_key`].
    pub timeout_defaults: BTreeMap<String, u64>,
    pub health_check_defaults: Map<String, Value>,
    /// `deployFlake.rollout`: its defaults and what each key accepts (read
    /// by [`crate::rollout`]).
    pub rollout: Value,
    types: BTreeMap<String, Rule>,
    options: BTreeMap<String, RuleRef>,
    /// What one option's value needs of another.
    #[serde(default)]
    together: Vec<Together>,
}

/// `when` = `is` needs `needs` to be set (not null).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Together {
    when: String,
    is: String,
    needs: String,
    problem: String,
}

/// A rule, or the name of one of `types`.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum RuleRef {
    Named(String),
    Inline(Box<Rule>),
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase", deny_unknown_fields)]
enum Rule {
    #[serde(rename_all = "camelCase")]
    String {
        expected: String,
        #[serde(default)]
        nullable: bool,
        /// Never shown in a message: only its kind ("a string").
        #[serde(default)]
        secret: bool,
        /// lib's fault for a Nix path literal (JSON has none).
        #[serde(default, rename = "pathLiteral")]
        _path_literal: Option<String>,
        /// Matches only values that pass every check: the fast path.
        accept: Option<Pattern>,
        #[serde(default)]
        checks: Vec<Check>,
    },
    Int {
        expected: String,
        min: i64,
        max: i64,
    },
    Bool {
        expected: String,
    },
    Enum {
        expected: String,
        values: Vec<String>,
    },
    List {
        expected: String,
        #[serde(default)]
        nullable: bool,
        #[serde(default)]
        checks: Vec<Check>,
        element: RuleRef,
    },
    Timeouts {
        expected: String,
        each: RuleRef,
    },
    HealthChecks {
        expected: String,
        check: HealthCheckRule,
    },
    Keys {
        expected: String,
        key: KeyRule,
    },
    #[serde(rename_all = "camelCase")]
    SshOpts {
        expected: String,
        option: ValueRule,
        flags: BTreeMap<String, Flag>,
        unsupported: String,
        needs_value: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct HealthCheckRule {
    expected: String,
    fields: BTreeMap<String, RuleRef>,
    exactly_one_of: ExactlyOneOf,
}

/// What each key of `keys` must be, and its defaults (which lib fills in).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct KeyRule {
    expected: String,
    #[serde(rename = "defaults")]
    _defaults: Map<String, Value>,
    fields: BTreeMap<String, RuleRef>,
    exactly_one_of: ExactlyOneOf,
    /// Two keys that write the same file (`%FILE%`, `%OTHER%`).
    clash: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExactlyOneOf {
    fields: Vec<String>,
    problem: String,
}

/// What a string of `sshOpts` (an option, or a flag's value) must be.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValueRule {
    expected: String,
    checks: Vec<Check>,
}

/// An ssh flag: with a value, without one, or refused.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Flag {
    value: Option<ValueRule>,
    refused: Option<String>,
}

/// One check of a string (or, `minLength` only, of a list).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Check {
    /// The whole value must match.
    require: Option<Pattern>,
    /// The whole value must not match.
    forbid: Option<Pattern>,
    min_length: Option<usize>,
    problem: String,
}

/// A whole-string regex, as Nix's `builtins.match` reads it: over bytes
/// (`(?-u)`), so that a class such as `[^[:cntrl:]]` means what it means to
/// Nix, whatever the text's characters. Compiled on first use: a run needs
/// a few of them.
#[derive(Debug)]
struct Pattern {
    source: String,
    regex: OnceLock<regex::bytes::Regex>,
}

impl<'de> Deserialize<'de> for Pattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Pattern { source: String::deserialize(d)?, regex: OnceLock::new() })
    }
}

impl Pattern {
    fn regex(&self) -> &regex::bytes::Regex {
        self.regex.get_or_init(|| {
            regex::bytes::Regex::new(&format!("(?-u)^(?:{})$", self.source)).unwrap_or_else(|e| {
                panic!("lib/rules.json: regex {:?} does not compile: {e}", self.source)
            })
        })
    }

    fn matches(&self, s: &str) -> bool {
        self.regex().is_match(s.as_bytes())
    }
}

/// What a check looks at.
#[derive(Clone, Copy)]
enum Subject<'a> {
    Str(&'a str),
    List(usize),
}

impl Check {
    fn passes(&self, v: Subject) -> bool {
        match v {
            Subject::Str(s) => {
                self.require.as_ref().map_or(true, |p| p.matches(s))
                    && self.forbid.as_ref().map_or(true, |p| !p.matches(s))
                    && self.min_length.map_or(true, |n| s.len() >= n)
            }
            Subject::List(len) => self.min_length.map_or(true, |n| len >= n),
        }
    }
}

/// The problem of the first check `v` fails.
fn first_failing<'r>(checks: &'r [Check], v: Subject) -> Option<&'r str> {
    checks.iter().find(|c| !c.passes(v)).map(|c| c.problem.as_str())
}

// ---------------------------------------------------------------------------
// The API

/// Checks a resolved host record as JSON (one `deployFlake.hosts` entry,
/// named by `path`, e.g. `deployFlake.hosts.web1`). The error is its first
/// fault, in lib's words.
pub fn check_host(path: &str, host: &Value) -> Result<(), String> {
    rules().check_host(&Path::Root(path), View::Json(host), &|_| false)
}

/// Checks a host record serde has read (its values; its shape is right).
/// The error is worded exactly as [`check_host`] words it for the JSON.
pub fn check_spec(path: &str, spec: &HostSpec) -> Result<(), String> {
    rules().check_host(&Path::Root(path), View::Host(spec), &|_| false)
}

/// Checks host `name` of `deployFlake.hosts` as [`check_spec`] does, but
/// not the values of the options `skip` names (values known to be valid).
/// The path is written out only for a fault.
pub fn check_named_spec(
    name: &str,
    spec: &HostSpec,
    skip: &dyn Fn(&str) -> bool,
) -> Result<(), String> {
    let hosts = Path::Root("deployFlake.hosts");
    rules().check_host(&Path::Key(&hosts, name), View::Host(spec), skip)
}

/// Why `value` cannot be the string option `option` (`hostname`,
/// `sshUser`, `configuration`, `selfCheck`, ...): the problem of its first
/// failing check, or `None`. For values from the command line.
///
/// Panics when `option` is not a string option of `lib/rules.json`.
pub fn string_problem(option: &str, value: &str) -> Option<&'static str> {
    match rules().option(option) {
        Rule::String { accept, checks, .. } => {
            if accept.as_ref().is_some_and(|a| a.matches(value)) {
                return None;
            }
            first_failing(checks, Subject::Str(value))
        }
        _ => panic!("lib/rules.json: {option} is not a string option"),
    }
}

/// Reads a host's `sshOpts` into the options ssh understands. The ssh layer
/// turns each into an ssh_config line; an inventory host's `sshOpts` have
/// passed this already, so the error (`sshOpts.N: expected ..., got ...:
/// problem`) only meets input that did not come through the inventory.
pub fn ssh_opts(opts: &[String]) -> Result<Vec<SshOpt<'_>>, String> {
    rules().walk_ssh_opts(&Path::Root("sshOpts"), View::Strs(opts))
}

/// The seconds a timeout (a phase's, a health check's period or timeout)
/// may have, and how lib/ words that.
pub fn seconds() -> (RangeInclusive<u64>, &'static str) {
    match rules().types.get("seconds") {
        Some(Rule::Int { min, max, expected }) => {
            (u64::try_from(*min).unwrap_or(0)..=u64::try_from(*max).unwrap_or(0), expected.as_str())
        }
        _ => panic!("lib/rules.json: types.seconds is not an int rule"),
    }
}

/// The default timeout of a phase.
pub fn timeout_default(phase: Phase) -> u64 {
    rules()
        .timeout_defaults
        .get(phase.timeout_key())
        .copied()
        .unwrap_or_else(|| panic!("lib/rules.json: timeoutDefaults has no {}", phase.timeout_key()))
}

impl Timeouts {
    /// A record from a lib/ that had no `reboot` timeout reads with this.
    pub(crate) fn default_reboot() -> u64 {
        timeout_default(Phase::Reboot)
    }
}

impl Default for Timeouts {
    /// `timeoutDefaults` of lib/rules.json.
    fn default() -> Self {
        let mut t = Timeouts {
            connect: 0,
            lock: 0,
            preflight: 0,
            copy: 0,
            build: 0,
            self_check: 0,
            activate: 0,
            confirm: 0,
            boot: 0,
            reboot: 0,
        };
        for phase in Phase::ALL {
            *t.get_mut(phase) = timeout_default(phase);
        }
        t
    }
}

impl HostSpec {
    /// The record `lib/` would produce for a host declared with no options
    /// (`hostDefaults` and `timeoutDefaults` of lib/rules.json).
    pub fn with_defaults(attr: &str) -> HostSpec {
        let mut record = rules().host_defaults.clone();
        record.insert("hostname".into(), attr.into());
        record.insert("configuration".into(), attr.into());
        record.insert(
            "timeouts".into(),
            serde_json::to_value(Timeouts::default()).expect("timeouts serialize"),
        );
        HostSpec::deserialize(serde_json::Value::Object(record))
            .unwrap_or_else(|e| panic!("lib/rules.json: hostDefaults are not a host record: {e}"))
    }
}
