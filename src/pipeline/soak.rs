//! The soak check: after a rollout wave has run for a while, is a host
//! still healthy, and does it still run the system deployed? Read-only: it
//! takes no lock, changes nothing (but, once passed, drops the previous
//! content the deploy kept of the keys it replaced), and needs no agent
//! installed (a host rebooted by someone else meanwhile has lost it; a
//! reboot into the deployed system is no failure).

use crate::fleet::HostSpec;
use crate::host::Host;

/// System running, no unit failed that had not failed before the run's
/// activation (since the boot, after a reboot), the host runs `deployed`,
/// and its health checks pass. `Err`: why not.
pub async fn soak_check<H: Host>(
    spec: &HostSpec,
    deployed: &str,
    mut host: H,
) -> Result<(), String> {
    let checked = check(spec, deployed, &mut host).await;
    host.close().await;
    checked
}

async fn check<H: Host>(spec: &HostSpec, deployed: &str, host: &mut H) -> Result<(), String> {
    host.connect().await.map_err(|e| format!("could not reach it: {e}"))?;
    let secs = crate::budget::Budget::of(&spec.timeouts, &spec.health_checks).health;
    let look = host.look(secs).await.map_err(|e| format!("health: {e}"))?;
    if look.current.as_deref() != Some(deployed) {
        let runs = look.current.as_deref().unwrap_or("no system");
        return Err(format!("it runs {runs}, not {deployed}, the system deployed"));
    }
    let health = look.health;
    if !health.healthy_after_activation() {
        let new = health.new_failures();
        return Err(if new.is_empty() {
            format!("system is {}", health.state)
        } else {
            format!("system is {}; failed since the deploy: {}", health.state, new.join(", "))
        });
    }
    for c in &spec.health_checks {
        host.health_check(c).await?;
    }
    // Passed: the content its keys had before the run is not needed.
    if !spec.keys.is_empty() {
        let _ = host.drop_kept_keys(30).await;
    }
    Ok(())
}
