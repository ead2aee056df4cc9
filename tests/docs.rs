//! The docs, checked against the code they describe: `docs/architecture.md`'s
//! module map against the files in `src/`, and the lists of events, outcomes
//! and reasons in the README and `docs/architecture.md` against the enums of
//! `src/events/mod.rs` (read from its text, each word checked through serde
//! where the type can parse one).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn read(path: &str) -> String {
    std::fs::read_to_string(root().join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every file under `dir`, as a path relative to `src/`.
fn files(dir: &Path, src: &Path, out: &mut BTreeSet<String>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files(&path, src, out);
        } else {
            out.insert(path.strip_prefix(src).unwrap().display().to_string());
        }
    }
}

/// A name in the module map: `name.rs`, `name.sh` or `name/`.
fn is_entry(word: &str) -> bool {
    let stem = word.strip_suffix(".rs").or(word.strip_suffix(".sh")).or(word.strip_suffix('/'));
    // (The agent's files are numbered: `00-head.sh`.)
    let name_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-';
    stem.is_some_and(|s| !s.is_empty() && s.chars().all(name_char))
}

/// The module map: the paths (relative to `src/`) it names. An entry is a
/// line whose first word is a name (several, comma-separated, share one
/// description); two spaces of indentation per level; the entries under
/// `x.rs` or `x/` live in `src/.../x/`. Any other line continues a
/// description.
fn module_map(doc: &str) -> Result<Vec<String>, String> {
    let start = doc.find("## Module map").ok_or("no \"## Module map\" section")?;
    let block = &doc[start..];
    let open = block.find("```\n").ok_or("no code block in the module map")? + 4;
    let close = block[open..].find("```").ok_or("the module map's block is not closed")?;
    let mut named = Vec::new();
    // The folder of each level: stack[d] is the folder of entries at depth d.
    let mut stack: Vec<String> = vec![String::new()];
    for line in block[open..open + close].lines() {
        let text = line.trim_start();
        let indent = line.len() - text.len();
        let mut words = Vec::new();
        for word in text.split_whitespace() {
            let bare = word.trim_end_matches(',');
            if !is_entry(bare) {
                break;
            }
            words.push(bare.to_string());
            if bare == word {
                break;
            }
        }
        if words.is_empty() {
            continue;
        }
        if indent % 2 != 0 || indent / 2 >= stack.len() {
            return Err(format!("module map: {line:?} is indented deeper than its parent"));
        }
        let depth = indent / 2;
        stack.truncate(depth + 1);
        let folder = stack[depth].clone();
        for word in &words {
            named.push(format!("{folder}{word}"));
        }
        let last = &words[words.len() - 1];
        let below = last.trim_end_matches(".rs").trim_end_matches('/');
        stack.push(format!("{folder}{below}/"));
    }
    Ok(named)
}

#[test]
fn the_module_map_names_every_file_in_src_and_nothing_else() {
    let src = root().join("src");
    let mut present = BTreeSet::new();
    files(&src, &src, &mut present);
    assert!(present.len() > 20, "found the sources: {present:?}");
    let named = module_map(&read("docs/architecture.md")).unwrap();
    let mut faults = Vec::new();
    for name in &named {
        let exists = match name.strip_suffix('/') {
            Some(dir) => src.join(dir).is_dir(),
            None => src.join(name).is_file(),
        };
        if !exists {
            faults.push(format!("named but not in src/: {name}"));
        }
    }
    let named: BTreeSet<&str> = named.iter().map(String::as_str).collect();
    for file in &present {
        if !named.contains(file.as_str()) {
            faults.push(format!("in src/ but not in the module map: {file}"));
        }
    }
    assert!(faults.is_empty(), "docs/architecture.md's module map:\n  {}", faults.join("\n  "));
}

/// The variants of `pub enum NAME` in `text`, as their kebab-case words
/// (`#[serde(rename_all = "kebab-case")]` on each enum read here).
fn variants(text: &str, name: &str) -> Vec<String> {
    let head = format!("pub enum {name} {{");
    let start = text.find(&head).unwrap_or_else(|| panic!("no `{head}` in src/events/mod.rs"));
    let before = &text[..start];
    let attrs = &before[before.rfind("\n\n").unwrap_or(0)..];
    assert!(attrs.contains(r#"rename_all = "kebab-case""#), "{name} is not kebab-case: {attrs}");
    let body = &text[start + head.len()..];
    let body = &body[..body.find("\n}").unwrap()];
    body.lines()
        .filter(|l| l.starts_with("    ") && !l.starts_with("     "))
        .map(str::trim)
        .filter(|l| !l.starts_with("//") && !l.starts_with("#[") && !l.starts_with('}'))
        .map(|l| kebab(l.split([',', ' ', '{', '(']).next().unwrap()))
        .collect()
}

fn kebab(camel: &str) -> String {
    let mut out = String::new();
    for (i, c) in camel.chars().enumerate() {
        if c.is_ascii_uppercase() && i > 0 {
            out.push('-');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The words in backticks between `lead` and the first `end` outside
/// backticks after it (whitespace taken as one space).
fn listed(doc: &str, file: &str, lead: &str, end: char) -> Result<Vec<String>, String> {
    let doc = doc.split_whitespace().collect::<Vec<_>>().join(" ");
    let at = doc.find(lead).ok_or_else(|| format!("{file}: no list after {lead:?}"))?;
    let mut words = Vec::new();
    let mut quoted: Option<String> = None;
    for c in doc[at + lead.len()..].chars() {
        match (&mut quoted, c) {
            (Some(word), '`') => {
                words.push(std::mem::take(word));
                quoted = None;
            }
            (Some(word), c) => word.push(c),
            (None, '`') => quoted = Some(String::new()),
            (None, c) if c == end => return Ok(words),
            (None, _) => {}
        }
    }
    Err(format!("{file}: no {end:?} after {lead:?}"))
}

/// `what` in `file` lists exactly `want`, and each word once.
fn same(
    file: &str,
    what: &str,
    got: Result<Vec<String>, String>,
    want: &[String],
    faults: &mut Vec<String>,
) {
    let got = match got {
        Ok(got) => got,
        Err(e) => return faults.push(e),
    };
    let got_set: BTreeSet<&String> = got.iter().collect();
    let want_set: BTreeSet<&String> = want.iter().collect();
    let missing: Vec<_> = want_set.difference(&got_set).collect();
    let unknown: Vec<_> = got_set.difference(&want_set).collect();
    if !missing.is_empty() {
        faults.push(format!("{file}: {what}: missing {missing:?}"));
    }
    if !unknown.is_empty() {
        faults.push(format!("{file}: {what}: no such {unknown:?}"));
    }
    if got.len() != got_set.len() {
        faults.push(format!("{file}: {what}: a word listed twice in {got:?}"));
    }
}

#[test]
fn the_docs_list_exactly_the_events_outcomes_and_reasons_of_the_code() {
    let code = read("src/events/mod.rs");
    let events = variants(&code, "Event");
    let outcomes = variants(&code, "Outcome");
    let reasons = variants(&code, "Reason");
    assert!(events.len() > 5 && outcomes.len() > 5 && reasons.len() > 20, "read the enums");
    for word in &reasons {
        assert!(deploy_flake::events::Reason::parse(word).is_some(), "{word}: not a reason");
    }
    let words = deploy_flake::events::Outcome::ALL.map(|o| o.as_str().to_string());
    assert_eq!(words.as_slice(), outcomes, "the outcomes read from src/events/mod.rs");
    // The reason table in events/mod.rs itself.
    let table: Vec<String> = code
        .lines()
        .filter_map(|l| l.strip_prefix("/// | `"))
        .map(|l| l[..l.find('`').unwrap()].to_string())
        .collect();

    let readme = read("README.md");
    let arch = read("docs/architecture.md");
    let mut faults = Vec::new();
    let f = &mut faults;
    same("src/events/mod.rs", "reason table", Ok(table), &reasons, f);
    let r = "README.md";
    same(r, "events", listed(&readme, r, "its `event` is one of", '.'), &events, f);
    same(r, "outcomes", listed(&readme, r, "the host's `outcome` (", ')'), &outcomes, f);
    same(r, "reasons", listed(&readme, r, "The reasons:", '('), &reasons, f);
    let a = "docs/architecture.md";
    same(a, "events", listed(&arch, a, "is all the engine says:", '.'), &events, f);
    same(a, "outcomes", listed(&arch, a, "the host's `outcome` (", ')'), &outcomes, f);
    assert!(faults.is_empty(), "the docs and src/events/mod.rs differ:\n  {}", faults.join("\n  "));
}

#[test]
fn the_module_map_reader_reads_nesting_lists_and_continued_lines() {
    let doc = "## Module map\n\n```\nmain.rs   the start\ncli.rs    flags (cli/: x)\n  a.rs      one\nb/        a folder\n  mod.rs    its root\n  c/        deeper\n    d.rs, e.rs   two\n            a description going on\n  f.sh      a script\n```\n";
    let got = module_map(doc).unwrap();
    let want = [
        "main.rs", "cli.rs", "cli/a.rs", "b/", "b/mod.rs", "b/c/", "b/c/d.rs", "b/c/e.rs", "b/f.sh",
    ];
    assert_eq!(got, want);
    let bad = "## Module map\n```\na.rs  x\n    b.rs  too deep\n```\n";
    assert!(module_map(bad).is_err());
}

/// Every `src/...` path named in the docs, in `lib/` and in the sources'
/// own comments exists (a file that became a folder is named as the folder).
#[test]
fn every_src_path_the_docs_and_lib_name_exists() {
    let mut texts = vec!["README.md".to_string(), "docs/architecture.md".to_string()];
    texts.push("tests/lab/README.md".to_string());
    let mut more = BTreeSet::new();
    for dir in ["lib", "src"] {
        files(&root().join(dir), &root(), &mut more);
    }
    texts.extend(more.into_iter().filter(|f| !f.ends_with(".json") || f.starts_with("lib/")));
    let mut faults = Vec::new();
    for file in &texts {
        let text = read(file);
        for (at, _) in text.match_indices("src/") {
            if text[..at].ends_with(|c: char| c.is_alphanumeric() || c == '/' || c == '_') {
                continue;
            }
            let path: String = text[at..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || matches!(c, '/' | '_' | '.' | '-'))
                .collect();
            let path = path.trim_end_matches('.');
            if !root().join(path).exists() {
                faults.push(format!("{file}: {path}"));
            }
        }
    }
    assert!(faults.is_empty(), "named, but no such path:\n  {}", faults.join("\n  "));
}
