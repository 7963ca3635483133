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

use std::collections::VecDeque;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags, Shutdown,
};
use tokio::io::Interest;
use tokio::net::UnixStream;
use tokio::sync::{Notify, Semaphore};

use crate::frame::{self, Check, FdQueue, Frame};
use crate::json::{self, JsonDecoder};
use crate::{Codec, Limits, WireError};

/// The kernel's cap on descriptors in one `SCM_RIGHTS` message (`SCM_MAX_FD`).
const SCM_MAX_FD: usize = 253;
/// Payloads up to this size are copied into the queue's buffers; larger ones are written from
/// their own memory.
const COPY_BELOW: usize = 16 * 1024;
/// A batch, and a buffer of small frames, stops growing at this many bytes.
const BATCH_BYTES: usize = 256 * 1024;
/// A new buffer of small frames starts with room for this many bytes.
const BYTES_ITEM: usize = 64 * 1024;
/// At most this many iovecs per `sendmsg` (below the kernel's `UIO_MAXIOV`).
const MAX_IOV: usize = 512;
/// Read size when no frame size is known.
const READ_CHUNK: usize = 16 * 1024;

/// What goes before a frame's payload.
enum Head {
    /// A binary frame header, kept inline (no allocation per frame).
    Binary([u8; frame::HEADER_LEN]),
    /// The Node codec's JSON text before the payload.
    Json(Bytes),
}

impl Head {
    fn as_slice(&self) -> &[u8] {
        match self {
            Head::Binary(h) => h,
            Head::Json(b) => b,
        }
    }
}

/// A frame ready to write: its bytes in pieces, its descriptors, and the queue bytes it holds
/// (given back by the writer once it is written; it also holds one frame of the queue).
struct Outgoing {
    head: Head,
    payload: Bytes,
    tail: &'static [u8],
    fds: Vec<OwnedFd>,
    charged: u32,
    /// The frame's fields, to give it back when it cannot be queued.
    kind: frame::Kind,
    id: u64,
    format: frame::Format,
}

impl Outgoing {
    fn into_frame(self) -> Frame {
        Frame {
            kind: self.kind,
            id: self.id,
            format: self.format,
            payload: self.payload,
            fds: self.fds,
        }
    }

    fn len(&self) -> usize {
        self.head.as_slice().len() + self.payload.len() + self.tail.len()
    }
}

/// What the writer has yet to write, in order.
enum Item {
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

/// The send queue. Small frames are copied into the last [`Item::Bytes`] as they are queued, so
/// a stream of them costs a lock and a copy each, and the writer writes whole buffers.
struct Queue {
    items: VecDeque<Item>,
    /// No more frames are taken: a close is queued or the writer stopped.
    shut: bool,
    /// A written buffer kept for the next [`Item::Bytes`].
    spare: Option<BytesMut>,
}

/// The queue is bounded by two semaphores, one permit per byte and one per frame: a sender takes
/// its permits before queueing (and forgets them, so queueing costs no reference counting), the
/// writer adds them back once per written batch.
struct Shared {
    sock: UnixStream,
    codec: Codec,
    limits: Limits,
    queue: Mutex<Queue>,
    /// Wakes the writer when the queue stops being empty.
    work: Notify,
    bytes: Semaphore,
    frames: Semaphore,
    /// Set once the writer has stopped; `stopped_notify` wakes [`Sender::closed`].
    stopped: AtomicBool,
    stopped_notify: Notify,
    /// Why the writer stopped, if it failed.
    failure: Mutex<Option<String>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        // Nothing panics while holding the lock; a poisoned queue is still consistent.
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues a shutdown behind everything queued; later sends fail. False if the queue was
    /// already shut.
    fn shut(&self) -> bool {
        let mut q = self.lock();
        if q.shut {
            return false;
        }
        q.shut = true;
        q.items.push_back(Item::Close);
        drop(q);
        // Senders waiting for room would wait for nothing.
        self.bytes.close();
        self.frames.close();
        self.work.notify_one();
        true
    }
}

/// Closes the channel when the last [`Sender`] clone is dropped.
struct Alive(Arc<Shared>);

impl Drop for Alive {
    fn drop(&mut self) {
        self.0.shut();
    }
}

/// The sending half of a channel. Clones share one queue and one writer.
#[derive(Clone)]
pub struct Sender {
    shared: Arc<Shared>,
    _alive: Arc<Alive>,
}

/// The receiving half of a channel.
pub struct Receiver {
    shared: Arc<Shared>,
    buf: BytesMut,
    fds: FdQueue,
    json: JsonDecoder,
    eof: bool,
    /// `recvmsg` lands here (initialised once) and is copied into `buf`: cheaper than zeroing
    /// fresh buffer space before every read.
    scratch: Box<[u8]>,
}

/// Wraps a connected `AF_UNIX` stream socket as a channel. Must be called inside a tokio runtime
/// (it spawns the writer task).
pub fn channel(fd: OwnedFd, codec: Codec, limits: Limits) -> io::Result<(Sender, Receiver)> {
    let std = std::os::unix::net::UnixStream::from(fd);
    std.set_nonblocking(true)?;
    let sock = UnixStream::from_std(std)?;
    let queue_bytes = limits.send_queue_bytes.clamp(1, u32::MAX as usize);
    let shared = Arc::new(Shared {
        sock,
        codec,
        limits,
        queue: Mutex::new(Queue {
            items: VecDeque::new(),
            shut: false,
            spare: None,
        }),
        work: Notify::new(),
        bytes: Semaphore::new(queue_bytes),
        frames: Semaphore::new(limits.send_queue_frames.clamp(1, Semaphore::MAX_PERMITS)),
        stopped: AtomicBool::new(false),
        stopped_notify: Notify::new(),
        failure: Mutex::new(None),
    });
    tokio::spawn(writer(shared.clone()));
    Ok((
        Sender {
            shared: shared.clone(),
            _alive: Arc::new(Alive(shared.clone())),
        },
        Receiver {
            shared,
            buf: BytesMut::with_capacity(READ_CHUNK),
            fds: FdQueue::default(),
            json: JsonDecoder::default(),
            eof: false,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        },
    ))
}

impl Sender {
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
    /// the channel's codec; fails with [`WireError::Closed`] once the channel is closed.
    pub async fn send(&self, frame: Frame) -> Result<(), WireError> {
        let out = self.prepare(frame)?;
        self.reserve(out.charged, None).await?;
        self.enqueue(out)
    }

    /// Like [`Sender::send`], but waits at most `limit` for room in the queue, then fails with
    /// [`WireError::Stalled`] (the frame is not queued). When there is room, no timer is set.
    pub async fn send_within(&self, frame: Frame, limit: Duration) -> Result<(), WireError> {
        let out = self.prepare(frame)?;
        self.reserve(out.charged, Some(limit)).await?;
        self.enqueue(out)
    }

    /// Queues `frame` if the queue has room now, without waiting: `Ok(None)` once queued,
    /// `Ok(Some(frame))`, the frame given back, when the queue is full or the channel closed
    /// ([`Sender::send`] or [`Sender::send_within`] then waits or says why).
    ///
    /// Fails at once if the frame breaks the limits or cannot be expressed in the codec.
    pub fn try_send(&self, frame: Frame) -> Result<Option<Frame>, WireError> {
        let out = self.prepare(frame)?;
        if !self.try_reserve(out.charged) {
            return Ok(Some(out.into_frame()));
        }
        self.enqueue(out).map(|()| None)
    }

    /// Takes `bytes` bytes and one frame of the queue if there is room now.
    fn try_reserve(&self, bytes: u32) -> bool {
        let s = &*self.shared;
        if let Ok(b) = s.bytes.try_acquire_many(bytes) {
            if let Ok(f) = s.frames.try_acquire() {
                b.forget();
                f.forget();
                return true;
            }
        }
        false
    }

    /// Takes `bytes` bytes and one frame of the queue, waiting (at most `limit`) for room.
    /// Cancel-safe: permits are only kept once both are held.
    async fn reserve(&self, bytes: u32, limit: Option<Duration>) -> Result<(), WireError> {
        let s = &*self.shared;
        // Room now: no future to wait on, no timer.
        if self.try_reserve(bytes) {
            return Ok(());
        }
        let wait = async {
            let b = s
                .bytes
                .acquire_many(bytes)
                .await
                .map_err(|_| WireError::Closed)?;
            let f = s.frames.acquire().await.map_err(|_| WireError::Closed)?;
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

    /// Hands a frame whose permits are taken to the writer.
    fn enqueue(&self, out: Outgoing) -> Result<(), WireError> {
        let s = &*self.shared;
        let mut q = s.lock();
        if q.shut {
            return Err(self.closed_error());
        }
        let was_empty = q.items.is_empty();
        if out.fds.is_empty() && out.payload.len() < COPY_BELOW {
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
                buf.extend_from_slice(out.tail);
                *frames += 1;
                *charged += out.charged as usize;
            }
        } else {
            q.items.push_back(Item::Frame(out));
        }
        drop(q);
        if was_empty {
            s.work.notify_one();
        }
        Ok(())
    }

    /// Queues a shutdown after every frame already queued: they are written, then the peer reads
    /// end-of-stream. Later sends fail with [`WireError::Closed`].
    pub fn close(&self) -> Result<(), WireError> {
        if self.shared.shut() {
            Ok(())
        } else {
            Err(self.closed_error())
        }
    }

    /// Waits until the writer has stopped (after a close, a write failure, or every sender
    /// dropped).
    pub async fn closed(&self) {
        let s = &*self.shared;
        wait_until(&s.stopped_notify, || s.stopped.load(Ordering::Acquire)).await
    }

    /// Whether the writer has stopped.
    pub fn is_closed(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }

    /// Why the writer stopped, if it stopped on an error.
    pub fn failure(&self) -> Option<String> {
        self.shared.failure.lock().ok().and_then(|f| f.clone())
    }

    fn closed_error(&self) -> WireError {
        WireError::Closed
    }

    fn prepare(&self, frame: Frame) -> Result<Outgoing, WireError> {
        frame::validate_outgoing(&frame, &self.shared.limits)?;
        let (head, tail) = match self.shared.codec {
            Codec::Binary => {
                let mut head = [0u8; frame::HEADER_LEN];
                frame::encode_header(&frame, &mut &mut head[..]);
                (Head::Binary(head), &b""[..])
            }
            Codec::NodeJson => {
                let mut head = BytesMut::with_capacity(64);
                let tail = json::encode_around(&frame, &mut head)?;
                (Head::Json(head.freeze()), tail)
            }
        };
        let mut out = Outgoing {
            head,
            payload: frame.payload,
            tail,
            fds: frame.fds,
            charged: 0,
            kind: frame.kind,
            id: frame.id,
            format: frame.format,
        };
        // A frame larger than the whole queue waits for an empty one.
        out.charged = out.len().clamp(
            1,
            self.shared
                .limits
                .send_queue_bytes
                .clamp(1, u32::MAX as usize),
        ) as u32;
        Ok(out)
    }
}

impl Receiver {
    /// The codec this channel speaks.
    pub fn codec(&self) -> Codec {
        self.shared.codec
    }

    /// Node-internal messages dropped so far (Node-json codec only).
    pub fn ignored_internal(&self) -> u64 {
        self.json.ignored()
    }

    /// The next frame, or `Ok(None)` at a clean end-of-stream.
    ///
    /// Cancel-safe: a call dropped before it returns (in a `select!`) loses no bytes and no
    /// descriptors; the next call picks up where it stopped.
    ///
    /// Any error (a malformed or oversized frame, descriptors that do not add up, end-of-stream
    /// in the middle of a frame) is final: the peer can no longer be trusted to be in sync, and
    /// the caller should drop the channel.
    pub async fn recv(&mut self) -> Result<Option<Frame>, WireError> {
        loop {
            if let Some(frame) = self.decode()? {
                return Ok(Some(frame));
            }
            if self.eof {
                if self.buf.is_empty() {
                    return Ok(None);
                }
                return Err(WireError::Truncated {
                    buffered: self.buf.len(),
                });
            }
            let n = match self.read_more().await {
                // A peer that closes with our bytes still unread in its socket makes the kernel
                // report a reset instead of end-of-stream: it is the same event, the peer is gone.
                Err(WireError::Io(e)) if e.kind() == io::ErrorKind::ConnectionReset => 0,
                r => r?,
            };
            if n == 0 {
                self.eof = true;
            }
        }
    }

    /// The next frame if a whole one is already buffered, without reading the socket: `Ok(None)`
    /// means "call [`Receiver::recv`]". Lets a reader take a burst of frames in one go.
    pub fn try_recv_buffered(&mut self) -> Result<Option<Frame>, WireError> {
        self.decode()
    }

    fn decode(&mut self) -> Result<Option<Frame>, WireError> {
        let limits = &self.shared.limits;
        match self.shared.codec {
            Codec::Binary => frame::decode(&mut self.buf, &mut self.fds, limits),
            Codec::NodeJson => self.json.decode(&mut self.buf, limits),
        }
    }

    async fn read_more(&mut self) -> Result<usize, WireError> {
        let shared = self.shared.clone();
        let sock = &shared.sock;
        match shared.codec {
            Codec::Binary => {
                let left = match frame::check(&self.buf, &shared.limits)? {
                    Check::Incomplete {
                        payload_left: Some(left),
                    } => left,
                    _ => 0,
                };
                if left > 0 {
                    // Inside a frame whose descriptors have already arrived: read exactly the rest
                    // of its payload (never past it, so the next frame's descriptors are not
                    // touched) straight into the buffer.
                    self.buf.reserve(left);
                    let limited = (&mut self.buf).limit(left);
                    return read_buf(sock, limited).await;
                }
                self.recv_with_fds(sock).await
            }
            Codec::NodeJson => {
                let chunk = self.buf.len().clamp(READ_CHUNK, 16 * 1024 * 1024);
                self.buf.reserve(chunk);
                let limited = (&mut self.buf).limit(chunk);
                read_buf(sock, limited).await
            }
        }
    }

    /// Reads with `recvmsg`, collecting descriptors. The buffer is grown, filled and trimmed
    /// inside one synchronous step, so a cancelled call leaves it untouched.
    async fn recv_with_fds(&mut self, sock: &UnixStream) -> Result<usize, WireError> {
        loop {
            sock.readable().await?;
            let (buf, fds, scratch) = (&mut self.buf, &mut self.fds, &mut self.scratch);
            match sock.try_io(Interest::READABLE, || {
                let r = recv_once(sock, scratch, fds);
                if let Ok(Ok(n)) = &r {
                    buf.extend_from_slice(&scratch[..*n]);
                }
                r
            }) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e.into()),
                Ok(r) => return r,
            }
        }
    }
}

/// One `recvmsg`; descriptors arrive close-on-exec. The inner result carries protocol errors.
fn recv_once(
    sock: &UnixStream,
    buf: &mut [u8],
    fds: &mut FdQueue,
) -> io::Result<Result<usize, WireError>> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = rustix::net::recvmsg(
        sock.as_fd(),
        &mut iov,
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    let mut received = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            received.extend(it);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Ok(Err(WireError::FdsTruncated));
    }
    Ok(fds.extend(received).map(|()| msg.bytes))
}

async fn read_buf<B: BufMut>(sock: &UnixStream, mut buf: B) -> Result<usize, WireError> {
    loop {
        sock.readable().await?;
        match sock.try_read_buf(&mut buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.into()),
            Ok(n) => return Ok(n),
        }
    }
}

async fn writer(shared: Arc<Shared>) {
    let mut batch: Vec<Item> = Vec::new();
    loop {
        wait_until(&shared.work, || take_batch(&shared, &mut batch)).await;
        let close = matches!(batch.last(), Some(Item::Close));
        if let Err(e) = write_batch(&shared.sock, &mut batch).await {
            fail(&shared, format!("write failed: {e}"));
            return;
        }
        // Give the batch's queue space back at once (one lock per semaphore, not one per frame),
        // and keep one written buffer for reuse.
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
        shared.bytes.add_permits(bytes);
        shared.frames.add_permits(frames);
        if let Some(buf) = spare {
            let mut q = shared.lock();
            if q.spare.is_none() {
                q.spare = Some(buf);
            }
        }
        if close {
            break;
        }
    }
    // Every queued frame is written; tell the peer we are done.
    let _ = rustix::net::shutdown(shared.sock.as_fd(), Shutdown::Write);
    stop(&shared);
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

/// Moves queued items into `batch`, up to a batch's size; whether there were any. A frame with
/// descriptors starts a batch of its own, so its descriptors go with its first byte.
fn take_batch(shared: &Shared, batch: &mut Vec<Item>) -> bool {
    let mut q = shared.lock();
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

/// Marks the writer stopped: nothing more is queued, waiting senders fail, `closed` returns.
fn stop(shared: &Shared) {
    {
        let mut q = shared.lock();
        q.shut = true;
        q.items.clear();
        q.spare = None;
    }
    shared.bytes.close();
    shared.frames.close();
    shared.stopped.store(true, Ordering::Release);
    shared.stopped_notify.notify_waiters();
}

fn fail(shared: &Shared, why: String) {
    tracing::debug!(%why, "channel writer stopped");
    if let Ok(mut f) = shared.failure.lock() {
        *f = Some(why);
    }
    let _ = rustix::net::shutdown(shared.sock.as_fd(), Shutdown::Both);
    stop(shared);
}

/// Writes a batch: the first frame's descriptors go with the first byte.
async fn write_batch(sock: &UnixStream, batch: &mut [Item]) -> io::Result<()> {
    let fds = match batch.first_mut() {
        Some(Item::Frame(out)) => std::mem::take(&mut out.fds),
        _ => Vec::new(),
    };
    // The batch as pieces, each written from where it lies.
    let mut pieces: Vec<&[u8]> = Vec::with_capacity(batch.len() * 3);
    for item in batch.iter() {
        match item {
            Item::Bytes { buf, .. } => pieces.push(buf),
            Item::Frame(out) => {
                pieces.push(out.head.as_slice());
                pieces.push(&out.payload);
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
    use super::*;
    use crate::frame::{Format, Kind};
    use std::io::{Read, Seek, Write};

    fn pair(codec: Codec, limits: Limits) -> ((Sender, Receiver), (Sender, Receiver)) {
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

    #[tokio::test]
    async fn sends_after_close_fail() {
        let ((tx, _), (_, mut rx)) = pair(Codec::Binary, Limits::default());
        let f = || Frame::new(Kind::Message, Format::Raw, Bytes::from_static(b"x"));
        tx.send(f()).await.unwrap();
        tx.close().unwrap();
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

    /// `recv` dropped mid-wait (as in a `select!`) loses nothing and corrupts nothing.
    #[tokio::test]
    async fn recv_is_cancel_safe() {
        for codec in [Codec::Binary, Codec::NodeJson] {
            let ((tx, _), (_, mut rx)) = pair(codec, Limits::default());
            let n = 3000u64;
            let sender = tokio::spawn(async move {
                for i in 0..n {
                    let payload = Bytes::from(format!("{i}"));
                    let mut f = Frame::new(Kind::Message, Format::Json, payload);
                    if codec == Codec::Binary && i % 100 == 0 {
                        f = f.with_fds(vec![OwnedFd::from(tempfile())]);
                    }
                    tx.send(f).await.unwrap();
                    if i % 7 == 0 {
                        tokio::task::yield_now().await;
                    }
                }
                tx.close().unwrap();
            });
            let mut next = 0u64;
            let mut cancelled = 0u64;
            loop {
                tokio::select! {
                    biased;
                    f = rx.recv() => match f.unwrap() {
                        Some(f) => {
                            assert_eq!(f.payload, Bytes::from(format!("{next}")), "{codec:?}");
                            let want = usize::from(codec == Codec::Binary && next.is_multiple_of(100));
                            assert_eq!(f.fds.len(), want);
                            next += 1;
                        }
                        None => break,
                    },
                    _ = tokio::task::yield_now() => cancelled += 1,
                }
            }
            sender.await.unwrap();
            assert_eq!(next, n);
            assert!(cancelled > 0, "the test never cancelled a recv");
        }
    }

    #[tokio::test]
    async fn json_codec_refuses_fds_and_raw() {
        let ((tx, _), _) = pair(Codec::NodeJson, Limits::default());
        let raw = Frame::new(Kind::Message, Format::Raw, Bytes::from_static(b"x"));
        assert!(matches!(tx.send(raw).await, Err(WireError::Unsupported(_))));
        let with_fd = Frame::new(Kind::Message, Format::Json, Bytes::from_static(b"1"))
            .with_fds(vec![OwnedFd::from(tempfile())]);
        assert!(matches!(
            tx.send(with_fd).await,
            Err(WireError::Unsupported(_))
        ));
    }

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
            match tokio::time::timeout(std::time::Duration::from_millis(200), tx.send(f)).await {
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
        let wait = std::time::Duration::from_millis(200);
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
                tx.send_within(frame(), std::time::Duration::from_millis(10))
                    .await,
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

    fn tempfile() -> std::fs::File {
        let fd = rustix::fs::memfd_create("herd-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        std::fs::File::from(fd)
    }
}
