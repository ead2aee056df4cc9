//! How the rules word a fault: as lib/rules.nix words it.

use serde_json::{Map, Value};

use super::check::View;

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
pub(super) enum Path<'a> {
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

pub(super) fn mismatch(expected: &str, path: &Path, v: View) -> String {
    format!("{path}: expected {expected}, got {}", v.describe())
}

pub(super) fn fault(expected: &str, path: &Path, v: View, problem: &str) -> String {
    format!("{}: {problem}", mismatch(expected, path, v))
}

/// Edit distance over bytes (as lib computes it).
pub(super) fn levenshtein(a: &str, b: &str) -> usize {
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
pub fn suggest(word: &str, candidates: &[&str]) -> String {
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
pub(super) fn key_problem<'k, K>(
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
