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
