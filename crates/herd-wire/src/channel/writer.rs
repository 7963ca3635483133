//! The writer: one task per channel that drains the send queue in batches and writes each with
//! one `sendmsg` (a batch's first frame's descriptors attached to its first byte), then shuts the
//! socket's write side down once a close is reached, or both sides on a write failure.

use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, Shutdown};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::Notify;

use super::queue::{Item, MAX_IOV};
use super::{wait_until, Shared, SCM_MAX_FD};

/// Whether the writer has stopped, and why if it failed.
#[derive(Default)]
pub(super) struct Status {
    /// Set once the writer has stopped; `stopped_notify` wakes [`Status::stopped`].
    stopped: AtomicBool,
    stopped_notify: Notify,
    /// Why the writer stopped, if it failed.
    failure: Mutex<Option<String>>,
}

impl Status {
    /// Waits until the writer has stopped.
    pub(super) async fn stopped(&self) {
        wait_until(&self.stopped_notify, || self.is_stopped()).await
    }

    pub(super) fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Acquire)
    }

    pub(super) fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }
}

/// The writer task.
pub(super) async fn run(shared: Arc<Shared>) {
    let mut batch: Vec<Item> = Vec::new();
    loop {
        shared.queue.next_batch(&mut batch).await;
        let close = matches!(batch.last(), Some(Item::Close));
        if let Err(e) = write_batch(&shared.sock, &mut batch).await {
            fail(&shared, format!("write failed: {e}"));
            return;
        }
        shared.queue.release(&mut batch);
        if close {
            break;
        }
    }
    // Every queued frame is written; tell the peer we are done.
    let _ = rustix::net::shutdown(shared.sock.as_fd(), Shutdown::Write);
    stop(&shared);
}

/// Marks the writer stopped: nothing more is queued, waiting senders fail, `closed` returns.
fn stop(shared: &Shared) {
    shared.queue.stop();
    shared.writer.stopped.store(true, Ordering::Release);
    shared.writer.stopped_notify.notify_waiters();
}

fn fail(shared: &Shared, why: String) {
    tracing::debug!(%why, "channel writer stopped");
    if let Ok(mut f) = shared.writer.failure.lock() {
        *f = Some(why);
    }
    let _ = rustix::net::shutdown(shared.sock.as_fd(), Shutdown::Both);
    stop(shared);
}

/// Writes a batch: the first frame's descriptors go with the first byte.
async fn write_batch(sock: &UnixStream, batch: &mut [Item]) -> io::Result<()> {
    let fds: Vec<OwnedFd> = match batch.first_mut() {
        Some(Item::Frame(out)) => std::mem::take(&mut out.fds),
        _ => Vec::new(),
    };
    // The batch as pieces, each written from where it lies.
    let mut pieces: Vec<&[u8]> = Vec::with_capacity(batch.len() * 4);
    for item in batch.iter() {
        match item {
            Item::Bytes { buf, .. } => pieces.push(buf),
            Item::Frame(out) => {
                pieces.push(out.head.as_slice());
                pieces.push(&out.payload);
                pieces.push(&out.trailer);
                pieces.push(out.tail);
            }
            Item::Close => {}
        }
    }
    pieces.retain(|p| !p.is_empty());
    let mut fds_sent = fds.is_empty();
    let mut idx = 0;
    let mut off = 0;
    while idx < pieces.len() {
        sock.writable().await?;
        let res = sock.try_io(Interest::WRITABLE, || {
            let end = (idx + MAX_IOV).min(pieces.len());
            let mut iov: Vec<IoSlice<'_>> = Vec::with_capacity(end - idx);
            iov.push(IoSlice::new(&pieces[idx][off..]));
            for p in &pieces[idx + 1..end] {
                iov.push(IoSlice::new(p));
            }
            let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
            let mut space =
                [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
            let mut control = SendAncillaryBuffer::new(&mut space);
            if !fds_sent {
                control.push(SendAncillaryMessage::ScmRights(&borrowed));
            }
            Ok(rustix::net::sendmsg(
                sock.as_fd(),
                &iov,
                &mut control,
                SendFlags::NOSIGNAL,
            )?)
        });
        let mut n = match res {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e),
            Ok(n) => n,
        };
        fds_sent = true;
        while n > 0 && idx < pieces.len() {
            let left = pieces[idx].len() - off;
            if n >= left {
                n -= left;
                idx += 1;
                off = 0;
            } else {
                off += n;
                n = 0;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use bytes::Bytes;

    use super::super::tests::{pair, tempfile};
    use crate::frame::{Format, Frame, Kind};
    use crate::{Codec, Limits};

    /// Several clones sending at once, on a multi-threaded runtime, small and large frames and
    /// frames with descriptors mixed: each sender's frames arrive whole and in its order, every
    /// descriptor with its frame, and dropping the last clone ends the stream after all of them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_senders_keep_their_order() {
        let limits = Limits {
            send_queue_frames: 64,
            send_queue_bytes: 256 * 1024,
            ..Limits::default()
        };
        let ((tx, _), (_, mut rx)) = pair(Codec::Binary, limits);
        const SENDERS: u64 = 4;
        const EACH: u64 = 2_000;
        fn len_of(i: u64) -> usize {
            if i.is_multiple_of(50) {
                40_000
            } else {
                8 + (i % 30) as usize
            }
        }
        let mut tasks = Vec::new();
        for s in 0..SENDERS {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    // Mostly small, every 50th large (written from its own buffer, see
                    // `len_of`), every 97th with a descriptor.
                    let mut payload = vec![(i % 251) as u8; len_of(i)];
                    payload[..8].copy_from_slice(&(s << 32 | i).to_le_bytes());
                    let mut f = Frame::new(Kind::Message, Format::Raw, Bytes::from(payload));
                    if i % 97 == 0 {
                        f = f.with_fds(vec![OwnedFd::from(tempfile())]);
                    }
                    tx.send(f).await.unwrap();
                }
            }));
        }
        drop(tx);
        let mut next = [0u64; SENDERS as usize];
        while let Some(f) = rx.recv().await.unwrap() {
            let tag = u64::from_le_bytes(f.payload[..8].try_into().unwrap());
            let (s, i) = ((tag >> 32) as usize, tag & 0xffff_ffff);
            assert_eq!(i, next[s], "sender {s} out of order");
            next[s] += 1;
            assert_eq!(f.payload.len(), len_of(i));
            assert!(f.payload[8..].iter().all(|&b| b == (i % 251) as u8));
            assert_eq!(f.fds.len(), usize::from(i % 97 == 0));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(next, [EACH; SENDERS as usize], "every frame arrived");
    }
}
