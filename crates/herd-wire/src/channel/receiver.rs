//! The receiving half: [`Receiver`] reads the socket (with `recvmsg` where descriptors may come:
//! between binary frames, anywhere on a Node json channel), collecting them into a bounded
//! queue, and decodes frames with the channel's codec.

use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::AsFd;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags};
use tokio::io::Interest;
use tokio::net::UnixStream;

use super::{Shared, SCM_MAX_FD};
use crate::frame::{self, Check, FdQueue, Frame};
use crate::json::JsonDecoder;
use crate::{Codec, WireError};

/// Read size when no frame size is known.
const READ_CHUNK: usize = 16 * 1024;

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

impl Receiver {
    pub(super) fn new(shared: Arc<Shared>) -> Receiver {
        Receiver {
            shared,
            buf: BytesMut::with_capacity(READ_CHUNK),
            fds: FdQueue::default(),
            json: JsonDecoder::default(),
            eof: false,
            scratch: vec![0; READ_CHUNK].into_boxed_slice(),
        }
    }

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
            Codec::NodeJson => self
                .json
                .decode_with_fds(&mut self.buf, &mut self.fds, limits),
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
            // Node sends a handle (`NODE_HANDLE`) on the first byte of its line, anywhere in
            // the stream: every read may carry one.
            Codec::NodeJson => self.recv_with_fds(sock).await,
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

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use bytes::Bytes;

    use super::super::tests::{pair, tempfile};
    use crate::frame::{Format, Frame, Kind};
    use crate::{Codec, Limits};

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
}
