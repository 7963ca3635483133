//! The memory limit: sampling on the machine's clock, a worker replaced only once it stays
//! over the limit for the window, the replacement a reload's (new worker ready first), and
//! its meeting with a user's reload.

use super::*;

fn limited(workers: usize) -> ServiceConfig {
    ServiceConfig {
        max_memory: Some(100 << 20),
        memory_window: ms(3000),
        memory_interval: ms(1000),
        ..config(workers)
    }
}

/// The workers the machine asks to sample, if it asks.
fn sampled(fx: &[Effect]) -> Option<Vec<WorkerId>> {
    fx.iter().find_map(|e| match e {
        Effect::SampleMemory(ws) => Some(ws.clone()),
        _ => None,
    })
}

/// One sample round: the tick that asks, then the figures.
fn round(h: &mut Harness, rss: &[(u64, u64)]) -> Vec<Effect> {
    let fx = h.advance(ms(1000));
    let asked = sampled(&fx).expect("a sample is due every second");
    assert_eq!(asked.len(), rss.len(), "{asked:?}");
    h.step(Input::Memory(
        rss.iter().map(|(id, b)| (w(*id), *b)).collect(),
    ))
}

#[test]
fn without_a_limit_nothing_is_sampled() {
    let mut h = Harness::start(config(2));
    assert!(sampled(&h.advance(ms(5000))).is_none());
    assert!(h.m.next_deadline().is_none());
}

#[test]
fn a_worker_over_the_limit_for_the_window_is_replaced_the_way_a_reload_replaces_it() {
    let mut h = Harness::start(limited(2));
    let over = 150 << 20;
    // First sample over the limit starts the window; no sample while one is out.
    assert!(forks(&round(&mut h, &[(1, over), (2, 10 << 20)])).is_empty());
    let fx = h.advance(ms(500));
    assert!(sampled(&fx).is_none());
    assert!(forks(&round(&mut h, &[(1, over), (2, 10 << 20)])).is_empty());
    assert!(forks(&round(&mut h, &[(1, over), (2, 10 << 20)])).is_empty());
    // 3 s over, in every sample: slot 0 gets a candidate; w1 serves until it is ready.
    let fx = round(&mut h, &[(1, over), (2, 10 << 20)]);
    assert_eq!(forks(&fx), [(0, Role::Candidate)]);
    let fx = h.forks_succeed(fx);
    assert!(disconnects(&fx).is_empty());
    assert_eq!(h.serving()[0], (0, w(1)));
    let fx = h.step(Input::Online(w(3)));
    assert_eq!(disconnects(&fx), [w(1)]);
    assert_eq!(h.serving(), [(0, w(3)), (1, w(2))]);
    assert_eq!(h.m.slots[0].memory_replaced, 1);
    // Not a reload anyone asked for, nor a crash.
    assert_eq!(h.m.reloads, 0);
    assert!(!fx
        .iter()
        .any(|e| matches!(e, Effect::Emit(ServiceEvent::Reloaded { .. }))));
    assert!(h.exit(1, CODE_0).is_empty());
    assert_eq!(h.m.slots[0].restarts, 0);
}

#[test]
fn one_sample_under_the_limit_starts_the_window_again() {
    let mut h = Harness::start(limited(1));
    let over = 150 << 20;
    for rss in [over, over, 50 << 20, over, over, over] {
        assert!(forks(&round(&mut h, &[(1, rss)])).is_empty(), "{rss}");
    }
    assert_eq!(forks(&round(&mut h, &[(1, over)])), [(0, Role::Candidate)]);
}

#[test]
fn a_slot_a_reload_will_replace_is_not_replaced_twice() {
    let mut h = Harness::start(limited(2));
    let over = 150 << 20;
    for _ in 0..3 {
        round(&mut h, &[(1, over), (2, over)]);
    }
    // Both over for 3 s: slot 0 starts a replacement, slot 1 is queued behind it.
    let fx = round(&mut h, &[(1, over), (2, over)]);
    assert_eq!(forks(&fx), [(0, Role::Candidate)]);
    h.forks_succeed(fx);
    // A user's reload meanwhile: one more pass after this one.
    let (t, fx) = h.cmd(Cmd::Reload);
    assert!(forks(&fx).is_empty());
    let fx = h.step(Input::Online(w(3)));
    assert_eq!(forks(&fx), [(1, Role::Candidate)]);
    let fx = h.forks_succeed(fx);
    // w2 still over while its candidate starts: not queued again.
    let fx2 = h.advance(ms(1000));
    if sampled(&fx2).is_some() {
        let more = h.step(Input::Memory(vec![(w(2), over)]));
        assert!(forks(&more).is_empty());
    }
    assert!(reload_reply(&fx, t).is_none());
    let fx = h.step(Input::Online(w(4)));
    // Then the user's pass over both slots.
    assert_eq!(forks(&fx), [(0, Role::Candidate)]);
    h.forks_succeed(fx);
    let fx = h.step(Input::Online(w(5)));
    let fx = h.forks_succeed(fx);
    assert!(reload_reply(&fx, t).is_none());
    let fx = h.step(Input::Online(w(6)));
    assert!(matches!(reload_reply(&fx, t), Some(Ok(2))));
    assert_eq!(h.m.reloads, 1);
    assert_eq!(
        (h.m.slots[0].memory_replaced, h.m.slots[1].memory_replaced),
        (1, 1)
    );
}

#[test]
fn a_failed_replacement_keeps_the_old_worker_and_a_users_reload_still_runs() {
    let mut h = Harness::start(limited(1));
    let over = 150 << 20;
    for _ in 0..3 {
        round(&mut h, &[(1, over)]);
    }
    let fx = round(&mut h, &[(1, over)]);
    assert_eq!(forks(&fx), [(0, Role::Candidate)]);
    h.forks_succeed(fx);
    let (t, _) = h.cmd(Cmd::Reload);
    // The replacement dies before it is ready: w1 serves on, and the user's pass begins.
    let fx = h.exit(2, CODE_1);
    assert!(
        reload_reply(&fx, t).is_none(),
        "the user's reload did not fail"
    );
    assert_eq!(h.serving(), [(0, w(1))]);
    assert_eq!(forks(&fx), [(0, Role::Candidate)]);
    let fx = h.forks_succeed(fx);
    assert!(!fx
        .iter()
        .any(|e| matches!(e, Effect::Emit(ServiceEvent::ReloadFailed { .. }))));
    let fx = h.step(Input::Online(w(3)));
    assert!(matches!(reload_reply(&fx, t), Some(Ok(1))));
}

#[test]
fn a_slot_replaced_again_and_again_waits_longer_each_time() {
    let mut h = Harness::start(limited(1));
    let over = 150 << 20;
    let mut serving = 1;
    let mut waited = Vec::new();
    for _ in 0..4 {
        let mut rounds = 0;
        loop {
            rounds += 1;
            let fx = round(&mut h, &[(serving, over)]);
            if !forks(&fx).is_empty() {
                let fx = h.forks_succeed(fx);
                let new = h.next_worker - 1;
                drop(fx);
                h.step(Input::Online(w(new)));
                h.exit(serving, CODE_0);
                serving = new;
                break;
            }
            assert!(rounds < 1000);
        }
        waited.push(rounds);
    }
    // 3 s, then 6, 12, 24: a program that needs more than the limit is not replaced in a loop.
    assert_eq!(waited, [4, 7, 13, 25]);
    assert_eq!(h.m.slots[0].memory_replaced, 4);
}

#[test]
fn a_sample_that_never_comes_back_is_asked_for_again() {
    let mut h = Harness::start(limited(1));
    assert!(sampled(&h.advance(ms(1000))).is_some());
    // Lost: no Input::Memory. None is asked for while it may still come...
    assert!(sampled(&h.advance(ms(5000))).is_none());
    // ...and another once it is past its time.
    assert!(sampled(&h.advance(ms(6000))).is_some());
}
