//! The hub: the primary's side of the cache, which owns the data for the whole host.
//!
//! - **Single-flight.** Any number of concurrent lookups of one key (from the primary or from
//!   every worker) make one load from the [`Source`]; the others wait for it and are counted as
//!   coalesced waits. The load runs in its own task, so a caller that gives up does not cancel it.
//! - **Sharing.** A value larger than [`CacheConfig::share_above`] is written once into a sealed
//!   memfd; workers on the binary codec receive its descriptor and map it read-only, so the host
//!   holds one copy however many workers read it.
//! - **Freshness.** Invalidations from the source (Redis's tracking) remove entries and are
//!   pushed to every worker, numbered so a worker never keeps a value read before an
//!   invalidation it has already seen. While the source's tracking is down, nothing is fresh:
//!   every lookup tries the source, and workers keep no local copies.
//! - **Outages.** When the source fails, a value cached within [`CacheConfig::max_stale`] is
//!   served, marked stale; only keys never loaded (or too old) fail.
//! - **Warm-up.** [`Hub::start`] loads configured keys and patterns in pipelined batches, with a
//!   progress bar on a terminal and progress log lines otherwise, retrying while the source is
//!   down; [`Hub::ready`] waits for it.

use std::collections::{HashMap, HashSet};
use std::io::IsTerminal;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::proto::{self, CacheOp, GetReply, NodeGetReply, WireValue};
use super::source::{Invalidation, Loaded, Source, SourceError};
use crate::backoff::Backoff;
use crate::ipc::Request;
use crate::{sys, Codec, WorkerId};

/// How the hub behaves. Every field has a sensible default.
#[derive(Clone, Debug)]
pub struct CacheConfig {
    /// Values larger than this many bytes are shared as sealed memfds (default 64 KiB).
    pub share_above: usize,
    /// Largest value the hub accepts from its source (default 1 GiB); larger ones are errors.
    pub max_value: usize,
    /// Most bytes the hub keeps (default 8 GiB). A value that does not fit is served but not
    /// kept.
    pub max_bytes: usize,
    /// How long after it was last confirmed by the source a value may still be served while the
    /// source is unreachable (default 5 minutes).
    pub max_stale: Duration,
    /// How long one load may take before its waiters give up (default 30 s).
    pub load_timeout: Duration,
    /// Keys to load at start.
    pub warm_keys: Vec<String>,
    /// Patterns (Redis `MATCH` globs) whose keys are loaded at start.
    pub warm_patterns: Vec<String>,
    /// Keys per pipelined batch during warm-up (default 256).
    pub warm_batch: usize,
    /// How warm-up progress is shown.
    pub progress: Progress,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            share_above: 64 * 1024,
            max_value: 1 << 30,
            max_bytes: 8 << 30,
            max_stale: Duration::from_secs(300),
            load_timeout: Duration::from_secs(30),
            warm_keys: Vec::new(),
            warm_patterns: Vec::new(),
            warm_batch: 256,
            progress: Progress::Auto,
        }
    }
}

/// How warm-up progress is shown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    /// A bar when stderr is a terminal, log lines otherwise.
    Auto,
    /// Always a bar (on stderr).
    Bar,
    /// Always log lines (`tracing` at info level).
    Log,
    /// Nothing.
    Off,
}

/// Why a cache operation failed.
#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    /// The source failed and nothing usable is cached.
    #[error("cannot load {key:?}")]
    Source {
        /// The key.
        key: String,
        /// Why.
        #[source]
        source: SourceError,
    },
    /// The value is larger than [`CacheConfig::max_value`].
    #[error("value of {key:?} is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// The key.
        key: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The load did not finish in time.
    #[error("loading {0:?} took longer than {1:?}")]
    Timeout(String, Duration),
    /// A shared value could not be created or mapped.
    #[error("shared memory")]
    Shared(#[source] std::io::Error),
    /// The hub (primary) answered with an error.
    #[error("cache hub: {0}")]
    Hub(String),
    /// The channel to the primary failed.
    #[error("cache call failed")]
    Channel(#[source] Box<crate::Error>),
}

/// The hub's counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HubStats {
    /// Lookups answered from the hub's memory.
    pub hits: u64,
    /// Lookups that needed a load (or joined one).
    pub misses: u64,
    /// Loads from the source (one per key per miss wave, plus warm-up loads).
    pub loads: u64,
    /// Lookups that waited for another lookup's load instead of loading.
    pub coalesced: u64,
    /// Values served stale because the source failed.
    pub stale_served: u64,
    /// Lookups that failed.
    pub errors: u64,
    /// Keys invalidated by the source or through the hub.
    pub invalidations: u64,
    /// Entries held (including known-absent keys).
    pub entries: u64,
    /// Bytes held in sealed memfds (one copy for the whole host).
    pub shared_bytes: u64,
    /// Values held in sealed memfds.
    pub shared_values: u64,
    /// Bytes held inline (sent by copy to workers that ask).
    pub inline_bytes: u64,
    /// Calls the source made to its backend (Redis commands, file reads).
    pub source_calls: u64,
    /// Whether the source's invalidation tracking is up.
    pub tracking: bool,
    /// Whether warm-up is done.
    pub warm: bool,
}

/// The longest a worker's `ready` call is held by the hub.
const MAX_READY_WAIT: Duration = Duration::from_secs(600);

/// A cached value: inline bytes, or a sealed memfd with the hub's own read-only mapping.
#[derive(Clone)]
pub(crate) enum Value {
    Inline(Bytes),
    Shared(Arc<SharedValue>),
}

pub(crate) struct SharedValue {
    fd: OwnedFd,
    map: Bytes,
}

impl Value {
    fn bytes(&self) -> Bytes {
        match self {
            Value::Inline(b) => b.clone(),
            Value::Shared(s) => s.map.clone(),
        }
    }
    fn len(&self) -> usize {
        match self {
            Value::Inline(b) => b.len(),
            Value::Shared(s) => s.map.len(),
        }
    }
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
pub(crate) struct Found {
    pub value: Option<Value>,
    pub ttl: Option<Duration>,
    pub seq: u64,
    pub local: bool,
    pub stale: bool,
}

type LoadResult = Result<Found, Arc<CacheError>>;

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

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    loads: AtomicU64,
    coalesced: AtomicU64,
    stale_served: AtomicU64,
    errors: AtomicU64,
    invalidations: AtomicU64,
}

/// A notice for every worker.
#[derive(Clone, Debug)]
pub(crate) enum Push {
    Invalidate { keys: Vec<String>, seq: u64 },
    Clear { seq: u64 },
}

struct Inner {
    source: Arc<dyn Source>,
    config: CacheConfig,
    state: Mutex<State>,
    counters: Counters,
    pushes: broadcast::Sender<Push>,
    warm: watch::Sender<bool>,
    started: std::sync::atomic::AtomicBool,
}

/// The primary's cache. Cheap to clone. Give it to [`crate::ClusterBuilder::cache`] so workers'
/// [`crate::cache::Cache`] calls reach it; use it directly in the primary too.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("source", &self.inner.source.describe())
            .finish_non_exhaustive()
    }
}

/// Pushes buffered per worker before a slow one is told to clear its view instead.
const PUSH_BUFFER: usize = 4096;

impl Hub {
    /// A hub over `source`. Call [`Hub::start`] to begin tracking and warm-up.
    pub fn new(source: impl Source, config: CacheConfig) -> Hub {
        Hub::from_arc(Arc::new(source), config)
    }

    /// A hub over a shared source.
    pub fn from_arc(source: Arc<dyn Source>, config: CacheConfig) -> Hub {
        let (pushes, _) = broadcast::channel(PUSH_BUFFER);
        let (warm, _) = watch::channel(false);
        Hub {
            inner: Arc::new(Inner {
                source,
                config,
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
                pushes,
                warm,
                started: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// Starts following the source's invalidations and warming up (in the background). Must be
    /// called inside a tokio runtime; later calls do nothing.
    pub fn start(&self) {
        if self.inner.started.swap(true, Ordering::AcqRel) {
            return;
        }
        if let Some(rx) = self.inner.source.invalidations() {
            let weak = Arc::downgrade(&self.inner);
            tokio::spawn(follow_invalidations(weak, rx));
        }
        let hub = self.clone();
        tokio::spawn(async move { hub.warm_up().await });
    }

    /// Waits until warm-up is done, at most `timeout`; whether it is.
    pub async fn ready(&self, timeout: Duration) -> bool {
        let mut rx = self.inner.warm.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|w| *w))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The value of `key`, from memory or loaded once from the source.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>, CacheError> {
        Ok(self.lookup(key).await?.value.map(|v| v.bytes()))
    }

    /// Stores a value in the source and invalidates it everywhere.
    pub async fn set(
        &self,
        key: &str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> Result<(), CacheError> {
        self.check_len(key, value.len())?;
        self.inner
            .source
            .store(key, value, ttl)
            .await
            .map_err(|source| CacheError::Source {
                key: key.into(),
                source,
            })?;
        self.invalidate(vec![key.to_string()]);
        Ok(())
    }

    /// Deletes a key from the source and invalidates it everywhere; whether it existed.
    pub async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let existed = self
            .inner
            .source
            .delete(key)
            .await
            .map_err(|source| CacheError::Source {
                key: key.into(),
                source,
            })?;
        self.invalidate(vec![key.to_string()]);
        Ok(existed)
    }

    /// The hub's counters.
    pub fn stats(&self) -> HubStats {
        let c = &self.inner.counters;
        let (entries, shared_bytes, shared_values, inline_bytes, tracking) = {
            let st = self.lock();
            let mut s = (st.entries.len() as u64, 0, 0, 0, st.tracking);
            for e in st.entries.values() {
                match &e.value {
                    Some(Value::Shared(v)) => {
                        s.1 += v.map.len() as u64;
                        s.2 += 1;
                    }
                    Some(Value::Inline(b)) => s.3 += b.len() as u64,
                    None => {}
                }
            }
            s
        };
        HubStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            loads: c.loads.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            stale_served: c.stale_served.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            entries,
            shared_bytes,
            shared_values,
            inline_bytes,
            source_calls: self.inner.source.calls(),
            tracking,
            warm: *self.inner.warm.borrow(),
        }
    }

    /// The source, as given.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.inner.source
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<Push> {
        self.inner.pushes.subscribe()
    }

    pub(crate) fn current_seq(&self) -> u64 {
        self.lock().seq
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.inner)
    }

    fn check_len(&self, key: &str, len: usize) -> Result<(), CacheError> {
        let max = self.inner.config.max_value;
        if len > max {
            return Err(CacheError::TooLarge {
                key: key.into(),
                len,
                max,
            });
        }
        Ok(())
    }

    fn invalidate(&self, keys: Vec<String>) {
        invalidate(&self.inner, keys);
    }

    /// Looks `key` up: fresh from memory, or through one load shared by every concurrent caller.
    pub(crate) async fn lookup(&self, key: &str) -> Result<Found, CacheError> {
        let inner = &self.inner;
        let rx = {
            let mut st = self.lock();
            let now = Instant::now();
            if let Some(e) = st.entries.get(key) {
                if st.tracking && e.epoch == st.epoch && !matches!(e.expires, Some(t) if t <= now) {
                    inner.counters.hits.fetch_add(1, Ordering::Relaxed);
                    return Ok(found(&st, e, now, false));
                }
            }
            inner.counters.misses.fetch_add(1, Ordering::Relaxed);
            match st.inflight.get(key) {
                Some(rx) => {
                    inner.counters.coalesced.fetch_add(1, Ordering::Relaxed);
                    rx.clone()
                }
                None => {
                    let (tx, rx) = watch::channel(None);
                    st.inflight.insert(key.to_string(), rx.clone());
                    st.dirty.remove(key);
                    let hub = self.clone();
                    let key = key.to_string();
                    tokio::spawn(async move {
                        let result = hub.load(&key).await.map_err(Arc::new);
                        if result.is_err() {
                            hub.inner.counters.errors.fetch_add(1, Ordering::Relaxed);
                        }
                        hub.lock().inflight.remove(&key);
                        let _ = tx.send(Some(result));
                    });
                    rx
                }
            }
        };
        let timeout = inner.config.load_timeout;
        let mut rx = rx;
        let result = match tokio::time::timeout(timeout, rx.wait_for(|r| r.is_some())).await {
            Ok(Ok(r)) => match r.as_ref() {
                Some(Ok(f)) => Ok(f.clone()),
                Some(Err(e)) => Err(share_error(key, e)),
                None => Err(CacheError::Hub(format!("the load of {key:?} gave nothing"))),
            },
            Ok(Err(_)) => Err(CacheError::Hub(format!(
                "the load of {key:?} was abandoned"
            ))),
            Err(_) => Err(CacheError::Timeout(key.into(), timeout)),
        };
        result
    }

    /// One load from the source (the single flight), stored unless invalidated meanwhile.
    async fn load(&self, key: &str) -> Result<Found, CacheError> {
        let inner = &self.inner;
        inner.counters.loads.fetch_add(1, Ordering::Relaxed);
        let loaded =
            match tokio::time::timeout(inner.config.load_timeout, inner.source.load(key)).await {
                Ok(r) => r,
                Err(_) => Err(SourceError::Unavailable(format!(
                    "no answer within {:?}",
                    inner.config.load_timeout
                ))),
            };
        match loaded {
            Ok(loaded) => {
                let value = match loaded {
                    Some(l) => Some(self.make_value(key, l)?),
                    None => None,
                };
                let mut st = self.lock();
                let now = Instant::now();
                Ok(self.store(&mut st, key, value, now))
            }
            Err(e) => {
                // The source failed: serve what we have if it is recent enough.
                let st = self.lock();
                let now = Instant::now();
                match st.entries.get(key) {
                    Some(entry) if now.duration_since(entry.verified) <= inner.config.max_stale => {
                        tracing::debug!(key, error = %e, "source failed: serving stale");
                        inner.counters.stale_served.fetch_add(1, Ordering::Relaxed);
                        Ok(found(&st, entry, now, true))
                    }
                    _ => Err(CacheError::Source {
                        key: key.into(),
                        source: e,
                    }),
                }
            }
        }
    }

    fn make_value(
        &self,
        key: &str,
        loaded: Loaded,
    ) -> Result<(Value, Option<Duration>), CacheError> {
        self.check_len(key, loaded.value.len())?;
        let value = if loaded.value.len() > self.inner.config.share_above {
            let fd = sys::sealed_memfd(&format!("herd-cache:{key}"), &loaded.value)
                .map_err(CacheError::Shared)?;
            let map = sys::map_sealed(&fd, loaded.value.len()).map_err(CacheError::Shared)?;
            Value::Shared(Arc::new(SharedValue {
                fd,
                map: Bytes::from_owner(map),
            }))
        } else {
            Value::Inline(loaded.value)
        };
        Ok((value, loaded.ttl))
    }

    /// Keeps a freshly loaded value (unless invalidated during its load, or too big to keep).
    fn store(
        &self,
        st: &mut State,
        key: &str,
        value: Option<(Value, Option<Duration>)>,
        now: Instant,
    ) -> Found {
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
        let fits = st.bytes - old + len <= self.inner.config.max_bytes;
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

    /// Loads the configured keys and patterns, in batches, until done.
    async fn warm_up(&self) {
        let cfg = &self.inner.config;
        if cfg.warm_keys.is_empty() && cfg.warm_patterns.is_empty() {
            self.inner.warm.send_replace(true);
            return;
        }
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), true);
        let keys = loop {
            match self.warm_keys().await {
                Ok(k) => break k,
                Err(e) => {
                    let wait = backoff.fail();
                    tracing::warn!(error = %e, ?wait, "warm-up cannot list keys; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        };
        let bar = progress_bar(cfg.progress, keys.len() as u64);
        let started = std::time::Instant::now();
        let mut done = 0usize;
        let mut bytes = 0usize;
        for chunk in keys.chunks(cfg.warm_batch.max(1)) {
            let values = loop {
                match self.inner.source.load_many(chunk).await {
                    Ok(v) if v.len() == chunk.len() => break v,
                    Ok(v) => {
                        tracing::error!(
                            asked = chunk.len(),
                            got = v.len(),
                            "source answered a batch with the wrong number of values"
                        );
                        break v
                            .into_iter()
                            .chain(std::iter::repeat(None))
                            .take(chunk.len())
                            .collect();
                    }
                    Err(e) => {
                        let wait = backoff.fail();
                        tracing::warn!(error = %e, ?wait, "warm-up batch failed; retrying");
                        tokio::time::sleep(wait).await;
                    }
                }
            };
            backoff.reset();
            self.inner
                .counters
                .loads
                .fetch_add(chunk.len() as u64, Ordering::Relaxed);
            for (key, loaded) in chunk.iter().zip(values) {
                bytes += loaded.as_ref().map_or(0, |l| l.value.len());
                let value = match loaded {
                    Some(l) => match self.make_value(key, l) {
                        Ok(v) => Some(v),
                        Err(e) => {
                            tracing::warn!(key, error = %crate::error::chain(&e), "warm-up skipped a key");
                            continue;
                        }
                    },
                    None => None,
                };
                let mut st = self.lock();
                // A key already loaded by a lookup, or being loaded, is left alone.
                if st.inflight.contains_key(key.as_str()) || st.entries.contains_key(key.as_str()) {
                    continue;
                }
                self.store(&mut st, key, value, Instant::now());
            }
            done += chunk.len();
            match &bar {
                Some(b) => b.set_position(done as u64),
                None if cfg.progress != Progress::Off => {
                    tracing::info!(done, total = keys.len(), bytes, "cache warm-up");
                }
                None => {}
            }
        }
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        if cfg.progress != Progress::Off {
            tracing::info!(
                keys = keys.len(),
                bytes,
                elapsed = ?started.elapsed(),
                "cache warm-up done"
            );
        }
        self.inner.warm.send_replace(true);
    }

    async fn warm_keys(&self) -> Result<Vec<String>, SourceError> {
        let cfg = &self.inner.config;
        let mut seen = HashSet::new();
        let mut keys = Vec::new();
        for k in &cfg.warm_keys {
            if seen.insert(k.clone()) {
                keys.push(k.clone());
            }
        }
        for p in &cfg.warm_patterns {
            for k in self.inner.source.scan(p).await? {
                if seen.insert(k.clone()) {
                    keys.push(k);
                }
            }
        }
        Ok(keys)
    }

    /// Serves one call from a worker (in its own task; the reply goes back on its channel).
    pub(crate) fn serve(
        &self,
        worker: WorkerId,
        codec: Codec,
        request: Request,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let hub = self.clone();
        tokio::spawn(async move {
            let _permit = permit;
            if let Err(e) = hub.answer(codec, request).await {
                tracing::debug!(%worker, error = %crate::error::chain(&e), "cache reply not sent");
            }
        });
    }

    async fn answer(&self, codec: Codec, request: Request) -> Result<(), crate::Error> {
        let op: CacheOp = match request.decode() {
            Ok(op) => op,
            Err(e) => {
                let text = format!("bad cache call: {}", crate::error::chain(&e));
                return request.reply_error(&text).await;
            }
        };
        match op {
            CacheOp::Get { key } => match self.lookup(&key).await {
                Ok(f) => self.reply_found(codec, request, f).await,
                Err(e) => request.reply_error(&crate::error::chain(&e)).await,
            },
            CacheOp::Set {
                key,
                value,
                encoding,
                ttl_ms,
            } => {
                let value = match codec {
                    Codec::NodeJson => match proto::from_node(value, encoding.as_deref()) {
                        Ok(v) => v,
                        Err(e) => return request.reply_error(&e).await,
                    },
                    Codec::Binary => value.0,
                };
                match self
                    .set(&key, value, ttl_ms.map(Duration::from_millis))
                    .await
                {
                    Ok(()) => request.reply(&true).await,
                    Err(e) => request.reply_error(&crate::error::chain(&e)).await,
                }
            }
            CacheOp::Delete { key } => match self.delete(&key).await {
                Ok(existed) => request.reply(&existed).await,
                Err(e) => request.reply_error(&crate::error::chain(&e)).await,
            },
            CacheOp::Ready { timeout_ms } => {
                // Bounded: a worker may be gone, and warm-up may wait for a source that is down.
                let limit = timeout_ms
                    .map(Duration::from_millis)
                    .unwrap_or(self.inner.config.load_timeout)
                    .min(MAX_READY_WAIT);
                let warm = self.ready(limit).await;
                request.reply(&warm).await
            }
            CacheOp::Stats => request.reply(&self.stats()).await,
        }
    }

    async fn reply_found(
        &self,
        codec: Codec,
        request: Request,
        f: Found,
    ) -> Result<(), crate::Error> {
        let ttl_ms = f.ttl.map(|t| t.as_millis().min(u64::MAX as u128) as u64);
        match codec {
            Codec::NodeJson => {
                let (value, encoding) = match &f.value {
                    Some(v) => {
                        let (s, e) = proto::node_value(&v.bytes());
                        (Some(s), e)
                    }
                    None => (None, None),
                };
                let reply = NodeGetReply {
                    found: f.value.is_some(),
                    value,
                    encoding,
                    ttl_ms,
                    seq: f.seq,
                    local: f.local,
                    stale: f.stale,
                };
                request.reply(&reply).await
            }
            Codec::Binary => {
                let mut reply = GetReply {
                    found: f.value.is_some(),
                    value: None,
                    encoding: None,
                    shared_len: None,
                    ttl_ms,
                    seq: f.seq,
                    local: f.local,
                    stale: f.stale,
                };
                match &f.value {
                    Some(Value::Shared(s)) => {
                        reply.shared_len = Some(s.map.len() as u64);
                        let fd = s.fd.try_clone().map_err(crate::Error::Io)?;
                        request.reply_with_fds(&reply, vec![fd]).await
                    }
                    Some(Value::Inline(b)) => {
                        reply.value = Some(WireValue(b.clone()));
                        request.reply(&reply).await
                    }
                    None => request.reply(&reply).await,
                }
            }
        }
    }
}

fn lock(inner: &Inner) -> MutexGuard<'_, State> {
    // A panic while holding the lock leaves plain data behind (maps and counters): keep going.
    inner.state.lock().unwrap_or_else(|p| p.into_inner())
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

fn share_error(key: &str, e: &CacheError) -> CacheError {
    match e {
        CacheError::Source { source, .. } => CacheError::Source {
            key: key.into(),
            source: match source {
                SourceError::Unavailable(s) => SourceError::Unavailable(s.clone()),
                SourceError::Failed(s) => SourceError::Failed(s.clone()),
                SourceError::Unsupported(s) => SourceError::Unsupported(s),
            },
        },
        CacheError::TooLarge { key, len, max } => CacheError::TooLarge {
            key: key.clone(),
            len: *len,
            max: *max,
        },
        CacheError::Timeout(k, d) => CacheError::Timeout(k.clone(), *d),
        other => CacheError::Hub(crate::error::chain(other)),
    }
}

fn invalidate(inner: &Inner, keys: Vec<String>) {
    if keys.is_empty() {
        return;
    }
    let seq = {
        let mut st = lock(inner);
        for k in &keys {
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
    inner
        .counters
        .invalidations
        .fetch_add(keys.len() as u64, Ordering::Relaxed);
    let _ = inner.pushes.send(Push::Invalidate { keys, seq });
}

/// Everything may have changed: entries must be confirmed again, workers drop their views.
fn clear(inner: &Inner, tracking: Option<bool>) {
    let seq = {
        let mut st = lock(inner);
        st.epoch += 1;
        st.seq += 1;
        let keys: Vec<String> = st.inflight.keys().cloned().collect();
        st.dirty.extend(keys);
        if let Some(t) = tracking {
            st.tracking = t;
        }
        st.seq
    };
    let _ = inner.pushes.send(Push::Clear { seq });
}

async fn follow_invalidations(
    inner: std::sync::Weak<Inner>,
    mut rx: tokio::sync::mpsc::Receiver<Invalidation>,
) {
    while let Some(inv) = rx.recv().await {
        let Some(inner) = inner.upgrade() else { return };
        match inv {
            Invalidation::Keys(keys) => invalidate(&inner, keys),
            Invalidation::All => clear(&inner, None),
            Invalidation::TrackingLost => {
                tracing::warn!(
                    "cache invalidation tracking lost: nothing is fresh until it is back"
                );
                clear(&inner, Some(false));
            }
            Invalidation::TrackingRestored => {
                tracing::info!("cache invalidation tracking restored");
                clear(&inner, Some(true));
            }
        }
    }
}

fn progress_bar(mode: Progress, total: u64) -> Option<indicatif::ProgressBar> {
    let bar = match mode {
        Progress::Bar => true,
        Progress::Auto => std::io::stderr().is_terminal(),
        Progress::Log | Progress::Off => false,
    };
    if !bar {
        return None;
    }
    let pb = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "cache warm-up {bar:40} {pos}/{len} keys {per_sec} eta {eta}",
    ) {
        pb.set_style(style);
    }
    Some(pb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::source::BoxFuture;
    use std::sync::atomic::AtomicBool;

    /// A source whose loads wait for a gate and can be made to fail, to pin down timing.
    #[derive(Default)]
    struct Gated {
        gate: tokio::sync::Notify,
        down: AtomicBool,
        calls: AtomicU64,
        value: Mutex<Vec<u8>>,
    }

    impl Source for Arc<Gated> {
        fn describe(&self) -> String {
            "gated".into()
        }
        fn load<'a>(&'a self, _key: &'a str) -> BoxFuture<'a, Result<Option<Loaded>, SourceError>> {
            Box::pin(async move {
                self.calls.fetch_add(1, Ordering::SeqCst);
                self.gate.notified().await;
                if self.down.load(Ordering::SeqCst) {
                    return Err(SourceError::Unavailable("down".into()));
                }
                let v = self.value.lock().unwrap().clone();
                Ok(Some(Loaded {
                    value: Bytes::from(v),
                    ttl: Some(Duration::from_millis(1)),
                }))
            })
        }
        fn scan<'a>(&'a self, _p: &'a str) -> BoxFuture<'a, Result<Vec<String>, SourceError>> {
            Box::pin(async { Ok(vec![]) })
        }
        fn store<'a>(
            &'a self,
            _k: &'a str,
            _v: Bytes,
            _t: Option<Duration>,
        ) -> BoxFuture<'a, Result<(), SourceError>> {
            Box::pin(async { Err(SourceError::Unsupported("store")) })
        }
        fn delete<'a>(&'a self, _k: &'a str) -> BoxFuture<'a, Result<bool, SourceError>> {
            Box::pin(async { Err(SourceError::Unsupported("delete")) })
        }
        fn calls(&self) -> u64 {
            self.calls.load(Ordering::SeqCst)
        }
    }

    async fn until(what: impl Fn() -> bool) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while !what() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("condition within 10 s");
    }

    #[tokio::test]
    async fn concurrent_misses_are_one_load_and_the_rest_wait() {
        let src = Arc::new(Gated::default());
        *src.value.lock().unwrap() = b"v".to_vec();
        let hub = Hub::new(src.clone(), CacheConfig::default());
        let mut tasks = tokio::task::JoinSet::new();
        for _ in 0..50 {
            let hub = hub.clone();
            tasks.spawn(async move { hub.get("k").await });
        }
        until(|| hub.stats().misses == 50).await;
        assert_eq!(src.calls(), 1);
        src.gate.notify_one();
        while let Some(r) = tasks.join_next().await {
            assert_eq!(r.unwrap().unwrap().unwrap(), "v");
        }
        let s = hub.stats();
        assert_eq!((s.loads, s.coalesced, s.misses), (1, 49, 50));
    }

    #[tokio::test]
    async fn a_failing_source_serves_stale_within_the_bound_and_errors_beyond() {
        let src = Arc::new(Gated::default());
        *src.value.lock().unwrap() = b"old".to_vec();
        let config = CacheConfig {
            max_stale: Duration::from_millis(300),
            ..CacheConfig::default()
        };
        let hub = Hub::new(src.clone(), config);
        let h = hub.clone();
        let first = tokio::spawn(async move { h.get("k").await });
        until(|| src.calls() == 1).await;
        src.gate.notify_one();
        assert_eq!(first.await.unwrap().unwrap().unwrap(), "old");

        // The TTL (1 ms) has passed: the next lookup reloads, the source is down, the old value
        // is served stale.
        src.down.store(true, Ordering::SeqCst);
        tokio::time::sleep(Duration::from_millis(5)).await; // let the 1 ms TTL pass
        let h = hub.clone();
        let second = tokio::spawn(async move { h.lookup("k").await });
        until(|| src.calls() == 2).await;
        src.gate.notify_one();
        let f = second.await.unwrap().unwrap();
        assert!(f.stale && !f.local);
        assert_eq!(f.value.unwrap().bytes(), "old");
        assert_eq!(hub.stats().stale_served, 1);

        // A key never loaded fails.
        let h = hub.clone();
        let never = tokio::spawn(async move { h.get("never").await });
        until(|| src.calls() == 3).await;
        src.gate.notify_one();
        assert!(matches!(
            never.await.unwrap(),
            Err(CacheError::Source {
                source: SourceError::Unavailable(_),
                ..
            })
        ));

        // Beyond the staleness bound the old value is no longer served.
        tokio::time::sleep(Duration::from_millis(310)).await; // outlive max_stale
        let h = hub.clone();
        let late = tokio::spawn(async move { h.get("k").await });
        until(|| src.calls() == 4).await;
        src.gate.notify_one();
        assert!(late.await.unwrap().is_err());
    }

    #[tokio::test]
    async fn an_invalidation_during_a_load_keeps_the_result_out_of_the_cache() {
        let src = Arc::new(Gated::default());
        *src.value.lock().unwrap() = b"before".to_vec();
        let hub = Hub::new(src.clone(), CacheConfig::default());
        let h = hub.clone();
        let first = tokio::spawn(async move { h.lookup("k").await });
        until(|| src.calls() == 1).await;
        invalidate(&hub.inner, vec!["k".into()]);
        src.gate.notify_one();
        let f = first.await.unwrap().unwrap();
        assert!(
            !f.local,
            "a worker must not keep a value invalidated during its load"
        );
        assert_eq!(hub.stats().entries, 0);
    }
}
