//! Following the agent: a watch of its run, and the requests that end in
//! one in the same round trip (`launch`: an action's start; `confirm`: the
//! confirmation over a fresh login).

use super::{AgentAction, AgentState, AgentStatus, Health, RunDir, ANSWER};
use crate::process::{self, Cmd, Lines, ProcessError, Spawner};

/// Stream the run's log from line `seen` until the agent reaches a state
/// that needs the deployer (or an end), also waiting through `patient`;
/// then its status. `seen` counts the log lines received, so a watch
/// re-attached after a lost connection continues where it was. With
/// `health_secs`, a watch that ends in `awaiting-confirmation` also
/// answers [`super::health`] (bounded by `health_secs`, within `secs`).
pub async fn watch<S: Spawner>(
    on: &S,
    run: &RunDir,
    seen: &mut usize,
    patient: Option<&AgentState>,
    health_secs: Option<u64>,
    secs: u64,
    on_line: Lines<'_>,
) -> Result<AgentStatus, ProcessError> {
    let mut args = vec![run.dir.clone(), seen.to_string(), AgentState::waited_through(patient)];
    args.extend(health_secs.map(|s| s.to_string()));
    let cmd = run.cmd("watch", args).secs(secs);
    follow(on, run, &cmd, seen, on_line, &mut false).await
}

/// Start an action and follow it as [`watch`] does, in one round trip;
/// also whether it started (an error after that is the watch's).
pub async fn launch<S: Spawner>(
    on: &S,
    run: &RunDir,
    action: &AgentAction,
    seen: &mut usize,
    health_secs: Option<u64>,
    secs: u64,
    on_line: Lines<'_>,
) -> (bool, Result<AgentStatus, ProcessError>) {
    let health = health_secs.map_or(String::new(), |s| s.to_string());
    let mut args =
        vec![run.dir.clone(), seen.to_string(), AgentState::waited_through(None), health];
    args.extend(action.start_cmd(run).argv);
    let cmd = run.cmd("launch", args).secs(secs);
    let mut started = false;
    let status = follow(on, run, &cmd, seen, on_line, &mut started).await;
    (started, status)
}

/// Confirm the activation and follow the agent to its answer as [`watch`]
/// does (through `awaiting-confirmation`), in one round trip; also whether
/// the confirmation is recorded (an error after that is the watch's).
/// `fresh` must be a brand-new login: that it works is what it proves.
pub async fn confirm<S: Spawner>(
    fresh: &S,
    run: &RunDir,
    seen: &mut usize,
    secs: u64,
    on_line: Lines<'_>,
) -> (bool, Result<AgentStatus, ProcessError>) {
    let through = AgentState::waited_through(Some(&AgentState::AwaitingConfirmation));
    let cmd = run.cmd("confirm", [run.dir.clone(), seen.to_string(), through]).secs(secs);
    let mut delivered = false;
    let status = follow(fresh, run, &cmd, seen, on_line, &mut delivered).await;
    (delivered, status)
}

/// Run a command that ends as `watch` does, and read its status.
/// `delivered`: set when the host says a request before the watch (a start,
/// a confirmation) took effect.
async fn follow<S: Spawner>(
    on: &S,
    run: &RunDir,
    cmd: &Cmd,
    seen: &mut usize,
    on_line: Lines<'_>,
    delivered: &mut bool,
) -> Result<AgentStatus, ProcessError> {
    let delivered_marker = format!("{ANSWER}delivered");
    let status_marker = format!("{ANSWER}status {} ", run.id);
    let previous_marker = format!("{ANSWER}previous {} ", run.id);
    let health_marker = format!("{ANSWER}health {} ", run.id);
    let (mut status, mut previous, mut health) = (None, None, String::new());
    let mut sink = |l: &str| {
        if l.trim_end() == delivered_marker {
            *delivered = true;
        } else if let Some(rest) = l.strip_prefix(status_marker.as_str()) {
            status = Some(AgentStatus::parse(rest));
        } else if let Some(rest) = l.strip_prefix(previous_marker.as_str()) {
            previous = Some(rest.trim().to_string()).filter(|p| !p.is_empty());
        } else if let Some(rest) = l.strip_prefix(health_marker.as_str()) {
            health.push_str(&format!("{ANSWER}{rest}\n"));
        } else {
            *seen += 1;
            on_line(l);
        }
    };
    let out = process::run(on, cmd, Some(&mut sink)).await?;
    let Some(mut status) = status else {
        // What the host said when it failed (a start refused), else: gone.
        out.check()?;
        return Err(ProcessError::Disconnected { cmd: cmd.display() });
    };
    status.previous = previous;
    status.health = (!health.is_empty()).then(|| Health::parse(&health));
    Ok(status)
}
