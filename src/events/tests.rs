//! The wire words (their JSON) and human labels of outcomes and reasons;
//! the JSON of what `status` and `diff` say of a host.

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

/// An event as data: the order of an object's keys is no part of it.
fn json(e: &Event) -> serde_json::Value {
    serde_json::to_value(e).unwrap()
}

fn value(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap()
}

const A: &str = "/nix/store/a-old";
const B: &str = "/nix/store/b-new";

/// The `host-status` event's JSON, every field given: what `--json`
/// readers parse.
#[test]
fn a_host_status_event_s_json_is_the_contract() {
    let fields = [("run", "r1"), ("when", "1700000000"), ("system", A), ("by", "me@here")];
    let last = LastDeploy {
        outcome: Some(LastOutcome::RolledBack),
        fields: fields.map(|(k, v)| (k.to_string(), v.to_string())).into(),
    };
    let state = HostState {
        current: Some(A.into()),
        profile: Some(A.into()),
        booted: Some(B.into()),
        default_entry: Some(A.into()),
        boot_id: Some("b-1".into()),
        state: SystemState::Degraded,
        failed_units: vec!["web.service".into()],
        needs_reboot: Some(vec!["kernel".into()]),
        lock: Some("run 7 by bob".into()),
        busy: vec!["nixos-upgrade.service".into()],
        last,
    };
    let drift = vec!["needs a reboot".to_string()];
    let status = Status { host: "web1".into(), error: None, state: Some(state), drift };
    assert_eq!(
        json(&Event::HostStatus { host: "web1".into(), status }),
        value(&format!(
            r#"{{"event":"host-status","host":"web1","status":{{"host":"web1","error":null,"state":{{"current":"{A}","profile":"{A}","booted":"{B}","default_entry":"{A}","boot_id":"b-1","state":"degraded","failed_units":["web.service"],"needs_reboot":["kernel"],"lock":"run 7 by bob","busy":["nixos-upgrade.service"],"last":{{"outcome":"rolled-back","by":"me@here","run":"r1","system":"{A}","when":"1700000000"}}}},"drift":["needs a reboot"]}}}}"#
        ))
    );
    let error = Some("ssh: timeout".into());
    let status = Status { host: "db1".into(), error, state: None, drift: vec![] };
    assert_eq!(
        json(&Event::HostStatus { host: "db1".into(), status }),
        value(
            r#"{"event":"host-status","host":"db1","status":{"host":"db1","error":"ssh: timeout","state":null,"drift":[]}}"#
        )
    );
}

/// The `host-diff` event's JSON, every field given: what `--json` readers
/// parse.
#[test]
fn a_host_diff_event_s_json_is_the_contract() {
    let package = |old: Option<&str>| PackageChange {
        name: "hello".into(),
        old: old.map(Into::into),
        new: Some("2.0".into()),
        size: Some("+1 KiB".into()),
    };
    let changes = Changes {
        packages: vec![package(Some("1.0")), package(None)],
        closure_bytes: Some((1, 2)),
        units: [("restart".to_string(), vec!["web.service".to_string()])].into(),
        needs_reboot: Some(vec![]),
        unknown: [("units".to_string(), "exited with 100".to_string())].into(),
    };
    let key = Listed {
        name: "db".into(),
        path: "/run/keys/db".into(),
        user: "postgres".into(),
        group: "keys".into(),
        permissions: "0640".into(),
        upload_at: "pre-activation",
    };
    let diff = HostDiff {
        host: "web1".into(),
        error: None,
        current: Some(A.into()),
        new: Some(B.into()),
        up_to_date: false,
        changes: Some(changes),
        keys: vec![key],
    };
    assert_eq!(
        json(&Event::HostDiff { host: "web1".into(), diff }),
        value(&format!(
            r#"{{"event":"host-diff","host":"web1","diff":{{"host":"web1","error":null,"current":"{A}","new":"{B}","up_to_date":false,"changes":{{"packages":[{{"name":"hello","old":"1.0","new":"2.0","size":"+1 KiB"}},{{"name":"hello","old":null,"new":"2.0","size":"+1 KiB"}}],"closure_bytes":[1,2],"units":{{"restart":["web.service"]}},"needs_reboot":[],"unknown":{{"units":"exited with 100"}}}},"keys":[{{"name":"db","path":"/run/keys/db","user":"postgres","group":"keys","permissions":"0640","uploadAt":"pre-activation"}}]}}}}"#
        ))
    );
    let diff = HostDiff { error: Some("ssh: timeout".into()), ..diff_of("db1") };
    assert_eq!(
        json(&Event::HostDiff { host: "db1".into(), diff }),
        value(
            r#"{"event":"host-diff","host":"db1","diff":{"host":"db1","error":"ssh: timeout","current":null,"new":null,"up_to_date":false,"changes":null,"keys":[]}}"#
        )
    );
}

fn diff_of(host: &str) -> HostDiff {
    HostDiff {
        host: host.into(),
        error: None,
        current: None,
        new: None,
        up_to_date: false,
        changes: None,
        keys: vec![],
    }
}
