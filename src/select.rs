//! Host selection: attribute names, `@tags`, globs, exclusions and ad hoc
//! `nixos://` destinations turned into an ordered list of targets.
//!
//! How a positional word is read, first rule that applies:
//!
//! 1. `nixos://[user@]host[:port][/config]` — an ad hoc destination.
//! 2. `@tag` — every inventory host carrying that tag.
//! 3. an inventory attribute name — that host.
//! 4. `user@host[:port][/config]` — an ad hoc destination.
//! 5. a word with `*`, `?` or `[` — a glob over attribute names; it must
//!    match at least one.
//! 6. with no `deployFlake` output at all, `host[:port][/config]` — an ad hoc
//!    destination (how the original deploy-flake worked); with an inventory,
//!    an "unknown host" error with the closest names, so a typo never
//!    reaches for a machine that is not in the fleet.
//!
//! An ad hoc destination without `/config` deploys the configuration named
//! like its host part. When that configuration is an inventory host, the
//! destination inherits the host's settings, with hostname, user and port
//! taken from the destination where it gives them.
//!
//! Order: inventory hosts sorted by attribute name, then ad hoc
//! destinations in argument order; never twice the same name.

use std::collections::BTreeSet;

use glob::Pattern;

use crate::inventory::{self, HostSpec, Inventory, InventoryError};
use crate::rules;

/// One host chosen for this run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The name every event and line is tagged with (the attribute name, or
    /// the destination as written for an ad hoc host).
    pub name: String,
    pub spec: HostSpec,
}

/// What the user asked for on the command line.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Selection {
    /// Positional words, in order.
    pub hosts: Vec<String>,
    /// `--all`: every inventory host.
    pub all: bool,
    /// `--exclude`: names, `@tags` or globs removed from the selection.
    pub exclude: Vec<String>,
}

impl Selection {
    /// True when no word needs the inventory: the run can go ahead on a
    /// flake that has no `deployFlake` output.
    pub fn works_without_inventory(&self) -> bool {
        !self.all
            && self.exclude.is_empty()
            && !self.hosts.is_empty()
            && self.hosts.iter().all(|w| {
                w.starts_with("nixos://")
                    || (!w.starts_with('@') && (w.contains('@') || !has_glob_meta(w)))
            })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SelectError {
    #[error(transparent)]
    Inventory(#[from] InventoryError),

    #[error("no hosts selected: name hosts, @tags or globs, or pass --all (see --help)")]
    NothingSelected,

    #[error("every selected host was excluded by --exclude")]
    AllExcluded,

    #[error("unknown host `{word}`{hint}")]
    UnknownHost { word: String, hint: String },

    #[error("no host has tag `@{tag}`{hint}")]
    UnknownTag { tag: String, hint: String },

    #[error("`{pattern}` matches no host in deployFlake (hosts: {known})")]
    GlobMatchesNothing { pattern: String, known: String },

    #[error("`{pattern}` is not a valid glob: {reason}")]
    BadGlob { pattern: String, reason: String },

    #[error("`{word}` needs the flake's deployFlake output, which it does not have; name ad hoc destinations (nixos://[user@]host[:port][/config]) instead, or add deployFlake to flake.nix")]
    NeedsInventory { word: String },

    #[error("`{dest}` is not a valid destination: {reason} (expected nixos://[user@]host[:port][/config])")]
    BadDestination { dest: String, reason: String },
}

/// Evaluates the inventory of `flake` (when needed) and selects from it.
/// A flake without `deployFlake` is fine when only ad hoc destinations are
/// named.
pub async fn load_and_select(
    flake: &str,
    selection: &Selection,
    eval_timeout: std::time::Duration,
) -> Result<Vec<Target>, SelectError> {
    Ok(load(flake, selection, eval_timeout).await?.1)
}

/// The same, with the inventory (`None`: the flake has none).
pub async fn load(
    flake: &str,
    selection: &Selection,
    eval_timeout: std::time::Duration,
) -> Result<(Option<Inventory>, Vec<Target>), SelectError> {
    match inventory::load(flake, eval_timeout).await {
        Ok(inv) => {
            let targets = select(Some(&inv), selection)?;
            Ok((Some(inv), targets))
        }
        Err(InventoryError::NoDeployFlake { .. }) if selection.works_without_inventory() => {
            Ok((None, select(None, selection)?))
        }
        Err(e) => Err(e.into()),
    }
}

/// Resolves a selection against an inventory (`None`: the flake has no
/// `deployFlake` output). Pure.
pub fn select(inv: Option<&Inventory>, sel: &Selection) -> Result<Vec<Target>, SelectError> {
    if !sel.all && sel.hosts.is_empty() {
        return Err(SelectError::NothingSelected);
    }
    let mut chosen: BTreeSet<&str> = BTreeSet::new();
    let mut ad_hoc: Vec<Target> = Vec::new();
    if sel.all {
        let inv = inv.ok_or_else(|| SelectError::NeedsInventory { word: "--all".into() })?;
        chosen.extend(inv.hosts.keys().map(String::as_str));
    }
    for word in &sel.hosts {
        match resolve_word(inv, word)? {
            Resolved::Hosts(names) => chosen.extend(names),
            Resolved::AdHoc(t) => {
                if !ad_hoc.iter().any(|a| a.name == t.name) {
                    ad_hoc.push(*t)
                }
            }
        }
    }
    for word in &sel.exclude {
        if ad_hoc.iter().any(|t| t.name == *word) {
            ad_hoc.retain(|t| t.name != *word);
            continue;
        }
        let inv =
            inv.ok_or_else(|| SelectError::NeedsInventory { word: format!("--exclude {word}") })?;
        for name in match_pattern(inv, word)? {
            chosen.remove(name);
        }
    }
    let mut targets: Vec<Target> = match inv {
        Some(inv) => chosen
            .into_iter()
            .map(|name| Target { name: name.to_string(), spec: inv.hosts[name].clone() })
            .collect(),
        None => Vec::new(),
    };
    targets.extend(ad_hoc);
    if targets.is_empty() {
        return Err(if sel.exclude.is_empty() {
            SelectError::NothingSelected
        } else {
            SelectError::AllExcluded
        });
    }
    Ok(targets)
}

enum Resolved<'a> {
    Hosts(Vec<&'a str>),
    AdHoc(Box<Target>),
}

fn resolve_word<'a>(inv: Option<&'a Inventory>, word: &str) -> Result<Resolved<'a>, SelectError> {
    if let Some(rest) = word.strip_prefix("nixos://") {
        return ad_hoc(inv, word, rest).map(|t| Resolved::AdHoc(Box::new(t)));
    }
    if word.starts_with('@') {
        let inv = inv.ok_or_else(|| SelectError::NeedsInventory { word: word.into() })?;
        return match_pattern(inv, word).map(Resolved::Hosts);
    }
    if let Some(inv) = inv {
        if let Some((name, _)) = inv.hosts.get_key_value(word) {
            return Ok(Resolved::Hosts(vec![name.as_str()]));
        }
    }
    if word.contains('@') {
        return ad_hoc(inv, word, word).map(|t| Resolved::AdHoc(Box::new(t)));
    }
    match inv {
        Some(inv) => match_pattern(inv, word).map(Resolved::Hosts),
        None if has_glob_meta(word) => Err(SelectError::NeedsInventory { word: word.into() }),
        None => ad_hoc(None, word, word).map(|t| Resolved::AdHoc(Box::new(t))),
    }
}

/// Inventory hosts matched by a name, `@tag` or glob; at least one.
pub fn match_pattern<'a>(inv: &'a Inventory, word: &str) -> Result<Vec<&'a str>, SelectError> {
    if let Some(tag) = word.strip_prefix('@') {
        let names: Vec<&str> = inv
            .hosts
            .iter()
            .filter(|(_, h)| h.tags.iter().any(|t| t == tag))
            .map(|(n, _)| n.as_str())
            .collect();
        if names.is_empty() {
            let tags: BTreeSet<&str> =
                inv.hosts.values().flat_map(|h| h.tags.iter().map(String::as_str)).collect();
            return Err(SelectError::UnknownTag {
                tag: tag.into(),
                hint: closest_hint(tag, tags.into_iter(), "tags", "@"),
            });
        }
        return Ok(names);
    }
    if let Some((name, _)) = inv.hosts.get_key_value(word) {
        return Ok(vec![name.as_str()]);
    }
    if has_glob_meta(word) {
        let pattern = Pattern::new(word).map_err(|e| SelectError::BadGlob {
            pattern: word.into(),
            reason: e.msg.to_string(),
        })?;
        let names: Vec<&str> =
            inv.hosts.keys().filter(|n| pattern.matches(n)).map(String::as_str).collect();
        if names.is_empty() {
            return Err(SelectError::GlobMatchesNothing {
                pattern: word.into(),
                known: list_some(inv.hosts.keys().map(String::as_str)),
            });
        }
        return Ok(names);
    }
    let mut hint = closest_hint(word, inv.hosts.keys().map(String::as_str), "hosts", "");
    hint.push_str(" (for a host outside deployFlake, write nixos://HOST or USER@HOST)");
    Err(SelectError::UnknownHost { word: word.into(), hint })
}

fn has_glob_meta(s: &str) -> bool {
    s.contains(['*', '?', '['])
}

/// ": did you mean `web1`, `web2`?" or ": known hosts: ..." (first few).
fn closest_hint<'a>(
    word: &str,
    candidates: impl Iterator<Item = &'a str>,
    what: &str,
    prefix: &str,
) -> String {
    let all: Vec<&str> = candidates.collect();
    if all.is_empty() {
        return format!(": there are no {what}");
    }
    // Close by edit distance (typos, transpositions) or by shared prefix.
    let limit = (word.chars().count() / 3).max(1);
    let mut scored: Vec<(usize, f64, &str)> = all
        .iter()
        .map(|c| (strsim::damerau_levenshtein(word, c), strsim::jaro_winkler(word, c), *c))
        .filter(|(d, jw, _)| *d <= limit || *jw >= 0.8)
        .collect();
    scored.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.total_cmp(&a.1)).then(a.2.cmp(b.2)));
    if scored.is_empty() {
        let listed: Vec<String> = all.iter().map(|c| format!("{prefix}{c}")).collect();
        format!(": known {what}: {}", list_some(listed.iter().map(String::as_str)))
    } else {
        let names: Vec<String> =
            scored.iter().take(3).map(|(_, _, c)| format!("`{prefix}{c}`")).collect();
        format!(": did you mean {}?", names.join(", "))
    }
}

/// The first ten names, then "... (N more)".
fn list_some<'a>(names: impl Iterator<Item = &'a str>) -> String {
    let names: Vec<&str> = names.collect();
    let mut s = names.iter().take(10).map(|n| format!("`{n}`")).collect::<Vec<_>>().join(", ");
    if names.len() > 10 {
        s.push_str(&format!(", ... ({} more)", names.len() - 10));
    }
    s
}

// ---------------------------------------------------------------------------
// Ad hoc destinations

/// The parts of `[user@]host[:port][/config]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub user: Option<String>,
    pub host: String,
    pub port: Option<u16>,
    pub config: Option<String>,
}

/// Parses `[user@]host[:port][/config]` (the part after `nixos://`). IPv6
/// addresses go in brackets when a port follows (`[fe80::1]:2222`); a bare
/// address with several colons is taken whole.
pub fn parse_destination(dest: &str) -> Result<Destination, String> {
    let (authority, config) = match dest.split_once('/') {
        Some((a, c)) => (a, Some(c)),
        None => (dest, None),
    };
    let (user, hostport) = match authority.rsplit_once('@') {
        Some((u, h)) => (Some(u), h),
        None => (None, authority),
    };
    let (host, port) = if let Some(rest) = hostport.strip_prefix('[') {
        let (host, after) =
            rest.split_once(']').ok_or_else(|| "missing ']' after an IPv6 address".to_string())?;
        match after {
            "" => (host, None),
            _ => match after.strip_prefix(':') {
                Some(p) => (host, Some(p)),
                None => return Err(format!("unexpected `{after}` after ']'")),
            },
        }
    } else if hostport.matches(':').count() == 1 {
        let (h, p) = hostport.split_once(':').unwrap_or((hostport, ""));
        (h, Some(p))
    } else {
        (hostport, None)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n > 0 => Some(n),
            _ => return Err(format!("port `{p}` is not a number in 1..65535")),
        },
    };
    if let Some(u) = user {
        if let Some(p) = rules::string_problem("sshUser", u) {
            return Err(format!("user `{u}` {p}"));
        }
    }
    if let Some(p) = rules::string_problem("hostname", host) {
        return Err(format!("host `{host}` {p}"));
    }
    let config = match config {
        None | Some("") => None,
        Some(c) => {
            if let Some(p) = rules::string_problem("configuration", c) {
                return Err(format!("configuration `{c}` {p}"));
            }
            Some(c.to_string())
        }
    };
    Ok(Destination { user: user.map(str::to_string), host: host.to_string(), port, config })
}

fn ad_hoc(inv: Option<&Inventory>, word: &str, dest: &str) -> Result<Target, SelectError> {
    let d = parse_destination(dest)
        .map_err(|reason| SelectError::BadDestination { dest: word.into(), reason })?;
    let config = d.config.clone().unwrap_or_else(|| d.host.clone());
    let mut spec = match inv.and_then(|i| i.hosts.get(&config)) {
        Some(h) => h.clone(),
        None => HostSpec::with_defaults(&config),
    };
    spec.hostname = d.host;
    if let Some(u) = d.user {
        spec.ssh_user = u;
    }
    if let Some(p) = d.port {
        spec.ssh_port = p;
    }
    Ok(Target { name: word.to_string(), spec })
}
