//! A retiring Node worker's rescue as a phase of its life, on a hand-moved clock: the shell's
//! answers are given by hand.

use std::time::Duration;

use super::retire::{Outcome, AFTER_EXIT, ANSWER_LIMIT, JOB_LIMIT, LOOK_EVERY};
use super::testkit::*;
use super::*;
use crate::node::rescue::plan::{Verdict, PAUSE_LIMIT};

/// A Node cluster worker asked to stop, with sockets herd shares: it waits for its
/// connections sent to be answered for.
fn retiring(rescue: Rescue) -> W {
    let mut r = rules(StopWith::Signal(Signal::TERM), true);
    r.rescue = rescue;
    let (mut w, _) = W::new(r);
    assert_eq!(w.on(Input::Stop), ["AskNodeDisconnect"]);
    assert_eq!(w.on(Input::Retiring), ["Rescue(AwaitAnswered)"]);
    w
}

/// [`retiring`], its connections answered for and `held` of them taken.
fn holding(rescue: Rescue, held: usize) -> W {
    let mut w = retiring(rescue);
    assert_eq!(w.on(Input::Rescue(Outcome::Answered)), ["Rescue(Grab)"]);
    let grabbed = Outcome::Grabbed {
        held,
        can_end: true,
    };
    assert_eq!(w.on(Input::Rescue(grabbed)), ["Rescue(SendDisconnect)"]);
    w
}

/// Looks until the connections are paused (half the grace period after the copies).
fn until_paused(w: &mut W, held: usize) {
    let paused_at = w.now + GRACE / 2;
    loop {
        assert_eq!(w.in_next(), Some(LOOK_EVERY));
        assert_eq!(w.after(LOOK_EVERY), ["Rescue(Look)"]);
        let fx = w.on(Input::Rescue(Outcome::Looked { held }));
        if w.now < paused_at {
            assert!(
                fx.is_empty(),
                "nothing paused before half the grace: {fx:?}"
            );
            continue;
        }
        assert_eq!(fx, ["Rescue(Pause)", "Rescue(Peek)"]);
        return;
    }
}

fn peeked(w: &mut W, all: bool) -> Vec<String> {
    w.on(Input::Rescue(Outcome::Peeked { all, stuck: false }))
}

#[test]
fn a_rescue_holds_idle_connections_then_ends_the_worker_and_hands_them_on() {
    let mut w = holding(Rescue::End, 2);
    until_paused(&mut w, 2);
    assert!(peeked(&mut w, true).is_empty(), "one answered look");
    assert_eq!(w.after(LOOK_EVERY), ["Rescue(Look)"]);
    assert_eq!(
        w.on(Input::Rescue(Outcome::Looked { held: 2 })),
        ["Rescue(Peek)"]
    );
    assert_eq!(peeked(&mut w, true), ["Rescue(TryEnd)"], "two in a row");
    let ended = Outcome::Tried {
        verdict: Verdict::Ended,
        stuck: false,
    };
    assert!(w.on(Input::Rescue(ended)).is_empty());
    // Its SIGKILL is reaped: what herd holds goes on to the other workers.
    let fx = w.on(Input::Exited(killed()));
    assert_eq!(fx, ["Rescue(HandOn)", "KillLeftovers"]);
    assert_eq!(w.in_next(), Some(DRAIN_AFTER_EXIT), "no more looks");
}

#[test]
fn connections_sent_and_never_answered_for_wait_at_most_the_answer_limit() {
    let mut w = retiring(Rescue::End);
    assert_eq!(w.in_next(), Some(ANSWER_LIMIT));
    assert!(w.after(ANSWER_LIMIT - Duration::from_millis(1)).is_empty());
    assert_eq!(w.after(Duration::from_millis(1)), ["Rescue(Grab)"]);
    assert!(
        w.on(Input::Rescue(Outcome::Answered)).is_empty(),
        "a late answer changes nothing"
    );
}

#[test]
fn off_sends_the_disconnect_once_answered_and_takes_nothing() {
    let mut w = retiring(Rescue::Off);
    assert_eq!(
        w.on(Input::Rescue(Outcome::Answered)),
        ["Rescue(SendDisconnect)"]
    );
    assert_eq!(w.in_next(), Some(GRACE), "only the grace period is left");
}

#[test]
fn hold_never_pauses_or_ends_the_worker() {
    let mut w = holding(Rescue::Hold, 3);
    // Every look to its grace period's end (past half of it, where End pauses).
    for _ in 1..(GRACE.as_millis() / LOOK_EVERY.as_millis()) {
        assert_eq!(w.after(LOOK_EVERY), ["Rescue(Look)"]);
        assert!(w.on(Input::Rescue(Outcome::Looked { held: 3 })).is_empty());
    }
}

#[test]
fn a_worker_herd_cannot_signal_is_held_but_never_paused() {
    let mut w = retiring(Rescue::End);
    w.on(Input::Rescue(Outcome::Answered));
    let grabbed = Outcome::Grabbed {
        held: 1,
        can_end: false,
    };
    assert_eq!(w.on(Input::Rescue(grabbed)), ["Rescue(SendDisconnect)"]);
    w.now += GRACE / 2;
    assert_eq!(w.on(Input::Tick), ["Rescue(Look)"]);
    assert!(w.on(Input::Rescue(Outcome::Looked { held: 1 })).is_empty());
}

#[test]
fn unanswered_past_the_pause_limit_the_marks_go_down_for_good() {
    let mut w = holding(Rescue::End, 1);
    until_paused(&mut w, 1);
    let paused = w.now;
    assert!(peeked(&mut w, false).is_empty());
    loop {
        assert_eq!(w.after(LOOK_EVERY), ["Rescue(Look)"]);
        assert_eq!(
            w.on(Input::Rescue(Outcome::Looked { held: 1 })),
            ["Rescue(Peek)"]
        );
        let fx = peeked(&mut w, false);
        if w.now - paused < PAUSE_LIMIT {
            assert!(fx.is_empty());
            continue;
        }
        assert_eq!(fx, ["Rescue(Resume)"]);
        break;
    }
    assert_eq!(w.after(LOOK_EVERY), ["Rescue(Look)"]);
    assert!(
        w.on(Input::Rescue(Outcome::Looked { held: 1 })).is_empty(),
        "never paused again"
    );
}

#[test]
fn a_stuck_connection_or_a_worker_that_cannot_be_ended_gives_up_at_once() {
    let mut w = holding(Rescue::End, 1);
    until_paused(&mut w, 1);
    let stuck = Outcome::Peeked {
        all: false,
        stuck: true,
    };
    assert_eq!(w.on(Input::Rescue(stuck)), ["Rescue(Resume)"]);

    let mut w = holding(Rescue::End, 1);
    until_paused(&mut w, 1);
    peeked(&mut w, true);
    w.after(LOOK_EVERY);
    w.on(Input::Rescue(Outcome::Looked { held: 1 }));
    assert_eq!(peeked(&mut w, true), ["Rescue(TryEnd)"]);
    let never = Outcome::Tried {
        verdict: Verdict::Never,
        stuck: false,
    };
    assert_eq!(w.on(Input::Rescue(never)), ["Rescue(Resume)"]);
}

#[test]
fn a_job_out_when_the_worker_exits_is_waited_for_and_its_connections_handed_on() {
    let mut w = holding(Rescue::End, 2);
    assert_eq!(w.after(LOOK_EVERY), ["Rescue(Look)"]);
    assert_eq!(
        w.on(Input::Exited(code(0))),
        ["Rescue(HandOn)", "KillLeftovers"]
    );
    assert_eq!(
        w.on(Input::ChannelEnded(None)).last().unwrap(),
        "Disconnected"
    );
    assert_eq!(
        w.on(Input::OutputEnded),
        ["DropOutput"],
        "not done: the look is out"
    );
    assert!(!w.life.done());
    assert_eq!(
        w.on(Input::Rescue(Outcome::Looked { held: 2 })),
        ["Rescue(HandOn)", "exited exit code 0"]
    );
    assert!(w.life.done());
}

#[test]
fn nothing_held_ends_the_rescue() {
    let w = holding(Rescue::End, 0);
    assert_eq!(w.in_next(), Some(GRACE), "no looks");
    let mut w = holding(Rescue::End, 2);
    w.after(LOOK_EVERY);
    assert!(w.on(Input::Rescue(Outcome::Looked { held: 0 })).is_empty());
    assert_eq!(w.in_next(), Some(GRACE - LOOK_EVERY), "no more looks");
}

#[test]
fn a_worker_that_exited_before_it_retired_is_only_sent_its_disconnect() {
    let (mut w, _) = W::new(rules(StopWith::Signal(Signal::TERM), true));
    w.on(Input::Exited(code(0)));
    assert_eq!(w.on(Input::Stop), ["AskNodeDisconnect"]);
    assert_eq!(w.on(Input::Retiring), ["Rescue(SendDisconnect)"]);
}

#[test]
fn a_worker_that_exits_while_its_connections_are_taken_hands_them_on_when_they_come() {
    let mut w = retiring(Rescue::End);
    assert_eq!(w.on(Input::Rescue(Outcome::Answered)), ["Rescue(Grab)"]);
    assert_eq!(
        w.on(Input::Exited(code(0))),
        ["Rescue(HandOn)", "KillLeftovers"]
    );
    w.on(Input::ChannelEnded(None));
    assert_eq!(w.on(Input::OutputEnded), ["DropOutput"], "the grab is out");
    let grabbed = Outcome::Grabbed {
        held: 3,
        can_end: true,
    };
    assert_eq!(
        w.on(Input::Rescue(grabbed)),
        ["Rescue(HandOn)", "exited exit code 0"],
        "no disconnect to a worker gone, and its copies go on"
    );
}

#[test]
fn a_worker_killed_by_its_own_end_attempt_hands_on_what_the_attempt_held() {
    let mut w = holding(Rescue::End, 1);
    until_paused(&mut w, 1);
    peeked(&mut w, true);
    w.after(LOOK_EVERY);
    w.on(Input::Rescue(Outcome::Looked { held: 1 }));
    assert_eq!(peeked(&mut w, true), ["Rescue(TryEnd)"]);
    // Its SIGKILL is reaped before the attempt comes back.
    assert_eq!(
        w.on(Input::Exited(killed())),
        ["Rescue(HandOn)", "KillLeftovers"]
    );
    let ended = Outcome::Tried {
        verdict: Verdict::Ended,
        stuck: false,
    };
    assert_eq!(w.on(Input::Rescue(ended)), ["Rescue(HandOn)"]);
}

#[test]
fn a_table_that_cannot_be_read_is_no_look() {
    let mut w = holding(Rescue::End, 1);
    until_paused(&mut w, 1);
    assert!(peeked(&mut w, true).is_empty(), "one answered look");
    assert_eq!(w.after(LOOK_EVERY), ["Rescue(Look)"]);
    assert!(w.on(Input::Rescue(Outcome::LookFailed)).is_empty());
    assert_eq!(w.in_next(), Some(LOOK_EVERY), "looked at again as usual");
    assert_eq!(w.after(LOOK_EVERY), ["Rescue(Look)"]);
    assert_eq!(
        w.on(Input::Rescue(Outcome::Looked { held: 1 })),
        ["Rescue(Peek)"]
    );
    assert_eq!(
        peeked(&mut w, true),
        ["Rescue(TryEnd)"],
        "the failed read did not break the answered looks in a row"
    );
}

#[test]
fn a_worker_ended_whose_table_shows_nothing_held_ends_the_rescue() {
    let mut w = holding(Rescue::End, 1);
    until_paused(&mut w, 1);
    peeked(&mut w, true);
    w.after(LOOK_EVERY);
    w.on(Input::Rescue(Outcome::Looked { held: 1 }));
    peeked(&mut w, true);
    let ended = Outcome::Tried {
        verdict: Verdict::Ended,
        stuck: false,
    };
    assert!(w.on(Input::Rescue(ended)).is_empty());
    // Not reaped yet: a look finds it let go of everything.
    assert_eq!(w.after(LOOK_EVERY), ["Rescue(Look)"]);
    assert!(w.on(Input::Rescue(Outcome::Looked { held: 0 })).is_empty());
    assert_eq!(
        w.on(Input::Exited(killed())),
        ["KillLeftovers"],
        "nothing left to hand on"
    );
}

#[test]
fn a_job_that_never_comes_back_is_dropped_and_the_worker_retires_without_it() {
    // The copies: past the job limit the disconnect goes anyway.
    let mut w = retiring(Rescue::End);
    assert_eq!(w.on(Input::Rescue(Outcome::Answered)), ["Rescue(Grab)"]);
    assert_eq!(w.in_next(), Some(JOB_LIMIT));
    assert_eq!(w.next(), ["Rescue(DropJob)", "Rescue(SendDisconnect)"]);
    let late = Outcome::Grabbed {
        held: 1,
        can_end: true,
    };
    assert!(
        w.on(Input::Rescue(late)).is_empty(),
        "a late grab is ignored"
    );
    assert_eq!(
        w.in_next(),
        Some(GRACE - JOB_LIMIT),
        "only the grace is left"
    );

    // A look out when the worker exits delays its exit report AFTER_EXIT at most.
    let mut w = holding(Rescue::End, 2);
    assert_eq!(w.after(LOOK_EVERY), ["Rescue(Look)"]);
    w.on(Input::Exited(code(0)));
    w.on(Input::ChannelEnded(None));
    w.on(Input::OutputEnded);
    assert!(!w.life.done(), "the look is out");
    assert_eq!(w.in_next(), Some(AFTER_EXIT));
    assert_eq!(w.next(), ["Rescue(DropJob)", "exited exit code 0"]);
    assert!(w.life.done());
}
