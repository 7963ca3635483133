//! The bounded send queue between the senders and the writer.
//!
//! Bounded by two semaphores, one permit per byte and one per frame: a sender takes its permits
//! before queueing (and forgets them, so queueing costs no reference counting), the writer adds
//! them back once per written batch. Small frames without descriptors are copied into the last
//! [`Item::Bytes`] as they are queued, so a stream of them costs a lock and a copy each, and the
//! writer writes whole buffers.

use std::collections::VecDeque;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use bytes::BytesMut;
use tokio::sync::{Notify, Semaphore};

use super::outgoing::Outgoing;
use super::wait_until;
use crate::{Limits, WireError};

/// Payloads up to this size are copied into the queue's buffers; larger ones are written from
/// their own memory.
const COPY_BELOW: usize = 16 * 1024;
/// A batch, and a buffer of small frames, stops growing at this many bytes.
const BATCH_BYTES: usize = 256 * 1024;
/// A new buffer of small frames starts with room for this many bytes.
const BYTES_ITEM: usize = 64 * 1024;
/// At most this many iovecs per `sendmsg` (below the kernel's `UIO_MAXIOV`).
pub(super) const MAX_IOV: usize = 512;

/// What the writer has yet to write, in order.
pub(super) enum Item {
    /// Small frames without descriptors, laid out back to back as they will be written.
    Bytes {
        buf: BytesMut,
        /// Frames in `buf`, and the queue bytes they hold.
        frames: usize,
        charged: usize,
    },
    /// A frame written from its own pieces: it has descriptors or a large payload.
    Frame(Outgoing),
    /// Shut down the write side once everything before it is written.
    Close,
}

impl Item {
    /// How many iovecs the item takes in a `sendmsg`.
    fn iovecs(&self) -> usize {
        match self {
            Item::Bytes { .. } => 1,
            Item::Frame(_) => 3,
            Item::Close => 0,
        }
    }

    fn len(&self) -> usize {
        match self {
            Item::Bytes { buf, .. } => buf.len(),
            Item::Frame(out) => out.len(),
            Item::Close => 0,
        }
    }
}

/// What the lock guards.
struct Items {
    items: VecDeque<Item>,
    /// No more frames are taken: a close is queued or the writer stopped.
    shut: bool,
    /// A written buffer kept for the next [`Item::Bytes`].
    spare: Option<BytesMut>,
}

/// The queue, its bounds, and the writer's wake-up.
pub(super) struct SendQueue {
    items: Mutex<Items>,
    /// Wakes the writer when the queue stops being empty.
    work: Notify,
    bytes: Semaphore,
    frames: Semaphore,
    /// The byte permits there are: a frame larger than the whole queue is charged this much, and
    /// so waits for an empty queue.
    max_charge: u32,
}

impl SendQueue {
    pub(super) fn new(limits: &Limits) -> SendQueue {
        let max_charge = limits.send_queue_bytes.clamp(1, u32::MAX as usize);
        SendQueue {
            items: Mutex::new(Items {
                items: VecDeque::new(),
                shut: false,
                spare: None,
            }),
            work: Notify::new(),
            bytes: Semaphore::new(max_charge),
            frames: Semaphore::new(limits.send_queue_frames.clamp(1, Semaphore::MAX_PERMITS)),
            max_charge: max_charge as u32,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Items> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.items.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The byte permits a frame of `len` bytes on the wire takes.
    pub(super) fn charge(&self, len: usize) -> u32 {
        len.clamp(1, self.max_charge as usize) as u32
    }

    /// Takes `bytes` bytes and one frame of the queue if there is room now. False when the queue
    /// is full or shut.
    pub(super) fn try_reserve(&self, bytes: u32) -> bool {
        if let Ok(b) = self.bytes.try_acquire_many(bytes) {
            if let Ok(f) = self.frames.try_acquire() {
                b.forget();
                f.forget();
                return true;
            }
        }
        false
    }

    /// Takes `bytes` bytes and one frame of the queue, waiting (at most `limit`) for room: fails
    /// with [`WireError::Stalled`] when the limit passes, [`WireError::Closed`] once the queue is
    /// shut (a close shuts it while senders wait: they fail, their frames are not queued). When
    /// there is room now, no timer is set. Cancel-safe: permits are only kept once both are held.
    pub(super) async fn reserve(
        &self,
        bytes: u32,
        limit: Option<Duration>,
    ) -> Result<(), WireError> {
        // Room now: no future to wait on, no timer.
        if self.try_reserve(bytes) {
            return Ok(());
        }
        let wait = async {
            let b = self
                .bytes
                .acquire_many(bytes)
                .await
                .map_err(|_| WireError::Closed)?;
            let f = self.frames.acquire().await.map_err(|_| WireError::Closed)?;
            b.forget();
            f.forget();
            Ok(())
        };
        match limit {
            None => wait.await,
            Some(d) => tokio::time::timeout(d, wait)
                .await
                .map_err(|_| WireError::Stalled(d))?,
        }
    }

    /// Gives back what [`SendQueue::try_reserve`] took for a frame that will not be queued.
    pub(super) fn unreserve(&self, bytes: u32) {
        self.bytes.add_permits(bytes as usize);
        self.frames.add_permits(1);
    }

    /// Queues a frame whose permits are taken, for the writer; [`WireError::Closed`] once the
    /// queue is shut.
    pub(super) fn push(&self, out: Outgoing) -> Result<(), WireError> {
        let mut q = self.lock();
        if q.shut {
            return Err(WireError::Closed);
        }
        let was_empty = q.items.is_empty();
        if out.fds.is_empty() && out.payload.len() + out.trailer.len() < COPY_BELOW {
            let len = out.len();
            let append = matches!(q.items.back(), Some(Item::Bytes { buf, .. })
                if buf.len() + len <= BATCH_BYTES);
            if !append {
                let mut buf = q.spare.take().unwrap_or_default();
                buf.reserve(BYTES_ITEM.max(len));
                q.items.push_back(Item::Bytes {
                    buf,
                    frames: 0,
                    charged: 0,
                });
            }
            if let Some(Item::Bytes {
                buf,
                frames,
                charged,
            }) = q.items.back_mut()
            {
                buf.extend_from_slice(out.head.as_slice());
                buf.extend_from_slice(&out.payload);
                buf.extend_from_slice(&out.trailer);
                buf.extend_from_slice(out.tail);
                *frames += 1;
                *charged += out.charged as usize;
            }
        } else {
            q.items.push_back(Item::Frame(out));
        }
        drop(q);
        if was_empty {
            self.work.notify_one();
        }
        Ok(())
    }

    /// Queues a shutdown behind everything queued; later sends fail. False if the queue was
    /// already shut.
    pub(super) fn shut(&self) -> bool {
        let mut q = self.lock();
        if q.shut {
            return false;
        }
        q.shut = true;
        q.items.push_back(Item::Close);
        drop(q);
        // Senders waiting for room would wait for nothing: they fail with `Closed`.
        self.bytes.close();
        self.frames.close();
        self.work.notify_one();
        true
    }

    /// Waits for queued items and moves them into `batch` (empty), up to a batch's size. A frame
    /// with descriptors starts a batch of its own, so its descriptors go with its first byte; a
    /// [`Item::Close`] ends one.
    pub(super) async fn next_batch(&self, batch: &mut Vec<Item>) {
        wait_until(&self.work, || self.take_batch(batch)).await
    }

    /// Moves queued items into `batch`; whether there were any.
    fn take_batch(&self, batch: &mut Vec<Item>) -> bool {
        let mut q = self.lock();
        let (mut bytes, mut iovecs) = (0, 0);
        while let Some(item) = q.items.front() {
            let fds = matches!(item, Item::Frame(o) if !o.fds.is_empty());
            let full = bytes >= BATCH_BYTES || iovecs + item.iovecs() > MAX_IOV;
            if !batch.is_empty() && (fds || full) {
                break;
            }
            bytes += item.len();
            iovecs += item.iovecs();
            let Some(item) = q.items.pop_front() else {
                break;
            };
            let close = matches!(item, Item::Close);
            batch.push(item);
            if close {
                break;
            }
        }
        !batch.is_empty()
    }

    /// Empties a written batch: gives its queue space back at once (one lock per semaphore, not
    /// one per frame), and keeps one written buffer for reuse.
    pub(super) fn release(&self, batch: &mut Vec<Item>) {
        let (mut bytes, mut frames) = (0, 0);
        let mut spare = None;
        for item in batch.drain(..) {
            match item {
                Item::Bytes {
                    mut buf,
                    frames: f,
                    charged,
                } => {
                    frames += f;
                    bytes += charged;
                    buf.clear();
                    spare = Some(buf);
                }
                Item::Frame(out) => {
                    frames += 1;
                    bytes += out.charged as usize;
                }
                Item::Close => {}
            }
        }
        self.bytes.add_permits(bytes);
        self.frames.add_permits(frames);
        if let Some(buf) = spare {
            let mut q = self.lock();
            if q.spare.is_none() {
                q.spare = Some(buf);
            }
        }
    }

    /// The writer stopped: drops everything queued, refuses new frames, fails waiting senders.
    pub(super) fn stop(&self) {
        {
            let mut q = self.lock();
            q.shut = true;
            q.items.clear();
            q.spare = None;
        }
        self.bytes.close();
        self.frames.close();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::super::tests::pair;
    use crate::frame::{Format, Frame, Kind};
    use crate::{Codec, Limits, WireError};

    #[tokio::test]
    async fn full_queue_pushes_back() {
        let limits = Limits {
            send_queue_frames: 4,
            send_queue_bytes: 64 * 1024,
            ..Limits::default()
        };
        let ((tx, _), (_peer_tx, _peer_rx)) = pair(Codec::Binary, limits);
        // Nobody reads the peer: the socket buffer fills, then the queue, then send waits.
        let payload = Bytes::from(vec![0u8; 32 * 1024]);
        let mut sent = 0usize;
        let stalled = loop {
            let f = Frame::new(Kind::Message, Format::Raw, payload.clone());
            match tokio::time::timeout(Duration::from_millis(200), tx.send(f)).await {
                Ok(r) => {
                    r.unwrap();
                    sent += 1;
                    assert!(sent < 10_000, "send never pushed back");
                }
                Err(_) => break true,
            }
        };
        assert!(stalled);
    }

    /// Small frames are held back by the frame limit long before the byte limit: the queue
    /// holds at most `send_queue_frames` of them however small they are.
    #[tokio::test]
    async fn full_queue_of_small_frames_pushes_back() {
        let limits = Limits {
            send_queue_frames: 4,
            ..Limits::default()
        };
        let ((tx, _), (_peer_tx, mut peer_rx)) = pair(Codec::Binary, limits);
        let frame = || Frame::new(Kind::Message, Format::Raw, Bytes::from_static(b"x"));
        let wait = Duration::from_millis(200);
        let mut sent = 0usize;
        loop {
            let f = frame();
            match tx.send_within(f, wait).await {
                Ok(()) => {
                    sent += 1;
                    // The socket buffer takes some 10^4 such frames; the byte limit alone
                    // (64 MiB) would let millions through.
                    assert!(sent < 200_000, "send never pushed back");
                }
                Err(WireError::Stalled(_)) => break,
                Err(e) => panic!("{e}"),
            }
        }
        // Waits that gave up took nothing: once the peer has read everything, the whole queue
        // is free again.
        for _ in 0..limits.send_queue_frames {
            assert!(matches!(
                tx.send_within(frame(), Duration::from_millis(10)).await,
                Err(WireError::Stalled(_))
            ));
        }
        for _ in 0..sent {
            peer_rx.recv().await.unwrap().unwrap();
        }
        for _ in 0..limits.send_queue_frames {
            tx.send_within(frame(), wait).await.unwrap();
        }
    }
}
