//! Waiting for misses' replies without a turn of the event loop: once the JavaScript that sent
//! `get`s is done (the package calls `spin()` from a microtask, so every `get` of a
//! `Promise.all` is written first), the channel is read (non-blocking) for a short, bounded
//! time, so replies the primary has at hand settle their Promises before the loop sleeps.
//!
//! Why: a reply that waits for Node's event loop costs two sleeps and wake-ups (the loop's
//! `epoll_wait`, then the Promise's reactions), and on a virtual machine each wake-up of an idle
//! CPU is tens of microseconds, more than the primary's whole answer. Reading while the primary
//! answers avoids the worker's half of that; the CPU is busy for that time, as it would be for
//! any synchronous work of the program. Between reads it yields the CPU (`sched_yield`), so a
//! thread of the primary waiting for the same CPU gets to answer (a yield may also give the CPU
//! away for a while: the bounds below are checked between reads, so a loaded CPU can stretch
//! a wait by a time slice).
//!
//! The policy ([`Spin`]) is pure, and bounded four ways:
//! - **Quiet budget**: a wait ends once [`Spin::budget`] passes with nothing read
//!   ([`DEFAULT_BUDGET`], `HERD_CACHE_SPIN_US` to change it, `0` to turn it off; at most
//!   [`MAX_BUDGET`]). Off on a machine with one CPU, where it would only keep the primary from
//!   answering.
//! - **Per wait**: [`TOTAL_BUDGETS`] budgets in all (replies keep coming in a burst's answer).
//! - **Per turn of the loop**: at most [`TURN_LIMIT`] of waiting while the loop's time stays
//!   the same, so misses one after another (`for (k of keys) await get(k)`), each settled in a
//!   microtask, still let timers, connections and I/O in at least every millisecond or so.
//! - **Backoff**: a wait that ends with a `get` unanswered (the primary had to load the value
//!   from its source, or is busy) makes the next waits be skipped: 1, then 2, 4, ... up to
//!   [`MAX_SKIP`] while waits keep failing. A wait that ends with every reply resets it.

use std::time::Duration;

/// The quiet budget unless `HERD_CACHE_SPIN_US` says otherwise.
pub(crate) const DEFAULT_BUDGET: Duration = Duration::from_micros(100);
/// The longest quiet budget `HERD_CACHE_SPIN_US` may ask for.
pub(crate) const MAX_BUDGET: Duration = Duration::from_millis(1);
/// The most waits skipped after failed ones.
pub(crate) const MAX_SKIP: u32 = 256;
/// A wait's whole length, in quiet budgets.
pub(crate) const TOTAL_BUDGETS: u32 = 10;
/// The most waiting within one turn of the event loop (one value of the loop's time).
pub(crate) const TURN_LIMIT: Duration = Duration::from_millis(1);

/// How long one wait may last.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Wait {
    /// The wait ends once this passes with nothing read.
    pub(crate) quiet: Duration,
    /// The wait ends once this passes in all.
    pub(crate) total: Duration,
}

/// When to wait for replies, and what waiting has given so far.
#[derive(Debug, Clone)]
pub(crate) struct Spin {
    budget: Duration,
    /// Waits still to skip.
    skip: u32,
    /// Waits the next failed one makes skip.
    backoff: u32,
    /// The loop's time of the turn being counted, and the waiting done in it.
    turn: u64,
    spent: Duration,
    /// Waits begun, and those that ended with every reply.
    pub(crate) waits: u64,
    pub(crate) answered: u64,
}

impl Spin {
    /// A policy with `budget` (zero: never wait).
    pub(crate) fn new(budget: Duration) -> Spin {
        Spin {
            budget: budget.min(MAX_BUDGET),
            skip: 0,
            backoff: 1,
            turn: 0,
            spent: Duration::ZERO,
            waits: 0,
            answered: 0,
        }
    }

    /// The policy `HERD_CACHE_SPIN_US` asks for (microseconds), else [`DEFAULT_BUDGET`]; zero
    /// on a machine with one CPU whatever was asked. An unreadable value gives the default and
    /// the reason, for the caller to report.
    pub(crate) fn from_env(value: Option<&str>, cpus: usize) -> (Spin, Option<String>) {
        let (budget, warning) = match value {
            None => (DEFAULT_BUDGET, None),
            Some(text) => match text.trim().parse::<u64>() {
                Ok(us) if Duration::from_micros(us) <= MAX_BUDGET => {
                    (Duration::from_micros(us), None)
                }
                _ => (
                    DEFAULT_BUDGET,
                    Some(format!(
                        "HERD_CACHE_SPIN_US must be a whole number of microseconds from 0 to {}, \
                         not {text:?}: {} is used",
                        MAX_BUDGET.as_micros(),
                        DEFAULT_BUDGET.as_micros()
                    )),
                ),
            },
        };
        let budget = if cpus < 2 { Duration::ZERO } else { budget };
        (Spin::new(budget), warning)
    }

    /// The quiet budget.
    pub(crate) fn budget(&self) -> Duration {
        self.budget
    }

    /// Whether to wait now, in the loop turn whose time is `turn`, and for how long. A wait
    /// skipped by the backoff counts toward it; one refused for the turn's limit does not.
    pub(crate) fn begin(&mut self, turn: u64) -> Option<Wait> {
        if self.budget.is_zero() {
            return None;
        }
        if turn != self.turn {
            self.turn = turn;
            self.spent = Duration::ZERO;
        }
        let left = TURN_LIMIT.saturating_sub(self.spent);
        if left.is_zero() {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        self.waits += 1;
        Some(Wait {
            quiet: self.budget.min(left),
            total: (self.budget * TOTAL_BUDGETS).min(left),
        })
    }

    /// How the wait [`Spin::begin`] allowed ended: with every `get` answered or not, after
    /// `spent`.
    pub(crate) fn end(&mut self, answered: bool, spent: Duration) {
        self.spent += spent;
        if answered {
            self.answered += 1;
            self.backoff = 1;
        } else {
            self.skip = self.backoff;
            self.backoff = (self.backoff * 2).min(MAX_SKIP);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn a_wait_has_its_budgets_and_counts() {
        let mut s = Spin::new(80 * US);
        let w = s.begin(7).unwrap();
        assert_eq!((w.quiet, w.total), (80 * US, 800 * US));
        s.end(true, 30 * US);
        assert!(s.begin(7).is_some());
        assert_eq!((s.waits, s.answered), (2, 1));
        assert_eq!(Spin::new(Duration::from_secs(5)).budget(), MAX_BUDGET);
    }

    #[test]
    fn waiting_within_one_turn_of_the_loop_is_bounded() {
        let mut s = Spin::new(DEFAULT_BUDGET);
        let mut n = 0;
        // Misses one after another, all answered in 30 µs, in one turn (time 5).
        while let Some(w) = s.begin(5) {
            assert!(w.total <= TURN_LIMIT.saturating_sub(30 * US * n));
            s.end(true, 30 * US);
            n += 1;
        }
        assert_eq!(n, 34, "1 ms of 30 µs waits, the last one cut short");
        assert!(s.begin(5).is_none(), "still the same turn");
        assert!(s.begin(6).is_some(), "the loop turned");
        // A long wait near the limit is cut to what is left of it.
        let mut s = Spin::new(MAX_BUDGET);
        s.begin(1).unwrap();
        s.end(true, 900 * US);
        let w = s.begin(1).unwrap();
        assert_eq!((w.quiet, w.total), (100 * US, 100 * US));
    }

    #[test]
    fn failed_waits_back_off_exponentially_and_a_reply_resets() {
        let mut s = Spin::new(DEFAULT_BUDGET);
        let mut turn = 0;
        let mut skipped_before_next = |s: &mut Spin| {
            let mut n = 0;
            loop {
                turn += 1; // a new turn each time: the turn limit stays out of this test
                if s.begin(turn).is_some() {
                    return n;
                }
                n += 1;
            }
        };
        for _ in 0..5 {
            s.end(false, US);
            assert_eq!(skipped_before_next(&mut s), 1);
            s.end(false, US);
            assert_eq!(skipped_before_next(&mut s), 2);
            s.end(true, US);
            assert_eq!(skipped_before_next(&mut s), 0, "a reply resets the backoff");
        }
        let mut last = 0;
        for _ in 0..20 {
            s.end(false, US);
            last = skipped_before_next(&mut s);
        }
        assert_eq!(last, MAX_SKIP, "skips are bounded");
    }

    #[test]
    fn the_environment_sets_the_budget_or_is_reported() {
        let us = |s: &(Spin, Option<String>)| (s.0.budget().as_micros(), s.1.is_some());
        assert_eq!(us(&Spin::from_env(None, 2)), (100, false));
        assert_eq!(us(&Spin::from_env(Some("250"), 8)), (250, false));
        assert_eq!(us(&Spin::from_env(Some("0"), 8)), (0, false));
        assert_eq!(
            us(&Spin::from_env(None, 1)),
            (0, false),
            "one CPU: no waiting"
        );
        assert_eq!(us(&Spin::from_env(Some("2000"), 2)), (100, true));
        assert_eq!(us(&Spin::from_env(Some("fast"), 2)), (100, true));
        assert_eq!(us(&Spin::from_env(Some(""), 2)), (100, true));
        assert_eq!(us(&Spin::from_env(Some("-1"), 2)), (100, true));
    }
}
