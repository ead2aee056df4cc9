//! The soak check: after a rollout wave has run for a while, is a host
//! still healthy? It takes no lock and changes nothing (but, once passed,
//! drops the previous content the deploy kept of the keys it replaced).

use crate::host::Host;
use crate::inventory::HostSpec;

/// System running, no unit failed that had not failed before the run's
/// activation, and the host's health checks pass. `Err`: why not.
pub async fn soak_check<H: Host>(spec: &HostSpec, mut host: H) -> Result<(), String> {
    let checked = check(spec, &mut host).await;
    host.close().await;
    checked
}

async fn check<H: Host>(spec: &HostSpec, host: &mut H) -> Result<(), String> {
    let t = spec.timeouts;
    host.connect().await.map_err(|e| format!("could not reach it: {e}"))?;
    let health = host.health(t.confirm.max(5)).await.map_err(|e| format!("health: {e}"))?;
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
