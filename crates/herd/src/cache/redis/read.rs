//! Loading values from Redis with bounded replies: one pipelined round trip reads every key's
//! TTL, length and first [`HEAD_LEN`] bytes; longer values continue in `GETRANGE` chunks, a
//! bounded number in flight, assembled in an anonymous mapping when big, at most
//! [`RedisConfig::max_assembling`](super::RedisConfig::max_assembling) bytes of them at once.
//!
//! A chunked read is consistent: the key is watched ([`super::tracking::Events::watch`]) before
//! its first chunk is read. Redis tracks the key for this connection from that read on, so a
//! write between two chunks makes it queue an `invalidate` push on this connection *before* the
//! reply to the next chunk, and the connection's task hands the push on before the reply. A
//! read that saw its key change (or the connection drop, or the length differ) starts again from
//! a fresh head, up to [`ATTEMPTS`] times; a key deleted meanwhile is then missing, not an
//! error. The length limit is checked from `STRLEN` before any chunk is read. Without tracking
//! (`track: false`) only a change of length is seen.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use redis::Value;

use super::link::Shared;
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
            .map(|(key, v)| head(key, v))
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
                Some(h.head)
            } else {
                self.read_rest(key, h.len).await?
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

    /// Reads a value of `len` bytes chunk by chunk from its start, into one buffer of its
    /// length; `None` if it changed meanwhile.
    async fn read_rest(
        self: &Arc<Self>,
        key: &str,
        len: usize,
    ) -> Result<Option<Bytes>, SourceError> {
        // Room for its buffer first (held until the value is handed on): many big keys loading
        // at once fill one budget, not one buffer each.
        let kib = len.div_ceil(1024).min(self.assembling_kib as usize) as u32;
        let _room = self
            .assembling
            .acquire_many(kib)
            .await
            .map_err(|_| SourceError::Failed("the source is closing".into()))?;
        let watch = self.events.watch(key);
        let mut buf = ValueBuf::new(len)?;
        let chunk = self.config.chunk_size.max(1);
        let mut filled = 0;
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
}

/// One key's head from its three replies (`PTTL`, `STRLEN`, `GETRANGE`).
fn head(key: &str, v: &[Value]) -> Result<Head, SourceError> {
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
