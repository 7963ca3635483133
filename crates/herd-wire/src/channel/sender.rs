//! The sending half: [`Sender`], cloneable, every clone feeding the one queue and writer.
//!
//! A send prepares its frame (checks it, encodes its head) once, whichever path it takes:
//! [`Sender::try_send`] asks the queue for room before any work, so a frame it gives back is
//! untouched, and [`Sender::send`] / [`Sender::send_within`] prepare before they wait.

use std::sync::Arc;
use std::time::Duration;

use super::outgoing::{self, Outgoing};
use super::Shared;
use crate::frame::Frame;
use crate::{Codec, Limits, WireError};

/// Closes the channel when the last [`Sender`] clone is dropped.
struct Alive(Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.queue.shut();
    }
}

/// The sending half of a channel. Clones share one queue and one writer.
#[derive(Clone)]
pub struct Sender {
    shared: Arc<Shared>,
    _alive: Arc<Alive>,
}

impl Sender {
    pub(super) fn new(shared: Arc<Shared>) -> Sender {
        Sender {
            _alive: Arc::new(Alive(shared.clone())),
            shared,
        }
    }

    /// The codec this channel speaks.
    pub fn codec(&self) -> Codec {
        self.shared.codec
    }

    /// The limits this channel enforces.
    pub fn limits(&self) -> &Limits {
        &self.shared.limits
    }

    /// Queues `frame` for writing, waiting while the queue is full (backpressure).
    ///
    /// Fails at once, without queueing, if the frame breaks the limits or cannot be expressed in
    /// the channel's codec; fails with [`WireError::Closed`] once the channel is closed, also
    /// while waiting for room.
    pub async fn send(&self, frame: Frame) -> Result<(), WireError> {
        let out = self.prepare(frame)?;
        self.shared.queue.reserve(out.charged, None).await?;
        self.shared.queue.push(out)
    }

    /// Like [`Sender::send`], but waits at most `limit` for room in the queue, then fails with
    /// [`WireError::Stalled`] (the frame is not queued). When there is room, no timer is set.
    pub async fn send_within(&self, frame: Frame, limit: Duration) -> Result<(), WireError> {
        let out = self.prepare(frame)?;
        self.shared.queue.reserve(out.charged, Some(limit)).await?;
        self.shared.queue.push(out)
    }

    /// Queues `frame` if the queue has room now, without waiting: `Ok(None)` once queued,
    /// `Ok(Some(frame))`, the frame given back untouched, when the queue is full or the channel
    /// closed ([`Sender::send`] or [`Sender::send_within`] then waits, or says why).
    ///
    /// Room is asked for before the frame is checked or encoded, so a frame given back costs no
    /// work twice. A frame that breaks the limits or cannot be expressed in the codec fails here
    /// when there is room, and in the send that takes it back otherwise.
    pub fn try_send(&self, frame: Frame) -> Result<Option<Frame>, WireError> {
        let queue = &self.shared.queue;
        let charge = queue.charge(outgoing::queue_cost(&frame, self.shared.codec));
        if !queue.try_reserve(charge) {
            return Ok(Some(frame));
        }
        let mut out = match Outgoing::prepare(frame, self.shared.codec, &self.shared.limits) {
            Ok(out) => out,
            Err(e) => {
                queue.unreserve(charge);
                return Err(e);
            }
        };
        debug_assert_eq!(
            queue.charge(out.cost()),
            charge,
            "queue_cost matches prepare"
        );
        // The writer gives back what was taken.
        out.charged = charge;
        queue.push(out).map(|()| None)
    }

    /// Queues a shutdown after every frame already queued: they are written, then the peer reads
    /// end-of-stream. Later sends fail with [`WireError::Closed`], and so do sends still waiting
    /// for room (their frames are not queued). Fails with [`WireError::Closed`] if the channel
    /// was already closed (by a close or a write failure).
    pub fn close(&self) -> Result<(), WireError> {
        if self.shared.queue.shut() {
            Ok(())
        } else {
            Err(WireError::Closed)
        }
    }

    /// Waits until the writer has stopped (after a close, a write failure, or every sender
    /// dropped).
    pub async fn closed(&self) {
        self.shared.writer.stopped().await
    }

    /// Whether the writer has stopped.
    pub fn is_closed(&self) -> bool {
        self.shared.writer.is_stopped()
    }

    /// Why the writer stopped, if it stopped on an error.
    pub fn failure(&self) -> Option<String> {
        self.shared.writer.failure()
    }

    /// Checks and encodes a frame, charged for its length.
    fn prepare(&self, frame: Frame) -> Result<Outgoing, WireError> {
        let mut out = Outgoing::prepare(frame, self.shared.codec, &self.shared.limits)?;
        out.charged = self.shared.queue.charge(out.cost());
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use bytes::Bytes;

    use super::super::tests::{pair, tempfile};
    use crate::frame::{Format, Frame, Kind};
    use crate::{Codec, Limits, WireError};

    #[tokio::test]
    async fn sends_after_close_fail() {
        let ((tx, _), (_, mut rx)) = pair(Codec::Binary, Limits::default());
        let f = || Frame::new(Kind::Message, Format::Raw, Bytes::from_static(b"x"));
        tx.send(f()).await.unwrap();
        tx.close().unwrap();
        assert!(matches!(tx.close(), Err(WireError::Closed)), "closed once");
        assert!(matches!(tx.send(f()).await, Err(WireError::Closed)));
        assert!(
            matches!(tx.try_send(f()), Ok(Some(_))),
            "the frame is given back"
        );
        tx.closed().await;
        assert!(tx.is_closed());
        assert!(rx.recv().await.unwrap().is_some());
        assert!(rx.recv().await.unwrap().is_none());
    }

    #[tokio::test]
    async fn json_codec_refuses_fds_and_raw() {
        let ((tx, _), _) = pair(Codec::NodeJson, Limits::default());
        let raw = || Frame::new(Kind::Message, Format::Raw, Bytes::from_static(b"x"));
        assert!(matches!(
            tx.send(raw()).await,
            Err(WireError::Unsupported(_))
        ));
        assert!(matches!(tx.try_send(raw()), Err(WireError::Unsupported(_))));
        let with_fd = Frame::new(Kind::Message, Format::Json, Bytes::from_static(b"1"))
            .with_fds(vec![OwnedFd::from(tempfile())]);
        assert!(matches!(
            tx.send(with_fd).await,
            Err(WireError::Unsupported(_))
        ));
    }

    /// Node's internal messages are json-only; with descriptors they are the one json frame
    /// that carries any, and the descriptor arrives with the line's first byte.
    #[tokio::test]
    async fn node_frames_carry_fds_on_json_only() {
        let node = || {
            Frame::new(
                Kind::Node,
                Format::Json,
                Bytes::from_static(b"{\"cmd\":\"NODE_HANDLE\"}"),
            )
            .with_fds(vec![OwnedFd::from(tempfile())])
        };
        let ((tx, _), _) = pair(Codec::Binary, Limits::default());
        assert!(matches!(
            tx.send(node()).await,
            Err(WireError::Unsupported(_))
        ));
        let (a, b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        let (tx, _rx) = crate::channel(a, Codec::NodeJson, Limits::default()).unwrap();
        tx.send(node()).await.unwrap();
        tx.close().unwrap();
        tx.closed().await;
        let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(1))];
        let mut control = rustix::net::RecvAncillaryBuffer::new(&mut space);
        let mut buf = [0u8; 64];
        let mut iov = [std::io::IoSliceMut::new(&mut buf)];
        let msg = rustix::net::recvmsg(
            &b,
            &mut iov,
            &mut control,
            rustix::net::RecvFlags::CMSG_CLOEXEC,
        )
        .unwrap();
        let fds: usize = control
            .drain()
            .map(|m| match m {
                rustix::net::RecvAncillaryMessage::ScmRights(it) => it.count(),
                _ => 0,
            })
            .sum();
        assert_eq!(fds, 1);
        assert_eq!(&buf[..msg.bytes], b"{\"cmd\":\"NODE_HANDLE\"}\n");
    }

    /// A frame `try_send` refuses gives its queue space back: the queue holds one frame here,
    /// and it still takes one after many refusals.
    #[tokio::test]
    async fn refused_frames_take_no_room() {
        let limits = Limits {
            send_queue_frames: 1,
            ..Limits::default()
        };
        let ((tx, _), (_, mut rx)) = pair(Codec::NodeJson, limits);
        for _ in 0..10 {
            let bad = Frame::new(Kind::Message, Format::Json, Bytes::from_static(b"1\n2"));
            assert!(matches!(tx.try_send(bad), Err(WireError::Malformed(_))));
        }
        let good = Frame::new(Kind::Message, Format::Json, Bytes::from_static(b"[1]"));
        tx.send_within(good, std::time::Duration::from_secs(5))
            .await
            .unwrap();
        let got = rx.recv().await.unwrap().unwrap();
        assert_eq!(got.payload, Bytes::from_static(b"[1]"));
    }

    /// The slow path: a frame `try_send` gives back because the queue is full is the frame that
    /// was passed in, and `send` queues it once there is room.
    #[tokio::test]
    async fn a_frame_given_back_is_sent_whole() {
        let limits = Limits {
            send_queue_frames: 1,
            ..Limits::default()
        };
        let ((tx, _), (_, mut rx)) = pair(Codec::Binary, limits);
        let mut given_back = None;
        for i in 0..1_000_000u32 {
            let f = Frame::new(
                Kind::Request,
                Format::Raw,
                Bytes::from(i.to_le_bytes().to_vec()),
            )
            .with_id(u64::from(i) + 1);
            if let Some(back) = tx.try_send(f).unwrap() {
                given_back = Some((i, back));
                break;
            }
        }
        let (n, back) = given_back.expect("the queue filled up");
        assert_eq!((back.kind, back.id), (Kind::Request, u64::from(n) + 1));
        assert_eq!(back.payload, Bytes::from(n.to_le_bytes().to_vec()));
        tx.send(back).await.unwrap();
        for i in 0..=n {
            let f = rx.recv().await.unwrap().unwrap();
            assert_eq!(
                (f.id, &f.payload[..]),
                (u64::from(i) + 1, &i.to_le_bytes()[..])
            );
        }
    }
    /// A payload in two parts (one shared by many frames, a trailer of each frame's own) reads
    /// as one payload in both codecs, whether the frame is copied into the queue (small) or
    /// written from its pieces (large), and the shared part is never copied to be queued.
    #[tokio::test]
    async fn a_trailer_is_read_as_the_end_of_its_payload() {
        for codec in [Codec::Binary, Codec::NodeJson] {
            let ((tx, _), (_, mut rx)) = pair(codec, Limits::default());
            for len in [10usize, 200_000] {
                let shared = Bytes::from(format!("[\"{}\"", "x".repeat(len)));
                for i in 0..3u64 {
                    let trailer = Bytes::from(format!(",{i}]"));
                    let f = Frame::new(Kind::Reply, Format::Json, shared.clone())
                        .with_id(i + 1)
                        .with_trailer(trailer);
                    assert_eq!(f.payload_len(), shared.len() + 3);
                    tx.send(f).await.unwrap();
                }
                for i in 0..3u64 {
                    let got = rx.recv().await.unwrap().unwrap();
                    assert_eq!((got.kind, got.id), (Kind::Reply, i + 1));
                    assert!(got.trailer().is_empty(), "read frames have no trailer");
                    let want = [&shared[..], format!(",{i}]").as_bytes()].concat();
                    assert_eq!(got.payload, want, "{codec:?}, {len} bytes");
                }
            }
        }
    }
}
