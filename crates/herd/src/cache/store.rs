//! The hub's memory: entries and their byte accounting, the in-flight map that makes loads
//! single-flight, the invalidation sequence number and epoch, and the counters.
//!
//! Everything here sits behind one mutex and never waits while holding it. The store decides
//! what is fresh, what may be served stale, and what is kept; loading is the hub's business.
//!
//! **Bounds.** Every entry, a known-absent key included, is charged its key, its value and
//! [`ENTRY_OVERHEAD`] against [`CacheConfig::max_bytes`], and counts against
//! [`CacheConfig::max_entries`], a known-absent key also against [`CacheConfig::max_misses`].
//! When one is exceeded, known-absent keys go first (oldest first), then values, least recently used first: two recency orders (`BTreeMap`s from a
//! use tick to the key, the key shared with the map by `Arc<str>`), so a lookup, an insert and
//! an eviction are O(log n). A known-absent key lives at most [`CacheConfig::miss_ttl`].

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::Instant;

use super::config::CacheConfig;
use super::error::CacheError;
use super::source::Loaded;
use crate::sys;

/// A cached value: inline bytes, or a sealed memfd with the hub's own read-only mapping.
#[derive(Clone)]
pub(super) enum Value {
    Inline(Bytes),
    Shared(Arc<SharedValue>),
}

/// A value in a sealed memfd, and the hub's read-only mapping of it.
pub(super) struct SharedValue {
    fd: OwnedFd,
    map: Bytes,
    /// Its reply to Node-json workers, once made (`node_text`): it lives as long as the value.
    node_text: super::node_text::TextCell,
}

impl SharedValue {
    /// The sealed memfd (workers map it).
    pub(super) fn fd(&self) -> &OwnedFd {
        &self.fd
    }
}

impl Value {
    /// A loaded value as the hub keeps it: in a sealed memfd when longer than `share_above`.
    pub(super) fn new(key: &str, value: Bytes, share_above: usize) -> Result<Value, CacheError> {
        if value.len() <= share_above {
            return Ok(Value::Inline(value));
        }
        let fd =
            sys::sealed_memfd(&format!("herd-cache:{key}"), &value).map_err(CacheError::Shared)?;
        let map = sys::map_sealed(&fd, value.len()).map_err(CacheError::Shared)?;
        Ok(Value::Shared(Arc::new(SharedValue {
            fd,
            map: Bytes::from_owner(map),
            node_text: Default::default(),
        })))
    }

    /// The bytes (for a shared value, the hub's mapping: no copy).
    pub(super) fn bytes(&self) -> Bytes {
        match self {
            Value::Inline(b) => b.clone(),
            Value::Shared(s) => s.map.clone(),
        }
    }

    /// Where its reply to Node-json workers is kept once made: a value in a memfd has one.
    pub(super) fn node_text(&self) -> Option<&super::node_text::TextCell> {
        match self {
            Value::Inline(_) => None,
            Value::Shared(s) => Some(&s.node_text),
        }
    }

    pub(super) fn len(&self) -> usize {
        match self {
            Value::Inline(b) => b.len(),
            Value::Shared(s) => s.map.len(),
        }
    }
}

/// A value just loaded, with how long the source says it lives; `None`: the key does not exist.
pub(super) type Fetched = Option<(Value, Option<Duration>)>;

/// Makes a [`Fetched`] of what the source loaded.
pub(super) fn fetched(
    key: &str,
    loaded: Option<Loaded>,
    config: &CacheConfig,
) -> Result<Fetched, CacheError> {
    let Some(l) = loaded else { return Ok(None) };
    check_len(key, l.value.len(), config.max_value)?;
    Ok(Some((Value::new(key, l.value, config.share_above)?, l.ttl)))
}

/// `len` against the hub's [`CacheConfig::max_value`].
pub(super) fn check_len(key: &str, len: usize, max: usize) -> Result<(), CacheError> {
    if len > max {
        return Err(CacheError::TooLarge {
            key: key.into(),
            len,
            max,
        });
    }
    Ok(())
}

/// What one entry costs beyond its key and value bytes, as charged to
/// [`CacheConfig::max_bytes`]: an estimate of the hub's bookkeeping (the map's slot and control
/// byte at its load factor, the shared key's reference count, the recency order's node share,
/// allocator rounding).
pub const ENTRY_OVERHEAD: usize = 256;

struct Entry {
    /// `None`: the key is known not to exist.
    value: Option<Value>,
    expires: Option<Instant>,
    /// When the source last confirmed it.
    verified: Instant,
    epoch: u64,
    /// Bytes charged for it: key, value, [`ENTRY_OVERHEAD`].
    charge: usize,
    /// Its place in its recency order.
    tick: u64,
}

impl Entry {
    fn is_miss(&self) -> bool {
        self.value.is_none()
    }
}

/// What a lookup found.
#[derive(Clone)]
pub(super) struct Found {
    pub(super) value: Option<Value>,
    pub(super) ttl: Option<Duration>,
    /// The invalidation sequence number when it was read.
    pub(super) seq: u64,
    /// Whether a worker may keep it.
    pub(super) local: bool,
    pub(super) stale: bool,
}

/// The outcome of a load, shared by everyone waiting for it.
pub(super) type LoadResult = Result<Found, Arc<CacheError>>;

/// Where a lookup stands.
pub(super) enum Lookup {
    /// Fresh in memory.
    Hit(Found),
    /// Another lookup's load is under way: wait for its result.
    Wait(watch::Receiver<Option<LoadResult>>),
    /// This lookup loads: publish the result on the sender (through [`Store::finish`]).
    Load(
        watch::Sender<Option<LoadResult>>,
        watch::Receiver<Option<LoadResult>>,
    ),
}

struct State {
    entries: HashMap<Arc<str>, Entry>,
    /// Known-absent keys by last use, oldest first: evicted first.
    misses: BTreeMap<u64, Arc<str>>,
    /// Keys with values by last use, oldest first.
    values: BTreeMap<u64, Arc<str>>,
    /// The next use tick.
    tick: u64,
    inflight: HashMap<String, watch::Receiver<Option<LoadResult>>>,
    /// In-flight keys invalidated during their load: their result is served but not kept.
    dirty: HashSet<String>,
    /// Counts invalidations; pushed with each, and stamped on every value handed out.
    seq: u64,
    /// Bumped when everything may have changed: older entries must be confirmed again.
    epoch: u64,
    tracking: bool,
    /// Charged for every entry: keys, values, overhead.
    bytes: usize,
}

impl State {
    fn order(&mut self, miss: bool) -> &mut BTreeMap<u64, Arc<str>> {
        if miss {
            &mut self.misses
        } else {
            &mut self.values
        }
    }

    fn next_tick(&mut self) -> u64 {
        self.tick += 1;
        self.tick
    }

    /// Marks `key` used now.
    fn touch(&mut self, key: &str) {
        let tick = self.next_tick();
        let Some((k, e)) = self.entries.get_key_value(key) else {
            return;
        };
        let (k, miss, old) = (k.clone(), e.is_miss(), e.tick);
        self.order(miss).remove(&old);
        self.order(miss).insert(tick, k);
        if let Some(e) = self.entries.get_mut(key) {
            e.tick = tick;
        }
    }

    /// Removes `key`'s entry, uncharged and out of its order.
    fn remove(&mut self, key: &str) -> Option<Entry> {
        let e = self.entries.remove(key)?;
        self.bytes -= e.charge;
        self.order(e.is_miss()).remove(&e.tick);
        Some(e)
    }

    /// Inserts an entry (replacing any for its key), charged and at the newest end of its order.
    fn insert(&mut self, key: &str, mut entry: Entry) {
        self.remove(key);
        entry.tick = self.next_tick();
        let key: Arc<str> = Arc::from(key);
        self.bytes += entry.charge;
        self.order(entry.is_miss()).insert(entry.tick, key.clone());
        self.entries.insert(key, entry);
    }

    /// Evicts until within every bound: misses first, then least recently used values; how
    /// many.
    fn evict(&mut self, max_bytes: usize, max_entries: usize, max_misses: usize) -> u64 {
        let mut evicted = 0;
        while self.misses.len() > max_misses {
            let Some((_, k)) = self.misses.first_key_value() else {
                break;
            };
            let oldest = k.clone();
            self.remove(&oldest);
            evicted += 1;
        }
        while self.bytes > max_bytes || self.entries.len() > max_entries {
            let oldest = match self.misses.first_key_value() {
                Some((_, k)) => k.clone(),
                None => match self.values.first_key_value() {
                    Some((_, k)) => k.clone(),
                    None => break,
                },
            };
            self.remove(&oldest);
            evicted += 1;
        }
        evicted
    }
}

/// The hub's counters that are not derived from the entries.
#[derive(Default)]
pub(super) struct Counters {
    pub(super) hits: AtomicU64,
    pub(super) misses: AtomicU64,
    pub(super) loads: AtomicU64,
    pub(super) coalesced: AtomicU64,
    pub(super) stale_served: AtomicU64,
    pub(super) errors: AtomicU64,
    pub(super) invalidations: AtomicU64,
    pub(super) evictions: AtomicU64,
}

/// What the entries hold, for the hub's stats.
pub(super) struct Held {
    pub(super) entries: u64,
    pub(super) bytes: u64,
    pub(super) misses_cached: u64,
    pub(super) shared_bytes: u64,
    pub(super) shared_values: u64,
    pub(super) inline_bytes: u64,
    pub(super) tracking: bool,
}

/// The hub's memory. See the [module docs](self).
pub(super) struct Store {
    state: Mutex<State>,
    pub(super) counters: Counters,
    max_bytes: usize,
    max_entries: usize,
    max_misses: usize,
    max_stale: Duration,
    miss_ttl: Duration,
}

impl Store {
    pub(super) fn new(config: &CacheConfig) -> Store {
        Store {
            state: Mutex::new(State {
                entries: HashMap::new(),
                misses: BTreeMap::new(),
                values: BTreeMap::new(),
                tick: 0,
                inflight: HashMap::new(),
                dirty: HashSet::new(),
                seq: 0,
                epoch: 0,
                tracking: true,
                bytes: 0,
            }),
            counters: Counters::default(),
            max_bytes: config.max_bytes,
            max_entries: config.max_entries,
            max_misses: config.max_misses,
            max_stale: config.max_stale,
            miss_ttl: config.miss_ttl,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind (maps and counters): keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The current invalidation sequence number.
    pub(super) fn seq(&self) -> u64 {
        self.lock().seq
    }

    /// Looks `key` up: a fresh entry, a load to wait for, or a load to make (registered in flight
    /// before the lock is released, so concurrent lookups join it).
    pub(super) fn lookup(&self, key: &str) -> Lookup {
        let mut st = self.lock();
        let now = Instant::now();
        if let Some(e) = st.entries.get(key) {
            if st.tracking && e.epoch == st.epoch && !matches!(e.expires, Some(t) if t <= now) {
                self.counters.hits.fetch_add(1, Ordering::Relaxed);
                let f = found(&st, e, now, false);
                st.touch(key);
                return Lookup::Hit(f);
            }
        }
        self.counters.misses.fetch_add(1, Ordering::Relaxed);
        if let Some(rx) = st.inflight.get(key) {
            self.counters.coalesced.fetch_add(1, Ordering::Relaxed);
            return Lookup::Wait(rx.clone());
        }
        let (tx, rx) = watch::channel(None);
        st.inflight.insert(key.to_string(), rx.clone());
        st.dirty.remove(key);
        Lookup::Load(tx, rx)
    }

    /// Ends the load of `key`: no longer in flight, its result published to its waiters.
    pub(super) fn finish(
        &self,
        key: &str,
        tx: watch::Sender<Option<LoadResult>>,
        result: LoadResult,
    ) {
        if result.is_err() {
            self.counters.errors.fetch_add(1, Ordering::Relaxed);
        }
        self.lock().inflight.remove(key);
        let _ = tx.send(Some(result));
    }

    /// The source failed to load `key`: what is cached, if confirmed within `max_stale`.
    pub(super) fn stale(&self, key: &str) -> Option<Found> {
        let st = self.lock();
        let now = Instant::now();
        let entry = st.entries.get(key)?;
        if now.duration_since(entry.verified) > self.max_stale {
            return None;
        }
        self.counters.stale_served.fetch_add(1, Ordering::Relaxed);
        Some(found(&st, entry, now, true))
    }

    /// Keeps a freshly loaded value (unless invalidated during its load, or too big to keep).
    pub(super) fn keep(&self, key: &str, value: Fetched) -> Found {
        let mut st = self.lock();
        self.keep_locked(&mut st, key, value)
    }

    /// Keeps a value loaded by warm-up, unless a lookup loaded it already or is loading it.
    pub(super) fn keep_warm(&self, key: &str, value: Fetched) {
        let mut st = self.lock();
        if st.inflight.contains_key(key) || st.entries.contains_key(key) {
            return;
        }
        self.keep_locked(&mut st, key, value);
    }

    fn keep_locked(&self, st: &mut State, key: &str, value: Fetched) -> Found {
        let now = Instant::now();
        let (value, ttl) = match value {
            Some((v, ttl)) => (Some(v), ttl),
            // A known-absent key is kept a short while only (or less, if the source says so).
            None => (None, Some(self.miss_ttl)),
        };
        let len = value.as_ref().map_or(0, Value::len);
        let entry = Entry {
            value,
            expires: ttl.map(|t| crate::deadline::after(now, t)),
            verified: now,
            epoch: st.epoch,
            charge: charge(key.len(), len),
            tick: 0,
        };
        let dirty = st.dirty.remove(key);
        let f = found(st, &entry, now, false);
        if dirty {
            // Changed while loading: this value may already be old. Serve it to the callers
            // that asked before the change, keep nothing, and let no worker keep it.
            return Found { local: false, ..f };
        }
        if entry.charge > self.max_bytes {
            tracing::warn!(key, len, "value larger than the cache: served but not kept");
            return f;
        }
        st.insert(key, entry);
        let evicted = st.evict(self.max_bytes, self.max_entries, self.max_misses);
        if evicted > 0 {
            self.counters
                .evictions
                .fetch_add(evicted, Ordering::Relaxed);
        }
        f
    }

    /// Drops `keys` (loads in flight for them will not be kept); the new sequence number.
    pub(super) fn invalidate(&self, keys: &[String]) -> u64 {
        let seq = {
            let mut st = self.lock();
            for k in keys {
                st.remove(k);
                if st.inflight.contains_key(k) {
                    st.dirty.insert(k.clone());
                }
            }
            st.seq += 1;
            st.seq
        };
        self.counters
            .invalidations
            .fetch_add(keys.len() as u64, Ordering::Relaxed);
        seq
    }

    /// Everything may have changed: entries must be confirmed again, loads in flight are not
    /// kept, and tracking is set when given; the new sequence number.
    pub(super) fn clear(&self, tracking: Option<bool>) -> u64 {
        let mut st = self.lock();
        st.epoch += 1;
        st.seq += 1;
        let keys: Vec<String> = st.inflight.keys().cloned().collect();
        st.dirty.extend(keys);
        if let Some(t) = tracking {
            st.tracking = t;
        }
        st.seq
    }

    /// What the entries hold.
    pub(super) fn held(&self) -> Held {
        let st = self.lock();
        let mut h = Held {
            entries: st.entries.len() as u64,
            bytes: st.bytes as u64,
            misses_cached: st.misses.len() as u64,
            shared_bytes: 0,
            shared_values: 0,
            inline_bytes: 0,
            tracking: st.tracking,
        };
        for e in st.entries.values() {
            match &e.value {
                Some(Value::Shared(v)) => {
                    h.shared_bytes += v.map.len() as u64;
                    h.shared_values += 1;
                }
                Some(Value::Inline(b)) => h.inline_bytes += b.len() as u64,
                None => {}
            }
        }
        h
    }
}

/// What an entry of a key of `key_len` bytes and a value of `value_len` bytes is charged.
pub(super) fn charge(key_len: usize, value_len: usize) -> usize {
    key_len
        .saturating_add(value_len)
        .saturating_add(ENTRY_OVERHEAD)
}

fn found(st: &State, e: &Entry, now: Instant, stale: bool) -> Found {
    Found {
        value: e.value.clone(),
        ttl: e.expires.map(|t| t.saturating_duration_since(now)),
        seq: st.seq,
        local: st.tracking && !stale,
        stale,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(max_bytes: usize, max_entries: usize) -> Store {
        Store::new(&CacheConfig {
            max_bytes,
            max_entries,
            miss_ttl: Duration::from_millis(50),
            ..CacheConfig::default()
        })
    }

    fn value(len: usize) -> Fetched {
        Some((Value::Inline(Bytes::from(vec![b'v'; len])), None))
    }

    fn held(s: &Store, key: &str) -> bool {
        s.lock().entries.contains_key(key)
    }

    /// Looks `key` up; a hit, or the load it starts ended with nothing kept.
    fn hit(s: &Store, key: &str) -> bool {
        match s.lookup(key) {
            Lookup::Hit(_) => true,
            Lookup::Load(tx, _) => {
                s.finish(key, tx, Err(Arc::new(CacheError::Hub("test".into()))));
                false
            }
            Lookup::Wait(_) => false,
        }
    }

    #[test]
    fn every_entry_is_charged_its_key_value_and_overhead() {
        let s = store(1 << 20, 100);
        s.keep("abc", value(10));
        s.keep("absent", None);
        let h = s.held();
        assert_eq!(h.entries, 2);
        assert_eq!(h.misses_cached, 1);
        assert_eq!(h.bytes, (3 + 10 + 6 + 2 * ENTRY_OVERHEAD) as u64);
        s.keep("abc", value(20));
        assert_eq!(s.held().bytes, (3 + 20 + 6 + 2 * ENTRY_OVERHEAD) as u64);
        s.invalidate(&["abc".into(), "absent".into()]);
        let h = s.held();
        assert_eq!((h.entries, h.bytes, h.misses_cached), (0, 0, 0));
    }

    #[test]
    fn misses_are_evicted_first_then_the_least_recently_used() {
        let s = store(1 << 20, 3);
        s.keep("a", value(1));
        s.keep("b", value(1));
        s.keep("gone", None);
        assert!(hit(&s, "a")); // "b" is now the least recently used value
        s.keep("c", value(1));
        assert!(!held(&s, "gone"), "the miss goes first");
        s.keep("d", value(1));
        assert!(!held(&s, "b"), "then the least recently used");
        assert!(held(&s, "a") && held(&s, "c") && held(&s, "d"));
        // A miss never pushes a value out: with no room, it is the miss that goes.
        s.keep("absent", None);
        assert!(!held(&s, "absent"));
        assert_eq!(s.counters.evictions.load(Ordering::Relaxed), 3);

        // The byte budget evicts the same way.
        let one = charge(1, 100);
        let s = store(2 * one, 100);
        s.keep("x", value(100));
        s.keep("y", value(100));
        assert!(hit(&s, "x"));
        s.keep("z", value(100));
        assert!(held(&s, "x") && !held(&s, "y") && held(&s, "z"));
        assert_eq!(s.held().bytes, 2 * one as u64);
        // Larger than the whole budget: served, not kept, nothing evicted.
        let f = s.keep("huge", value(3 * one));
        assert!(f.value.is_some() && !held(&s, "huge") && held(&s, "z"));
    }

    #[test]
    fn known_absent_keys_are_capped_apart_from_values() {
        let s = Store::new(&CacheConfig {
            max_entries: 100,
            max_misses: 10,
            ..CacheConfig::default()
        });
        s.keep("v", value(1));
        for i in 0..50 {
            s.keep(&format!("absent-{i}"), None);
        }
        let h = s.held();
        assert_eq!((h.entries, h.misses_cached), (11, 10));
        assert!(held(&s, "v") && held(&s, "absent-49") && !held(&s, "absent-39"));
        assert_eq!(s.counters.evictions.load(Ordering::Relaxed), 40);
    }

    #[test]
    fn a_miss_expires_after_miss_ttl_and_tells_workers_so() {
        let s = store(1 << 20, 100);
        let f = s.keep("absent", None);
        assert!(f.ttl.is_some_and(|t| t <= Duration::from_millis(50)));
        assert!(hit(&s, "absent"));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while hit(&s, "absent") {
            assert!(
                std::time::Instant::now() < deadline,
                "the miss never expired"
            );
            std::thread::yield_now();
        }
    }
}
