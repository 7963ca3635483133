//! The replica: a worker's view of the host's cache.
//!
//! [`Cache::get`] answers from the local view when it can (a hash lookup and a reference-count
//! increment: no system call, no copy) and asks the primary's hub otherwise. Large values arrive
//! as sealed memfds and are mapped read-only, so every worker reads the same physical pages.
//! The hub pushes invalidations; the reader task applies them to the view as they arrive. A
//! value read before an invalidation the replica has already applied is returned but not kept.
//!
//! The view is bounded: at most [`LOCAL_MAX_ENTRIES`] entries and [`LOCAL_MAX_BYTES`] bytes
//! (key, private value bytes and [`ENTRY_OVERHEAD`] each; a mapped shared value's pages are the
//! host's, bounded by the hub). Beyond either, entries are evicted by the CLOCK approximation of
//! least recently used: a lookup only sets a flag under the shared lock, and eviction walks the
//! insertion queue, giving a used value one more round and dropping misses and expired entries
//! at once. Known-absent keys are kept no longer than the hub's miss TTL it sends with them.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::CacheError;
use super::hub::HubStats;
use super::proto::{self, CacheOp, GetReply, WireError, WireValue};
use super::store::ENTRY_OVERHEAD;
use crate::{sys, Peer};

/// Most entries a worker's local view keeps.
pub const LOCAL_MAX_ENTRIES: usize = 100_000;
/// Most bytes a worker's local view keeps (keys, private values, [`ENTRY_OVERHEAD`] each).
pub const LOCAL_MAX_BYTES: usize = 256 << 20;

/// A worker's local view, shared by its [`Cache`] handles and its channel reader.
pub(crate) struct LocalView {
    entries: RwLock<Local>,
    /// The highest invalidation number applied.
    seq: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    mapped_bytes: AtomicU64,
    evictions: AtomicU64,
    /// Counts every change that drops entries (invalidation, clear, eviction).
    changes: AtomicU64,
    max_entries: usize,
    max_bytes: usize,
}

impl Default for LocalView {
    fn default() -> Self {
        LocalView::bounded(LOCAL_MAX_ENTRIES, LOCAL_MAX_BYTES)
    }
}

/// The entries, and the queue eviction walks.
#[derive(Default)]
struct Local {
    map: HashMap<Arc<str>, LocalEntry>,
    /// Keys in insertion order with the generation inserted; entries since replaced or removed
    /// are skipped (and compacted away when they pile up).
    queue: VecDeque<(Arc<str>, u64)>,
    generation: u64,
    bytes: usize,
}

struct LocalEntry {
    value: Option<Bytes>,
    /// The value is a mapping of the hub's shared memory (not this process's heap).
    shared: bool,
    expires: Option<Instant>,
    generation: u64,
    charge: usize,
    /// Looked up since eviction last passed it.
    used: AtomicBool,
}

impl LocalEntry {
    fn expired(&self, now: Instant) -> bool {
        self.expires.is_some_and(|t| t <= now)
    }
}

impl Local {
    fn remove(&mut self, key: &str) {
        if let Some(e) = self.map.remove(key) {
            self.bytes -= e.charge;
        }
    }

    /// Inserts (or replaces) `key`; the entry's generation.
    fn insert(
        &mut self,
        key: &str,
        value: Option<Bytes>,
        expires: Option<Instant>,
        private: usize,
        shared: bool,
    ) -> u64 {
        self.remove(key);
        self.generation += 1;
        let key: Arc<str> = Arc::from(key);
        let charge = key
            .len()
            .saturating_add(private)
            .saturating_add(ENTRY_OVERHEAD);
        self.bytes += charge;
        self.queue.push_back((key.clone(), self.generation));
        self.map.insert(
            key,
            LocalEntry {
                value,
                shared,
                expires,
                generation: self.generation,
                charge,
                used: AtomicBool::new(false),
            },
        );
        self.generation
    }

    /// Evicts until within both bounds; how many.
    fn evict(&mut self, max_entries: usize, max_bytes: usize) -> u64 {
        let now = Instant::now();
        let mut evicted = 0;
        while self.map.len() > max_entries || self.bytes > max_bytes {
            let Some((key, generation)) = self.queue.pop_front() else {
                break;
            };
            let Some(e) = self.map.get(&key) else {
                continue;
            };
            if e.generation != generation {
                continue;
            }
            if e.value.is_some() && !e.expired(now) && e.used.swap(false, Ordering::Relaxed) {
                self.queue.push_back((key, generation));
                continue;
            }
            self.remove(&key);
            evicted += 1;
        }
        if self.queue.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.queue
                .retain(|(k, g)| map.get(k).is_some_and(|e| e.generation == *g));
        }
        evicted
    }
}

impl LocalView {
    /// A view of at most `max_entries` entries and `max_bytes` bytes.
    pub(crate) fn bounded(max_entries: usize, max_bytes: usize) -> LocalView {
        LocalView {
            entries: RwLock::default(),
            seq: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            mapped_bytes: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            changes: AtomicU64::new(0),
            max_entries,
            max_bytes,
        }
    }

    /// Applies the hub's invalidation of `keys`.
    pub(crate) fn invalidate(&self, keys: &[String], seq: u64) {
        let mut local = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            local.remove(k);
        }
        self.seq.fetch_max(seq, Ordering::AcqRel);
        self.changes.fetch_add(1, Ordering::Release);
    }

    /// Drops `key` (this process wrote it), without touching the invalidation number.
    pub(super) fn drop_key(&self, key: &str) {
        let mut local = self.entries.write().unwrap_or_else(|p| p.into_inner());
        if local.map.contains_key(key) {
            local.remove(key);
            self.changes.fetch_add(1, Ordering::Release);
        }
    }

    /// Drops everything (the hub's clear).
    pub(crate) fn clear(&self, seq: u64) {
        let mut local = self.entries.write().unwrap_or_else(|p| p.into_inner());
        // The generation counter goes on: a version handed out before is never reused.
        let generation = local.generation;
        *local = Local::default();
        local.generation = generation;
        self.seq.fetch_max(seq, Ordering::AcqRel);
        self.changes.fetch_add(1, Ordering::Release);
    }

    fn lookup(&self, key: &str) -> Option<Option<Bytes>> {
        self.lookup_versioned(key).map(|v| v.value)
    }

    /// A fresh entry, with its generation as its version (unique for the view's life).
    pub(super) fn lookup_versioned(&self, key: &str) -> Option<Versioned> {
        let local = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let e = local.map.get(key)?;
        if e.expired(Instant::now()) {
            return None;
        }
        e.used.store(true, Ordering::Relaxed);
        Some(Versioned {
            value: e.value.clone(),
            version: Some(e.generation),
            shared: e.shared,
            ttl: e
                .expires
                .map(|t| t.saturating_duration_since(Instant::now())),
        })
    }

    /// Keeps a value read at invalidation number `seq`; `private`: the bytes it holds of this
    /// process's own memory (0 for a mapped shared value). Its generation if kept.
    fn keep(
        &self,
        key: &str,
        value: Option<Bytes>,
        private: usize,
        ttl: Option<Duration>,
        seq: u64,
    ) -> Option<u64> {
        let mut local = self.entries.write().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock that invalidations take: an invalidation newer than the value
        // has either been applied (and is seen here) or will be applied after this insert.
        if seq < self.seq.load(Ordering::Acquire) {
            return None;
        }
        // A TTL past the clock's end never expires.
        let expires = ttl.and_then(|t| Instant::now().checked_add(t));
        if local.map.contains_key(key) {
            // The version it replaces is no longer held.
            self.changes.fetch_add(1, Ordering::Release);
        }
        let shared = private == 0 && value.as_ref().is_some_and(|v| !v.is_empty());
        let generation = local.insert(key, value, expires, private, shared);
        let evicted = local.evict(self.max_entries, self.max_bytes);
        if evicted > 0 {
            self.evictions.fetch_add(evicted, Ordering::Relaxed);
            self.changes.fetch_add(1, Ordering::Release);
        }
        local
            .map
            .get(key)
            .map(|e| e.generation)
            .filter(|g| *g == generation)
    }

    /// Entries and bytes held.
    fn held(&self) -> (u64, u64) {
        let local = self.entries.read().unwrap_or_else(|p| p.into_inner());
        (local.map.len() as u64, local.bytes as u64)
    }

    /// Counts a lookup answered here (`hit`) or sent to the hub.
    pub(super) fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// The change counter: see [`CacheClient::changes`](super::CacheClient::changes).
    pub(super) fn changes(&self) -> &AtomicU64 {
        &self.changes
    }

    /// This view's counters beside the hub's.
    pub(super) fn stats(&self, hub: HubStats) -> CacheStats {
        let (local_entries, local_bytes) = self.held();
        CacheStats {
            local_hits: self.hits.load(Ordering::Relaxed),
            local_misses: self.misses.load(Ordering::Relaxed),
            local_entries,
            local_bytes,
            local_evictions: self.evictions.load(Ordering::Relaxed),
            mapped_bytes: self.mapped_bytes.load(Ordering::Relaxed),
            hub,
        }
    }
}

/// The hub's error reply to `op`, as the [`CacheError`] of the kind it names.
pub(super) fn remote_error(text: String, op: &CacheOp) -> CacheError {
    match WireError::decode(&text) {
        Some(wire) => CacheError::from_wire(wire, op.source_call()),
        None => CacheError::Hub(text),
    }
}

/// Takes the reply to a `get` of `key`: a shared value is mapped (private and writable,
/// copy-on-write, when `private_maps`: for a caller that hands it to code that may write), an
/// inline one taken as is, and the value kept in `view` when the hub allows and no newer
/// invalidation came first.
pub(super) fn accept_get(
    view: &LocalView,
    private_maps: bool,
    key: &str,
    msg: &mut crate::Message,
) -> Result<Versioned, CacheError> {
    let reply: GetReply = msg.decode().map_err(|e| CacheError::Channel(Box::new(e)))?;
    let value = if !reply.found {
        None
    } else if let Some(len) = reply.shared_len {
        let fds = msg.take_fds();
        let [fd] = <[_; 1]>::try_from(fds).map_err(|fds| {
            CacheError::BadReply(format!(
                "shared value came with {} descriptors, not 1",
                fds.len()
            ))
        })?;
        let len = usize::try_from(len)
            .map_err(|_| CacheError::BadReply(format!("shared value of {len} bytes")))?;
        let value = if private_maps {
            Bytes::from_owner(sys::map_sealed_private(&fd, len).map_err(CacheError::Shared)?)
        } else {
            Bytes::from_owner(sys::map_sealed(&fd, len).map_err(CacheError::Shared)?)
        };
        view.mapped_bytes.fetch_add(len as u64, Ordering::Relaxed);
        Some(value)
    } else {
        let v = reply.value.unwrap_or(WireValue(Bytes::new()));
        Some(proto::from_node(v, reply.encoding.as_deref()).map_err(CacheError::BadReply)?)
    };
    let mut version = None;
    if reply.local {
        // A mapped shared value's pages are the host's (the hub bounds them).
        let private = match (&value, reply.shared_len) {
            (Some(v), None) => v.len(),
            _ => 0,
        };
        let ttl = reply.ttl_ms.map(Duration::from_millis);
        version = view.keep(key, value.clone(), private, ttl, reply.seq);
    }
    Ok(Versioned {
        value,
        version,
        shared: reply.shared_len.is_some(),
        ttl: reply.ttl_ms.map(Duration::from_millis),
    })
}

/// This worker's cache counters, and the hub's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Lookups answered from this worker's local view.
    pub local_hits: u64,
    /// Lookups that asked the hub.
    pub local_misses: u64,
    /// Keys in the local view (at most [`LOCAL_MAX_ENTRIES`]).
    pub local_entries: u64,
    /// Bytes charged to the local view (at most [`LOCAL_MAX_BYTES`]).
    pub local_bytes: u64,
    /// Entries the local view evicted to stay within its bounds.
    pub local_evictions: u64,
    /// Bytes this worker mapped from shared memfds (shared with every other worker).
    pub mapped_bytes: u64,
    /// The hub's counters.
    pub hub: HubStats,
}

/// A value with its version in the local view ([`CacheClient`](super::CacheClient)'s answers).
#[derive(Clone, Debug)]
pub struct Versioned {
    /// The value; `None` if the key does not exist.
    pub value: Option<Bytes>,
    /// Its version in the local view (`None`: not kept there). Unique for the life of the
    /// view: while [`CacheClient::local_version`](super::CacheClient::local_version) gives the
    /// same number, the value is the same.
    pub version: Option<u64>,
    /// The value maps the hub's shared memory (copy-on-write where the cache was opened for
    /// a caller that may write: see [`crate::cache::channel`]), rather than this process's heap.
    pub shared: bool,
    /// How long the value may still be used (`None`: until it is invalidated).
    pub ttl: Option<Duration>,
}

/// A worker's handle on the host-shared cache; from [`crate::Worker::cache`]. Cheap to clone.
#[derive(Clone)]
pub struct Cache {
    view: Arc<LocalView>,
    peer: Peer,
}

impl Cache {
    pub(crate) fn new(view: Arc<LocalView>, peer: Peer) -> Cache {
        Cache { view, peer }
    }

    /// The value of `key`: from the local view at memory speed, or from the primary's hub (which
    /// loads it from its source once for the whole host). `Ok(None)` if the key does not exist.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        if let Some(v) = self.get_local(key) {
            return Ok(v);
        }
        self.view.misses.fetch_add(1, Ordering::Relaxed);
        let mut msg = self.call(&CacheOp::Get { key: key.into() }).await?;
        Ok(accept_get(&self.view, false, key, &mut msg)?.value)
    }

    /// The value of `key` if the local view has it (`Some(None)`: known not to exist), without
    /// asking the hub. Never waits.
    pub fn get_local(&self, key: &str) -> Option<Option<Bytes>> {
        let v = self.view.lookup(key)?;
        self.view.hits.fetch_add(1, Ordering::Relaxed);
        Some(v)
    }

    /// Whether the local view holds `key` (fresh), without counting a lookup.
    pub fn is_local(&self, key: &str) -> bool {
        self.view.lookup(key).is_some()
    }

    /// Stores a value through the hub (into the source), invalidating it in every worker.
    pub async fn set(
        &self,
        key: &str,
        value: impl Into<Bytes>,
        ttl: Option<Duration>,
    ) -> Result<(), CacheError> {
        let op = CacheOp::Set {
            key: key.into(),
            value: WireValue(value.into()),
            encoding: None,
            ttl_ms: ttl.map(|t| t.as_millis().min(u64::MAX as u128) as u64),
        };
        // This process reads its own write: the old value goes now, and again once answered (a
        // get in flight meanwhile may have kept it; the hub's invalidation may come later).
        self.view.drop_key(key);
        self.call(&op).await?;
        self.view.drop_key(key);
        Ok(())
    }

    /// Deletes a key through the hub (from the source, and from every worker's view); whether it
    /// existed.
    pub async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        self.view.drop_key(key);
        let msg = self.call(&CacheOp::Delete { key: key.into() }).await?;
        self.view.drop_key(key);
        msg.decode().map_err(|e| CacheError::Channel(Box::new(e)))
    }

    /// Waits until the hub's warm-up is done, at most `timeout`.
    pub async fn ready(&self, timeout: Duration) -> Result<(), CacheError> {
        let op = CacheOp::Ready {
            timeout_ms: Some(timeout.as_millis().min(u128::from(u64::MAX)) as u64),
        };
        // The hub answers (ready or not) within that; the channel waits 5 s longer (a loaded
        // host may be that slow to deliver it).
        let msg = self
            .call_within(&op, timeout.saturating_add(Duration::from_secs(5)))
            .await?;
        let warm: bool = msg.decode().map_err(|e| CacheError::Channel(Box::new(e)))?;
        if !warm {
            return Err(CacheError::NotReady(timeout));
        }
        Ok(())
    }

    /// This worker's counters and the hub's.
    pub async fn stats(&self) -> Result<CacheStats, CacheError> {
        let msg = self.call(&CacheOp::Stats).await?;
        let hub: HubStats = msg.decode().map_err(|e| CacheError::Channel(Box::new(e)))?;
        Ok(self.view.stats(hub))
    }

    async fn call(&self, op: &CacheOp) -> Result<crate::Message, CacheError> {
        self.call_within(op, self.peer.request_timeout()).await
    }

    /// Asks the hub; its error reply becomes the [`CacheError`] of the kind it names.
    async fn call_within(
        &self,
        op: &CacheOp,
        timeout: Duration,
    ) -> Result<crate::Message, CacheError> {
        match self.peer.cache_call(op, timeout).await {
            Ok(m) => Ok(m),
            Err(crate::Error::Remote(text)) => Err(remote_error(text, op)),
            Err(e) => Err(CacheError::Channel(Box::new(e))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keep(view: &LocalView, key: &str, value: Option<&'static str>) {
        let value = value.map(|v| Bytes::from_static(v.as_bytes()));
        let len = value.as_ref().map_or(0, Bytes::len);
        view.keep(key, value, len, None, 0);
    }

    #[test]
    fn the_view_is_bounded_in_entries_and_evicts_misses_and_unused_values() {
        let view = LocalView::bounded(3, 1 << 20);
        keep(&view, "gone", None);
        keep(&view, "a", Some("1"));
        keep(&view, "b", Some("2"));
        assert_eq!(view.lookup("gone"), Some(None));
        assert_eq!(view.lookup("a"), Some(Some(Bytes::from_static(b"1"))));
        keep(&view, "c", Some("3")); // a miss gets no second round, used or not
        assert_eq!(view.lookup("gone"), None);
        keep(&view, "d", Some("4")); // "a" was used: "b" goes
        assert_eq!(view.lookup("b"), None);
        assert!(view.lookup("a").is_some() && view.lookup("c").is_some());
        assert_eq!(view.held().0, 3);
        for i in 0..10_000 {
            keep(
                &view,
                &format!("k{i}"),
                if i % 2 == 0 { None } else { Some("v") },
            );
            assert!(view.held().0 <= 3);
        }
        let local = view.entries.read().unwrap();
        assert!(local.queue.len() <= 2 * local.map.len() + 1024);
        assert_eq!(view.evictions.load(Ordering::Relaxed), 10_002);
    }

    #[test]
    fn the_view_is_bounded_in_bytes_and_a_stale_value_is_not_kept() {
        let one = 1 + 5 + ENTRY_OVERHEAD;
        let view = LocalView::bounded(100, 2 * one);
        keep(&view, "a", Some("12345"));
        keep(&view, "b", Some("12345"));
        keep(&view, "c", Some("12345"));
        assert_eq!(view.held(), (2, 2 * one as u64));
        view.invalidate(&["b".into()], 5);
        assert_eq!(view.held(), (1, one as u64));
        view.keep("b", Some(Bytes::from_static(b"old")), 3, None, 4);
        assert_eq!(
            view.lookup("b"),
            None,
            "read before an applied invalidation"
        );
        view.clear(6);
        assert_eq!(view.held(), (0, 0));
    }
}
