//! The agent's keys commands: a host's keys go on the stdin of one command
//! over the master (after the escalation's password, when there is one),
//! never in an argument; the agent stages them root-only for `activate`,
//! or writes them at once (`deploy-flake keys`).

use std::sync::Arc;

use super::{answer, is_answer, RunDir};
use crate::keys::{self, Loaded};
use crate::process::{self, Input, Lines, ProcessError, Spawner};

/// Stage the keys for the run's activation; with `keep`, the previous keys
/// stay after the confirmation until [`drop_previous`] (a soak follows).
/// What the agent says about them (an owner it will give a key to later)
/// goes to `on_line`.
pub async fn stage<S: Spawner>(
    on: &S,
    run: &RunDir,
    loaded: &[Loaded],
    keep: bool,
    secs: u64,
    on_line: Lines<'_>,
) -> Result<(), ProcessError> {
    let input = Input::Secret(Arc::new(keys::stream(loaded)));
    let mut args = vec![run.dir.clone()];
    args.extend(keep.then(|| "keep".to_string()));
    let cmd = run.cmd("keys-stage", args).stdin_input(input).secs(secs).quiet_stdout();
    let out = process::run(on, &cmd, None).await?.check()?;
    out.stdout.lines().filter(|l| !l.trim().is_empty() && !is_answer(l)).for_each(on_line);
    if answer(&out.stdout, "keys-staged").is_none() {
        return Err(unexpected(&cmd.display(), on, "did not say the keys were staged"));
    }
    Ok(())
}

/// Write every key now (`deploy-flake keys`): each atomically; if one
/// cannot be written, those written before it are put back.
pub async fn upload<S: Spawner>(
    on: &S,
    run: &RunDir,
    loaded: &[Loaded],
    secs: u64,
    on_line: Lines<'_>,
) -> Result<(), ProcessError> {
    let input = Input::Secret(Arc::new(keys::stream(loaded)));
    let cmd = run.cmd("keys-upload", [run.dir.clone()]).stdin_input(input).secs(secs);
    let out = process::run(on, &cmd.quiet_stdout(), Some(on_line)).await?.check()?;
    if answer(&out.stdout, "keys-uploaded").is_none() {
        return Err(unexpected(&out.cmd, on, "did not say the keys were written"));
    }
    Ok(())
}

/// Stage, for the run's activation, the keys as they were before run
/// `from` (a revert after its soak failed).
pub async fn adopt<S: Spawner>(
    on: &S,
    run: &RunDir,
    from: &RunDir,
    secs: u64,
) -> Result<(), ProcessError> {
    let cmd = run.cmd("keys-adopt", [run.dir.clone(), from.dir.clone()]).secs(secs);
    let out = process::run(on, &cmd.quiet_stdout(), None).await?.check()?;
    if answer(&out.stdout, "keys-staged").is_none() {
        return Err(unexpected(&out.cmd, on, "did not say the keys were staged"));
    }
    Ok(())
}

/// The staged keys are not needed (the activation did not start).
pub async fn discard<S: Spawner>(on: &S, run: &RunDir, secs: u64) -> Result<(), ProcessError> {
    let cmd = run.cmd("keys-discard", [run.dir.clone()]).secs(secs);
    process::run(on, &cmd, None).await?.check()?;
    Ok(())
}

/// The previous keys a run kept (for its soak) are not needed.
pub async fn drop_previous<S: Spawner>(
    on: &S,
    run: &RunDir,
    secs: u64,
) -> Result<(), ProcessError> {
    let cmd = run.cmd("keys-drop", [run.dir.clone()]).secs(secs);
    process::run(on, &cmd, None).await?.check()?;
    Ok(())
}

fn unexpected<S: Spawner>(cmd: &str, on: &S, what: &str) -> ProcessError {
    ProcessError::Failed {
        cmd: cmd.to_string(),
        place: on.place(),
        exit: process::Exit::Code(0),
        tail: what.to_string(),
    }
}
