//! Deadlines from durations that come from outside: a library user's `Duration::MAX`, a
//! `--grace 1e19` that got past a caller's checks, a TTL from a source. `now + d` panics when
//! the sum passes the clock's end; [`after`] saturates at a far future instead (thirty years,
//! as tokio's own timers do), which no timer reaches and every comparison still orders.

use std::time::Duration;

use tokio::time::Instant;

/// Thirty years: the deadline of a wait that is, for every purpose, forever.
pub(crate) const FAR: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `now + d`, with `d` cut at [`FAR`]: never past the clock's end (a monotonic clock thirty
/// years from now is far inside it; were it not, the deadline would be `now`, never a panic).
pub(crate) fn after(now: Instant, d: Duration) -> Instant {
    now.checked_add(d.min(FAR)).unwrap_or(now)
}

/// [`after`] from the current time.
pub(crate) fn from_now(d: Duration) -> Instant {
    after(Instant::now(), d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_past_the_clocks_end_is_a_far_deadline() {
        let now = Instant::now();
        assert_eq!(
            after(now, Duration::from_millis(5)),
            now + Duration::from_millis(5)
        );
        assert_eq!(after(now, Duration::MAX), now + FAR);
        assert_eq!(after(now, Duration::from_secs_f64(1e19)), now + FAR);
        assert!(from_now(Duration::MAX) > now + FAR / 2);
    }
}
