//! The replica without its I/O: [`CacheClient`] builds the frames of cache calls and takes the
//! frames the primary sends back (replies, invalidations), keeping the same local view as
//! [`Cache`](super::Cache) with the same rules (sequence-checked keeps, bounded entries and
//! bytes). The caller moves the bytes: the Node addon does it on Node's own event loop, so a
//! reply wakes the JavaScript thread directly, with no thread of its own in between.
//!
//! Shared values are mapped private and writable (copy-on-write): they are handed to
//! JavaScript, which may write into a `Buffer`; a write changes only that process's copy.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use herd_wire::{Codec, Frame, Kind};

use super::error::CacheError;
use super::hub::HubStats;
use super::proto::{CacheOp, WireValue};
use super::replica::{accept_get, remote_error, CacheStats, LocalView, Versioned};
use crate::ids::WorkerId;
use crate::ipc::control::Control;
use crate::ipc::handshake;
use crate::{Error, Message};

/// A call to the hub.
#[derive(Clone, Debug)]
pub enum Call {
    /// A key's value.
    Get(String),
    /// Store a value through the hub (written to the source, invalidated everywhere).
    Set {
        /// The key.
        key: String,
        /// The value.
        value: Bytes,
        /// How long it lives.
        ttl: Option<Duration>,
    },
    /// Delete a key everywhere.
    Delete(String),
    /// Wait until the hub's warm-up is done, at most this long.
    Ready(Duration),
    /// The hub's counters.
    Stats,
}

impl Call {
    fn op(&self) -> CacheOp {
        match self {
            Call::Get(key) => CacheOp::Get { key: key.clone() },
            Call::Set { key, value, ttl } => CacheOp::Set {
                key: key.clone(),
                value: WireValue(value.clone()),
                encoding: None,
                ttl_ms: ttl.map(|t| t.as_millis().min(u128::from(u64::MAX)) as u64),
            },
            Call::Delete(key) => CacheOp::Delete { key: key.clone() },
            Call::Ready(t) => CacheOp::Ready {
                timeout_ms: Some(t.as_millis().min(u128::from(u64::MAX)) as u64),
            },
            Call::Stats => CacheOp::Stats,
        }
    }
}

/// The answer to a [`Call`].
#[derive(Debug)]
pub enum Answer {
    /// A `Get`'s value, with its version in the local view.
    Got(Versioned),
    /// `Set` (true), `Delete` (whether the key existed), `Ready` (whether warm-up is done).
    Done(bool),
    /// `Stats`: this view's counters and the hub's.
    Stats(CacheStats),
}

/// What a frame from the primary was.
#[derive(Debug)]
pub enum Received {
    /// The reply (or error reply) to call `id`: give it to [`CacheClient::answer`] with the call.
    Reply(u64, Frame),
    /// An invalidation, applied to the view.
    Applied,
    /// Nothing for this side (an unknown notice): ignored.
    Ignored,
}

/// The replica's logic for a caller that does its own I/O (see the module's documentation).
pub struct CacheClient {
    view: LocalView,
    id: WorkerId,
    next_id: AtomicU64,
}

impl CacheClient {
    /// A client for worker `id`, with an empty view.
    pub fn new(id: WorkerId) -> CacheClient {
        CacheClient {
            view: LocalView::default(),
            id,
            next_id: AtomicU64::new(1),
        }
    }

    /// The hello this side sends first.
    pub fn hello(&self) -> Result<Frame, Error> {
        let (format, payload) = herd_wire::encode_value(Codec::Binary, &handshake::hello(self.id))?;
        Ok(Frame::new(Kind::Hello, format, payload))
    }

    /// Checks the primary's hello (the first frame it sends).
    pub fn check_hello(&self, frame: Frame) -> Result<(), Error> {
        handshake::check(frame, self.id).map(|_| ())
    }

    /// `key`'s fresh entry in the local view, without counting a lookup.
    pub fn local_entry(&self, key: &str) -> Option<Versioned> {
        self.view.lookup_versioned(key)
    }

    /// The version of `key`'s fresh entry, counted as a local hit; `None` if not held.
    pub fn local_version(&self, key: &str) -> Option<u64> {
        let version = self.view.lookup_versioned(key)?.version;
        self.view.count(true);
        version
    }

    /// The view's change counter: bumped whenever the view drops a version (an invalidation, a
    /// clear, an eviction, a newer version replacing one). While it stays the same, every version
    /// handed out is still held (until its `ttl`). Lives as long as this client.
    pub fn changes(&self) -> &AtomicU64 {
        self.view.changes()
    }

    /// The frame for `call`, with the id its reply will carry. A `Get` counts a miss.
    pub fn call(&self, call: &Call) -> Result<(u64, Frame), Error> {
        match call {
            Call::Get(_) => self.view.count(false),
            // This process reads its own write: the old value goes now, not when the hub's
            // invalidation comes back (which may be after the reply).
            Call::Set { key, .. } | Call::Delete(key) => self.view.drop_key(key),
            _ => {}
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (format, payload) = herd_wire::encode_to_send(Codec::Binary, &call.op())?;
        Ok((id, Frame::new(Kind::CacheCall, format, payload).with_id(id)))
    }

    /// Takes a frame from the primary. An error is a protocol violation: close the channel.
    pub fn receive(&self, frame: Frame) -> Result<Received, Error> {
        match frame.kind {
            Kind::Reply | Kind::ReplyError => Ok(Received::Reply(frame.id, frame)),
            Kind::Control => {
                match herd_wire::decode_value::<Control>(frame.format, &frame.payload)? {
                    Control::CacheInvalidate { keys, seq } => self.view.invalidate(&keys, seq),
                    Control::CacheClear { seq } => self.view.clear(seq),
                    _ => return Ok(Received::Ignored),
                }
                Ok(Received::Applied)
            }
            other => Err(Error::Protocol(format!(
                "a {other:?} frame on the cache channel"
            ))),
        }
    }

    /// The answer to `call` from its reply frame (an error reply becomes the hub's
    /// [`CacheError`]).
    pub fn answer(&self, call: &Call, reply: Frame) -> Result<Answer, CacheError> {
        let bad = |e: Error| CacheError::Channel(Box::new(e));
        if reply.kind == Kind::ReplyError {
            let text = herd_wire::decode_value::<String>(reply.format, &reply.payload)
                .unwrap_or_else(|_| "unreadable error reply".into());
            return Err(remote_error(text, &call.op()));
        }
        let mut msg = Message::from_frame(reply);
        match call {
            Call::Get(key) => accept_get(&self.view, true, key, &mut msg).map(Answer::Got),
            Call::Set { key, .. } => {
                // A get in flight when the write was made may have kept the old value since.
                self.view.drop_key(key);
                Ok(Answer::Done(true))
            }
            Call::Delete(key) => {
                self.view.drop_key(key);
                msg.decode().map(Answer::Done).map_err(bad)
            }
            Call::Ready(_) => msg.decode().map(Answer::Done).map_err(bad),
            Call::Stats => {
                let hub: HubStats = msg.decode().map_err(bad)?;
                Ok(Answer::Stats(self.view.stats(hub)))
            }
        }
    }

    /// The channel is gone: no invalidation can arrive any more, so nothing kept can be
    /// trusted. Drops the whole view.
    pub fn lost(&self) {
        self.view.clear(u64::MAX);
    }
}
