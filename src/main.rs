//! parse -> run -> exit code. The one place that decides the exit status:
//! at the end of a run, from its reports, or at once when a second Ctrl-C
//! (or SIGTERM) quits; the signals are handled here, and what they do said
//! here.

use std::collections::BTreeMap;
use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use deploy_flake::cli::{Cli, Command, Deploy, Intent, Options, OutputFormat, Terminal};
use deploy_flake::diff::HostDiff;
use deploy_flake::diff::Shows;
use deploy_flake::events::Sink;
use deploy_flake::exit::Exit;
use deploy_flake::fanout::Fanout;
use deploy_flake::host::{Shared, SshHost};
use deploy_flake::inventory::DEFAULT_EVAL_TIMEOUT;
use deploy_flake::pipeline::{Approved, Context as RunContext, Identity, Interrupt};
use deploy_flake::pipeline::{InterruptHandle, Mode};
use deploy_flake::plan;
use deploy_flake::report::safe;
use deploy_flake::rollout::{self, Plan};
use deploy_flake::select::{self, Target};
use deploy_flake::ssh::Destination;
use deploy_flake::{build, limits, pipeline, report, runner};

fn main() -> ExitCode {
    match run() {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("error: {}", safe::text(&format!("{e:#}")));
            Exit::Usage.into()
        }
    }
}

/// The open-file limit in force, raised to the hard limit at start.
static OPEN_FILES: std::sync::OnceLock<Option<u64>> = std::sync::OnceLock::new();

/// How many of `hosts` run at once: `--max-parallel` (unset or 0: all),
/// and no more than the open files allow (said once).
fn parallel(options: &Options, hosts: usize) -> usize {
    static SAID: std::sync::Once = std::sync::Once::new();
    let wanted = options.max_parallel.unwrap_or(hosts).min(hosts);
    let (n, say) = limits::admit(wanted, OPEN_FILES.get().copied().flatten());
    if let Some(say) = say {
        SAID.call_once(|| eprintln!("{say}"));
    }
    n
}

fn run() -> anyhow::Result<Exit> {
    OPEN_FILES.get_or_init(limits::raise_open_files);
    // clap prints usage errors itself and exits with 2, like ours.
    let cli = Cli::parse();
    if let Some(Command::Docs(docs)) = &cli.command {
        std::io::stdout().write_all(&docs.render()).context("writing to stdout")?;
        return Ok(Exit::Success);
    }
    init_tracing(cli.verbose, cli.display.log_color(Terminal::current()));
    let (display, verbose) = (cli.display.clone(), cli.verbose);
    let options = cli.into_options()?;
    let display =
        display.resolve(options.output == OutputFormat::Json, verbose, Terminal::current())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let (inventory, mut targets) =
        runtime.block_on(select::load(&options.flake, &options.selection, DEFAULT_EVAL_TIMEOUT))?;
    options.apply_overrides(&mut targets);
    // The sudo password, once, before any host is touched.
    if let (Some(source), false) = (&options.sudo_password, options.intent.dry_run()) {
        deploy_flake::ssh::set_sudo_password(runtime.block_on(source.read())?);
    }
    let shared = Arc::new(Shared::default());
    let build_hosts = elsewhere(inventory.as_ref(), &mut targets, &options, &shared)?;
    // The run's identity, once: its id, who runs it from where, what for.
    let goal = match &options.intent {
        Intent::Deploy(d) => d.goal.as_str(),
        other => other.subcommand().unwrap_or_default(),
    };
    let identity = Identity::new(&options.flake, goal);
    match &options.intent {
        Intent::Status => Ok(runtime.block_on(status(targets, &options, &identity))),
        Intent::Diff { mode } => {
            Ok(runtime.block_on(diff(targets, &options, mode, shared, &identity)))
        }
        Intent::Keys { dry_run } => {
            Ok(runtime.block_on(keys(targets, &options, *dry_run, &identity)))
        }
        Intent::Deploy(d) => {
            let flake_rollout = inventory.as_ref().and_then(|i| i.rollout.as_ref());
            let settings = rollout::settings(flake_rollout, &d.rollout);
            let from = match d.rollout.canary {
                Some(_) => "--canary",
                None => "deployFlake.rollout.canary",
            };
            let waves = rollout::plan(inventory.as_ref(), &targets, &settings, from)?;
            if d.dry_run {
                let text = plan::render(&targets, &options, d, &waves, &build_hosts);
                print!("{}", safe::text(&text));
                return Ok(Exit::Success);
            }
            let run = ask_then_deploy(targets, &options, d, &waves, display, shared, identity);
            runtime.block_on(run)
        }
    }
}

/// Systems built elsewhere (`--systems`), the build hosts the selected
/// hosts need and the signing key, ready for the run in `shared`; returns
/// each build host's `user@host:port` by its name (for the plan).
fn elsewhere(
    inventory: Option<&deploy_flake::inventory::Inventory>,
    targets: &mut [Target],
    options: &Options,
    shared: &Shared,
) -> anyhow::Result<BTreeMap<String, String>> {
    if let Some(file) = &options.build.systems {
        let systems = build::read_systems(file).map_err(anyhow::Error::msg)?;
        build::apply_systems(&systems, targets).map_err(anyhow::Error::msg)?;
    }
    if let Some(key) = &options.build.sign_key {
        std::fs::File::open(key)
            .with_context(|| format!("--sign-key {}: cannot read the key", key.display()))?;
        shared.elsewhere.set_sign_key(key.clone());
    }
    let hosts = build::build_hosts(inventory.map(|i| &i.hosts), targets);
    let hosts = hosts.map_err(|e| anyhow::anyhow!("{e}; nothing was touched"))?;
    let destinations = build::Registry::destinations(&hosts);
    shared.elsewhere.set_build_hosts(hosts);
    Ok(destinations)
}

/// `deploy-flake status`: 0 when every host answered, 1 otherwise.
async fn status(targets: Vec<Target>, options: &Options, identity: &Identity) -> Exit {
    let fanout = Fanout::new(parallel(options, targets.len()));
    let (sink, output) = data_sink(options);
    let run_id = &identity.run_id;
    let open = over_ssh(run_id, Arc::new(Shared::default()));
    let all = deploy_flake::status::query_all(&targets, run_id, &fanout, open, &sink).await;
    finish(sink, output);
    if options.output == OutputFormat::Human {
        print!("{}", safe::text(&deploy_flake::status::render(&all)));
    }
    deploy_flake::status::exit(&all)
}

/// The real host of each target, over ssh, for run `run_id`.
fn over_ssh(run_id: &str, shared: Arc<Shared>) -> impl Fn(&Target) -> SshHost + Send + Sync {
    let run_id = run_id.to_string();
    move |t: &Target| {
        SshHost::new(&t.name, Destination::new(t.spec.login()), &run_id, shared.clone())
    }
}

/// Where `status` and `diff` send their events: with `--json`, the JSON
/// Lines stream a deploy writes; otherwise nowhere (they print their own
/// text at the end).
fn data_sink(options: &Options) -> (Sink, Option<report::Output>) {
    match options.output {
        OutputFormat::Json => {
            let (sink, output) = report::stdout(report::Display::Json);
            (sink, Some(output))
        }
        OutputFormat::Human => (Arc::new(|_| {}), None),
    }
}

/// Everything said is written (the run's sinks are dropped by then).
fn finish(sink: Sink, output: Option<report::Output>) {
    drop(sink);
    if let Some(output) = output {
        output.finish();
    }
}

/// `deploy-flake keys`: 0 when every host's keys were written (or listed).
async fn keys(targets: Vec<Target>, options: &Options, dry_run: bool, identity: &Identity) -> Exit {
    use deploy_flake::upload;
    let all = if dry_run {
        upload::list(&targets)
    } else {
        let run = upload::Run {
            owner: identity.lock_owner(),
            run_id: identity.run_id.clone(),
            origin: identity.origin_unrevised(),
        };
        let fanout = Fanout::new(parallel(options, targets.len()));
        upload::upload_all(&targets, Arc::new(run), &fanout).await
    };
    match options.output {
        OutputFormat::Json => print!("{}", upload::json(&all)),
        OutputFormat::Human => print!("{}", upload::render(&all, dry_run)),
    }
    if all.iter().all(|h| h.error.is_none()) {
        Exit::Success
    } else {
        Exit::HostsFailed
    }
}

/// Build every host (or find the generation a rollback, `mode`, returns
/// to) and say what would change on each; the run's events to `sink`.
async fn diffs(
    targets: &[Target],
    options: &Options,
    mode: &Mode,
    shared: Arc<Shared>,
    sink: &Sink,
    identity: &Identity,
) -> Vec<HostDiff> {
    let shows = match mode {
        Mode::Rollback { to_generation } => Shows::Rollback { to_generation: *to_generation },
        _ => Shows::Build,
    };
    let run = deploy_flake::diff::Run {
        flake: options.flake.clone(),
        owner: identity.lock_owner(),
        run_id: identity.run_id.clone(),
        shows,
    };
    let fanout = Fanout::new(parallel(options, targets.len()));
    prefetch_archive(targets, options, mode, &shared);
    let open = over_ssh(&run.run_id, shared);
    deploy_flake::diff::diff_all(targets, Arc::new(run), &fanout, open, sink).await
}

/// When hosts or a build host will build the flake, archive it (once)
/// beside their connections rather than after them.
fn prefetch_archive(targets: &[Target], options: &Options, mode: &Mode, shared: &Arc<Shared>) {
    let from_flake = |t: &&Target| match build::way(&t.spec) {
        Ok(None) => true,
        Ok(Some(way)) => matches!(way.build, build::Build::Host { .. }),
        Err(_) => false,
    };
    let on_target = targets.iter().filter(from_flake);
    let secs = on_target.map(|t| t.spec.timeouts.copy).max();
    if let (Some(secs), Mode::Deploy) = (secs, mode) {
        shared.prefetch(&options.flake, secs);
    }
}

/// `deploy-flake diff`: 0 when every host's changes are known, 1 otherwise.
async fn diff(
    targets: Vec<Target>,
    options: &Options,
    mode: &Mode,
    shared: Arc<Shared>,
    identity: &Identity,
) -> Exit {
    let (sink, output) = data_sink(options);
    let all = diffs(&targets, options, mode, shared.clone(), &sink, identity).await;
    shared.elsewhere.close().await;
    finish(sink, output);
    if options.output == OutputFormat::Human {
        print!("{}", safe::text(&deploy_flake::diff::render(&all)));
    }
    deploy_flake::diff::exit(&all)
}

/// `-v`: what the tool does (every command run, with its duration);
/// `-vv`: more. `RUST_LOG` overrides both. Goes to stderr, so `--json`
/// stays clean; colored only when `color` (`--color`, `NO_COLOR`, stderr
/// a terminal).
fn init_tracing(verbose: u8, color: bool) {
    let level = match verbose {
        0 => "warn",
        1 => "deploy_flake=debug",
        _ => "deploy_flake=trace,openssh=debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(color)
        .with_target(false)
        .init();
}

/// `--ask`: show every host's changes, ask once, then deploy exactly the
/// systems shown (the same archived flake and builds; a host that builds
/// something else is not touched).
async fn ask_then_deploy(
    targets: Vec<Target>,
    options: &Options,
    d: &Deploy,
    waves: &Plan,
    display: report::Display,
    shared: Arc<Shared>,
    identity: Arc<Identity>,
) -> anyhow::Result<Exit> {
    let Some(answered) = d.ask else {
        return deploy(targets, options, d, shared, None, waves, display, identity).await;
    };
    if !answered && !std::io::stdin().is_terminal() {
        anyhow::bail!("--ask needs a terminal to ask on; pass --yes to go on without asking");
    }
    // A run of its own on each host: the deploy's run directory is new.
    let looked = identity.part("diff", "diff");
    let quiet: Sink = Arc::new(|_| {});
    let shown = diffs(&targets, options, &d.mode, shared.clone(), &quiet, &looked).await;
    eprint!("{}", safe::text(&deploy_flake::diff::render(&shown)));
    // Each host as it was shown: its new system, and what it ran then.
    let approved: BTreeMap<String, Approved> = shown
        .iter()
        .filter_map(|d| {
            let system = d.new.clone()?;
            Some((d.host.clone(), Approved { system, running: d.current.clone() }))
        })
        .collect();
    // A change partly unknown is not asked about: --yes takes it as it is.
    let unknown: Vec<String> = shown
        .iter()
        .filter(|d| d.error.is_none())
        .flat_map(|d| d.unknowns().into_iter().map(move |u| format!("{} ({u})", d.host)))
        .collect();
    if !answered && !unknown.is_empty() {
        eprintln!(
            "deploy-flake: not asking: what would change is not known on {}; nothing was \
             deployed (pass --yes to deploy it all the same)",
            safe::text(&unknown.join(", "))
        );
        return Ok(Exit::HostsFailed);
    }
    if !answered && !confirmed(targets.len())? {
        eprintln!("deploy-flake: not confirmed; nothing was deployed");
        shared.elsewhere.close().await;
        return Ok(Exit::HostsFailed);
    }
    let approved = Some(Arc::new(approved));
    deploy(targets, options, d, shared, approved, waves, display, identity).await
}

/// Ask on the terminal; yes only for an explicit "y" or "yes".
fn confirmed(hosts: usize) -> anyhow::Result<bool> {
    eprint!("Deploy these changes to {hosts} host(s)? [y/N] ");
    let mut answer = String::new();
    std::io::stdin().read_line(&mut answer).context("reading the answer")?;
    Ok(matches!(answer.trim().to_lowercase().as_str(), "y" | "yes"))
}

/// Runs the deployment of the selected hosts and returns the run's exit
/// status.
#[allow(clippy::too_many_arguments)]
async fn deploy(
    targets: Vec<Target>,
    options: &Options,
    d: &Deploy,
    shared: Arc<Shared>,
    approved: Option<Arc<BTreeMap<String, Approved>>>,
    waves: &Plan,
    display: report::Display,
    identity: Arc<Identity>,
) -> anyhow::Result<Exit> {
    let (raise, interrupt) = Interrupt::new();
    let changing = Arc::new(AtomicUsize::new(0));
    let (sink, output) = report::stdout(display);
    // Both wanted soon by every host, neither before it is connected.
    let origin = pipeline::Origin::new(identity.clone());
    origin.prefetch();
    prefetch_archive(&targets, options, &d.mode, &shared);
    let ctx = RunContext {
        approved,
        origin,
        mode: d.mode.clone(),
        goal: d.goal,
        reboot: d.reboot,
        switch_env: d.switch_env,
        interrupt,
        changing: changing.clone(),
        lock_owner: identity.lock_owner(),
        run_id: identity.run_id.clone(),
        flake: options.flake.clone(),
        force: d.force,
        skip_preflight: !d.preflight,
        keep_keys: false,
        sink,
    };
    on_interrupts(raise, changing);
    let parallel = parallel(options, targets.len());
    let reports = runner::run(targets, ctx, parallel, shared.clone(), waves).await;
    // The build hosts' GC roots of this run go; the hosts hold theirs.
    shared.elsewhere.close().await;
    // Everything the run said is written before the process ends.
    output.finish();
    Ok(deploy_flake::exit::exit_for(&reports))
}

/// Ctrl-C, or SIGTERM (a cancelled CI job, a service manager stopping
/// it): the first stops every host that has not started to change (at
/// once, whatever it is doing: local builds and temporary directories go
/// with it); the second quits, leaving hosts whose agent is at work to
/// their agents. The exit code then says whether any was.
fn on_interrupts(raise: InterruptHandle, changing: Arc<AtomicUsize>) {
    use tokio::signal::unix::{signal, SignalKind};
    tokio::spawn(async move {
        let mut term = signal(SignalKind::terminate()).ok();
        if let Some(by) = interrupted(&mut term).await {
            raise.raise();
            eprintln!(
                "deploy-flake: interrupted ({by}): hosts not yet changing stop now, unchanged; hosts \
                 already activating are confirmed or rolled back (Ctrl-C or SIGTERM again to quit now)"
            );
        }
        if interrupted(&mut term).await.is_some() {
            deploy_flake::process::stop_all();
            let exit = if changing.load(Ordering::SeqCst) > 0 {
                eprintln!(
                    "deploy-flake: quitting; hosts mid-activation converge on their own (confirmed: \
                     the new system; otherwise: the previous one)"
                );
                Exit::UnknownState
            } else {
                eprintln!("deploy-flake: quitting; no host had started to change");
                Exit::HostsFailed
            };
            std::process::exit(exit.code().into());
        }
    });
}

/// The next Ctrl-C or SIGTERM, by name (`None`: signals cannot be had).
async fn interrupted(term: &mut Option<tokio::signal::unix::Signal>) -> Option<&'static str> {
    match term {
        Some(term) => tokio::select! {
            c = tokio::signal::ctrl_c() => c.ok().map(|()| "Ctrl-C"),
            t = term.recv() => t.map(|()| "SIGTERM"),
        },
        None => tokio::signal::ctrl_c().await.ok().map(|()| "Ctrl-C"),
    }
}
