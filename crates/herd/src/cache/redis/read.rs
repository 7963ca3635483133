//! Loading values from Redis with bounded replies: one pipelined round trip reads every key's
//! TTL, length and first [`HEAD_LEN`] bytes; longer values continue in `GETRANGE` chunks, a
//! bounded number in flight, assembled in an anonymous mapping when big, at most
//! [`RedisConfig::max_assembling`](super::RedisConfig::max_assembling) bytes of them at once.
//!
//! A chunked read is consistent: the key is watched ([`super::tracking::Events::watch`]) before
//! its head is read, and the chunks go on from the head. Redis tracks the key for this
//! connection from the head's read on, so a write at any time after it (between two chunks, or
//! while the read waits for assembling room) makes it queue an `invalidate` push on this
//! connection *before* the reply to the next chunk, and the connection's task hands the push on
//! before the reply. A
//! read that saw its key change (or the connection drop, or the length differ) starts again from
//! a fresh head, up to [`ATTEMPTS`] times; a key deleted meanwhile is then missing, not an
//! error. The length limit is checked from `STRLEN` before any chunk is read. Without tracking
//! (`track: false`) only a value cut short is seen: one rewritten at the same length, or grown,
//! between its head and its last chunk can be served mixed or cut at its old length.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;

use super::link::Shared;
use super::tracking::Watch;
use crate::cache::source::{Loaded, SourceError};

/// How much of each value the first (pipelined) read fetches. Values up to this long take one
/// round trip, with every other key of a batch; longer ones continue in chunks.
const HEAD_LEN: usize = 64 << 10;

/// Values longer than this are assembled in an anonymous mapping (returned to the system when
/// dropped) rather than on the heap, which would keep the high-water mark of a big load.
const MAPPED_ABOVE: usize = 1 << 20;

/// Reads of one value before herd gives up on a value that changes under every read.
pub(super) const ATTEMPTS: usize = 8;

impl Shared {
    /// Keys whose heads one round trip reads: their replies fit what the chunks in flight
    /// may hold in Redis's output buffer for this client
    /// ([`RedisConfig::chunk_size`](super::RedisConfig::chunk_size) times
    /// [`RedisConfig::chunks_in_flight`](super::RedisConfig::chunks_in_flight)), and at least
    /// one.
    pub(super) fn heads_per_trip(&self) -> usize {
        let room = self.config.chunk_size.max(1) * self.config.chunks_in_flight.max(1);
        (room / HEAD_LEN).max(1)
    }

    /// The first chunk of each key with its TTL and length: one round trip for all of them.
    /// A key's own error (a key of another type) is its entry; the call fails only if the round
    /// trip does.
    pub(super) async fn heads(
        self: &Arc<Self>,
        keys: &[String],
    ) -> Result<Vec<Result<Head, SourceError>>, SourceError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // Watched from before the head is read: a write at any time after it (while the read
        // waits for room, say) makes a chunked read start again.
        let watches: Vec<Watch> = keys.iter().map(|k| self.events.watch(k)).collect();
        // MULTI/EXEC: the TTL, length and head are of one version of each value. A key's
        // error does not fail the others'.
        let mut pipe = redis::pipe();
        pipe.atomic().ignore_errors();
        let end = HEAD_LEN as i64 - 1;
        for k in keys {
            pipe.cmd("PTTL").arg(k);
            pipe.cmd("STRLEN").arg(k);
            pipe.cmd("GETRANGE").arg(k).arg(0).arg(end);
        }
        let values: Vec<Value> = self
            .query(3 * keys.len() as u64, move |mut c| {
                Box::pin(async move { pipe.query_async(&mut c).await })
            })
            .await?;
        if values.len() != 3 * keys.len() {
            return Err(SourceError::Failed(format!(
                "redis answered {} replies to {} commands",
                values.len(),
                3 * keys.len()
            )));
        }
        Ok(keys
            .iter()
            .zip(values.chunks_exact(3))
            .zip(watches)
            .map(|((key, v), watch)| head(key, v, watch))
            .collect())
    }

    /// The head of one key: `heads` for one.
    pub(super) async fn head(self: &Arc<Self>, key: &str) -> Result<Head, SourceError> {
        self.heads(std::slice::from_ref(&key.to_owned()))
            .await?
            .pop()
            .ok_or_else(|| SourceError::Failed(format!("no head for {key:?}")))?
    }

    /// Completes one value from its head: `None` if the key does not exist.
    pub(super) async fn finish(
        self: &Arc<Self>,
        key: &str,
        mut h: Head,
    ) -> Result<Option<Loaded>, SourceError> {
        for _ in 0..ATTEMPTS {
            if h.ttl == -2 {
                return Ok(None);
            }
            if h.len > self.config.max_value {
                return Err(SourceError::Failed(format!(
                    "{key:?} holds {} bytes, more than the {} a value may have",
                    h.len, self.config.max_value
                )));
            }
            let ttl = u64::try_from(h.ttl).ok().map(Duration::from_millis);
            let value = if h.head.len() != h.len.min(HEAD_LEN) {
                // Not one version (cannot happen within MULTI/EXEC): read it again.
                None
            } else if h.head.len() >= h.len {
                // Whole in its head; but a batch's later keys wait for the earlier ones'
                // chunks, and one written meanwhile must not be kept as it was.
                (!h.watch.changed()).then_some(h.head)
            } else {
                self.read_rest(key, h).await?
            };
            if let Some(value) = value {
                self.reads.fetch_add(1, Ordering::Relaxed);
                return Ok(Some(Loaded { value, ttl }));
            }
            // It changed while it was read: from the start.
            h = self.head(key).await?;
        }
        Err(SourceError::Failed(format!(
            "{key:?} changed during each of {ATTEMPTS} reads"
        )))
    }

    /// Reads the rest of a value after its head, chunk by chunk, into one buffer of its
    /// length; `None` if it changed since its head was read.
    async fn read_rest(self: &Arc<Self>, key: &str, h: Head) -> Result<Option<Bytes>, SourceError> {
        let Head {
            len, head, watch, ..
        } = h;
        // Room for its buffer first (held until the value is handed on): many big keys loading
        // at once fill one budget, not one buffer each.
        let kib = len.div_ceil(1024).min(self.assembling_kib as usize) as u32;
        let _room = self
            .assembling
            .acquire_many(kib)
            .await
            .map_err(|_| SourceError::Failed("the source is closing".into()))?;
        let mut buf = ValueBuf::new(len)?;
        // The head is of the version the watch began with: the chunks go on from it.
        buf.as_mut()[..head.len()].copy_from_slice(&head);
        let mut filled = head.len();
        drop(head);
        let chunk = self.config.chunk_size.max(1);
        while filled < len {
            let (start, end) = (filled, (filled + chunk).min(len) - 1);
            let key_owned = key.to_string();
            let permit = self
                .chunks
                .acquire()
                .await
                .map_err(|_| SourceError::Failed("the source is closing".into()))?;
            let part: Vec<u8> = self
                .query(1, move |mut c| {
                    Box::pin(async move {
                        redis::cmd("GETRANGE")
                            .arg(key_owned)
                            .arg(start)
                            .arg(end)
                            .query_async(&mut c)
                            .await
                    })
                })
                .await?;
            drop(permit);
            if part.is_empty() || part.len() > end + 1 - start {
                break;
            }
            buf.as_mut()[start..start + part.len()].copy_from_slice(&part);
            filled += part.len();
            if watch.changed() {
                return Ok(None);
            }
        }
        if filled != len || watch.changed() {
            return Ok(None);
        }
        buf.freeze().map(Some)
    }
}

/// A value being assembled: on the heap when small, in an anonymous mapping when big.
enum ValueBuf {
    Heap(Vec<u8>),
    Mapped(memmap2::MmapMut),
}

impl ValueBuf {
    fn new(len: usize) -> Result<ValueBuf, SourceError> {
        if len > MAPPED_ABOVE {
            memmap2::MmapMut::map_anon(len)
                .map(ValueBuf::Mapped)
                .map_err(|e| SourceError::Failed(format!("no memory for a {len}-byte value: {e}")))
        } else {
            Ok(ValueBuf::Heap(vec![0; len]))
        }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        match self {
            ValueBuf::Heap(v) => v,
            ValueBuf::Mapped(m) => m,
        }
    }

    fn freeze(self) -> Result<Bytes, SourceError> {
        match self {
            ValueBuf::Heap(v) => Ok(Bytes::from(v)),
            ValueBuf::Mapped(m) => m
                .make_read_only()
                .map(Bytes::from_owner)
                .map_err(|e| SourceError::Failed(format!("mprotect: {e}"))),
        }
    }
}

pub(super) struct Head {
    ttl: i64,
    len: usize,
    head: Bytes,
    /// The key, watched since before its head was read.
    watch: Watch,
}

/// One key's head from its three replies (`PTTL`, `STRLEN`, `GETRANGE`).
fn head(key: &str, v: &[Value], watch: Watch) -> Result<Head, SourceError> {
    let ttl = int(&v[0], "PTTL", key)?;
    let len = int(&v[1], "STRLEN", key)?;
    let head = match &v[2] {
        Value::BulkString(b) => Bytes::copy_from_slice(b),
        Value::Nil => Bytes::new(),
        other => return Err(unexpected("GETRANGE", key, other)),
    };
    Ok(Head {
        ttl,
        len: usize::try_from(len).unwrap_or(0),
        head,
        watch,
    })
}

fn int(v: &Value, cmd: &str, key: &str) -> Result<i64, SourceError> {
    match v {
        Value::Int(n) => Ok(*n),
        other => Err(unexpected(cmd, key, other)),
    }
}

fn unexpected(cmd: &str, key: &str, v: &Value) -> SourceError {
    match v {
        Value::ServerError(e) => SourceError::Failed(format!("{cmd} {key:?}: {e:?}")),
        other => SourceError::Failed(format!("{cmd} {key:?}: unexpected reply {other:?}")),
    }
}
