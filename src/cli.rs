//! The command line (clap derive) and its translation into a validated
//! [`Options`]. Nothing here touches the network or the flake.

use clap::{Parser, ValueEnum};

mod build;
mod display;
mod docs;
mod intent;
mod sudo;
mod timeouts;
pub use build::{BuildArgs, BuildOptions};
pub use display::{ColorChoice, DisplayArgs, LiveJsonConflict, Progress, Terminal};
pub use docs::DocsCommand;
pub use intent::{Deploy, Intent};
pub use sudo::{SudoArgs, SudoPassword, SudoPasswordError};
pub use timeouts::parse_timeout;
use timeouts::{phase_list, timeout_help};

pub use crate::agent::SwitchEnv;
use crate::events::Phase;
pub use crate::pipeline::{Goal, Mode, Reboot};
use crate::rollout::{Overrides, Size};
use crate::rules;
use crate::select::{Selection, Target};

const EXAMPLES: &str = "\
Selecting hosts (first rule that applies):
  nixos://[user@]host[:port][/config]   ad hoc destination
  @tag                                  every host with that tag
  NAME                                  the deployFlake host of that attribute name
  user@host[:port][/config]             ad hoc destination
  a glob (web-*, db?, [ab]*)            matching attribute names (at least one)
  Otherwise NAME is an unknown host (closest names are suggested). Only when
  the flake has no deployFlake output is a bare host[:port][/config] taken as
  an ad hoc destination. Without /config, an ad hoc destination deploys the
  configuration named like its host; if that is a deployFlake host, its
  settings apply with hostname, user and port from the destination.
  IPv6 addresses go in brackets: nixos://root@[fe80::1]:2222/web

Examples:
  deploy-flake --all                          every host in deployFlake
  deploy-flake web1 db1                       by attribute name
  deploy-flake @web --exclude web-3           by tag, minus one host
  deploy-flake 'web-*' --max-parallel 4       by glob, four at a time
  deploy-flake nixos://root@10.0.0.5:2222/web1
  deploy-flake --dry-run --all --flake ./infra
  deploy-flake --all --timeout build=7200 --timeout confirm=60

Exit status: 0 all hosts succeeded; 1 some host failed, every host in a known
state (unchanged, rolled back, or deployed then failed: the report says what it
runs); 2 usage, inventory or evaluation error (no host touched); 3 a host may
be in an unknown state.";

/// Deploy the NixOS configurations of a flake to many hosts over ssh.
#[derive(Debug, Clone, Parser)]
#[command(
    name = "deploy-flake",
    version,
    about,
    after_long_help = EXAMPLES,
    after_help = "See --help for host selection rules and examples.",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(flatten)]
    pub args: Args,

    #[command(subcommand)]
    pub command: Option<Command>,

    /// Say what the tool does: -v every command run (quoted exactly as run)
    /// with its duration, -vv more. RUST_LOG overrides it.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,

    /// --progress and --color.
    #[command(flatten)]
    pub display: DisplayArgs,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum Command {
    /// Return hosts to an earlier generation of their system profile (the
    /// one before the current, or --to-generation N), through the same
    /// test / confirm / boot steps as a deploy.
    #[command(
        after_long_help = "Examples:\n  deploy-flake rollback web1\n  deploy-flake rollback --all --to-generation 41"
    )]
    Rollback {
        #[command(flatten)]
        args: Args,

        /// The generation to return to (see `nix-env -p
        /// /nix/var/nix/profiles/system --list-generations` on the host).
        #[arg(long, value_name = "N")]
        to_generation: Option<u32>,
    },
    /// Show what each host runs and boots, whether it needs a reboot, its
    /// failed units, who holds its lock and its last deploy, and where
    /// these drift apart; in parallel, one login each, read-only.
    #[command(
        after_long_help = "Examples:\n  deploy-flake status --all\n  deploy-flake status @web --json"
    )]
    Status {
        #[command(flatten)]
        query: Query,
    },
    /// Build what a deploy would, then show per host what would change:
    /// running -> new system, packages (old -> new version, added,
    /// removed), closure size, the units that would stop, start, restart or
    /// reload, and whether it needs a reboot. Activates nothing.
    #[command(
        after_long_help = "Examples:\n  deploy-flake diff --all\n  deploy-flake diff web1 --json"
    )]
    Diff {
        #[command(flatten)]
        query: Query,

        #[command(flatten)]
        build: BuildArgs,
    },
    /// Write the hosts' keys now (after a reboot emptied /run/keys), under the host lock.
    Keys {
        #[command(flatten)]
        query: Query,
        /// List each host's keys (name, file, owner, mode, never the content); touch nothing.
        #[arg(long)]
        dry_run: bool,
    },

    /// `completions SHELL` and `man`.
    #[command(flatten)]
    Docs(DocsCommand),
}

/// `--goal`: how far a deploy goes, or only what it would change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum GoalArg {
    Switch,
    Test,
    Boot,
    DryActivate,
}

/// `--reboot`: when to reboot a host into its new boot entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RebootArg {
    Never,
    IfNeeded,
    Always,
}

/// Which hosts, from which flake, how many at once, how to report: what
/// every command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Query {
    /// Hosts to deploy: attribute names, @tags, globs or destinations
    /// (nixos://[user@]host[:port][/config]).
    #[arg(value_name = "HOSTS")]
    pub hosts: Vec<String>,

    /// The flake whose deployFlake output lists the fleet.
    #[arg(long, value_name = "FLAKE", default_value = ".")]
    pub flake: String,

    /// Deploy every host in deployFlake.
    #[arg(long)]
    pub all: bool,

    /// Leave out hosts matching PATTERN (name, @tag or glob; it must match
    /// some host in deployFlake, or name an ad hoc destination given here);
    /// repeatable.
    #[arg(long, value_name = "PATTERN")]
    pub exclude: Vec<String>,

    /// Deploy at most N hosts at once (0 = no limit).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_PARALLEL)]
    pub max_parallel: usize,

    /// Write events as JSON Lines on stdout instead of human output.
    #[arg(long)]
    pub json: bool,

    #[arg(long = "timeout", value_name = "PHASE=SECONDS", help = timeout_help())]
    pub timeouts: Vec<String>,
    #[command(flatten)]
    pub sudo: SudoArgs,
}

/// The options of a deploy (and a rollback).
#[derive(Debug, Clone, clap::Args)]
pub struct Args {
    #[command(flatten)]
    pub query: Query,

    /// Print what would be done (hosts, ssh destinations, configurations,
    /// build locations, timeouts) and touch nothing.
    #[arg(long)]
    pub dry_run: bool,

    /// Re-activate hosts that already run the wanted system.
    #[arg(long)]
    pub force: bool,

    /// Do not check that the system is healthy before deploying.
    #[arg(long)]
    pub skip_preflight: bool,

    /// Whether to check the system's health before deploying (the original
    /// deploy-flake's flag; `skip` is the same as --skip-preflight).
    #[arg(long, value_name = "WHEN", value_enum)]
    pub preflight_check: Option<PreflightCheck>,

    /// Self-check to run before activating: a path inside the new system's
    /// toplevel (the original deploy-flake's flag; overrides every host's
    /// selfCheck).
    #[arg(long, value_name = "PATH")]
    pub pre_activate_script: Option<String>,

    /// How far to take each host: switch (activate, confirm over a fresh
    /// login, then write the boot entry), test (activate and confirm; the
    /// boot entry stays), boot (write the boot entry only: the system runs
    /// after the next reboot), dry-activate (build, then show what would
    /// change, as `deploy-flake diff`) [default: switch].
    #[arg(long, value_name = "GOAL", value_enum)]
    pub goal: Option<GoalArg>,

    /// Reboot each host into its new boot entry once it is written: never,
    /// if-needed (when the host does not run what it boots: a new kernel,
    /// initrd, kernel modules or init, or --goal boot), always. Waits for
    /// the host to come back (timeouts.reboot), then checks that it runs
    /// the new system and is healthy [default: never].
    #[arg(long, value_name = "WHEN", value_enum)]
    pub reboot: Option<RebootArg>,

    /// The original deploy-flake's flag: `--test=skip` writes the boot
    /// entry only (the same as --goal boot).
    #[arg(long = "test", value_name = "WHEN", value_enum)]
    pub test_step: Option<PreflightCheck>,

    /// Skip the systems' pre-switch checks and switch inhibitors
    /// (NIXOS_NO_CHECK=1 for the check, the activation and the boot entry).
    #[arg(long)]
    pub no_check: bool,

    /// Also (re)install the bootloader itself when writing the boot entry
    /// (NIXOS_INSTALL_BOOTLOADER=1).
    #[arg(long)]
    pub install_bootloader: bool,

    /// Before activating anything, build every host and show what would
    /// change on each (as `deploy-flake diff`), then ask once whether to go
    /// on. Needs a terminal, unless --yes answers for you.
    #[arg(long)]
    pub ask: bool,

    /// Answer yes to --ask (the changes are still shown).
    #[arg(long, requires = "ask")]
    pub yes: bool,

    /// Deploy these hosts first, as a wave of their own (names, @tags or
    /// globs); repeatable. Replaces deployFlake's rollout.canary.
    #[arg(long, value_name = "SELECTOR", help_heading = "Rollout")]
    pub canary: Vec<String>,

    /// No canary wave, whatever deployFlake's rollout says.
    #[arg(long, conflicts_with = "canary", help_heading = "Rollout")]
    pub no_canary: bool,

    /// The sizes of the waves after the canaries, as host counts or
    /// percentages of those hosts, e.g. 1,25%,100%; the last size repeats.
    /// Replaces deployFlake's rollout.batches.
    #[arg(long, value_name = "SIZES", help_heading = "Rollout")]
    pub batches: Option<String>,

    /// Once more hosts than this have failed (a count, or a percentage of
    /// the selected hosts), no further wave starts [flake default: 0].
    #[arg(long, value_name = "N|P%", help_heading = "Rollout")]
    pub max_failures: Option<String>,

    /// After each wave, let it run this long, then check its hosts again
    /// (system running, no new failed unit, health checks); a host that
    /// fails returns to the system it ran before. 0: no soak.
    #[arg(long, value_name = "SECONDS", help_heading = "Rollout")]
    pub soak: Option<u64>,

    #[command(flatten)]
    pub build: BuildArgs,
}

/// Default of `--max-parallel`: enough to deploy a rack at once without
/// opening hundreds of ssh connections from a laptop.
pub const DEFAULT_MAX_PARALLEL: usize = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PreflightCheck {
    Run,
    Skip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    Human,
    Json,
}

/// The validated run configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Options {
    pub flake: String,
    pub selection: Selection,
    /// `None` = no limit.
    pub max_parallel: Option<usize>,
    pub output: OutputFormat,
    /// `(phase, seconds)` in command line order.
    pub timeouts: Vec<(Phase, u64)>,
    /// What the run does, with the options only that takes.
    pub intent: Intent,
    /// Where the sudo password of the run comes from, if it has one.
    pub sudo_password: Option<SudoPassword>,
    /// Where systems are built and how they reach the hosts (a deploy, a diff).
    pub build: BuildOptions,
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CliError {
    #[error(
        "--flake `{0}`: give a flake reference without `#attribute` (deployFlake is read from it)"
    )]
    FlakeWithAttribute(String),

    #[error("--flake: the flake reference is empty (use `.` for the current directory)")]
    EmptyFlake,

    #[error("--timeout `{0}`: expected PHASE=SECONDS, e.g. --timeout build=7200")]
    TimeoutSyntax(String),

    #[error("--timeout `{arg}`: unknown phase `{phase}`{hint}; phases: {}", phase_list())]
    TimeoutPhase { arg: String, phase: String, hint: String },

    #[error("--timeout `{0}`: expected {expected}", expected = rules::seconds().1)]
    TimeoutSeconds(String),

    #[error("--skip-preflight contradicts --preflight-check=run: pass one of them")]
    PreflightConflict,

    #[error("--test=skip writes the boot entry only: it contradicts --goal {0}")]
    GoalConflict(&'static str),

    #[error(
        "--reboot {0} reboots a host into its new boot entry, but --goal {1} writes none: \
         use --goal switch or --goal boot (nothing was touched)"
    )]
    RebootWithoutBoot(&'static str, &'static str),

    #[error("--pre-activate-script `{path}` {problem}")]
    SelfCheck { path: String, problem: String },

    #[error("no hosts selected: name hosts, @tags or globs, or pass --all (see --help)")]
    NothingSelected,

    #[error("{flag} `{value}`: {problem}")]
    Rollout { flag: &'static str, value: String, problem: String },
    #[error("`{0}` deploys nothing")]
    NotADeploy(&'static str),
    #[error("{0}")]
    Build(String),
}

impl Cli {
    /// Validates the flags. Pure: the flake is not looked at.
    pub fn into_options(self) -> Result<Options, CliError> {
        match self.command {
            None => self.args.into_options(Mode::Deploy),
            Some(Command::Rollback { args, to_generation }) => {
                args.into_options(Mode::Rollback { to_generation })
            }
            Some(Command::Status { query }) => query.into_options(Intent::Status),
            Some(Command::Diff { query, build }) => Ok(Options {
                build: build.into_options().map_err(CliError::Build)?,
                ..query.into_options(Intent::Diff { mode: Mode::Deploy })?
            }),
            Some(Command::Keys { query, dry_run }) => query.into_options(Intent::Keys { dry_run }),
            Some(Command::Docs(d)) => Err(CliError::NotADeploy(d.name())),
        }
    }
}

impl Args {
    fn into_options(self, mode: Mode) -> Result<Options, CliError> {
        let preflight = match (self.skip_preflight, self.preflight_check) {
            (true, Some(PreflightCheck::Run)) => return Err(CliError::PreflightConflict),
            (true, _) | (false, Some(PreflightCheck::Skip)) => false,
            (false, _) => true,
        };
        if let Some(path) = &self.pre_activate_script {
            if let Some(p) = rules::string_problem("selfCheck", path) {
                return Err(CliError::SelfCheck { path: path.clone(), problem: p.into() });
            }
        }
        let (goal, diff) = match (self.goal, self.test_step) {
            (Some(GoalArg::Switch), Some(PreflightCheck::Skip)) => {
                return Err(CliError::GoalConflict("switch"))
            }
            (Some(GoalArg::Test), Some(PreflightCheck::Skip)) => {
                return Err(CliError::GoalConflict("test"))
            }
            (Some(GoalArg::DryActivate), Some(PreflightCheck::Skip)) => {
                return Err(CliError::GoalConflict("dry-activate"))
            }
            (_, Some(PreflightCheck::Skip)) | (Some(GoalArg::Boot), _) => (Goal::Boot, false),
            (Some(GoalArg::Test), _) => (Goal::Test, false),
            (Some(GoalArg::DryActivate), _) => (Goal::Switch, true),
            (Some(GoalArg::Switch) | None, _) => (Goal::Switch, false),
        };
        let reboot = match self.reboot {
            None | Some(RebootArg::Never) => Reboot::Never,
            Some(RebootArg::IfNeeded) => Reboot::IfNeeded,
            Some(RebootArg::Always) => Reboot::Always,
        };
        let no_boot_entry = match self.goal {
            Some(GoalArg::Test) => Some("test"),
            Some(GoalArg::DryActivate) => Some("dry-activate"),
            _ => None,
        };
        if let (Some(goal), true) = (no_boot_entry, reboot != Reboot::Never) {
            return Err(CliError::RebootWithoutBoot(reboot.as_str(), goal));
        }
        let build = self.build.into_options().map_err(CliError::Build)?;
        if diff {
            // `--goal dry-activate`: what the deploy (or rollback) would change.
            return Ok(Options { build, ..self.query.into_options(Intent::Diff { mode })? });
        }
        let deploy = Deploy {
            mode,
            goal,
            dry_run: self.dry_run,
            force: self.force,
            preflight,
            self_check: self.pre_activate_script,
            switch_env: SwitchEnv {
                no_check: self.no_check,
                install_bootloader: self.install_bootloader,
            },
            reboot,
            ask: self.ask.then_some(self.yes),
            rollout: rollout_overrides(
                self.canary,
                self.no_canary,
                self.batches,
                self.max_failures,
                self.soak,
            )?,
        };
        Ok(Options { build, ..self.query.into_options(Intent::Deploy(deploy))? })
    }
}

/// The rollout flags, checked as deployFlake's rollout is.
fn rollout_overrides(
    canary: Vec<String>,
    no_canary: bool,
    batches: Option<String>,
    max_failures: Option<String>,
    soak: Option<u64>,
) -> Result<Overrides, CliError> {
    let bad = |flag, value: &str, problem: String| CliError::Rollout {
        flag,
        value: value.to_string(),
        problem,
    };
    if let Some(c) = canary.iter().find(|c| c.is_empty()) {
        return Err(bad("--canary", c, "an empty selector".into()));
    }
    let batches = match batches {
        None => None,
        Some(list) => Some(
            list.split(',')
                .map(|b| {
                    let size = Size::parse(b.trim()).map_err(|p| bad("--batches", &list, p))?;
                    match size.problem_as_wave() {
                        Some(p) => Err(bad("--batches", &list, format!("{size}: {p}"))),
                        None => Ok(size),
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
        ),
    };
    let max_failures = match max_failures {
        None => None,
        Some(m) => Some(Size::parse(&m).map_err(|p| bad("--max-failures", &m, p))?),
    };
    if let Some(s) = soak.filter(|s| !rules::seconds().0.contains(s) && *s != 0) {
        let problem = format!("expected 0 (no soak) or {}", rules::seconds().1);
        return Err(bad("--soak", &s.to_string(), problem));
    }
    Ok(Overrides {
        canary: if no_canary { Some(vec![]) } else { (!canary.is_empty()).then_some(canary) },
        batches,
        max_failures,
        soak,
    })
}

impl Query {
    /// The options of `intent`, with the shared flags of this query.
    fn into_options(self, intent: Intent) -> Result<Options, CliError> {
        if self.flake.is_empty() {
            return Err(CliError::EmptyFlake);
        }
        if self.flake.contains('#') {
            return Err(CliError::FlakeWithAttribute(self.flake));
        }
        let timeouts =
            self.timeouts.iter().map(|a| parse_timeout(a)).collect::<Result<Vec<_>, _>>()?;
        if !self.all && self.hosts.is_empty() {
            return Err(CliError::NothingSelected);
        }
        Ok(Options {
            flake: self.flake,
            selection: Selection { hosts: self.hosts, all: self.all, exclude: self.exclude },
            max_parallel: (self.max_parallel > 0).then_some(self.max_parallel),
            output: if self.json { OutputFormat::Json } else { OutputFormat::Human },
            timeouts,
            intent,
            sudo_password: self.sudo.source(),
            build: BuildOptions::default(),
        })
    }
}

impl Options {
    /// Applies command-line overrides (timeouts, self-check) to the
    /// selected hosts, so that the plan and the run see the same values.
    pub fn apply_overrides(&self, targets: &mut [Target]) {
        for t in targets.iter_mut() {
            for (phase, secs) in &self.timeouts {
                *t.spec.timeouts.get_mut(*phase) = *secs;
            }
            if let Some(sc) = self.intent.deploy().and_then(|d| d.self_check.as_ref()) {
                t.spec.self_check = Some(sc.clone());
            }
        }
        self.build.apply(targets);
    }
}
