//! [`HandleChannel`]: a Node worker's channel as every sender of descriptors to it sees it (the
//! user's `WorkerHandle::send_with_fds`, the cluster's `queryServer` answers, round-robin's
//! `newconn`): its [`Peer`], for the bytes, and its [`Gate`], Node's rule of one handle in
//! flight until the worker's `NODE_HANDLE_ACK`. Every way a handle can fail to go out (a send
//! that failed, one dropped while it waited for room, one the queue could not take) releases
//! the gate, so the next handle never waits for an acknowledgement that cannot come.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::Bytes;
use herd_wire::{Codec, Format, Frame, Kind};
use serde::Serialize;
use tokio::sync::oneshot;

use super::envelope::{self, HandleType, NodeHandleError};
use super::gate::{Admit, Gate, MAX_WAITING};
use crate::ipc::Peer;
use crate::Error;

/// A Node worker's channel with its handle gate. Cheap to clone; clones share the gate.
#[derive(Clone)]
pub(crate) struct HandleChannel {
    peer: Peer,
    gate: Arc<Gate>,
}

impl std::fmt::Debug for HandleChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandleChannel")
            .field("peer", &self.peer)
            .finish_non_exhaustive()
    }
}

/// Releases the gate when dropped armed: the handle admitted was never queued.
struct Unsent<'a> {
    chan: &'a HandleChannel,
    armed: bool,
}

impl Drop for Unsent<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.chan.acked();
        }
    }
}

impl HandleChannel {
    pub(crate) fn new(peer: Peer) -> HandleChannel {
        HandleChannel {
            peer,
            gate: Arc::default(),
        }
    }

    /// Node's `process.send(msg, handle)`: exactly one descriptor (a TCP, Unix stream or UDP
    /// socket, made non-blocking), in the `NODE_HANDLE` envelope, through the gate; see
    /// `WorkerHandle::send_with_fds`. Cancel-safe: dropped before its frame is queued, the frame
    /// is never sent and the gate lets the next handle go.
    pub(crate) async fn send_with_fds<T: Serialize + ?Sized>(
        &self,
        value: &T,
        fds: Vec<OwnedFd>,
    ) -> Result<(), Error> {
        let [fd] =
            <[OwnedFd; 1]>::try_from(fds).map_err(|fds| NodeHandleError::Count(fds.len()))?;
        let ty = HandleType::of(&fd)?;
        // libuv takes a received socket as it is, and shares its file description with the
        // sender: blocking, one `accept` or `write` would hold the worker's event loop.
        rustix::io::ioctl_fionbio(&fd, true).map_err(std::io::Error::from)?;
        let server = match ty {
            HandleType::Server => Some(fd.try_clone()?),
            _ => None,
        };
        let (_, payload) = herd_wire::encode_to_send(Codec::NodeJson, value)?;
        let line = envelope::wrap(&payload, ty);
        let frame = Frame::new(Kind::Node, Format::Json, line).with_fds(vec![fd]);
        let (tx, rx) = oneshot::channel();
        let limit = self.peer.send_timeout();
        match self.gate.admit(frame, server, Some(tx)) {
            Admit::Now(frame) => {
                // Until the frame is queued, the gate is released if this ends otherwise: a
                // send that failed, or this future dropped while it waited for room.
                let mut unsent = Unsent {
                    chan: self,
                    armed: true,
                };
                let sent = self.peer.send_frame(frame).await;
                unsent.armed = sent.is_err();
                sent
            }
            Admit::Queued => match tokio::time::timeout(limit, rx).await {
                Ok(Ok(())) => {
                    self.peer.count_sent();
                    Ok(())
                }
                Ok(Err(_)) => Err(Error::ChannelClosed),
                Err(_) => Err(Error::Timeout(limit)),
            },
            Admit::Full(_) => Err(NodeHandleError::Busy(MAX_WAITING).into()),
            Admit::Closed => Err(Error::ChannelClosed),
        }
    }

    /// Queues one of herd's own handle-carrying frames (the cluster's answers, `newconn`)
    /// behind the handle in flight; the frame comes back when too many wait.
    pub(crate) fn send_handle_soon(&self, frame: Frame) -> Result<(), Frame> {
        match self.gate.admit(frame, None, None) {
            Admit::Now(frame) => {
                self.send_soon(frame);
                Ok(())
            }
            Admit::Queued | Admit::Closed => Ok(()),
            Admit::Full(frame) => Err(frame),
        }
    }

    /// The worker acknowledged the handle in flight (`NODE_HANDLE_ACK`): the next one goes.
    /// Returns the listening socket just acknowledged, if it was one.
    pub(crate) fn acked(&self) -> Option<OwnedFd> {
        self.answered().0
    }

    /// The worker did not get the handle in flight (`NODE_HANDLE_NACK`): the next one goes.
    /// Returns what the lost frame said (its JSON line).
    pub(crate) fn nacked(&self) -> Option<Bytes> {
        self.answered().1
    }

    /// The channel is gone: handles waiting are dropped and no more are admitted.
    pub(crate) fn close(&self) {
        self.gate.close();
    }

    fn answered(&self) -> (Option<OwnedFd>, Option<Bytes>) {
        let (acked, said, next) = self.gate.acked();
        if let Some(frame) = next {
            self.send_soon(frame);
        }
        (acked, said)
    }

    /// The frame in flight, queued without awaiting; one that cannot go out (the peer is not
    /// reading, or gone) will never be acknowledged, so it releases the gate.
    fn send_soon(&self, frame: Frame) {
        let me = self.clone();
        self.peer.send_soon_or(frame, move || {
            me.acked();
        });
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixStream;
    use std::time::Duration;

    use herd_wire::Limits;

    use super::*;

    /// A Node-json channel with `send_timeout` whose other end never reads: big frames fill the
    /// socket's buffer and its two-frame queue. The other end and the peer's receiver are
    /// returned to be kept open.
    fn stalled(send_timeout: Duration) -> (HandleChannel, (UnixStream, herd_wire::Receiver)) {
        let (ours, theirs) = UnixStream::pair().unwrap();
        let limits = Limits {
            send_queue_frames: 2,
            ..Limits::default()
        };
        let (tx, rx) = herd_wire::channel(ours.into(), Codec::NodeJson, limits).unwrap();
        let peer = Peer::new(tx, send_timeout, Duration::from_secs(5));
        for _ in 0..8 {
            let mut line = vec![b'"'];
            line.extend(std::iter::repeat_n(b'x', 1 << 20));
            line.push(b'"');
            peer.send_soon_or(
                Frame::new(Kind::Message, Format::Json, Bytes::from(line)),
                || {},
            );
        }
        (HandleChannel::new(peer), (theirs, rx))
    }

    /// A handle-carrying Node frame (one socket descriptor).
    fn handle_frame() -> Frame {
        let (a, _b) = UnixStream::pair().unwrap();
        Frame::new(Kind::Node, Format::Json, Bytes::from_static(b"{}"))
            .with_fds(vec![OwnedFd::from(a)])
    }

    fn gate_is_free(chan: &HandleChannel) -> bool {
        matches!(chan.gate.admit(handle_frame(), None, None), Admit::Now(_))
    }

    /// A handle-carrying frame that cannot be written in time (the worker does not read) is
    /// dropped; it will never be acknowledged, so the gate lets the next handle go instead of
    /// waiting for good.
    #[tokio::test(flavor = "current_thread")]
    async fn a_dropped_handle_frees_the_gate() {
        let (chan, _open) = stalled(Duration::from_millis(50));
        chan.send_handle_soon(handle_frame()).unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while chan.peer.waiting_soon() > 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "sends never gave up"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(
            gate_is_free(&chan),
            "the gate still waits for the dropped handle"
        );
    }

    /// A handle whose send is dropped while it waits for room in a full queue is never sent,
    /// and the gate lets the next handle go instead of waiting for good for its acknowledgement.
    #[tokio::test(flavor = "current_thread")]
    async fn a_handle_send_dropped_while_waiting_for_room_frees_the_gate() {
        let (chan, _open) = stalled(Duration::from_secs(30));
        tokio::task::yield_now().await;
        let (a, _b) = UnixStream::pair().unwrap();
        let send = chan.send_with_fds(&"handle", vec![OwnedFd::from(a)]);
        let r = tokio::time::timeout(Duration::from_millis(100), send).await;
        assert!(r.is_err(), "the handle's send waited for room: {r:?}");
        assert!(
            gate_is_free(&chan),
            "the gate still waits for the handle that was never sent"
        );
    }

    /// Once the channel is gone, handles are refused at once and none waits.
    #[tokio::test(flavor = "current_thread")]
    async fn a_closed_channel_admits_no_handle() {
        let (chan, _open) = stalled(Duration::from_millis(50));
        chan.close();
        let (a, _b) = UnixStream::pair().unwrap();
        let r = chan.send_with_fds(&"handle", vec![OwnedFd::from(a)]).await;
        assert!(matches!(r, Err(Error::ChannelClosed)), "{r:?}");
    }
}
