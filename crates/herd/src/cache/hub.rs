//! [`Hub`]: the primary's side of the cache, which owns the data for the whole host. It ties
//! the [`Source`], the [store](super::store), warm-up and the pushes to workers together.
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
//! - **Bounds.** Every entry, known-absent keys included, is charged its key, its value and
//!   [`ENTRY_OVERHEAD`](super::ENTRY_OVERHEAD) against [`CacheConfig::max_bytes`] and counts
//!   against [`CacheConfig::max_entries`] (a known-absent key also against
//!   [`CacheConfig::max_misses`]); beyond one, known-absent keys are evicted first,
//!   then the least recently used values. A known-absent key lives [`CacheConfig::miss_ttl`].
//! - **Outages.** When the source fails, a value cached within [`CacheConfig::max_stale`] is
//!   served, marked stale; only keys never loaded (or too old) fail.
//! - **Warm-up.** [`Hub::start`] loads configured keys and patterns (see [`super::warm`]);
//!   [`Hub::ready`] waits for it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, watch};

use super::config::CacheConfig;
use super::error::CacheError;
use super::source::{Invalidation, Source, SourceError};
use super::store::{self, Found, Lookup, Store};
use super::warm::warm_up;

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
    /// Bytes charged to [`CacheConfig::max_bytes`]: every entry's key, value and
    /// [`ENTRY_OVERHEAD`](super::ENTRY_OVERHEAD).
    #[serde(default)]
    pub bytes: u64,
    /// Known-absent keys held (each lives at most [`CacheConfig::miss_ttl`]).
    #[serde(default)]
    pub misses_cached: u64,
    /// Entries evicted to stay within [`CacheConfig::max_bytes`] and
    /// [`CacheConfig::max_entries`].
    #[serde(default)]
    pub evictions: u64,
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

/// A notice for every worker.
#[derive(Clone, Debug)]
pub(super) enum Push {
    /// These keys changed.
    Invalidate { keys: Vec<String>, seq: u64 },
    /// Everything may have changed.
    Clear { seq: u64 },
}

/// Pushes buffered per worker before a slow one is told to clear its view instead.
const PUSH_BUFFER: usize = 4096;

pub(super) struct Inner {
    source: Arc<dyn Source>,
    pub(super) config: CacheConfig,
    store: Store,
    pushes: broadcast::Sender<Push>,
    warm: watch::Sender<bool>,
    started: AtomicBool,
}

/// The primary's cache. Cheap to clone. Give it to [`crate::ClusterBuilder::cache`] so workers'
/// [`crate::cache::Cache`] calls reach it; use it directly in the primary too.
#[derive(Clone)]
pub struct Hub {
    pub(super) inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("source", &self.inner.source.describe())
            .finish_non_exhaustive()
    }
}

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
                store: Store::new(&config),
                config,
                pushes,
                warm,
                started: AtomicBool::new(false),
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
        let inner = self.inner.clone();
        tokio::spawn(async move {
            warm_up(inner.source.as_ref(), &inner.store, &inner.config).await;
            inner.warm.send_replace(true);
        });
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
        store::check_len(key, value.len(), self.inner.config.max_value)?;
        self.inner
            .source
            .store(key, value, ttl)
            .await
            .map_err(|e| CacheError::source(key, e))?;
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
            .map_err(|e| CacheError::source(key, e))?;
        self.invalidate(vec![key.to_string()]);
        Ok(existed)
    }

    /// The hub's counters.
    pub fn stats(&self) -> HubStats {
        let c = &self.inner.store.counters;
        let held = self.inner.store.held();
        HubStats {
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            loads: c.loads.load(Ordering::Relaxed),
            coalesced: c.coalesced.load(Ordering::Relaxed),
            stale_served: c.stale_served.load(Ordering::Relaxed),
            errors: c.errors.load(Ordering::Relaxed),
            invalidations: c.invalidations.load(Ordering::Relaxed),
            entries: held.entries,
            bytes: held.bytes,
            misses_cached: held.misses_cached,
            evictions: c.evictions.load(Ordering::Relaxed),
            shared_bytes: held.shared_bytes,
            shared_values: held.shared_values,
            inline_bytes: held.inline_bytes,
            source_calls: self.inner.source.calls(),
            tracking: held.tracking,
            warm: *self.inner.warm.borrow(),
        }
    }

    /// The source, as given.
    pub fn source(&self) -> &Arc<dyn Source> {
        &self.inner.source
    }

    /// The hub's notices to workers, from now on.
    pub(super) fn subscribe(&self) -> broadcast::Receiver<Push> {
        self.inner.pushes.subscribe()
    }

    /// The current invalidation sequence number.
    pub(super) fn current_seq(&self) -> u64 {
        self.inner.store.seq()
    }

    fn invalidate(&self, keys: Vec<String>) {
        invalidate(&self.inner, keys);
    }

    /// Looks `key` up: fresh from memory, or through one load shared by every concurrent caller.
    pub(super) async fn lookup(&self, key: &str) -> Result<Found, CacheError> {
        let mut rx = match self.inner.store.lookup(key) {
            Lookup::Hit(f) => return Ok(f),
            Lookup::Wait(rx) => rx,
            Lookup::Load(tx, rx) => {
                let hub = self.clone();
                let key = key.to_string();
                tokio::spawn(async move {
                    let result = hub.load(&key).await.map_err(Arc::new);
                    hub.inner.store.finish(&key, tx, result);
                });
                rx
            }
        };
        let timeout = self.inner.config.load_timeout;
        // A binding, so the borrow of `rx` ends before it does.
        let result = match tokio::time::timeout(timeout, rx.wait_for(|r| r.is_some())).await {
            Ok(Ok(r)) => match r.as_ref() {
                Some(Ok(f)) => Ok(f.clone()),
                Some(Err(e)) => Err(e.for_waiter(key)),
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
        inner.store.counters.loads.fetch_add(1, Ordering::Relaxed);
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
                let value = store::fetched(key, loaded, &inner.config)?;
                Ok(inner.store.keep(key, value))
            }
            // The source failed: serve what we have if it is recent enough.
            Err(e) => match inner.store.stale(key) {
                Some(f) => {
                    tracing::debug!(key, error = %e, "source failed: serving stale");
                    Ok(f)
                }
                None => Err(CacheError::source(key, e)),
            },
        }
    }
}

fn invalidate(inner: &Inner, keys: Vec<String>) {
    if keys.is_empty() {
        return;
    }
    let seq = inner.store.invalidate(&keys);
    let _ = inner.pushes.send(Push::Invalidate { keys, seq });
}

/// Everything may have changed: entries must be confirmed again, workers drop their views.
fn clear(inner: &Inner, tracking: Option<bool>) {
    let seq = inner.store.clear(tracking);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::source::{BoxFuture, Loaded};
    use std::sync::atomic::{AtomicBool, AtomicU64};
    use std::sync::Mutex;

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
        hub.invalidate(vec!["k".into()]);
        src.gate.notify_one();
        let f = first.await.unwrap().unwrap();
        assert!(
            !f.local,
            "a worker must not keep a value invalidated during its load"
        );
        assert_eq!(hub.stats().entries, 0);
    }
}
