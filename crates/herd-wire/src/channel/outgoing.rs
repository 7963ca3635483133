//! A frame ready to write: checked against the limits and the codec, its head (binary header or
//! Node-json text) encoded, its payload and descriptors taken over. A frame is prepared exactly
//! once, whichever way it is sent; [`wire_len`] says what it will take on the wire before that.

use std::os::fd::OwnedFd;

use bytes::{Bytes, BytesMut};

use crate::frame::{self, Frame, Kind};
use crate::json;
use crate::{Codec, Limits, WireError};

/// What goes before a frame's payload.
pub(super) enum Head {
    /// A binary frame header, kept inline (no allocation per frame).
    Binary([u8; frame::HEADER_LEN]),
    /// The Node codec's JSON text before the payload.
    Json(Bytes),
}

impl Head {
    pub(super) fn as_slice(&self) -> &[u8] {
        match self {
            Head::Binary(h) => h,
            Head::Json(b) => b,
        }
    }
}

/// A frame's bytes in pieces, its descriptors, and the queue bytes it holds (given back by the
/// writer once it is written; it also holds one frame of the queue).
pub(super) struct Outgoing {
    pub(super) head: Head,
    pub(super) payload: Bytes,
    /// The payload's own last bytes ([`Frame::with_trailer`]).
    pub(super) trailer: Bytes,
    pub(super) tail: &'static [u8],
    pub(super) fds: Vec<OwnedFd>,
    pub(super) charged: u32,
}

impl Outgoing {
    /// Checks `frame` against `limits` and `codec` and encodes what goes around its payload.
    /// Fails, without side effects, if the frame breaks the limits or the codec cannot carry it.
    /// The frame holds no queue space yet (`charged` is 0).
    pub(super) fn prepare(
        frame: Frame,
        codec: Codec,
        limits: &Limits,
    ) -> Result<Outgoing, WireError> {
        frame::validate_outgoing(&frame, limits)?;
        let (head, tail) = match codec {
            Codec::Binary if frame.kind == Kind::Node => {
                return Err(WireError::Unsupported(
                    "Node's internal messages exist on the node-json codec only",
                ))
            }
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
        let trailer = frame.trailer().clone();
        Ok(Outgoing {
            head,
            payload: frame.payload,
            trailer,
            tail,
            fds: frame.fds,
            charged: 0,
        })
    }

    /// Bytes on the wire.
    pub(super) fn len(&self) -> usize {
        self.head.as_slice().len() + self.payload.len() + self.trailer.len() + self.tail.len()
    }

    /// What it costs in the send queue (see [`queue_cost`]).
    pub(super) fn cost(&self) -> usize {
        self.len() + self.fds.len() * FD_CHARGE
    }
}

/// Bytes `frame` will take on the wire in `codec` once prepared, known without encoding it (so a
/// send can ask the queue for room before doing any work).
/// What one descriptor costs in the send queue, in bytes: with the default 64 MiB of queue, at
/// most 256 descriptors wait in it (they are the host's resource; a peer that stops reading
/// must not make the sender hold thousands).
pub(super) const FD_CHARGE: usize = 256 * 1024;

/// What `frame` costs in the send queue: its bytes on the wire and [`FD_CHARGE`] per descriptor.
pub(super) fn queue_cost(frame: &Frame, codec: Codec) -> usize {
    wire_len(frame, codec) + frame.fds.len() * FD_CHARGE
}

pub(super) fn wire_len(frame: &Frame, codec: Codec) -> usize {
    let around = match codec {
        Codec::Binary => frame::HEADER_LEN,
        Codec::NodeJson => json::framing_len(frame.kind, frame.id),
    };
    around + frame.payload_len()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Format;

    #[test]
    fn a_descriptor_costs_the_queue_its_charge() {
        let fd = || std::os::fd::OwnedFd::from(std::fs::File::open("/dev/null").unwrap());
        let f = Frame::new(Kind::Message, Format::Raw, bytes::Bytes::from_static(b"x"))
            .with_fds(vec![fd(), fd()]);
        let len = wire_len(&f, Codec::Binary);
        assert_eq!(queue_cost(&f, Codec::Binary), len + 2 * FD_CHARGE);
        let out = Outgoing::prepare(f, Codec::Binary, &Limits::default()).unwrap();
        assert_eq!(out.cost(), len + 2 * FD_CHARGE);
        // The default queue holds at most 256 of them.
        assert_eq!(Limits::default().send_queue_bytes / FD_CHARGE, 256);
    }

    #[test]
    fn wire_len_is_the_prepared_length() {
        let limits = Limits::default();
        let frames = || {
            [
                Frame::new(
                    Kind::Message,
                    Format::Json,
                    Bytes::from_static(b"{\"a\":1}"),
                ),
                Frame::new(Kind::Request, Format::Json, Bytes::from_static(b"[]")).with_id(7),
                Frame::new(Kind::CacheCall, Format::Json, Bytes::from_static(b"1"))
                    .with_id(u64::MAX),
                Frame::new(Kind::Control, Format::Json, Bytes::from(vec![b' '; 1000])),
            ]
        };
        for codec in [Codec::Binary, Codec::NodeJson] {
            for f in frames() {
                let want = wire_len(&f, codec);
                let got = match Outgoing::prepare(f, codec, &limits) {
                    Ok(out) => out.len(),
                    // All blanks: not json. The binary codec does not look.
                    Err(WireError::Malformed(_)) if codec == Codec::NodeJson => continue,
                    Err(e) => panic!("{e}"),
                };
                assert_eq!(want, got, "{codec:?}");
            }
        }
    }
}
