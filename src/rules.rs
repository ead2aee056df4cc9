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

use std::collections::BTreeMap;
use std::ops::RangeInclusive;
use std::sync::OnceLock;

use serde::{Deserialize, Deserializer};
use serde_json::{Map, Value};

use crate::events::Phase;
use crate::inventory::{HealthCheck, HostSpec, Timeouts};

/// `lib/rules.json`, as built into this binary.
pub const RULES_JSON: &str = include_str!("../lib/rules.json");

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
    /// Every option's default but `hostname`, `configuration` (the
    /// attribute name) and `timeouts` (`timeout_defaults`).
    pub host_defaults: Map<String, Value>,
    /// Seconds per phase, by [`Phase::timeout_key`].
    pub timeout_defaults: BTreeMap<String, u64>,
    pub health_check_defaults: Map<String, Value>,
    types: BTreeMap<String, Rule>,
    options: BTreeMap<String, RuleRef>,
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
    String {
        expected: String,
        #[serde(default)]
        nullable: bool,
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
// Wording, as lib/rules.nix words it

/// `s` as Nix's `builtins.toJSON` writes a string.
pub fn nix_json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A value as lib's `describe` names it: `a string ("x")`, `an integer (5)`,
/// `null`, `a list`, ...
pub fn describe(v: &Value) -> String {
    match v {
        Value::String(s) => format!("a string ({})", nix_json_string(s)),
        Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => format!("an integer ({i})"),
            (None, Some(u)) => format!("an integer ({u})"),
            _ => "a float".into(),
        },
        Value::Bool(b) => format!("a boolean ({b})"),
        Value::Null => "null".into(),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an attribute set".into(),
    }
}

/// Can `name` stand unquoted as a Nix attribute (`web1`, `_x'`, `web-1`)?
pub fn is_plain_nix_identifier(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '\'' | '-'))
}

/// `prefix.web1`, or `prefix."my host"` when the name is not a plain Nix
/// identifier.
pub fn attr_path(prefix: &str, name: &str) -> String {
    if is_plain_nix_identifier(name) {
        format!("{prefix}.{name}")
    } else {
        format!("{prefix}.{}", nix_json_string(name))
    }
}

/// Where a value sits (`deployFlake.hosts.web1.healthChecks.0.period`),
/// written out only for a message.
#[derive(Clone, Copy)]
enum Path<'a> {
    Root(&'a str),
    Key(&'a Path<'a>, &'a str),
    Index(&'a Path<'a>, usize),
}

impl std::fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Path::Root(s) => f.write_str(s),
            Path::Key(p, k) if is_plain_nix_identifier(k) => write!(f, "{p}.{k}"),
            Path::Key(p, k) => write!(f, "{p}.{}", nix_json_string(k)),
            Path::Index(p, i) => write!(f, "{p}.{i}"),
        }
    }
}

fn mismatch(expected: &str, path: &Path, v: View) -> String {
    format!("{path}: expected {expected}, got {}", v.describe())
}

fn fault(expected: &str, path: &Path, v: View, problem: &str) -> String {
    format!("{}: {problem}", mismatch(expected, path, v))
}

/// Edit distance over bytes (as lib computes it).
fn levenshtein(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut row = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            row[j + 1] = (row[j] + 1).min(prev[j + 1] + 1).min(prev[j] + usize::from(ca != cb));
        }
        prev = row;
    }
    prev[b.len()]
}

/// `; did you mean "x"?` or nothing.
fn suggest(word: &str, candidates: &[&str]) -> String {
    let limit = 2 + word.len() / 4;
    candidates
        .iter()
        .map(|c| (levenshtein(word, c), *c))
        .filter(|(d, _)| *d <= limit)
        .min()
        .map(|(_, c)| format!("; did you mean {}?", nix_json_string(c)))
        .unwrap_or_default()
}

/// The first unknown key of a JSON object (in Nix's order), then the first
/// key of `known` it lacks that is `required`. `known`: sorted.
fn key_problem<'k, K>(
    path: &Path,
    known: K,
    required: impl Fn(&str) -> bool,
    obj: &Map<String, Value>,
) -> Result<(), String>
where
    K: Iterator<Item = &'k str> + Clone,
{
    if let Some(k) = obj.keys().filter(|k| !known.clone().any(|n| n == k.as_str())).min() {
        let known: Vec<&str> = known.collect();
        return Err(format!(
            "{}: unknown option{} (known options: {})",
            Path::Key(path, k),
            suggest(k, &known),
            known.join(", ")
        ));
    }
    match known.filter(|k| required(k)).find(|k| !obj.contains_key(*k)) {
        Some(k) => Err(format!(
            "{}: missing (a deployFlake must be fully resolved; mkDeployFlake fills in defaults)",
            Path::Key(path, k)
        )),
        None => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// The values under check

/// A value under check: JSON of any shape, or part of a host record that
/// serde has read already (its shape is right; its values may not be).
/// Both are described and checked alike, so a fault reads the same.
#[derive(Clone, Copy)]
enum View<'a> {
    Json(&'a Value),
    Null,
    Str(&'a str),
    Int(u64),
    Bool(bool),
    Strs(&'a [String]),
    Host(&'a HostSpec),
    Timeouts(&'a Timeouts),
    Checks(&'a [HealthCheck]),
    Check(&'a HealthCheck),
}

impl<'a> View<'a> {
    fn describe(self) -> String {
        match self {
            View::Json(v) => describe(v),
            View::Null => "null".into(),
            View::Str(s) => format!("a string ({})", nix_json_string(s)),
            View::Int(n) => format!("an integer ({n})"),
            View::Bool(b) => format!("a boolean ({b})"),
            View::Strs(_) | View::Checks(_) => "a list".into(),
            View::Host(_) | View::Timeouts(_) | View::Check(_) => "an attribute set".into(),
        }
    }

    fn is_null(self) -> bool {
        matches!(self, View::Null | View::Json(Value::Null))
    }

    fn as_str(self) -> Option<&'a str> {
        match self {
            View::Json(v) => v.as_str(),
            View::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_i64(self) -> Option<i64> {
        match self {
            View::Json(v) => v.as_i64(),
            View::Int(n) => i64::try_from(n).ok(),
            _ => None,
        }
    }

    fn is_bool(self) -> bool {
        matches!(self, View::Bool(_) | View::Json(Value::Bool(_)))
    }

    /// A list's length.
    fn len(self) -> Option<usize> {
        match self {
            View::Json(Value::Array(a)) => Some(a.len()),
            View::Strs(v) => Some(v.len()),
            View::Checks(v) => Some(v.len()),
            _ => None,
        }
    }

    /// Element `i` of a list (`i` < its length).
    fn item(self, i: usize) -> View<'a> {
        match self {
            View::Json(Value::Array(a)) => View::Json(&a[i]),
            View::Strs(v) => View::Str(&v[i]),
            View::Checks(v) => View::Check(&v[i]),
            _ => View::Null,
        }
    }

    fn is_record(self) -> bool {
        matches!(
            self,
            View::Json(Value::Object(_)) | View::Host(_) | View::Timeouts(_) | View::Check(_)
        )
    }

    /// A JSON object's keys may be wrong; a typed record's are right.
    fn json_object(self) -> Option<&'a Map<String, Value>> {
        match self {
            View::Json(Value::Object(o)) => Some(o),
            _ => None,
        }
    }

    /// A record's value at `key`, named as in Nix.
    fn get(self, key: &str) -> Option<View<'a>> {
        let opt_str = |s: Option<&'a str>| s.map_or(View::Null, View::Str);
        Some(match self {
            View::Json(Value::Object(o)) => View::Json(o.get(key)?),
            View::Host(h) => match key {
                "hostname" => View::Str(&h.hostname),
                "sshUser" => View::Str(&h.ssh_user),
                "sshPort" => View::Int(u64::from(h.ssh_port)),
                "sshOpts" => View::Strs(&h.ssh_opts),
                "configuration" => View::Str(&h.configuration),
                "tags" => View::Strs(&h.tags),
                "buildOn" => View::Str(h.build_on.as_str()),
                "selfCheck" => opt_str(h.self_check.as_deref()),
                "sudo" => View::Str(&h.sudo),
                "magicRollback" => View::Bool(h.magic_rollback),
                "healthChecks" => View::Checks(&h.health_checks),
                "timeouts" => View::Timeouts(&h.timeouts),
                _ => return None,
            },
            View::Timeouts(t) => {
                let phase = Phase::ALL.into_iter().find(|p| p.timeout_key() == key)?;
                View::Int(t.get(phase))
            }
            View::Check(c) => match key {
                "description" => View::Str(&c.description),
                "command" => c.command.as_deref().map_or(View::Null, View::Strs),
                "http" => opt_str(c.http.as_deref()),
                "period" => View::Int(c.period),
                "timeout" => View::Int(c.timeout),
                _ => return None,
            },
            _ => return None,
        })
    }
}

// ---------------------------------------------------------------------------
// sshOpts

/// One option of a host's `sshOpts`, read as [`ssh_opts`] reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SshOpt<'a> {
    /// `-o Key=Value`, `-oKey=Value` or `-o "Key Value"`: an ssh_config line.
    Config { key: &'a str, value: &'a str },
    /// `-i FILE`, `-J HOST` or `-F FILE`, the value inline or in the next
    /// element: the flag's letter and the value.
    WithValue { flag: char, value: &'a str },
    /// `-4`, `-6`, `-A`, `-C` or `-q`: the flag's letter.
    Flag(char),
}

/// `Key=Value` (already checked) split into key and value.
fn split_config(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(s.len());
    let rest = s[end..].trim_start_matches(|c: char| c.is_ascii_whitespace());
    let rest = rest.strip_prefix('=').unwrap_or(rest);
    (&s[..end], rest.trim_start_matches(|c: char| c.is_ascii_whitespace()))
}

impl Rules {
    fn resolve<'r>(&'r self, r: &'r RuleRef) -> &'r Rule {
        match r {
            RuleRef::Inline(rule) => rule,
            RuleRef::Named(name) => self
                .types
                .get(name)
                .unwrap_or_else(|| panic!("lib/rules.json: no type named {name:?}")),
        }
    }

    fn option(&self, name: &str) -> &Rule {
        let r = self
            .options
            .get(name)
            .unwrap_or_else(|| panic!("lib/rules.json: no option named {name:?}"));
        self.resolve(r)
    }

    /// The option names, sorted.
    pub fn option_names(&self) -> Vec<&str> {
        self.options.keys().map(String::as_str).collect()
    }

    /// Reads a list as ssh reads its command line; the first fault is
    /// worded with `path` (e.g. `deployFlake.hosts.web1.sshOpts`).
    fn walk_ssh_opts<'a>(&self, path: &Path, items: View<'a>) -> Result<Vec<SshOpt<'a>>, String> {
        let Rule::SshOpts { option, flags, unsupported, needs_value, .. } = self.option("sshOpts")
        else {
            panic!("lib/rules.json: sshOpts is not of type sshOpts")
        };
        let n = items.len().unwrap_or(0);
        let mut out = Vec::new();
        let mut i = 0;
        while i < n {
            let (item, at) = (items.item(i), Path::Index(path, i));
            let Some(e) = item.as_str() else {
                return Err(mismatch(&option.expected, &at, item));
            };
            let bad = |problem: &str| fault(&option.expected, &at, item, problem);
            if let Some(p) = first_failing(&option.checks, Subject::Str(e)) {
                return Err(bad(p));
            }
            // `-oKey=Value`: the flag and its value in one element (the flag
            // is two bytes, as Nix's substring counts).
            let joined = e.len() > 2 && e.starts_with('-');
            let (flag, inline) = match (joined, e.get(..2)) {
                (true, Some(f)) => (f, Some(&e[2..])),
                _ => (e, None),
            };
            let Some(f) = flags.get(flag).filter(|_| !joined || inline.is_some()) else {
                return Err(bad(unsupported));
            };
            if let Some(refused) = &f.refused {
                return Err(bad(refused));
            }
            let letter = flag.chars().nth(1).unwrap_or('-');
            let Some(value_rule) = &f.value else {
                if joined {
                    return Err(bad(unsupported));
                }
                out.push(SshOpt::Flag(letter));
                i += 1;
                continue;
            };
            let value = match inline {
                Some(v) => {
                    if let Some(p) = first_failing(&value_rule.checks, Subject::Str(v)) {
                        return Err(fault(&value_rule.expected, &at, item, p));
                    }
                    i += 1;
                    v
                }
                None => {
                    if i + 1 >= n {
                        return Err(bad(needs_value));
                    }
                    let (next, next_at) = (items.item(i + 1), Path::Index(path, i + 1));
                    let Some(v) = next.as_str() else {
                        return Err(mismatch(&value_rule.expected, &next_at, next));
                    };
                    if let Some(p) = first_failing(&value_rule.checks, Subject::Str(v)) {
                        return Err(fault(&value_rule.expected, &next_at, next, p));
                    }
                    i += 2;
                    v
                }
            };
            out.push(match letter {
                'o' => {
                    let (key, value) = split_config(value);
                    SshOpt::Config { key, value }
                }
                flag => SshOpt::WithValue { flag, value },
            });
        }
        Ok(out)
    }

    /// The first fault of a resolved value against `rule`.
    fn check(&self, rule: &Rule, path: &Path, v: View) -> Result<(), String> {
        match rule {
            Rule::String { expected, nullable, accept, checks } => {
                if *nullable && v.is_null() {
                    return Ok(());
                }
                let Some(s) = v.as_str() else { return Err(mismatch(expected, path, v)) };
                if accept.as_ref().is_some_and(|a| a.matches(s)) {
                    return Ok(());
                }
                match first_failing(checks, Subject::Str(s)) {
                    None => Ok(()),
                    Some(p) => Err(fault(expected, path, v, p)),
                }
            }
            Rule::Int { expected, min, max } => match v.as_i64() {
                Some(n) if (*min..=*max).contains(&n) => Ok(()),
                _ => Err(mismatch(expected, path, v)),
            },
            Rule::Bool { expected } => match v.is_bool() {
                true => Ok(()),
                false => Err(mismatch(expected, path, v)),
            },
            Rule::Enum { expected, values } => match v.as_str() {
                Some(s) if values.iter().any(|x| x == s) => Ok(()),
                _ => Err(mismatch(expected, path, v)),
            },
            Rule::List { expected, nullable, checks, element } => {
                if *nullable && v.is_null() {
                    return Ok(());
                }
                let Some(n) = v.len() else { return Err(mismatch(expected, path, v)) };
                if let Some(p) = first_failing(checks, Subject::List(n)) {
                    return Err(fault(expected, path, v, p));
                }
                let element = self.resolve(element);
                (0..n).try_for_each(|i| self.check(element, &Path::Index(path, i), v.item(i)))
            }
            Rule::Timeouts { expected, each } => {
                if !v.is_record() {
                    return Err(mismatch(expected, path, v));
                }
                let phases = self.timeout_defaults.keys().map(String::as_str);
                if let Some(obj) = v.json_object() {
                    key_problem(path, phases.clone(), |_| true, obj)?;
                }
                let each = self.resolve(each);
                for k in phases {
                    if let Some(x) = v.get(k) {
                        self.check(each, &Path::Key(path, k), x)?;
                    }
                }
                Ok(())
            }
            Rule::HealthChecks { expected, check } => {
                let Some(n) = v.len() else { return Err(mismatch(expected, path, v)) };
                let fields = check.fields.keys().map(String::as_str);
                for i in 0..n {
                    let (c, at) = (v.item(i), Path::Index(path, i));
                    if !c.is_record() {
                        return Err(mismatch(&check.expected, &at, c));
                    }
                    if let Some(obj) = c.json_object() {
                        key_problem(&at, fields.clone(), |_| true, obj)?;
                    }
                    for (k, rule) in &check.fields {
                        if let Some(x) = c.get(k) {
                            self.check(self.resolve(rule), &Path::Key(&at, k), x)?;
                        }
                    }
                    let one = &check.exactly_one_of;
                    let given = one
                        .fields
                        .iter()
                        .filter(|k| c.get(k).is_some_and(|x| !x.is_null()))
                        .count();
                    if given != 1 {
                        return Err(fault(&check.expected, &at, c, &one.problem));
                    }
                }
                Ok(())
            }
            Rule::SshOpts { expected, .. } => match v.len() {
                Some(_) => self.walk_ssh_opts(path, v).map(drop),
                None => Err(mismatch(expected, path, v)),
            },
        }
    }

    /// A host record: unknown keys first, then missing ones, then every
    /// value in key order.
    fn check_host(&self, path: &Path, host: View) -> Result<(), String> {
        if !host.is_record() {
            return Err(format!("{path}: expected an attribute set, got {}", host.describe()));
        }
        let names = self.options.keys().map(String::as_str);
        if let Some(obj) = host.json_object() {
            // A record from a lib/ without health checks still reads (as none).
            key_problem(path, names.clone(), |k| k != "healthChecks", obj)?;
        }
        for (k, rule) in &self.options {
            if let Some(v) = host.get(k) {
                self.check(self.resolve(rule), &Path::Key(path, k), v)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// The API

/// Checks a resolved host record as JSON (one `deployFlake.hosts` entry,
/// named by `path`, e.g. `deployFlake.hosts.web1`). The error is its first
/// fault, in lib's words.
pub fn check_host(path: &str, host: &Value) -> Result<(), String> {
    rules().check_host(&Path::Root(path), View::Json(host))
}

/// Checks a host record serde has read (its values; its shape is right).
/// The error is worded exactly as [`check_host`] words it for the JSON.
pub fn check_spec(path: &str, spec: &HostSpec) -> Result<(), String> {
    rules().check_host(&Path::Root(path), View::Host(spec))
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn the_rule_set_parses_and_names_every_phase() {
        let r = rules();
        assert_eq!(r.schema_version, crate::inventory::SCHEMA_VERSION);
        let mut keys: Vec<&str> = Phase::ALL.iter().map(|p| p.timeout_key()).collect();
        keys.sort_unstable();
        let json: Vec<&str> = r.timeout_defaults.keys().map(String::as_str).collect();
        assert_eq!(keys, json, "Phase::ALL and lib/rules.json timeoutDefaults differ");
        // Every option has a default but the per-host ones and timeouts.
        let mut defaulted: Vec<&str> = r.host_defaults.keys().map(String::as_str).collect();
        defaulted.extend(r.per_host_only.iter().map(String::as_str));
        defaulted.push("timeouts");
        defaulted.sort_unstable();
        assert_eq!(defaulted, r.option_names());
        assert_eq!(seconds().0, 1..=31_536_000);
    }

    /// Every rule: int texts name their bounds, checks are well-formed.
    #[test]
    fn every_rule_is_well_formed() {
        fn walk(r: &Rules, rule: &Rule, seen: &mut usize) {
            *seen += 1;
            let checks_ok = |checks: &[Check], list: bool| {
                for c in checks {
                    for p in [&c.require, &c.forbid].into_iter().flatten() {
                        p.regex();
                    }
                    let n = [c.require.is_some(), c.forbid.is_some(), c.min_length.is_some()]
                        .iter()
                        .filter(|x| **x)
                        .count();
                    assert_eq!(n, 1, "a check has exactly one of require, forbid, minLength");
                    assert!(!list || c.min_length.is_some(), "a list check is minLength");
                }
            };
            match rule {
                Rule::Int { expected, min, max } => {
                    assert!(expected.contains(&min.to_string()), "{expected}");
                    assert!(expected.contains(&max.to_string()), "{expected}");
                }
                Rule::String { checks, accept, .. } => {
                    checks_ok(checks, false);
                    if let Some(a) = accept {
                        a.regex();
                    }
                }
                Rule::List { checks, element, .. } => {
                    checks_ok(checks, true);
                    walk(r, r.resolve(element), seen);
                }
                Rule::Timeouts { each, .. } => walk(r, r.resolve(each), seen),
                Rule::HealthChecks { check, .. } => {
                    for f in check.fields.values() {
                        walk(r, r.resolve(f), seen);
                    }
                    for k in &check.exactly_one_of.fields {
                        assert!(check.fields.contains_key(k), "{k}");
                    }
                }
                Rule::SshOpts { option, flags, .. } => {
                    checks_ok(&option.checks, false);
                    for (name, f) in flags {
                        assert!(name.len() == 2 && name.starts_with('-'), "{name}");
                        assert!(f.value.is_none() || f.refused.is_none(), "{name}");
                        if let Some(v) = &f.value {
                            checks_ok(&v.checks, false);
                        }
                    }
                }
                Rule::Bool { .. } | Rule::Enum { .. } => {}
            }
        }
        let r = rules();
        let mut seen = 0;
        for name in r.option_names() {
            walk(r, r.option(name), &mut seen);
        }
        assert!(seen > 12, "{seen}");
    }

    /// `accept` is only a fast path: whatever it matches passes every check.
    #[test]
    fn accept_never_lets_through_what_a_check_rejects() {
        let alphabet = [
            "a", "Z", "0", "-", "@", "/", ":", " ", "\t", "\n", "\u{7}", "\"", "'", "$", ".", "é",
            "[", "]",
        ];
        let mut corpus = vec![String::new()];
        for a in alphabet {
            for b in alphabet {
                corpus.push(format!("{a}{b}"));
                for c in alphabet {
                    corpus.push(format!("{a}x{b}{c}"));
                }
            }
        }
        let r = rules();
        let mut accepted = 0;
        for name in r.option_names() {
            if let Rule::String { accept: Some(accept), checks, .. } = r.option(name) {
                for s in &corpus {
                    if accept.matches(s) {
                        accepted += 1;
                        assert_eq!(first_failing(checks, Subject::Str(s)), None, "{name}: {s:?}");
                    }
                }
            }
        }
        assert!(accepted > 1000, "{accepted}");
    }

    #[test]
    fn words_values_as_nix_does() {
        assert_eq!(
            nix_json_string("a\"b\\c\n\r\t\u{8}\u{1b}\u{7f}é"),
            r#""a\"b\\c\n\r\t\u0008\u001b"#.to_string() + "\u{7f}é\""
        );
        assert_eq!(describe(&json!(null)), "null");
        assert_eq!(describe(&json!(5)), "an integer (5)");
        assert_eq!(describe(&json!(u64::MAX)), "an integer (18446744073709551615)");
        assert_eq!(describe(&json!(1.5)), "a float");
        assert_eq!(describe(&json!(true)), "a boolean (true)");
        assert_eq!(describe(&json!([1])), "a list");
        assert_eq!(describe(&json!({})), "an attribute set");
        assert_eq!(attr_path("p", "web-1"), "p.web-1");
        assert_eq!(attr_path("p", "my host"), "p.\"my host\"");
        assert_eq!(
            suggest("sshPrt", &["sshPort", "sshOpts", "sudo"]),
            "; did you mean \"sshPort\"?"
        );
        assert_eq!(suggest("zzzzzz", &["sshPort"]), "");
        assert_eq!(levenshtein("kitten", "sitting"), 3);
    }

    #[test]
    fn ssh_opts_are_read_as_ssh_reads_them() {
        let opts: Vec<String> = [
            "-i",
            "/k/id key",
            "-oUserKnownHostsFile=/k/known",
            "-o",
            "ProxyJump bastion",
            "-4",
            "-o",
            "ServerAliveInterval = 5",
            "-Jjump",
            "-F",
            "/etc/x",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            ssh_opts(&opts).unwrap(),
            vec![
                SshOpt::WithValue { flag: 'i', value: "/k/id key" },
                SshOpt::Config { key: "UserKnownHostsFile", value: "/k/known" },
                SshOpt::Config { key: "ProxyJump", value: "bastion" },
                SshOpt::Flag('4'),
                SshOpt::Config { key: "ServerAliveInterval", value: "5" },
                SshOpt::WithValue { flag: 'J', value: "jump" },
                SshOpt::WithValue { flag: 'F', value: "/etc/x" },
            ]
        );
        let err = |o: &[&str]| {
            let o: Vec<String> = o.iter().map(|s| s.to_string()).collect();
            ssh_opts(&o).unwrap_err()
        };
        let opt = "expected an ssh option (-o Key=Value, -i FILE, -J HOST, -F FILE, -4, -6, -A, -C or -q)";
        assert_eq!(
            err(&["-X"]),
            format!(
                r#"sshOpts.0: {opt}, got a string ("-X"): not supported: write it as -o Key=Value"#
            )
        );
        assert_eq!(
            err(&["-4", "-i"]),
            format!(
                r#"sshOpts.1: {opt}, got a string ("-i"): needs a value: put it in the next element or right after the flag"#
            )
        );
        assert_eq!(
            err(&["-p", "22"]),
            format!(r#"sshOpts.0: {opt}, got a string ("-p"): set sshPort instead"#)
        );
        assert_eq!(
            err(&["-lroot"]),
            format!(r#"sshOpts.0: {opt}, got a string ("-lroot"): set sshUser instead"#)
        );
        assert_eq!(
            err(&["-4x"]),
            format!(
                r#"sshOpts.0: {opt}, got a string ("-4x"): not supported: write it as -o Key=Value"#
            )
        );
        assert_eq!(
            err(&["-é"]),
            format!(
                r#"sshOpts.0: {opt}, got a string ("-é"): not supported: write it as -o Key=Value"#
            )
        );
        assert_eq!(
            err(&["-o", "Key="]),
            r#"sshOpts.1: expected Key=Value or "Key Value" after -o, got a string ("Key="): is not Key=Value"#
        );
        assert_eq!(
            err(&["-oA=b\nHost *"]),
            format!(
                r#"sshOpts.0: {opt}, got a string ("-oA=b\nHost *"): contains a control character"#
            )
        );
        assert_eq!(
            err(&["-i", "a\"b"]),
            r#"sshOpts.1: expected a file name after -i, got a string ("a\"b"): contains '"', which an ssh_config file cannot quote"#
        );
    }

    /// A record serde has read is checked field by field as its JSON is.
    #[test]
    fn typed_records_read_as_their_json() {
        let base = {
            let mut h = HostSpec::with_defaults("web1");
            h.ssh_opts = vec!["-i".into(), "/k".into()];
            h.tags = vec!["web".into()];
            h.self_check = Some("bin/check".into());
            h.health_checks = vec![
                HealthCheck {
                    description: "up".into(),
                    command: Some(vec!["true".into()]),
                    http: None,
                    period: 2,
                    timeout: 30,
                },
                HealthCheck {
                    description: "GET".into(),
                    command: None,
                    http: Some("http://h/".into()),
                    period: 1,
                    timeout: 31_536_000,
                },
            ];
            h
        };
        let r = rules();
        for name in r.option_names() {
            assert!(View::Host(&base).get(name).is_some(), "{name}");
        }
        for phase in r.timeout_defaults.keys() {
            assert!(View::Timeouts(&base.timeouts).get(phase).is_some(), "{phase}");
        }
        let Rule::HealthChecks { check, .. } = r.option("healthChecks") else { panic!() };
        for field in check.fields.keys() {
            assert!(View::Check(&base.health_checks[0]).get(field).is_some(), "{field}");
        }

        type Change = fn(&mut HostSpec);
        let changes: [Change; 20] = [
            |_| {},
            |h| h.hostname = "root@h".into(),
            |h| h.hostname = String::new(),
            |h| h.ssh_user = "a:b".into(),
            |h| h.ssh_port = 0,
            |h| h.ssh_opts = vec!["-p".into(), "22".into()],
            |h| h.ssh_opts = vec!["-o".into()],
            |h| h.configuration = "a\"b".into(),
            |h| h.self_check = Some("/x".into()),
            |h| h.self_check = Some(String::new()),
            |h| h.sudo = "\n".into(),
            |h| h.health_checks[0].period = 0,
            |h| h.health_checks[1].timeout = u64::MAX,
            |h| h.health_checks[0].command = Some(vec![]),
            |h| h.health_checks[0].http = Some("http://x/".into()),
            |h| h.health_checks[1].http = None,
            |h| h.health_checks[1].http = Some("https://x/".into()),
            |h| h.timeouts.self_check = 0,
            |h| h.timeouts.boot = 31_536_001,
            |h| h.timeouts.connect = u64::MAX,
        ];
        let mut rejected = 0;
        for change in changes {
            let mut h = base.clone();
            change(&mut h);
            let typed = check_spec("p", &h);
            assert_eq!(typed, check_host("p", &serde_json::to_value(&h).unwrap()));
            rejected += usize::from(typed.is_err());
        }
        assert_eq!(rejected, changes.len() - 1);
    }

    #[test]
    fn string_problems_for_the_command_line() {
        assert_eq!(string_problem("hostname", "fe80::1"), None);
        assert_eq!(string_problem("hostname", "it's$(x)"), None);
        assert_eq!(string_problem("hostname", "a b"), Some("contains whitespace"));
        assert_eq!(string_problem("sshUser", "a:b"), Some("contains ':'"));
        assert_eq!(string_problem("configuration", "it's $(touch x)"), None);
        assert_eq!(
            string_problem("selfCheck", "bin/../x"),
            Some("contains '..': it must stay inside the toplevel")
        );
    }
}
