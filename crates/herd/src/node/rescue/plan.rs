//! When a retiring worker's held connections are paused, when it is ended, and when herd gives
//! up ending it early: pure, on the clock it is given (the shell, `watch`, reads the worker's
//! table and peeks its connections each tick and tells [`Plan`] what it saw). Every timer of
//! the rescue is here: the settling time before anything is paused (half the worker's grace
//! period, for Node's own disconnect and the program's handlers), the [`PAUSE_LIMIT`] its
//! connections' next requests may wait, and the [`ANSWERED_TICKS`] looks in a row that must
//! find each of them answered.

use std::time::Duration;

use tokio::time::Instant;

use crate::Rescue;

/// Looks in a row that must find every connection the worker holds with a request waiting
/// before it is ended.
pub(crate) const ANSWERED_TICKS: u32 = 2;

/// How long, at most, the connections' next requests wait while their marks are raised for a
/// worker that has not answered them all: past it, the marks go down and the worker serves
/// them as before, to its exit or grace period.
pub(crate) const PAUSE_LIMIT: Duration = Duration::from_millis(500);

/// Where the marks of a retiring worker's connections are.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Pause {
    /// Not raised yet.
    Not,
    /// Raised at this instant.
    Since(Instant),
    /// Lowered again for good (or never to be raised): the worker serves its connections to
    /// its exit.
    GaveUp,
}

/// What an attempt to end the worker found.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) enum Verdict {
    /// The worker was ended.
    Ended,
    /// Not now: look again.
    Later,
    /// It cannot be ended early (herd cannot see all it holds).
    Never,
}

/// One retiring worker's rescue (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct Plan {
    pause: Pause,
    /// Until then the worker serves its connections as usual.
    settled: Instant,
    /// Looks in a row that found every connection answered.
    answered: u32,
}

impl Plan {
    /// The rescue of a worker asked to disconnect at `now` with `grace` to stop, in `mode`.
    pub(crate) fn new(mode: Rescue, now: Instant, grace: Duration) -> Plan {
        Plan {
            pause: match mode {
                Rescue::End => Pause::Not,
                // Held and handed on, never ended early.
                Rescue::Hold | Rescue::Off => Pause::GaveUp,
            },
            settled: crate::deadline::after(now, grace / 2),
            answered: 0,
        }
    }

    /// Whether the connections' marks are raised now (their next requests wait).
    pub(crate) fn paused(&self) -> bool {
        matches!(self.pause, Pause::Since(_))
    }

    /// herd cannot signal the worker (no pidfd): it is never paused or ended early.
    pub(crate) fn never_end(&mut self) {
        if self.pause == Pause::Not {
            self.pause = Pause::GaveUp;
        }
    }

    /// A look at `now`. True when the marks go up now (the shell raises them).
    pub(crate) fn pause_now(&mut self, now: Instant) -> bool {
        if self.pause == Pause::Not && now >= self.settled {
            self.pause = Pause::Since(now);
            return true;
        }
        false
    }

    /// While paused, what a look at the connections found (`all_answered`: each has its next
    /// request waiting). True when the worker is to be ended now if it holds nothing more.
    pub(crate) fn looked(&mut self, all_answered: bool) -> bool {
        if !self.paused() {
            return false;
        }
        self.answered = if all_answered { self.answered + 1 } else { 0 };
        if self.answered >= ANSWERED_TICKS {
            self.answered = 0;
            return true;
        }
        false
    }

    /// After the look (and any attempt, `verdict`) at `now`; `stuck`: a connection's mark
    /// could not stay raised (herd cannot tell its requests). True when the marks go down for
    /// good (the shell lowers them).
    pub(crate) fn settle(&mut self, now: Instant, verdict: Verdict, stuck: bool) -> bool {
        let Pause::Since(since) = self.pause else {
            return false;
        };
        if verdict == Verdict::Ended {
            return false;
        }
        if verdict == Verdict::Never || stuck || now.duration_since(since) >= PAUSE_LIMIT {
            self.pause = Pause::GaveUp;
            return true;
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GRACE: Duration = Duration::from_secs(4);
    const MS: Duration = Duration::from_millis(1);

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn nothing_is_paused_before_half_the_grace_period() {
        let t0 = Instant::now();
        let mut p = Plan::new(Rescue::End, t0, GRACE);
        assert!(!p.pause_now(at(t0, 1999)));
        assert!(!p.looked(true), "not paused: no verdict");
        assert!(!p.settle(at(t0, 1999), Verdict::Later, false));
        assert!(p.pause_now(at(t0, 2000)), "settled");
        assert!(p.paused());
        assert!(!p.pause_now(at(t0, 2010)), "once");
    }

    #[test]
    fn a_worker_herd_cannot_signal_is_never_paused() {
        let t0 = Instant::now();
        let mut p = Plan::new(Rescue::End, t0, GRACE);
        p.never_end();
        assert!(!p.pause_now(at(t0, 10_000)));
        assert!(!p.paused());
    }

    #[test]
    fn two_answered_looks_in_a_row_end_it_and_an_unanswered_one_starts_over() {
        let t0 = Instant::now();
        let mut p = Plan::new(Rescue::End, t0, GRACE);
        assert!(p.pause_now(at(t0, 2000)));
        assert!(!p.looked(true));
        assert!(
            !p.looked(false),
            "one left unanswered: the count starts over"
        );
        assert!(!p.settle(at(t0, 2020), Verdict::Later, false));
        assert!(!p.looked(true));
        assert!(p.looked(true), "two in a row");
        assert!(
            !p.settle(at(t0, 2040), Verdict::Ended, false),
            "ended: nothing to lower"
        );
        assert!(p.paused());
    }

    #[test]
    fn the_marks_go_down_past_the_pause_limit_and_stay_down() {
        let t0 = Instant::now();
        let mut p = Plan::new(Rescue::End, t0, GRACE);
        let paused = at(t0, 2000);
        assert!(p.pause_now(paused));
        assert!(!p.settle(paused + PAUSE_LIMIT - MS, Verdict::Later, false));
        assert!(p.settle(paused + PAUSE_LIMIT, Verdict::Later, false));
        assert!(!p.paused());
        assert!(!p.pause_now(paused + PAUSE_LIMIT * 2), "never raised again");
        assert!(!p.looked(true));
    }

    #[test]
    fn a_worker_that_cannot_be_ended_or_a_stuck_connection_gives_up_at_once() {
        let t0 = Instant::now();
        for (verdict, stuck) in [(Verdict::Never, false), (Verdict::Later, true)] {
            let mut p = Plan::new(Rescue::End, t0, GRACE);
            assert!(p.pause_now(at(t0, 2000)));
            assert!(
                p.settle(at(t0, 2010), verdict, stuck),
                "{verdict:?} {stuck}"
            );
            assert!(!p.paused());
        }
    }

    #[test]
    fn hold_mode_never_pauses_or_ends() {
        let t0 = Instant::now();
        let mut p = Plan::new(Rescue::Hold, t0, GRACE);
        for ms in [0, 2000, 10_000] {
            assert!(!p.pause_now(at(t0, ms)));
            assert!(!p.looked(true));
            assert!(!p.settle(at(t0, ms), Verdict::Later, false));
        }
    }

    #[test]
    fn a_huge_grace_period_never_settles_and_never_overflows() {
        let t0 = Instant::now();
        let mut p = Plan::new(Rescue::End, t0, Duration::MAX);
        assert!(!p.pause_now(at(t0, 1 << 39)), "seventeen years on");
    }
}
