//! Starting, stopping, the outcome and the status the machine reports.

use super::*;

#[test]
fn each_slot_gets_a_worker_that_serves_it() {
    let (_, fx) = Machine::new(config(3));
    assert_eq!(
        forks(&fx),
        [(0, Role::Active), (1, Role::Active), (2, Role::Active)]
    );
    let h = Harness::start(config(3));
    assert_eq!(h.serving(), [(0, w(1)), (1, w(2)), (2, w(3))]);
    assert_eq!(h.m.next_deadline(), None);
    let s = build(
        &h.m,
        h.now,
        |id| (id.0 as u32 + 100, 0, None),
        Dropped::default(),
    );
    assert_eq!(s.wanted, 3);
    assert_eq!(s.workers.len(), 3);
    assert!(s.workers.iter().all(|w| w.state == "running"));
    assert_eq!(s.workers[1].pid, 102);
}

#[test]
fn a_fast_stop_kills_every_worker_and_a_late_fork_too() {
    let mut h = Harness::start(config(2));
    assert_eq!(restart_delay(&h.exit(2, CODE_1)), Some(ms(100)));
    let fx = h.advance(ms(100));
    assert_eq!(forks(&fx), [(1, Role::Active)]);
    // The stop comes while the restart's fork is under way.
    let (ts, fx) = h.cmd(|t| Cmd::Stop {
        fast: true,
        reply: t,
    });
    assert_eq!(kills(&fx), [w(1)]);
    assert!(h.exit(1, CODE_1).is_empty(), "a fork is still under way");
    let fx = h.step(Input::Started {
        slot: 1,
        role: Role::Active,
        worker: w(3),
    });
    assert_eq!(kills(&fx), [w(3)]);
    let fx = h.exit(3, CODE_1);
    assert_eq!(finish(&fx), Some(Outcome::Stopped));
    assert!(stop_replied(&fx, ts));
}

#[test]
fn the_outcome_waits_for_every_slot_to_be_done_or_failed() {
    let mut cfg = config(2);
    cfg.restart.max_restarts = 0;
    let mut h = Harness::start(cfg);
    let fx = h.exit(1, CODE_0);
    assert_eq!(finish(&fx), None);
    // Slot 1 gives up at its first crash: one slot done, one failed is a crash loop.
    let fx = h.exit(2, CODE_1);
    assert!(matches!(finish(&fx), Some(Outcome::CrashLoop(_))));
    // Nothing happens after the end.
    assert!(h.step(Input::Tick).is_empty());
}

/// A library user's durations past the clock's end (`Duration::MAX` as "forever") are far
/// deadlines, never a panic: the readiness delay, the reload's ready timeout and the backoff.
#[test]
fn durations_past_the_clocks_end_are_far_deadlines() {
    let forever = Duration::MAX;
    let mut cfg = config(1);
    cfg.restart.backoff_min = forever;
    cfg.restart.backoff_max = forever;
    cfg.ready_timeout = forever;
    let mut h = Harness::start(cfg.clone());
    // The reload's candidate waits "forever" to be ready: no panic, and nothing times out.
    let (_, fx) = h.cmd(Cmd::Reload);
    h.forks_succeed(fx);
    let year = Duration::from_secs(86_400 * 365);
    assert!(h.m.next_deadline().is_some_and(|d| d > h.now + year));
    // A crash backs off "forever".
    let fx = h.exit(1, CODE_1);
    assert!(restart_delay(&fx).is_some());
    assert!(forks(&h.advance(year)).is_empty());

    // A readiness delay of "forever": the worker starts, and is never ready within a year.
    cfg.readiness = Readiness::Delay(forever);
    let (m, fx) = Machine::new(cfg);
    let mut h = Harness {
        m,
        now: Instant::now(),
        next_worker: 1,
        next_token: 0,
    };
    h.forks_succeed(fx);
    let (_, fx) = h.cmd(Cmd::Reload);
    h.forks_succeed(fx);
    let fx = h.advance(year);
    assert!(kills(&fx).is_empty() && disconnects(&fx).is_empty());
}
