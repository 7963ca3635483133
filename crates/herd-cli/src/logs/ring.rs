//! The recent output of every worker, kept in memory for `herd logs`: a ring per worker, bounded
//! in lines and bytes, and the followers (`herd logs -f`) each new line is queued for.
//!
//! Bounds: a ring holds at most [`RING_LINES`] lines and a share of [`TOTAL_BYTES`] (at least
//! [`MIN_RING_BYTES`], at most [`MAX_RING_BYTES`]); at most [`MAX_RINGS`] rings are kept (the
//! least recently written goes first). A new ring shrinks every share, so every ring is
//! trimmed to the new share then: all rings together hold at most
//! max([`TOTAL_BYTES`], [`MAX_RINGS`] x [`MIN_RING_BYTES`]), about 16.3 MiB, counting each
//! line's text and what its entry costs besides (a line larger than its ring's share is not
//! kept, which happens only past 1,024 rings). A follower's queue holds at most [`FOLLOW_BYTES`]; past
//! that its lines are dropped and counted, and the follower is told how many it lost. Pushing a
//! line never waits: one short lock, no I/O. At most [`MAX_FOLLOWERS`] follow at once.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

/// Lines a worker's ring keeps at most.
pub const RING_LINES: usize = 10_000;
/// Bytes all rings share (each ring gets an equal part, within the two bounds below).
pub const TOTAL_BYTES: usize = 16 << 20;
/// A ring's byte bound however many rings there are.
pub const MIN_RING_BYTES: usize = 4 << 10;
/// A ring's byte bound however few rings there are.
pub const MAX_RING_BYTES: usize = 4 << 20;
/// Rings kept at most (workers replaced leave theirs until then).
pub const MAX_RINGS: usize = 4096 + 64;
/// Bytes queued for one follower at most.
pub const FOLLOW_BYTES: usize = 1 << 20;
/// Followers at once.
pub const MAX_FOLLOWERS: usize = 16;
/// What a line costs beyond its text: the entry behind its `Arc` (88 bytes), the two strings'
/// allocations, its place in the ring.
const OVERHEAD: usize = 160;

/// One line of a worker's output.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Entry {
    /// Its number among every line herd kept (1, 2, ...): the order lines arrived in.
    pub seq: u64,
    /// When herd read it, in seconds since the epoch.
    pub ts: f64,
    /// The worker's id.
    pub worker: u64,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// The line, without its newline.
    pub line: String,
}

impl Entry {
    fn cost(&self) -> usize {
        self.line.len() + self.stream.len() + OVERHEAD
    }
}

/// Which lines a reader wants.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Filter {
    /// Only this worker's.
    pub worker: Option<u64>,
    /// Only lines read at or after this time (seconds since the epoch).
    pub since: Option<f64>,
}

impl Filter {
    fn takes(&self, e: &Entry) -> bool {
        self.worker.is_none_or(|w| w == e.worker) && self.since.is_none_or(|t| e.ts >= t)
    }
}

#[derive(Default)]
struct Ring {
    lines: VecDeque<Arc<Entry>>,
    bytes: usize,
    /// The number of the last line written to it (kept or not).
    last: u64,
}

impl Ring {
    /// Drops the oldest lines past [`RING_LINES`] or past `limit` bytes.
    fn trim(&mut self, limit: usize) {
        while self.lines.len() > RING_LINES || self.bytes > limit {
            let old = self.lines.pop_front().expect("a line to drop");
            self.bytes -= old.cost();
        }
    }
}

/// What a follower has to take, in order.
#[derive(Default)]
struct Queue {
    items: VecDeque<Next>,
    bytes: usize,
}

struct FollowerState {
    queue: Mutex<Queue>,
    ready: Notify,
}

impl FollowerState {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Default)]
struct State {
    rings: BTreeMap<u64, Ring>,
    seq: u64,
    followers: Vec<(u64, Filter, Arc<FollowerState>)>,
    next_follower: u64,
    /// Lines followers lost, in all.
    dropped: u64,
}

impl State {
    fn ring_bytes(&self) -> usize {
        (TOTAL_BYTES / self.rings.len().max(1)).clamp(MIN_RING_BYTES, MAX_RING_BYTES)
    }
}

/// The recent lines of every worker, and who follows them (cheap to clone).
#[derive(Clone, Default)]
pub struct Logs {
    state: Arc<Mutex<State>>,
}

/// Too many followers already.
#[derive(Debug, PartialEq, Eq)]
pub struct TooMany;

impl Logs {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps a line of `worker`'s and queues it for its followers; never waits.
    pub fn push(&self, worker: u64, stream: &str, line: &str, ts: f64) {
        let mut s = self.lock();
        s.seq += 1;
        let entry = Arc::new(Entry {
            seq: s.seq,
            ts,
            worker,
            stream: stream.to_owned(),
            line: line.to_owned(),
        });
        let cost = entry.cost();
        if !s.rings.contains_key(&worker) && s.rings.len() >= MAX_RINGS {
            // The ring written to longest ago makes way.
            let oldest = s.rings.iter().min_by_key(|(_, r)| r.last).map(|(w, _)| *w);
            if let Some(w) = oldest {
                s.rings.remove(&w);
            }
        }
        let mut dropped = 0;
        for (_, filter, f) in &s.followers {
            if !filter.takes(&entry) {
                continue;
            }
            let mut q = f.lock();
            if q.bytes + cost > FOLLOW_BYTES {
                // One marker for a run of losses, where they happened.
                match q.items.back_mut() {
                    Some(Next::Lost(n)) => *n += 1,
                    _ => q.items.push_back(Next::Lost(1)),
                }
                dropped += 1;
            } else {
                q.bytes += cost;
                q.items.push_back(Next::Line(entry.clone()));
            }
            drop(q);
            f.ready.notify_one();
        }
        s.dropped += dropped;
        if let std::collections::btree_map::Entry::Vacant(e) = s.rings.entry(worker) {
            e.insert(Ring::default());
            // Every share just shrank: trim the others to it (rare: once per new worker).
            let limit = s.ring_bytes();
            for r in s.rings.values_mut() {
                r.trim(limit);
            }
        }
        let limit = s.ring_bytes();
        let ring = s.rings.get_mut(&worker).expect("the ring was made");
        ring.bytes += cost;
        ring.last = entry.seq;
        ring.lines.push_back(entry);
        ring.trim(limit);
    }

    /// The last `n` lines `filter` takes, oldest first. Under the lock only the entries are
    /// counted out (an `Arc` each); the sort is done after.
    pub fn recent(&self, n: usize, filter: Filter) -> Vec<Arc<Entry>> {
        let mut all: Vec<Arc<Entry>> = {
            let s = self.lock();
            s.rings
                .iter()
                .filter(|(w, _)| filter.worker.is_none_or(|f| f == **w))
                .flat_map(|(_, r)| r.lines.iter().rev().filter(|e| filter.takes(e)).take(n))
                .cloned()
                .collect()
        };
        all.sort_by_key(|e| e.seq);
        let skip = all.len().saturating_sub(n);
        all.drain(..skip);
        all
    }

    /// Lines dropped for followers too slow to take them, in all.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// A follower of every new line `filter` takes; refused past [`MAX_FOLLOWERS`]. It stops
    /// following when dropped.
    pub fn follow(&self, filter: Filter) -> Result<Follower, TooMany> {
        let mut s = self.lock();
        if s.followers.len() >= MAX_FOLLOWERS {
            return Err(TooMany);
        }
        s.next_follower += 1;
        let id = s.next_follower;
        let state = Arc::new(FollowerState {
            queue: Mutex::new(Queue::default()),
            ready: Notify::new(),
        });
        s.followers.push((id, filter, state.clone()));
        Ok(Follower {
            id,
            logs: self.clone(),
            state,
        })
    }
}

/// What a follower takes, in order.
#[derive(Debug, PartialEq)]
pub enum Next {
    /// A new line.
    Line(Arc<Entry>),
    /// This many lines were dropped here (the follower was too slow).
    Lost(u64),
}

/// A follower of new lines (`herd logs -f`); unregistered when dropped (cancel-safe: a
/// [`Follower::next`] dropped mid-wait loses nothing, the lines stay queued).
pub struct Follower {
    id: u64,
    logs: Logs,
    state: Arc<FollowerState>,
}

impl Follower {
    /// Waits for new lines (and the news of lines lost among them), oldest first.
    pub async fn next(&self) -> Vec<Next> {
        loop {
            let notified = self.state.ready.notified();
            {
                let mut q = self.state.lock();
                if !q.items.is_empty() {
                    q.bytes = 0;
                    return q.items.drain(..).collect();
                }
            }
            notified.await;
        }
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.logs
            .lock()
            .followers
            .retain(|(id, _, _)| *id != self.id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(logs: &Logs, n: usize, filter: Filter) -> Vec<String> {
        logs.recent(n, filter)
            .into_iter()
            .map(|e| e.line.clone())
            .collect()
    }

    #[test]
    fn recent_lines_come_in_order_across_workers_and_filtered() {
        let logs = Logs::default();
        for i in 0..10 {
            logs.push(i % 2, "stdout", &format!("l{i}"), i as f64);
        }
        assert_eq!(lines(&logs, 3, Filter::default()), ["l7", "l8", "l9"]);
        let w1 = Filter {
            worker: Some(1),
            ..Filter::default()
        };
        assert_eq!(lines(&logs, 2, w1), ["l7", "l9"]);
        let since = Filter {
            since: Some(8.0),
            ..Filter::default()
        };
        assert_eq!(lines(&logs, 100, since), ["l8", "l9"]);
        assert!(lines(&logs, 0, Filter::default()).is_empty());
    }

    #[test]
    fn rings_are_bounded_in_lines_and_bytes_and_in_number() {
        let logs = Logs::default();
        for i in 0..(RING_LINES + 5) {
            logs.push(1, "stdout", &i.to_string(), 0.0);
        }
        let kept = logs.recent(usize::MAX, Filter::default());
        assert_eq!(kept.len(), RING_LINES);
        assert_eq!(kept[0].line, "5");
        // A noisy worker with 16 KiB lines keeps at most MAX_RING_BYTES of them.
        let big = "x".repeat(16 << 10);
        for _ in 0..1000 {
            logs.push(2, "stderr", &big, 0.0);
        }
        let w2 = Filter {
            worker: Some(2),
            ..Filter::default()
        };
        let n = logs.recent(usize::MAX, w2).len();
        assert!(n * (16 << 10) <= MAX_RING_BYTES && n > 100, "{n} lines");
        // Many workers: the oldest rings go, the total stays bounded.
        for w in 0..(MAX_RINGS as u64 + 100) {
            logs.push(10 + w, "stdout", &big, 0.0);
        }
        let s = logs.lock();
        assert_eq!(s.rings.len(), MAX_RINGS);
        let bytes: usize = s.rings.values().map(|r| r.bytes).sum();
        let bound = TOTAL_BYTES.max(MAX_RINGS * MIN_RING_BYTES);
        assert!(bytes <= bound, "{bytes} bytes");
        assert!(!s.rings.contains_key(&1), "the oldest ring went first");
    }

    /// Replaced workers' rings do not keep the larger share they had (reload after reload).
    #[test]
    fn old_rings_shrink_to_the_new_share() {
        let logs = Logs::default();
        let line = "z".repeat(1000);
        for w in 0..1000u64 {
            for _ in 0..(MAX_RING_BYTES / 1000 + 10) {
                logs.push(w, "stdout", &line, 0.0);
            }
        }
        let s = logs.lock();
        let bytes: usize = s.rings.values().map(|r| r.bytes).sum();
        assert!(
            bytes <= TOTAL_BYTES + s.rings.len() * (1000 + OVERHEAD),
            "{bytes} bytes in {} rings",
            s.rings.len()
        );
    }

    #[tokio::test]
    async fn a_follower_gets_new_lines_and_a_slow_one_is_told_what_it_lost() {
        let logs = Logs::default();
        logs.push(1, "stdout", "before", 0.0);
        let f = logs
            .follow(Filter {
                worker: Some(1),
                ..Filter::default()
            })
            .unwrap();
        logs.push(2, "stdout", "other worker", 0.0);
        logs.push(1, "stdout", "after", 0.0);
        match &f.next().await[..] {
            [Next::Line(e)] => assert_eq!(e.line, "after"),
            other => panic!("{other:?}"),
        }
        // Never taken: the queue fills to its bound, the rest is counted.
        let big = "y".repeat(16 << 10);
        let pushed = 200;
        for _ in 0..pushed {
            logs.push(1, "stdout", &big, 0.0);
        }
        logs.push(1, "stdout", "late", 0.0);
        let items = f.next().await;
        let kept = items.iter().filter(|i| matches!(i, Next::Line(_))).count() as u64;
        // The lines the queue held, then one marker for what was lost, then what came later.
        let lost = match &items[items.len() - 2..] {
            [Next::Lost(n), Next::Line(e)] if e.line == "late" => *n,
            other => panic!("{other:?}"),
        };
        assert_eq!(lost + kept, pushed + 1);
        assert!(kept as usize * (16 << 10) <= FOLLOW_BYTES, "{kept}");
        assert_eq!(logs.dropped(), lost);
        // Dropping the follower unregisters it.
        drop(f);
        assert!(logs.lock().followers.is_empty());
    }

    #[test]
    fn followers_are_bounded() {
        let logs = Logs::default();
        let held: Vec<_> = (0..MAX_FOLLOWERS)
            .map(|_| logs.follow(Filter::default()).unwrap())
            .collect();
        assert!(logs.follow(Filter::default()).is_err());
        drop(held);
        assert!(logs.follow(Filter::default()).is_ok());
    }
}
