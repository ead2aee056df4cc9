//! Systems built elsewhere against the fake host: built here, on a build
//! host or before; brought by this machine, by the build host or through a
//! cache; what the report says of it, and how a failure there ends a host;
//! the one sequence that gets a host its system (`Host::system`), step by step.

use super::fake::{drive, failed, path, run, Fake, NEW};
use crate::build::{BuildError, BuiltOn, CopiedFrom, Provenance};
use crate::events::{Outcome, Phase, Reason};
use crate::fleet::{BuildOn, CopyFrom, HostSpec};
use crate::host::{Host, Progress, Step, System, SystemError};

const BUILT: &str = "/nix/store/11111111111111111111111111111111-nixos-system-web1";

fn provenance(built_on: BuiltOn, copied_from: Option<CopiedFrom>) -> Provenance {
    Provenance { built_on: Some(built_on), copied_from }
}

#[tokio::test]
async fn each_way_builds_where_it_says_and_the_report_says_so() {
    // (buildOn, buildHost, copyFrom, pushTo, what the fake's deliver says)
    // -> the calls between lock and the pre-switch check, and the report.
    type Row<'a> = (BuildOn, Option<&'a str>, CopyFrom, Option<&'a str>, CopiedFrom, [&'a str; 2]);
    let table: [Row; 5] = [
        (
            BuildOn::Local,
            None,
            CopyFrom::Deployer,
            None,
            CopiedFrom::Deployer,
            ["build-local web1", "deliver relay"],
        ),
        (
            BuildOn::Host,
            Some("bh"),
            CopyFrom::Deployer,
            None,
            CopiedFrom::Deployer,
            ["build-on bh web1", "deliver relay"],
        ),
        (
            BuildOn::Host,
            Some("bh"),
            CopyFrom::BuildHost,
            None,
            CopiedFrom::BuildHost,
            ["build-on bh web1", "deliver direct"],
        ),
        // A cache wins over copyFrom, on a build host and here.
        (
            BuildOn::Host,
            Some("bh"),
            CopyFrom::BuildHost,
            Some("s3://c"),
            CopiedFrom::Cache,
            ["build-on bh web1", "deliver cache s3://c"],
        ),
        (
            BuildOn::Local,
            None,
            CopyFrom::Deployer,
            Some("file:///c"),
            CopiedFrom::Cache,
            ["build-local web1", "deliver cache file:///c"],
        ),
    ];
    for (build_on, build_host, copy_from, push_to, from, calls) in table {
        let mut f = Fake::new();
        f.deliver = Ok(from);
        let r = drive(f, |t, _| {
            t.spec.build_on = build_on;
            t.spec.build_host = build_host.map(String::from);
            t.spec.copy_from = copy_from;
            t.spec.push_to = push_to.map(String::from);
        })
        .await;
        let case = format!("{build_on:?} {copy_from:?} {push_to:?}");
        assert_eq!(r.report.outcome, Outcome::Deployed, "{case}");
        assert_eq!(r.calls[2..4], calls, "{case}");
        assert_eq!(r.phases()[3..5], [Phase::Build, Phase::Copy], "{case}");
        let built_on = if build_on == BuildOn::Local { BuiltOn::Local } else { BuiltOn::Host };
        assert_eq!(r.report.provenance, provenance(built_on, Some(from)), "{case}");
        assert_eq!(r.report.system.as_deref(), Some(NEW), "{case}");
    }
}

#[tokio::test]
async fn a_target_build_says_it_was_built_on_the_target_and_copied_from_nowhere() {
    let r = run(Fake::new()).await;
    assert_eq!(r.report.provenance, provenance(BuiltOn::Target, None));
    let json = serde_json::to_value(&r.report).unwrap();
    assert_eq!(json["built_on"], "target");
    assert_eq!(json["copied_from"], serde_json::Value::Null);
}

#[tokio::test]
async fn a_system_built_elsewhere_is_neither_evaluated_nor_built() {
    let mut f = Fake::new();
    f.build = Err(failed("nix build", "must not be called"));
    f.deliver = Ok(CopiedFrom::Substituters);
    let r = drive(f, |t, _| {
        t.spec.system = Some(BUILT.into());
        // `system` wins over where it would be built.
        t.spec.build_on = BuildOn::Host;
        t.spec.build_host = Some("bh".into());
    })
    .await;
    assert_eq!(r.report.outcome, Outcome::Deployed, "{}", r.message());
    assert_eq!(r.calls[2..4], [format!("prebuilt {BUILT}"), "deliver relay".into()]);
    assert!(!r.called("archive") && !r.called("build"), "{:?}", r.calls);
    assert!(!r.phases().contains(&Phase::Build), "{:?}", r.phases());
    assert!(r.notes().contains(&format!("deploying {BUILT}").as_str()), "{:?}", r.notes());
    assert_eq!(r.report.provenance, provenance(BuiltOn::Prebuilt, Some(CopiedFrom::Substituters)));
    let json = serde_json::to_value(&r.report).unwrap();
    assert_eq!(
        (json["built_on"].as_str(), json["copied_from"].as_str()),
        (Some("prebuilt"), Some("substituters"))
    );
}

#[tokio::test]
async fn failures_elsewhere_keep_their_reason_and_change_nothing() {
    // What build_elsewhere or deliver fails with -> the host's reason and phase.
    let table = [
        (true, Reason::BuildHost, Phase::Build),
        (true, Reason::Build, Phase::Build),
        (true, Reason::Timeout, Phase::Build),
        (false, Reason::NotASystem, Phase::Copy),
        (false, Reason::Copy, Phase::Copy),
    ];
    for (in_build, reason, phase) in table {
        let mut f = Fake::new();
        let e = BuildError::new(reason, format!("it went wrong: {}", reason.as_str()));
        if in_build {
            f.build = Err(e.into());
        } else {
            f.deliver = Err(e.into());
        }
        let r = drive(f, |t, _| {
            t.spec.build_on = BuildOn::Host;
            t.spec.build_host = Some("bh".into());
        })
        .await;
        assert_eq!(r.ended(), (Outcome::Failed, Some(reason), Some(phase)), "{reason:?}");
        assert!(
            r.message().contains(&format!("it went wrong: {}", reason.as_str())),
            "{}",
            r.message()
        );
        assert!(!r.called("start"), "{:?}", r.calls);
        assert!(r.report.system.as_deref() != Some(path(NEW).as_str()));
    }
}

/// What `Host::system` said on the fake (steps, `line` for each line),
/// and what it gave.
async fn system(fake: &mut Fake, spec: &HostSpec) -> (Vec<String>, Result<System, SystemError>) {
    let mut said = Vec::new();
    let mut progress = |p: Progress<'_>| {
        said.push(match p {
            Progress::BuiltOn(on) => format!("on {}", on.as_str()),
            Progress::Starts(step) => step.name().to_string(),
            Progress::Line(l) => format!("line {l}"),
        })
    };
    let got = fake.system(".", spec, Some("bin/check"), &mut progress).await;
    (said, got)
}

#[tokio::test]
async fn each_step_is_said_as_it_starts_and_its_lines_after_it() {
    let spec = |build_on, system: Option<&str>| HostSpec {
        build_on,
        system: system.map(str::to_string),
        ..HostSpec::with_defaults("web1")
    };
    let table: [(HostSpec, &[&str], Option<CopiedFrom>); 3] = [
        (
            spec(BuildOn::Target, None),
            &["on target", "copy", "line archiving", "line copying path", "build", "line building"],
            None,
        ),
        (
            spec(BuildOn::Local, None),
            &["on local", "build", "line building elsewhere", "copy"],
            Some(CopiedFrom::Deployer),
        ),
        // Built before: nothing to build, only to copy.
        (spec(BuildOn::Target, Some(NEW)), &["on prebuilt", "copy"], Some(CopiedFrom::Deployer)),
    ];
    for (spec, steps, copied_from) in table {
        let mut fake = Fake::new();
        let (said, got) = system(&mut fake, &spec).await;
        assert_eq!(said, steps, "{:?}", spec.build_on);
        let got = got.unwrap();
        assert_eq!((got.path.as_str(), got.copied_from), (NEW, copied_from), "{said:?}");
        assert_eq!(got.facts.is_some(), copied_from.is_none(), "facts come with a build there");
    }
}

#[tokio::test]
async fn a_failure_is_the_step_s_and_a_bad_record_fails_before_any() {
    let mut fake = Fake::new();
    fake.copy = Err(failed("nix copy", "error: no space"));
    let (said, got) = system(&mut fake, &HostSpec::with_defaults("web1")).await;
    let Err(SystemError::Failed(Step::Copy, e)) = got else { panic!("{got:?}") };
    assert!(e.to_string().contains("error: no space") && !said.contains(&"build".into()));
    let mut fake = Fake::new();
    fake.build = Err(failed("nix build", "error: attribute missing"));
    let (_, got) = system(&mut fake, &HostSpec::with_defaults("web1")).await;
    assert!(matches!(got, Err(SystemError::Failed(Step::Build, _))), "{got:?}");
    let bad = HostSpec { system: Some("/tmp/x".into()), ..HostSpec::with_defaults("web1") };
    let mut fake = Fake::new();
    let (said, got) = system(&mut fake, &bad).await;
    let Err(SystemError::Way(e)) = got else { panic!("{got:?}") };
    assert_eq!((said, e.reason), (vec![], Reason::NotASystem));
    assert!(fake.calls.lock().unwrap().is_empty(), "nothing was asked of the host");
}
