//! Restarts: backoff, crash loops, exit codes under each restart mode, failed starts (the
//! program's fault: a crash; a shortage of resources: retried, never a crash).

use super::*;
use crate::service::Exits;

#[test]
fn crashes_back_off_doubling_then_give_up_in_a_crash_loop() {
    let mut h = Harness::start(config(1));
    let mut worker = 1;
    for (i, want) in [100, 200, 400].into_iter().enumerate() {
        let fx = h.exit(worker, CODE_1);
        assert_eq!(restart_delay(&fx), Some(ms(want)), "crash {}", i + 1);
        assert_eq!(h.m.next_deadline(), Some(h.now + ms(want)));
        assert!(h.serving().is_empty());
        // Not a moment early.
        assert!(forks(&h.advance(ms(want - 1))).is_empty());
        let fx = h.advance(ms(1));
        assert_eq!(forks(&fx), [(0, Role::Active)]);
        h.forks_succeed(fx);
        worker += 1;
        assert_eq!(h.serving(), [(0, w(worker))]);
        assert_eq!(h.m.slots[0].restarts, i as u32 + 1);
    }
    // The fourth crash within the window is one more than max_restarts (3).
    let fx = h.exit(worker, CODE_1);
    let why = fx
        .iter()
        .find_map(|e| match e {
            Effect::Emit(ServiceEvent::CrashLoop { slot: 0, why }) => Some(why.clone()),
            _ => None,
        })
        .expect("a crash loop");
    assert!(
        why.contains("crash loop") && why.contains("exit code 1"),
        "{why}"
    );
    assert_eq!(finish(&fx), Some(Outcome::CrashLoop(why)));
    assert_eq!(h.m.next_deadline(), None);
}

#[test]
fn crashes_older_than_the_window_are_forgotten() {
    let mut cfg = config(1);
    cfg.restart.window = ms(1000);
    let mut h = Harness::start(cfg);
    assert_eq!(restart_delay(&h.exit(1, CODE_1)), Some(ms(100)));
    let fx = h.advance(ms(100));
    h.forks_succeed(fx);
    assert_eq!(restart_delay(&h.exit(2, CODE_1)), Some(ms(200)));
    let fx = h.advance(ms(2000));
    h.forks_succeed(fx);
    assert_eq!(restart_delay(&h.exit(3, CODE_1)), Some(ms(100)));
}

#[test]
fn exit_0_ends_the_slot_under_on_failure() {
    let mut h = Harness::start(config(2));
    let fx = h.exit(1, CODE_0);
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Emit(ServiceEvent::Done { slot: 0, .. }))));
    assert_eq!(restart_delay(&fx), None);
    assert_eq!(finish(&fx), None, "slot 1 still runs");
    assert_eq!(h.m.slots[0].state, SlotState::Done { success: true });
    assert_eq!(
        finish(&h.exit(2, CODE_0)),
        Some(Outcome::Exited(Exits::AllSucceeded))
    );
}

#[test]
fn exit_0_is_restarted_under_always() {
    let mut cfg = config(1);
    cfg.restart.mode = Restart::Always;
    let mut h = Harness::start(cfg);
    let fx = h.exit(1, CODE_0);
    assert_eq!(restart_delay(&fx), Some(ms(100)));
    assert_eq!(finish(&fx), None);
    let fx = h.advance(ms(100));
    assert_eq!(forks(&fx), [(0, Role::Active)]);
}

#[test]
fn nothing_is_restarted_under_never() {
    let mut cfg = config(2);
    cfg.restart.mode = Restart::Never;
    let mut h = Harness::start(cfg);
    let fx = h.exit(1, CODE_0);
    assert_eq!(restart_delay(&fx), None);
    let fx = h.exit(2, CODE_1);
    assert_eq!(restart_delay(&fx), None);
    assert_eq!(h.m.slots[1].state, SlotState::Done { success: false });
    assert_eq!(finish(&fx), Some(Outcome::Exited(Exits::SomeFailed)));
}

/// A start that fails through the program's fault (`retry: false`: no such program, say).
fn program_fault(slot: usize) -> Input {
    Input::StartFailed {
        slot,
        role: Role::Active,
        why: "no such program".into(),
        retry: false,
    }
}

/// A start that fails for want of resources (`retry: true`: EMFILE, say).
fn shortage(slot: usize) -> Input {
    Input::StartFailed {
        slot,
        role: Role::Active,
        why: "Too many open files (os error 24)".into(),
        retry: true,
    }
}

#[test]
fn a_start_failed_through_the_program_s_fault_counts_as_a_crash() {
    let mut h = Harness::start(config(1));
    assert_eq!(restart_delay(&h.exit(1, CODE_1)), Some(ms(100)));
    let mut delay = ms(100);
    for want in [200, 400] {
        let fx = h.advance(delay);
        assert_eq!(forks(&fx), [(0, Role::Active)]);
        let fx = h.step(program_fault(0));
        assert!(fx.iter().any(|e| matches!(
            e,
            Effect::Emit(ServiceEvent::Restarting {
                worker: None,
                status: None,
                ..
            })
        )));
        delay = restart_delay(&fx).unwrap();
        assert_eq!(delay, ms(want));
    }
    h.advance(delay);
    let fx = h.step(program_fault(0));
    match finish(&fx) {
        Some(Outcome::CrashLoop(why)) => assert!(why.contains("no such program"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_start_failed_for_want_of_resources_is_retried_with_backoff_and_never_a_crash() {
    let mut cfg = config(2);
    cfg.restart.backoff_min = ms(0); // retries still wait: never a tight loop
    let mut h = Harness::start(cfg);
    assert_eq!(restart_delay(&h.exit(1, CODE_1)), Some(ms(0)));
    let fx = h.advance(ms(0));
    assert_eq!(forks(&fx), [(0, Role::Active)]);
    // Far more shortages than max_restarts (3): each retried, from 10 ms doubling to 1 s.
    let mut delays = Vec::new();
    for _ in 0..12 {
        let fx = h.step(shortage(0));
        assert_eq!(finish(&fx), None);
        assert!(!fx
            .iter()
            .any(|e| matches!(e, Effect::Emit(ServiceEvent::CrashLoop { .. }))));
        let delay = restart_delay(&fx).expect("a retry");
        assert_eq!(h.m.next_deadline(), Some(h.now + delay));
        assert!(forks(&h.advance(delay - ms(1))).is_empty(), "not early");
        let fx = h.advance(ms(1));
        assert_eq!(forks(&fx), [(0, Role::Active)], "retried");
        delays.push(delay);
    }
    let want: Vec<_> = [10, 20, 40, 80, 160, 320, 640, 1000, 1000, 1000, 1000, 1000]
        .into_iter()
        .map(ms)
        .collect();
    assert_eq!(delays, want);
    assert!(!matches!(h.m.slots[0].state, SlotState::Failed(_)));
    // Resources are back: the slot is served, with one restart (the crash), not thirteen.
    let fx = h.step(Input::Started {
        slot: 0,
        role: Role::Active,
        worker: w(3),
    });
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Emit(ServiceEvent::Serving { slot: 0, .. }))));
    assert_eq!(h.serving(), [(0, w(3)), (1, w(2))]);
    assert_eq!(h.m.slots[0].restarts, 1);
    // The backoff starts over after a success.
    assert_eq!(restart_delay(&h.exit(3, CODE_1)), Some(ms(0)));
    h.advance(ms(0));
    assert_eq!(restart_delay(&h.step(shortage(0))), Some(ms(10)));
}

#[test]
fn a_program_fault_after_shortages_still_counts_as_a_crash() {
    let mut h = Harness::start(config(1));
    h.exit(1, CODE_1);
    h.advance(ms(100));
    assert_eq!(restart_delay(&h.step(shortage(0))), Some(ms(100)));
    h.advance(ms(100));
    // Two crashes now (the exit and this one): backoff 200 ms.
    assert_eq!(restart_delay(&h.step(program_fault(0))), Some(ms(200)));
}

#[test]
fn a_candidate_ready_after_its_old_worker_crashed_takes_over_and_the_late_restart_goes() {
    let mut cfg = config(1);
    cfg.readiness = Readiness::Notice;
    let mut h = Harness::start(cfg);
    let (t, fx) = h.cmd(Cmd::Reload);
    h.forks_succeed(fx); // w2, the candidate
    assert_eq!(restart_delay(&h.exit(1, CODE_1)), Some(ms(100)));
    // The restart's fork is under way when the candidate becomes ready.
    let fx = h.advance(ms(100));
    assert_eq!(forks(&fx), [(0, Role::Active)]);
    let fx = h.step(Input::Ready(w(2)));
    assert!(
        disconnects(&fx).is_empty(),
        "the old worker is gone already"
    );
    assert!(matches!(reload_reply(&fx, t), Some(Ok(1))));
    assert_eq!(h.serving(), [(0, w(2))]);
    // The restarted worker arrives to a served slot: it is sent away.
    let fx = h.step(Input::Started {
        slot: 0,
        role: Role::Active,
        worker: w(3),
    });
    assert_eq!(disconnects(&fx), [w(3)]);
    assert!(h.exit(3, CODE_0).is_empty());
    assert_eq!(h.serving(), [(0, w(2))]);
}

#[test]
fn the_default_restarts_every_exit_and_the_status_shows_the_last_one() {
    let mut cfg = config(1);
    cfg.restart.mode = RestartPolicy::default().mode;
    assert_eq!(cfg.restart.mode, Restart::Always, "PM2's default");
    let mut h = Harness::start(cfg);
    let fx = h.exit(1, CODE_0);
    assert_eq!(restart_delay(&fx), Some(ms(100)), "exit 0 is restarted too");
    let fx = h.advance(ms(100));
    h.forks_succeed(fx);
    let s = build(&h.m, h.now, |id| (id.0 as u32, 0, None), Dropped::default());
    assert_eq!(s.workers.len(), 1);
    assert_eq!(s.workers[0].restarts, 1);
    assert_eq!(s.workers[0].last_exit.as_deref(), Some("exit code 0"));
}
