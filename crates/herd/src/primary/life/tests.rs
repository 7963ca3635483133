//! The worker's life on a hand-moved clock: no processes, no sleeps.

use std::time::Duration;

use rustix::process::Signal;

use super::testkit::*;
use super::*;

#[test]
fn a_node_worker_is_online_at_once_and_a_herd_worker_after_its_hello() {
    let (w, fx) = W::new(rules(StopWith::EndOfStream, true));
    assert_eq!(names(fx), ["Online"]);
    assert_eq!(w.life.phase(), Phase::Online);
    assert_eq!(w.in_next(), None, "no handshake deadline");

    let (mut w, fx) = W::new(rules(StopWith::EndOfStream, false));
    assert!(fx.is_empty());
    assert_eq!(w.life.phase(), Phase::Starting);
    assert_eq!(w.in_next(), Some(HELLO));
    assert_eq!(w.on(Input::Hello), ["Online"]);
    assert_eq!(w.in_next(), None);
    assert!(w.on(Input::Hello).is_empty(), "a second hello is nothing");
}

#[test]
fn no_hello_in_time_closes_the_channel_with_an_error_and_kills_after_grace() {
    let (mut w, _) = W::new(rules(StopWith::EndOfStream, false));
    let fx = w.after(HELLO);
    assert_eq!(
        fx,
        [
            "ChannelGone",
            "error: handshake failed: no handshake within 5s",
            "CloseChannel",
            "Disconnected"
        ]
    );
    assert!(!w.life.channel_open());
    assert_eq!(w.in_next(), Some(GRACE));
    assert_eq!(w.next(), ["GraceOver", "kill"]);
}

#[test]
fn a_deadline_not_yet_due_does_nothing() {
    let (mut w, _) = W::new(rules(StopWith::EndOfStream, false));
    assert!(w.after(HELLO - Duration::from_millis(1)).is_empty());
    assert!(w.life.channel_open());
}

#[test]
fn a_bad_hello_is_an_error_and_the_worker_gets_its_grace() {
    let (mut w, _) = W::new(rules(StopWith::EndOfStream, false));
    let fx = w.on(Input::ChannelEnded(Some(Error::Handshake("bad".into()))));
    assert_eq!(fx[0], "ChannelGone");
    assert!(fx[1].starts_with("error: "), "{fx:?}");
    assert_eq!(w.in_next(), Some(GRACE));
    assert!(w.on(Input::Hello).is_empty(), "too late for a hello");
}

#[test]
fn stop_by_end_of_stream_closes_the_channel_and_arms_the_grace() {
    let mut w = W::online();
    assert_eq!(w.on(Input::Stop), ["CloseChannel"]);
    assert_eq!(w.life.phase(), Phase::Stopping);
    assert_eq!(w.in_next(), Some(GRACE));
}

#[test]
fn stop_by_signal_sends_it_and_kills_after_grace() {
    let (mut w, _) = W::new(rules(StopWith::Signal(Signal::TERM), false));
    w.on(Input::Hello);
    assert_eq!(w.on(Input::Stop), ["CloseChannel", "term"]);
    assert_eq!(
        w.after(GRACE - Duration::from_millis(1)),
        Vec::<String>::new()
    );
    assert_eq!(w.after(Duration::from_millis(1)), ["GraceOver", "kill"]);
    assert_eq!(w.in_next(), None, "SIGKILL is sent once");
}

#[test]
fn stop_by_message_sends_it_before_the_channel_closes() {
    let (mut w, _) = W::new(rules(StopWith::Message, false));
    w.on(Input::Hello);
    assert_eq!(w.on(Input::Stop), ["SendStopMessage", "CloseChannel"]);
}

#[test]
fn a_node_worker_is_asked_to_disconnect_and_signalled_once_it_closes_its_channel() {
    let mut w = W::node();
    assert_eq!(w.on(Input::Stop), ["AskNodeDisconnect"]);
    // Its servers closed: it closes the channel, and gets the signal if alive a moment later.
    assert_eq!(
        w.after(Duration::from_secs(2)),
        Vec::<String>::new(),
        "nothing while it drains"
    );
    assert_eq!(
        w.on(Input::ChannelEnded(None)),
        ["ChannelGone", "CloseChannel", "Disconnected"]
    );
    assert_eq!(w.in_next(), Some(STOP_LINGER));
    assert_eq!(w.next(), ["term"]);
    // Then the rest of the grace period.
    assert_eq!(
        w.in_next(),
        Some(GRACE - Duration::from_secs(2) - STOP_LINGER)
    );
    assert_eq!(w.next(), ["GraceOver", "kill"]);
}

#[test]
fn a_node_worker_that_exits_by_itself_after_disconnecting_is_not_signalled() {
    let mut w = W::node();
    w.on(Input::Stop);
    w.on(Input::ChannelEnded(None));
    assert_eq!(w.on(Input::Exited(code(0))), ["KillLeftovers"]);
    assert_eq!(
        w.in_next(),
        Some(OUTPUT_AFTER_EXIT),
        "only the output's time"
    );
    assert_eq!(w.next(), ["DropOutput", "exited exit code 0"]);
    assert!(w.life.done());
}

#[test]
fn a_short_grace_shortens_the_linger() {
    let mut r = rules(StopWith::Signal(Signal::TERM), true);
    r.grace = Duration::from_millis(400);
    let (mut w, _) = W::new(r);
    w.on(Input::Stop);
    w.on(Input::ChannelEnded(None));
    assert_eq!(w.in_next(), Some(Duration::from_millis(100)));
}

#[test]
fn a_node_worker_that_declines_the_disconnect_is_closed_and_signalled() {
    let mut w = W::node();
    assert_eq!(w.on(Input::Stop), ["AskNodeDisconnect"]);
    assert_eq!(w.on(Input::NodeDeclined), ["CloseChannel", "term"]);
    assert_eq!(w.in_next(), Some(GRACE));
}

#[test]
fn a_node_worker_that_never_disconnects_is_killed_at_the_end_of_its_grace() {
    let mut w = W::node();
    w.on(Input::Stop);
    assert_eq!(w.after(GRACE), ["GraceOver", "kill"]);
}

#[test]
fn stop_on_a_closed_channel_signals_at_once() {
    let mut w = W::node();
    w.on(Input::ChannelEnded(None));
    assert_eq!(w.on(Input::Stop), ["CloseChannel", "term"]);
}

#[test]
fn a_second_stop_does_not_move_the_kill_deadline() {
    let mut w = W::online();
    w.on(Input::Stop);
    w.after(Duration::from_secs(3));
    w.on(Input::Stop);
    assert_eq!(w.in_next(), Some(GRACE - Duration::from_secs(3)));
}

#[test]
fn a_kill_request_signals_and_arms_the_grace() {
    let mut w = W::online();
    assert_eq!(w.on(Input::Kill(Signal::INT)), ["int"]);
    assert_eq!(w.in_next(), Some(GRACE));
    assert_eq!(w.next(), ["GraceOver", "kill"]);
}

#[test]
fn an_exit_while_starting_drains_the_channel_then_ends() {
    let (mut w, _) = W::new(rules(StopWith::EndOfStream, false));
    assert_eq!(w.on(Input::Exited(code(1))), ["KillLeftovers"]);
    assert_eq!(w.life.phase(), Phase::Exited);
    // The channel drains (its last frames), the output too; the handshake timer still runs
    // but is later than both.
    assert_eq!(w.in_next(), Some(DRAIN_AFTER_EXIT));
    assert_eq!(w.on(Input::OutputEnded), ["DropOutput"]);
    assert_eq!(
        w.next(),
        [
            "ChannelGone",
            "CloseChannel",
            "Disconnected",
            "exited exit code 1"
        ]
    );
    assert!(w.life.done());
    assert_eq!(
        w.on(Input::Tick),
        Vec::<String>::new(),
        "nothing after the end"
    );
}

#[test]
fn an_exit_while_online_ends_once_the_channel_and_output_end() {
    let mut w = W::online();
    w.on(Input::Exited(killed()));
    assert_eq!(
        w.on(Input::ChannelEnded(None)),
        ["ChannelGone", "CloseChannel", "Disconnected"]
    );
    assert!(!w.life.done(), "output is still read");
    assert_eq!(
        w.on(Input::OutputEnded),
        ["DropOutput", "exited signal Some(9)"]
    );
}

#[test]
fn an_exit_while_stopping_cancels_the_kill() {
    let mut w = W::online();
    w.on(Input::Stop);
    w.on(Input::ChannelEnded(None));
    w.on(Input::Exited(code(0)));
    assert_eq!(w.in_next(), Some(OUTPUT_AFTER_EXIT));
    assert_eq!(w.next(), ["DropOutput", "exited exit code 0"]);
}

#[test]
fn an_exit_after_the_kill_reports_the_kill() {
    let mut w = W::online();
    w.on(Input::Stop);
    assert_eq!(w.after(GRACE), ["GraceOver", "kill"]);
    assert_eq!(w.on(Input::Exited(killed())), ["KillLeftovers"]);
    w.on(Input::OutputEnded);
    assert_eq!(
        w.after(DRAIN_AFTER_EXIT),
        [
            "ChannelGone",
            "CloseChannel",
            "Disconnected",
            "exited signal Some(9)"
        ]
    );
}

#[test]
fn nothing_is_signalled_once_the_worker_exited() {
    let mut w = W::online();
    w.on(Input::Exited(code(0)));
    assert_eq!(w.on(Input::Kill(Signal::TERM)), Vec::<String>::new());
    assert_eq!(w.on(Input::Stop), ["CloseChannel"]);
    assert!(w.life.next_deadline().is_some());
    assert!(!w.names_a_kill_deadline());
}

#[test]
fn a_channel_something_else_holds_open_is_closed_after_the_drain() {
    let mut w = W::online();
    w.on(Input::OutputEnded);
    w.on(Input::Exited(code(0)));
    let fx = w.after(DRAIN_AFTER_EXIT);
    assert_eq!(
        fx,
        [
            "ChannelGone",
            "CloseChannel",
            "Disconnected",
            "exited exit code 0"
        ]
    );
}

#[test]
fn a_process_left_holding_the_output_is_let_go_after_the_output_time() {
    let mut w = W::online();
    w.on(Input::ChannelEnded(None));
    w.on(Input::Exited(code(0)));
    assert!(w.life.output_open());
    assert_eq!(
        w.after(OUTPUT_AFTER_EXIT),
        ["DropOutput", "exited exit code 0"]
    );
}

#[test]
fn a_worker_without_output_pipes_ends_with_its_channel() {
    let now = Instant::now();
    let (mut life, _) = Life::start(rules(StopWith::EndOfStream, true), now, false);
    life.handle(now, Input::Exited(code(3)));
    let fx = names(life.handle(now, Input::ChannelEnded(None)));
    assert_eq!(fx.last().map(String::as_str), Some("exited exit code 3"));
}

#[test]
fn a_protocol_error_after_exit_reports_the_error_but_arms_no_kill() {
    let mut w = W::online();
    w.on(Input::Exited(code(0)));
    let fx = w.on(Input::ChannelEnded(Some(Error::Protocol("junk".into()))));
    assert!(fx.iter().any(|f| f.starts_with("error: ")), "{fx:?}");
    assert!(!w.names_a_kill_deadline());
}

#[test]
fn a_grace_of_thirty_years_does_not_overflow_the_clock() {
    let mut r = rules(StopWith::EndOfStream, false);
    r.grace = Duration::from_secs(u64::MAX);
    r.handshake_timeout = Duration::from_secs(u64::MAX);
    let (mut w, _) = W::new(r);
    w.on(Input::Hello);
    w.on(Input::Stop);
    assert!(w.in_next().unwrap() > Duration::from_secs(86_400 * 365));
}

impl W {
    /// Whether a `SIGKILL` deadline is set.
    fn names_a_kill_deadline(&self) -> bool {
        self.life.kill_at.is_some()
    }
}

#[test]
fn pings_go_every_third_of_the_limit_and_answers_keep_the_worker() {
    assert_eq!(ping_every(LIMIT), EVERY);
    assert_eq!(
        ping_every(Duration::from_millis(30)),
        Duration::from_millis(50)
    );
    assert_eq!(
        ping_every(Duration::from_secs(600)),
        Duration::from_secs(10)
    );
    let mut w = pinged();
    assert_eq!(
        w.in_next(),
        Some(Duration::ZERO),
        "the first ping goes at once"
    );
    assert_eq!(w.on(Input::Tick), ["Ping(0)"]);
    w.now += Duration::from_millis(5);
    assert!(w.on(Input::Pong(0)).is_empty());
    for n in 1..20 {
        assert_eq!(w.next(), [format!("Ping({n})")]);
        w.now += Duration::from_millis(5);
        w.on(Input::Pong(n));
    }
    assert_eq!(w.life.phase(), Phase::Online);
}

#[test]
fn a_worker_that_stops_answering_is_unresponsive_after_the_limit_and_killed() {
    let mut w = pinged();
    w.on(Input::Tick);
    w.on(Input::Pong(0));
    // Pings go on, unanswered: judged once the first of them is `LIMIT` old.
    assert_eq!(w.next(), ["Ping(1)"]);
    assert_eq!(w.next(), ["Ping(2)"]);
    assert_eq!(w.next(), ["Ping(3)"]);
    assert_eq!(w.in_next(), Some(EVERY), "Ping(1) went 20 s ago");
    assert_eq!(w.next(), ["Unresponsive(30s)", "kill"]);
    assert_eq!(
        w.in_next(),
        Some(GRACE),
        "then the usual grace, should SIGKILL not take"
    );
    // No more pings, no second verdict.
    assert_eq!(w.next(), ["GraceOver", "kill"]);
    assert_eq!(w.on(Input::Exited(killed())), ["KillLeftovers"]);
}

#[test]
fn a_worker_that_never_answers_is_never_judged_and_pings_stop() {
    let mut w = pinged();
    let started = w.now;
    let mut pings = 0;
    while let Some(d) = w.in_next() {
        assert!(d <= EVERY);
        let fx = w.next();
        assert!(fx.iter().all(|f| f.starts_with("Ping(")), "{fx:?}");
        pings += fx.len();
    }
    assert_eq!(w.now - started, FIRST_ANSWER_WITHIN);
    assert_eq!(pings as u32, FIRST_ANSWER_WITHIN.as_secs() as u32 / 10);
    assert!(w.after(Duration::from_secs(3600)).is_empty());
}

#[test]
fn an_answer_given_unasked_arms_nothing() {
    let mut w = pinged();
    // Before any ping went: no answer to anything (a process beside the worker, say).
    w.on(Input::Pong(0));
    assert_eq!(w.on(Input::Tick), ["Ping(0)"]);
    while w.in_next().is_some() {
        assert!(w.next().iter().all(|f| f.starts_with("Ping(")));
    }
}

#[test]
fn a_block_shorter_than_the_limit_is_no_hang() {
    let mut w = pinged();
    w.on(Input::Tick);
    w.on(Input::Pong(0));
    // Its loop blocks right after answering, for 29 s.
    assert_eq!(w.next(), ["Ping(1)"]);
    assert_eq!(w.next(), ["Ping(2)"]);
    w.now += Duration::from_secs(9);
    w.on(Input::Pong(1));
    w.on(Input::Pong(2));
    assert_eq!(w.next(), ["Ping(3)"]);
}

#[test]
fn anything_it_sends_counts_as_an_answer() {
    let mut w = pinged();
    w.on(Input::Tick);
    w.on(Input::Pong(0));
    w.next();
    w.next();
    w.on(Input::Heard);
    assert_eq!(w.life.alive.verdict_at(LIMIT), None);
    assert_eq!(w.next(), ["Ping(3)"]);
}

#[test]
fn a_ping_that_could_not_be_queued_is_not_waited_for() {
    let mut w = pinged();
    w.on(Input::Tick);
    w.on(Input::Pong(0));
    w.next();
    w.on(Input::PingDropped(1));
    assert_eq!(w.life.alive.verdict_at(LIMIT), None);
    w.next();
    assert_eq!(w.life.alive.verdict_at(LIMIT), Some(w.now + LIMIT));
}

#[test]
fn a_late_tick_after_herd_itself_was_held_up_judges_nobody() {
    let mut w = pinged();
    w.on(Input::Tick);
    w.on(Input::Pong(0));
    w.next();
    // herd stopped for a minute: nothing was sent, so nothing could be answered.
    assert_eq!(w.after(Duration::from_secs(60)), ["Ping(2)"]);
    assert_eq!(w.in_next(), Some(EVERY));
}

#[test]
fn a_kill_request_ends_the_checks_its_grace_rules() {
    let mut w = pinged();
    w.on(Input::Tick);
    w.on(Input::Pong(0));
    w.on(Input::Kill(Signal::TERM));
    assert_eq!(w.in_next(), Some(GRACE));
}

#[test]
fn a_hello_read_after_a_stop_request_or_the_exit_still_makes_it_online() {
    let (mut w, _) = W::new(rules(StopWith::EndOfStream, false));
    w.on(Input::Exited(code(0)));
    assert_eq!(w.on(Input::Hello), ["Online"]);
    assert!(w.on(Input::Hello).is_empty());
    let (mut w, _) = W::new(rules(StopWith::Signal(Signal::TERM), false));
    w.on(Input::Stop);
    assert_eq!(w.life.phase(), Phase::Stopping);
    // Its channel is closed on our side, but its hello may still be read.
    assert_eq!(w.on(Input::Hello), ["Online"]);
    assert_eq!(w.life.phase(), Phase::Stopping);
}

#[test]
fn a_slow_start_answered_late_still_arms_the_checks() {
    let mut w = pinged();
    w.on(Input::Tick);
    w.next();
    w.next();
    // Its loop turns at last: the queued pings are answered together.
    w.now += Duration::from_secs(1);
    w.on(Input::Pong(0));
    w.on(Input::Pong(1));
    w.on(Input::Pong(2));
    assert_eq!(w.next(), ["Ping(3)"]);
    assert_eq!(w.next(), ["Ping(4)"]);
    assert_eq!(w.next(), ["Ping(5)"]);
    assert_eq!(w.next(), ["Unresponsive(30s)", "kill"]);
}

#[test]
fn an_answer_to_a_ping_never_sent_counts_for_nothing() {
    let mut w = pinged();
    w.on(Input::Pong(7));
    w.on(Input::Tick);
    w.on(Input::Pong(1));
    w.on(Input::Pong(2));
    assert_eq!(
        w.life.alive.verdict_at(LIMIT),
        None,
        "a lying pong does not arm the checks"
    );
}

#[test]
fn no_verdict_while_the_channel_is_not_read_and_a_fresh_window_after() {
    let mut w = pinged();
    w.on(Input::Tick);
    w.on(Input::Pong(0));
    w.on(Input::Reading(false));
    // Backpressure for longer than the limit: its answers wait unread.
    assert_eq!(w.after(EVERY), ["Ping(1)"]);
    assert_eq!(w.after(EVERY), ["Ping(2)"]);
    assert_eq!(w.after(EVERY), ["Ping(3)"]);
    assert_eq!(w.after(EVERY), ["Ping(4)"]);
    w.on(Input::Reading(true));
    assert_eq!(w.life.alive.verdict_at(LIMIT), None, "a fresh window");
    assert_eq!(w.next(), ["Ping(5)"]);
    assert_eq!(w.next(), ["Ping(6)"]);
    assert_eq!(w.next(), ["Ping(7)"]);
    assert_eq!(w.next(), ["Unresponsive(30s)", "kill"]);
}

#[test]
fn a_stopping_worker_is_not_pinged_its_grace_rules() {
    let mut w = pinged();
    w.on(Input::Tick);
    w.on(Input::Pong(0));
    w.on(Input::Stop);
    assert_eq!(w.in_next(), Some(GRACE));
    assert_eq!(w.next(), ["GraceOver", "kill"]);
}

#[test]
fn a_worker_still_starting_is_not_pinged_its_handshake_deadline_rules() {
    let mut r = rules(StopWith::EndOfStream, false);
    r.unresponsive = Some(LIMIT);
    let (w, _) = W::new(r);
    assert_eq!(w.in_next(), Some(HELLO));
}

#[test]
fn a_node_worker_is_pinged_from_its_fork() {
    let mut r = rules(StopWith::Signal(Signal::TERM), true);
    r.unresponsive = Some(LIMIT);
    let (mut w, fx) = W::new(r);
    assert_eq!(names(fx), ["Online"]);
    assert_eq!(w.on(Input::Tick), ["Ping(0)"]);
}

#[test]
fn without_a_limit_nothing_is_pinged() {
    let mut w = W::online();
    assert_eq!(w.in_next(), None);
    assert!(w.on(Input::Pong(0)).is_empty());
    assert!(w.on(Input::Reading(false)).is_empty());
}
