//! Fixture flakes: a copy of tests/fixtures/lab (the NixOS stand-in
//! configurations) plus the repository's lib/ and a generated hosts.nix.

use std::fs;
use std::path::Path;

use super::{copy_lib, copy_tree, eval_expr, nix_path, repo_root};

/// Writes a self-contained fixture flake into `dir` (which must not exist).
pub fn write_fixture(dir: &Path, hosts_nix: &str) {
    assert!(!dir.exists(), "{} exists already", dir.display());
    copy_tree(&repo_root().join("tests/fixtures/lab"), dir);
    copy_lib(dir);
    // Lock files and results of manual runs in the template are not copied on.
    let _ = fs::remove_file(dir.join("flake.lock"));
    let _ = fs::remove_file(dir.join("result"));
    fs::write(dir.join("hosts.nix"), hosts_nix)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", dir.join("hosts.nix").display()));
}

/// The scenario names of tests/fixtures/scenarios.nix, sorted.
pub fn scenario_names() -> Vec<String> {
    let file = repo_root().join("tests/fixtures/scenarios.nix");
    let names = eval_expr(&format!("builtins.attrNames (import {})", nix_path(&file)))
        .unwrap_or_else(|e| panic!("reading the scenario names failed:\n{e}"));
    serde_json::from_value(names).expect("scenario names are strings")
}
