//! One small function per Nix/systemd step of the pipeline, each with a
//! typed result. `pipeline` reads as the sequence of these calls.

use std::path::Path;
use std::time::Duration;

use serde::Deserialize;
use sha2::{Digest, Sha256};

use crate::remote::{tail_lines, Cmd, Remote, RemoteError};

/// `--extra-experimental-features` value every nix call carries (Nix 2.8 and newer).
pub const NIX_FEATURES: &str = "nix-command flakes";

/// `nix --extra-experimental-features 'nix-command flakes' ARGS...`: how
/// every nix command starts, here and on targets (Nix 2.8 needs the flag).
pub fn nix_argv<I, S>(args: I) -> Vec<String>
where
    I: IntoIterator<Item = S>,
    S: Into<String>,
{
    let mut v =
        vec!["nix".to_string(), "--extra-experimental-features".into(), NIX_FEATURES.into()];
    v.extend(args.into_iter().map(Into::into));
    v
}

/// Where the deployer keeps its root-only state on a target.
pub const STATE_DIR: &str = "/run/deploy-flake";
pub const SYSTEM_PROFILE: &str = "/nix/var/nix/profiles/system";

/// The on-target agent, embedded in the binary.
pub const AGENT: &str = include_str!("agent.sh");

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error(transparent)]
    Remote(#[from] RemoteError),
    #[error("`{cmd}` failed (exit {code}):\n{tail}")]
    Failed { cmd: String, code: String, tail: String },
    #[error("{0}")]
    Invalid(String),
}

fn failed(cmd: &str, out: &crate::remote::Output) -> StepError {
    StepError::Failed {
        cmd: cmd.to_string(),
        code: out.code().map(|c| c.to_string()).unwrap_or_else(|| "signal".into()),
        tail: out.tail(),
    }
}

/// A validated absolute store path (`/nix/store/<hash>-<name>`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize)]
pub struct StorePath(String);

impl StorePath {
    pub fn parse(s: &str) -> Result<StorePath, StepError> {
        let s = s.trim();
        let rest = s
            .strip_prefix("/nix/store/")
            .ok_or_else(|| StepError::Invalid(format!("not a store path: {s:?}")))?;
        let ok = rest.len() > 33
            && rest.as_bytes()[32] == b'-'
            && rest[..32].bytes().all(|b| b.is_ascii_alphanumeric())
            && !rest.contains('/')
            && rest[33..].bytes().all(|b| b.is_ascii_alphanumeric() || b"+-._?=".contains(&b));
        if ok {
            Ok(StorePath(s.to_string()))
        } else {
            Err(StepError::Invalid(format!("not a store path: {s:?}")))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn join(&self, rel: &str) -> String {
        format!("{}/{}", self.0, rel)
    }
}

impl std::fmt::Display for StorePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The installable of a configuration's toplevel inside a flake source.
///
/// The attribute name is quoted for Nix and percent-encoded for the flake
/// reference's fragment, so any name (spaces, `$`, `'`) reaches Nix as a
/// single attribute. A `"` cannot be expressed in a Nix attribute path.
pub fn toplevel_installable(flake: &str, configuration: &str) -> Result<String, StepError> {
    if configuration.contains('"') || configuration.chars().any(char::is_control) {
        return Err(StepError::Invalid(format!(
            "configuration name {configuration:?} cannot be used in a flake attribute path \
             (it contains '\"' or a control character); rename the nixosConfigurations attribute"
        )));
    }
    let mut enc = String::new();
    for b in configuration.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            enc.push(b as char);
        } else {
            enc.push_str(&format!("%{b:02X}"));
        }
    }
    Ok(format!("{flake}#nixosConfigurations.%22{enc}%22.config.system.build.toplevel"))
}

// ---- on-target state ------------------------------------------------------

/// Paths of one run's state on the target.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub dir: String,
    pub agent: String,
}

impl RunDir {
    pub fn new(run_id: &str) -> RunDir {
        let hash = hex(&Sha256::digest(AGENT.as_bytes()))[..16].to_string();
        RunDir {
            dir: format!("{STATE_DIR}/runs/{run_id}"),
            agent: format!("{STATE_DIR}/agent-{hash}.sh"),
        }
    }

    pub fn file(&self, name: &str) -> String {
        format!("{}/{}", self.dir, name)
    }

    /// The run id (the last component of the run dir).
    pub fn id(&self) -> &str {
        self.dir.rsplit('/').next().unwrap_or("run")
    }

    /// The systemd unit of an agent action.
    pub fn unit(&self, action: &str) -> String {
        format!("deploy-flake-{}-{action}", self.id())
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Create the root-only state directories (this run's is new: nothing from
/// an earlier run can be mistaken for ours) and install the agent.
pub async fn install_agent(r: &Remote, run: &RunDir, secs: u64) -> Result<(), StepError> {
    let dirs = Cmd::new([
        "install",
        "-d",
        "-m",
        "0700",
        STATE_DIR,
        &format!("{STATE_DIR}/runs"),
        &run.dir,
    ])
    .secs(secs);
    let out = r.run(&dirs).await?;
    if !out.success() {
        return Err(failed("install -d state dirs", &out));
    }
    let out = r
        .run_with_stdin(
            &Cmd::new(["dd", &format!("of={}", run.agent), "status=none"]).secs(secs),
            Some(AGENT.as_bytes()),
        )
        .await?;
    if !out.success() {
        return Err(failed("install agent", &out));
    }
    Ok(())
}

/// The agent's answers: lines `deploy-flake-<key> <value>`.
fn answers<'a>(stdout: &'a str, key: &str) -> impl Iterator<Item = &'a str> {
    let prefix = format!("deploy-flake-{key} ");
    let bare = format!("deploy-flake-{key}");
    stdout.lines().filter_map(
        move |l| {
            if l == bare {
                Some("")
            } else {
                l.strip_prefix(prefix.as_str())
            }
        },
    )
}

fn answer(stdout: &str, key: &str) -> Option<String> {
    answers(stdout, key).next().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

// ---- preflight ------------------------------------------------------------

/// The system state and, when not running, the failed units.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub state: String,
    pub failed_units: Vec<String>,
}

impl Health {
    pub fn is_running(&self) -> bool {
        self.state == "running" && self.failed_units.is_empty()
    }

    pub fn describe(&self) -> String {
        if self.failed_units.is_empty() {
            format!("system is {}", self.state)
        } else {
            format!("system is {} (failed units: {})", self.state, self.failed_units.join(", "))
        }
    }
}

/// `systemctl is-system-running --wait` (bounded by `secs`) and the failed
/// units, in one round trip through the agent.
pub async fn system_health(r: &Remote, run: &RunDir, secs: u64) -> Result<Health, StepError> {
    let out = r
        .run(
            &Cmd::new(["/bin/sh", run.agent.as_str(), "health", &secs.to_string()]).secs(secs + 10),
        )
        .await?;
    Ok(parse_health(&out.stdout))
}

pub fn parse_health(stdout: &str) -> Health {
    Health {
        state: answer(stdout, "state").unwrap_or_else(|| "unknown".into()),
        failed_units: answers(stdout, "failed").map(String::from).collect(),
    }
}

/// What the deployer needs to know about a target and a built system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Facts {
    pub current: Option<String>,
    pub profile: Option<String>,
    /// The toplevel has bin/switch-to-configuration.
    pub switchable: bool,
    /// The self-check to run, when the toplevel has it.
    pub self_check: Option<String>,
    pub systemd: bool,
}

pub fn parse_facts(stdout: &str) -> Facts {
    Facts {
        current: answer(stdout, "current"),
        profile: answer(stdout, "profile"),
        switchable: answers(stdout, "switchable").next().is_some(),
        self_check: answer(stdout, "selfcheck"),
        systemd: answers(stdout, "systemd").next().is_some(),
    }
}

/// One round trip: running and boot systems, and what `toplevel` offers.
pub async fn facts(
    r: &Remote,
    run: &RunDir,
    toplevel: &StorePath,
    self_check: Option<&str>,
    secs: u64,
) -> Result<Facts, StepError> {
    let mut argv =
        vec!["/bin/sh".to_string(), run.agent.clone(), "facts".into(), toplevel.to_string()];
    argv.extend(self_check.map(String::from));
    let out = r.run(&Cmd::new(argv).secs(secs)).await?;
    if !out.success() {
        return Err(failed("agent facts", &out));
    }
    Ok(parse_facts(&out.stdout))
}

// ---- copy and build -------------------------------------------------------

#[derive(Deserialize)]
struct ArchiveJson {
    path: String,
}

/// Copy the flake and all its inputs to the target over our master
/// connection. Returns the flake's source path in the store.
pub async fn copy_flake(
    r: &Remote,
    flake: &str,
    secs: u64,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<StorePath, StepError> {
    let argv = nix_argv([
        "flake".to_string(),
        "archive".into(),
        "--json".into(),
        "--to".into(),
        r.store_uri(),
        flake.into(),
    ]);
    let out = local(&argv, &[("NIX_SSHOPTS", r.nix_sshopts()?)], secs, on_line).await?;
    let parsed: ArchiveJson = serde_json::from_str(out.trim()).map_err(|e| {
        StepError::Invalid(format!("unexpected output of nix flake archive --json: {e}"))
    })?;
    StorePath::parse(&parsed.path)
}

#[derive(Deserialize)]
struct BuildJson {
    outputs: std::collections::BTreeMap<String, String>,
}

fn parse_build_json(stdout: &str) -> Result<StorePath, StepError> {
    let parsed: Vec<BuildJson> = serde_json::from_str(stdout.trim())
        .map_err(|e| StepError::Invalid(format!("unexpected output of nix build --json: {e}")))?;
    let out = parsed
        .first()
        .and_then(|b| b.outputs.get("out"))
        .ok_or_else(|| StepError::Invalid("nix build --json printed no output path".into()))?;
    StorePath::parse(out)
}

/// Build the toplevel on the target, holding a GC root in the run dir
/// until the system profile points at it.
pub async fn build_on_target(
    r: &Remote,
    source: &StorePath,
    configuration: &str,
    run: &RunDir,
    secs: u64,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<StorePath, StepError> {
    let installable = toplevel_installable(&format!("path:{source}"), configuration)?;
    let cmd =
        Cmd::new(nix_argv(["build", "--json", "--out-link", &run.file("toplevel"), &installable]))
            .secs(secs);
    // stdout carries the JSON; stderr is build progress for the user.
    let (out, err_lines) = run_splitting(r, &cmd, on_line).await?;
    if !out.success() {
        return Err(StepError::Failed {
            cmd: "nix build".into(),
            code: out.code().map(|c| c.to_string()).unwrap_or_else(|| "signal".into()),
            tail: tail_lines(&err_lines, 20),
        });
    }
    parse_build_json(&out.stdout)
}

/// Build the toplevel on this machine (`buildOn = "local"`).
pub async fn build_locally(
    flake: &str,
    configuration: &str,
    gcroot: &Path,
    secs: u64,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<StorePath, StepError> {
    let installable = toplevel_installable(flake, configuration)?;
    let argv = nix_argv([
        "build".to_string(),
        "--json".into(),
        "--out-link".into(),
        gcroot.display().to_string(),
        installable,
    ]);
    let out = local(&argv, &[], secs, on_line).await?;
    parse_build_json(&out)
}

/// Copy a locally built closure to the target. Paths built here carry no
/// signature the target trusts, so the copy is unchecked: it travels over
/// our own authenticated ssh connection as root.
pub async fn copy_closure(
    r: &Remote,
    path: &StorePath,
    secs: u64,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<(), StepError> {
    let argv = nix_argv([
        "copy".to_string(),
        "--no-check-sigs".into(),
        "--substitute-on-destination".into(),
        "--to".into(),
        r.store_uri(),
        path.to_string(),
    ]);
    local(&argv, &[("NIX_SSHOPTS", r.nix_sshopts()?)], secs, on_line).await?;
    Ok(())
}

/// Register a GC root for a path copied to the target.
pub async fn add_root(
    r: &Remote,
    path: &StorePath,
    run: &RunDir,
    secs: u64,
) -> Result<(), StepError> {
    let cmd = Cmd::new([
        "nix-store",
        "--realise",
        path.as_str(),
        "--add-root",
        &run.file("toplevel"),
        "--indirect",
    ])
    .secs(secs);
    let out = r.run(&cmd).await?;
    if !out.success() {
        return Err(failed("nix-store --add-root", &out));
    }
    Ok(())
}

async fn run_splitting(
    r: &Remote,
    cmd: &Cmd,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<(crate::remote::Output, String), StepError> {
    // Capture stdout (JSON) and forward stderr line by line afterwards;
    // builds are chatty on stderr only.
    let out = r.run(cmd).await?;
    for l in out.stderr.lines() {
        on_line(l);
    }
    let err = out.stderr.clone();
    Ok((out, err))
}

/// Run a local command, streaming stderr lines, returning stdout.
pub async fn local(
    argv: &[String],
    env: &[(&str, String)],
    secs: u64,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<String, StepError> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
    let mut c = tokio::process::Command::new(&argv[0]);
    c.args(&argv[1..])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        // Not in the terminal's process group: Ctrl-C is ours to handle
        // (stop before activation), not a kill of a copy halfway.
        .process_group(0);
    for (k, v) in env {
        c.env(k, v);
    }
    let display = argv.iter().take(5).cloned().collect::<Vec<_>>().join(" ");
    let fut = async {
        let mut child =
            c.spawn().map_err(|e| StepError::Invalid(format!("cannot run {}: {e}", argv[0])))?;
        let mut stdout = child.stdout.take().expect("piped");
        let stderr = child.stderr.take().expect("piped");
        let reader = tokio::spawn(async move {
            let mut s = String::new();
            let _ = stdout.read_to_string(&mut s).await;
            s
        });
        let mut lines = BufReader::new(stderr).lines();
        let mut tail = Vec::new();
        while let Ok(Some(l)) = lines.next_line().await {
            on_line(&l);
            tail.push(l);
            if tail.len() > 40 {
                tail.remove(0);
            }
        }
        let status = child.wait().await.map_err(|e| StepError::Invalid(e.to_string()))?;
        let out = reader.await.unwrap_or_default();
        if !status.success() {
            return Err(StepError::Failed {
                cmd: display.clone(),
                code: status.code().map(|c| c.to_string()).unwrap_or_else(|| "signal".into()),
                tail: tail_lines(&tail.join("\n"), 20),
            });
        }
        Ok(out)
    };
    match tokio::time::timeout(Duration::from_secs(secs), fut).await {
        Err(_) => Err(RemoteError::Timeout { cmd: display, secs }.into()),
        Ok(r) => r,
    }
}

// ---- generations ----------------------------------------------------------

/// The generations of the system profile: `(number, is_current)`, from
/// `nix-env --list-generations` output.
pub fn parse_generations(text: &str) -> Vec<(u32, bool)> {
    text.lines()
        .filter_map(|l| {
            let n = l.split_whitespace().next()?.parse().ok()?;
            Some((n, l.contains("(current)")))
        })
        .collect()
}

/// Which generation a rollback goes to: the requested one, or the newest
/// before the current. Pure.
pub fn choose_generation(gens: &[(u32, bool)], requested: Option<u32>) -> Result<u32, String> {
    let current = gens.iter().find(|g| g.1).map(|g| g.0);
    match requested {
        Some(n) if gens.iter().any(|g| g.0 == n) => {
            if Some(n) == current {
                Err(format!("generation {n} is already the current one"))
            } else {
                Ok(n)
            }
        }
        Some(n) => Err(format!(
            "generation {n} does not exist; the system profile has generations {}",
            gens.iter().map(|g| g.0.to_string()).collect::<Vec<_>>().join(", ")
        )),
        None => {
            let current = current.ok_or("the system profile has no current generation")?;
            gens.iter().map(|g| g.0).filter(|&n| n < current).max().ok_or_else(|| {
                format!("generation {current} is the oldest: there is nothing to roll back to")
            })
        }
    }
}

/// The generation to return to and its system.
pub async fn pick_generation(
    r: &Remote,
    requested: Option<u32>,
    secs: u64,
) -> Result<(u32, StorePath), StepError> {
    let out = r
        .run(&Cmd::new(["nix-env", "-p", SYSTEM_PROFILE, "--list-generations"]).secs(secs))
        .await?;
    if !out.success() {
        return Err(failed("nix-env --list-generations", &out));
    }
    let n = choose_generation(&parse_generations(&out.stdout), requested)
        .map_err(StepError::Invalid)?;
    let link = format!("{SYSTEM_PROFILE}-{n}-link");
    let path = resolve(r, &link, secs)
        .await?
        .ok_or_else(|| StepError::Invalid(format!("{link} does not exist")))?;
    Ok((n, StorePath::parse(&path)?))
}

// ---- inspection -----------------------------------------------------------

/// `readlink -f` of a path on the target; `None` when it does not exist.
pub async fn resolve(r: &Remote, path: &str, secs: u64) -> Result<Option<String>, StepError> {
    let out = r.run(&Cmd::new(["readlink", "-e", path]).secs(secs)).await?;
    Ok(if out.success() { Some(out.stdout.trim().to_string()) } else { None })
}

/// Run the self-check script; its output goes to `on_line`.
pub async fn self_check(
    r: &Remote,
    script: &str,
    secs: u64,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<(), StepError> {
    let cmd = Cmd::new([script]).secs(secs);
    let mut lines = Vec::new();
    let status = r
        .stream(&cmd, |l| {
            on_line(l);
            lines.push(l.to_string());
        })
        .await?;
    if status.success() {
        Ok(())
    } else {
        Err(StepError::Failed {
            cmd: script.to_string(),
            code: status.code().map(|c| c.to_string()).unwrap_or_else(|| "signal".into()),
            tail: tail_lines(&lines.join("\n"), 15),
        })
    }
}

// ---- agent ----------------------------------------------------------------

/// Start an agent action as a transient systemd unit (it survives the ssh
/// connection that started it).
pub async fn start_agent(
    r: &Remote,
    run: &RunDir,
    action: &str,
    args: &[String],
    secs: u64,
) -> Result<String, StepError> {
    let unit = run.unit(action);
    let mut argv = vec![
        "systemd-run".to_string(),
        format!("--unit={unit}"),
        "--description=deploy-flake activation agent".into(),
        "--collect".into(),
        "--quiet".into(),
        "--property=KillMode=control-group".into(),
        "/bin/sh".into(),
        run.agent.clone(),
        action.into(),
    ];
    argv.extend(args.iter().cloned());
    let out = r.run(&Cmd::new(argv).secs(secs)).await?;
    if !out.success() {
        return Err(failed("systemd-run", &out));
    }
    Ok(unit)
}

/// Stream the run's log from line `seen` until the agent reaches a state
/// that needs the deployer (or a final one), then its status. `seen` counts
/// the log lines received, so a re-attached watch continues where it was.
pub async fn watch_agent(
    r: &Remote,
    run: &RunDir,
    seen: &mut usize,
    also_wait: Option<&str>,
    secs: u64,
    on_line: &mut (dyn FnMut(&str) + Send),
) -> Result<AgentStatus, RemoteError> {
    let mut argv = vec![
        "/bin/sh".to_string(),
        run.agent.clone(),
        "watch".into(),
        run.dir.clone(),
        seen.to_string(),
    ];
    argv.extend(also_wait.map(String::from));
    let cmd = Cmd::new(argv).secs(secs);
    let marker = format!("deploy-flake-status {} ", run.id());
    let previous_marker = format!("deploy-flake-previous {} ", run.id());
    let mut status = None;
    let mut previous = None;
    r.stream(&cmd, |l| {
        if let Some(rest) = l.strip_prefix(marker.as_str()) {
            status = Some(parse_status(rest));
        } else if let Some(rest) = l.strip_prefix(previous_marker.as_str()) {
            previous = Some(rest.trim().to_string()).filter(|p| !p.is_empty());
        } else {
            *seen += 1;
            on_line(l);
        }
    })
    .await?;
    let mut status =
        status.ok_or_else(|| RemoteError::Disconnected { cmd: "agent watch".into() })?;
    status.previous = previous;
    Ok(status)
}

/// The agent's status line: state and reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentStatus {
    pub state: String,
    pub reason: String,
    /// The system that ran before this run's activation, when recorded.
    pub previous: Option<String>,
}

pub fn parse_status(line: &str) -> AgentStatus {
    let line = line.trim();
    let (state, reason) = line.split_once(' ').unwrap_or((line, ""));
    AgentStatus { state: state.to_string(), reason: reason.to_string(), previous: None }
}

/// Create a marker file in the run dir (`abort`) with a reason in it.
pub async fn signal_agent(
    r: &Remote,
    run: &RunDir,
    name: &str,
    reason: &str,
    secs: u64,
) -> Result<(), StepError> {
    let cmd = Cmd::new(["dd", &format!("of={}", run.file(name)), "status=none"]).secs(secs);
    r.run_with_stdin(&cmd, Some(reason.as_bytes())).await?;
    Ok(())
}

/// Remove the run's GC root once the profile holds the system.
pub async fn drop_root(r: &Remote, run: &RunDir, secs: u64) -> Result<(), StepError> {
    r.run(&Cmd::new(["rm", "-f", &run.file("toplevel")]).secs(secs)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_paths_are_validated() {
        assert!(StorePath::parse("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1")
            .is_ok());
        assert!(StorePath::parse("/nix/store/short-x").is_err());
        assert!(StorePath::parse("/tmp/0123456789abcdfghijklmnpqrsvwxyz-x").is_err());
        assert!(StorePath::parse("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x/bin").is_err());
        assert!(StorePath::parse("/nix/store/0123456789abcdfghijklmnpqrsvwxyz-$(x)").is_err());
    }

    #[test]
    fn configuration_names_are_quoted_and_encoded() {
        assert_eq!(
            toplevel_installable("path:/nix/store/x-source", "web1").unwrap(),
            "path:/nix/store/x-source#nixosConfigurations.%22web1%22.config.system.build.toplevel"
        );
        assert_eq!(
            toplevel_installable(".", "my host$(x)").unwrap(),
            ".#nixosConfigurations.%22my%20host%24%28x%29%22.config.system.build.toplevel"
        );
        assert!(toplevel_installable(".", "a\"b")
            .unwrap_err()
            .to_string()
            .contains("rename the nixosConfigurations attribute"));
    }

    #[test]
    fn build_json_gives_the_out_path() {
        let j = r#"[{"drvPath":"/nix/store/0123456789abcdfghijklmnpqrsvwxyz-t.drv","outputs":{"out":"/nix/store/0123456789abcdfghijklmnpqrsvwxyz-t"}}]"#;
        assert_eq!(
            parse_build_json(j).unwrap().as_str(),
            "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-t"
        );
        assert!(parse_build_json("[]").is_err());
    }

    #[test]
    fn rollback_picks_the_generation_before_the_current() {
        let text = "   1   2026-11-20 10:00:00   \n   2   2026-11-21 10:00:00   \n   4   2026-11-22 10:00:00   (current)\n   5   2026-11-23 10:00:00\n";
        let gens = parse_generations(text);
        assert_eq!(gens, vec![(1, false), (2, false), (4, true), (5, false)]);
        assert_eq!(choose_generation(&gens, None), Ok(2));
        assert_eq!(choose_generation(&gens, Some(1)), Ok(1));
        assert_eq!(choose_generation(&gens, Some(5)), Ok(5));
        assert_eq!(
            choose_generation(&gens, Some(4)),
            Err("generation 4 is already the current one".into())
        );
        assert_eq!(
            choose_generation(&gens, Some(3)),
            Err("generation 3 does not exist; the system profile has generations 1, 2, 4, 5".into())
        );
        assert_eq!(
            choose_generation(&[(1, true)], None),
            Err("generation 1 is the oldest: there is nothing to roll back to".into())
        );
        assert_eq!(
            choose_generation(&[], None),
            Err("the system profile has no current generation".into())
        );
    }

    #[test]
    fn agent_answers_are_parsed() {
        let facts = parse_facts(
            "deploy-flake-current /nix/store/a-sys\ndeploy-flake-profile \ndeploy-flake-switchable yes\n\
             deploy-flake-systemd yes\nnoise\n",
        );
        assert_eq!(
            facts,
            Facts {
                current: Some("/nix/store/a-sys".into()),
                profile: None,
                switchable: true,
                self_check: None,
                systemd: true
            }
        );
        let h = parse_health("deploy-flake-state degraded\ndeploy-flake-failed a.service\ndeploy-flake-failed b.service\n");
        assert_eq!(
            h,
            Health {
                state: "degraded".into(),
                failed_units: vec!["a.service".into(), "b.service".into()]
            }
        );
        assert_eq!(h.describe(), "system is degraded (failed units: a.service, b.service)");
        assert!(!h.is_running());
        assert_eq!(parse_health("").state, "unknown");
        assert_eq!(
            parse_status("rolled-back no confirmation within 30s\n"),
            AgentStatus {
                state: "rolled-back".into(),
                reason: "no confirmation within 30s".into(),
                previous: None
            }
        );
    }

    #[test]
    fn run_dirs_are_per_run() {
        let a = RunDir::new("20261126-abc");
        assert_eq!(a.dir, "/run/deploy-flake/runs/20261126-abc");
        assert!(a.agent.starts_with("/run/deploy-flake/agent-"));
        assert_eq!(a.unit("activate"), "deploy-flake-20261126-abc-activate");
    }
}
