//! The dependency order of `src/`'s top-level modules, checked: every
//! `crate::…` reference of every file (comments aside) is an edge from the
//! module the file belongs to (`src/X.rs` or `src/X/`) to the module it
//! names. The order is the module map's in `docs/architecture.md`: a module
//! may use the modules listed after it. A circle (modules that reach one
//! another) or an import up the list is a fault unless it is written in the
//! lists below with its reason; a listed one that no longer exists is a
//! fault too, so the lists only shrink.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The circles that remain, each with its reason: the modules of each, in
/// the map's order.
const CIRCLES: &[(&str, &str)] = &[];

/// The imports up the list that remain, each with its reason: `FROM -> TO`.
const UPWARD: &[(&str, &str)] = &[];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// The top-level entries of the module map (`name.rs` or `name/` at no
/// indentation), as module names, in their order; `main` and `lib` aside.
fn order(doc: &str) -> Vec<String> {
    let start = doc.find("## Module map").expect("a \"## Module map\" section");
    let block = &doc[start..];
    let open = block.find("```\n").expect("a code block in the module map") + 4;
    let close = block[open..].find("```").expect("the module map's block closed");
    let mut names = Vec::new();
    for line in block[open..open + close].lines() {
        if line.starts_with(' ') {
            continue;
        }
        let Some(word) = line.split_whitespace().next() else { continue };
        let Some(name) = word.strip_suffix(".rs").or(word.strip_suffix('/')) else { continue };
        if name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            && name != "main"
            && name != "lib"
        {
            names.push(name.to_string());
        }
    }
    names
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

fn ident(text: &str) -> &str {
    let end = text.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(text.len());
    &text[..end]
}

/// The top-level modules a text names through `crate::` (`crate::x::…`,
/// `crate::{x, y::…}`), comment lines aside.
fn references(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let code: Vec<&str> = text.lines().filter(|l| !l.trim_start().starts_with("//")).collect();
    let code = code.join("\n");
    {
        let mut rest = code.as_str();
        while let Some(at) = rest.find("crate::") {
            let before = rest[..at].chars().next_back();
            let after = &rest[at + "crate::".len()..];
            rest = after;
            if before.is_some_and(|c| c == '$' || c == '_' || c.is_ascii_alphanumeric()) {
                continue;
            }
            if let Some(group) = after.strip_prefix('{') {
                let mut depth = 0;
                let mut item = true;
                for (i, c) in group.char_indices() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => item = true,
                        c if item && (c.is_ascii_alphabetic() || c == '_') => {
                            out.insert(ident(&group[i..]).to_string());
                            item = false;
                        }
                        _ => {}
                    }
                }
            } else if !ident(after).is_empty() {
                out.insert(ident(after).to_string());
            }
        }
    }
    out
}

/// Each edge between two top-level modules, with the first file that makes it.
fn graph() -> BTreeMap<(String, String), String> {
    let src = root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut edges = BTreeMap::new();
    for path in files {
        let name = path.strip_prefix(&src).unwrap().display().to_string();
        let first = name.split('/').next().unwrap();
        let from = first.strip_suffix(".rs").unwrap_or(first);
        if from == "main" || from == "lib" {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap();
        for to in references(&text) {
            if to != from {
                edges.entry((from.to_string(), to)).or_insert_with(|| name.clone());
            }
        }
    }
    edges
}

/// The strongly connected components of more than one module, each in `order`.
fn circles(order: &[String], edges: &BTreeMap<(String, String), String>) -> Vec<String> {
    let reach = |start: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![start.to_string()];
        while let Some(m) = todo.pop() {
            for (from, to) in edges.keys() {
                if *from == m && seen.insert(to.clone()) {
                    todo.push(to.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&str, BTreeSet<String>> =
        order.iter().map(|m| (m.as_str(), reach(m))).collect();
    let mut found = Vec::new();
    let mut placed = BTreeSet::new();
    for m in order {
        if placed.contains(m) || !reaches[m.as_str()].contains(m) {
            continue;
        }
        let members: Vec<&str> = order
            .iter()
            .filter(|o| reaches[m.as_str()].contains(*o) && reaches[o.as_str()].contains(m))
            .map(String::as_str)
            .collect();
        placed.extend(members.iter().map(|s| s.to_string()));
        found.push(members.join(" "));
    }
    found
}

fn compare(
    what: &str,
    found: &BTreeMap<String, String>,
    listed: &[(&str, &str)],
    faults: &mut Vec<String>,
) {
    let listed: BTreeSet<&str> = listed.iter().map(|(k, _)| *k).collect();
    for (key, why) in found {
        if !listed.contains(key.as_str()) {
            faults.push(format!("new {what}: {key} ({why})"));
        }
    }
    for key in listed {
        if !found.contains_key(key) {
            faults.push(format!("listed {what} no longer exists, strike it from the list: {key}"));
        }
    }
}

#[test]
fn the_modules_depend_down_the_module_map_but_for_the_listed_exceptions() {
    let doc = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let order = order(&doc);
    assert!(order.len() > 20, "read the module map's order: {order:?}");
    let edges = graph();
    assert!(edges.len() > 20, "read the edges: {edges:?}");
    let mut faults = Vec::new();
    let position = |m: &str| order.iter().position(|o| o == m);
    for ((from, to), file) in &edges {
        for m in [from, to] {
            if position(m).is_none() {
                faults.push(format!(
                    "{m} (used in {file}) is not a top-level entry of the module map"
                ));
            }
        }
    }
    let upward: BTreeMap<String, String> = edges
        .iter()
        .filter(|((from, to), _)| position(to) < position(from))
        .map(|((from, to), file)| (format!("{from} -> {to}"), format!("in {file}")))
        .collect();
    let circles: BTreeMap<String, String> = circles(&order, &edges)
        .into_iter()
        .map(|c| (c, "modules that reach one another".into()))
        .collect();
    eprintln!("{} circles, {} upward imports", circles.len(), upward.len());
    compare("circle", &circles, CIRCLES, &mut faults);
    compare("upward import", &upward, UPWARD, &mut faults);
    assert!(faults.is_empty(), "the module graph:\n  {}", faults.join("\n  "));
}

#[test]
fn the_reader_finds_paths_groups_and_skips_comments() {
    let text = "use crate::a::B;\nuse crate::{c, d::{E, F}, e};\n// crate::g\nlet x = crate::h::f();\n$crate::i\n\
                use crate::{\n    j::K,\n    // crate::l\n    m,\n};\n";
    let found: Vec<String> = references(text).into_iter().collect();
    assert_eq!(found, ["a", "c", "d", "e", "h", "j", "m"]);
}

#[test]
fn circles_are_the_modules_that_reach_one_another() {
    let order: Vec<String> = ["a", "b", "c", "d"].map(String::from).to_vec();
    let edge = |f: &str, t: &str| ((f.to_string(), t.to_string()), String::new());
    let edges: BTreeMap<_, _> =
        [edge("a", "b"), edge("b", "c"), edge("c", "a"), edge("c", "d")].into();
    assert_eq!(circles(&order, &edges), ["a b c"]);
}
