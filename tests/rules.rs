//! One table of host settings, good and bad, read by all three readers of
//! lib/rules.json: `mkDeployFlake` (the settings as a user writes them),
//! `deployChecks` (the resolved record) and the tool's parser (the record
//! as JSON). Every row states its verdict; all three must reach it, and a
//! rejected row must be worded identically by all three.
//!
//! Needs `nix` (2.8 or later); one evaluation reads every accepted row, and
//! one per rejected row gets mkDeployFlake's message (Nix's `tryEval` does
//! not give it).

mod common;

use std::collections::BTreeMap;

use common::{error_line, nix_path, nix_string, repo_root, run_nix};
use deploy_flake::inventory::{self, HostSpec};
use serde_json::{json, Value};

/// Who reads the row's settings.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Written for mkDeployFlake; deployChecks and the tool read what it
    /// resolves them to (or, rejected, the settings merged over the
    /// defaults).
    User,
    /// Part of a resolved record, merged over the defaults: deployChecks
    /// and the tool only (a hand-written `deployFlake`).
    Resolved,
}
use Kind::{Resolved, User};

struct Row {
    /// The host's attribute name (a plain Nix identifier).
    name: &'static str,
    kind: Kind,
    settings: Value,
    /// None: accepted. Some: the message, after `deployFlake.hosts.<name>.`.
    want: Option<String>,
}

fn ok(name: &'static str, kind: Kind, settings: Value) -> Row {
    Row { name, kind, settings, want: None }
}

fn bad(name: &'static str, kind: Kind, settings: Value, want: impl Into<String>) -> Row {
    Row { name, kind, settings, want: Some(want.into()) }
}

const HOST: &str = "expected a host name or address (not empty, without whitespace, '@', '/', '?', '#', '&', or '%' but before an IPv6 zone id, not starting with '-')";
const USER: &str =
    "expected a user name (not empty, without whitespace, '@', '/', ':', '?', '#', '&' or '%', not starting with '-')";
const CONFIG: &str = r#"expected a nixosConfigurations attribute name (not empty, without '"' or control characters)"#;
const SELF_CHECK: &str = r#"expected null (run pre-activate-safety-checks if the system has one) or a relative path inside the toplevel, e.g. "bin/check""#;
const SECONDS: &str = "expected a whole number of seconds between 1 and 31536000 (365 days)";
const PORT: &str = "expected an integer between 1 and 65535";
const OPT: &str =
    "expected an ssh option (-o Key=Value, -i FILE, -J HOST, -F FILE, -4, -6, -A, -C or -q)";
const CHECK: &str = r#"expected a health check ({ command = [ "argv" ... ]; } run on the target as root, or { http = "http://..."; } fetched from the deploying machine; optional: description, period, timeout)"#;
const ONE_OF: &str = "needs exactly one of command (a non-empty argv) or http (an http:// URL)";
const KEY: &str = r#"expected a key ({ text = "..."; }, { keyFile = "/path/on/the/deploying/machine"; } or { keyCommand = [ "argv" ... ]; }; optional: name, destDir, user, group, permissions, uploadAt)"#;
const KEY_FILE: &str =
    r#"expected an absolute path on the deploying machine, as a string ("/run/secrets/db")"#;
const KEY_NAME: &str =
    "expected a file name (not empty, without '/' or control characters, not '.' or '..')";
const DEST: &str = r#"expected an absolute directory on the target, e.g. "/run/keys" (no '.', '..' or empty components, no trailing '/', not in /nix)"#;
const OWNER: &str = "expected a user or group name, or a number (not empty, without whitespace, ':' or '/', not starting with '-')";
const MODE: &str =
    r#"expected an octal mode (three digits, or four starting with 0, e.g. "0600" or "0640")"#;
const BUILD_HOST: &str =
    "expected null or the build host: a host of deployFlake, or a destination [user@]host[:port]";
const PUSH_TO: &str = "expected null or a Nix store URI the targets substitute from (s3://..., ssh-ng://..., file://...)";
const SYSTEM: &str = "expected null (build the configuration) or a NixOS system's store path, built elsewhere (/nix/store/<hash>-<name>)";
const MISSING: &str =
    "missing (a deployFlake must be fully resolved; mkDeployFlake fills in defaults)";

fn table() -> Vec<Row> {
    vec![
        // ---- accepted
        ok("plain", User, json!({})),
        ok("ipv6", User, json!({ "hostname": "fe80::1" })),
        ok("ipv6_zone", User, json!({ "hostname": "fe80::1%eth0" })),
        ok(
            "keys_of_every_kind",
            User,
            json!({ "keys": {
                "db": { "keyCommand": ["pass", "show", "db"], "user": "postgres", "group": "postgres", "permissions": "0640" },
                "tls": { "keyFile": "/run/secrets/tls.key", "destDir": "/var/lib/secrets", "uploadAt": "post-activation", "permissions": "640" },
                "token": { "text": "not-a-secret", "name": "api.token", "user": "1001" } } }),
        ),
        ok(
            "keys_with_colmena_nulls",
            User,
            json!({ "keys": { "x": { "text": null, "keyFile": "/k", "keyCommand": null, "destDir": null, "user": null, "group": null, "permissions": null, "uploadAt": null, "name": null } } }),
        ),

        ok(
            "hostile_but_quotable",
            User,
            json!({ "hostname": "it's$(x)", "configuration": "it's $(touch x)", "tags": ["a b", "$(x)"] }),
        ),
        ok(
            "every_option",
            User,
            json!({ "sshUser": "deploy", "sshPort": 65535, "buildOn": "local", "magicRollback": false,
                    "sudo": "doas -n", "selfCheck": "bin/check", "timeouts": { "lock": 31536000, "build": 1 } }),
        ),
        ok(
            "good_ssh_opts",
            User,
            json!({ "sshOpts": ["-i", "/k", "-oUserKnownHostsFile=/k", "-o", "ProxyJump b", "-4", "-J", "a@b:22", "-A"] }),
        ),
        ok(
            "good_health_checks",
            User,
            json!({ "healthChecks": [{ "command": ["true"] },
                                     { "http": "http://h:8080/x", "period": 1, "timeout": 31536000, "description": "web" }] }),
        ),
        ok(
            "null_is_the_default",
            User,
            json!({ "healthChecks": [{ "command": ["true"], "period": null, "description": null, "http": null }] }),
        ),
        ok(
            "resolved_health_check",
            Resolved,
            json!({ "healthChecks": [{ "description": "x", "command": null, "http": "http://x/", "period": 2, "timeout": 30 }] }),
        ),
        // ---- the names
        bad("at_in_hostname", User, json!({ "hostname": "root@web1" }),
            format!(r#"hostname: {HOST}, got a string ("root@web1"): contains '@': set the user in sshUser"#)),
        bad("empty_hostname", User, json!({ "hostname": "" }),
            format!(r#"hostname: {HOST}, got a string (""): is empty"#)),
        bad("dash_hostname", User, json!({ "hostname": "-oProxyCommand=x" }),
            format!(r#"hostname: {HOST}, got a string ("-oProxyCommand=x"): starts with '-'"#)),
        bad("space_in_hostname", User, json!({ "hostname": "a b" }),
            format!(r#"hostname: {HOST}, got a string ("a b"): contains whitespace"#)),
        bad("control_in_hostname", User, json!({ "hostname": "a\nb" }),
            format!(r#"hostname: {HOST}, got a string ("a\nb"): contains a control character"#)),
        bad("slash_in_hostname", User, json!({ "hostname": "a/b" }),
            format!(r#"hostname: {HOST}, got a string ("a/b"): contains '/'"#)),
        bad("query_in_hostname", User, json!({ "hostname": "web1?remote-program=sh" }),
            format!(r#"hostname: {HOST}, got a string ("web1?remote-program=sh"): contains '?', '#' or '&', which would change the store URI of a copy"#)),
        bad("fragment_in_hostname", User, json!({ "hostname": "web1#x" }),
            format!(r#"hostname: {HOST}, got a string ("web1#x"): contains '?', '#' or '&', which would change the store URI of a copy"#)),
        bad("ampersand_in_hostname", User, json!({ "hostname": "a&b" }),
            format!(r#"hostname: {HOST}, got a string ("a&b"): contains '?', '#' or '&', which would change the store URI of a copy"#)),
        bad("percent_in_hostname", User, json!({ "hostname": "web%41" }),
            format!(r#"hostname: {HOST}, got a string ("web%41"): contains '%', which only an IPv6 address's zone id may follow (fe80::1%eth0)"#)),
        bad("two_zones", User, json!({ "hostname": "fe80::1%a%b" }),
            format!(r#"hostname: {HOST}, got a string ("fe80::1%a%b"): contains '%', which only an IPv6 address's zone id may follow (fe80::1%eth0)"#)),
        bad("query_in_user", User, json!({ "sshUser": "ops?x=y" }),
            format!(r#"sshUser: {USER}, got a string ("ops?x=y"): contains '?', '#', '&' or '%', which would change the store URI of a copy"#)),
        bad("percent_in_user", User, json!({ "sshUser": "ops%20" }),
            format!(r#"sshUser: {USER}, got a string ("ops%20"): contains '?', '#', '&' or '%', which would change the store URI of a copy"#)),
        bad("colon_in_user", User, json!({ "sshUser": "a:b" }),
            format!(r#"sshUser: {USER}, got a string ("a:b"): contains ':'"#)),
        bad("control_in_user", User, json!({ "sshUser": "a\u{1b}b" }),
            format!(r#"sshUser: {USER}, got a string ("a\u001bb"): contains a control character"#)),
        bad("quote_in_configuration", User, json!({ "configuration": "a\"b" }),
            format!(r#"configuration: {CONFIG}, got a string ("a\"b"): contains '"', which a flake attribute path cannot hold: rename the nixosConfigurations attribute"#)),
        bad("empty_configuration", User, json!({ "configuration": "" }),
            format!(r#"configuration: {CONFIG}, got a string (""): is empty"#)),
        // ---- numbers
        bad("port_zero", User, json!({ "sshPort": 0 }), format!("sshPort: {PORT}, got an integer (0)")),
        bad("port_too_high", User, json!({ "sshPort": 70000 }),
            format!("sshPort: {PORT}, got an integer (70000)")),
        bad("port_as_string", User, json!({ "sshPort": "22" }),
            format!(r#"sshPort: {PORT}, got a string ("22")"#)),
        bad("huge_timeout", User, json!({ "timeouts": { "lock": 9223372036854775807_i64 } }),
            format!("timeouts.lock: {SECONDS}, got an integer (9223372036854775807)")),
        bad("timeout_over_a_year", User, json!({ "timeouts": { "lock": 31536001 } }),
            format!("timeouts.lock: {SECONDS}, got an integer (31536001)")),
        bad("zero_timeout", User, json!({ "timeouts": { "copy": 0 } }),
            format!("timeouts.copy: {SECONDS}, got an integer (0)")),
        bad("unknown_phase", User, json!({ "timeouts": { "biuld": 5 } }),
            r#"timeouts.biuld: unknown option; did you mean "build"? (known options: activate, boot, build, confirm, connect, copy, lock, preflight, reboot, selfCheck)"#),
        bad("partial_timeouts", Resolved, json!({ "timeouts": { "lock": 5 } }),
            format!("timeouts.activate: {MISSING}")),
        // ---- selfCheck
        bad("absolute_self_check", User, json!({ "selfCheck": "/bin/check" }),
            format!(r#"selfCheck: {SELF_CHECK}, got a string ("/bin/check"): is absolute: it must be a path inside the toplevel, e.g. "bin/check""#)),
        bad("dotdot_self_check", User, json!({ "selfCheck": "bin/../../x" }),
            format!(r#"selfCheck: {SELF_CHECK}, got a string ("bin/../../x"): contains '..': it must stay inside the toplevel"#)),
        bad("empty_self_check", User, json!({ "selfCheck": "" }),
            format!(r#"selfCheck: {SELF_CHECK}, got a string (""): is empty: use null for auto-detection"#)),
        // ---- sshOpts
        bad("ssh_port_option", User, json!({ "sshOpts": ["-p", "22"] }),
            format!(r#"sshOpts.0: {OPT}, got a string ("-p"): set sshPort instead"#)),
        bad("ssh_user_option", User, json!({ "sshOpts": ["-i", "/k", "-lx"] }),
            format!(r#"sshOpts.2: {OPT}, got a string ("-lx"): set sshUser instead"#)),
        bad("unsupported_ssh_option", User, json!({ "sshOpts": ["-X"] }),
            format!(r#"sshOpts.0: {OPT}, got a string ("-X"): not supported: write it as -o Key=Value"#)),
        bad("o_without_value", User, json!({ "sshOpts": ["-4", "-o"] }),
            format!(r#"sshOpts.1: {OPT}, got a string ("-o"): needs a value: put it in the next element or right after the flag"#)),
        bad("o_without_key_value", User, json!({ "sshOpts": ["-o", "Key"] }),
            r#"sshOpts.1: expected Key=Value or "Key Value" after -o, got a string ("Key"): is not Key=Value"#),
        bad("line_break_in_ssh_option", User, json!({ "sshOpts": ["-oUser=x\nHost *"] }),
            format!(r#"sshOpts.0: {OPT}, got a string ("-oUser=x\nHost *"): contains a control character"#)),
        // ---- health checks
        bad("key_without_source", User, json!({ "keys": { "a": {} } }),
            format!("keys.a: {KEY}, got an attribute set: needs exactly one of text, keyFile or keyCommand")),
        bad("key_with_two_sources", User, json!({ "keys": { "a": { "text": "x", "keyFile": "/k" } } }),
            format!("keys.a: {KEY}, got an attribute set: needs exactly one of text, keyFile or keyCommand")),
        bad("key_text_is_never_shown", User, json!({ "keys": { "a": { "text": 271828 } } }),
            "keys.a.text: expected a string (the key's content), got an integer"),
        bad("key_itself_is_never_shown", User, json!({ "keys": { "a": "hunter2" } }),
            format!("keys.a: {KEY}, got a string")),
        bad("keys_not_a_set", User, json!({ "keys": [] }),
            "keys: expected an attribute set of keys (name = { text, keyFile or keyCommand; ... }), got a list"),
        bad("key_file_relative", User, json!({ "keys": { "a": { "keyFile": "secrets/db" } } }),
            format!(r#"keys.a.keyFile: {KEY_FILE}, got a string ("secrets/db"): is relative: give an absolute path on the deploying machine"#)),
        bad("key_file_in_store", User, json!({ "keys": { "a": { "keyFile": "/nix/store/aaaa-src/db" } } }),
            format!(r#"keys.a.keyFile: {KEY_FILE}, got a string ("/nix/store/aaaa-src/db"): is in the Nix store, which every user can read: keep the key outside the store"#)),
        bad("key_command_empty", User, json!({ "keys": { "a": { "keyCommand": [] } } }),
            "keys.a.keyCommand: expected a non-empty list of strings (a command run on the deploying machine; its stdout is the key), got a list: is empty"),
        bad("key_command_not_strings", User, json!({ "keys": { "a": { "keyCommand": ["pass", 1] } } }),
            "keys.a.keyCommand.1: expected a string, got an integer (1)"),
        bad("key_name_with_slash", User, json!({ "keys": { "a": { "text": "x", "name": "a/b" } } }),
            format!(r#"keys.a.name: {KEY_NAME}, got a string ("a/b"): contains '/': the name is a file name inside destDir"#)),
        bad("key_name_dot_dot", User, json!({ "keys": { "a": { "text": "x", "name": ".." } } }),
            format!(r#"keys.a.name: {KEY_NAME}, got a string (".."): is '.' or '..'"#)),
        bad("key_name_reserved", User, json!({ "keys": { "a": { "text": "x", "name": ".deploy-flake-old" } } }),
            format!(r#"keys.a.name: {KEY_NAME}, got a string (".deploy-flake-old"): starts with '.deploy-flake', which deploy-flake keeps for itself in destDir"#)),
        bad("key_dest_relative", User, json!({ "keys": { "a": { "text": "x", "destDir": "run/keys" } } }),
            format!(r#"keys.a.destDir: {DEST}, got a string ("run/keys"): is relative"#)),
        bad("key_dest_trailing_slash", User, json!({ "keys": { "a": { "text": "x", "destDir": "/run/keys/" } } }),
            format!(r#"keys.a.destDir: {DEST}, got a string ("/run/keys/"): has an empty component or a trailing '/'"#)),
        bad("key_dest_dot_dot", User, json!({ "keys": { "a": { "text": "x", "destDir": "/run/../etc" } } }),
            format!(r#"keys.a.destDir: {DEST}, got a string ("/run/../etc"): has a '.' or '..' component"#)),
        bad("key_dest_in_nix", User, json!({ "keys": { "a": { "text": "x", "destDir": "/nix/var/keys" } } }),
            format!(r#"keys.a.destDir: {DEST}, got a string ("/nix/var/keys"): is inside /nix"#)),
        bad("key_user_with_colon", User, json!({ "keys": { "a": { "text": "x", "user": "a:b" } } }),
            format!(r#"keys.a.user: {OWNER}, got a string ("a:b"): contains ':'"#)),
        bad("key_group_empty", User, json!({ "keys": { "a": { "text": "x", "group": "" } } }),
            format!(r#"keys.a.group: {OWNER}, got a string (""): is empty"#)),
        bad("key_mode_setuid", User, json!({ "keys": { "a": { "text": "x", "permissions": "4755" } } }),
            format!(r#"keys.a.permissions: {MODE}, got a string ("4755"): is not an octal mode without special bits"#)),
        bad("key_mode_symbolic", User, json!({ "keys": { "a": { "text": "x", "permissions": "u=rw" } } }),
            format!(r#"keys.a.permissions: {MODE}, got a string ("u=rw"): is not an octal mode without special bits"#)),
        bad("key_upload_at", User, json!({ "keys": { "a": { "text": "x", "uploadAt": "later" } } }),
            r#"keys.a.uploadAt: expected "pre-activation" or "post-activation", got a string ("later")"#),
        bad("key_unknown_field", User, json!({ "keys": { "a": { "text": "x", "destdir": "/x" } } }),
            r#"keys.a.destdir: unknown option; did you mean "destDir"? (known options: destDir, group, keyCommand, keyFile, name, permissions, text, uploadAt, user)"#),
        bad("keys_that_clash", User, json!({ "keys": { "a": { "text": "x", "name": "b" }, "b": { "text": "y" } } }),
            "keys.b: writes /run/keys/b, as keys.a does: give one of them another name or destDir"),
        bad("key_missing_field", Resolved, json!({ "keys": { "a": { "name": "a", "text": "x", "keyFile": null, "keyCommand": null, "destDir": "/run/keys", "user": "root", "group": "root", "permissions": "0600" } } }),
            format!("keys.a.uploadAt: {MISSING}")),
        bad("command_and_http", User, json!({ "healthChecks": [{ "command": ["true"], "http": "http://x/" }] }),
            format!("healthChecks.0: {CHECK}, got an attribute set: {ONE_OF}")),
        bad("empty_command", User, json!({ "healthChecks": [{ "command": [] }] }),
            "healthChecks.0.command: expected a non-empty list of strings (the command and its arguments), got a list: is empty"),
        bad("https_check", User, json!({ "healthChecks": [{ "http": "https://x/" }] }),
            r#"healthChecks.0.http: expected an http:// URL, got a string ("https://x/"): does not start with http:// (https is not supported)"#),
        bad("zero_period", User, json!({ "healthChecks": [{ "command": ["x"], "period": 0 }] }),
            format!("healthChecks.0.period: {SECONDS}, got an integer (0)")),
        bad("huge_check_timeout", User, json!({ "healthChecks": [{ "command": ["x"], "timeout": 31536001 }] }),
            format!("healthChecks.0.timeout: {SECONDS}, got an integer (31536001)")),
        bad("unknown_check_key", User, json!({ "healthChecks": [{ "comand": ["x"] }] }),
            r#"healthChecks.0.comand: unknown option; did you mean "command"? (known options: command, description, http, period, timeout)"#),
        bad("null_period_in_a_resolved_record", Resolved,
            json!({ "healthChecks": [{ "description": "x", "command": ["true"], "http": null, "period": null, "timeout": 30 }] }),
            format!("healthChecks.0.period: {SECONDS}, got null")),
        bad("null_description_in_a_resolved_record", Resolved,
            json!({ "healthChecks": [{ "description": null, "command": ["true"], "http": null, "period": 2, "timeout": 30 }] }),
            "healthChecks.0.description: expected a string, got null"),
        // ---- the rest
        bad("bad_build_on", User, json!({ "buildOn": "remote" }),
            r#"buildOn: expected "target", "local" or "host", got a string ("remote")"#),
        bad("bad_magic_rollback", User, json!({ "magicRollback": "yes" }),
            r#"magicRollback: expected a boolean, got a string ("yes")"#),
        bad("bad_tag", User, json!({ "tags": ["web", 1] }),
            "tags.1: expected a string, got an integer (1)"),
        bad("empty_sudo", User, json!({ "sudo": "" }),
            r#"sudo: expected a command (not empty, no control characters), got a string (""): is empty"#),
        // ---- where systems are built
        ok("build_host_by_name", User, json!({ "buildOn": "host", "buildHost": "builder", "copyFrom": "build-host" })),
        ok(
            "build_host_destination",
            User,
            json!({ "buildOn": "host", "buildHost": "nix@[fe80::1]:2222", "buildHostSshOpts": ["-i", "/k", "-A"],
                    "buildHostCapacity": 1024, "pushTo": "s3://cache?region=eu-west-1" }),
        ),
        ok("prebuilt_system", User, json!({ "system": "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-x-24.05" })),
        bad("build_host_missing", User, json!({ "buildOn": "host" }),
            format!(r#"buildHost: {BUILD_HOST}, got null: buildOn is "host": name the build host (a host of deployFlake, or [user@]host[:port]), or pass --build-host"#)),
        bad("build_host_missing_resolved", Resolved, json!({ "buildOn": "host", "buildHost": null }),
            format!(r#"buildHost: {BUILD_HOST}, got null: buildOn is "host": name the build host (a host of deployFlake, or [user@]host[:port]), or pass --build-host"#)),
        bad("build_host_with_space", User, json!({ "buildOn": "host", "buildHost": "a b" }),
            format!(r#"buildHost: {BUILD_HOST}, got a string ("a b"): contains whitespace"#)),
        bad("build_host_dash", User, json!({ "buildHost": "-oProxyCommand=x" }),
            format!(r#"buildHost: {BUILD_HOST}, got a string ("-oProxyCommand=x"): starts with '-'"#)),
        bad("build_host_ssh_opt_p", User, json!({ "buildHostSshOpts": ["-p", "22"] }),
            format!(r#"buildHostSshOpts.0: {OPT}, got a string ("-p"): set sshPort instead"#)),
        bad("build_host_capacity", User, json!({ "buildHostCapacity": 1025 }),
            "buildHostCapacity: expected how many systems the build host builds at once: 0 (its core count) to 1024, got an integer (1025)"),
        bad("copy_from", User, json!({ "copyFrom": "target" }),
            r#"copyFrom: expected "deployer" or "build-host", got a string ("target")"#),
        bad("push_to_no_scheme", User, json!({ "pushTo": "/srv/cache" }),
            format!(r#"pushTo: {PUSH_TO}, got a string ("/srv/cache"): is not a store URI (scheme://...)"#)),
        bad("system_not_in_store", User, json!({ "system": "/tmp/result" }),
            format!(r#"system: {SYSTEM}, got a string ("/tmp/result"): is not a path directly in /nix/store"#)),
        bad("system_bad_hash", User, json!({ "system": "/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x" }),
            format!(r#"system: {SYSTEM}, got a string ("/nix/store/eeeeeeeeeeeeeeeeeeeeeeeeeeeeeeee-x"): is not a store path (/nix/store/<32-character hash>-<name>)"#)),
        bad("system_inside", User, json!({ "system": "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x/bin" }),
            format!(r#"system: {SYSTEM}, got a string ("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x/bin"): is not a path directly in /nix/store"#)),
        bad("unknown_key", User, json!({ "sshPrt": 22 }),
            r#"sshPrt: unknown option; did you mean "sshPort"? (known options: buildHost, buildHostCapacity, buildHostSshOpts, buildOn, configuration, copyFrom, healthChecks, hostname, keys, magicRollback, pushTo, selfCheck, sshOpts, sshPort, sshUser, substituteOnTarget, sudo, system, tags, timeouts)"#),
    ]
}

// ---------------------------------------------------------------------------

/// The first `error:` line of Nix's stderr, without `error: `.
fn error_of(stderr: &str) -> String {
    error_line(stderr)["error: ".len()..].to_string()
}

/// The settings over the defaults, unchecked: what a hand-written
/// `deployFlake` with the same fault holds. `per_phase`: timeouts merge
/// phase by phase, as mkDeployFlake merges them.
fn merged(name: &str, settings: &Value, per_phase: bool) -> Value {
    let mut record = serde_json::to_value(HostSpec::with_defaults(name)).unwrap();
    for (k, v) in settings.as_object().unwrap() {
        match (k.as_str(), v) {
            ("timeouts", Value::Object(t)) if per_phase => {
                for (phase, secs) in t {
                    record["timeouts"][phase] = secs.clone();
                }
            }
            _ => record[k] = v.clone(),
        }
    }
    record
}

/// A health check as mkDeployFlake resolves it (null is the default),
/// unchecked.
fn resolved_check(c: &Value) -> Value {
    let Some(obj) = c.as_object() else { return c.clone() };
    let mut r =
        json!({ "description": null, "command": null, "http": null, "period": 2, "timeout": 30 });
    for (k, v) in obj {
        if !v.is_null() {
            r[k] = v.clone();
        }
    }
    if r["description"].is_null() {
        r["description"] = match (&r["command"], &r["http"]) {
            (Value::Array(argv), _) => {
                json!(argv.iter().filter_map(Value::as_str).collect::<Vec<_>>().join(" "))
            }
            (_, Value::String(url)) => json!(format!("GET {url}")),
            _ => json!(""),
        };
    }
    r
}

/// Keys as mkDeployFlake resolves them (null is the default, `name` the
/// attribute's), unchecked.
fn resolved_keys(keys: &Value) -> Value {
    let Some(obj) = keys.as_object() else { return keys.clone() };
    let mut out = serde_json::Map::new();
    for (attr, k) in obj {
        let Some(fields) = k.as_object() else {
            out.insert(attr.clone(), k.clone());
            continue;
        };
        let mut r = json!({ "name": attr, "text": null, "keyFile": null, "keyCommand": null,
            "destDir": "/run/keys", "user": "root", "group": "root", "permissions": "0600",
            "uploadAt": "pre-activation" });
        for (f, v) in fields {
            if !v.is_null() {
                r[f] = v.clone();
            }
        }
        out.insert(attr.clone(), r);
    }
    Value::Object(out)
}

/// The record deployChecks and the tool read for a row.
fn record_of(row: &Row, from_mk: Option<&Value>) -> Value {
    match (row.kind, from_mk) {
        (User, Some(resolved)) => resolved.clone(),
        (User, None) => {
            let mut r = merged(row.name, &row.settings, true);
            if let Some(Value::Array(checks)) = row.settings.get("healthChecks") {
                r["healthChecks"] = Value::Array(checks.iter().map(resolved_check).collect());
            }
            if let Some(keys) = row.settings.get("keys") {
                r["keys"] = resolved_keys(keys);
            }
            r
        }
        (Resolved, _) => merged(row.name, &row.settings, false),
    }
}

/// The tool's verdict on one record: None, or its message without the hint.
fn tool_verdict(name: &str, record: &Value) -> Option<String> {
    let doc = json!({ "schemaVersion": 1, "hosts": { name: record } }).to_string();
    match inventory::parse(&doc) {
        Ok(inv) => {
            // What it read is the record, field for field.
            assert_eq!(&serde_json::to_value(&inv.hosts[name]).unwrap(), record, "{name}");
            None
        }
        Err(e) => {
            let e = e.to_string();
            let message = e.strip_suffix("; fix it in the flake's deployFlake");
            Some(message.unwrap_or_else(|| panic!("{name}: not a rule error: {e}")).to_string())
        }
    }
}

struct Fixture {
    dir: tempfile::TempDir,
}

impl Fixture {
    /// The rows and the nixosConfigurations names as files for Nix.
    fn new(rows: &[Row]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let settings: BTreeMap<&str, &Value> =
            rows.iter().filter(|r| r.kind == User).map(|r| (r.name, &r.settings)).collect();
        let mut configs: Vec<&str> = rows.iter().map(|r| r.name).collect();
        configs.extend(rows.iter().filter_map(|r| r.settings["configuration"].as_str()));
        std::fs::write(dir.path().join("rows.json"), serde_json::to_string(&settings).unwrap())
            .unwrap();
        std::fs::write(dir.path().join("configs.json"), serde_json::to_string(&configs).unwrap())
            .unwrap();
        Fixture { dir }
    }

    /// `lib`, `rows` (name -> user settings), `self` (every configuration
    /// throws) and `mk name` (that row's host from mkDeployFlake).
    fn prelude(&self) -> String {
        let file = |f: &str| nix_path(&self.dir.path().join(f));
        format!(
            r#"let
  lib = import {lib};
  rows = builtins.fromJSON (builtins.readFile {rows});
  self.nixosConfigurations = builtins.listToAttrs (map
    (name: {{ inherit name; value = throw "nixosConfigurations.${{name}} was evaluated"; }})
    (builtins.fromJSON (builtins.readFile {configs})));
  mk = name: (lib.mkDeployFlake {{ inherit self; hosts.${{name}} = rows.${{name}}; }}).hosts.${{name}};
in
"#,
            lib = nix_path(&repo_root().join("lib")),
            rows = file("rows.json"),
            configs = file("configs.json"),
        )
    }

    /// Every user row through mkDeployFlake at once: name -> record, or null
    /// when it threw.
    fn mk_all(&self) -> BTreeMap<String, Value> {
        let expr = format!(
            "{}builtins.mapAttrs (name: _: let r = builtins.tryEval (builtins.deepSeq (mk name) (mk name)); in if r.success then r.value else null) rows",
            self.prelude()
        );
        let out = run_nix(&["eval", "--json", "--impure", "--expr", &expr])
            .unwrap_or_else(|e| panic!("evaluating every row failed:\n{e}"));
        serde_json::from_str(&out).unwrap()
    }

    /// mkDeployFlake's message for one row.
    fn mk_error(&self, name: &str) -> String {
        let expr = format!("{}mk {}", self.prelude(), nix_string(name));
        match run_nix(&["eval", "--json", "--impure", "--expr", &expr]) {
            Ok(v) => panic!("{name}: mkDeployFlake accepted it on its own: {v}"),
            Err(e) => error_of(&e),
        }
    }

    /// deployChecks over `records`: Ok, or its problem lines.
    fn deploy_checks(&self, records: &BTreeMap<&str, Value>) -> Result<(), Vec<String>> {
        let file = self.dir.path().join("records.json");
        std::fs::write(&file, serde_json::to_string(records).unwrap()).unwrap();
        let expr = format!(
            "{}(lib.deployChecks {{ inherit self; system = \"x86_64-linux\"; deployFlake = {{ schemaVersion = 1; hosts = builtins.fromJSON (builtins.readFile {}); }}; }}).drvPath",
            self.prelude(),
            nix_path(&file)
        );
        match run_nix(&["eval", "--raw", "--impure", "--expr", &expr]) {
            Ok(drv) => {
                assert!(drv.ends_with("-deploy-flake-check.drv"), "{drv}");
                Ok(())
            }
            Err(e) => {
                assert!(error_of(&e).starts_with("deployChecks: deployFlake has "), "{e}");
                Err(e
                    .lines()
                    .filter_map(|l| l.trim_start().strip_prefix("- "))
                    .map(String::from)
                    .collect())
            }
        }
    }
}

#[test]
fn lib_deploy_checks_and_the_tool_agree_on_every_row() {
    let rows = table();
    let fixture = Fixture::new(&rows);
    let from_mk = fixture.mk_all();

    // (a) mkDeployFlake: the verdict, then each rejected row's message
    // (one evaluation per row, a few at a time).
    let rejected: Vec<&Row> =
        rows.iter().filter(|r| r.kind == User && from_mk[r.name].is_null()).collect();
    let messages: BTreeMap<&str, String> = std::thread::scope(|s| {
        let chunks: Vec<_> = rejected
            .chunks(rejected.len().div_ceil(4).max(1))
            .map(|chunk| {
                let fixture = &fixture;
                s.spawn(move || {
                    chunk.iter().map(|r| (r.name, fixture.mk_error(r.name))).collect::<Vec<_>>()
                })
            })
            .collect();
        chunks.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });

    // (b) deployChecks on every record at once, then on the accepted ones.
    let records: BTreeMap<&str, Value> = rows
        .iter()
        .map(|r| (r.name, record_of(r, from_mk.get(r.name).filter(|v| !v.is_null()))))
        .collect();
    let lines = fixture.deploy_checks(&records).expect_err("the table has bad rows");

    let mut failures = Vec::new();
    for row in &rows {
        let path = format!("deployFlake.hosts.{}", row.name);
        let want = row.want.as_ref().map(|w| format!("{path}.{w}"));
        let mut verdicts = Vec::new();
        if row.kind == User {
            let mk =
                if from_mk[row.name].is_null() { Some(messages[row.name].clone()) } else { None };
            verdicts.push(("mkDeployFlake", mk));
        }
        let checks: Vec<&String> =
            lines.iter().filter(|l| l.starts_with(&format!("{path}."))).collect();
        assert!(
            checks.len() <= 1,
            "{}: deployChecks reports more than one fault: {checks:?}",
            row.name
        );
        verdicts.push(("deployChecks", checks.first().map(|l| l.to_string())));
        verdicts.push(("the tool", tool_verdict(row.name, &records[row.name])));
        for (who, got) in verdicts {
            if got != want {
                failures.push(format!(
                    "{}: {who}\n     got {}\n    want {}",
                    row.name,
                    got.as_deref().unwrap_or("accepted"),
                    want.as_deref().unwrap_or("accepted")
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} disagreements:\n{}", failures.len(), failures.join("\n"));
    let good: BTreeMap<&str, Value> = rows
        .iter()
        .filter(|r| r.want.is_none())
        .map(|r| (r.name, records[r.name].clone()))
        .collect();
    assert_eq!(fixture.deploy_checks(&good), Ok(()), "deployChecks rejects a good row");

    // Written by a user, a null period is the default.
    assert_eq!(from_mk["null_is_the_default"]["healthChecks"][0]["period"], 2);
    assert_eq!(from_mk["null_is_the_default"]["healthChecks"][0]["description"], "true");
    // Every row was read: none is missing from a reader by accident.
    assert_eq!(from_mk.len(), rows.iter().filter(|r| r.kind == User).count());
    assert!(rejected.len() >= 30, "{}", rejected.len());
}
