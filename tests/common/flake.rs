//! Temp flakes that `import ./lib`: fixtures and inline flakes with this
//! repository's Nix library copied in (a flake in a plain directory needs
//! no git), and the repository's own flake.

use std::fs;
use std::path::Path;

use super::repo_root;

/// Copies `from` into `to` (created as needed), directories recursively;
/// symlinks are copied as symlinks.
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let (source, target) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().expect("file type");
        if kind.is_dir() {
            copy_tree(&source, &target);
        } else if kind.is_symlink() {
            let link = fs::read_link(&source).expect("read link");
            std::os::unix::fs::symlink(&link, &target)
                .unwrap_or_else(|e| panic!("symlink {}: {e}", target.display()));
        } else {
            fs::copy(&source, &target).unwrap_or_else(|e| panic!("copy {}: {e}", source.display()));
        }
    }
}

/// Copies this repository's `lib/` (the .nix files and the rules.json they
/// read) to `dir/lib`.
pub fn copy_lib(dir: &Path) {
    let lib = dir.join("lib");
    copy_tree(&repo_root().join("lib"), &lib);
    assert!(lib.join("default.nix").is_file(), "{} has no default.nix", lib.display());
}

/// A temp dir holding the files of `tests/fixtures/inventory/<name>` and
/// `lib/`.
pub fn fixture_flake(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    copy_tree(&repo_root().join("tests/fixtures/inventory").join(name), dir.path());
    copy_lib(dir.path());
    dir
}

/// A temp flake whose `flake.nix` is `text`, with `lib/`.
pub fn flake_from(text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    fs::write(dir.path().join("flake.nix"), text).expect("write flake.nix");
    copy_lib(dir.path());
    dir
}

/// The files of this repository that its own flake reads, in a temp dir.
pub fn project_flake() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for file in ["flake.nix", "Cargo.toml", "Cargo.lock"] {
        fs::copy(repo_root().join(file), dir.path().join(file))
            .unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
    copy_lib(dir.path());
    copy_tree(&repo_root().join("checks"), &dir.path().join("checks"));
    fs::create_dir_all(dir.path().join("tests/fixtures")).expect("mkdir");
    fs::copy(
        repo_root().join("tests/fixtures/scenarios.nix"),
        dir.path().join("tests/fixtures/scenarios.nix"),
    )
    .expect("copy scenarios.nix");
    // The agent's files, which a check of its own reads.
    copy_tree(&repo_root().join("src/agent/sh"), &dir.path().join("src/agent/sh"));
    dir
}

/// `path:DIR`: a flake reference to a plain directory.
pub fn path_ref(dir: &Path) -> String {
    format!("path:{}", dir.display())
}
