//! Which Nix a command talks to, and the flags that Nix wants: the one
//! place where a Nix version picks a command's flags, so that no command
//! the tool issues is deprecated on any Nix it supports (2.8 and later,
//! here and on targets). The deploying machine's version is asked once per
//! run ([`local`]); a target's comes with the host lock (the agent's
//! `hold`).

use tokio::sync::OnceCell;

use crate::process::{self, Cmd};

/// A Nix implementation and its version, from `nix --version`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NixVersion {
    pub flavor: Flavor,
    pub major: u32,
    pub minor: u32,
    pub patch: u32,
}

/// Whose Nix: CppNix (and Determinate Nix, which says the CppNix version
/// it is based on), or Lix, which numbers its releases 2.90 and up but
/// forked from Nix 2.18 and lacks what CppNix added since.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Nix,
    Lix,
}

impl NixVersion {
    /// Reads `nix --version`: `nix (Nix) 2.34.8`, `nix (Lix, like Nix)
    /// 2.93.0`, `nix (Determinate Nix 3.11.2) 2.31.2`; the last word that
    /// reads as a version is the one (a suffix like `pre2026…` is ignored).
    pub fn parse(text: &str) -> Option<NixVersion> {
        let line = text.lines().find(|l| !l.trim().is_empty())?;
        let flavor = if line.contains("Lix") { Flavor::Lix } else { Flavor::Nix };
        let (major, minor, patch) = line.split_whitespace().rev().find_map(numbers)?;
        Some(NixVersion { flavor, major, minor, patch })
    }

    /// This CppNix version or a later one (never Lix).
    fn nix_at_least(self, major: u32, minor: u32) -> bool {
        self.flavor == Flavor::Nix && (self.major, self.minor) >= (major, minor)
    }
}

/// `2.34.8`, `2.8.0`, `2.19pre2023…` -> the numbers (a missing patch is 0).
fn numbers(word: &str) -> Option<(u32, u32, u32)> {
    let mut parts = word.split('.');
    let lead = |s: &str| -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let major = parts.next().and_then(|s| s.parse().ok())?;
    let minor = parts.next().and_then(lead)?;
    let patch = parts.next().and_then(lead).unwrap_or(0);
    Some((major, minor, patch))
}

impl std::fmt::Display for NixVersion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = match self.flavor {
            Flavor::Nix => "Nix",
            Flavor::Lix => "Lix",
        };
        write!(f, "{name} {}.{}.{}", self.major, self.minor, self.patch)
    }
}

/// The arguments that make `nix path-info` print JSON, for this Nix (an
/// unknown one gets the plain flag, which every version takes). From Nix
/// 2.33 on, `--json` alone is deprecated ("will become an error in a future
/// release"): `--json-format 1` asks for the same document as Nix 2.19 to
/// 2.32 print, an object keyed by store path (each entry now also carries
/// `version` and `storeDir`, which the parser ignores). Before 2.19 it is a
/// list of objects with `path`; `nix::parse_path_info` reads both.
pub fn path_info_json(nix: Option<NixVersion>) -> &'static [&'static str] {
    match nix {
        Some(v) if v.nix_at_least(2, 33) => &["--json", "--json-format", "1"],
        _ => &["--json"],
    }
}

/// The deploying machine's Nix, asked once per run; `None` when `nix
/// --version` fails or says something unreadable (the flags every version
/// takes are used then).
pub async fn local() -> Option<NixVersion> {
    static LOCAL: OnceCell<Option<NixVersion>> = OnceCell::const_new();
    *LOCAL
        .get_or_init(|| async {
            let cmd = Cmd::new(["nix", "--version"]).secs(30).quiet_stdout();
            let out = process::run(&process::Local, &cmd, None).await.ok()?.check().ok()?;
            let version = NixVersion::parse(&out.stdout);
            tracing::debug!("this machine runs {}", shown(version, &out.stdout));
            version
        })
        .await
}

/// How a version is named in messages: parsed, or what Nix said.
pub fn shown(version: Option<NixVersion>, said: &str) -> String {
    match version {
        Some(v) => v.to_string(),
        None => format!("an unknown Nix ({:?})", said.trim()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> Option<NixVersion> {
        NixVersion::parse(text)
    }

    #[test]
    fn versions_are_read_from_nix_version() {
        let nix = |major, minor, patch| NixVersion { flavor: Flavor::Nix, major, minor, patch };
        let lix = |major, minor, patch| NixVersion { flavor: Flavor::Lix, major, minor, patch };
        for (text, expected) in [
            ("nix (Nix) 2.8.0\n", Some(nix(2, 8, 0))),
            ("nix (Nix) 2.26.3", Some(nix(2, 26, 3))),
            ("nix (Nix) 2.34.8", Some(nix(2, 34, 8))),
            ("nix (Nix) 2.19pre20231012_abcdef", Some(nix(2, 19, 0))),
            ("nix (Nix) 2.33.0pre20251101_0123abc", Some(nix(2, 33, 0))),
            ("nix (Determinate Nix 3.11.2) 2.31.2", Some(nix(2, 31, 2))),
            ("nix (Lix, like Nix) 2.93.3\nSystem type: x86_64-linux", Some(lix(2, 93, 3))),
            ("", None),
            ("nix: command not found", None),
        ] {
            assert_eq!(v(text), expected, "{text:?}");
        }
        assert_eq!(v("nix (Nix) 2.34.8").unwrap().to_string(), "Nix 2.34.8");
    }

    #[test]
    fn path_info_asks_for_the_json_format_where_nix_has_the_flag() {
        let json_only: &[&str] = &["--json"];
        let format_1: &[&str] = &["--json", "--json-format", "1"];
        for (text, expected) in [
            ("nix (Nix) 2.8.0", json_only),
            ("nix (Nix) 2.26.3", json_only),
            ("nix (Nix) 2.32.4", json_only),
            ("nix (Nix) 2.33.0", format_1),
            ("nix (Nix) 2.34.8", format_1),
            ("nix (Nix) 3.0.0", format_1),
            ("nix (Determinate Nix 3.14.0) 2.33.1", format_1),
            // Lix numbers past 2.33 but has no --json-format.
            ("nix (Lix, like Nix) 2.93.3", json_only),
            ("something else", json_only),
        ] {
            assert_eq!(path_info_json(v(text)), expected, "{text}");
        }
    }
}
