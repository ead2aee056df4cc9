//! parse -> run -> exit code. The one place that decides the exit status.

use std::io::Write;
use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use std::sync::atomic::AtomicUsize;
use std::sync::Arc;

use deploy_flake::cli::{Cli, Command, Options, OutputFormat, Terminal};
use deploy_flake::exit::Exit;
use deploy_flake::inventory::DEFAULT_EVAL_TIMEOUT;
use deploy_flake::pipeline::{Context as RunContext, Interrupt};
use deploy_flake::plan;
use deploy_flake::select::{self, Target};
use deploy_flake::{report, runner};

fn main() -> ExitCode {
    match run() {
        Ok(exit) => exit.into(),
        Err(e) => {
            eprintln!("error: {e:#}");
            Exit::Usage.into()
        }
    }
}

fn run() -> anyhow::Result<Exit> {
    // clap prints usage errors itself and exits with 2, like ours.
    let cli = Cli::parse();
    if let Some(Command::Docs(docs)) = &cli.command {
        std::io::stdout().write_all(&docs.render()).context("writing to stdout")?;
        return Ok(Exit::Success);
    }
    init_tracing(cli.verbose);
    let (display, verbose) = (cli.display.clone(), cli.verbose);
    let options = cli.into_options()?;
    let display =
        display.resolve(options.output == OutputFormat::Json, verbose, Terminal::current())?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    let mut targets = runtime.block_on(select::load_and_select(
        &options.flake,
        &options.selection,
        DEFAULT_EVAL_TIMEOUT,
    ))?;
    options.apply_overrides(&mut targets);
    if options.dry_run {
        print!("{}", plan::render(&targets, &options));
        return Ok(Exit::Success);
    }
    runtime.block_on(deploy(targets, &options, display))
}

/// `-v`: what the tool does (every command run, with its duration);
/// `-vv`: more. `RUST_LOG` overrides both. Goes to stderr, so `--json`
/// stays clean.
fn init_tracing(verbose: u8) {
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
        .with_target(false)
        .init();
}

/// Runs the deployment of the selected hosts and returns the run's exit
/// status.
async fn deploy(
    targets: Vec<Target>,
    options: &Options,
    display: report::Display,
) -> anyhow::Result<Exit> {
    let run_id = runner::new_run_id();
    let (raise, interrupt) = Interrupt::new();
    let changing = Arc::new(AtomicUsize::new(0));
    let (sink, output) = report::stdout(display);
    let ctx = RunContext {
        mode: options.mode,
        goal: options.goal,
        switch_env: options.switch_env,
        interrupt,
        changing: changing.clone(),
        lock_owner: runner::lock_owner(&run_id),
        run_id,
        flake: options.flake.clone(),
        force: options.force,
        skip_preflight: !options.preflight,
        sink,
    };
    runner::on_interrupts(raise, changing);
    let parallel = options.max_parallel.unwrap_or(targets.len()).max(1);
    let reports = runner::run(targets, ctx, parallel).await;
    // Everything the run said is written before the process ends.
    output.finish();
    Ok(runner::exit_for(&reports))
}
