//! The wire words (their JSON) and human labels of outcomes and reasons.

use super::*;

#[test]
fn an_outcome_s_wire_word_is_its_json_and_its_display_is_for_people() {
    let table = [
        (Outcome::Deployed, "deployed", "deployed"),
        (Outcome::UpToDate, "up-to-date", "up to date"),
        (Outcome::Failed, "failed", "failed"),
        (Outcome::RolledBack, "rolled-back", "rolled back"),
        (Outcome::Unconfirmed, "unconfirmed", "activated, not confirmed"),
        (Outcome::Superseded, "superseded", "superseded"),
        (Outcome::Unknown, "unknown", "UNKNOWN STATE"),
        (Outcome::Cancelled, "cancelled", "cancelled"),
        (Outcome::Skipped, "skipped", "skipped"),
        (Outcome::Unchecked, "unchecked", "deployed, unchecked"),
        (Outcome::DeployedThenFailed, "deployed-then-failed", "deployed, then failed"),
    ];
    assert_eq!(table.map(|(o, _, _)| o), Outcome::ALL);
    for (outcome, wire, label) in table {
        assert_eq!(serde_json::to_value(outcome).unwrap(), wire);
        assert_eq!(outcome.as_str(), wire);
        assert_eq!(outcome.to_string(), label);
    }
}

#[test]
fn a_reason_s_wire_word_is_its_json_and_its_display_is_for_people() {
    for reason in Reason::ALL {
        let json = serde_json::to_value(reason).unwrap();
        assert_eq!(json, reason.as_str(), "{reason:?}");
        assert_eq!(serde_json::from_value::<Reason>(json).unwrap(), reason);
        assert_eq!(Reason::parse(reason.as_str()), Some(reason));
    }
    let words: std::collections::HashSet<_> = Reason::ALL.map(Reason::as_str).into();
    assert_eq!(words.len(), Reason::ALL.len(), "one word per reason");
    assert_eq!(Reason::NotASystem.to_string(), "not a system");
    assert_eq!(Reason::parse("health check"), None, "people's words are not wire words");
}
