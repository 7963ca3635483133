//! [`Peer`]: one end of a channel, as either side sees the other. It owns the channel's sending
//! side and request/reply correlation: each request gets an id, a bounded table of waiters maps
//! replies back to callers, and every wait has a deadline. A reply nobody waits for (late, or from
//! a peer that lies) is dropped and logged, never trusted. Every send waits for room in the
//! bounded queue for at most the send timeout, so a peer that stops reading fails its senders
//! with [`Error::Stalled`] instead of holding them.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use herd_wire::{Codec, Format, Frame, Kind, Sender};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::sync::oneshot;

use super::control::Control;
use super::message::{Incoming, Message, Request};
use crate::Error;

/// How long a send waits for room in the queue of a peer that does not read its channel.
pub(crate) const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Requests one side may have waiting for replies at once.
pub(crate) const MAX_PENDING_REQUESTS: usize = 65_536;

type Waiter = oneshot::Sender<Result<Message, Error>>;

/// Waiters for replies; once the channel is gone, no new ones are accepted.
#[derive(Default)]
struct Pending {
    waiters: HashMap<u64, Waiter>,
    closed: bool,
}

/// What every clone of a [`Peer`] shares.
struct Shared {
    tx: Sender,
    pending: Mutex<Pending>,
    next_id: AtomicU64,
    max_pending: usize,
    send_timeout: Duration,
    /// Messages and requests sent.
    sent: AtomicU64,
    /// Frames waiting in tasks for room in the queue ([`Peer::send_soon`]), at most
    /// [`MAX_WAITING_SOON`].
    waiting_soon: std::sync::atomic::AtomicUsize,
}

/// Removes request `id`'s waiter when dropped.
struct WaiterGuard<'a> {
    shared: &'a Shared,
    id: u64,
}

impl Drop for WaiterGuard<'_> {
    fn drop(&mut self) {
        if let Ok(mut p) = self.shared.pending.lock() {
            p.waiters.remove(&self.id);
        }
    }
}

/// Frames [`Peer::send_soon`] lets wait for room in a full queue; past that the peer is not
/// reading, and more are dropped (and logged) rather than held: a peer that floods herd with
/// messages it must answer, and never reads the answers, cannot grow the primary.
pub(crate) const MAX_WAITING_SOON: usize = 256;

/// The other end of a channel: a [`crate::WorkerHandle`] to a worker, a [`crate::Worker`] to
/// its primary. Sending looks the same in both directions. Cheap to clone; clones share one queue.
#[derive(Clone)]
pub struct Peer {
    shared: Arc<Shared>,
    request_timeout: Duration,
}

impl std::fmt::Debug for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Peer")
            .field("codec", &self.codec())
            .field("closed", &self.is_closed())
            .finish()
    }
}

/// Where a received frame went.
pub(crate) enum Routed {
    Incoming(Incoming),
    Control(Control),
    /// A call to the cache hub (only a primary serves them).
    Cache(Request),
    /// One of Node's own internal lines (the json codec: cluster messages, handle acks).
    Node(Frame),
    Handled,
}

impl Peer {
    pub(crate) fn new(tx: Sender, send_timeout: Duration, request_timeout: Duration) -> Peer {
        Peer {
            shared: Arc::new(Shared {
                tx,
                pending: Mutex::new(Pending::default()),
                next_id: AtomicU64::new(1),
                max_pending: MAX_PENDING_REQUESTS,
                send_timeout,
                sent: AtomicU64::new(0),
                waiting_soon: std::sync::atomic::AtomicUsize::new(0),
            }),
            request_timeout,
        }
    }

    /// The codec of the channel.
    pub fn codec(&self) -> Codec {
        self.shared.tx.codec()
    }

    /// Messages and requests sent so far.
    pub fn sent(&self) -> u64 {
        self.shared.sent.load(Ordering::Relaxed)
    }

    /// Whether the channel can no longer send.
    pub fn is_closed(&self) -> bool {
        self.shared.tx.is_closed()
    }

    /// Sends a value (any serde type, or a `serde_json::Value`). Waits while the channel's queue
    /// is full, at most the send timeout ([`Error::Stalled`]).
    pub async fn send<T: Serialize + ?Sized>(&self, value: &T) -> Result<(), Error> {
        self.send_value(Kind::Message, value, Vec::new()).await
    }

    /// Sends a value with descriptors (a listener, a stream, a file: anything as `OwnedFd`).
    /// They arrive close-on-exec. On the binary codec only: a descriptor goes to a Node worker
    /// in Node's envelope, one at a time, through [`crate::WorkerHandle::send_with_fds`].
    pub async fn send_with_fds<T: Serialize + ?Sized>(
        &self,
        value: &T,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Error> {
        self.send_value(Kind::Message, value, fds).await
    }

    /// Sends opaque bytes, never encoded or decoded (the binary codec only).
    pub async fn send_bytes(&self, bytes: Bytes) -> Result<(), Error> {
        self.send_frame(Frame::new(Kind::Message, Format::Raw, bytes))
            .await
    }

    /// Sends a request and waits for the reply, decoded as `R`, within the default deadline.
    pub async fn request<T: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        value: &T,
    ) -> Result<R, Error> {
        self.request_message(value, Vec::new(), self.request_timeout)
            .await?
            .decode()
    }

    /// Sends a request with descriptors and waits for the whole reply message within `timeout`.
    pub async fn request_message<T: Serialize + ?Sized>(
        &self,
        value: &T,
        fds: Vec<OwnedFd>,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let (format, payload) = herd_wire::encode_to_send(self.codec(), value)?;
        self.request_frame(Kind::Request, format, payload, fds, timeout)
            .await
    }

    /// A call to the primary's cache hub (a `CacheCall` frame).
    pub(crate) async fn cache_call<T: Serialize + ?Sized>(
        &self,
        value: &T,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let (format, payload) = herd_wire::encode_to_send(self.codec(), value)?;
        self.request_frame(Kind::CacheCall, format, payload, Vec::new(), timeout)
            .await
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        self.request_timeout
    }

    /// Sends one of herd's own notices.
    pub(crate) async fn control(&self, c: &Control) -> Result<(), Error> {
        self.send_value(Kind::Control, c, Vec::new()).await
    }

    /// Sends a control notice without waiting: queued if there is room, else dropped (the
    /// notices sent this way, liveness pings and answers, are sent again); whether it was
    /// queued.
    pub(crate) fn control_soon(&self, c: &Control) -> bool {
        match herd_wire::encode_value(self.codec(), c) {
            Ok((format, bytes)) => {
                let queued = matches!(
                    self.shared
                        .tx
                        .try_send(Frame::new(Kind::Control, format, bytes)),
                    Ok(None)
                );
                if !queued {
                    tracing::debug!(notice = ?c, "no room in the send queue: control notice dropped");
                }
                queued
            }
            Err(e) => {
                tracing::debug!(error = %e, "control notice not encoded");
                false
            }
        }
    }

    /// Closes the sending side after everything queued: the peer reads end-of-stream.
    pub(crate) fn close(&self) {
        let _ = self.shared.tx.close();
    }

    /// Waits until the channel can no longer send (closed by either side, or failed).
    pub(crate) async fn closed(&self) {
        self.shared.tx.closed().await
    }

    pub(crate) async fn send_value<T: Serialize + ?Sized>(
        &self,
        kind: Kind,
        value: &T,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Error> {
        let (format, payload) = herd_wire::encode_to_send(self.codec(), value)?;
        let mut frame = Frame::new(kind, format, payload);
        if !fds.is_empty() {
            frame = frame.with_fds(fds);
        }
        match self.shared.tx.try_send(frame)? {
            None => {
                self.shared.sent.fetch_add(1, Ordering::Relaxed);
                Ok(())
            }
            // Boxed: the wait is rare, and a small future keeps the common path cheap.
            Some(frame) => Box::pin(self.send_frame(frame)).await,
        }
    }

    /// The send timeout: how long a send waits for room.
    pub(crate) fn send_timeout(&self) -> Duration {
        self.shared.send_timeout
    }

    /// Counts a message sent by other means (a frame queued by someone else on its behalf).
    pub(crate) fn count_sent(&self) {
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
    }

    /// Frames waiting in tasks for room in the queue ([`Peer::send_soon`]).
    #[cfg(test)]
    pub(crate) fn waiting_soon(&self) -> usize {
        self.shared.waiting_soon.load(Ordering::Acquire)
    }

    /// Queues a frame without awaiting: at once when the queue has room, else from a task that
    /// waits at most the send timeout (at most [`MAX_WAITING_SOON`] such tasks per peer; past
    /// that the frame is dropped). A frame that cannot be sent (the channel is gone) is dropped
    /// and logged.
    pub(crate) fn send_soon(&self, frame: Frame) {
        self.send_soon_or(frame, || {});
    }

    /// Queues a frame if the queue has room now; whether it did (nothing waits for room).
    pub(crate) fn try_send(&self, frame: Frame) -> bool {
        matches!(self.shared.tx.try_send(frame), Ok(None))
    }

    /// [`Peer::send_soon`], calling `unsent` if the frame is dropped without being queued (a
    /// sender of descriptors gives its gate back that way).
    pub(crate) fn send_soon_or(&self, frame: Frame, unsent: impl FnOnce() + Send + 'static) {
        let tx = &self.shared.tx;
        match tx.try_send(frame) {
            Ok(None) => {}
            Ok(Some(frame)) => {
                let waiting = self.shared.waiting_soon.fetch_add(1, Ordering::AcqRel);
                if waiting >= MAX_WAITING_SOON {
                    self.shared.waiting_soon.fetch_sub(1, Ordering::AcqRel);
                    tracing::warn!(
                        "the peer is not reading its channel: an answer to it was dropped \
                         ({MAX_WAITING_SOON} already wait for room)"
                    );
                    unsent();
                    return;
                }
                let peer = self.clone();
                tokio::spawn(async move {
                    let limit = peer.shared.send_timeout;
                    let sent = peer.shared.tx.send_within(frame, limit).await;
                    peer.shared.waiting_soon.fetch_sub(1, Ordering::AcqRel);
                    if let Err(e) = sent {
                        tracing::debug!(error = %e, "frame not sent");
                        unsent();
                    }
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "frame not sent");
                unsent();
            }
        }
    }

    /// Queues a frame, waiting for room at most the send timeout.
    pub(crate) async fn send_frame(&self, frame: Frame) -> Result<(), Error> {
        self.shared
            .tx
            .send_within(frame, self.shared.send_timeout)
            .await?;
        self.shared.sent.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    async fn request_frame(
        &self,
        kind: Kind,
        format: Format,
        payload: Bytes,
        fds: Vec<OwnedFd>,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let s = &self.shared;
        let id = s.next_id.fetch_add(1, Ordering::Relaxed);
        let (wtx, wrx) = oneshot::channel();
        {
            let mut pending = s.pending.lock().map_err(|_| Error::ChannelClosed)?;
            if pending.closed {
                return Err(Error::ChannelClosed);
            }
            if pending.waiters.len() >= s.max_pending {
                return Err(Error::TooManyRequests(s.max_pending));
            }
            pending.waiters.insert(id, wtx);
        }
        // From here the waiter is removed however this ends: answered, failed, or this future
        // dropped inside a caller's `timeout` or `select!` (cancel safety).
        let _waiter = WaiterGuard { shared: s, id };
        let frame = Frame::new(kind, format, payload).with_id(id).with_fds(fds);
        match self.send_frame(frame).await {
            Ok(()) => match tokio::time::timeout(timeout, wrx).await {
                Ok(Ok(r)) => r,
                Ok(Err(_)) => Err(Error::ChannelClosed),
                Err(_) => Err(Error::Timeout(timeout)),
            },
            Err(e) => Err(e),
        }
    }

    /// Routes a reply to its waiter. A reply nobody waits for is dropped.
    fn complete(&self, frame: Frame) {
        let id = frame.id;
        let waiter = self
            .shared
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
        if let Ok(mut p) = self.shared.pending.lock() {
            p.closed = true;
            p.waiters.clear();
        }
    }

    /// Turns a received frame into what user code sees. Replies go to their waiters; control
    /// frames are returned separately; a second hello is a protocol error.
    pub(crate) fn route(&self, frame: Frame) -> Result<Routed, Error> {
        let request = |frame: Frame| {
            let id = frame.id;
            let tx = self.shared.tx.clone();
            Request::new(Message::from_frame(frame), id, tx, self.shared.send_timeout)
        };
        Ok(match frame.kind {
            Kind::Message => Routed::Incoming(Incoming::Message(Message::from_frame(frame))),
            Kind::Request => Routed::Incoming(Incoming::Request(request(frame))),
            Kind::Reply | Kind::ReplyError => {
                self.complete(frame);
                Routed::Handled
            }
            Kind::CacheCall => Routed::Cache(request(frame)),
            Kind::Node => Routed::Node(frame),
            Kind::Control => {
                Routed::Control(herd_wire::decode_value(frame.format, &frame.payload)?)
            }
            Kind::Hello => {
                return Err(Error::Protocol(
                    "unexpected hello after the handshake".into(),
                ))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;

    use herd_wire::Limits;

    use super::*;

    /// A request dropped mid-call (inside a caller's `timeout` or `select!`) frees its waiter:
    /// more of them than the waiter bound, and a request after them is still tried (it fails
    /// here for want of a reader) instead of failing `TooManyRequests`.
    #[tokio::test(flavor = "current_thread")]
    async fn a_request_dropped_mid_call_frees_its_waiter() {
        let (ours, _theirs) = UnixStream::pair().unwrap();
        let (tx, _rx) = herd_wire::channel(ours.into(), Codec::Binary, Limits::default()).unwrap();
        let peer = Peer::new(tx, Duration::from_millis(50), Duration::from_millis(20));
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        for _ in 0..MAX_PENDING_REQUESTS + 10 {
            let mut call =
                Box::pin(peer.request_message(&1u8, Vec::new(), Duration::from_millis(20)));
            // Polled once (waiting for its reply, or for room in the queue), then dropped.
            assert!(std::future::Future::poll(call.as_mut(), &mut cx).is_pending());
            drop(call);
        }
        assert_eq!(peer.shared.pending.lock().unwrap().waiters.len(), 0);
        let r = peer
            .request_message(&1u8, Vec::new(), Duration::from_millis(20))
            .await;
        assert!(!matches!(r, Err(Error::TooManyRequests(_))), "{r:?}");
    }
}
