//! `deployChecks` (lib/deploy-checks.nix) through the real `nix` CLI: a
//! good fleet yields a check derivation, a bad one fails evaluation with an
//! error naming the attribute path, and nothing ever evaluates a NixOS
//! configuration (the fixtures' configurations all throw).
//!
//! Needs `nix` (2.8 or later) on PATH; no network, no daemon features.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const FEATURES: &str = "nix-command flakes";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixtures() -> PathBuf {
    repo().join("tests/fixtures/checks")
}

/// A Nix string literal for a path (paths with spaces stay one token).
fn nix_path(p: &Path) -> String {
    serde_json::to_string(p.to_str().expect("utf-8 path")).expect("json string")
}

fn nix() -> Command {
    let mut cmd = Command::new("nix");
    cmd.args(["--extra-experimental-features", FEATURES]);
    // Keep the tests hermetic: no substituter is reachable here.
    cmd.args(["--option", "substituters", ""]);
    cmd
}

fn run(mut cmd: Command) -> Output {
    cmd.output().unwrap_or_else(|e| panic!("cannot run nix (is it on PATH?): {e}"))
}

/// `let lib = import <repo>/lib; self = ...; in BODY`, with `fleet` bound to
/// the hand-written fixture and `self.nixosConfigurations` throwing on access.
fn expr(body: &str) -> String {
    format!(
        "let\n  lib = import {lib};\n  fleet = import {hand};\n  \
         self = {{ nixosConfigurations = import {configs}; }};\n  \
         system = \"x86_64-linux\";\nin\n{body}",
        lib = nix_path(&repo().join("lib")),
        hand = nix_path(&fixtures().join("hand-written.nix")),
        configs = nix_path(&fixtures().join("configurations.nix")),
    )
}

/// Evaluates `(BODY).drvPath`; Ok(drvPath) or Err(stderr).
fn drv_path(body: &str) -> Result<String, String> {
    let mut cmd = nix();
    cmd.args(["eval", "--impure", "--raw", "--expr"]).arg(expr(&format!("({body}).drvPath")));
    let out = run(cmd);
    if out.status.success() {
        Ok(String::from_utf8(out.stdout).expect("utf-8 stdout"))
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn assert_ok(body: &str) -> String {
    match drv_path(body) {
        Ok(p) => {
            assert!(
                p.starts_with("/nix/store/") && p.ends_with("-deploy-flake-check.drv"),
                "not a check derivation: {p}"
            );
            p
        }
        Err(e) => panic!("expected a check derivation, evaluation failed:\n{e}"),
    }
}

/// Asserts evaluation fails and stderr contains every `needles` entry.
fn assert_err(body: &str, needles: &[&str]) -> String {
    match drv_path(body) {
        Ok(p) => panic!("expected an evaluation error, got {p}"),
        Err(e) => {
            for n in needles {
                assert!(e.contains(n), "error does not mention {n:?}:\n{e}");
            }
            assert!(!e.contains("was evaluated"), "a configuration was evaluated:\n{e}");
            e
        }
    }
}

// ---- good fleets ----------------------------------------------------------

#[test]
fn fleet_from_mk_deploy_flake_yields_a_check_without_touching_configurations() {
    assert_ok(
        "lib.deployChecks { inherit self system; \
           deployFlake = lib.mkDeployFlake { inherit self; \
             defaults.sshUser = \"deploy\"; \
             hosts.web1 = { hostname = \"203.0.113.7\"; tags = [ \"web\" ]; }; \
             hosts.web2 = { }; \
             hosts.db = { configuration = \"db1\"; timeouts.build = 7200; }; }; }",
    );
}

#[test]
fn hosts_default_to_every_configuration_name() {
    // mkDeployFlake without `hosts` lists attrNames only: still nothing forced.
    assert_ok(
        "lib.deployChecks { inherit self system; \
           deployFlake = lib.mkDeployFlake { inherit self; }; }",
    );
}

#[test]
fn hand_written_fleet_yields_a_check() {
    assert_ok("lib.deployChecks { inherit self system; deployFlake = fleet { }; }");
}

#[test]
fn self_provides_deploy_flake_by_default() {
    assert_ok(
        "lib.deployChecks { inherit system; \
           self = self // { deployFlake = fleet { web1.selfCheck = \"bin/health\"; }; }; }",
    );
}

#[test]
fn an_empty_fleet_is_valid() {
    assert_ok(
        "lib.deployChecks { inherit self system; \
           deployFlake = { schemaVersion = 1; hosts = { }; }; }",
    );
}

// ---- bad fleets: the error names the attribute path ------------------------

#[test]
fn unknown_host_key_is_named() {
    assert_err(
        "lib.deployChecks { inherit self system; deployFlake = fleet { web1.sshPrt = 2222; }; }",
        &["deployFlake.hosts.web1.sshPrt: unknown option; did you mean \"sshPort\"? (known options: buildOn, configuration, healthChecks, hostname, magicRollback, selfCheck, sshOpts, sshPort, sshUser, sudo, tags, timeouts)"],
    );
}

#[test]
fn unknown_top_level_key_is_named() {
    assert_err(
        "lib.deployChecks { inherit self system; deployFlake = fleet { top.host = { }; }; }",
        &["deployFlake.host: unknown attribute"],
    );
}

#[test]
fn unknown_timeout_phase_is_named() {
    assert_err(
        "let f = fleet { }; in lib.deployChecks { inherit self system; \
           deployFlake = fleet { web1.timeouts = f.hosts.web1.timeouts // { activte = 5; }; }; }",
        &["deployFlake.hosts.web1.timeouts.activte: unknown option; did you mean \"activate\"?"],
    );
}

#[test]
fn wrong_types_are_named_with_what_was_expected() {
    let e = assert_err(
        "lib.deployChecks { inherit self system; deployFlake = fleet { \
           web1 = { sshPort = \"22\"; tags = \"web\"; magicRollback = 1; }; \
           db1 = { buildOn = \"remote\"; selfCheck = \"/bin/check\"; }; }; }",
        &[
            "deployFlake.hosts.web1.sshPort: expected an integer between 1 and 65535, got a string (\"22\")",
            "deployFlake.hosts.web1.tags: expected a list of strings",
            "deployFlake.hosts.web1.magicRollback: expected a boolean, got an integer (1)",
            "deployFlake.hosts.db1.buildOn: expected \"target\" or \"local\"",
            "deployFlake.hosts.db1.selfCheck: expected null (run pre-activate-safety-checks if the system has one) or a relative path inside the toplevel, e.g. \"bin/check\", got a string (\"/bin/check\"): is absolute",
        ],
    );
    // Every problem is reported at once, not only the first.
    assert!(e.contains("5 problems"), "{e}");
}

#[test]
fn non_positive_timeout_is_named() {
    assert_err(
        "let f = fleet { }; in lib.deployChecks { inherit self system; \
           deployFlake = fleet { db1.timeouts = f.hosts.db1.timeouts // { confirm = 0; }; }; }",
        &["deployFlake.hosts.db1.timeouts.confirm: expected a whole number of seconds between 1 and 31536000 (365 days), got an integer (0)"],
    );
}

#[test]
fn missing_configuration_is_named_with_the_available_ones() {
    assert_err(
        "lib.deployChecks { inherit self system; deployFlake = fleet { db1.configuration = \"db2\"; }; }",
        &[
            "deployFlake.hosts.db1.configuration: \"db2\" is not an attribute of nixosConfigurations",
            "available: db1, web1, web2",
        ],
    );
}

#[test]
fn hand_written_fleet_must_be_fully_resolved() {
    assert_err(
        "lib.deployChecks { inherit self system; deployFlake = \
           let f = fleet { }; in f // { hosts = f.hosts // { \
             web1 = builtins.removeAttrs f.hosts.web1 [ \"sudo\" ]; }; }; }",
        &["deployFlake.hosts.web1.sudo: missing"],
    );
}

#[test]
fn hand_written_bad_schema_version_is_named() {
    assert_err(
        "lib.deployChecks { inherit self system; deployFlake = fleet { top.schemaVersion = 2; }; }",
        &["deployFlake.schemaVersion: expected 1, got an integer (2)"],
    );
    assert_err(
        "lib.deployChecks { inherit self system; \
           deployFlake = builtins.removeAttrs (fleet { }) [ \"schemaVersion\" ]; }",
        &["deployFlake.schemaVersion: missing"],
    );
}

#[test]
fn errors_from_mk_deploy_flake_surface_at_check_time() {
    // mkDeployFlake's own validation is lazy (per host); the check forces it.
    assert_err(
        "lib.deployChecks { inherit self system; \
           deployFlake = lib.mkDeployFlake { inherit self; hosts.web1.sshPrt = 22; }; }",
        &["deployFlake.hosts.web1.sshPrt"],
    );
    assert_err(
        "lib.deployChecks { inherit self system; \
           deployFlake = lib.mkDeployFlake { inherit self; hosts.cache = { }; }; }",
        &["deployFlake.hosts.cache.configuration"],
    );
}

#[test]
fn a_lazily_failing_value_in_a_hand_written_fleet_is_reported() {
    assert_err(
        "lib.deployChecks { inherit self system; \
           deployFlake = fleet { web1.sshOpts = [ (throw \"sshOpts of web1 is broken\") ]; }; }",
        &["sshOpts of web1 is broken"],
    );
}

#[test]
fn missing_deploy_flake_is_explained() {
    assert_err("lib.deployChecks { inherit self system; }", &["deployChecks: pass `self`"]);
}

// ---- through a real flake ----------------------------------------------------

/// A temp flake with no inputs: the fixture flake.nix, the project's lib/,
/// the throwing configurations, and `fleet.nix` = `{ self, lib }: FLEET`.
fn temp_flake(fleet: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    let copy = |from: &Path, to: &str| {
        std::fs::copy(from, dir.path().join(to))
            .unwrap_or_else(|e| panic!("copy {}: {e}", from.display()));
    };
    copy(&fixtures().join("flake/flake.nix"), "flake.nix");
    copy(&fixtures().join("configurations.nix"), "configurations.nix");
    std::fs::create_dir(dir.path().join("lib")).expect("mkdir lib");
    // Every file: the .nix files and the rules.json they read.
    for entry in std::fs::read_dir(repo().join("lib")).expect("read lib/") {
        let entry = entry.expect("lib/ entry");
        if entry.file_type().expect("file type").is_file() {
            copy(&entry.path(), &format!("lib/{}", entry.file_name().to_string_lossy()));
        }
    }
    std::fs::write(dir.path().join("fleet.nix"), format!("{{ self, lib }}:\n{fleet}\n"))
        .expect("write fleet.nix");
    dir
}

fn flake_ref(dir: &Path) -> String {
    format!("path:{}", dir.display())
}

/// `nix eval <flake>#checks.x86_64-linux.deploy.drvPath`: what `nix flake
/// check` evaluates for this check. (`nix flake check` itself would also
/// evaluate every nixosConfigurations toplevel, which the fixtures forbid.)
fn eval_flake_check(dir: &Path) -> Result<String, String> {
    let mut cmd = nix();
    cmd.args(["eval", "--raw"])
        .arg(format!("{}#checks.x86_64-linux.deploy.drvPath", flake_ref(dir)));
    let out = run(cmd);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

#[test]
fn flake_check_of_a_good_fleet_evaluates_no_configuration() {
    let dir = temp_flake("lib.mkDeployFlake { inherit self; hosts.web1.tags = [ \"web\" ]; }");
    match eval_flake_check(dir.path()) {
        Ok(drv) => assert!(drv.ends_with("-deploy-flake-check.drv"), "{drv}"),
        Err(e) => panic!("the flake's check failed to evaluate:\n{e}"),
    }
}

#[test]
fn flake_check_of_a_bad_fleet_names_the_path() {
    let dir = temp_flake("lib.mkDeployFlake { inherit self; hosts.web1.sshPort = 0; }");
    match eval_flake_check(dir.path()) {
        Ok(drv) => panic!("a bad fleet passed: {drv}"),
        Err(e) => {
            assert!(e.contains("deployFlake.hosts.web1.sshPort"), "{e}");
            assert!(!e.contains("was evaluated"), "{e}");
        }
    }
}

#[test]
fn flake_check_of_a_hand_written_fleet_names_the_path() {
    // Inline: a flake cannot import files outside itself.
    let dir = temp_flake(
        "{ schemaVersion = 1; hosts.web1 = { hostname = \"web1\"; sshUser = \"root\"; \
           sshPort = 22; sshOpts = [ ]; configuration = \"web3\"; tags = [ ]; \
           buildOn = \"target\"; selfCheck = null; sudo = \"sudo\"; magicRollback = true; healthChecks = [ ]; \
           timeouts = lib.timeoutDefaults; }; }",
    );
    match eval_flake_check(dir.path()) {
        Ok(drv) => panic!("a bad fleet passed: {drv}"),
        Err(e) => assert!(
            e.contains("deployFlake.hosts.web1.configuration: \"web3\" is not an attribute"),
            "{e}"
        ),
    }
}

// ---- building the check --------------------------------------------------------

/// Options that let `nix build` run as root on a machine whose Nix has no
/// build users or no sandbox shell (Debian's nix-bin); a stock NixOS or
/// installer setup needs none of them.
fn build_options() -> Vec<String> {
    let mut opts = Vec::new();
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    if !groups.lines().any(|l| l.starts_with("nixbld:")) {
        opts.extend(["--option", "build-users-group", ""].map(String::from));
    }
    let mut cmd = nix();
    cmd.arg("show-config");
    let config = String::from_utf8_lossy(&run(cmd).stdout).into_owned();
    let sandbox_has_sh =
        config.lines().any(|l| l.starts_with("sandbox-paths") && l.contains("/bin/sh"));
    let sandbox_on = config.lines().any(|l| l.trim() == "sandbox = true");
    if sandbox_on && !sandbox_has_sh {
        if Path::new("/bin/busybox").exists() {
            // What NixOS does: a static busybox as the sandbox's /bin/sh.
            opts.extend(
                ["--option", "extra-sandbox-paths", "/bin/sh=/bin/busybox"].map(String::from),
            );
        } else {
            opts.extend(["--option", "sandbox", "false"].map(String::from));
        }
    }
    opts
}

#[test]
fn the_check_builds_with_nothing_but_itself() {
    let body = "lib.deployChecks { inherit self system; \
                  deployFlake = lib.mkDeployFlake { inherit self; hosts.web1.tags = [ \"web\" ]; }; }";
    let drv = assert_ok(body);

    // No input derivations: building the check cannot build any system.
    let mut cmd = nix();
    cmd.args(["show-derivation", &drv]);
    let out = run(cmd);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let shown: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    // Keyed by the .drv path (its spelling differs between Nix versions).
    let inputs = &shown.as_object().and_then(|o| o.values().next()).expect("one derivation shown")
        ["inputDrvs"];
    assert_eq!(inputs, &serde_json::json!({}), "check has input derivations: {inputs}");

    if std::env::consts::ARCH != "x86_64" || std::env::consts::OS != "linux" {
        return; // the fixture's `system` is x86_64-linux
    }
    let mut cmd = nix();
    cmd.args(["build", "--impure", "--no-link", "--json"])
        .args(build_options())
        .arg("--expr")
        .arg(expr(body));
    let out = run(cmd);
    assert!(out.status.success(), "nix build failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let built: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let path = built[0]["outputs"]["out"].as_str().expect("out path");
    let inventory: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).expect("read check output"))
            .expect("check output is the inventory as JSON");
    assert_eq!(inventory["schemaVersion"], 1);
    assert_eq!(inventory["hosts"]["web1"]["tags"], serde_json::json!(["web"]));
    let hosts: Vec<&String> = inventory["hosts"].as_object().expect("hosts").keys().collect();
    assert_eq!(hosts, ["web1"]);
}

// ---- the project's flake, with a stand-in for nixpkgs ---------------------------
//
// nixpkgs cannot be fetched everywhere these tests run. The stand-in
// (tests/fixtures/checks/nixpkgs-standin) provides only the names the flake
// uses, with trivial derivations, so these tests prove the plumbing: every
// output evaluates, `lib` needs no nixpkgs at all, each scenario of
// tests/fixtures/scenarios.nix becomes a VM check, the generated test script
// is valid Python, and the fleet flake a VM test archives to its targets
// evaluates to exactly the toplevels prebuilt into their stores.

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap_or_else(|e| panic!("mkdir {}: {e}", to.display()));
    for entry in std::fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target)
                .unwrap_or_else(|e| panic!("copy {}: {e}", entry.path().display()));
        }
    }
}

/// The files of the project that its flake reads, in a fresh temp dir.
fn project_flake() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for file in ["flake.nix", "Cargo.toml", "Cargo.lock"] {
        std::fs::copy(repo().join(file), dir.path().join(file))
            .unwrap_or_else(|e| panic!("copy {file}: {e}"));
    }
    copy_tree(&repo().join("lib"), &dir.path().join("lib"));
    copy_tree(&repo().join("checks"), &dir.path().join("checks"));
    std::fs::create_dir_all(dir.path().join("tests/fixtures")).expect("mkdir");
    std::fs::copy(
        repo().join("tests/fixtures/scenarios.nix"),
        dir.path().join("tests/fixtures/scenarios.nix"),
    )
    .expect("copy scenarios.nix");
    dir
}

fn standin() -> String {
    format!("path:{}", fixtures().join("nixpkgs-standin").display())
}

/// `nix ARGS… --override-input nixpkgs <stand-in>`; Ok(stdout) or Err(stderr).
fn nix_standin(args: &[&str]) -> Result<String, String> {
    let mut cmd = nix();
    cmd.args(args).args(["--override-input", "nixpkgs", &standin()]);
    let out = run(cmd);
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

#[test]
fn flake_lib_and_overlay_need_no_nixpkgs() {
    // An empty flake as nixpkgs: anything that touched it would fail.
    let empty = tempfile::tempdir().expect("temp dir");
    std::fs::write(empty.path().join("flake.nix"), "{ outputs = _: { }; }\n").expect("write");
    let project = project_flake();
    let mut cmd = nix();
    cmd.args(["eval", "--json"])
        .arg(format!("path:{}#lib", project.path().display()))
        .args(["--apply", "lib: builtins.attrNames lib"])
        .args(["--override-input", "nixpkgs"])
        .arg(format!("path:{}", empty.path().display()));
    let out = run(cmd);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let names = json(&String::from_utf8_lossy(&out.stdout));
    for name in ["mkDeployFlake", "deployChecks"] {
        assert!(names.as_array().unwrap().contains(&name.into()), "{names}");
    }

    let mut cmd = nix();
    cmd.args(["eval", "--raw"])
        .arg(format!("path:{}#overlays.default", project.path().display()))
        .args(["--apply", "o: builtins.typeOf o"])
        .args(["--override-input", "nixpkgs"])
        .arg(format!("path:{}", empty.path().display()));
    let out = run(cmd);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "lambda");
}

#[test]
fn flake_outputs_evaluate_and_every_scenario_is_a_vm_check() {
    let project = project_flake();
    let flake = format!("path:{}", project.path().display());
    if let Err(e) = nix_standin(&["flake", "check", "--no-build", &flake]) {
        panic!("nix flake check --no-build failed:\n{e}");
    }

    let mut cmd = nix();
    cmd.args(["eval", "--impure", "--json", "--expr"]).arg(format!(
        "builtins.attrNames (import {})",
        nix_path(&repo().join("tests/fixtures/scenarios.nix"))
    ));
    let out = run(cmd);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let scenarios = json(&String::from_utf8_lossy(&out.stdout));

    for system in ["x86_64-linux", "aarch64-linux"] {
        let checks = nix_standin(&[
            "eval",
            "--json",
            &format!("{flake}#checks.{system}"),
            "--apply",
            "builtins.attrNames",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        let mut expected: Vec<String> = scenarios
            .as_array()
            .unwrap()
            .iter()
            .map(|s| format!("vm-{}", s.as_str().unwrap()))
            .collect();
        expected.push("package".into());
        expected.sort();
        assert_eq!(json(&checks), serde_json::json!(expected), "{system}");
    }
    for system in ["x86_64-darwin", "aarch64-darwin"] {
        let checks = nix_standin(&[
            "eval",
            "--json",
            &format!("{flake}#checks.{system}"),
            "--apply",
            "builtins.attrNames",
        ])
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(json(&checks), serde_json::json!(["package"]), "{system}");
    }

    // The unit tier only runs in the package build.
    let flags = nix_standin(&[
        "eval",
        "--json",
        &format!("{flake}#packages.x86_64-linux.default.cargoTestFlags"),
    ])
    .unwrap_or_else(|e| panic!("{e}"));
    assert!(json(&flags).as_array().unwrap().contains(&"--lib".into()), "{flags}");
}

/// Builds the stand-in version of one VM check (its output is the test
/// script) and returns (script, additionalPaths per node).
fn build_vm_check(flake: &str, scenario: &str) -> (String, serde_json::Value) {
    let attr = format!("{flake}#checks.x86_64-linux.vm-{scenario}");
    let drv = nix_standin(&["eval", "--raw", &format!("{attr}.drvPath")])
        .unwrap_or_else(|e| panic!("{e}"));
    // The stand-in's runCommand uses the host's cp and ssh-keygen.
    let mut args = vec!["build", "--no-link", "--json", "--option", "sandbox", "false"];
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    if !groups.lines().any(|l| l.starts_with("nixbld:")) {
        args.extend(["--option", "build-users-group", ""]);
    }
    args.push(&attr);
    let built = nix_standin(&args).unwrap_or_else(|e| panic!("building {attr}:\n{e}"));
    let out = json(&built)[0]["outputs"]["out"].as_str().unwrap().to_string();
    let script = std::fs::read_to_string(&out).expect("test script");

    let mut cmd = nix();
    cmd.args(["show-derivation", &drv]);
    let shown = run(cmd);
    assert!(shown.status.success(), "{}", String::from_utf8_lossy(&shown.stderr));
    let shown = json(&String::from_utf8_lossy(&shown.stdout));
    let env = &shown.as_object().unwrap().values().next().unwrap()["env"];
    let paths = json(env["additionalPaths"].as_str().expect("additionalPaths"));
    (script, paths)
}

fn assert_python_parses(script: &str) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), script).expect("write script");
    let out = Command::new("python3")
        .args(["-c", "import ast, sys; ast.parse(open(sys.argv[1]).read())"])
        .arg(file.path())
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the test script is not valid Python:\n{}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fleet flake the script copies to the deployer, locked in a temp dir.
fn fleet_of(script: &str) -> tempfile::TempDir {
    let start = script.find("cp -r /nix/store/").expect("the script copies the fleet") + 6;
    let end = start + script[start..].find(' ').unwrap();
    let dir = tempfile::tempdir().expect("temp dir");
    copy_tree(Path::new(&script[start..end]), dir.path());
    let mut cmd = nix();
    cmd.args(["flake", "lock"]).arg(dir.path());
    let out = run(cmd);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    dir
}

/// The `expected` table the script asserts against (JSON inside a Python
/// string literal, which is itself a JSON string).
fn expected_of(script: &str) -> serde_json::Value {
    let line = script
        .lines()
        .find(|l| l.starts_with("expected = json.loads("))
        .expect("the script has an expected table");
    let literal = &line["expected = json.loads(".len()..line.len() - 1];
    let inner: String = serde_json::from_str(literal).expect("a JSON string literal");
    json(&inner)
}

fn check_vm_plumbing(scenario: &str, exit_code: u8, success: bool) {
    let project = project_flake();
    let flake = format!("path:{}", project.path().display());
    let (script, additional_paths) = build_vm_check(&flake, scenario);
    assert_python_parses(&script);
    assert!(
        script.contains(&format!("assert status == {exit_code},")),
        "the script does not expect exit code {exit_code}"
    );

    let fleet = fleet_of(&script);
    let fleet_ref = format!("path:{}", fleet.path().display());
    let mut cmd = nix();
    cmd.args(["eval", "--json"]).arg(format!("{fleet_ref}#deployFlake"));
    let out = run(cmd);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let inventory = json(&String::from_utf8_lossy(&out.stdout));

    let mut cmd = nix();
    cmd.args(["eval", "--raw"]).arg(format!("{fleet_ref}#checks.x86_64-linux.deploy.drvPath"));
    let out = run(cmd);
    assert!(
        out.status.success(),
        "the fleet's deployChecks: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Every configuration a target is sent was prebuilt into its store: the
    // build on the target finds it and needs no network.
    let mut toplevels = std::collections::BTreeMap::new();
    for (host, spec) in inventory["hosts"].as_object().unwrap() {
        let configuration = spec["configuration"].as_str().unwrap();
        let target = spec["hostname"].as_str().unwrap();
        let mut cmd = nix();
        cmd.args(["eval", "--raw"]).arg(format!(
            "{fleet_ref}#nixosConfigurations.{configuration}.config.system.build.toplevel.outPath"
        ));
        let out = run(cmd);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let toplevel = String::from_utf8_lossy(&out.stdout).into_owned();
        let prebuilt = additional_paths[target].as_array().expect("target paths");
        assert!(
            prebuilt.contains(&toplevel.clone().into()),
            "{host}: {configuration} = {toplevel} is not prebuilt on {target}: {prebuilt:?}"
        );
        toplevels.insert(host.clone(), toplevel);
    }

    // The deployer's key and known hosts come from the keys the deployed
    // configurations build, not from a second derivation.
    let mut cmd = nix();
    cmd.args(["eval", "--raw"]).arg(format!(
        "{fleet_ref}#nixosConfigurations.{}.config.system.build.deployFlakeTestKeys.outPath",
        inventory["hosts"]["target1"]["configuration"].as_str().unwrap()
    ));
    let out = run(cmd);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let keys = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(script.contains(&format!("install -Dm600 {keys}/deployer ")), "{keys}");

    // The script expects the toplevels the fleet really yields.
    let expected = expected_of(&script);
    for target in ["target1", "target2"] {
        let e = &expected[target];
        if let Some(from) = toplevels.get(&format!("{target}-from")) {
            assert_eq!(e["from"].as_str(), Some(from.as_str()), "{target} from");
        }
        let to = &toplevels[target];
        let target_succeeds = success || target == "target2";
        let running = e["running"].as_str().unwrap();
        assert_eq!(running == to, target_succeeds, "{target}: running {running}, deployed {to}");
        assert_eq!(e["boot"].as_str() == Some(to.as_str()), target_succeeds, "{target} boot");
    }
}

#[test]
fn vm_check_of_a_failing_scenario_is_consistent() {
    check_vm_plumbing("failing-unit", 1, false);
}

#[test]
fn vm_check_of_a_first_deploy_is_consistent() {
    check_vm_plumbing("healthy-v1", 0, true);
}

#[test]
fn example_fleet_evaluates_and_its_check_passes() {
    // examples/fleet with this checkout as its deploy-flake input.
    let project = project_flake();
    let example = tempfile::tempdir().expect("temp dir");
    copy_tree(&repo().join("examples/fleet"), example.path());
    let example_ref = format!("path:{}", example.path().display());
    let deploy_flake = format!("path:{}", project.path().display());
    let eval = |attr: &str, flag: &str| {
        nix_standin(&[
            "eval",
            flag,
            &format!("{example_ref}#{attr}"),
            "--override-input",
            "deploy-flake",
            &deploy_flake,
        ])
        .unwrap_or_else(|e| panic!("{attr}:\n{e}"))
    };

    let inventory = json(&eval("deployFlake", "--json"));
    assert_eq!(inventory["schemaVersion"], 1);
    assert_eq!(inventory["hosts"]["db1"]["sshPort"], 2222);
    assert_eq!(inventory["hosts"]["web2"]["tags"], serde_json::json!(["web", "canary"]));
    assert_eq!(inventory["hosts"]["web1"]["sshUser"], "deploy");

    for system in ["x86_64-linux", "aarch64-linux", "x86_64-darwin", "aarch64-darwin"] {
        let drv = eval(&format!("checks.{system}.deploy.drvPath"), "--raw");
        assert!(drv.ends_with("-deploy-flake-check.drv"), "{drv}");
    }
    let program = eval("apps.x86_64-linux.default.program", "--raw");
    assert!(program.ends_with("/bin/deploy-flake"), "{program}");
}
