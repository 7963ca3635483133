//! Messages as user code sees them, and the endpoint both sides of a channel share.
//!
//! An [`Endpoint`] wraps a channel's sender with request/reply correlation: each request gets an
//! id, a bounded table of waiters maps replies back to callers, and every wait has a deadline. A
//! reply nobody waits for (late, or from a peer that lies) is dropped and logged, never trusted.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herd_wire::{Codec, Format, Frame, Kind, Sender};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::Error;

/// A message received from the other side.
#[derive(Debug)]
pub struct Message {
    format: Format,
    payload: Bytes,
    fds: Vec<OwnedFd>,
}

impl Message {
    pub(crate) fn from_frame(frame: Frame) -> Message {
        Message {
            format: frame.format,
            payload: frame.payload,
            fds: frame.fds,
        }
    }

    /// Decodes the payload as `T` (any serde type).
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        Ok(herd_wire::decode_value(self.format, &self.payload)?)
    }

    /// Decodes the payload as an untyped JSON value.
    pub fn json(&self) -> Result<serde_json::Value, Error> {
        self.decode()
    }

    /// The payload bytes as they arrived (raw bytes, msgpack or JSON text, see [`Self::format`]).
    pub fn bytes(&self) -> &Bytes {
        &self.payload
    }

    /// How the payload is encoded.
    pub fn format(&self) -> Format {
        self.format
    }

    /// Descriptors that came with the message.
    pub fn fds(&self) -> &[OwnedFd] {
        &self.fds
    }

    /// Takes the descriptors that came with the message (they are closed with the message
    /// otherwise).
    pub fn take_fds(&mut self) -> Vec<OwnedFd> {
        std::mem::take(&mut self.fds)
    }
}

/// A request received from the other side, to be answered with [`Request::reply`].
///
/// A request dropped without an answer answers itself with an error, so the requester does not
/// wait for its deadline.
pub struct Request {
    message: Message,
    id: u64,
    replier: Option<Sender>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("id", &self.id)
            .field("message", &self.message)
            .finish()
    }
}

impl Request {
    /// The request's content.
    pub fn message(&self) -> &Message {
        &self.message
    }

    /// The request's content, mutably (to take its descriptors).
    pub fn message_mut(&mut self) -> &mut Message {
        &mut self.message
    }

    /// Decodes the request's payload as `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, Error> {
        self.message.decode()
    }

    /// Answers with a value.
    pub async fn reply<T: Serialize + ?Sized>(self, value: &T) -> Result<(), Error> {
        self.reply_with_fds(value, Vec::new()).await
    }

    /// Answers with a value and descriptors (binary codec only).
    pub async fn reply_with_fds<T: Serialize + ?Sized>(
        mut self,
        value: &T,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Error> {
        let tx = self.replier.take().ok_or(Error::ChannelClosed)?;
        let (format, payload) = herd_wire::encode_to_send(tx.codec(), value)?;
        let frame = Frame::new(Kind::Reply, format, payload)
            .with_id(self.id)
            .with_fds(fds);
        Ok(tx.send(frame).await?)
    }

    /// Answers with an error text; the requester's call fails with [`Error::Remote`].
    pub async fn reply_error(mut self, text: &str) -> Result<(), Error> {
        let tx = self.replier.take().ok_or(Error::ChannelClosed)?;
        Ok(tx.send(error_frame(tx.codec(), self.id, text)?).await?)
    }
}

impl Drop for Request {
    fn drop(&mut self) {
        if let Some(tx) = self.replier.take() {
            let id = self.id;
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(async move {
                    if let Ok(frame) =
                        error_frame(tx.codec(), id, "request dropped without a reply")
                    {
                        let _ = tx.send(frame).await;
                    }
                });
            }
        }
    }
}

fn error_frame(codec: Codec, id: u64, text: &str) -> Result<Frame, Error> {
    let (format, payload) = herd_wire::encode_to_send(codec, text)?;
    Ok(Frame::new(Kind::ReplyError, format, payload).with_id(id))
}

/// What one side receives: a message or a request.
#[derive(Debug)]
pub enum Incoming {
    /// A one-way message.
    Message(Message),
    /// A request awaiting a reply.
    Request(Request),
}

/// herd's own notices between worker and primary (the [`Kind::Control`] frames).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub(crate) enum Control {
    /// The worker listens on an address.
    Listening {
        /// The address, as the worker prints it.
        address: String,
    },
    /// The worker is ready to take work (used by rolling reloads).
    Ready,
    /// The hub: these keys changed; drop them from the local view.
    CacheInvalidate {
        /// The keys.
        keys: Vec<String>,
        /// The hub's invalidation sequence number.
        seq: u64,
    },
    /// The hub: drop the whole local view (tracking lost or restored, everything may have
    /// changed).
    CacheClear {
        /// The hub's invalidation sequence number.
        seq: u64,
    },
    /// A notice this version does not know (a newer peer during a rolling reload).
    #[serde(other)]
    Unknown,
}

type Waiter = oneshot::Sender<Result<Message, Error>>;

/// Waiters for replies; once the channel is gone, no new ones are accepted.
#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    closed: bool,
}

/// A channel's sending side plus request/reply correlation.
pub(crate) struct Endpoint {
    tx: Sender,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    max_pending: usize,
    /// How long a send may wait for room in a full queue (a peer not reading its channel).
    send_timeout: Duration,
    /// Messages and requests sent.
    pub(crate) sent: AtomicU64,
}

/// How long a send waits for room in the queue of a peer that does not read its channel.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(30);

impl Endpoint {
    pub(crate) fn new(tx: Sender, max_pending: usize, send_timeout: Duration) -> Arc<Endpoint> {
        Arc::new(Endpoint {
            tx,
            pending: Mutex::new(Pending::default()),
            next_id: AtomicU64::new(1),
            max_pending,
            send_timeout,
            sent: AtomicU64::new(0),
        })
    }

    pub(crate) fn sender(&self) -> &Sender {
        &self.tx
    }

    pub(crate) fn codec(&self) -> Codec {
        self.tx.codec()
    }

    pub(crate) async fn send_value<T: Serialize + ?Sized>(
        &self,
        kind: Kind,
        value: &T,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Error> {
        match self.try_send_value(kind, value, fds)? {
            None => Ok(()),
            // Boxed: the wait is rare, and a small future keeps the common path cheap.
            Some(frame) => Box::pin(self.send_frame(frame)).await,
        }
    }

    /// Encodes and queues a value if the queue has room now; `Ok(Some(frame))` when the caller
    /// must wait for room with [`Endpoint::send_frame`].
    pub(crate) fn try_send_value<T: Serialize + ?Sized>(
        &self,
        kind: Kind,
        value: &T,
        fds: Vec<OwnedFd>,
    ) -> Result<Option<Frame>, Error> {
        let (format, payload) = herd_wire::encode_to_send(self.codec(), value)?;
        let mut frame = Frame::new(kind, format, payload);
        if !fds.is_empty() {
            frame = frame.with_fds(fds);
        }
        self.try_send_frame(frame)
    }

    /// Queues a frame if the queue has room now; `Ok(Some(frame))` when it is full (or the
    /// channel closed: [`Endpoint::send_frame`] says which).
    pub(crate) fn try_send_frame(&self, frame: Frame) -> Result<Option<Frame>, Error> {
        let back = self.tx.try_send(frame)?;
        if back.is_none() {
            self.sent.fetch_add(1, Ordering::Relaxed);
        }
        Ok(back)
    }

    pub(crate) async fn send_frame(&self, frame: Frame) -> Result<(), Error> {
        // The queue is bounded: when the peer stops reading, senders wait, but not forever.
        match self.tx.send_within(frame, self.send_timeout).await {
            Ok(()) => {}
            Err(herd_wire::WireError::Stalled(d)) => return Err(Error::Stalled(d)),
            Err(e) => return Err(e.into()),
        }
        self.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    pub(crate) async fn request(
        &self,
        kind: Kind,
        format: Format,
        payload: Bytes,
        fds: Vec<OwnedFd>,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (wtx, wrx) = oneshot::channel();
        {
            let mut pending = self.pending.lock().map_err(|_| Error::ChannelClosed)?;
            if pending.closed {
                return Err(Error::ChannelClosed);
            }
            if pending.waiters.len() >= self.max_pending {
                return Err(Error::TooManyRequests(self.max_pending));
            }
            pending.waiters.insert(id, wtx);
        }
        let frame = Frame::new(kind, format, payload).with_id(id).with_fds(fds);
        let result = match self.send_frame(frame).await {
            Ok(()) => match tokio::time::timeout(timeout, wrx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(Error::ChannelClosed),
                Err(_) => Err(Error::Timeout(timeout)),
            },
            Err(e) => Err(e),
        };
        self.forget(id);
        result
    }

    fn forget(&self, id: u64) {
        if let Ok(mut p) = self.pending.lock() {
            p.waiters.remove(&id);
        }
    }

    /// Routes a reply to its waiter. A reply nobody waits for is dropped.
    pub(crate) fn complete(&self, frame: Frame) {
        let id = frame.id;
        let waiter = self
            .pending
            .lock()
            .ok()
            .and_then(|mut p| p.waiters.remove(&id));
        let Some(waiter) = waiter else {
            tracing::debug!(id, "reply for no pending request dropped");
            return;
        };
        let result = match frame.kind {
            Kind::Reply => Ok(Message::from_frame(frame)),
            _ => Err(Error::Remote(
                herd_wire::decode_value::<String>(frame.format, &frame.payload)
                    .unwrap_or_else(|_| "unreadable error reply".into()),
            )),
        };
        let _ = waiter.send(result);
    }

    /// The channel is gone: fails every pending request (their callers see
    /// [`Error::ChannelClosed`] at once) and refuses new ones.
    pub(crate) fn fail_all(&self) {
        if let Ok(mut p) = self.pending.lock() {
            p.closed = true;
            p.waiters.clear();
        }
    }

    /// Turns a received frame into what user code sees. Replies go to their waiters; control
    /// frames are returned separately; a second hello is a protocol error.
    pub(crate) fn route(&self, frame: Frame) -> Result<Routed, Error> {
        Ok(match frame.kind {
            Kind::Message => Routed::Incoming(Incoming::Message(Message::from_frame(frame))),
            Kind::Request => {
                let id = frame.id;
                Routed::Incoming(Incoming::Request(Request {
                    message: Message::from_frame(frame),
                    id,
                    replier: Some(self.tx.clone()),
                }))
            }
            Kind::Reply | Kind::ReplyError => {
                self.complete(frame);
                Routed::Handled
            }
            Kind::CacheCall => {
                let id = frame.id;
                Routed::Cache(Request {
                    message: Message::from_frame(frame),
                    id,
                    replier: Some(self.tx.clone()),
                })
            }
            Kind::Control => {
                let c: Control = herd_wire::decode_value(frame.format, &frame.payload)?;
                Routed::Control(c)
            }
            Kind::Hello => {
                return Err(Error::Protocol(
                    "unexpected hello after the handshake".into(),
                ))
            }
        })
    }
}

/// Where a received frame went.
pub(crate) enum Routed {
    Incoming(Incoming),
    Control(Control),
    /// A call to the cache hub (only a primary serves them).
    Cache(Request),
    Handled,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A newer peer's notices (during a rolling reload) decode as `Unknown`, in both formats,
    /// rather than breaking the channel.
    #[test]
    fn unknown_control_notices_are_tolerated() {
        let future = serde_json::json!({"type": "drain_please", "deadline_ms": 5});
        for codec in [Codec::Binary, Codec::NodeJson] {
            let (format, bytes) = herd_wire::encode_value(codec, &future).unwrap();
            let c: Control = herd_wire::decode_value(format, &bytes).unwrap();
            assert_eq!(c, Control::Unknown, "{codec:?}");
            let (format, bytes) = herd_wire::encode_value(
                codec,
                &Control::Listening {
                    address: "0.0.0.0:80".into(),
                },
            )
            .unwrap();
            let c: Control = herd_wire::decode_value(format, &bytes).unwrap();
            assert_eq!(
                c,
                Control::Listening {
                    address: "0.0.0.0:80".into()
                }
            );
        }
        // A notice without a type is malformed, and says so.
        let (format, bytes) =
            herd_wire::encode_value(Codec::NodeJson, &serde_json::json!({"x": 1})).unwrap();
        assert!(herd_wire::decode_value::<Control>(format, &bytes).is_err());
    }
}
