//! The replica: a worker's view of the host's cache.
//!
//! [`Cache::get`] answers from the local view when it can (a hash lookup and a reference-count
//! increment: no system call, no copy) and asks the primary's hub otherwise. Large values arrive
//! as sealed memfds and are mapped read-only, so every worker reads the same physical pages.
//! The hub pushes invalidations; the reader task applies them to the view as they arrive. A
//! value read before an invalidation the replica has already applied is returned but not kept.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::error::CacheError;
use super::hub::HubStats;
use super::proto::{self, CacheOp, GetReply, WireError, WireValue};
use crate::{sys, Peer};

/// A worker's local view, shared by its [`Cache`] handles and its channel reader.
#[derive(Default)]
pub(crate) struct LocalView {
    entries: RwLock<HashMap<String, LocalEntry>>,
    /// The highest invalidation number applied.
    seq: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    mapped_bytes: AtomicU64,
}

struct LocalEntry {
    value: Option<Bytes>,
    expires: Option<Instant>,
}

impl LocalView {
    /// Applies the hub's invalidation of `keys`.
    pub(crate) fn invalidate(&self, keys: &[String], seq: u64) {
        let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
        for k in keys {
            map.remove(k);
        }
        self.seq.fetch_max(seq, Ordering::AcqRel);
    }

    /// Drops everything (the hub's clear).
    pub(crate) fn clear(&self, seq: u64) {
        let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
        map.clear();
        self.seq.fetch_max(seq, Ordering::AcqRel);
    }

    fn lookup(&self, key: &str) -> Option<Option<Bytes>> {
        let map = self.entries.read().unwrap_or_else(|p| p.into_inner());
        let e = map.get(key)?;
        if e.expires.is_some_and(|t| t <= Instant::now()) {
            return None;
        }
        Some(e.value.clone())
    }

    fn keep(&self, key: &str, value: Option<Bytes>, ttl: Option<Duration>, seq: u64) {
        let mut map = self.entries.write().unwrap_or_else(|p| p.into_inner());
        // Checked under the lock that invalidations take: an invalidation newer than the value
        // has either been applied (and is seen here) or will be applied after this insert.
        if seq < self.seq.load(Ordering::Acquire) {
            return;
        }
        map.insert(
            key.to_string(),
            LocalEntry {
                value,
                expires: ttl.map(|t| Instant::now() + t),
            },
        );
    }
}

/// This worker's cache counters, and the hub's.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CacheStats {
    /// Lookups answered from this worker's local view.
    pub local_hits: u64,
    /// Lookups that asked the hub.
    pub local_misses: u64,
    /// Keys in the local view.
    pub local_entries: u64,
    /// Bytes this worker mapped from shared memfds (shared with every other worker).
    pub mapped_bytes: u64,
    /// The hub's counters.
    pub hub: HubStats,
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
            let map = sys::map_sealed(&fd, len).map_err(CacheError::Shared)?;
            self.view
                .mapped_bytes
                .fetch_add(len as u64, Ordering::Relaxed);
            Some(Bytes::from_owner(map))
        } else {
            let v = reply.value.unwrap_or(WireValue(Bytes::new()));
            Some(proto::from_node(v, reply.encoding.as_deref()).map_err(CacheError::BadReply)?)
        };
        if reply.local {
            let ttl = reply.ttl_ms.map(Duration::from_millis);
            self.view.keep(key, value.clone(), ttl, reply.seq);
        }
        Ok(value)
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
        self.call(&op).await?;
        Ok(())
    }

    /// Deletes a key through the hub (from the source, and from every worker's view); whether it
    /// existed.
    pub async fn delete(&self, key: &str) -> Result<bool, CacheError> {
        let msg = self.call(&CacheOp::Delete { key: key.into() }).await?;
        msg.decode().map_err(|e| CacheError::Channel(Box::new(e)))
    }

    /// Waits until the hub's warm-up is done, at most `timeout`.
    pub async fn ready(&self, timeout: Duration) -> Result<(), CacheError> {
        let op = CacheOp::Ready {
            timeout_ms: Some(timeout.as_millis().min(u128::from(u64::MAX)) as u64),
        };
        // The hub answers (ready or not) within that; the channel waits a little longer.
        let msg = self
            .call_within(&op, timeout + Duration::from_secs(1))
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
        let local_entries = self
            .view
            .entries
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len() as u64;
        Ok(CacheStats {
            local_hits: self.view.hits.load(Ordering::Relaxed),
            local_misses: self.view.misses.load(Ordering::Relaxed),
            local_entries,
            mapped_bytes: self.view.mapped_bytes.load(Ordering::Relaxed),
            hub,
        })
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
            Err(crate::Error::Remote(text)) => Err(match WireError::decode(&text) {
                Some(wire) => CacheError::from_wire(wire, op.source_call()),
                None => CacheError::Hub(text),
            }),
            Err(e) => Err(CacheError::Channel(Box::new(e))),
        }
    }
}
