//! The keys of a host in the pipeline, against a fake host: read before
//! anything changes, sent right before the agent starts, never for a
//! rollback or `--goal boot`, and written alone to a host that is up to
//! date.

use super::fake::{at, drive, failed, Fake, NEW};
use super::{Goal, Mode};
use crate::agent::AgentState;
use crate::events::{Outcome, Phase, Reason};
use crate::fleet::{KeySpec, UploadAt};
use crate::keys::KeyError;
use crate::select::Target;

fn with_keys(t: &mut Target) {
    for (name, at) in [("db", UploadAt::PreActivation), ("tls", UploadAt::PostActivation)] {
        let spec = KeySpec {
            name: name.into(),
            text: None,
            key_file: Some(format!("/secrets/{name}")),
            key_command: None,
            dest_dir: "/run/keys".into(),
            user: "root".into(),
            group: "root".into(),
            permissions: "0600".into(),
            upload_at: at,
        };
        t.spec.keys.insert(name.into(), spec);
    }
}

#[tokio::test]
async fn keys_are_read_before_the_copy_and_sent_right_before_the_agent_starts() {
    let r = drive(Fake::new(), |t, _| with_keys(t)).await;
    assert_eq!(r.ended(), (Outcome::Deployed, None, Some(Phase::Boot)));
    let at = |what: &str| r.calls.iter().position(|c| c == what).unwrap_or(usize::MAX);
    assert!(at("lock") < at("read-keys 2") && at("read-keys 2") < at("archive ."), "{:?}", r.calls);
    assert_eq!(at("stage-keys 2") + 1, at("start activate then-boot"), "{:?}", r.calls);
    assert!(at("pre-switch-check") < at("stage-keys 2"));
    // Without keys, nothing of the kind.
    let r = drive(Fake::new(), |_, _| {}).await;
    assert!(!r.calls.iter().any(|c| c.contains("keys")), "{:?}", r.calls);
}

#[tokio::test]
async fn a_key_that_cannot_be_read_stops_the_host_unchanged() {
    let mut f = Fake::new();
    f.read_keys = Err(KeyError::Command {
        key: "db".into(),
        cmd: "pass show db".into(),
        reason: "failed here (exit 1):\ngpg: decryption failed: No secret key".into(),
    });
    let r = drive(f, |t, _| with_keys(t)).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::Keys), Some(Phase::Preflight)));
    assert_eq!(
        r.message(),
        "key db: keyCommand pass show db: failed here (exit 1):\ngpg: decryption failed: No secret key; nothing changed"
    );
    assert!(!r.called("archive") && !r.called("start activate"));
}

#[tokio::test]
async fn keys_that_cannot_be_sent_stop_the_host_before_the_agent_starts() {
    let mut f = Fake::new();
    f.stage_keys = Err(failed("keys-stage", "key directory /run/keys may be changed by others"));
    let r = drive(f, |t, _| with_keys(t)).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::Keys), Some(Phase::Activate)));
    assert!(r.message().starts_with("sending the keys: "), "{}", r.message());
    assert!(r.message().ends_with("; nothing changed"), "{}", r.message());
    assert!(!r.called("start activate"));
}

#[tokio::test]
async fn staged_keys_are_discarded_when_the_agent_does_not_start() {
    let mut f = Fake::new();
    f.start = [Err(failed("systemd-run", "Failed to start transient service"))].into();
    let r = drive(f, |t, _| with_keys(t)).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::ActivationFailed), Some(Phase::Activate)));
    assert!(r.called("discard-keys"), "{:?}", r.calls);
}

#[tokio::test]
async fn a_host_that_is_up_to_date_gets_its_keys_written_alone() {
    let mut f = Fake::new();
    f.facts = Ok(crate::agent::Facts {
        current: Some(NEW.into()),
        profile: Some(NEW.into()),
        boot_written: true,
        ..f.facts.unwrap()
    });
    let r = drive(f, |t, _| with_keys(t)).await;
    assert_eq!(r.report.outcome, Outcome::UpToDate);
    assert!(r.called("upload-keys 2") && !r.called("stage-keys"));
    assert!(r.notes().contains(&"wrote 2 key(s); the system is up to date"));
    let mut f = Fake::new();
    f.facts = Ok(crate::agent::Facts {
        current: Some(NEW.into()),
        profile: Some(NEW.into()),
        boot_written: true,
        ..f.facts.unwrap()
    });
    f.upload_keys = Err(failed("keys-upload", "key tls: user nginx or group nginx does not exist"));
    let r = drive(f, |t, _| with_keys(t)).await;
    assert_eq!(r.ended(), (Outcome::Failed, Some(Reason::Keys), Some(Phase::Build)));
}

#[tokio::test]
async fn a_rollback_and_a_boot_entry_alone_send_no_keys() {
    let r = drive(Fake::new(), |t, ctx| {
        with_keys(t);
        ctx.mode = Mode::Rollback { to_generation: None };
    })
    .await;
    assert_eq!(r.report.outcome, Outcome::Deployed);
    assert!(!r.calls.iter().any(|c| c.contains("keys")), "{:?}", r.calls);
    let mut f = Fake::new();
    f.watch = [at(AgentState::Booted)].into();
    let r = drive(f, |t, ctx| {
        with_keys(t);
        ctx.goal = Goal::Boot;
    })
    .await;
    assert_eq!(r.report.outcome, Outcome::Deployed);
    assert!(!r.calls.iter().any(|c| c.contains("keys")), "{:?}", r.calls);
    assert!(r.notes().iter().any(|n| n.starts_with("keys are not written with --goal boot")));
}

#[tokio::test]
async fn with_a_soak_the_previous_keys_are_kept_and_a_revert_puts_them_back() {
    let r = drive(Fake::new(), |t, ctx| {
        with_keys(t);
        ctx.keep_keys = true;
    })
    .await;
    assert!(r.called("stage-keys 2 keep"), "{:?}", r.calls);
    let r = drive(Fake::new(), |t, ctx| {
        with_keys(t);
        ctx.mode =
            Mode::Revert { to: super::fake::path(super::fake::OLD), from_run: "run0".into() };
    })
    .await;
    assert_eq!(r.report.outcome, Outcome::Deployed);
    let at = |what: &str| r.calls.iter().position(|c| c == what).unwrap_or(usize::MAX);
    assert_eq!(at("adopt-keys run0") + 1, at("start activate then-boot"), "{:?}", r.calls);
    assert!(!r.called("read-keys") && !r.called("stage-keys"), "{:?}", r.calls);
}
