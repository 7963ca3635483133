//! The frame: herd's unit of exchange, and the binary codec that Rust peers speak.
//!
//! A binary frame is a 16-byte little-endian header followed by the payload:
//!
//! ```text
//! offset  size  field
//! 0       4     payload length in bytes (not counting the header)
//! 4       1     kind (see [`Kind`])
//! 5       1     flags: bits 0-1 payload format (0 msgpack, 1 raw, 2 json); bits 2-7 must be 0
//! 6       2     number of file descriptors that travel with this frame
//! 8       8     request id (0 when the kind carries none)
//! ```
//!
//! Decoding is check-then-parse, as in mini-redis: [`check`] looks at the buffered bytes and says
//! whether a whole frame is there ([`Check::Incomplete`] is not an error), and only then is the
//! frame taken out of the buffer. Every limit ([`Limits`]) is enforced on the header, before any
//! payload is buffered, so a peer cannot make us allocate more than `max_frame_len`.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;

use bytes::{Buf, BufMut, Bytes, BytesMut};

use crate::{Limits, WireError};

/// Length of the binary frame header.
pub const HEADER_LEN: usize = 16;

/// What a frame is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// Handshake: the first frame each side of a binary channel sends (protocol version, pid).
    Hello = 1,
    /// A one-way user message.
    Message = 2,
    /// A request that expects one [`Kind::Reply`] or [`Kind::ReplyError`] with the same id.
    Request = 3,
    /// The successful answer to a request.
    Reply = 4,
    /// The failed answer to a request; the payload is the error text.
    ReplyError = 5,
    /// herd's own notices, never shown to user code as a message: a worker's lifecycle
    /// (listening, ready) and the cache hub's pushes to a worker's replica (invalidate keys,
    /// clear). Cache calls themselves are [`Kind::CacheCall`] frames.
    Control = 6,
    /// A call to the primary's cache hub: like a [`Kind::Request`] (same id space, answered by
    /// a [`Kind::Reply`] or [`Kind::ReplyError`]) but served by herd, never shown to user code.
    CacheCall = 7,
    /// One of Node's own internal messages (`NODE_CLUSTER`, `NODE_HANDLE_ACK`,
    /// `NODE_HANDLE_NACK`; on the way out also `NODE_HANDLE`), as its whole JSON line without
    /// the newline: the Node-json codec only, never on the binary wire and never shown to user
    /// code. The one kind the Node-json codec sends with descriptors (a handle Node takes).
    Node = 8,
}

impl Kind {
    /// Parses a kind byte, or `None` for an unknown kind.
    pub fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Message,
            3 => Kind::Request,
            4 => Kind::Reply,
            5 => Kind::ReplyError,
            6 => Kind::Control,
            7 => Kind::CacheCall,
            // `Kind::Node` (8) exists on the Node-json codec only.
            _ => return None,
        })
    }

    /// Whether frames of this kind carry a request id.
    pub fn has_id(self) -> bool {
        matches!(
            self,
            Kind::Request | Kind::Reply | Kind::ReplyError | Kind::CacheCall
        )
    }
}

/// How a frame's payload bytes are encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Format {
    /// MessagePack (the binary codec's encoding of serde values).
    MsgPack,
    /// Opaque bytes, never decoded by herd.
    Raw,
    /// One JSON text (the Node codec's encoding of values).
    Json,
}

impl Format {
    fn to_bits(self) -> u8 {
        match self {
            Format::MsgPack => 0,
            Format::Raw => 1,
            Format::Json => 2,
        }
    }

    fn from_bits(b: u8) -> Option<Format> {
        match b {
            0 => Some(Format::MsgPack),
            1 => Some(Format::Raw),
            2 => Some(Format::Json),
            _ => None,
        }
    }
}

/// One frame, incoming or outgoing, with the file descriptors that travel with it.
///
/// Descriptors are owned: a received frame's fds are closed when the frame is dropped unless the
/// receiver takes them, and a sent frame's fds are closed once they have been written.
#[derive(Debug)]
pub struct Frame {
    /// What the frame is for.
    pub kind: Kind,
    /// Request id, for requests and replies; 0 otherwise.
    pub id: u64,
    /// How `payload` is encoded.
    pub format: Format,
    /// The payload bytes.
    pub payload: Bytes,
    /// File descriptors attached to this frame, in order.
    pub fds: Vec<OwnedFd>,
    /// More payload, written right after `payload` ([`Frame::with_trailer`]): a payload in two
    /// parts, so that a large first part can be shared by many frames without a copy each.
    /// Always empty on a frame read from a channel (its whole payload is in `payload`).
    trailer: Bytes,
}

impl Frame {
    /// A frame of `kind` with no id and no fds.
    pub fn new(kind: Kind, format: Format, payload: Bytes) -> Frame {
        Frame {
            kind,
            id: 0,
            format,
            payload,
            fds: Vec::new(),
            trailer: Bytes::new(),
        }
    }

    /// Sends `trailer` right after the payload, as its last bytes: the peer reads one payload,
    /// `payload` then `trailer`. Neither is copied to be sent, so a large `payload` made once can
    /// go in many frames, each with its own few bytes at the end.
    pub fn with_trailer(mut self, trailer: Bytes) -> Frame {
        self.trailer = trailer;
        self
    }

    /// The payload's trailer ([`Frame::with_trailer`]); empty unless one was set.
    pub fn trailer(&self) -> &Bytes {
        &self.trailer
    }

    /// Bytes of the whole payload, trailer included.
    pub fn payload_len(&self) -> usize {
        self.payload.len() + self.trailer.len()
    }

    /// Sets the request id.
    pub fn with_id(mut self, id: u64) -> Frame {
        self.id = id;
        self
    }

    /// Attaches file descriptors.
    pub fn with_fds(mut self, fds: Vec<OwnedFd>) -> Frame {
        self.fds = fds;
        self
    }
}

/// Received descriptors not yet claimed by a frame header, in arrival order. Bounded: a peer that
/// sends descriptors without frames that claim them is cut off.
#[derive(Debug, Default)]
pub struct FdQueue {
    fds: VecDeque<OwnedFd>,
}

impl FdQueue {
    /// Most unclaimed descriptors held at once.
    pub const MAX_PENDING: usize = 1024;

    /// Adds descriptors received with the last read.
    pub fn extend(&mut self, fds: impl IntoIterator<Item = OwnedFd>) -> Result<(), WireError> {
        for fd in fds {
            if self.fds.len() >= Self::MAX_PENDING {
                return Err(WireError::TooManyFds {
                    count: self.fds.len() + 1,
                    max: Self::MAX_PENDING,
                });
            }
            self.fds.push_back(fd);
        }
        Ok(())
    }

    /// Descriptors waiting to be claimed.
    pub fn len(&self) -> usize {
        self.fds.len()
    }

    /// Whether no descriptors are waiting.
    pub fn is_empty(&self) -> bool {
        self.fds.is_empty()
    }

    pub(crate) fn take(&mut self, n: usize) -> Vec<OwnedFd> {
        if n == 0 {
            return Vec::new();
        }
        self.fds.drain(..n).collect()
    }
}

/// The outcome of [`check`]: whether the buffer starts with a whole frame.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// A whole frame of this many bytes (header included) is buffered.
    Ready(usize),
    /// More bytes are needed; `payload_left` is how many of the current frame's payload bytes are
    /// still to come, once the header is known (so the reader can size its next read).
    Incomplete {
        /// Payload bytes of the current frame still to be read, if the header is complete.
        payload_left: Option<usize>,
    },
}

struct Header {
    len: usize,
    kind: Kind,
    format: Format,
    nfds: usize,
    id: u64,
}

fn parse_header(mut b: &[u8], limits: &Limits) -> Result<Header, WireError> {
    let len = b.get_u32_le() as usize;
    let kind_byte = b.get_u8();
    let flags = b.get_u8();
    let nfds = b.get_u16_le() as usize;
    let id = b.get_u64_le();
    if len > limits.max_frame_len {
        return Err(WireError::FrameTooLarge {
            len,
            max: limits.max_frame_len,
        });
    }
    let kind = Kind::from_u8(kind_byte).ok_or(WireError::UnknownKind(kind_byte))?;
    if flags & !0b11 != 0 {
        return Err(WireError::BadFlags(flags));
    }
    let format = Format::from_bits(flags & 0b11).ok_or(WireError::BadFlags(flags))?;
    if nfds > limits.max_fds_per_frame {
        return Err(WireError::TooManyFds {
            count: nfds,
            max: limits.max_fds_per_frame,
        });
    }
    if id != 0 && !kind.has_id() {
        return Err(WireError::Malformed(format!(
            "{kind:?} frame carries request id {id}"
        )));
    }
    Ok(Header {
        len,
        kind,
        format,
        nfds,
        id,
    })
}

/// Checks whether `buf` starts with a whole binary frame, enforcing `limits` on the header.
pub fn check(buf: &[u8], limits: &Limits) -> Result<Check, WireError> {
    if buf.len() < HEADER_LEN {
        return Ok(Check::Incomplete { payload_left: None });
    }
    let h = parse_header(&buf[..HEADER_LEN], limits)?;
    let have = buf.len() - HEADER_LEN;
    if have >= h.len {
        Ok(Check::Ready(HEADER_LEN + h.len))
    } else {
        Ok(Check::Incomplete {
            payload_left: Some(h.len - have),
        })
    }
}

/// Takes the next whole frame out of `buf`, claiming its descriptors from `fds`.
///
/// Returns `Ok(None)` when more bytes are needed. The payload is split off the buffer without a
/// copy. A frame that claims more descriptors than have arrived is a protocol error: the sender
/// attaches a frame's descriptors to the frame's first byte, so they always arrive no later than
/// its header.
pub fn decode(
    buf: &mut BytesMut,
    fds: &mut FdQueue,
    limits: &Limits,
) -> Result<Option<Frame>, WireError> {
    let total = match check(buf, limits)? {
        Check::Ready(n) => n,
        Check::Incomplete { .. } => return Ok(None),
    };
    let h = parse_header(&buf[..HEADER_LEN], limits)?;
    if h.nfds > fds.len() {
        return Err(WireError::MissingFds {
            claimed: h.nfds,
            received: fds.len(),
        });
    }
    let mut frame = buf.split_to(total);
    frame.advance(HEADER_LEN);
    Ok(Some(Frame {
        kind: h.kind,
        id: h.id,
        format: h.format,
        payload: frame.freeze(),
        fds: fds.take(h.nfds),
        trailer: Bytes::new(),
    }))
}

/// Checks an outgoing frame against `limits`.
pub fn validate_outgoing(frame: &Frame, limits: &Limits) -> Result<(), WireError> {
    if frame.payload_len() > limits.max_frame_len {
        return Err(WireError::FrameTooLarge {
            len: frame.payload_len(),
            max: limits.max_frame_len,
        });
    }
    if frame.fds.len() > limits.max_fds_per_frame {
        return Err(WireError::TooManyFds {
            count: frame.fds.len(),
            max: limits.max_fds_per_frame,
        });
    }
    if frame.id != 0 && !frame.kind.has_id() {
        return Err(WireError::Malformed(format!(
            "{:?} frame cannot carry request id {}",
            frame.kind, frame.id
        )));
    }
    Ok(())
}

/// Writes the header of `frame` into `out`. The payload is written separately so large payloads
/// go out without a copy.
pub fn encode_header(frame: &Frame, out: &mut impl BufMut) {
    out.put_u32_le(frame.payload_len() as u32);
    out.put_u8(frame.kind as u8);
    out.put_u8(frame.format.to_bits());
    out.put_u16_le(frame.fds.len() as u16);
    out.put_u64_le(frame.id);
}

/// Encodes a whole frame (header and payload) into `out`; descriptors are not part of the bytes.
pub fn encode(frame: &Frame, out: &mut BytesMut) {
    out.reserve(HEADER_LEN + frame.payload_len());
    encode_header(frame, out);
    out.put_slice(&frame.payload);
    out.put_slice(&frame.trailer);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn limits() -> Limits {
        Limits::default()
    }

    fn arb_kind() -> impl Strategy<Value = Kind> {
        prop_oneof![
            Just(Kind::Hello),
            Just(Kind::Message),
            Just(Kind::Request),
            Just(Kind::Reply),
            Just(Kind::ReplyError),
            Just(Kind::Control),
            Just(Kind::CacheCall),
        ]
    }

    fn arb_format() -> impl Strategy<Value = Format> {
        prop_oneof![Just(Format::MsgPack), Just(Format::Raw), Just(Format::Json)]
    }

    proptest! {
        /// Any sequence of frames, encoded back to back and fed in arbitrary pieces, decodes to
        /// the same frames.
        #[test]
        fn roundtrip_in_pieces(
            frames in proptest::collection::vec(
                (arb_kind(), arb_format(), any::<u64>(), proptest::collection::vec(any::<u8>(), 0..300)),
                1..20),
            cuts in proptest::collection::vec(1usize..64, 1..40),
        ) {
            let mut wire = BytesMut::new();
            let mut expect = Vec::new();
            for (kind, format, id, payload) in frames {
                let id = if kind.has_id() { id } else { 0 };
                let f = Frame::new(kind, format, Bytes::from(payload)).with_id(id);
                encode(&f, &mut wire);
                expect.push(f);
            }
            let mut buf = BytesMut::new();
            let mut fds = FdQueue::default();
            let mut got = Vec::new();
            let mut wire = wire.freeze();
            let mut i = 0;
            while !wire.is_empty() {
                let n = cuts[i % cuts.len()].min(wire.len());
                i += 1;
                buf.extend_from_slice(&wire.split_to(n));
                while let Some(f) = decode(&mut buf, &mut fds, &limits()).unwrap() {
                    got.push(f);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(got.len(), expect.len());
            for (g, e) in got.iter().zip(&expect) {
                prop_assert_eq!(g.kind, e.kind);
                prop_assert_eq!(g.format, e.format);
                prop_assert_eq!(g.id, e.id);
                prop_assert_eq!(&g.payload, &e.payload);
            }
        }

        /// Arbitrary bytes never panic the decoder; they give frames, "incomplete" or an error.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&bytes[..]);
            let mut fds = FdQueue::default();
            let small = Limits { max_frame_len: 256, ..Limits::default() };
            while let Ok(Some(_)) = decode(&mut buf, &mut fds, &small) {}
        }
    }

    #[test]
    fn oversized_header_is_rejected_before_the_payload_arrives() {
        let small = Limits {
            max_frame_len: 1000,
            ..Limits::default()
        };
        let mut buf = BytesMut::new();
        buf.put_u32_le(1001);
        buf.put_u8(Kind::Message as u8);
        buf.put_u8(0);
        buf.put_u16_le(0);
        buf.put_u64_le(0);
        let err = decode(&mut buf, &mut FdQueue::default(), &small).unwrap_err();
        assert!(
            matches!(
                err,
                WireError::FrameTooLarge {
                    len: 1001,
                    max: 1000
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn header_checks() {
        let mk = |kind: u8, flags: u8, nfds: u16, id: u64| {
            let mut b = BytesMut::new();
            b.put_u32_le(0);
            b.put_u8(kind);
            b.put_u8(flags);
            b.put_u16_le(nfds);
            b.put_u64_le(id);
            b
        };
        let l = limits();
        let mut q = FdQueue::default();
        assert!(matches!(
            decode(&mut mk(99, 0, 0, 0), &mut q, &l),
            Err(WireError::UnknownKind(99))
        ));
        assert!(matches!(
            decode(&mut mk(2, 3, 0, 0), &mut q, &l),
            Err(WireError::BadFlags(3))
        ));
        assert!(matches!(
            decode(&mut mk(2, 4, 0, 0), &mut q, &l),
            Err(WireError::BadFlags(4))
        ));
        assert!(matches!(
            decode(&mut mk(2, 0, 500, 0), &mut q, &l),
            Err(WireError::TooManyFds { count: 500, .. })
        ));
        assert!(matches!(
            decode(&mut mk(2, 0, 1, 0), &mut q, &l),
            Err(WireError::MissingFds {
                claimed: 1,
                received: 0
            })
        ));
        assert!(matches!(
            decode(&mut mk(2, 0, 0, 7), &mut q, &l),
            Err(WireError::Malformed(_))
        ));
        assert!(decode(&mut mk(3, 0, 0, 7), &mut q, &l).unwrap().is_some());
    }
}
