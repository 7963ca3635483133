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
//! The policy ([`Spin`]) is pure (the caller gives it the loop's turn, the time and whether
//! other I/O is ready), and bounded five ways:
//! - **Only while the loop has nothing else to do**: no wait begins, and a wait ends, once the
//!   event loop's own epoll descriptor polls readable while the channel's socket does not
//!   (`uv::other_io_ready`, asked last as it costs a system call), and the next waits are then
//!   skipped as after a failed one. A server under load has other requests to serve while the
//!   primary answers; waiting then cost it throughput (measured on 2 CPUs with
//!   `bench/scripts/node_cache_load.sh`, an HTTP server doing a miss per request under `wrk`:
//!   20,000 requests/s with waits that ignored other I/O against 33,000 without waits; 0.83x
//!   with waits that gave way but did not back off; 0.98x now), so its replies go through the
//!   loop as before.
//! - **Quiet budget**: a wait ends once [`Spin::budget`] passes with nothing read
//!   ([`DEFAULT_BUDGET`], `HERD_CACHE_SPIN_US` to change it, `0` to turn it off; at most
//!   [`MAX_BUDGET`]). Off on a machine with one CPU, where it would only keep the primary from
//!   answering.
//! - **Per wait**: [`TOTAL_BUDGETS`] budgets in all (replies keep coming in a burst's answer).
//! - **Per turn of the loop** (counted by a libuv check handle, `uv::turns`): no wait begins
//!   later than [`TURN_LIMIT`] after the turn's first one began, nor with less than a budget
//!   of that left. Misses one after another (`for (k of keys) await get(k)`), each settled in
//!   a microtask, then go through the loop, which takes in timers, connections and I/O: the
//!   loop turns at least once per [`TURN_LIMIT`] plus one wait and the program's own work
//!   between two misses.
//! - **Backoff**: a wait that ends with a `get` unanswered (the primary had to load the value
//!   from its source, or is busy) makes the next waits be skipped: 1, then 2, 4, ... up to
//!   [`MAX_SKIP`] while waits keep failing, and for [`SKIP_FOR`] at most. A wait that ends
//!   with every reply resets it.

use std::time::{Duration, Instant};

/// The quiet budget unless `HERD_CACHE_SPIN_US` says otherwise.
pub(crate) const DEFAULT_BUDGET: Duration = Duration::from_micros(100);
/// The longest quiet budget `HERD_CACHE_SPIN_US` may ask for.
pub(crate) const MAX_BUDGET: Duration = Duration::from_millis(1);
/// The most waits skipped after failed ones.
pub(crate) const MAX_SKIP: u32 = 256;
/// A wait's whole length, in quiet budgets.
pub(crate) const TOTAL_BUDGETS: u32 = 10;
/// How long after a turn's first wait began later ones may begin, in that turn.
pub(crate) const TURN_LIMIT: Duration = Duration::from_millis(1);
/// The longest a failed wait makes later ones be skipped.
pub(crate) const SKIP_FOR: Duration = Duration::from_millis(100);

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
    /// Waits still to skip, until when at most.
    skip: u32,
    skip_until: Option<Instant>,
    /// Waits the next failed one makes skip.
    backoff: u32,
    /// The loop's turn being counted, and when its first wait began.
    turn: u64,
    turn_began: Option<Instant>,
    /// Waits begun, and those that ended with every reply.
    pub(crate) waits: u64,
    pub(crate) answered: u64,
    /// Waits not begun, or cut short, for the loop's other I/O.
    pub(crate) busy: u64,
}

impl Spin {
    /// A policy with `budget` (zero: never wait).
    pub(crate) fn new(budget: Duration) -> Spin {
        Spin {
            budget: budget.min(MAX_BUDGET),
            skip: 0,
            skip_until: None,
            backoff: 1,
            turn: 0,
            turn_began: None,
            waits: 0,
            answered: 0,
            busy: 0,
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
                         not {text:?}: the default ({} µs) is used",
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

    /// Whether to wait now (`now`, in the loop's turn number `turn`), and for how long;
    /// `other_io` (whether the loop has other I/O ready) is asked last. A wait skipped by the
    /// backoff counts toward it, and one refused for other I/O backs off as after a failed
    /// one; one refused for the turn's limit does neither.
    pub(crate) fn begin(
        &mut self,
        turn: u64,
        now: Instant,
        other_io: impl FnOnce() -> bool,
    ) -> Option<Wait> {
        if self.budget.is_zero() {
            return None;
        }
        if turn != self.turn || self.turn_began.is_none() {
            self.turn = turn;
            self.turn_began = Some(now);
        }
        let began = self.turn_began.unwrap_or(now);
        let left = TURN_LIMIT.saturating_sub(now.saturating_duration_since(began));
        if left < self.budget {
            return None;
        }
        if self.skip > 0 && self.skip_until.is_some_and(|t| now < t) {
            self.skip -= 1;
            return None;
        }
        self.skip = 0;
        // Asked last, as it costs a system call: a loop with other work is a loaded one, and
        // the next waits are skipped as after a failed one.
        if other_io() {
            self.busy += 1;
            self.back_off(now);
            return None;
        }
        self.waits += 1;
        Some(Wait {
            quiet: self.budget,
            total: (self.budget * TOTAL_BUDGETS).min(left),
        })
    }

    /// A wait [`Spin::begin`] allowed was cut short for the loop's other I/O (at `now`): the
    /// loop is loaded, and the next waits are skipped as after a failed one.
    pub(crate) fn yielded(&mut self, now: Instant) {
        self.busy += 1;
        self.back_off(now);
    }

    /// How the wait [`Spin::begin`] allowed ended (at `now`): with every `get` answered or
    /// not.
    pub(crate) fn end(&mut self, answered: bool, now: Instant) {
        if answered {
            self.answered += 1;
            self.backoff = 1;
        } else {
            self.back_off(now);
        }
    }

    fn back_off(&mut self, now: Instant) {
        self.skip = self.backoff;
        self.skip_until = Some(now + SKIP_FOR);
        self.backoff = (self.backoff * 2).min(MAX_SKIP);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const US: Duration = Duration::from_micros(1);

    #[test]
    fn a_wait_has_its_budgets_and_counts() {
        let t = Instant::now();
        let mut s = Spin::new(80 * US);
        let w = s.begin(7, t, || false).unwrap();
        assert_eq!((w.quiet, w.total), (80 * US, 800 * US));
        s.end(true, t + 30 * US);
        assert!(s.begin(7, t + 40 * US, || false).is_some());
        assert_eq!((s.waits, s.answered), (2, 1));
        assert_eq!(Spin::new(Duration::from_secs(5)).budget(), MAX_BUDGET);
    }

    #[test]
    fn waits_within_one_turn_of_the_loop_are_bounded_in_time() {
        let t = Instant::now();
        let mut s = Spin::new(DEFAULT_BUDGET);
        // Misses one after another, each answered 30 µs after it began and followed by 20 µs
        // of the program's own work, all in turn 5.
        let mut at = t;
        let mut n = 0;
        while let Some(w) = s.begin(5, at, || false) {
            assert!(
                at + w.total <= t + TURN_LIMIT,
                "no wait runs past the turn's limit"
            );
            at += 30 * US;
            s.end(true, at);
            at += 20 * US;
            n += 1;
        }
        // Begun at 0, 50, ... 900 µs: none later than a budget before the limit.
        assert_eq!(n, 19);
        assert!(s.begin(5, at, || false).is_none(), "still the same turn");
        assert!(s.begin(6, at, || false).is_some(), "the loop turned");
        // A turn's first wait is allowed however late the clock: the limit runs from it.
        let mut s = Spin::new(DEFAULT_BUDGET);
        assert!(s.begin(1, t + Duration::from_secs(9), || false).is_some());
        // A budget as long as the limit: one wait per turn.
        let mut s = Spin::new(MAX_BUDGET);
        assert!(s.begin(1, t, || false).is_some());
        s.end(true, t + 10 * US);
        assert!(s.begin(1, t + 20 * US, || false).is_none());
        assert!(s.begin(2, t + 20 * US, || false).is_some());
    }

    #[test]
    fn failed_waits_back_off_exponentially_and_a_reply_resets() {
        let t = Instant::now();
        let mut s = Spin::new(DEFAULT_BUDGET);
        let mut turn = 0;
        // A new turn each time, the clock still: only the backoff decides.
        let mut skipped_before_next = |s: &mut Spin| {
            let mut n = 0;
            loop {
                turn += 1;
                if s.begin(turn, t, || false).is_some() {
                    return n;
                }
                n += 1;
            }
        };
        for _ in 0..5 {
            s.end(false, t);
            assert_eq!(skipped_before_next(&mut s), 1);
            s.end(false, t);
            assert_eq!(skipped_before_next(&mut s), 2);
            s.end(true, t);
            assert_eq!(skipped_before_next(&mut s), 0, "a reply resets the backoff");
        }
        let mut last = 0;
        for _ in 0..20 {
            s.end(false, t);
            last = skipped_before_next(&mut s);
        }
        assert_eq!(last, MAX_SKIP, "skips are bounded in number");
        s.end(false, t);
        assert!(
            s.begin(u64::MAX, t + SKIP_FOR, || false).is_some(),
            "and in time"
        );
    }

    #[test]
    fn other_io_refuses_a_wait_and_backs_off_and_is_asked_last() {
        let t = Instant::now();
        let mut s = Spin::new(DEFAULT_BUDGET);
        assert!(s.begin(1, t, || true).is_none());
        assert_eq!(
            (s.waits, s.busy),
            (0, 1),
            "a refusal for other I/O is not a wait"
        );
        assert!(s.begin(2, t, || panic!("skipped: not asked")).is_none());
        assert!(s.begin(3, t, || false).is_some(), "after one skip");
        s.yielded(t);
        assert_eq!(s.busy, 2);
        assert!(
            s.begin(4, t, || false).is_none(),
            "cut short: backs off too"
        );
        assert!(s.begin(5, t, || false).is_none());
        assert!(s.begin(6, t, || false).is_some());
        s.end(true, t);
        assert!(s.begin(7, t, || false).is_some(), "an answer resets");
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
        assert_eq!(us(&Spin::from_env(Some("-1"), 1)), (0, true));
    }
}
