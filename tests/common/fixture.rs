//! Fixture flakes: a copy of tests/fixtures/lab (the NixOS stand-in
//! configurations) plus the repository's lib/ and a generated hosts.nix.

use std::fs;
use std::path::Path;
use std::process::Command;

use super::{repo_root, run_ok};

/// Writes a self-contained fixture flake into `dir` (which must not exist).
pub fn write_fixture(dir: &Path, hosts_nix: &str) {
    let template = repo_root().join("tests/fixtures/lab");
    let lib = repo_root().join("lib");
    assert!(lib.join("default.nix").is_file(), "{} has no default.nix", lib.display());
    run_ok(Command::new("cp").arg("-r").arg(&template).arg(dir));
    run_ok(Command::new("cp").arg("-r").arg(&lib).arg(dir.join("lib")));
    // Lock files and results of manual runs in the template are not copied on.
    let _ = fs::remove_file(dir.join("flake.lock"));
    let _ = fs::remove_file(dir.join("result"));
    fs::write(dir.join("hosts.nix"), hosts_nix)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", dir.join("hosts.nix").display()));
}

/// `s` as a Nix string literal.
pub use deploy_flake::plan::nix_string;

/// The scenario names of tests/fixtures/scenarios.nix, sorted.
pub fn scenario_names() -> Vec<String> {
    let file = repo_root().join("tests/fixtures/scenarios.nix");
    let out = run_ok(
        Command::new("nix-instantiate")
            .args(["--eval", "--strict", "--json", "-E"])
            .arg(format!("builtins.attrNames (import {})", file.display())),
    );
    serde_json::from_str(&out).expect("scenario names as JSON")
}
