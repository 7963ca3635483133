//! Rolling reloads: batches, readiness, candidates that fail, reloads and scaling meeting.

use super::*;

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
    let s = build(&h.m, h.now, |_| (1, 0, None), Dropped::default());
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
    let s = build(&h.m, h.now, |_| (1, 0, None), Dropped::default());
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
    let s = build(&h.m, h.now, |_| (1, 0, None), Dropped::default());
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
fn a_candidate_that_cannot_start_stops_the_reload() {
    let mut h = Harness::start(config(2));
    let (t, _) = h.cmd(Cmd::Reload);
    let fx = h.step(Input::StartFailed {
        slot: 0,
        role: Role::Candidate,
        why: "cannot bind".into(),
        retry: false,
    });
    assert!(matches!(
        reload_reply(&fx, t),
        Some(Err(ServiceError::Reload { replaced: 0, .. }))
    ));
    assert_eq!(restart_delay(&fx), None, "the old worker still serves");
    assert_eq!(h.serving(), [(0, w(1)), (1, w(2))]);
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
fn readiness_by_pm2s_ready_message() {
    let mut cfg = config(1);
    cfg.readiness = Readiness::Message;
    let mut h = Harness::start(cfg);
    let (t, fx) = h.cmd(Cmd::Reload);
    h.forks_succeed(fx);
    // Online, notices and other messages do not count; `process.send('ready')` does.
    assert!(h.step(Input::Online(w(2))).is_empty());
    let listening = Input::Listening {
        worker: w(2),
        address: "127.0.0.1:80".into(),
    };
    assert!(h.step(listening).is_empty());
    let other = Input::Message {
        worker: w(2),
        ready: false,
    };
    assert!(disconnects(&h.step(other)).is_empty());
    let fx = h.step(Input::Message {
        worker: w(2),
        ready: true,
    });
    assert_eq!(disconnects(&fx), [w(1)]);
    assert!(matches!(reload_reply(&fx, t), Some(Ok(1))));
}

#[test]
fn by_default_a_candidate_is_ready_once_it_listens_where_its_slot_listened() {
    let mut cfg = config(1);
    cfg.readiness = Readiness::Listening;
    assert_eq!(ServiceConfig::default().readiness, Readiness::Listening);
    let mut h = Harness::start(cfg);
    let listening = |worker: u64, address: &str| Input::Listening {
        worker: w(worker),
        address: address.into(),
    };
    // The serving worker listens on two addresses.
    assert!(h.step(listening(1, "0.0.0.0:80")).is_empty());
    assert!(h.step(listening(1, "unix:/run/app.sock")).is_empty());
    let (t, fx) = h.cmd(Cmd::Reload);
    h.forks_succeed(fx);
    assert!(
        h.step(Input::Online(w(2))).is_empty(),
        "online is not enough"
    );
    assert!(h.step(listening(2, "0.0.0.0:80")).is_empty(), "one of two");
    let fx = h.step(listening(2, "unix:/run/app.sock"));
    assert_eq!(disconnects(&fx), [w(1)]);
    assert!(matches!(reload_reply(&fx, t), Some(Ok(1))));
    // A slot whose workers never listened: ready when online.
    let mut cfg = config(1);
    cfg.readiness = Readiness::Listening;
    let mut h = Harness::start(cfg);
    let (t, fx) = h.cmd(Cmd::Reload);
    h.forks_succeed(fx);
    let fx = h.step(Input::Online(w(2)));
    assert!(matches!(reload_reply(&fx, t), Some(Ok(1))));
}
