//! The channel: one `AF_UNIX` stream socket, framed by a [`Codec`], with descriptors passed as
//! `SCM_RIGHTS` alongside the frames that claim them.
//!
//! [`channel`] splits a socket into a [`Sender`] (cloneable) and a [`Receiver`]. Every frame sent
//! goes through one bounded queue (frames and bytes, so a slow peer pushes back on senders instead
//! of growing memory) to one writer task. Small frames are copied into the queue's buffers as they
//! are queued, back to back as they go on the wire; the writer writes whatever is queued with one
//! `sendmsg` (many small frames per syscall, large payloads written from their own buffers without
//! a copy) and a lone frame at once. A frame with descriptors always starts a `sendmsg` of its own,
//! so its descriptors are attached to its first byte and reach the peer no later than its header.
//!
//! Closing: [`Sender::close`] queues a shutdown behind every frame already queued; the writer
//! flushes them, shuts down the socket's write side, and the peer reads end-of-stream. Dropping
//! every sender does the same.
//!
//! The parts, in the order a frame meets them:
//!
//! - `sender`: the public [`Sender`]; a frame is checked and encoded once, into an `Outgoing`.
//! - `outgoing`: that encoded frame (head, payload, tail, descriptors) and its wire length.
//! - `queue`: the bounded send queue, its two semaphores (bytes and frames) and the buffers small
//!   frames are copied into.
//! - `writer`: the task that drains the queue in batches, one `sendmsg` each.
//! - `receiver`: the public [`Receiver`]: reads, collects descriptors, decodes.

mod outgoing;
mod queue;
mod receiver;
mod sender;
mod writer;

use std::io;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use tokio::net::UnixStream;
use tokio::sync::Notify;

use crate::{Codec, Limits};

pub use receiver::Receiver;
pub use sender::Sender;

/// The kernel's cap on descriptors in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;

/// What both halves and the writer share.
struct Shared {
    sock: UnixStream,
    codec: Codec,
    limits: Limits,
    queue: queue::SendQueue,
    /// Whether, and why, the writer stopped.
    writer: writer::Status,
}

/// Wraps a connected `AF_UNIX` stream socket as a channel. Must be called inside a tokio runtime
/// (it spawns the writer task).
pub fn channel(fd: OwnedFd, codec: Codec, limits: Limits) -> io::Result<(Sender, Receiver)> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    let sock = UnixStream::from_std(std)?;
    let shared = Arc::new(Shared {
        sock,
        codec,
        limits,
        queue: queue::SendQueue::new(&limits),
        writer: writer::Status::default(),
    });
    tokio::spawn(writer::run(shared.clone()));
    Ok((Sender::new(shared.clone()), Receiver::new(shared)))
}

/// Waits until `ready()` holds, checking it again after every notification on `notify` (the
/// waiter is registered before each check, so a notification between the two is not missed).
async fn wait_until(notify: &Notify, mut ready: impl FnMut() -> bool) {
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if ready() {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Read, Seek, Write};

    use bytes::Bytes;

    use super::*;
    use crate::frame::{Format, Frame, Kind};

    /// Two channels over the two ends of one socketpair.
    pub(super) fn pair(codec: Codec, limits: Limits) -> ((Sender, Receiver), (Sender, Receiver)) {
        let (a, b) = rustix::net::socketpair(
            rustix::net::AddressFamily::UNIX,
            rustix::net::SocketType::STREAM,
            rustix::net::SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        (
            channel(a, codec, limits).unwrap(),
            channel(b, codec, limits).unwrap(),
        )
    }

    /// A descriptor to pass along.
    pub(super) fn tempfile() -> std::fs::File {
        let fd = rustix::fs::memfd_create("herd-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        std::fs::File::from(fd)
    }

    #[tokio::test]
    async fn frames_and_fds_cross_in_order() {
        let ((tx, _), (_, mut rx)) = pair(Codec::Binary, Limits::default());
        let mut file = tempfile();
        file.write_all(b"passed along").unwrap();
        for i in 0..100u64 {
            let mut f = Frame::new(
                Kind::Message,
                Format::Raw,
                Bytes::from(i.to_le_bytes().to_vec()),
            );
            if i % 10 == 3 {
                f = f.with_fds(vec![OwnedFd::from(file.try_clone().unwrap())]);
            }
            tx.send(f).await.unwrap();
        }
        let big = Bytes::from(vec![7u8; 5 * 1024 * 1024]);
        tx.send(Frame::new(Kind::Message, Format::Raw, big.clone()))
            .await
            .unwrap();
        tx.close().unwrap();
        for i in 0..100u64 {
            let f = rx.recv().await.unwrap().unwrap();
            assert_eq!(&f.payload[..], &i.to_le_bytes());
            assert_eq!(f.fds.len(), usize::from(i % 10 == 3));
            if let Some(fd) = f.fds.into_iter().next() {
                let mut got = std::fs::File::from(fd);
                got.rewind().unwrap();
                let mut s = String::new();
                got.read_to_string(&mut s).unwrap();
                assert_eq!(s, "passed along");
            }
        }
        let f = rx.recv().await.unwrap().unwrap();
        assert_eq!(f.payload, big);
        assert!(
            rx.recv().await.unwrap().is_none(),
            "clean end-of-stream after close"
        );
    }
}
