//! Host selection: names, tags, globs, exclusions, ad hoc destinations,
//! ordering, and the errors for everything else.

use deploy_flake::inventory::{HostSpec, Inventory};
use deploy_flake::select::{parse_destination, select, Destination, Selection, Target};

fn inventory() -> Inventory {
    let mut hosts = std::collections::BTreeMap::new();
    for (name, tags) in [
        ("web-1", vec!["web"]),
        ("web-2", vec!["web", "canary"]),
        ("web-10", vec!["web"]),
        ("db1", vec!["db"]),
        ("mail", vec![]),
    ] {
        let mut h = HostSpec::with_defaults(name);
        h.hostname = format!("{name}.example.com");
        h.tags = tags.into_iter().map(String::from).collect();
        hosts.insert(name.to_string(), h);
    }
    let mut db1 = hosts["db1"].clone();
    db1.ssh_user = "deploy".into();
    db1.timeouts.build = 9;
    hosts.insert("db1".into(), db1);
    Inventory { schema_version: 1, hosts, rollout: None }
}

fn sel(hosts: &[&str], all: bool, exclude: &[&str]) -> Selection {
    Selection {
        hosts: hosts.iter().map(|s| s.to_string()).collect(),
        all,
        exclude: exclude.iter().map(|s| s.to_string()).collect(),
    }
}

fn names(targets: &[Target]) -> Vec<&str> {
    targets.iter().map(|t| t.name.as_str()).collect()
}

fn pick(hosts: &[&str], all: bool, exclude: &[&str]) -> Vec<String> {
    let inv = inventory();
    let t = select(Some(&inv), &sel(hosts, all, exclude)).unwrap();
    names(&t).into_iter().map(String::from).collect()
}

fn pick_err(hosts: &[&str], all: bool, exclude: &[&str]) -> String {
    select(Some(&inventory()), &sel(hosts, all, exclude)).unwrap_err().to_string()
}

#[test]
fn names_tags_globs_all_sorted_without_duplicates() {
    assert_eq!(pick(&["web-2", "db1"], false, &[]), ["db1", "web-2"]);
    assert_eq!(pick(&["@web"], false, &[]), ["web-1", "web-10", "web-2"]);
    assert_eq!(pick(&["@canary", "web-2", "web-*"], false, &[]), ["web-1", "web-10", "web-2"]);
    assert_eq!(pick(&["web-?"], false, &[]), ["web-1", "web-2"]);
    assert_eq!(pick(&["[dm]*"], false, &[]), ["db1", "mail"]);
    assert_eq!(pick(&[], true, &[]), ["db1", "mail", "web-1", "web-10", "web-2"]);
}

#[test]
fn exclusions_use_the_same_syntax() {
    assert_eq!(pick(&[], true, &["@web"]), ["db1", "mail"]);
    assert_eq!(pick(&["@web"], false, &["web-1*"]), ["web-2"]);
    assert_eq!(pick(&[], true, &["mail", "@db", "web-1?"]), ["web-1", "web-2"]);
    assert_eq!(
        pick_err(&["@db"], false, &["db1"]),
        "every selected host was excluded by --exclude"
    );
    assert_eq!(
        pick_err(&[], true, &["mial"]),
        "unknown host `mial`: did you mean `mail`? (for a host outside deployFlake, write nixos://HOST or USER@HOST)"
    );
}

#[test]
fn unknown_names_suggest_the_closest() {
    assert_eq!(
        pick_err(&["web1"], false, &[]),
        "unknown host `web1`: did you mean `web-1`, `web-10`, `web-2`? (for a host outside deployFlake, write nixos://HOST or USER@HOST)"
    );
    assert_eq!(
        pick_err(&["zzzz"], false, &[]),
        "unknown host `zzzz`: known hosts: `db1`, `mail`, `web-1`, `web-10`, `web-2` (for a host outside deployFlake, write nixos://HOST or USER@HOST)"
    );
    assert_eq!(pick_err(&["@wbe"], false, &[]), "no host has tag `@wbe`: did you mean `@web`?");
    assert_eq!(
        pick_err(&["app-*"], false, &[]),
        "`app-*` matches no host in deployFlake (hosts: `db1`, `mail`, `web-1`, `web-10`, `web-2`)"
    );
    assert_eq!(
        pick_err(&["web-[1"], false, &[]),
        "`web-[1` is not a valid glob: invalid range pattern"
    );
}

#[test]
fn nothing_selected_is_an_error() {
    assert_eq!(
        pick_err(&[], false, &[]),
        "no hosts selected: name hosts, @tags or globs, or pass --all (see --help)"
    );
}

#[test]
fn ad_hoc_destinations() {
    let inv = inventory();
    let t = select(
        Some(&inv),
        &sel(
            &[
                "nixos://root@[fe80::1]:2222/web-1",
                "mail",
                "admin@10.0.0.5",
                "nixos://db.internal:2200/db1",
            ],
            false,
            &[],
        ),
    )
    .unwrap();
    // Inventory hosts first (sorted), then ad hoc in argument order.
    assert_eq!(
        names(&t),
        [
            "mail",
            "nixos://root@[fe80::1]:2222/web-1",
            "admin@10.0.0.5",
            "nixos://db.internal:2200/db1"
        ]
    );

    let v6 = &t[1].spec;
    assert_eq!(
        (v6.hostname.as_str(), v6.ssh_user.as_str(), v6.ssh_port),
        ("fe80::1", "root", 2222)
    );
    assert_eq!(v6.configuration, "web-1");
    assert_eq!(v6.tags, ["web"], "inherits the inventory host's settings");

    let plain = &t[2].spec;
    let mut want = HostSpec::with_defaults("10.0.0.5");
    want.ssh_user = "admin".into();
    assert_eq!(*plain, want, "no inventory host of that name: built-in defaults");

    let db = &t[3].spec;
    assert_eq!(
        (db.hostname.as_str(), db.ssh_user.as_str(), db.ssh_port),
        ("db.internal", "deploy", 2200)
    );
    assert_eq!(db.timeouts.build, 9, "user not given: the inventory host's user and timeouts stay");
}

#[test]
fn ad_hoc_without_inventory() {
    let t =
        select(None, &sel(&["web1", "nixos://root@h:2222/web", "ops@[::1]"], false, &[])).unwrap();
    assert_eq!(names(&t), ["web1", "nixos://root@h:2222/web", "ops@[::1]"]);
    assert_eq!(t[0].spec, HostSpec::with_defaults("web1"));
    assert_eq!(t[1].spec.configuration, "web");
    assert_eq!(t[2].spec.hostname, "::1");
    assert_eq!(t[2].spec.configuration, "::1");

    let e = select(None, &sel(&["@web"], false, &[])).unwrap_err().to_string();
    assert_eq!(e, "`@web` needs the flake's deployFlake output, which it does not have; name ad hoc destinations (nixos://[user@]host[:port][/config]) instead, or add deployFlake to flake.nix");
    let e = select(None, &sel(&[], true, &[])).unwrap_err().to_string();
    assert!(e.starts_with("`--all` needs the flake's deployFlake output"), "{e}");
    assert!(!sel(&["web-*"], false, &[]).works_without_inventory());
    assert!(sel(&["nixos://h/web"], false, &[]).works_without_inventory());
    assert!(sel(&["nixos://[::1]/web", "u@[::1]", "h"], false, &[]).works_without_inventory());
    assert!(!sel(&["h", "@web"], false, &[]).works_without_inventory());
}

#[test]
fn duplicates_collapse() {
    let t = select(Some(&inventory()), &sel(&["mail", "mail", "a@b", "a@b"], false, &[])).unwrap();
    assert_eq!(names(&t), ["mail", "a@b"]);
    let t = select(Some(&inventory()), &sel(&["mail", "a@b"], false, &["a@b"])).unwrap();
    assert_eq!(names(&t), ["mail"]);
}

#[test]
fn destination_grammar() {
    let d = |s: &str| parse_destination(s);
    let dest =
        |user: Option<&str>, host: &str, port: Option<u16>, config: Option<&str>| Destination {
            user: user.map(String::from),
            host: host.into(),
            port,
            config: config.map(String::from),
        };
    assert_eq!(d("h"), Ok(dest(None, "h", None, None)));
    assert_eq!(d("u@h:22/c"), Ok(dest(Some("u"), "h", Some(22), Some("c"))));
    assert_eq!(
        d("root@[fe80::1]:2222/web"),
        Ok(dest(Some("root"), "fe80::1", Some(2222), Some("web")))
    );
    assert_eq!(d("[::1]"), Ok(dest(None, "::1", None, None)));
    assert_eq!(d("fe80::1"), Ok(dest(None, "fe80::1", None, None)));
    assert_eq!(d("h/it's $(x) *"), Ok(dest(None, "h", None, Some("it's $(x) *"))));
    assert_eq!(
        d("h/odd \"name\""),
        Err("configuration `odd \"name\"` contains '\"', which a flake attribute path cannot hold: rename the nixosConfigurations attribute".into())
    );
    assert_eq!(d("a:b@h"), Err("user `a:b` contains ':'".into()));
    assert_eq!(d("h:0"), Err("port `0` is not a number in 1..65535".into()));
    assert_eq!(d("h:99999"), Err("port `99999` is not a number in 1..65535".into()));
    assert_eq!(d("[::1"), Err("missing ']' after an IPv6 address".into()));
    assert_eq!(d("[::1]x"), Err("unexpected `x` after ']'".into()));
    assert_eq!(d("-oProxyCommand=x"), Err("host `-oProxyCommand=x` starts with '-'".into()));
    assert_eq!(d("@h"), Err("user `` is empty".into()));
    let e = select(None, &sel(&["nixos://root@-x/web"], false, &[])).unwrap_err().to_string();
    assert_eq!(e, "`nixos://root@-x/web` is not a valid destination: host `-x` starts with '-' (expected nixos://[user@]host[:port][/config])");
}

#[test]
fn exact_attribute_names_win_over_every_other_reading() {
    let mut inv = inventory();
    for odd in ["web[1]", "ops@edge", "it's $(x) *"] {
        inv.hosts.insert(odd.into(), HostSpec::with_defaults("placeholder"));
    }
    for odd in ["web[1]", "ops@edge", "it's $(x) *"] {
        let t = select(Some(&inv), &sel(&[odd], false, &[])).unwrap();
        assert_eq!(names(&t), [odd], "{odd} is an attribute name, not a glob or destination");
    }
}
