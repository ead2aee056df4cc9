//! `deployChecks` (lib/deploy-checks.nix) through the real `nix` CLI: a
//! good fleet yields a check derivation, a bad one fails evaluation with an
//! error naming the attribute path, and nothing ever evaluates a NixOS
//! configuration (the fixtures' configurations all throw).
//!
//! Needs `nix` (2.8 or later) on PATH; no network, no daemon features.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::{
    copy_tree, flake_from, nix_ok, nix_path, path_ref, project_flake, repo_root, run_nix,
    scenario_names,
};

fn fixtures() -> PathBuf {
    repo_root().join("tests/fixtures/checks")
}

/// `let lib = import <repo>/lib; self = ...; in BODY`, with `fleet` bound to
/// the hand-written fixture and `self.nixosConfigurations` throwing on access.
fn expr(body: &str) -> String {
    format!(
        "let\n  lib = import {lib};\n  fleet = import {hand};\n  \
         self = {{ nixosConfigurations = import {configs}; }};\n  \
         system = \"x86_64-linux\";\nin\n{body}",
        lib = nix_path(&repo_root().join("lib")),
        hand = nix_path(&fixtures().join("hand-written.nix")),
        configs = nix_path(&fixtures().join("configurations.nix")),
    )
}

/// Evaluates `(BODY).drvPath`; Ok(drvPath) or Err(stderr).
fn drv_path(body: &str) -> Result<String, String> {
    run_nix(&["eval", "--impure", "--raw", "--expr", &expr(&format!("({body}).drvPath"))])
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
        &["deployFlake.hosts.web1.sshPrt: unknown option; did you mean \"sshPort\"? (known options: buildHost, buildHostCapacity, buildHostSshOpts, buildOn, configuration, copyFrom, healthChecks, hostname, keys, magicRollback, pushTo, selfCheck, sshOpts, sshPort, sshUser, substituteOnTarget, sudo, system, tags, timeouts)"],
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
            "deployFlake.hosts.db1.buildOn: expected \"target\", \"local\" or \"host\"",
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
    let flake = fixtures().join("flake/flake.nix");
    let dir = flake_from(&std::fs::read_to_string(&flake).expect("read the fixture flake.nix"));
    std::fs::copy(fixtures().join("configurations.nix"), dir.path().join("configurations.nix"))
        .expect("copy configurations.nix");
    std::fs::write(dir.path().join("fleet.nix"), format!("{{ self, lib }}:\n{fleet}\n"))
        .expect("write fleet.nix");
    dir
}

/// The agent's check runs shellcheck, `dash -n` and `bash --posix -n` on
/// the agent (with the stand-in, the host's: tests/prepare.sh installs
/// them): it builds for the agent, and fails, saying what shellcheck
/// found, for an agent with a line shellcheck warns about.
#[test]
fn the_agent_check_builds_and_fails_on_what_shellcheck_finds() {
    let system = nix_ok(&["eval", "--impure", "--raw", "--expr", "builtins.currentSystem"]);
    let project = project_flake();
    let attr = format!("{}#checks.{system}.agent-shellcheck", path_ref(project.path()));
    let mut args = vec!["build", "--no-link", &attr, "--option", "sandbox", "false"];
    args.extend(build_users_options());
    if let Err(e) = nix_standin(&args) {
        panic!("the agent's check fails on the agent:\n{e}");
    }
    let agent = project.path().join("src/agent/sh/99-main.sh");
    let text = std::fs::read_to_string(&agent).expect("read agent");
    std::fs::write(&agent, format!("{text}if [ \"$cmd\" == check ]; then exit 0; fi\n"))
        .expect("write agent");
    match nix_standin(&args) {
        Ok(_) => panic!("the agent's check passed an agent with `==` in a test"),
        Err(e) => assert!(e.contains("SC3014"), "shellcheck's finding is shown:\n{e}"),
    }
}

/// `nix eval <flake>#checks.x86_64-linux.deploy.drvPath`: what `nix flake
/// check` evaluates for this check. (`nix flake check` itself would also
/// evaluate every nixosConfigurations toplevel, which the fixtures forbid.)
fn eval_flake_check(dir: &Path) -> Result<String, String> {
    run_nix(&["eval", "--raw", &format!("{}#checks.x86_64-linux.deploy.drvPath", path_ref(dir))])
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

/// `--option build-users-group ""` where the machine has no `nixbld` group
/// (Debian's nix-bin, run as root).
fn build_users_options() -> Vec<&'static str> {
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    if groups.lines().any(|l| l.starts_with("nixbld:")) {
        Vec::new()
    } else {
        vec!["--option", "build-users-group", ""]
    }
}

/// Options that let `nix build` run as root on a machine whose Nix has no
/// build users or no sandbox shell (Debian's nix-bin); a stock NixOS or
/// installer setup needs none of them.
fn build_options() -> Vec<&'static str> {
    let mut opts = build_users_options();
    let config = run_nix(&["show-config"]).unwrap_or_default();
    let sandbox_has_sh =
        config.lines().any(|l| l.starts_with("sandbox-paths") && l.contains("/bin/sh"));
    let sandbox_on = config.lines().any(|l| l.trim() == "sandbox = true");
    if sandbox_on && !sandbox_has_sh {
        if Path::new("/bin/busybox").exists() {
            // What NixOS does: a static busybox as the sandbox's /bin/sh.
            opts.extend(["--option", "extra-sandbox-paths", "/bin/sh=/bin/busybox"]);
        } else {
            opts.extend(["--option", "sandbox", "false"]);
        }
    }
    opts
}

/// `nix show-derivation DRV`: the one derivation it shows (keyed by the
/// .drv path, whose spelling differs between Nix versions).
fn derivation(drv: &str) -> serde_json::Value {
    let shown = json(&nix_ok(&["show-derivation", drv]));
    shown.as_object().and_then(|o| o.values().next()).expect("one derivation shown").clone()
}

/// Built for the platform the test runs on (the check's builder is
/// `/bin/sh`), so the build is checked on every machine, not only on
/// x86_64-linux.
#[test]
fn the_check_builds_with_nothing_but_itself() {
    let body = "lib.deployChecks { inherit self; system = builtins.currentSystem; \
                  deployFlake = lib.mkDeployFlake { inherit self; hosts.web1.tags = [ \"web\" ]; }; }";
    let drv = assert_ok(body);

    // No input derivations: building the check cannot build any system.
    let inputs = &derivation(&drv)["inputDrvs"];
    assert_eq!(inputs, &serde_json::json!({}), "check has input derivations: {inputs}");

    let expr = expr(body);
    let mut args = vec!["build", "--impure", "--no-link", "--json"];
    args.extend(build_options());
    args.extend(["--expr", &expr]);
    let built = json(&nix_ok(&args));
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

/// `nix ARGS… --override-input nixpkgs <stand-in>`; Ok(stdout) or Err(stderr).
///
/// Without the evaluation cache: tests evaluate copies of the same flake at
/// once, and Nix 2.8 answers from a cache another process holds busy with
/// "attribute … unexpectedly missing".
fn nix_standin(args: &[&str]) -> Result<String, String> {
    let standin = path_ref(&fixtures().join("nixpkgs-standin"));
    let mut args: Vec<&str> = args.to_vec();
    args.extend(["--override-input", "nixpkgs", &standin, "--option", "eval-cache", "false"]);
    run_nix(&args)
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
    let eval = |flag: &str, attr: &str, apply: &str| {
        nix_ok(&[
            "eval",
            flag,
            &format!("{}#{attr}", path_ref(project.path())),
            "--apply",
            apply,
            "--override-input",
            "nixpkgs",
            &path_ref(empty.path()),
        ])
    };
    let names = json(&eval("--json", "lib", "lib: builtins.attrNames lib"));
    for name in ["mkDeployFlake", "deployChecks"] {
        assert!(names.as_array().unwrap().contains(&name.into()), "{names}");
    }
    assert_eq!(eval("--raw", "overlays.default", "o: builtins.typeOf o"), "lambda");
}

#[test]
fn flake_outputs_evaluate_and_every_scenario_is_a_vm_check() {
    let project = project_flake();
    let flake = path_ref(project.path());
    if let Err(e) = nix_standin(&["flake", "check", "--no-build", &flake]) {
        panic!("nix flake check --no-build failed:\n{e}");
    }
    let checks_of = |system: &str| {
        let attr = format!("{flake}#checks.{system}");
        json(
            &nix_standin(&["eval", "--json", &attr, "--apply", "builtins.attrNames"])
                .unwrap_or_else(|e| panic!("{e}")),
        )
    };

    let scenarios = scenario_names();
    for system in ["x86_64-linux", "aarch64-linux"] {
        let mut expected: Vec<String> = scenarios.iter().map(|s| format!("vm-{s}")).collect();
        expected.extend(["agent-shellcheck".into(), "package".into()]);
        expected.sort();
        assert_eq!(checks_of(system), serde_json::json!(expected), "{system}");
    }
    for system in ["x86_64-darwin", "aarch64-darwin"] {
        assert_eq!(
            checks_of(system),
            serde_json::json!(["agent-shellcheck", "package"]),
            "{system}"
        );
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

/// nixpkgs' installShellFiles and makeWrapper functions, as far as the
/// package's postInstall uses them: each records what it is given in `$out`.
const INSTALL_STANDINS: &str = r#"
installShellCompletion() {
    local cmd=""
    while [ $# -gt 0 ]; do
        case $1 in
            --cmd) cmd=$2; shift 2 ;;
            --bash|--zsh|--fish) [ -n "$cmd" ] || return 1; cat "$2" >"$out/completion-$cmd.${1#--}"; shift 2 ;;
            *) echo "installShellCompletion: unexpected $1" >&2; return 1 ;;
        esac
    done
}
installManPage() {
    local page
    for page in "$@"; do
        case $page in *.[1-9]) cp "$page" "$out/" ;; *) return 1 ;; esac
    done
}
wrapProgram() { echo "$*" >"$out/wrapped"; }
set -euo pipefail
"#;

/// The package's postInstall (as the flake evaluates it), run by bash on
/// the binary this test suite built: bash, zsh and fish completions and
/// two manual pages from the binary itself, then the wrapper.
#[test]
fn the_package_installs_completions_and_manual_pages() {
    let project = project_flake();
    let attr = format!("{}#packages.x86_64-linux.default.postInstall", path_ref(project.path()));
    let post_install = nix_standin(&["eval", "--raw", &attr]).unwrap_or_else(|e| panic!("{e}"));
    let out = tempfile::tempdir().expect("temp dir");
    let build = tempfile::tempdir().expect("temp dir");
    std::fs::create_dir(out.path().join("bin")).unwrap();
    std::fs::copy(common::BIN, out.path().join("bin/deploy-flake")).unwrap();
    let mut bash = Command::new("bash");
    bash.arg("-c")
        .arg(format!("{INSTALL_STANDINS}{post_install}"))
        .env("out", out.path())
        .current_dir(build.path());
    let done = common::run(&mut bash);
    assert!(done.status.success(), "{}", common::describe_failure(&bash, &done));

    let file = |name: &str| {
        std::fs::read_to_string(out.path().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let bash_completion = file("completion-deploy-flake.bash");
    assert!(bash_completion.contains("complete -F _deploy__flake"), "{bash_completion}");
    assert!(file("completion-deploy-flake.zsh").starts_with("#compdef deploy-flake"));
    assert!(file("completion-deploy-flake.fish").contains("complete -c deploy-flake"));
    assert!(file("deploy-flake.1").contains(".TH deploy-flake 1"));
    assert!(file("deploy-flake-rollback.1").contains("to\\-generation"));
    assert!(file("deploy-flake-status.1").contains("deploy\\-flake\\-status"));
    assert!(file("deploy-flake-diff.1").contains("deploy\\-flake\\-diff"));
    let wrapped = file("wrapped");
    let wrapper = format!("{}/bin/deploy-flake --suffix PATH : ", out.path().display());
    assert!(wrapped.starts_with(&wrapper), "{wrapped}");
}

/// A stand-in VM check, built: its test script, and per node the
/// additional store paths and the closure-info registration (`regInfo`)
/// its store is loaded from.
struct VmCheck {
    script: String,
    additional_paths: serde_json::Value,
    reg_info: serde_json::Value,
}

/// Builds the stand-in version of one VM check (its output is the test
/// script; building it builds the nodes' registrations too).
fn build_vm_check(flake: &str, scenario: &str) -> VmCheck {
    let attr = format!("{flake}#checks.x86_64-linux.vm-{scenario}");
    let drv = nix_standin(&["eval", "--raw", &format!("{attr}.drvPath")])
        .unwrap_or_else(|e| panic!("{e}"));
    // The stand-in's runCommand and closureInfo use the host's cp and python3.
    let mut args = vec!["build", "--no-link", "--json", "--option", "sandbox", "false"];
    args.extend(build_users_options());
    args.push(&attr);
    let built = nix_standin(&args).unwrap_or_else(|e| panic!("building {attr}:\n{e}"));
    let out = json(&built)[0]["outputs"]["out"].as_str().unwrap().to_string();
    let script = std::fs::read_to_string(&out).expect("test script");

    let env = &derivation(&drv)["env"];
    let field = |name: &str| json(env[name].as_str().unwrap_or_else(|| panic!("no {name}")));
    VmCheck { script, additional_paths: field("additionalPaths"), reg_info: field("regInfo") }
}

/// The names nixpkgs' test driver gives a test script (its globals, typed in
/// nixos/lib/test-script-prepend.py, and one per node): the driver type-checks
/// the script with those types, so assigning one of them fails the build
/// (`machines`, say, is a list of every VM).
const DRIVER_NAMES: &[&str] = &[
    "start_all",
    "subtest",
    "retry",
    "test_script",
    "machines",
    "vlans",
    "driver",
    "log",
    "create_machine",
    "run_tests",
    "join_all",
    "serial_stdout_off",
    "serial_stdout_on",
    "polling_condition",
    "deployer",
    "target1",
    "target2",
];

/// The script parses as Python and assigns none of the driver's names at
/// the top level.
fn assert_python_script_is_valid(script: &str) {
    let file = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(file.path(), script).expect("write script");
    // The names the script binds in its own scope: not those local to a
    // function or a comprehension.
    let check = r#"
import ast, sys

def bound(node):
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        yield node.name
        return
    if isinstance(node, (ast.Lambda, ast.ListComp, ast.SetComp, ast.DictComp, ast.GeneratorExp)):
        return
    if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
        yield node.id
    for child in ast.iter_child_nodes(node):
        yield from bound(child)

names = set(bound(ast.parse(open(sys.argv[1]).read())))
taken = sorted(names & set(sys.argv[2:]))
if taken:
    sys.exit("it assigns names the test driver defines: " + ", ".join(taken))
"#;
    let out = Command::new("python3")
        .args(["-c", check])
        .arg(file.path())
        .args(DRIVER_NAMES)
        .output()
        .expect("python3 runs");
    assert!(
        out.status.success(),
        "the test script is not valid:\n{}\n{script}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The fleet flake the script copies to the deployer, locked in a temp dir.
fn fleet_of(script: &str) -> tempfile::TempDir {
    let start = script.find("cp -r /nix/store/").expect("the script copies the fleet") + 6;
    let end = start + script[start..].find(' ').unwrap();
    let dir = tempfile::tempdir().expect("temp dir");
    copy_tree(Path::new(&script[start..end]), dir.path());
    nix_ok(&["flake", "lock", dir.path().to_str().expect("utf-8 path")]);
    dir
}

/// The `expected` table the script asserts against.
fn expected_of(script: &str) -> serde_json::Value {
    script_json(script, "expected")
}

fn check_vm_plumbing(scenario: &str, exit_code: u8, success: bool) {
    check_vm_plumbing_then(scenario, exit_code, success, |_, _| {});
}

/// As [`check_vm_plumbing`], then `more` on the script and the fleet's
/// inventory (as the deployer reads it).
fn check_vm_plumbing_then(
    scenario: &str,
    exit_code: u8,
    success: bool,
    more: impl FnOnce(&str, &serde_json::Value),
) {
    let project = project_flake();
    let flake = path_ref(project.path());
    let VmCheck { script, additional_paths, .. } = build_vm_check(&flake, scenario);
    assert_python_script_is_valid(&script);
    assert!(
        script.contains(&format!("assert status == {exit_code},")),
        "the script does not expect exit code {exit_code}"
    );

    let fleet = fleet_of(&script);
    let fleet_ref = path_ref(fleet.path());
    let inventory = json(&nix_ok(&["eval", "--json", &format!("{fleet_ref}#deployFlake")]));
    if let Err(e) = eval_flake_check(fleet.path()) {
        panic!("the fleet's deployChecks: {e}");
    }

    // Every configuration a target is sent was prebuilt into its store: the
    // build on the target finds it and needs no network.
    let mut toplevels = std::collections::BTreeMap::new();
    for (host, spec) in inventory["hosts"].as_object().unwrap() {
        let configuration = spec["configuration"].as_str().unwrap();
        let target = spec["hostname"].as_str().unwrap();
        let toplevel = nix_ok(&[
            "eval",
            "--raw",
            &format!(
                "{fleet_ref}#nixosConfigurations.{configuration}.config.system.build.toplevel.outPath"
            ),
        ]);
        let prebuilt = additional_paths[target].as_array().expect("target paths");
        assert!(
            prebuilt.contains(&toplevel.clone().into()),
            "{host}: {configuration} = {toplevel} is not prebuilt on {target}: {prebuilt:?}"
        );
        toplevels.insert(host.clone(), toplevel);
    }

    // The deployer logs in with the fleet's own test key: the one whose
    // public half every target authorizes (checks/fleet/keys).
    let key = script
        .lines()
        .find_map(|l| l.trim().strip_prefix("\"install -Dm600 "))
        .and_then(|rest| rest.split(' ').next())
        .expect("the script installs the deployer's key");
    let committed = fleet.path().join("keys/deployer");
    assert_eq!(
        std::fs::read(key).expect("read the installed key"),
        std::fs::read(&committed).expect("read the fleet's key"),
        "{key} is not the fleet's deployer key"
    );

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
    more(&script, &inventory);
}

#[test]
fn vm_check_of_a_failing_scenario_is_consistent() {
    check_vm_plumbing("failing-unit", 1, false);
}

#[test]
fn vm_check_of_a_first_deploy_is_consistent() {
    check_vm_plumbing("healthy-v1", 0, true);
}

/// The keys scenario: target1's deploy under test carries the scenario's
/// key (and only it does), and the script checks what it left there.
#[test]
fn vm_check_of_the_keys_scenario_sends_the_key_and_checks_it() {
    check_vm_plumbing_then("needs-key", 0, true, |script, inventory| {
        let hosts = &inventory["hosts"];
        let key = &hosts["target1"]["keys"]["demo-key"];
        assert_eq!(key["keyCommand"], serde_json::json!(["echo", "demo-key-content"]), "{key}");
        assert_eq!(
            (key["user"].as_str(), key["permissions"].as_str()),
            (Some("nobody"), Some("0440"))
        );
        for host in ["target1-from", "target2", "target2-from"] {
            assert_eq!(hosts[host]["keys"], serde_json::json!({}), "{host}");
        }
        assert!(script.contains("/run/demo-keys/seen"), "the script checks the key");
    });
}

/// The JSON a Python line `NAME = json.loads("...")` of the script holds.
fn script_json(script: &str, name: &str) -> serde_json::Value {
    let prefix = format!("{name} = json.loads(");
    let line = script
        .lines()
        .find(|l| l.starts_with(&prefix))
        .unwrap_or_else(|| panic!("the script has no {name} table"));
    let literal = &line[prefix.len()..line.len() - 1];
    let inner: String = serde_json::from_str(literal).expect("a JSON string literal");
    json(&inner)
}

#[test]
fn every_scenario_gives_a_target_the_same_image() {
    // A target's disk image holds its store: whatever differs between
    // scenarios would give each scenario an image of its own to build and
    // keep. Each target gets every configuration it is sent in any scenario.
    let project = project_flake();
    let attr = format!("{}#checks.x86_64-linux", path_ref(project.path()));
    let apply = "checks: builtins.mapAttrs (name: check: check.additionalPaths) \
                 (removeAttrs checks [ \"package\" \"agent-shellcheck\" ])";
    let paths = json(
        &nix_standin(&["eval", "--json", &attr, "--apply", apply])
            .unwrap_or_else(|e| panic!("{e}")),
    );
    let paths = paths.as_object().expect("checks");
    assert_eq!(paths.len(), scenario_names().len());
    let first = json(paths.values().next().unwrap().as_str().unwrap());
    for (check, value) in paths {
        let value = json(value.as_str().unwrap());
        for target in ["target1", "target2"] {
            assert_eq!(value[target], first[target], "{check}: {target} differs");
        }
    }
    // target1 is sent every configuration a scenario names, target2 only
    // healthy-v1 and healthy-v2: nixpkgs' source, plus one toplevel each.
    let named = json(&nix_ok(&[
        "eval",
        "--json",
        "--impure",
        "--expr",
        &format!(
            "builtins.length (builtins.attrNames (builtins.listToAttrs (builtins.concatMap \
               (s: map (c: {{ name = c; value = null; }}) ([ s.configuration ] \
                 ++ (if s.from == null then [ ] else [ s.from ]))) \
               (builtins.attrValues (import {})))))",
            nix_path(&repo_root().join("tests/fixtures/scenarios.nix"))
        ),
    ]));
    let named = named.as_u64().expect("a count") as usize;
    assert_eq!(first["target1"].as_array().unwrap().len(), 1 + named, "{first}");
    assert_eq!(first["target2"].as_array().unwrap().len(), 1 + 2, "{first}");
}

#[test]
fn vm_test_keys_are_committed_pairs() {
    // Fixed test keys (no key is generated at evaluation or build time):
    // each private key's public half is the .pub next to it.
    let keys = repo_root().join("checks/fleet/keys");
    for name in ["deployer", "target1", "target2"] {
        let private = tempfile::NamedTempFile::new().expect("temp file");
        std::fs::copy(keys.join(name), private.path()).expect("copy the private key");
        // ssh-keygen refuses a private key others can read.
        let mut perms = std::fs::metadata(private.path()).expect("stat").permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o600);
        std::fs::set_permissions(private.path(), perms).expect("chmod");
        let derived =
            common::run_ok(Command::new("ssh-keygen").args(["-y", "-f"]).arg(private.path()));
        let public = std::fs::read_to_string(keys.join(format!("{name}.pub"))).expect("read .pub");
        let fields = |k: &str| k.split_whitespace().take(2).collect::<Vec<_>>().join(" ");
        assert_eq!(
            fields(&derived),
            fields(&public),
            "{name}.pub is not the public half of {name}"
        );
        assert!(public.contains("test only"), "{name}.pub does not say it is for tests only");
    }
}

// ---- the nodes' stores, modelled -------------------------------------------
//
// The VM test framework fills each node's store from a closure-info
// registration (nixpkgs' qemu-vm.nix loads it with `nix-store --load-db` at
// boot; make-disk-image.nix registers a boot-loader VM's image from one):
// path, NAR hash and size, references; no content address, no signature.
// The stand-in's runNixOSTest models that (`regInfo`), and these tests load
// those registrations into chroot stores to replay what the script relies
// on: the fleet's `path:` inputs are such paths on the deployer, some are
// missing on the targets, and a copy that checks signatures cannot bring
// them there. The real VM tests then see deploy-flake copy them anyway.

/// A chroot store (`<dir>/nix/store`) holding what a node's registration
/// lists, registered the way the VM's boot does.
struct NodeStore {
    dir: tempfile::TempDir,
}

impl NodeStore {
    fn load(reg_info: &str) -> NodeStore {
        let dir = tempfile::tempdir().expect("temp dir");
        let store = dir.path().join("nix/store");
        std::fs::create_dir_all(&store).expect("mkdir");
        let paths =
            std::fs::read_to_string(format!("{reg_info}/store-paths")).expect("store-paths");
        for path in paths.lines() {
            common::run_ok(Command::new("cp").args(["-a", path]).arg(&store));
        }
        let registration =
            std::fs::File::open(format!("{reg_info}/registration")).expect("registration");
        let node = NodeStore { dir };
        common::run_ok(
            Command::new("nix-store")
                .args(["--store", &node.root(), "--load-db"])
                .stdin(registration),
        );
        node
    }

    fn root(&self) -> String {
        self.dir.path().to_str().expect("utf-8 path").to_string()
    }

    /// `nix --store <root> ARGS…`; Ok(stdout) or Err(stderr).
    fn nix(&self, args: &[&str]) -> Result<String, String> {
        let root = self.root();
        let mut all = vec!["--store", &root];
        all.extend(args);
        run_nix(&all)
    }

    fn valid(&self, path: &str) -> bool {
        self.nix(&["path-info", path]).is_ok()
    }

    /// Neither a signature nor a content address (what the script's
    /// `unsigned` checks).
    fn unsigned(&self, path: &str) -> bool {
        let info =
            json(&self.nix(&["path-info", "--json", path]).unwrap_or_else(|e| panic!("{e}")));
        let info = if info.is_array() { info[0].clone() } else { info[path].clone() };
        let empty = |v: &serde_json::Value| {
            v.is_null() || v.as_array().is_some_and(|a| a.is_empty()) || v == ""
        };
        empty(&info["signatures"]) && empty(&info["ca"])
    }
}

impl Drop for NodeStore {
    fn drop(&mut self) {
        // Store paths are read-only: make them removable.
        let _ = Command::new("chmod").args(["-R", "u+w"]).arg(self.dir.path()).status();
    }
}

#[test]
fn vm_check_copies_unsigned_inputs_to_targets_that_require_signatures() {
    let project = project_flake();
    let VmCheck { script, reg_info, .. } = build_vm_check(&path_ref(project.path()), "healthy-v2");
    let store = |node: &str| NodeStore::load(reg_info[node].as_str().expect("regInfo"));
    let deployer = store("deployer");

    // The script's setup on the deployer: the fleet, locked.
    let start = script.find("cp -r /nix/store/").expect("the script copies the fleet") + 6;
    let end = start + script[start..].find(' ').unwrap();
    let fleet = tempfile::tempdir().expect("temp dir");
    copy_tree(Path::new(&script[start..end]), fleet.path());
    let fleet_ref = path_ref(fleet.path());
    deployer.nix(&["flake", "lock", &fleet_ref]).unwrap_or_else(|e| panic!("{e}"));

    // Nix reuses the registered paths as the fleet's inputs, as they are:
    // what the script expects, and none of them signed or content-addressed.
    let archive = json(&deployer.nix(&["flake", "archive", "--json", &fleet_ref]).unwrap());
    let locked: serde_json::Map<String, serde_json::Value> = archive["inputs"]
        .as_object()
        .expect("inputs")
        .iter()
        .map(|(name, input)| (name.clone(), input["path"].clone()))
        .collect();
    let inputs = script_json(&script, "inputs");
    assert_eq!(
        serde_json::Value::Object(locked.clone()),
        inputs,
        "the script expects other inputs"
    );
    for (name, path) in &locked {
        let path = path.as_str().unwrap();
        assert!(
            deployer.unsigned(path),
            "the deployer's {name} ({path}) is signed or content-addressed"
        );
    }

    for target in ["target1", "target2"] {
        let store = store(target);
        // What a deploy copies: the inputs the target's image lacks. The
        // script refuses to run without one (it would prove nothing).
        let to_copy: Vec<&str> =
            locked.values().map(|p| p.as_str().unwrap()).filter(|p| !store.valid(p)).collect();
        assert_eq!(to_copy, [inputs["deploy-flake"].as_str().unwrap()], "{target}");

        // A copy that checks signatures (`nix flake archive --to`, `nix
        // copy` without --no-check-sigs, or any untrusted session) is
        // refused by a store that requires signatures, as NixOS's does.
        let destination = format!("local?root={}&require-sigs=true", store.root());
        let mut copy = vec!["copy", "--to", &destination];
        copy.extend(&to_copy);
        match deployer.nix(&copy) {
            Ok(_) => panic!("{target} took unsigned paths from a copy that checks signatures"),
            Err(e) => assert!(e.contains("lacks a valid signature"), "{target}: {e}"),
        }
        assert!(to_copy.iter().all(|p| !store.valid(p)), "{target}");

        // Without signature checks they arrive as they are: what the script
        // asserts on each target after the deploys.
        copy.insert(1, "--no-check-sigs");
        deployer.nix(&copy).unwrap_or_else(|e| panic!("{target}: {e}"));
        for path in &to_copy {
            assert!(store.valid(path) && store.unsigned(path), "{target}: {path}");
        }
    }

    // The script checks both ends in the VM: before the first deploy (the
    // inputs are unsigned, each target requires signatures and lacks one),
    // and after the last (each target holds them, still unsigned).
    for line in [
        "with subtest(\"the fleet's inputs reach the targets unsigned\"):",
        "assert locked == inputs,",
        "assert unsigned(deployer, path),",
        "m.succeed(\"grep -qx 'require-sigs = true' /etc/nix/nix.conf\")",
        "to_copy[t] = [p for p in locked.values() if not valid(m, p)]",
        "assert to_copy[t],",
        "with subtest(\"the targets took the unsigned inputs as they are\"):",
        "assert valid(m, path),",
        "assert unsigned(m, path),",
    ] {
        assert!(script.lines().any(|l| l.trim().starts_with(line)), "the script lacks {line:?}");
    }
    let first_deploy = script.find("deploy(\"@").expect("the script deploys");
    let before = script.find("with subtest(\"the fleet's inputs reach").unwrap();
    let after = script.find("with subtest(\"the targets took").unwrap();
    let last_deploy = script.rfind("deploy(\"@").unwrap();
    assert!(before < first_deploy && last_deploy < after, "the checks must enclose the deploys");
}

#[test]
fn example_fleet_evaluates_and_its_check_passes() {
    // examples/fleet with this checkout as its deploy-flake input.
    let project = project_flake();
    let example = tempfile::tempdir().expect("temp dir");
    copy_tree(&repo_root().join("examples/fleet"), example.path());
    let example_ref = path_ref(example.path());
    let deploy_flake = path_ref(project.path());
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

#[test]
fn a_hand_written_rollout_is_checked() {
    assert_ok(
        "lib.deployChecks { inherit self system; deployFlake = fleet { top.rollout = \
         { canary = [ \"web*\" ]; batches = [ 1 \"100%\" ]; maxFailures = \"10%\"; soak = 60; }; }; }",
    );
    assert_err(
        "lib.deployChecks { inherit self system; deployFlake = fleet { top.rollout = \
         { canary = [ \"@nope\" ]; batches = [ 1 ]; maxFailures = 0; soak = null; }; }; }",
        &[r#"deployFlake.rollout.canary.0: "@nope" matches no host of deployFlake.hosts"#],
    );
    assert_err(
        "lib.deployChecks { inherit self system; deployFlake = fleet { top.rollout = \
         { batches = [ \"150%\" ]; maxFailures = 0; soak = null; }; }; }",
        &["deployFlake.rollout.canary: missing (a deployFlake must be fully resolved"],
    );
    assert_err(
        "lib.deployChecks { inherit self system; deployFlake = fleet { top.rollout = \
         { canary = [ ]; batches = [ \"150%\" ]; maxFailures = 0; soak = null; }; }; }",
        &[r#"deployFlake.rollout.batches.0: expected a wave size"#, r#"got a string ("150%")"#],
    );
}
