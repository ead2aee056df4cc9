//! The host lock through a run: a deployer silent for longer than the
//! lock holder waits (stopped, suspended, its heartbeats stuck) has lost
//! it, and another run may have taken it. Before the host changes, the run
//! makes sure it holds the lock and the host is as it found it; while it
//! follows the agent, it takes a lost lock back, which also renews the
//! agent's window for the confirmation.

use super::prepare::refuse_if_busy;
use super::{End, HostRun};
use crate::agent::LockError;
use crate::budget::FACTS_SECS;
use crate::events::Reason;
use crate::host::{Host, HostError};
use crate::nix::StorePath;

impl HostRun<'_> {
    /// Right before the host changes: is the host lock still ours? A lost
    /// one is taken back only when no other run holds it, no switch is
    /// under way, and the host runs and boots what it did when the run
    /// looked; otherwise nothing changes, and the report says what the host
    /// runs now.
    pub(super) async fn still_locked<H: Host>(
        &mut self,
        host: &mut H,
        toplevel: &StorePath,
    ) -> Result<(), End> {
        let Some(why) = host.lock_lost() else { return Ok(()) };
        let lost = format!("lost the host lock ({why})");
        let ended = match host.relock(self.spec().timeouts.lock).await {
            Ok(locked) if locked.held_meanwhile => Some(End::unchanged(
                Reason::LockLost,
                format!("{lost}, and another deploy held it meanwhile; nothing changed"),
            )),
            Ok(locked) => match refuse_if_busy(&locked.busy) {
                Ok(()) => None,
                Err(busy) => {
                    let said = busy.message.clone().unwrap_or_default();
                    Some(End::unchanged(
                        Reason::LockLost,
                        format!("{lost}; {said}; nothing changed"),
                    ))
                }
            },
            Err(HostError::Lock(LockError::Held { holder, .. })) => Some(End::unchanged(
                Reason::LockLost,
                format!("{lost}, and another deploy holds it now: {holder}; nothing changed"),
            )),
            Err(e) => Some(End::unchanged(
                e.reason(Reason::LockLost),
                format!("{lost}, and taking it again failed: {e}; nothing changed"),
            )),
        };
        // What the host runs and boots now, for the report or to compare.
        let now = host.facts(toplevel, None, FACTS_SECS).await;
        let before = self.facts.as_ref().map(|f| (&f.current, &f.profile));
        let ended = match now {
            Ok(now) => {
                let unchanged = before == Some((&now.current, &now.profile));
                let runs = now.current.clone().unwrap_or_else(|| "nothing".into());
                self.facts = Some(now);
                ended.or_else(|| {
                    (!unchanged).then(|| {
                        End::unchanged(
                            Reason::LockLost,
                            format!(
                                "{lost}, and another deploy changed the host meanwhile: it runs \
                                 {runs}; nothing changed"
                            ),
                        )
                    })
                })
            }
            Err(e) => ended.or_else(|| {
                Some(End::unchanged(
                    e.reason(Reason::LockLost),
                    format!(
                        "{lost}; what the host runs now could not be read: {e}; nothing changed"
                    ),
                ))
            }),
        };
        match ended {
            Some(end) => Err(end),
            None => {
                self.note(format!("{lost}; took it back: the host runs and boots what it did"));
                Ok(())
            }
        }
    }

    /// While following the agent: a lost lock is taken back (the agent's
    /// window for the confirmation is renewed with it). Taken by another
    /// run, it is not: the agent ends by itself.
    pub(super) async fn renew_lock<H: Host>(&self, host: &mut H) {
        let Some(why) = host.lock_lost() else { return };
        match host.relock(self.spec().timeouts.lock).await {
            Ok(_) => self.note(format!("lost the host lock ({why}); took it back")),
            Err(e) => {
                self.note(format!("lost the host lock ({why}), and could not take it back: {e}"))
            }
        }
    }
}
