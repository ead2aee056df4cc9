//! parse -> run -> exit code. The one place that decides the exit status.

use std::process::ExitCode;

use anyhow::Context;
use clap::Parser;

use deploy_flake::cli::{Cli, Options};
use deploy_flake::exit::Exit;
use deploy_flake::inventory::DEFAULT_EVAL_TIMEOUT;
use deploy_flake::select::{self, Target};
use deploy_flake::plan;

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
    let options = Cli::parse().into_options()?;
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
    runtime.block_on(deploy(targets, &options))
}

/// Runs the deployment of the selected hosts and returns the run's exit
/// status.
async fn deploy(targets: Vec<Target>, options: &Options) -> anyhow::Result<Exit> {
    let _ = (targets, options);
    eprintln!("error: deploying is not implemented yet");
    Ok(Exit::Usage)
}
