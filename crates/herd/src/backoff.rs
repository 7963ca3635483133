//! Exponential backoff, the one rule for every retry in herd: restarting a crashed worker,
//! reconnecting to Redis, retrying a warm-up while the source is down.
//!
//! The delay for the `n`th consecutive failure (1-based) is `min * 2^(n-1)`, capped at `max`.
//! With jitter the delay is drawn from `[d/2, d)`, so many hosts retrying the same server do not
//! retry in step; without it the delay is exact, which is what a pure state machine needs.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

/// An exponential backoff between `min` and `max`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// The first delay.
    pub(crate) min: Duration,
    /// The longest delay.
    pub(crate) max: Duration,
    /// Whether delays are spread over `[d/2, d)`.
    pub(crate) jitter: bool,
    /// Consecutive failures so far.
    failures: u32,
}

impl Backoff {
    /// A backoff from `min` to `max`, with or without jitter, before any failure.
    pub(crate) fn new(min: Duration, max: Duration, jitter: bool) -> Backoff {
        Backoff {
            min,
            max,
            jitter,
            failures: 0,
        }
    }

    /// The delay (before jitter) after `n` consecutive failures (`n >= 1`; 0 counts as 1).
    pub(crate) fn delay_for(&self, n: u32) -> Duration {
        let exp = n.saturating_sub(1).min(24);
        self.min.saturating_mul(1u32 << exp).min(self.max)
    }

    /// Counts one more failure and returns how long to wait before the next attempt.
    pub(crate) fn fail(&mut self) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let d = self.delay_for(self.failures);
        if self.jitter {
            jitter(d)
        } else {
            d
        }
    }

    /// A success: the next failure waits `min` again.
    pub(crate) fn reset(&mut self) {
        self.failures = 0;
    }
}

/// `d` spread over `[d/2, d)` with a random factor.
fn jitter(d: Duration) -> Duration {
    let r = std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish();
    d / 2 + d.mul_f64((r % 1000) as f64 / 2000.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap_and_resets() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(100), ms(1000), false);
        let got: Vec<_> = (0..6).map(|_| b.fail()).collect();
        assert_eq!(
            got,
            [ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]
        );
        b.reset();
        assert_eq!(b.fail(), ms(100));
        assert_eq!(b.delay_for(u32::MAX), ms(1000), "no overflow on long runs");
    }

    #[test]
    fn jitter_stays_within_half_to_whole() {
        let ms = Duration::from_millis;
        let mut b = Backoff::new(ms(400), ms(400), true);
        for _ in 0..100 {
            let d = b.fail();
            assert!(d >= ms(200) && d < ms(400), "{d:?}");
        }
    }
}
