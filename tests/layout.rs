//! The shape of the source tree, checked: files and functions small enough
//! to read whole (the on-target agent's shell functions too), and the
//! agent's protocol in one Rust file.

use std::path::{Path, PathBuf};

const MAX_FILE_LINES: usize = 600;
const MAX_FN_LINES: usize = 70;

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

fn sources() -> Vec<(String, String)> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    assert!(files.len() > 10, "found the sources");
    files
        .into_iter()
        .map(|p| {
            let name = p.strip_prefix(&src).unwrap().display().to_string();
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect()
}

/// `(first line, length)` of every function with a body: from its `fn`
/// line to the `}` at the same indentation (the code is rustfmt-formatted);
/// no length when that `}` is not found.
fn functions(text: &str) -> Vec<(usize, Option<usize>, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let code = line.trim_start();
        let indent = &line[..line.len() - code.len()];
        let words: Vec<&str> = code.split_whitespace().collect();
        let Some(at) = words.iter().position(|w| *w == "fn") else { continue };
        let qualifiers = ["pub", "pub(crate)", "pub(super)", "async", "const", "unsafe"];
        if !words[..at].iter().all(|w| qualifiers.contains(w)) {
            continue;
        }
        // A declaration without a body ends with `;` before any `{`.
        let rest =
            lines[i..].iter().take_while(|l| !l.contains('{')).any(|l| l.trim_end().ends_with(';'));
        if rest {
            continue;
        }
        let end = lines[i..].iter().position(|l| {
            *l == format!("{indent}}}")
                || (l.trim_end().ends_with('}') && l.starts_with(&format!("{indent}fn")))
        });
        let name = words[at + 1].split(['(', '<']).next().unwrap().to_string();
        out.push((i + 1, end.map(|e| e + 1), name));
    }
    out
}

#[test]
fn no_source_file_is_longer_than_600_lines() {
    let long: Vec<String> = sources()
        .into_iter()
        .filter(|(_, text)| text.lines().count() > MAX_FILE_LINES)
        .map(|(name, text)| format!("{name}: {} lines", text.lines().count()))
        .collect();
    assert!(long.is_empty(), "split these files: {long:?}");
}

#[test]
fn no_function_is_longer_than_70_lines() {
    let mut long = Vec::new();
    for (name, text) in sources() {
        for (line, len, f) in functions(&text) {
            match len {
                Some(len) if len <= MAX_FN_LINES => {}
                Some(len) => long.push(format!("{name}:{line} {f}: {len} lines")),
                None => long.push(format!("{name}:{line} {f}: its end was not found")),
            }
        }
    }
    assert!(long.is_empty(), "split these functions: {long:#?}");
}

#[test]
fn the_function_finder_finds_functions() {
    let text = "fn a() {\n    x();\n}\n\n    pub async fn b(\n        y: u8,\n    ) -> u8 {\n        y\n    }\n\ntrait T {\n    fn c(&self);\n}\n\nfn d() {\n    x();\n } \n";
    let found = functions(text);
    let want = [(1, Some(3), "a"), (5, Some(5), "b"), (15, None, "d")];
    assert_eq!(found, want.map(|(line, len, name)| (line, len, name.to_string())));
}

/// The agent's shell functions are shorter than Rust's: each does one step
/// of what runs as root on every host, with no types to lean on.
const MAX_AGENT_FN_LINES: usize = 40;
/// And each of its files is one topic.
const MAX_AGENT_FILE_LINES: usize = 400;

/// `(first line, length, name)` of every function of a shell script: from
/// its `name() {` line to the first `}` alone on a line (the agent's
/// functions are written so, their bodies indented); no length when that
/// `}` is not found, or a line between them is not indented (not blank, a
/// comment or part of the body: the function's end was missed).
fn shell_functions(text: &str) -> Vec<(usize, Option<usize>, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    for (i, line) in lines.iter().enumerate() {
        let Some(name) = line.strip_suffix("() {") else { continue };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let body = |l: &&str| l.is_empty() || l.starts_with([' ', '\t']);
        let end = lines[i + 1..]
            .iter()
            .position(|l| !body(l))
            .filter(|&e| lines[i + 1 + e] == "}")
            .map(|e| e + 2);
        out.push((i + 1, end, name.to_string()));
    }
    out
}

/// The agent's files (`src/agent/sh/*.sh`), in the order they are joined,
/// with their text.
fn agent_parts() -> Vec<(String, String)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/agent/sh");
    let mut parts: Vec<(String, String)> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "sh"))
        .map(|p| {
            let name = format!("agent/sh/{}", p.file_name().unwrap().to_str().unwrap());
            (name, std::fs::read_to_string(&p).unwrap())
        })
        .collect();
    parts.sort();
    assert!(parts.len() > 5, "found the agent's files: {}", parts.len());
    parts
}

#[test]
fn no_agent_function_is_longer_than_40_lines() {
    let mut long = Vec::new();
    let mut count = 0;
    for (name, text) in agent_parts() {
        for (line, len, f) in shell_functions(&text) {
            count += 1;
            match len {
                Some(len) if len <= MAX_AGENT_FN_LINES => {}
                Some(len) => long.push(format!("{name}:{line} {f}: {len} lines")),
                None => long.push(format!("{name}:{line} {f}: its end was not found")),
            }
        }
    }
    assert!(count > 50, "found the agent's functions: {count}");
    assert!(long.is_empty(), "split these functions of the agent: {long:#?}");
}

#[test]
fn no_agent_file_is_longer_than_400_lines() {
    let long: Vec<String> = agent_parts()
        .into_iter()
        .filter(|(_, text)| text.lines().count() > MAX_AGENT_FILE_LINES)
        .map(|(name, text)| format!("{name}: {} lines", text.lines().count()))
        .collect();
    assert!(long.is_empty(), "split these files of the agent: {long:?}");
}

#[test]
fn the_shell_function_finder_finds_functions() {
    let text = "a() {
    x
}

# b() {
c_d() {
    y

    z
}
not a() {
e() {
    }
f() {
    g
h
}
";
    let found = shell_functions(text);
    let want = [(1, Some(3), "a"), (6, Some(5), "c_d"), (12, None, "e"), (14, None, "f")];
    assert_eq!(found, want.map(|(line, len, name)| (line, len, name.to_string())));
}

/// The agent's run-directory files, from the script's own header.
fn agent_files() -> Vec<String> {
    let script = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("src/agent/sh/00-head.sh"),
    )
    .unwrap();
    let header = script.split("# Per-run state lives in").nth(1).unwrap();
    let header = header.split("# A run only ever looks").next().unwrap();
    let files: Vec<String> = header
        .lines()
        .filter_map(|l| l.strip_prefix("#   ").filter(|rest| !rest.starts_with(' ')))
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect();
    assert!(files.len() >= 5, "{files:?}");
    files
}

#[test]
fn the_agent_protocol_lives_in_one_rust_file() {
    let mut needles: Vec<String> = agent_files().iter().map(|f| format!("\"{f}\"")).collect();
    let files = needles.len();
    needles.extend(
        [
            "\"deploy-flake-\"",
            "/run/deploy-flake",
            "deploy-flake-status",
            "deploy-flake-locked",
            "deploy-flake-busy",
        ]
        .map(String::from),
    );
    let mut found = Vec::new();
    for (name, text) in sources() {
        // The protocol's home, and unit tests, which replay its lines.
        if name == "agent/mod.rs" || name.ends_with("tests.rs") {
            continue;
        }
        for (i, n) in needles.iter().enumerate() {
            // The command line may name a subcommand like a run file
            // (`status`); its protocol words still belong to the agent.
            if name.starts_with("cli/") && i < files {
                continue;
            }
            if text.contains(n.as_str()) {
                found.push(format!("{name}: {n}"));
            }
        }
    }
    assert!(
        found.is_empty(),
        "the agent's file names and answers belong in src/agent/mod.rs: {found:?}"
    );
    let agent =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("src/agent/mod.rs"))
            .unwrap();
    // The files the deployer itself writes are named there.
    for f in ["confirmed", "abort"] {
        assert!(agent.contains(&format!("\"{f}\"")), "src/agent/mod.rs does not name the file {f}");
    }
}
