//! Checking values against the rules: JSON, or a record serde has read.

use super::*;
use crate::fleet::Probe;

// ---------------------------------------------------------------------------
// The values under check

/// A value under check: JSON of any shape, or part of a host record that
/// serde has read already (its shape is right; its values may not be).
/// Both are described and checked alike, so a fault reads the same.
#[derive(Clone, Copy)]
pub(super) enum View<'a> {
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
    Keys(&'a BTreeMap<String, KeySpec>),
    Key(&'a KeySpec),
}

impl<'a> View<'a> {
    pub(super) fn describe(self) -> String {
        match self {
            View::Json(v) => describe(v),
            View::Null => "null".into(),
            View::Str(s) => format!("a string ({})", nix_json_string(s)),
            View::Int(n) => format!("an integer ({n})"),
            View::Bool(b) => format!("a boolean ({b})"),
            View::Strs(_) | View::Checks(_) => "a list".into(),
            View::Host(_) | View::Timeouts(_) | View::Check(_) | View::Keys(_) | View::Key(_) => {
                "an attribute set".into()
            }
        }
    }

    /// What kind of value it is, never the value (`a string`, `an
    /// integer`): for a secret.
    pub(super) fn kind(self) -> String {
        let d = self.describe();
        match d.split_once(" (") {
            Some((kind, _)) => kind.to_string(),
            None => d,
        }
    }

    /// An attribute set's entries, by name (as Nix orders them).
    pub(super) fn entries(self) -> Option<Vec<(&'a str, View<'a>)>> {
        match self {
            View::Json(Value::Object(o)) => {
                Some(o.iter().map(|(k, v)| (k.as_str(), View::Json(v))).collect())
            }
            View::Keys(m) => Some(m.iter().map(|(k, v)| (k.as_str(), View::Key(v))).collect()),
            _ => None,
        }
    }

    pub(super) fn is_null(self) -> bool {
        matches!(self, View::Null | View::Json(Value::Null))
    }

    pub(super) fn as_str(self) -> Option<&'a str> {
        match self {
            View::Json(v) => v.as_str(),
            View::Str(s) => Some(s),
            _ => None,
        }
    }

    pub(super) fn as_i64(self) -> Option<i64> {
        match self {
            View::Json(v) => v.as_i64(),
            View::Int(n) => i64::try_from(n).ok(),
            _ => None,
        }
    }

    pub(super) fn is_bool(self) -> bool {
        matches!(self, View::Bool(_) | View::Json(Value::Bool(_)))
    }

    /// A list's length.
    pub(super) fn len(self) -> Option<usize> {
        match self {
            View::Json(Value::Array(a)) => Some(a.len()),
            View::Strs(v) => Some(v.len()),
            View::Checks(v) => Some(v.len()),
            _ => None,
        }
    }

    /// Element `i` of a list (`i` < its length).
    pub(super) fn item(self, i: usize) -> View<'a> {
        match self {
            View::Json(Value::Array(a)) => View::Json(&a[i]),
            View::Strs(v) => View::Str(&v[i]),
            View::Checks(v) => View::Check(&v[i]),
            _ => View::Null,
        }
    }

    pub(super) fn is_record(self) -> bool {
        matches!(
            self,
            View::Json(Value::Object(_))
                | View::Host(_)
                | View::Timeouts(_)
                | View::Check(_)
                | View::Keys(_)
                | View::Key(_)
        )
    }

    /// A JSON object's keys may be wrong; a typed record's are right.
    pub(super) fn json_object(self) -> Option<&'a Map<String, Value>> {
        match self {
            View::Json(Value::Object(o)) => Some(o),
            _ => None,
        }
    }

    /// A record's value at `key`, named as in Nix.
    pub(super) fn get(self, key: &str) -> Option<View<'a>> {
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
                "substituteOnTarget" => View::Bool(h.substitute_on_target),
                "healthChecks" => View::Checks(&h.health_checks),
                "keys" => View::Keys(&h.keys),
                "timeouts" => View::Timeouts(&h.timeouts),
                "buildHost" => opt_str(h.build_host.as_deref()),
                "buildHostSshOpts" => View::Strs(&h.build_host_ssh_opts),
                "buildHostCapacity" => View::Int(u64::from(h.build_host_capacity)),
                "copyFrom" => View::Str(h.copy_from.as_str()),
                "pushTo" => opt_str(h.push_to.as_deref()),
                "system" => opt_str(h.system.as_deref()),
                _ => return None,
            },
            View::Timeouts(t) => {
                let phase = Phase::ALL.into_iter().find(|p| p.timeout_key() == key)?;
                View::Int(t.get(phase))
            }
            View::Key(k) => match key {
                "name" => View::Str(&k.name),
                // A text is a string; its checks never look at it.
                "text" => k.text.as_ref().map_or(View::Null, |_| View::Str("")),
                "keyFile" => opt_str(k.key_file.as_deref()),
                "keyCommand" => k.key_command.as_deref().map_or(View::Null, View::Strs),
                "destDir" => View::Str(&k.dest_dir),
                "user" => View::Str(&k.user),
                "group" => View::Str(&k.group),
                "permissions" => View::Str(&k.permissions),
                "uploadAt" => View::Str(k.upload_at.as_str()),
                _ => return None,
            },
            View::Check(c) => match key {
                "description" => View::Str(&c.description),
                "command" => match &c.probe {
                    Probe::Command(argv) => View::Strs(argv),
                    Probe::Http(_) => View::Null,
                },
                "http" => match &c.probe {
                    Probe::Http(url) => View::Str(url),
                    Probe::Command(_) => View::Null,
                },
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
pub(super) fn split_config(s: &str) -> (&str, &str) {
    let end = s.find(|c: char| !c.is_ascii_alphanumeric()).unwrap_or(s.len());
    let rest = s[end..].trim_start_matches(|c: char| c.is_ascii_whitespace());
    let rest = rest.strip_prefix('=').unwrap_or(rest);
    (&s[..end], rest.trim_start_matches(|c: char| c.is_ascii_whitespace()))
}

impl Rules {
    pub(super) fn resolve<'r>(&'r self, r: &'r RuleRef) -> &'r Rule {
        match r {
            RuleRef::Inline(rule) => rule,
            // One of `types`, or else another option's rule.
            RuleRef::Named(name) => match (self.types.get(name), self.options.get(name)) {
                (Some(rule), _) => rule,
                (None, Some(r)) => self.resolve(r),
                (None, None) => panic!("lib/rules.json: no type or option named {name:?}"),
            },
        }
    }

    pub(super) fn option(&self, name: &str) -> &Rule {
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
    pub(super) fn walk_ssh_opts<'a>(
        &self,
        path: &Path,
        items: View<'a>,
    ) -> Result<Vec<SshOpt<'a>>, String> {
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
            let (value, used) = ssh_value(items, path, i, inline, value_rule, || bad(needs_value))?;
            i += used;
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
    pub(super) fn check(&self, rule: &Rule, path: &Path, v: View) -> Result<(), String> {
        match rule {
            Rule::String { expected, nullable, accept, checks, secret, .. } => {
                if *nullable && v.is_null() {
                    return Ok(());
                }
                let Some(s) = v.as_str() else {
                    if *secret {
                        return Err(format!("{path}: expected {expected}, got {}", v.kind()));
                    }
                    return Err(mismatch(expected, path, v));
                };
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
            Rule::Timeouts { expected, each } => self.check_timeouts(expected, each, path, v),
            Rule::HealthChecks { expected, check } => {
                self.check_health_checks(expected, check, path, v)
            }
            Rule::Keys { expected, key } => self.check_keys(expected, key, path, v),
            Rule::SshOpts { expected, .. } => match v.len() {
                Some(_) => self.walk_ssh_opts(path, v).map(drop),
                None => Err(mismatch(expected, path, v)),
            },
        }
    }

    fn check_timeouts(
        &self,
        expected: &str,
        each: &RuleRef,
        path: &Path,
        v: View,
    ) -> Result<(), String> {
        if !v.is_record() {
            return Err(mismatch(expected, path, v));
        }
        let phases = self.timeout_defaults.keys().map(String::as_str);
        if let Some(obj) = v.json_object() {
            // A record from a lib/ without the reboot timeout still reads
            // (with its default).
            key_problem(path, phases.clone(), |k| k != "reboot", obj)?;
        }
        let each = self.resolve(each);
        for k in phases {
            if let Some(x) = v.get(k) {
                self.check(each, &Path::Key(path, k), x)?;
            }
        }
        Ok(())
    }

    fn check_health_checks(
        &self,
        expected: &str,
        check: &HealthCheckRule,
        path: &Path,
        v: View,
    ) -> Result<(), String> {
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
            let given =
                one.fields.iter().filter(|k| c.get(k).is_some_and(|x| !x.is_null())).count();
            if given != 1 {
                return Err(fault(&check.expected, &at, c, &one.problem));
            }
        }
        Ok(())
    }

    /// Keys: each one's fields, its values, text or keyFile or keyCommand;
    /// then no two keys that write the same file.
    fn check_keys(
        &self,
        expected: &str,
        rule: &KeyRule,
        path: &Path,
        v: View,
    ) -> Result<(), String> {
        let Some(entries) = v.entries() else { return Err(mismatch(expected, path, v)) };
        let fields = rule.fields.keys().map(String::as_str);
        for (name, k) in &entries {
            let at = Path::Key(path, name);
            // (A key that is not an attribute set may be the secret
            // itself: only its kind is said.)
            if !k.is_record() {
                return Err(format!("{at}: expected {}, got {}", rule.expected, k.kind()));
            }
            if let Some(obj) = k.json_object() {
                key_problem(&at, fields.clone(), |_| true, obj)?;
            }
            for (f, r) in &rule.fields {
                if let Some(x) = k.get(f) {
                    self.check(self.resolve(r), &Path::Key(&at, f), x)?;
                }
            }
            let one = &rule.exactly_one_of;
            let given =
                one.fields.iter().filter(|f| k.get(f).is_some_and(|x| !x.is_null())).count();
            if given != 1 {
                return Err(fault(&rule.expected, &at, *k, &one.problem));
            }
        }
        let file = |k: View| -> Option<String> {
            Some(format!("{}/{}", k.get("destDir")?.as_str()?, k.get("name")?.as_str()?))
        };
        for (i, (name, k)) in entries.iter().enumerate() {
            let Some(f) = file(*k) else { continue };
            if let Some((other, _)) =
                entries[..i].iter().find(|(_, e)| file(*e).as_ref() == Some(&f))
            {
                let other = attr_path("keys", other);
                let said = rule.clash.replace("%FILE%", &f).replace("%OTHER%", &other);
                return Err(format!("{}: {said}", Path::Key(path, name)));
            }
        }
        Ok(())
    }

    /// A host record: unknown keys first, then missing ones, then every
    /// value in key order but those of the options `skip` names.
    pub(super) fn check_host(
        &self,
        path: &Path,
        host: View,
        skip: &dyn Fn(&str) -> bool,
    ) -> Result<(), String> {
        if !host.is_record() {
            return Err(format!("{path}: expected an attribute set, got {}", host.describe()));
        }
        let names = self.options.keys().map(String::as_str);
        if let Some(obj) = host.json_object() {
            // A record from a lib/ without health checks, keys or the
            // options of where systems are built still reads (with their defaults).
            let optional = &self.optional_in_records;
            key_problem(path, names.clone(), |k| !optional.iter().any(|o| o == k), obj)?;
        }
        for (k, rule) in &self.options {
            if skip(k) {
                continue;
            }
            if let Some(v) = host.get(k) {
                self.check(self.resolve(rule), &Path::Key(path, k), v)?;
            }
        }
        self.check_together(path, host)
    }

    /// `together`: the first option a host's value needs and lacks.
    fn check_together(&self, path: &Path, host: View) -> Result<(), String> {
        let null = |k: &str| host.get(k).map_or(true, View::is_null);
        for t in &self.together {
            let is = host.get(&t.when).and_then(View::as_str) == Some(t.is.as_str());
            if is && null(&t.needs) {
                let expected = match self.option(&t.needs) {
                    Rule::String { expected, .. } => expected.as_str(),
                    _ => panic!("lib/rules.json: together needs a string option"),
                };
                return Err(fault(expected, &Path::Key(path, &t.needs), View::Null, &t.problem));
            }
        }
        Ok(())
    }
}

/// The value of an ssh flag: inline (`-iFILE`) or the next element. Returns
/// it and how many elements the flag used.
fn ssh_value<'a>(
    items: View<'a>,
    path: &Path,
    i: usize,
    inline: Option<&'a str>,
    rule: &ValueRule,
    missing: impl FnOnce() -> String,
) -> Result<(&'a str, usize), String> {
    let (item, at) = (items.item(i), Path::Index(path, i));
    if let Some(v) = inline {
        if let Some(p) = first_failing(&rule.checks, Subject::Str(v)) {
            return Err(fault(&rule.expected, &at, item, p));
        }
        return Ok((v, 1));
    }
    if i + 1 >= items.len().unwrap_or(0) {
        return Err(missing());
    }
    let (next, next_at) = (items.item(i + 1), Path::Index(path, i + 1));
    let Some(v) = next.as_str() else {
        return Err(mismatch(&rule.expected, &next_at, next));
    };
    if let Some(p) = first_failing(&rule.checks, Subject::Str(v)) {
        return Err(fault(&rule.expected, &next_at, next, p));
    }
    Ok((v, 2))
}
