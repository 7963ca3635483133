//! The state machine, driven without processes or sleeps: inputs in, effects out, the clock
//! moved by hand.

use std::time::Duration;

use tokio::time::Instant;

use super::state::{Cmd, Effect, Input, Machine, Reply, Role, SlotState};
use super::status::{build, Dropped};
use super::{
    Outcome, Readiness, Restart, RestartPolicy, ServiceConfig, ServiceError, ServiceEvent,
};
use crate::{ExitStatus, WorkerId};

const CODE_0: ExitStatus = ExitStatus {
    code: Some(0),
    signal: None,
};
const CODE_1: ExitStatus = ExitStatus {
    code: Some(1),
    signal: None,
};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn w(n: u64) -> WorkerId {
    WorkerId(n)
}

fn config(workers: usize) -> ServiceConfig {
    ServiceConfig {
        workers,
        restart: RestartPolicy {
            mode: Restart::OnFailure,
            backoff_min: ms(100),
            backoff_max: ms(1000),
            max_restarts: 3,
            window: Duration::from_secs(60),
        },
        readiness: Readiness::Online,
        ready_timeout: ms(5000),
        reload_batch: 1,
        ..ServiceConfig::default()
    }
}

/// A machine with a hand-driven clock and worker ids handed out in fork order.
struct Harness {
    m: Machine,
    now: Instant,
    next_worker: u64,
    next_token: u64,
}

impl Harness {
    /// A machine whose initial forks all succeeded: slot `i` is served by worker `i + 1`.
    fn start(config: ServiceConfig) -> Harness {
        let (m, fx) = Machine::new(config);
        let mut h = Harness {
            m,
            now: Instant::now(),
            next_worker: 1,
            next_token: 0,
        };
        let fx = h.forks_succeed(fx);
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Emit(ServiceEvent::Serving { .. }))));
        h
    }

    fn step(&mut self, input: Input) -> Vec<Effect> {
        self.m.handle(self.now, input)
    }

    /// Every `Fork` in `fx` succeeds (in order, ids counting up); `fx` and what followed.
    fn forks_succeed(&mut self, fx: Vec<Effect>) -> Vec<Effect> {
        let mut all = Vec::new();
        let mut queue: std::collections::VecDeque<Effect> = fx.into();
        while let Some(e) = queue.pop_front() {
            if let Effect::Fork { slot, role } = e {
                let worker = w(self.next_worker);
                self.next_worker += 1;
                queue.extend(self.step(Input::Started { slot, role, worker }));
            }
            all.push(e);
        }
        all
    }

    fn advance(&mut self, d: Duration) -> Vec<Effect> {
        self.now += d;
        self.step(Input::Tick)
    }

    fn cmd(&mut self, cmd: impl FnOnce(u64) -> Cmd) -> (u64, Vec<Effect>) {
        self.next_token += 1;
        let t = self.next_token;
        (t, self.step(Input::Cmd(cmd(t))))
    }

    fn exit(&mut self, worker: u64, status: ExitStatus) -> Vec<Effect> {
        self.step(Input::Exited {
            worker: w(worker),
            status,
        })
    }

    fn serving(&self) -> Vec<(usize, WorkerId)> {
        self.m.serving()
    }
}

fn forks(fx: &[Effect]) -> Vec<(usize, Role)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Fork { slot, role } => Some((*slot, *role)),
            _ => None,
        })
        .collect()
}

fn disconnects(fx: &[Effect]) -> Vec<WorkerId> {
    let mut v: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Disconnect(w) => Some(*w),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn kills(fx: &[Effect]) -> Vec<WorkerId> {
    let mut v: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Kill(w) => Some(*w),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn restart_delay(fx: &[Effect]) -> Option<Duration> {
    fx.iter().find_map(|e| match e {
        Effect::Emit(ServiceEvent::Restarting { delay, .. }) => Some(*delay),
        _ => None,
    })
}

fn finish(fx: &[Effect]) -> Option<Outcome> {
    fx.iter().find_map(|e| match e {
        Effect::Finish(o) => Some(o.clone()),
        _ => None,
    })
}

fn reload_reply(fx: &[Effect], token: u64) -> Option<&Result<usize, ServiceError>> {
    fx.iter().find_map(|e| match e {
        Effect::Reply(t, Reply::Reload(r)) if *t == token => Some(r),
        _ => None,
    })
}

fn stop_replied(fx: &[Effect], token: u64) -> bool {
    fx.iter()
        .any(|e| matches!(e, Effect::Reply(t, Reply::Stop) if *t == token))
}

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
    let s = build(&h.m, h.now, |id| (id.0 as u32 + 100, 0), Dropped::default());
    assert_eq!(s.wanted, 3);
    assert_eq!(s.workers.len(), 3);
    assert!(s.workers.iter().all(|w| w.state == "running"));
    assert_eq!(s.workers[1].pid, 102);
}

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
    assert_eq!(finish(&h.exit(2, CODE_0)), Some(Outcome::Exited(true)));
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
    assert_eq!(finish(&fx), Some(Outcome::Exited(false)));
}

#[test]
fn a_reload_in_batches_of_1_replaces_each_old_worker_once_its_successor_is_ready() {
    let mut h = Harness::start(config(3));
    let (t, fx) = h.cmd(Cmd::Reload);
    assert_eq!(forks(&fx), [(0, Role::Candidate)]);
    let fx = h.forks_succeed(fx);
    assert!(
        disconnects(&fx).is_empty(),
        "the old worker serves until w4 is ready"
    );
    for (slot, old, new) in [(0, 1, 4), (1, 2, 5), (2, 3, 6)] {
        assert_eq!(h.serving()[slot], (slot, w(old)));
        let fx = h.step(Input::Online(w(new)));
        assert_eq!(disconnects(&fx), [w(old)]);
        assert_eq!(h.serving()[slot], (slot, w(new)));
        if slot < 2 {
            assert_eq!(forks(&fx), [(slot + 1, Role::Candidate)]);
            assert_eq!(reload_reply(&fx, t).map(|r| r.is_ok()), None);
            h.forks_succeed(fx);
        } else {
            assert!(matches!(reload_reply(&fx, t), Some(Ok(3))));
            assert!(fx
                .iter()
                .any(|e| matches!(e, Effect::Emit(ServiceEvent::Reloaded { replaced: 3 }))));
        }
    }
    assert!(!h.m.reloading());
    assert_eq!(h.m.reloads, 1);
    // The old workers' exits are retirements, not crashes.
    for old in 1..=3 {
        assert!(h.exit(old, CODE_0).is_empty());
    }
}

#[test]
fn a_reload_in_batches_of_2_forks_two_candidates_at_a_time() {
    let mut cfg = config(3);
    cfg.reload_batch = 2;
    let mut h = Harness::start(cfg);
    let (t, fx) = h.cmd(Cmd::Reload);
    assert_eq!(forks(&fx), [(0, Role::Candidate), (1, Role::Candidate)]);
    h.forks_succeed(fx);
    let fx = h.step(Input::Online(w(5)));
    assert_eq!(disconnects(&fx), [w(2)]);
    assert!(
        forks(&fx).is_empty(),
        "the batch is not done: w4 is not ready"
    );
    let fx = h.step(Input::Online(w(4)));
    assert_eq!(disconnects(&fx), [w(1)]);
    assert_eq!(forks(&fx), [(2, Role::Candidate)]);
    let fx = h.forks_succeed(fx);
    assert!(reload_reply(&fx, t).is_none());
    let fx = h.step(Input::Online(w(6)));
    assert_eq!(disconnects(&fx), [w(3)]);
    assert!(matches!(reload_reply(&fx, t), Some(Ok(3))));
    assert_eq!(h.serving(), [(0, w(4)), (1, w(5)), (2, w(6))]);
}

#[test]
fn a_candidate_that_exits_before_it_is_ready_stops_the_reload_and_keeps_the_old_worker() {
    let mut cfg = config(2);
    cfg.readiness = Readiness::Notice;
    let mut h = Harness::start(cfg);
    let (t, fx) = h.cmd(Cmd::Reload);
    h.forks_succeed(fx);
    // Online is not enough with notice readiness.
    assert!(h.step(Input::Online(w(3))).is_empty());
    let fx = h.exit(3, CODE_1);
    match reload_reply(&fx, t) {
        Some(Err(ServiceError::Reload {
            replaced: 0,
            total: 2,
            why,
        })) => assert!(why.contains("before it was ready"), "{why}"),
        other => panic!("{other:?}"),
    }
    assert!(disconnects(&fx).is_empty() && kills(&fx).is_empty());
    assert_eq!(restart_delay(&fx), None, "a candidate's exit is no crash");
    assert_eq!(h.serving(), [(0, w(1)), (1, w(2))]);
    assert!(!h.m.reloading());
}

#[test]
fn a_candidate_that_misses_its_ready_deadline_is_killed_and_the_old_worker_kept() {
    let mut cfg = config(2);
    cfg.readiness = Readiness::Notice;
    let mut h = Harness::start(cfg);
    let (t, fx) = h.cmd(Cmd::Reload);
    h.forks_succeed(fx);
    assert_eq!(h.m.next_deadline(), Some(h.now + ms(5000)));
    assert!(h.advance(ms(4999)).is_empty());
    let fx = h.advance(ms(1));
    assert_eq!(kills(&fx), [w(3)]);
    match reload_reply(&fx, t) {
        Some(Err(ServiceError::Reload { why, .. })) => {
            assert!(why.contains("not ready within"), "{why}")
        }
        other => panic!("{other:?}"),
    }
    // A ready notice that comes too late changes nothing; nor does its exit.
    assert!(h.step(Input::Ready(w(3))).is_empty());
    assert!(h
        .exit(
            3,
            ExitStatus {
                code: None,
                signal: Some(9)
            }
        )
        .is_empty());
    assert_eq!(h.serving(), [(0, w(1)), (1, w(2))]);
    let s = build(&h.m, h.now, |_| (1, 0), Dropped::default());
    assert!(s.workers.iter().all(|w| w.state == "running"));
}

#[test]
fn a_reload_asked_during_a_reload_makes_one_more_pass_and_answers_both() {
    let mut h = Harness::start(config(2));
    let (t1, fx) = h.cmd(Cmd::Reload);
    h.forks_succeed(fx);
    let (t2, fx) = h.cmd(Cmd::Reload);
    assert!(fx.is_empty());
    let fx = h.step(Input::Online(w(3)));
    h.forks_succeed(fx); // w4 for slot 1
    let fx = h.step(Input::Online(w(4)));
    // The first pass is over, the second starts from slot 0 again.
    assert!(reload_reply(&fx, t1).is_none());
    assert_eq!(forks(&fx), [(0, Role::Candidate)]);
    assert_eq!(h.m.reloads, 1);
    h.forks_succeed(fx);
    let fx = h.step(Input::Online(w(5)));
    h.forks_succeed(fx);
    let fx = h.step(Input::Online(w(6)));
    assert!(matches!(reload_reply(&fx, t1), Some(Ok(2))));
    assert!(matches!(reload_reply(&fx, t2), Some(Ok(2))));
    assert_eq!(h.serving(), [(0, w(5)), (1, w(6))]);
    assert_eq!(h.m.reloads, 2);
}

#[test]
fn scaling_up_during_a_reload_adds_serving_workers_and_the_reload_goes_on() {
    let mut h = Harness::start(config(2));
    let (t, fx) = h.cmd(Cmd::Reload);
    h.forks_succeed(fx); // w3 for slot 0
    let (ts, fx) = h.cmd(|t| Cmd::Scale(4, t));
    assert_eq!(forks(&fx), [(2, Role::Active), (3, Role::Active)]);
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Reply(t, Reply::Scale(Ok(()))) if *t == ts)));
    h.forks_succeed(fx); // w4, w5
    assert_eq!(h.serving().len(), 4);
    let fx = h.step(Input::Online(w(3)));
    h.forks_succeed(fx); // w6 for slot 1
    let fx = h.step(Input::Online(w(6)));
    assert!(matches!(reload_reply(&fx, t), Some(Ok(2))));
    assert_eq!(h.serving(), [(0, w(3)), (1, w(6)), (2, w(4)), (3, w(5))]);
}

#[test]
fn scaling_down_during_a_reload_drops_the_removed_slots_candidates() {
    let mut cfg = config(3);
    cfg.reload_batch = 2;
    let mut h = Harness::start(cfg);
    let (t, fx) = h.cmd(Cmd::Reload);
    h.forks_succeed(fx); // w4 for slot 0, w5 for slot 1
    let (_, fx) = h.cmd(|t| Cmd::Scale(1, t));
    // Slots 2 and 1 go: their workers are disconnected, slot 1's candidate killed.
    assert_eq!(disconnects(&fx), [w(2), w(3)]);
    assert_eq!(kills(&fx), [w(5)]);
    assert!(forks(&fx).is_empty());
    let fx = h.step(Input::Online(w(4)));
    assert_eq!(disconnects(&fx), [w(1)]);
    assert!(matches!(reload_reply(&fx, t), Some(Ok(1))));
    assert_eq!(h.serving(), [(0, w(4))]);
    let s = build(&h.m, h.now, |_| (1, 0), Dropped::default());
    assert_eq!(s.wanted, 1);
    // The removed slots' exits restart nothing; scaling up again reuses them.
    for old in [2, 3, 5] {
        assert!(h.exit(old, CODE_1).is_empty());
    }
    let (_, fx) = h.cmd(|t| Cmd::Scale(2, t));
    assert_eq!(forks(&fx), [(1, Role::Active)]);
}

#[test]
fn a_graceful_stop_during_a_reload_answers_the_reload_and_disconnects_everyone() {
    let mut h = Harness::start(config(2));
    let (tr, fx) = h.cmd(Cmd::Reload);
    h.forks_succeed(fx); // w3
    let (ts, fx) = h.cmd(|t| Cmd::Stop {
        fast: false,
        reply: t,
    });
    assert!(matches!(
        reload_reply(&fx, tr),
        Some(Err(ServiceError::Stopping))
    ));
    assert_eq!(disconnects(&fx), [w(1), w(2), w(3)]);
    assert!(kills(&fx).is_empty());
    let s = build(&h.m, h.now, |_| (1, 0), Dropped::default());
    assert!(s.workers.iter().all(|w| w.state == "stopping"));
    // Commands during the stop are refused.
    let (t, fx) = h.cmd(Cmd::Reload);
    assert!(matches!(
        reload_reply(&fx, t),
        Some(Err(ServiceError::Stopping))
    ));
    // A second, fast stop kills whoever is left.
    let (ts2, fx) = h.cmd(|t| Cmd::Stop {
        fast: true,
        reply: t,
    });
    assert_eq!(kills(&fx), [w(1), w(2), w(3)]);
    // Exits are not crashes; the last one ends the service and answers both stops.
    assert!(h.exit(1, CODE_1).is_empty());
    assert!(h.exit(3, CODE_0).is_empty());
    let fx = h.exit(2, CODE_0);
    assert_eq!(finish(&fx), Some(Outcome::Stopped));
    assert!(stop_replied(&fx, ts) && stop_replied(&fx, ts2));
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
fn a_failed_fork_counts_as_a_crash() {
    let mut h = Harness::start(config(1));
    assert_eq!(restart_delay(&h.exit(1, CODE_1)), Some(ms(100)));
    let mut delay = ms(100);
    for want in [200, 400] {
        let fx = h.advance(delay);
        assert_eq!(forks(&fx), [(0, Role::Active)]);
        let fx = h.step(Input::StartFailed {
            slot: 0,
            role: Role::Active,
            why: "no such program".into(),
        });
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
    let fx = h.step(Input::StartFailed {
        slot: 0,
        role: Role::Active,
        why: "no such program".into(),
    });
    match finish(&fx) {
        Some(Outcome::CrashLoop(why)) => assert!(why.contains("no such program"), "{why}"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_candidate_that_cannot_start_stops_the_reload() {
    let mut h = Harness::start(config(2));
    let (t, _) = h.cmd(Cmd::Reload);
    let fx = h.step(Input::StartFailed {
        slot: 0,
        role: Role::Candidate,
        why: "cannot bind".into(),
    });
    assert!(matches!(
        reload_reply(&fx, t),
        Some(Err(ServiceError::Reload { replaced: 0, .. }))
    ));
    assert_eq!(restart_delay(&fx), None, "the old worker still serves");
    assert_eq!(h.serving(), [(0, w(1)), (1, w(2))]);
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

#[test]
fn readiness_by_delay_and_by_port() {
    let mut cfg = config(1);
    cfg.readiness = Readiness::Delay(ms(300));
    let mut h = Harness::start(cfg);
    let (t, fx) = h.cmd(Cmd::Reload);
    h.forks_succeed(fx);
    assert_eq!(h.m.next_deadline(), Some(h.now + ms(300)));
    assert!(h.step(Input::Online(w(2))).is_empty());
    let fx = h.advance(ms(300));
    assert_eq!(disconnects(&fx), [w(1)]);
    assert!(matches!(reload_reply(&fx, t), Some(Ok(1))));

    let addr = "127.0.0.1:9".parse().unwrap();
    let mut cfg = config(1);
    cfg.readiness = Readiness::Port(addr);
    let mut h = Harness::start(cfg);
    let (t, fx) = h.cmd(Cmd::Reload);
    let fx = h.forks_succeed(fx);
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Probe(w2, a) if *w2 == w(2) && *a == addr)));
    let fx = h.step(Input::Probed(w(2)));
    assert!(matches!(reload_reply(&fx, t), Some(Ok(1))));
}

#[test]
fn a_slot_that_gave_up_gets_a_fresh_start_from_a_reload() {
    let mut cfg = config(2);
    cfg.restart.max_restarts = 0;
    let mut h = Harness::start(cfg);
    let fx = h.exit(1, CODE_1);
    assert!(fx
        .iter()
        .any(|e| matches!(e, Effect::Emit(ServiceEvent::CrashLoop { slot: 0, .. }))));
    let (t, fx) = h.cmd(Cmd::Reload);
    h.forks_succeed(fx); // w3 for slot 0
    let fx = h.step(Input::Online(w(3)));
    assert!(disconnects(&fx).is_empty(), "slot 0 had no worker");
    h.forks_succeed(fx); // w4 for slot 1
    let fx = h.step(Input::Online(w(4)));
    assert!(matches!(reload_reply(&fx, t), Some(Ok(2))));
    assert_eq!(h.serving(), [(0, w(3)), (1, w(4))]);
    // Its crash count starts over.
    let fx = h.exit(3, CODE_1);
    let why = fx.iter().find_map(|e| match e {
        Effect::Emit(ServiceEvent::CrashLoop { why, .. }) => Some(why.clone()),
        _ => None,
    });
    assert!(why.is_some_and(|why| why.contains(": 1 crashes")));
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
