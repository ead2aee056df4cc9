//! `--timeout PHASE=SECONDS`: its help, and its reading.

use super::CliError;
use crate::events::Phase;
use crate::rules;

/// The help of `--timeout`: the phases and bounds of lib/rules.json.
pub(super) fn timeout_help() -> String {
    let (range, _) = rules::seconds();
    format!(
        "Override a phase timeout for every host, in seconds ({} to {}); repeatable. Phases: {}.",
        range.start(),
        range.end(),
        phase_list()
    )
}

/// `connect, lock, ..., boot`: the phases as `--timeout` names them.
pub(super) fn phase_list() -> String {
    Phase::ALL.map(Phase::timeout_key).join(", ")
}

/// `build=7200` -> `(Phase::Build, 7200)`. Accepts `self-check`/`self_check`
/// for `selfCheck`.
pub fn parse_timeout(arg: &str) -> Result<(Phase, u64), CliError> {
    let (name, secs) = arg.split_once('=').ok_or_else(|| CliError::TimeoutSyntax(arg.into()))?;
    let canonical = match name {
        "self-check" | "self_check" | "selfcheck" => "selfCheck",
        p => p,
    };
    let Some(phase) = Phase::ALL.into_iter().find(|p| p.timeout_key() == canonical) else {
        let hint = Phase::ALL
            .iter()
            .map(|p| (strsim::jaro_winkler(name, p.timeout_key()), p.timeout_key()))
            .filter(|(s, _)| *s >= 0.7)
            .max_by(|a, b| a.0.total_cmp(&b.0))
            .map(|(_, p)| format!(" (did you mean `{p}`?)"))
            .unwrap_or_default();
        return Err(CliError::TimeoutPhase { arg: arg.into(), phase: name.into(), hint });
    };
    match secs.parse::<u64>() {
        Ok(n) if rules::seconds().0.contains(&n) => Ok((phase, n)),
        _ => Err(CliError::TimeoutSeconds(arg.into())),
    }
}
