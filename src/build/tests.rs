//! The way each host takes to its system, the build hosts a run needs and
//! `--systems`, as pure decisions.

use std::collections::BTreeMap;

use super::*;
use crate::fleet::{BuildOn, CopyFrom, HostSpec};

const SYSTEM: &str = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web1";

fn spec(tweak: impl FnOnce(&mut HostSpec)) -> HostSpec {
    let mut s = HostSpec::with_defaults("web1");
    tweak(&mut s);
    s
}

fn target(name: &str, tweak: impl FnOnce(&mut HostSpec)) -> Target {
    let mut s = HostSpec::with_defaults(name);
    tweak(&mut s);
    Target { name: name.into(), spec: s }
}

#[test]
fn a_system_wins_then_a_cache_then_copy_from() {
    let local = || Build::Local { configuration: "web1".into() };
    let host = || Build::Host { build_host: "bh".into(), configuration: "web1".into() };
    let prebuilt = || Build::Prebuilt(StorePath::parse(SYSTEM).unwrap());
    type Row =
        (BuildOn, Option<&'static str>, CopyFrom, Option<&'static str>, Option<&'static str>);
    let table: Vec<(Row, Option<(Build, Route)>)> = vec![
        ((BuildOn::Target, None, CopyFrom::Deployer, None, None), None),
        // A cache means nothing to a host that builds its own system.
        ((BuildOn::Target, None, CopyFrom::BuildHost, Some("s3://c"), None), None),
        ((BuildOn::Local, None, CopyFrom::Deployer, None, None), Some((local(), Route::Relay))),
        // copyFrom is the build host's: here it is ignored.
        ((BuildOn::Local, None, CopyFrom::BuildHost, None, None), Some((local(), Route::Relay))),
        (
            (BuildOn::Local, None, CopyFrom::Deployer, Some("s3://c"), None),
            Some((local(), Route::Cache("s3://c".into()))),
        ),
        ((BuildOn::Host, Some("bh"), CopyFrom::Deployer, None, None), Some((host(), Route::Relay))),
        (
            (BuildOn::Host, Some("bh"), CopyFrom::BuildHost, None, None),
            Some((host(), Route::Direct)),
        ),
        (
            (BuildOn::Host, Some("bh"), CopyFrom::BuildHost, Some("file:///c"), None),
            Some((host(), Route::Cache("file:///c".into()))),
        ),
        (
            (BuildOn::Host, Some("bh"), CopyFrom::BuildHost, None, Some(SYSTEM)),
            Some((prebuilt(), Route::Relay)),
        ),
        (
            (BuildOn::Target, None, CopyFrom::Deployer, Some("s3://c"), Some(SYSTEM)),
            Some((prebuilt(), Route::Cache("s3://c".into()))),
        ),
    ];
    for ((build_on, build_host, copy_from, push_to, system), want) in table {
        let s = spec(|s| {
            s.build_on = build_on;
            s.build_host = build_host.map(String::from);
            s.copy_from = copy_from;
            s.push_to = push_to.map(String::from);
            s.system = system.map(String::from);
        });
        let got = way(&s).unwrap().map(|w| (w.build, w.route));
        assert_eq!(got, want, "{build_on:?} {build_host:?} {copy_from:?} {push_to:?} {system:?}");
    }
    let no_host = way(&spec(|s| s.build_on = BuildOn::Host)).unwrap_err();
    assert_eq!(no_host.reason, Reason::BuildHost);
    assert!(no_host.message.contains("--build-host"), "{no_host}");
}

#[test]
fn the_plan_says_where_it_is_built_and_how_it_comes() {
    let hosts: BTreeMap<String, String> = [("bh".to_string(), "root@b:22".to_string())].into();
    let d = |tweak: fn(&mut HostSpec)| describe(&spec(tweak), &hosts);
    assert_eq!(d(|_| {}), ("target".into(), None));
    assert_eq!(
        d(|s| s.build_on = BuildOn::Local),
        (
            "local".into(),
            Some("the target substitutes what it can, the rest is copied from here".into())
        )
    );
    let (built, copy) = d(|s| {
        s.build_on = BuildOn::Host;
        s.build_host = Some("bh".into());
        s.copy_from = CopyFrom::BuildHost;
    });
    assert_eq!(
        built,
        "host bh (root@b:22; evaluates and builds each configuration once per run, as many at \
         once as it has cores)"
    );
    let (built, _) = d(|s| {
        s.build_on = BuildOn::Host;
        s.build_host = Some("bh".into());
        s.build_host_capacity = 3;
    });
    assert!(built.ends_with("once per run, at most 3 at once)"), "{built}");
    assert!(copy.unwrap().starts_with("from the build host, over its own ssh login"));
    let (built, copy) = d(|s| {
        s.system = Some(SYSTEM.into());
        s.push_to = Some("s3://c".into());
    });
    assert_eq!(built, format!("nothing: {SYSTEM} was built elsewhere"));
    assert_eq!(
        copy.unwrap(),
        "pushed once to s3://c when this machine has it, then the host substitutes it"
    );
}

#[test]
fn build_hosts_are_named_once_by_fleet_name_or_destination_and_keep_the_agent_home() {
    let mut fleet = BTreeMap::new();
    fleet.insert(
        "builder".to_string(),
        spec(|s| {
            s.hostname = "10.0.0.9".into();
            s.ssh_user = "nix".into();
            s.ssh_opts = vec!["-A".into()];
        }),
    );
    let on = |word: &'static str, capacity: u32| {
        move |s: &mut HostSpec| {
            s.build_on = BuildOn::Host;
            s.build_host = Some(word.into());
            s.build_host_capacity = capacity;
            s.build_host_ssh_opts = vec!["-i".into(), "/k".into()];
        }
    };
    let targets = [
        target("a", on("builder", 0)),
        target("b", on("ops@10.0.0.7:2222", 2)),
        target("c", on("ops@10.0.0.7:2222", 4)),
        target("d", |_| {}),
        target("e", |s| {
            on("10.0.0.8", 0)(s);
            s.system = Some(SYSTEM.into());
        }),
    ];
    let found = build_hosts(Some(&fleet), &targets).unwrap();
    let shown: Vec<(String, String, u32, Vec<String>)> = found
        .iter()
        .map(|b| (b.word.clone(), b.dest.display(), b.capacity, b.dest.ssh_opts.clone()))
        .collect();
    let strs = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    assert_eq!(
        shown,
        [
            // A fleet host: its own settings; it asks for the agent (-A).
            ("builder".into(), "nix@10.0.0.9:22".into(), 0, strs(&["-A"])),
            // A destination: buildHostSshOpts, never the operator's agent.
            (
                "ops@10.0.0.7:2222".into(),
                "ops@10.0.0.7:2222".into(),
                4,
                strs(&["-o", "ForwardAgent=no", "-i", "/k"])
            ),
        ]
    );
    let bad = [target("x", on("root@h/web1", 0))];
    let e = build_hosts(None, &bad).unwrap_err();
    assert!(e.contains("without /configuration"), "{e}");
}

#[test]
fn systems_come_by_host_or_configuration_name_and_every_host_needs_one() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("systems.json");
    let other = "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-db";
    std::fs::write(
        &file,
        format!(r#"{{"web1": "{SYSTEM}", "db": {{"drvPath": "/nix/store/x.drv", "outputs": {{"out": "{other}"}}}}}}"#),
    )
    .unwrap();
    let systems = read_systems(&file).unwrap();
    let mut targets = [target("web1", |_| {}), target("db1", |s| s.configuration = "db".into())];
    apply_systems(&systems, &mut targets).unwrap();
    assert_eq!(targets[0].spec.system.as_deref(), Some(SYSTEM));
    assert_eq!(targets[1].spec.system.as_deref(), Some(other));
    let mut more = [target("web1", |_| {}), target("web9", |_| {})];
    let e = apply_systems(&systems, &mut more).unwrap_err();
    assert!(e.starts_with("--systems has no system for web9"), "{e}");

    for (text, want) in [
        ("[1]", "expected a JSON object"),
        ("{", "not JSON"),
        (r#"{"web1": 3}"#, "expected a store path"),
        (r#"{"web1": "/tmp/x"}"#, "is not a path directly in /nix/store"),
        (r#"{"web1": "/nix/store/short-x"}"#, "is not a store path"),
    ] {
        std::fs::write(&file, text).unwrap();
        let e = read_systems(&file).unwrap_err();
        assert!(e.contains(want), "{text}: {e}");
    }
}
