//! A Node worker whose program listens for its stop signal, on a hand-moved clock: it gets the
//! signal a settle time after the stop, its channel open or not, and only once.

use std::time::Duration;

use super::testkit::*;
use super::*;

/// A Node worker whose program said it listens for SIGTERM.
fn hooked() -> W {
    let mut w = W::node();
    assert!(w.on(Input::Hooked(true)).is_empty(), "nothing until a stop");
    w
}

#[test]
fn a_hooked_worker_gets_its_signal_a_settle_time_after_the_stop_with_its_channel_open() {
    let mut w = hooked();
    assert_eq!(w.on(Input::Stop), ["AskNodeDisconnect"]);
    assert_eq!(w.in_next(), Some(SETTLE));
    assert!(w.after(SETTLE - Duration::from_millis(1)).is_empty());
    assert_eq!(w.after(Duration::from_millis(1)), ["term"]);
    // Its hook closes its servers: the channel closes, and no second signal follows.
    w.on(Input::ChannelEnded(None));
    assert_eq!(w.in_next(), Some(GRACE - SETTLE), "only the grace is left");
    assert_eq!(w.next(), ["GraceOver", "kill"]);
}

#[test]
fn a_hooked_worker_that_closes_its_channel_first_gets_the_signal_once_at_the_earlier_time() {
    let mut w = hooked();
    w.on(Input::Stop);
    w.after(Duration::from_millis(100));
    w.on(Input::ChannelEnded(None));
    assert_eq!(w.in_next(), Some(SETTLE - Duration::from_millis(100)));
    assert_eq!(w.next(), ["term"]);
    assert_eq!(
        w.in_next(),
        Some(GRACE - SETTLE),
        "the linger's signal is not sent again"
    );
}

#[test]
fn a_worker_without_a_hook_is_signalled_only_once_its_channel_closes() {
    let mut w = W::node();
    w.on(Input::Hooked(true));
    w.on(Input::Hooked(false));
    w.on(Input::Stop);
    assert_eq!(w.in_next(), Some(GRACE), "no settle signal");
    w.after(Duration::from_secs(3));
    w.on(Input::ChannelEnded(None));
    assert_eq!(w.next(), ["term"]);
}

#[test]
fn a_hook_added_while_stopping_gets_the_signal_a_settle_time_later() {
    let mut w = W::node();
    w.on(Input::Stop);
    w.after(Duration::from_secs(2));
    assert!(w.on(Input::Hooked(true)).is_empty());
    assert_eq!(w.in_next(), Some(SETTLE));
    assert_eq!(w.next(), ["term"]);
}

#[test]
fn a_hooked_worker_that_exits_before_the_settle_time_is_not_signalled() {
    let mut w = hooked();
    w.on(Input::Stop);
    w.on(Input::ChannelEnded(None));
    assert_eq!(w.on(Input::Exited(code(0))), ["KillLeftovers"]);
    assert_eq!(w.next(), ["DropOutput", "exited exit code 0"]);
}

#[test]
fn a_hook_of_a_worker_stopped_by_a_message_changes_nothing() {
    let mut r = rules(StopWith::Message, true);
    r.settle = SETTLE;
    let (mut w, _) = W::new(r);
    w.on(Input::Hooked(true));
    assert_eq!(w.on(Input::Stop), ["SendStopMessage", "AskNodeDisconnect"]);
    assert_eq!(w.in_next(), Some(GRACE));
}
