//! The live display fed with synthetic events: its frame (what shows with
//! many hosts, in what order, how wide), the lines a finished host leaves,
//! and the whole display drawn on a terminal in memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use indicatif::InMemoryTerm;

use super::frame::{finished_lines, frame, header, Screen};
use super::state::{State, Status};
use super::{Counts, Live};
use crate::events::{Event, HostReport, Outcome, Phase};
use crate::report::Paint;

const OFF: Paint = Paint::new(false);

fn report(host: &str, outcome: Outcome, phase: Phase, message: Option<&str>) -> HostReport {
    HostReport {
        host: host.into(),
        outcome,
        phase: Some(phase),
        duration: Duration::from_millis(4200),
        system: outcome.is_success().then(|| "/nix/store/x-sys".to_string()),
        boot: None,
        needs_reboot: None,
        before: None,
        reason: None,
        message: message.map(String::from),
        provenance: Default::default(),
    }
}

fn started(n: usize) -> (Event, Vec<String>) {
    let hosts: Vec<String> = (0..n).map(|i| format!("host-{i:03}")).collect();
    (Event::RunStarted { run_id: "r1".into(), hosts: hosts.clone(), waves: None }, hosts)
}

fn phase(host: &str, phase: Phase) -> Event {
    Event::PhaseStarted { host: host.into(), phase }
}

fn output(host: &str, line: &str) -> Event {
    Event::Output { host: host.into(), phase: Phase::Build, line: line.into() }
}

/// 150 hosts at work, started one a second (host-000 first).
fn many(t0: Instant) -> State {
    let mut s = State::new();
    let (e, hosts) = started(150);
    s.apply(&e, t0);
    for (i, h) in hosts.iter().enumerate() {
        let p = if i % 3 == 0 { Phase::Build } else { Phase::Copy };
        s.apply(&phase(h, p), t0 + Duration::from_secs(i as u64));
        s.apply(&output(h, &format!("{h} says {}", "x".repeat(200))), t0);
    }
    s
}

#[test]
fn with_many_hosts_the_frame_fits_the_terminal_and_counts_the_rest() {
    let t0 = Instant::now();
    let s = many(t0);
    let now = t0 + Duration::from_secs(200);
    let lines = frame(&s, now, Screen { width: 120, height: 40 }, OFF);
    assert_eq!(lines.len(), 39, "one line short of the terminal:\n{}", lines.join("\n"));
    assert_eq!(
        lines[0],
        "150 host(s): 0 queued, 150 running, 0 deployed, 0 up to date, 0 failed, 0 rolled back (3m20s)"
    );
    // The longest-running first: host-000 .. host-036.
    for (i, line) in lines[1..38].iter().enumerate() {
        let name = format!("host-{i:03}");
        assert!(line.contains(&format!(" {name} ")), "line {}: {line}", i + 1);
        assert!(line.contains(&format!("{name} says xxx")), "latest line shown: {line}");
    }
    assert!(lines[1].starts_with("⠋ host-000 build       3m20s  host-000 says"), "{}", lines[1]);
    assert!(lines[2].contains(" copy        3m19s  "), "{}", lines[2]);
    // 113 not shown: host-037 .. host-149, a third of them (from host-039) building.
    assert_eq!(lines[38], format!("… 113 more running: {}", expected_more()));
    assert!(lines.iter().all(|l| console::measure_text_width(l) <= 120), "no line wraps");
    assert!(lines[1].ends_with('…'), "a long output line is cut: {}", lines[1]);
}

/// The hidden hosts' phases, counted the way the test builds them.
fn expected_more() -> String {
    let hidden = 37..150;
    let build = hidden.clone().filter(|i| i % 3 == 0).count();
    let copy = hidden.count() - build;
    format!("{copy} copy, {build} build")
}

#[test]
fn a_small_terminal_shows_the_counts_and_what_is_not_shown() {
    let t0 = Instant::now();
    let s = many(t0);
    let lines = frame(&s, t0, Screen { width: 60, height: 3 }, OFF);
    assert_eq!(lines.len(), 2, "{lines:?}");
    assert!(lines[0].starts_with("150 host(s): 0 queued, 150 running"), "{}", lines[0]);
    assert!(lines[1].starts_with("… 150 more running: "), "{}", lines[1]);
    assert!(lines.iter().all(|l| console::measure_text_width(l) <= 60));
}

#[test]
fn few_hosts_are_all_shown_and_finished_ones_leave_the_area() {
    let t0 = Instant::now();
    let mut s = State::new();
    let (e, _) = started(3);
    s.apply(&e, t0);
    s.apply(&phase("host-000", Phase::Connect), t0);
    s.apply(&phase("host-001", Phase::Connect), t0);
    s.apply(&phase("host-001", Phase::SelfCheck), t0);
    s.apply(
        &Event::HostFinished { report: report("host-000", Outcome::Deployed, Phase::Boot, None) },
        t0,
    );
    let lines = frame(&s, t0 + Duration::from_millis(1250), Screen { width: 100, height: 40 }, OFF);
    assert_eq!(
        lines,
        [
            "3 host(s): 1 queued, 1 running, 1 deployed, 0 up to date, 0 failed, 0 rolled back (1s)",
            "⠹ host-001 self-check     1s",
        ]
    );
}

#[test]
fn the_header_names_rare_outcomes_only_when_they_happen() {
    let c = Counts { hosts: 4, deployed: 1, unknown: 2, cancelled: 1, ..Counts::default() };
    assert_eq!(
        header(&c, None, OFF),
        "4 host(s): 0 queued, 0 running, 1 deployed, 0 up to date, 0 failed, 0 rolled back, 2 UNKNOWN STATE, 1 cancelled"
    );
}

#[test]
fn a_host_deployed_then_failed_is_counted_and_shown_as_such() {
    let t0 = Instant::now();
    let mut s = State::new();
    s.apply(&started(2).0, t0);
    let r = report("host-001", Outcome::DeployedThenFailed, Phase::Reboot, Some("rebooted, but"));
    let h = s.apply(&Event::HostFinished { report: r.clone() }, t0).unwrap().clone();
    assert_eq!(
        finished_lines(&h, &r, OFF)[0],
        "✘ host-001 DEPLOYED, THEN FAILED in reboot (4.2s): rebooted, but"
    );
    let c = s.counts();
    assert_eq!((c.deployed_then_failed, c.failed), (1, 0));
    assert!(header(&c, None, OFF).ends_with("0 rolled back, 1 deployed, then failed"));
}

#[test]
fn a_failing_host_leaves_its_result_and_last_twenty_lines() {
    let t0 = Instant::now();
    let mut s = State::new();
    let (e, _) = started(2);
    s.apply(&e, t0);
    s.apply(&phase("host-001", Phase::Activate), t0);
    for i in 1..=30 {
        s.apply(&output("host-001", &format!("activation line {i}")), t0);
    }
    let r = report(
        "host-001",
        Outcome::RolledBack,
        Phase::Confirm,
        Some("rolled back: demo-broken.service failed\nsee journalctl -u demo-broken"),
    );
    let h = s.apply(&Event::HostFinished { report: r.clone() }, t0).unwrap().clone();
    let lines = finished_lines(&h, &r, OFF);
    assert_eq!(
        lines[..3],
        [
            "↺ host-001 ROLLED BACK in confirm (4.2s): rolled back: demo-broken.service failed",
            "             see journalctl -u demo-broken",
            "  host-001: last 20 of 30 output line(s):",
        ]
    );
    let tail: Vec<String> = (11..=30).map(|i| format!("  │ activation line {i}")).collect();
    assert_eq!(lines[3..], tail[..]);

    let ok = report("host-000", Outcome::UpToDate, Phase::Build, None);
    let h0 = s.apply(&Event::HostFinished { report: ok.clone() }, t0).unwrap().clone();
    assert_eq!(finished_lines(&h0, &ok, OFF), ["✔ host-000 up to date (4.2s)"]);
    assert_eq!(h0.status, Status::Done(ok));
}

#[test]
fn colors_only_when_painting() {
    let t0 = Instant::now();
    let s = many(t0);
    let screen = Screen { width: 120, height: 10 };
    let plain = frame(&s, t0, screen, OFF).join("\n");
    assert!(!plain.contains('\x1b'), "{plain:?}");
    let colored = frame(&s, t0, screen, Paint::new(true)).join("\n");
    assert!(colored.contains("\x1b["), "{colored:?}");
    assert_eq!(console::strip_ansi_codes(&colored), plain);
}

/// The display drawn on a 100x12 terminal in memory, as a person sees it.
#[test]
fn drawn_on_a_terminal() {
    let term = InMemoryTerm::new(12, 100);
    let mut live = Live::new(Arc::new(term.clone()), OFF);
    let t0 = Instant::now();
    let (e, hosts) = started(3);
    live.apply(&e, t0);
    for h in &hosts {
        live.apply(&phase(h, Phase::Build), t0);
    }
    live.apply(&output("host-002", "building the system"), t0);
    live.draw(t0 + Duration::from_secs(2));
    let screen = term.contents();
    assert_eq!(
        screen,
        "deploy-flake: run r1: 3 host(s): host-000, host-001, host-002\n\
         3 host(s): 0 queued, 3 running, 0 deployed, 0 up to date, 0 failed, 0 rolled back (2s)\n\
         ⠋ host-000 build          2s\n\
         ⠋ host-001 build          2s\n\
         ⠋ host-002 build          2s  building the system"
    );

    live.apply(
        &Event::HostFinished { report: report("host-000", Outcome::Deployed, Phase::Boot, None) },
        t0,
    );
    live.apply(&phase("host-001", Phase::Activate), t0);
    live.draw(t0 + Duration::from_secs(3));
    let screen = term.contents();
    assert!(
        screen.contains("\n✔ host-000 deployed (4.2s)\n3 host(s): 0 queued, 2 running, 1 deployed"),
        "{screen}"
    );
    assert!(screen.contains("⠋ host-001 activate       3s"), "{screen}");
    assert!(!screen.contains("⠋ host-000"), "{screen}");

    let reports = vec![
        report("host-000", Outcome::Deployed, Phase::Boot, None),
        report("host-001", Outcome::Failed, Phase::Activate, Some("no")),
        report("host-002", Outcome::Deployed, Phase::Boot, None),
    ];
    for r in &reports[1..] {
        live.apply(&Event::HostFinished { report: r.clone() }, t0);
    }
    live.apply(&Event::RunFinished { reports, exit_code: 1, duration: Duration::from_secs(5) }, t0);
    live.finish();
    let screen = term.contents();
    assert!(!screen.contains('⠋'), "the live area is gone:\n{screen}");
    assert!(
        screen.contains(
            "✘ host-001 FAILED in activate (4.2s): no\n\
             ✔ host-002 deployed (4.2s)\n\
             3 host(s): 0 queued, 0 running, 2 deployed, 0 up to date, 1 failed, 0 rolled back (5s)\n\
             \n\
             HOST      RESULT    PHASE     TIME  SYSTEM\n"
        ),
        "{screen}"
    );
    assert!(screen.ends_with("2 of 3 host(s) succeeded in 5.0s; exit code 1"), "{screen}");
}

/// A terminal that takes `delay` for every redraw, and counts them.
#[derive(Debug)]
struct SlowTerm {
    inner: InMemoryTerm,
    delay: Duration,
    flushes: std::sync::atomic::AtomicUsize,
}

impl indicatif::TermLike for SlowTerm {
    fn width(&self) -> u16 {
        self.inner.width()
    }
    fn height(&self) -> u16 {
        self.inner.height()
    }
    fn move_cursor_up(&self, n: usize) -> std::io::Result<()> {
        self.inner.move_cursor_up(n)
    }
    fn move_cursor_down(&self, n: usize) -> std::io::Result<()> {
        self.inner.move_cursor_down(n)
    }
    fn move_cursor_right(&self, n: usize) -> std::io::Result<()> {
        self.inner.move_cursor_right(n)
    }
    fn move_cursor_left(&self, n: usize) -> std::io::Result<()> {
        self.inner.move_cursor_left(n)
    }
    fn write_line(&self, s: &str) -> std::io::Result<()> {
        self.inner.write_line(s)
    }
    fn write_str(&self, s: &str) -> std::io::Result<()> {
        self.inner.write_str(s)
    }
    fn clear_line(&self) -> std::io::Result<()> {
        self.inner.clear_line()
    }
    fn flush(&self) -> std::io::Result<()> {
        self.flushes.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        std::thread::sleep(self.delay);
        self.inner.flush()
    }
}

/// The output thread fed for a second (20 hosts, 200 events, one every
/// 5 ms) on a terminal taking `delay` per flush: the terminal, how long
/// sending took, how long the thread ran, the hosts.
fn a_second_of_events(delay: Duration) -> (Arc<SlowTerm>, Duration, Duration, Vec<String>) {
    let term = Arc::new(SlowTerm {
        inner: InMemoryTerm::new(80, 120),
        delay,
        flushes: Default::default(),
    });
    let live = Live::new(term.clone(), OFF);
    let (tx, rx) = std::sync::mpsc::channel();
    let writing = Instant::now();
    let writer = std::thread::spawn(move || super::run(rx, live));
    let (e, hosts) = started(20);
    tx.send(e).unwrap();
    let sending = Instant::now();
    let mut reports = Vec::new();
    for i in 0..200 {
        let h = &hosts[i % 20];
        if i < 180 {
            tx.send(output(h, &format!("line {i}"))).unwrap();
        } else {
            let r = report(h, Outcome::Deployed, Phase::Boot, None);
            reports.push(r.clone());
            tx.send(Event::HostFinished { report: r }).unwrap();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let duration = Duration::from_secs(1);
    tx.send(Event::RunFinished { reports, exit_code: 0, duration }).unwrap();
    let sent = sending.elapsed();
    drop(tx);
    writer.join().unwrap();
    (term, sent, writing.elapsed(), hosts)
}

/// At most one redraw per `REDRAW` (100 ms), whatever the events' pace.
#[test]
fn redraws_at_most_ten_times_a_second() {
    let (term, _, written, _) = a_second_of_events(Duration::ZERO);
    // One flush per redraw (the first at once), plus at most three at the
    // end (the last results, the area cleared, the summary).
    let flushes = term.flushes.load(std::sync::atomic::Ordering::SeqCst);
    let most = (written.as_millis() / super::REDRAW.as_millis()) as usize + 4;
    assert!((5..=most).contains(&flushes), "{flushes} redraws in {written:?} for 200 events");
}

/// A terminal that takes 150 ms per redraw: the output thread takes in
/// everything queued before each redraw, so it ends soon after the last
/// event was sent (a redraw per event would take 200 × 150 ms = 30 s), and
/// the end still shows every host's result and the summary.
#[test]
fn a_slow_terminal_costs_redraws_not_events() {
    let (term, sent, written, hosts) = a_second_of_events(Duration::from_millis(150));
    assert!(
        written < sent + Duration::from_secs(3),
        "the output thread fell behind the events: done {:?} after the last was sent",
        written.saturating_sub(sent)
    );
    let screen = term.inner.contents();
    for h in &hosts {
        assert!(screen.contains(&format!("✔ {h} deployed (4.2s)")), "{h}:\n{screen}");
    }
    assert!(screen.ends_with("20 of 20 host(s) succeeded in 1.0s; exit code 0"), "{screen}");
}

/// 120 hosts on a 120x40 terminal: the counts, the 37 longest at work and
/// a line for the rest fill it; once 100 have finished, their results
/// scroll by above and the 20 still at work all show below the counts.
#[test]
fn many_hosts_drawn_on_a_terminal_fit_its_height() {
    let term = InMemoryTerm::new(40, 120);
    let mut live = Live::new(Arc::new(term.clone()), OFF);
    let t0 = Instant::now();
    let (e, hosts) = started(120);
    live.apply(&e, t0);
    for (i, h) in hosts.iter().enumerate() {
        live.apply(&phase(h, Phase::Build), t0 + Duration::from_millis(i as u64));
    }
    live.draw(t0 + Duration::from_secs(1));
    let screen = term.contents();
    let rows: Vec<&str> = screen.lines().collect();
    assert_eq!(rows.len(), 40, "{screen}");
    assert!(rows[0].starts_with("deploy-flake: run r1: 120 host(s): host-000, host-001"));
    assert!(rows[1].starts_with("120 host(s): 0 queued, 120 running, "), "{}", rows[1]);
    for (i, row) in rows[2..39].iter().enumerate() {
        assert!(row.starts_with(&format!("⠋ host-{i:03} build ")), "{row}");
    }
    assert_eq!(rows[39], "… 83 more running: 83 build");

    for h in &hosts[..100] {
        let r = report(h, Outcome::Deployed, Phase::Boot, None);
        live.apply(&Event::HostFinished { report: r }, t0);
    }
    live.draw(t0 + Duration::from_millis(2200));
    let screen = term.contents();
    let rows: Vec<&str> = screen.lines().collect();
    assert_eq!(rows.len(), 40, "{screen}");
    assert_eq!(rows[18], "✔ host-099 deployed (4.2s)");
    assert!(rows[19].starts_with("120 host(s): 0 queued, 20 running, 100 deployed"), "{screen}");
    for (i, row) in rows[20..].iter().enumerate() {
        assert!(row.starts_with(&format!("⠹ host-{:03} build ", 100 + i)), "{row}");
    }
}

#[test]
fn a_staged_rollout_shows_its_waves_above_and_in_the_summary() {
    let term = InMemoryTerm::new(20, 100);
    let mut live = Live::new(Arc::new(term.clone()), OFF);
    let t0 = Instant::now();
    let hosts = vec!["a".to_string(), "b".to_string()];
    let waves = Some(vec![vec!["a".to_string()], vec!["b".to_string()]]);
    live.apply(&Event::RunStarted { run_id: "r1".into(), hosts: hosts.clone(), waves }, t0);
    let wave = |n, hosts: &[&str]| Event::WaveStarted {
        wave: n,
        waves: 2,
        canary: n == 1,
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
    };
    live.apply(&wave(1, &["a"]), t0);
    live.apply(&phase("a", Phase::Build), t0);
    let a_failed = report("a", Outcome::RolledBack, Phase::Activate, Some("no"));
    live.apply(&Event::HostFinished { report: a_failed.clone() }, t0);
    let halted = Event::RolloutHalted {
        wave: 1,
        failed: vec!["a".into()],
        max_failures: "0".into(),
        budget: 0,
        skipped: vec!["b".into()],
    };
    live.apply(&halted, t0);
    let b_skipped = report("b", Outcome::Skipped, Phase::Connect, Some("halted"));
    live.apply(&Event::HostFinished { report: b_skipped.clone() }, t0);
    live.draw(t0 + Duration::from_secs(1));
    let screen = term.contents();
    assert!(screen.contains("== wave 1/2 (canary): a\n"), "{screen}");
    assert!(screen.contains("== rollout halted after wave 1: 1 failed (a)"), "{screen}");
    assert!(screen.contains("- b skipped in connect"), "{screen}");
    let reports = vec![a_failed, b_skipped];
    live.apply(&Event::RunFinished { reports, exit_code: 1, duration: Duration::from_secs(2) }, t0);
    live.finish();
    let screen = term.contents();
    assert!(screen.contains("1 rolled back, 1 skipped (2s)"), "{screen}");
    assert!(screen.contains("HOST (WAVE)"), "{screen}");
    assert!(screen.contains("b (2)        skipped"), "{screen}");
}
