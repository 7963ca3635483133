//! herd's wire protocol: how a primary and its workers talk over one `AF_UNIX` socket.
//!
//! - [`frame`]: the [`Frame`] (kind, request id, payload, owned descriptors) and the binary codec
//!   that Rust peers speak: a 16-byte header and a payload, checked against [`Limits`] before any
//!   payload is buffered.
//! - [`json`]: Node.js's own IPC format in `json` mode (one JSON text per line), so a Node
//!   program's `process.send` talks to herd unchanged.
//! - [`channel`](mod@channel): a socket split into a cloneable [`Sender`] (bounded queue, one
//!   coalescing writer, descriptors as `SCM_RIGHTS`) and a [`Receiver`].
//! - [`Hello`]: the handshake that opens a binary channel and carries the protocol version.
//!
//! Everything read from a peer is untrusted: every decoder returns an error for bad input and
//! never panics, and every buffer and queue is bounded.

#![deny(missing_docs)]
#![forbid(unsafe_code)]

pub mod channel;
pub mod frame;
pub mod json;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

pub use channel::{channel, Receiver, Sender};
pub use frame::{Format, Frame, Kind};

/// Major protocol version: peers with different majors refuse each other.
pub const PROTOCOL_MAJOR: u16 = 1;
/// Minor protocol version: additions a peer of the same major may not know; peers use the lower.
///
/// History: 0 = messages, requests, control; 1 = [`Kind::CacheCall`] and the cache's control
/// notices (a minor-0 worker simply never sends cache calls).
pub const PROTOCOL_MINOR: u16 = 1;

/// Which encoding a channel speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Codec {
    /// herd's binary frames (Rust peers): msgpack or raw payloads, descriptors, handshake.
    Binary,
    /// Node's `json` serialization mode: one JSON text per line, no descriptors.
    NodeJson,
}

impl Codec {
    /// The name used in the `HERD_CHANNEL_CODEC` environment variable.
    pub fn as_str(self) -> &'static str {
        match self {
            Codec::Binary => "binary",
            Codec::NodeJson => "json",
        }
    }

    /// Parses a name from `HERD_CHANNEL_CODEC`.
    pub fn parse(s: &str) -> Option<Codec> {
        match s {
            "binary" => Some(Codec::Binary),
            "json" => Some(Codec::NodeJson),
            _ => None,
        }
    }
}

/// Bounds on what a channel accepts and buffers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Largest payload (binary) or line (json), in bytes, in either direction.
    pub max_frame_len: usize,
    /// Most descriptors attached to one frame (at most 253, the kernel's `SCM_MAX_FD`).
    pub max_fds_per_frame: usize,
    /// Most frames queued for writing before senders wait.
    pub send_queue_frames: usize,
    /// Most bytes queued for writing before senders wait (a larger frame waits for an empty
    /// queue).
    pub send_queue_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_frame_len: 256 * 1024 * 1024,
            max_fds_per_frame: 64,
            send_queue_frames: 4096,
            send_queue_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What went wrong on a channel.
///
/// Non-exhaustive: a later version may fail in new ways, so a `match` needs a catch-all arm.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WireError {
    /// A frame larger than [`Limits::max_frame_len`].
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    FrameTooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A header with a kind byte this version does not know.
    #[error("unknown frame kind {0}")]
    UnknownKind(u8),
    /// A header with flag bits this version does not know.
    #[error("invalid frame flags {0:#04x}")]
    BadFlags(u8),
    /// More descriptors than allowed, on one frame or waiting unclaimed.
    #[error("{count} file descriptors exceed the limit of {max}")]
    TooManyFds {
        /// How many.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A frame that claims descriptors that did not arrive with it.
    #[error("frame claims {claimed} file descriptors but {received} arrived")]
    MissingFds {
        /// Claimed by the header.
        claimed: usize,
        /// Actually received.
        received: usize,
    },
    /// The kernel dropped descriptors because the control buffer was too small.
    #[error("control data truncated: file descriptors were lost")]
    FdsTruncated,
    /// A frame that is not valid for its codec.
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// Something the channel's codec cannot express.
    #[error("{0}")]
    Unsupported(&'static str),
    /// The peer closed the stream in the middle of a frame.
    #[error("connection closed in the middle of a frame ({buffered} bytes buffered)")]
    Truncated {
        /// Bytes of the unfinished frame.
        buffered: usize,
    },
    /// The channel is closed.
    #[error("channel closed")]
    Closed,
    /// The queue stayed full for this long: the peer is not reading.
    #[error("the send queue stayed full for {0:?}: the peer is not reading")]
    Stalled(std::time::Duration),
    /// A system call failed.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    /// A value could not be encoded.
    #[error("cannot encode value")]
    Encode(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A payload could not be decoded as the requested type.
    #[error("cannot decode {format:?} payload")]
    Decode {
        /// The payload's format.
        format: Format,
        /// Why.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The handshake each side of a binary channel sends first.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_MAJOR`] of the sender.
    pub major: u16,
    /// [`PROTOCOL_MINOR`] of the sender.
    pub minor: u16,
    /// The sender's process id.
    pub pid: u32,
    /// The worker id the primary assigned (sent by the primary; echoed by the worker).
    pub worker_id: u64,
}

impl Hello {
    /// This process's hello.
    pub fn new(worker_id: u64) -> Hello {
        Hello {
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR,
            pid: std::process::id(),
            worker_id,
        }
    }

    /// Checks that a peer's hello is compatible with ours; returns the minor version to use.
    pub fn negotiate(&self, peer: &Hello) -> Result<u16, WireError> {
        if peer.major != self.major {
            return Err(WireError::Malformed(format!(
                "peer speaks protocol {}.{}, this side {}.{}",
                peer.major, peer.minor, self.major, self.minor
            )));
        }
        Ok(self.minor.min(peer.minor))
    }
}

/// Encodes a value in the payload format of `codec`: msgpack for binary, JSON for Node.
pub fn encode_value<T: Serialize + ?Sized>(
    codec: Codec,
    value: &T,
) -> Result<(Format, Bytes), WireError> {
    match codec {
        Codec::Binary => rmp_serde::to_vec_named(value)
            .map(|v| (Format::MsgPack, Bytes::from(v)))
            .map_err(|e| WireError::Encode(Box::new(e))),
        Codec::NodeJson => serde_json::to_vec(value)
            .map(|v| (Format::Json, Bytes::from(v)))
            .map_err(|e| WireError::Encode(Box::new(e))),
    }
}

/// Encoded payloads are carved out of one per-thread chunk of this size, so a stream of small
/// messages shares one allocation instead of taking one each.
const ENCODE_CHUNK: usize = 64 * 1024;
/// A chunk with less room than this left is replaced before encoding into it.
const ENCODE_MIN_ROOM: usize = 512;

std::thread_local! {
    static ENCODE_BUF: std::cell::RefCell<bytes::BytesMut> =
        std::cell::RefCell::new(bytes::BytesMut::new());
}

/// Like [`encode_value`], for a payload about to be sent: small payloads share a per-thread
/// allocation with other recently encoded ones (an atomic count instead of a `malloc` and a
/// `free` each), so the result pins up to 64 KiB while it lives. The channel drops it once
/// written; a payload to keep should come from [`encode_value`].
pub fn encode_to_send<T: Serialize + ?Sized>(
    codec: Codec,
    value: &T,
) -> Result<(Format, Bytes), WireError> {
    use bytes::BufMut;
    ENCODE_BUF.with(|cell| {
        // A `Serialize` impl that itself sends would find the buffer borrowed: fall back.
        let Ok(mut buf) = cell.try_borrow_mut() else {
            return encode_value(codec, value);
        };
        if buf.capacity() - buf.len() < ENCODE_MIN_ROOM {
            // Takes the chunk back when every payload carved from it is gone, else a new one.
            buf.reserve(ENCODE_CHUNK);
        }
        let format = match codec {
            Codec::Binary => Format::MsgPack,
            Codec::NodeJson => Format::Json,
        };
        let written = {
            let mut w = (&mut *buf).writer();
            match codec {
                Codec::Binary => rmp_serde::encode::write_named(&mut w, value)
                    .map_err(|e| WireError::Encode(Box::new(e))),
                Codec::NodeJson => {
                    serde_json::to_writer(&mut w, value).map_err(|e| WireError::Encode(Box::new(e)))
                }
            }
        };
        let out = buf.split().freeze();
        if buf.capacity() > ENCODE_CHUNK {
            // A large value grew the chunk; do not keep its spare room around.
            *buf = bytes::BytesMut::new();
        }
        written.map(|()| (format, out))
    })
}

/// Decodes a payload as `T`, according to its format. Raw payloads decode only as bytes
/// (`Vec<u8>`, `serde_bytes`-style types) through msgpack's bin encoding rules.
pub fn decode_value<T: DeserializeOwned>(format: Format, payload: &[u8]) -> Result<T, WireError> {
    let err =
        |source: Box<dyn std::error::Error + Send + Sync>| WireError::Decode { format, source };
    match format {
        Format::MsgPack => rmp_serde::from_slice(payload).map_err(|e| err(Box::new(e))),
        Format::Json => serde_json::from_slice(payload).map_err(|e| err(Box::new(e))),
        Format::Raw => Err(err(
            "raw bytes are not a serde value; read them as bytes".into()
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_values_survive_both_codecs() {
        let v = serde_json::json!({"a": [1, -2, 3.5, null, true], "b": {"c": "d"}});
        for codec in [Codec::Binary, Codec::NodeJson] {
            let (format, bytes) = encode_value(codec, &v).unwrap();
            let back: serde_json::Value = decode_value(format, &bytes).unwrap();
            assert_eq!(back, v, "{codec:?}");
        }
    }

    /// Payloads carved from the shared chunk stay intact while later ones are encoded after
    /// them, the chunk is replaced, or a large value passes through; an unencodable value leaves
    /// nothing behind.
    #[test]
    fn payloads_to_send_equal_plain_encoding() {
        for codec in [Codec::Binary, Codec::NodeJson] {
            let mut kept = Vec::new();
            for i in 0..5_000u32 {
                let v = serde_json::json!({"i": i, "s": "x".repeat((i % 300) as usize)});
                let plain = encode_value(codec, &v).unwrap();
                let sent = encode_to_send(codec, &v).unwrap();
                assert_eq!(plain, sent, "{codec:?} value {i}");
                if i % 7 == 0 {
                    kept.push((plain, sent));
                } else if i % 1000 == 0 {
                    kept.clear();
                }
            }
            let big = "y".repeat(300_000);
            assert_eq!(
                encode_to_send(codec, &big).unwrap(),
                encode_value(codec, &big).unwrap()
            );
            let mut bad = std::collections::HashMap::new();
            bad.insert(vec![1u8], 1);
            if codec == Codec::NodeJson {
                assert!(
                    encode_to_send(codec, &bad).is_err(),
                    "non-string keys are not json"
                );
            }
            let after = encode_to_send(codec, &"after").unwrap();
            assert_eq!(after, encode_value(codec, &"after").unwrap());
            for (plain, sent) in kept {
                assert_eq!(plain, sent);
            }
        }
    }

    #[test]
    fn hello_refuses_another_major() {
        let me = Hello::new(1);
        let mut other = me.clone();
        other.major += 1;
        assert!(me.negotiate(&other).is_err());
        other.major = me.major;
        other.minor = 9;
        assert_eq!(me.negotiate(&other).unwrap(), PROTOCOL_MINOR);
    }
}
