//! NixOS's switch-to-configuration contract, branch by branch, on real
//! targets: what the host runs and boots afterwards, the exit code and the
//! reason.

use std::time::Duration;

use crate::common::{Lab, Suite, Target};
use crate::helpers::*;

/// Runs and boots `sys`, and is healthy.
fn assert_on(t: &Target, sys: &str) {
    assert_eq!(t.current_system().as_deref(), Some(sys), "{}: runs", t.name);
    assert_eq!(t.boot_profile().as_deref(), Some(sys), "{}: boots", t.name);
}

/// The system the bootloader's default entry boots.
fn default_entry(t: &Target) -> String {
    t.ssh_ok(
        "e=$(sed -n 's/^default //p' /boot/loader/loader.conf); sed -n 's/^system //p' /boot/loader/entries/$e",
    )
}

/// Another switch going on: nixos-rebuild's unit, switch-to-configuration's
/// lock found by `check`, or by `test` itself (with --no-check). Each time
/// the host is left as it is, without a rollback.
#[test]
fn another_switch_in_progress_makes_the_host_busy() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let cases = [
        ("nixos-rebuild-switch-to-configuration", "sleep 60", vec![], "lock"),
        (
            "lab-holds-stc-lock",
            "flock /run/nixos/switch-to-configuration.lock sleep 60",
            vec![],
            "self-check",
        ),
        (
            "lab-holds-stc-lock",
            "flock /run/nixos/switch-to-configuration.lock sleep 60",
            vec!["--no-check"],
            "activate",
        ),
    ];
    for (unit, cmd, flags, phase) in cases {
        t.ssh_ok(&format!("mkdir -p /run/nixos && systemd-run --unit={unit} {cmd}"));
        let mut args = vec!["--all"];
        args.extend(flags.iter().copied());
        let run = deploy(&f, &args);
        t.ssh_ok(&format!("systemctl stop {unit}"));
        assert_eq!(run.code, 1, "{unit} {flags:?}: {run}");
        assert_eq!((run.phase("h").as_str(), run.reason("h").as_str()), (phase, "busy"), "{run}");
        assert!(!events(&run.stdout).iter().any(|e| e["event"] == "rolled-back"), "{run}");
        assert_on(t, &v1);
    }
    // Once the other switch is over, the deploy goes through.
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 0, "{run}");
}

/// The system's own pre-switch check refuses it: nothing changes, its
/// output is shown with the ways out; --no-check switches anyway.
#[test]
fn a_pre_switch_check_refusal_changes_nothing_and_no_check_overrides_it() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "refuses-switch", "")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("h"), "failed");
    assert_eq!(
        (run.phase("h").as_str(), run.reason("h").as_str()),
        ("self-check", "pre-switch-check")
    );
    assert!(
        run.lines("h").iter().any(
            |l| l.contains("pre-switch check: refusing") && l.ends_with("check (lab scenario)")
        ),
        "{run}"
    );
    let msg = run.message("h");
    assert!(msg.contains("--no-check") && msg.contains("--goal boot"), "{msg}");
    assert_on(t, &v1);

    let run = deploy(&f, &["--all", "--no-check"]);
    assert_eq!(run.code, 0, "{run}");
    assert_on(t, &run.system("h"));
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), "healthy-v2");
}

/// A changed switch inhibitor refuses a live switch; the way in is
/// --goal boot and a reboot.
#[test]
fn a_switch_inhibitor_refuses_a_live_switch_and_boot_plus_reboot_gets_in() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "inhibited", "")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!((run.code, run.reason("h").as_str()), (1, "pre-switch-check"), "{run}");
    assert!(run.lines("h").iter().any(|l| l.contains("changes to critical components")), "{run}");
    assert_on(t, &v1);

    let run = deploy(&f, &["--all", "--goal", "boot"]);
    assert_eq!(run.code, 0, "{run}");
    let new = run.report("h")["boot"].as_str().unwrap().to_string();
    assert!(new.contains("inhibited"), "{new}");
    assert_eq!(t.current_system(), Some(v1), "boot only: still running v1");
    assert_eq!(t.boot_profile(), Some(new.clone()));
    t.reboot();
    assert_eq!(t.current_system(), Some(new));
}

/// `test` exits 100 for an incompatible init: nothing was activated, the
/// report says a reboot is required and how; --goal boot and a reboot run it.
#[test]
fn an_incompatible_init_requires_a_reboot_and_changes_nothing() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "new-init", "")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("h"), "failed");
    assert_eq!(
        (run.phase("h").as_str(), run.reason("h").as_str()),
        ("activate", "reboot-required")
    );
    assert!(run.message("h").contains("--goal boot and reboot"), "{run}");
    assert!(!events(&run.stdout).iter().any(|e| e["event"] == "rolled-back"), "{run}");
    assert_on(t, &v1);
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), "healthy-v1");

    let run = deploy(&f, &["--all", "--test=skip"]);
    assert_eq!(run.code, 0, "{run}");
    t.reboot();
    let new = t.current_system().unwrap();
    assert!(new.contains("new-init"), "{new}");
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), "healthy-v2");
}

/// A failed snippet of the activation script (exit 2, the switch went on):
/// its own reason, and the host is rolled back.
#[test]
fn a_failed_activation_script_rolls_back_with_its_own_reason() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "activation-script-fails", "")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("h"), "rolled-back");
    assert_eq!(
        (run.phase("h").as_str(), run.reason("h").as_str()),
        ("activate", "activation-script")
    );
    assert_on(t, &v1);
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), "healthy-v1");
    assert_eq!(t.system_state(), "running");
}

/// A unit that had failed before the deploy is reset by the switch (as
/// NixOS does): a change whose own unit fails is still rolled back for
/// that unit alone (exit 1, not ROLLBACK FAILED), and the host comes back
/// on its previous system, running.
#[test]
fn a_unit_failed_before_the_deploy_is_reset_and_the_new_failure_rolls_back() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    t.make_degraded();
    let f = flake(&lab, &[host_entry(&lab, "h", t, "failing-unit", "")]);
    let run = deploy(&f, &["--all", "--skip-preflight"]);
    assert_eq!(run.code, 1, "{run}");
    assert_eq!(run.outcome("h"), "rolled-back", "{run}");
    assert_eq!(run.reason("h"), "activation-failed");
    let msg = run.message("h");
    assert!(msg.contains("demo-broken.service"), "the new system's failure: {msg}");
    assert!(!msg.contains("lab-broken.service"), "reset by the switch: {msg}");
    assert_on(t, &v1);
    assert_eq!(t.ssh_ok("systemctl is-failed lab-broken.service || true"), "inactive");
    assert_eq!(t.ssh_ok("systemctl is-failed demo-broken.service || true"), "inactive");
    assert_eq!(t.system_state(), "running");
}

/// The bootloader step fails after the profile moved: the report says what
/// runs and what boots; re-runs are never "up to date" until the boot entry
/// was written, and then finish it without activating again.
#[test]
fn a_failed_boot_step_is_reported_exactly_and_a_rerun_finishes_it() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    t.ssh_ok("touch /etc/lab-bootloader-broken");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f, &["--all"]);
    assert_eq!(run.code, 3, "{run}");
    assert_eq!((run.phase("h").as_str(), run.reason("h").as_str()), ("boot", "boot-entry"));
    let v2 = run.system("h");
    let msg = run.message("h");
    assert!(msg.contains(&v2) && msg.contains("may still boot the previous system"), "{msg}");
    assert_eq!(t.current_system(), Some(v2.clone()), "runs the confirmed new system");
    assert_eq!(t.boot_profile(), Some(v2.clone()), "the profile moved");
    assert_eq!(default_entry(t), v1, "the bootloader still boots v1");

    // Not up to date while the bootloader is broken.
    let again = deploy(&f, &["--all"]);
    assert_eq!((again.code, again.reason("h").as_str()), (3, "boot-entry"), "{again}");

    t.ssh_ok("rm /etc/lab-bootloader-broken");
    let unit = invocation(t, "demo-web.service");
    let fixed = deploy(&f, &["--all"]);
    assert_eq!(fixed.code, 0, "{fixed}");
    assert_eq!(fixed.outcome("h"), "deployed");
    assert!(
        !fixed.lines("h").iter().any(|l| l.contains("activating")),
        "no re-activation: {fixed}"
    );
    assert_eq!(invocation(t, "demo-web.service"), unit);
    assert_eq!(default_entry(t), v2);
    assert_eq!(deploy(&f, &["--all"]).outcome("h"), "up-to-date");
}

/// `rollback --to-generation N` makes that system the newest generation,
/// so a bootloader that keeps only the newest entries boots it.
#[test]
fn rollback_to_an_old_generation_makes_it_the_newest_and_a_reboot_comes_up_in_it() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    for config in ["healthy-v2", "chatty-activation", "slow-activation"] {
        let f = flake(&lab, &[host_entry(&lab, "h", t, config, "")]);
        assert_eq!(deploy(&f, &["--all"]).code, 0);
    }
    // The lab's bootloader keeps the 3 newest generations: 1 is gone.
    assert_eq!(
        t.ssh_ok("ls /boot/loader/entries"),
        "nixos-generation-2.conf\nnixos-generation-3.conf\nnixos-generation-4.conf"
    );
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v1", "")]);
    let back = deploy(&f, &["rollback", "--all", "--to-generation", "1"]);
    assert_eq!(back.code, 0, "{back}");
    assert_eq!(back.system("h"), v1);
    assert_on(t, &v1);
    assert_eq!(default_entry(t), v1, "the newest entry, and the default");
    t.reboot();
    assert_eq!(t.current_system(), Some(v1));
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), "healthy-v1");
}

/// A system the profile points at through an older generation (switched
/// back to by hand, as `nixos-rebuild switch --rollback` does) has no boot
/// entry where the bootloader keeps the newest generations only. A deploy
/// of it is not "up to date": it becomes the newest generation, and a
/// reboot comes back in it.
#[test]
fn a_system_on_an_old_generation_is_made_the_newest_and_a_reboot_comes_back_in_it() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    for config in ["healthy-v2", "chatty-activation", "slow-activation", "healthy-v2-with-tool"] {
        let f = flake(&lab, &[host_entry(&lab, "h", t, config, "")]);
        assert_eq!(deploy(&f, &["--all"]).code, 0);
    }
    let profile = "/nix/var/nix/profiles/system";
    t.ssh_ok(&format!(
        "nix-env -p {profile} --switch-generation 1 && {profile}/bin/switch-to-configuration switch"
    ));
    assert_on(t, &v1);
    assert_ne!(default_entry(t), v1, "generations 3 to 5 have entries, 1 has none");

    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v1", "")]);
    let run = deploy(&f, &["--all", "--reboot", "always"]);
    eprintln!("{run}");
    assert_eq!(run.code, 0, "{run}");
    assert_eq!((run.outcome("h").as_str(), run.reason("h").as_str()), ("deployed", ""));
    assert_eq!((run.system("h"), run.report("h")["boot"].as_str()), (v1.clone(), Some(&*v1)));
    assert_eq!(t.booted_system(), Some(v1.clone()), "the reboot came back in it");
    assert_on(t, &v1);
    assert_eq!(default_entry(t), v1);
    assert_eq!(t.ssh_ok(&format!("readlink {profile}")), "system-6-link");
    assert_eq!(deploy(&f, &["--all"]).outcome("h"), "up-to-date");
}

/// A bootloader that writes the entries but leaves its default entry on
/// another system (switch-to-configuration boot exits 0): the boot step
/// says so, and the host is not "up to date" until its default is the
/// system; a re-run then finishes the boot step without activating again.
#[test]
fn a_default_entry_left_on_another_system_is_no_boot_entry() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    t.ssh_ok("touch /etc/lab-bootloader-keeps-default");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f, &["--all"]);
    eprintln!("{run}");
    assert_eq!(run.code, 3, "{run}");
    assert_eq!((run.phase("h").as_str(), run.reason("h").as_str()), ("boot", "boot-entry"));
    let v2 = run.system("h");
    let msg = run.message("h");
    assert!(msg.contains(&format!("the bootloader's default entry boots {v1}, not {v2}")), "{msg}");
    assert_eq!(default_entry(t), v1);
    assert_eq!(deploy(&f, &["--all"]).code, 3, "not up to date while it boots v1");

    t.ssh_ok("rm /etc/lab-bootloader-keeps-default");
    let fixed = deploy(&f, &["--all"]);
    assert_eq!((fixed.code, fixed.outcome("h")), (0, "deployed".into()), "{fixed}");
    assert!(!fixed.lines("h").iter().any(|l| l.contains("activating")), "{fixed}");
    assert_eq!(default_entry(t), v2);
    assert_eq!(deploy(&f, &["--all"]).outcome("h"), "up-to-date");
}

/// A boot entry the system's pre-switch checks refuse, on a host whose
/// profile points at an older generation: the profile points at exactly
/// the system it did before (not at "the generation before" the refused
/// one), and the report says so.
#[test]
fn a_refused_boot_entry_sets_the_profile_back_to_exactly_what_it_was() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    for config in ["healthy-v2", "healthy-v2-with-tool"] {
        let f = flake(&lab, &[host_entry(&lab, "h", t, config, "")]);
        assert_eq!(deploy(&f, &["--all"]).code, 0);
    }
    let profile = "/nix/var/nix/profiles/system";
    t.ssh_ok(&format!(
        "nix-env -p {profile} --switch-generation 1 && {profile}/bin/switch-to-configuration switch"
    ));
    assert_on(t, &v1);
    let f = flake(&lab, &[host_entry(&lab, "h", t, "refuses-switch", "")]);
    let run = deploy(&f, &["--all", "--goal", "boot"]);
    eprintln!("{run}");
    assert_eq!(run.code, 3, "{run}");
    assert_eq!((run.phase("h").as_str(), run.reason("h").as_str()), ("boot", "pre-switch-check"));
    assert!(run.message("h").contains(&format!("points at {v1} again")), "{run}");
    assert_eq!(run.system("h"), v1, "--goal boot activated nothing");
    assert_on(t, &v1);
}

/// --install-bootloader reaches the bootloader (NIXOS_INSTALL_BOOTLOADER=1).
#[test]
fn install_bootloader_is_passed_on() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    assert_eq!(t.ssh_ok("test -e /boot/loader/installed && echo yes || echo no"), "no");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f, &["--all", "--install-bootloader"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(t.ssh_ok("test -e /boot/loader/installed && echo yes || echo no"), "yes");
}

/// Every report says whether the host needs a reboot to run what it boots.
#[test]
fn reports_say_when_a_reboot_is_needed() {
    let lab = Lab::boot(1, Suite::Trixie);
    let t = &lab.targets[0];
    baseline(&lab, "h", t, "healthy-v1");
    t.reboot();
    let needs = |config: &str| {
        let f = flake(&lab, &[host_entry(&lab, "h", t, config, "")]);
        let run = deploy(&f, &["--all"]);
        assert_eq!(run.code, 0, "{run}");
        run.report("h")["needs_reboot"].clone()
    };
    assert_eq!(needs("healthy-v2"), serde_json::json!([]));
    assert_eq!(needs("new-kernel"), serde_json::json!(["kernel", "initrd", "kernel-modules"]));
    t.reboot();
    assert_eq!(
        needs("new-kernel"),
        serde_json::json!([]),
        "booted into it: {}",
        t.current_system().unwrap()
    );
}

/// The goals: test (runs it, boots the old one), boot (boots it, runs the
/// old one until a reboot).
#[test]
fn goals_test_and_boot_change_what_runs_or_what_boots() {
    let lab = Lab::boot(1, Suite::Bookworm);
    let t = &lab.targets[0];
    let v1 = baseline(&lab, "h", t, "healthy-v1");
    let f = flake(&lab, &[host_entry(&lab, "h", t, "healthy-v2", "")]);
    let run = deploy(&f, &["--all", "--goal", "test"]);
    assert_eq!(run.code, 0, "{run}");
    let v2 = run.system("h");
    assert_eq!(t.current_system(), Some(v2.clone()));
    assert_eq!(t.boot_profile(), Some(v1.clone()));
    assert_eq!(run.report("h")["boot"], v1.as_str());
    // Back to v1 for the boot goal.
    assert_eq!(
        deploy(&flake(&lab, &[host_entry(&lab, "h", t, "healthy-v1", "")]), &["--all"]).code,
        0
    );
    let run = deploy(&f, &["--all", "--goal", "boot"]);
    assert_eq!(run.code, 0, "{run}");
    assert_eq!(t.current_system(), Some(v1.clone()), "nothing activated");
    assert_eq!(t.boot_profile(), Some(v2.clone()));
    assert_eq!(t.ssh_ok("cat /run/demo-web/version"), "healthy-v1");
    t.reboot();
    assert_eq!(t.current_system(), Some(v2));
    let _ = Duration::ZERO;
}
