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
//! thread of the primary waiting for the same CPU gets to answer.
//!
//! The policy ([`Spin`]) is pure, and bounded three ways:
//! - **Budget**: reading stops once [`Spin::budget`] passes with no reply
//!   ([`DEFAULT_BUDGET`], `HERD_CACHE_SPIN_US` to change it, `0` to turn it off; at most
//!   [`MAX_BUDGET`]), and after [`TOTAL_BUDGETS`] budgets in all. Off on a machine with one
//!   CPU, where the wait would only keep the primary from answering.
//! - **Backoff**: a wait that ends with a `get` unanswered (the primary had to load the value
//!   from its source, or is busy) makes the next waits be skipped: 1, then 2, 4, ... up to
//!   [`MAX_SKIP`] while waits keep failing. A wait that ends with every reply resets it.

use std::time::Duration;

/// The wait per call unless `HERD_CACHE_SPIN_US` says otherwise.
pub(crate) const DEFAULT_BUDGET: Duration = Duration::from_micros(100);
/// The longest wait `HERD_CACHE_SPIN_US` may ask for.
pub(crate) const MAX_BUDGET: Duration = Duration::from_millis(1);
/// The most waits skipped after failed ones.
pub(crate) const MAX_SKIP: u32 = 256;
/// A wait's whole length, in budgets (replies keep coming in a burst's answer).
pub(crate) const TOTAL_BUDGETS: u32 = 10;

/// When a call may wait for its reply, and what waiting has given so far.
#[derive(Debug, Clone)]
pub(crate) struct Spin {
    budget: Duration,
    /// Calls still to skip.
    skip: u32,
    /// Calls the next failed wait makes skip.
    backoff: u32,
    /// Waits begun, and those that ended with their reply.
    pub(crate) waits: u64,
    pub(crate) answered: u64,
}

impl Spin {
    /// A policy with `budget` per call (zero: never wait).
    pub(crate) fn new(budget: Duration) -> Spin {
        Spin {
            budget: budget.min(MAX_BUDGET),
            skip: 0,
            backoff: 1,
            waits: 0,
            answered: 0,
        }
    }

    /// The policy this process asks for: `HERD_CACHE_SPIN_US` (microseconds; unreadable
    /// values are an error, for the caller to report), else [`DEFAULT_BUDGET`]; zero on a
    /// machine with one CPU whatever was asked.
    pub(crate) fn from_env(value: Option<&str>, cpus: usize) -> Result<Spin, String> {
        let budget = match value {
            None => DEFAULT_BUDGET,
            Some(text) => match text.trim().parse::<u64>() {
                Ok(us) if Duration::from_micros(us) <= MAX_BUDGET => Duration::from_micros(us),
                _ => {
                    return Err(format!(
                        "HERD_CACHE_SPIN_US must be a number of microseconds from 0 to {}, not {text:?}",
                        MAX_BUDGET.as_micros()
                    ))
                }
            },
        };
        Ok(Spin::new(if cpus < 2 { Duration::ZERO } else { budget }))
    }

    /// The most a call waits.
    pub(crate) fn budget(&self) -> Duration {
        self.budget
    }

    /// Whether to wait now, and how long a silence ends the wait (the whole wait is at most
    /// [`TOTAL_BUDGETS`] times that). A wait skipped counts toward the backoff.
    pub(crate) fn begin(&mut self) -> Option<Duration> {
        if self.budget.is_zero() {
            return None;
        }
        if self.skip > 0 {
            self.skip -= 1;
            return None;
        }
        self.waits += 1;
        Some(self.budget)
    }

    /// How the wait [`Spin::begin`] allowed ended: with every `get` answered or not.
    pub(crate) fn end(&mut self, answered: bool) {
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

    #[test]
    fn a_wait_has_its_budget_and_counts() {
        let mut s = Spin::new(Duration::from_micros(80));
        assert_eq!(s.begin(), Some(Duration::from_micros(80)));
        s.end(true);
        assert_eq!(s.begin(), Some(Duration::from_micros(80)));
        assert_eq!((s.waits, s.answered), (2, 1));
        assert_eq!(Spin::new(Duration::from_secs(5)).budget(), MAX_BUDGET);
    }

    #[test]
    fn failed_waits_back_off_exponentially_and_a_reply_resets() {
        let mut s = Spin::new(DEFAULT_BUDGET);
        let mut skipped = Vec::new();
        for _ in 0..12 {
            assert!(s.begin().is_some());
            s.end(false);
            let mut n = 0;
            while s.begin().is_none() {
                n += 1;
            }
            skipped.push(n);
            s.end(false);
            // The wait just allowed failed too: its skip is counted on the next round.
            let mut m = 0;
            while s.begin().is_none() {
                m += 1;
            }
            skipped.push(m);
            s.end(true);
        }
        // Fail, skip 1; fail, skip 2; answer (reset); ... the same each round.
        assert!(skipped.chunks(2).all(|c| c == [1, 2]), "{skipped:?}");

        let mut s = Spin::new(DEFAULT_BUDGET);
        let mut last = 0;
        for _ in 0..20 {
            assert!(s.begin().is_some());
            s.end(false);
            last = 0;
            while s.begin().is_none() {
                last += 1;
            }
        }
        assert_eq!(last, MAX_SKIP, "skips are bounded");
    }

    #[test]
    fn the_environment_sets_or_refuses_the_budget() {
        let us = |s: &Spin| s.budget().as_micros();
        assert_eq!(us(&Spin::from_env(None, 2).unwrap()), 100);
        assert_eq!(us(&Spin::from_env(Some("250"), 8).unwrap()), 250);
        assert_eq!(us(&Spin::from_env(Some("0"), 8).unwrap()), 0);
        assert_eq!(
            us(&Spin::from_env(None, 1).unwrap()),
            0,
            "one CPU: no waiting"
        );
        assert!(Spin::from_env(Some("2000"), 2).is_err());
        assert!(Spin::from_env(Some("fast"), 2).is_err());
        assert!(Spin::from_env(Some("-1"), 2).is_err());
    }
}
