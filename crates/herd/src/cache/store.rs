//! The hub's memory: entries and their byte accounting, the in-flight map that makes loads
//! single-flight, the invalidation sequence number and epoch, and the counters.
//!
//! Everything here sits behind one mutex and never waits while holding it. The store decides
//! what is fresh, what may be served stale, and what is kept; loading is the hub's business.

use std::collections::{HashMap, HashSet};
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
        })))
    }

    /// The bytes (for a shared value, the hub's mapping: no copy).
    pub(super) fn bytes(&self) -> Bytes {
        match self {
            Value::Inline(b) => b.clone(),
            Value::Shared(s) => s.map.clone(),
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

struct Entry {
    /// `None`: the key is known not to exist.
    value: Option<Value>,
    expires: Option<Instant>,
    /// When the source last confirmed it.
    verified: Instant,
    epoch: u64,
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
    entries: HashMap<String, Entry>,
    inflight: HashMap<String, watch::Receiver<Option<LoadResult>>>,
    /// In-flight keys invalidated during their load: their result is served but not kept.
    dirty: HashSet<String>,
    /// Counts invalidations; pushed with each, and stamped on every value handed out.
    seq: u64,
    /// Bumped when everything may have changed: older entries must be confirmed again.
    epoch: u64,
    tracking: bool,
    bytes: usize,
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
}

/// What the entries hold, for the hub's stats.
pub(super) struct Held {
    pub(super) entries: u64,
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
    max_stale: Duration,
}

impl Store {
    pub(super) fn new(config: &CacheConfig) -> Store {
        Store {
            state: Mutex::new(State {
                entries: HashMap::new(),
                inflight: HashMap::new(),
                dirty: HashSet::new(),
                seq: 0,
                epoch: 0,
                tracking: true,
                bytes: 0,
            }),
            counters: Counters::default(),
            max_bytes: config.max_bytes,
            max_stale: config.max_stale,
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
                return Lookup::Hit(found(&st, e, now, false));
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
            None => (None, None),
        };
        let entry = Entry {
            value,
            expires: ttl.map(|t| now + t),
            verified: now,
            epoch: st.epoch,
        };
        let dirty = st.dirty.remove(key);
        let f = found(st, &entry, now, false);
        let len = entry.value.as_ref().map_or(0, Value::len);
        let old = st
            .entries
            .get(key)
            .and_then(|e| e.value.as_ref())
            .map_or(0, Value::len);
        let fits = st.bytes - old + len <= self.max_bytes;
        if dirty {
            // Changed while loading: this value may already be old. Serve it to the callers
            // that asked before the change, keep nothing, and let no worker keep it.
            return Found { local: false, ..f };
        }
        if fits {
            st.bytes = st.bytes - old + len;
            st.entries.insert(key.to_string(), entry);
        } else {
            tracing::warn!(key, len, "cache is full: value served but not kept");
        }
        f
    }

    /// Drops `keys` (loads in flight for them will not be kept); the new sequence number.
    pub(super) fn invalidate(&self, keys: &[String]) -> u64 {
        let seq = {
            let mut st = self.lock();
            for k in keys {
                if let Some(e) = st.entries.remove(k) {
                    st.bytes -= e.value.as_ref().map_or(0, Value::len);
                }
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

fn found(st: &State, e: &Entry, now: Instant, stale: bool) -> Found {
    Found {
        value: e.value.clone(),
        ttl: e.expires.map(|t| t.saturating_duration_since(now)),
        seq: st.seq,
        local: st.tracking && !stale,
        stale,
    }
}
