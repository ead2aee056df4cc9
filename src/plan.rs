//! The dry-run plan: what a run would do, rendered as stable text (one
//! block per host, in deployment order, which is sorted by attribute name
//! with ad hoc destinations last).

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::cli::{Deploy, Options};
use crate::events::Phase;
use crate::fleet::HostSpec;
use crate::rollout::Plan;
use crate::select::Target;

/// Renders the plan. Pure; the output depends only on its arguments.
/// `build_hosts`: each build host's `user@host:port`, by its name.
pub fn render(
    targets: &[Target],
    options: &Options,
    deploy: &Deploy,
    rollout: &Plan,
    build_hosts: &BTreeMap<String, String>,
) -> String {
    let mut out = String::with_capacity(512 * (targets.len() + 1));
    let n = targets.len();
    let _ = writeln!(
        out,
        "dry run: {n} host{} from flake {}; nothing will be touched",
        if n == 1 { "" } else { "s" },
        crate::redact::flake_ref(&options.flake)
    );
    let _ = writeln!(
        out,
        "parallel: {}; preflight: {}; force: {}",
        options.max_parallel.map_or("unlimited".to_string(), |m| m.to_string()),
        if deploy.preflight { "run" } else { "skip" },
        if deploy.force { "yes" } else { "no" },
    );
    let goal = match deploy.goal {
        crate::pipeline::Goal::Switch => "switch (activate, confirm, then write the boot entry)",
        crate::pipeline::Goal::Test => "test (activate and confirm; the boot entry stays)",
        crate::pipeline::Goal::Boot => "boot (write the boot entry only; it runs after a reboot)",
    };
    let env = &deploy.switch_env;
    let reboot = match deploy.reboot {
        crate::pipeline::Reboot::Never => "",
        crate::pipeline::Reboot::IfNeeded => {
            "; then reboot where it does not run what it boots, and wait for it (timeouts.reboot)"
        }
        crate::pipeline::Reboot::Always => {
            "; then reboot into it, and wait for it (timeouts.reboot)"
        }
    };
    let _ = writeln!(
        out,
        "goal: {goal}{reboot}; pre-switch checks: {}{}",
        if env.no_check { "skipped (--no-check)" } else { "run" },
        if env.install_bootloader { "; the bootloader is installed too" } else { "" },
    );
    if let crate::pipeline::Mode::Rollback { to_generation } = &deploy.mode {
        let _ = writeln!(
            out,
            "rollback: each host returns to {} of its system profile (configuration and build below are not used)",
            to_generation.map_or("the generation before the current one".to_string(), |g| format!("generation {g}"))
        );
    }
    if let Some(key) = &options.build.sign_key {
        let _ =
            writeln!(out, "signing: what is pushed to a cache is signed with {}", key.display());
    }
    render_waves(&mut out, targets, rollout);
    let flake = crate::redact::flake_ref(&options.flake);
    for t in targets {
        out.push('\n');
        render_host(&mut out, t, &flake, build_hosts);
    }
    out
}

/// The rollout: its waves in order, the failure budget and the soak.
fn render_waves(out: &mut String, targets: &[Target], plan: &Plan) {
    if !plan.is_staged() {
        let _ = writeln!(out, "rollout: every host at once (no waves, no soak)");
        return;
    }
    let n = plan.waves.len();
    let soak = match plan.soak {
        0 => "no soak".to_string(),
        s => format!("after each wave, {s} s of soak, then its hosts are checked again"),
    };
    let _ = writeln!(
        out,
        "rollout: {n} wave{}; a wave starts once the previous one ended; {soak}; no further wave \
         after more than {} failed host{} (--max-failures {})",
        if n == 1 { "" } else { "s" },
        plan.budget,
        if plan.budget == 1 { "" } else { "s" },
        plan.max_failures
    );
    for (i, w) in plan.waves.iter().enumerate() {
        let names: Vec<&str> = w.hosts.iter().map(|h| targets[*h].name.as_str()).collect();
        let canary = if w.canary { " (canary)" } else { "" };
        let _ = writeln!(out, "  wave {}{canary}: {}", i + 1, names.join(", "));
    }
}

fn render_host(out: &mut String, t: &Target, flake: &str, build_hosts: &BTreeMap<String, String>) {
    let s = &t.spec;
    let _ = writeln!(out, "{}", t.name);
    // Written in place: a plan of 10,000 hosts spends its time here.
    let (open, close) = if s.hostname.contains(':') { ("[", "]") } else { ("", "") };
    let _ =
        writeln!(out, "  ssh:           {}@{open}{}{close}:{}", s.ssh_user, s.hostname, s.ssh_port);
    if !s.ssh_opts.is_empty() {
        let _ = writeln!(out, "  ssh options:   {}", s.ssh_opts.join(" "));
    }
    if s.ssh_user != "root" {
        let _ = writeln!(out, "  escalation:    {}", s.sudo);
    }
    let _ = writeln!(
        out,
        "  configuration: {flake}#nixosConfigurations.{}",
        nix_attr(&s.configuration)
    );
    let (built, copy) = crate::build::describe(s, build_hosts);
    let _ = writeln!(out, "  build on:      {built}");
    if let Some(copy) = copy {
        let _ = writeln!(out, "  copy:          {copy}");
    }
    let _ = writeln!(
        out,
        "  self-check:    {}",
        s.self_check.as_deref().unwrap_or("pre-activate-safety-checks, if present")
    );
    let _ = writeln!(
        out,
        "  rollback:      {}",
        if s.magic_rollback { "automatic unless confirmed" } else { "off" }
    );
    if !s.tags.is_empty() {
        let _ = writeln!(out, "  tags:          {}", s.tags.join(", "));
    }
    for c in &s.health_checks {
        let place = match c.probe {
            crate::fleet::Probe::Command(_) => "on the target",
            crate::fleet::Probe::Http(_) => "from here",
        };
        let _ = writeln!(
            out,
            "  health check:  {} ({place}; every {}s for up to {}s)",
            c.description, c.period, c.timeout
        );
    }
    // Where each key goes and as whom; never its content.
    for k in s.keys.values() {
        let _ = writeln!(out, "  key:           {}", crate::keys::describe(k));
    }
    out.push_str("  timeouts:      ");
    for (i, p) in Phase::ALL.iter().enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        let _ = write!(out, "{sep}{} {}s", p.timeout_key(), s.timeouts.get(*p));
    }
    out.push('\n');
}

/// `user@host:port`, with IPv6 addresses in brackets.
pub fn ssh_destination(s: &HostSpec) -> String {
    crate::ssh::Destination::new(s.login()).display()
}

/// A Nix attribute name, quoted when it is not a plain identifier:
/// `web1`, `"my host"`, `"a\${b}"`.
pub fn nix_attr(name: &str) -> String {
    if crate::inventory::is_plain_nix_identifier(name) {
        name.to_string()
    } else {
        nix_string(name)
    }
}

/// `s` as a Nix string literal.
pub fn nix_string(s: &str) -> String {
    let mut q = String::with_capacity(s.len() + 2);
    q.push('"');
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '"' => q.push_str("\\\""),
            '\\' => q.push_str("\\\\"),
            '\n' => q.push_str("\\n"),
            '\r' => q.push_str("\\r"),
            '\t' => q.push_str("\\t"),
            '$' if chars.peek() == Some(&'{') => q.push_str("\\$"),
            c => q.push(c),
        }
    }
    q.push('"');
    q
}
