//! The Node-json codec: Node.js's own IPC wire format in `json` serialization mode.
//!
//! Node writes each message as `JSON.stringify(message) + "\n"` and splits what it reads on
//! `"\n"` (see Node's `lib/internal/child_process/serialization.js`). `JSON.stringify` escapes
//! newlines inside strings, so a raw `\n` always ends a message.
//!
//! Node treats an object whose `cmd` is a string starting with `NODE_` as internal: it emits it as
//! `internalMessage`, never as `message` (`isInternal` in `lib/internal/child_process.js`). herd
//! uses that for its own traffic, so a Node program's `process.on('message')` never sees it:
//!
//! | herd frame | JSON text |
//! |---|---|
//! | [`Kind::Message`] | the value itself |
//! | [`Kind::Request`] | `{"cmd":"NODE_HERD_REQ","id":N,"data":V}` |
//! | [`Kind::Reply`] | `{"cmd":"NODE_HERD_REP","id":N,"data":V}` |
//! | [`Kind::ReplyError`] | `{"cmd":"NODE_HERD_REP","id":N,"error":"text"}` |
//! | [`Kind::Control`] | `{"cmd":"NODE_HERD_CTL","data":V}` |
//! | [`Kind::Hello`] | `{"cmd":"NODE_HERD_HELLO","data":V}` |
//! | [`Kind::CacheCall`] | `{"cmd":"NODE_HERD_CACHE","id":N,"data":V}` |
//! | [`Kind::Node`] | Node's own line as it is: `{"cmd":"NODE_CLUSTER",...}` and the like |
//!
//! Node's cluster messages (`NODE_CLUSTER`) and its handle acknowledgements (`NODE_HANDLE_ACK`,
//! `NODE_HANDLE_NACK`) are handed to the channel's owner as [`Kind::Node`] frames holding the
//! whole line, for the primary to answer as Node's cluster primary would; user code never sees
//! them. A [`Kind::Node`] frame is also the one frame this codec carries descriptors with:
//! Node's `{"cmd":"NODE_HANDLE","type":...,"msg":...}`, whose one handle travels in
//! `SCM_RIGHTS` on the line's first byte. A received `NODE_HANDLE` line claims the next
//! received descriptor ([`JsonDecoder::decode_with_fds`]); one that finds none is an error.
//! Any other `NODE_*` message (Node's own) is dropped and counted, never handed to user code.
//! Every line is validated as JSON before it is accepted.

use std::borrow::Cow;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::frame::{FdQueue, Format, Frame, Kind};
use crate::{Limits, WireError};

const REQ: &str = "NODE_HERD_REQ";
const REP: &str = "NODE_HERD_REP";
const CTL: &str = "NODE_HERD_CTL";
const HELLO: &str = "NODE_HERD_HELLO";
const CACHE: &str = "NODE_HERD_CACHE";
/// Node's own internal messages handed on as [`Kind::Node`] frames.
const NODE_OWN: [&str; 3] = ["NODE_CLUSTER", "NODE_HANDLE_ACK", "NODE_HANDLE_NACK"];
/// Node's wrapper around a message that carries a handle (one descriptor).
const NODE_HANDLE: &str = "NODE_HANDLE";

/// Incremental decoder state for one Node-json stream.
#[derive(Debug, Default)]
pub struct JsonDecoder {
    /// Bytes at the front of the buffer already searched for a newline.
    scanned: usize,
    /// Node-internal messages (not herd's) dropped so far.
    ignored: u64,
}

#[derive(Deserialize)]
struct Envelope<'a> {
    #[serde(borrow)]
    cmd: Option<&'a RawValue>,
    #[serde(borrow)]
    id: Option<&'a RawValue>,
    // `null` is a value here (Node's `process.send({cmd, id, data: null})`), not an absent field.
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

/// A field that is there, whatever its value (`null` included), as `Some`.
fn present<'de, D>(d: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&'de RawValue as serde::Deserialize>::deserialize(d).map(Some)
}

impl JsonDecoder {
    /// Node-internal messages that were dropped rather than handed on.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }

    /// Takes the next frame out of `buf`, or `Ok(None)` when more bytes are needed.
    ///
    /// A line longer than `limits.max_frame_len` is an error as soon as that many bytes have
    /// arrived without a newline, so a peer cannot make us buffer without bound.
    ///
    /// Without a source of descriptors, a `NODE_HANDLE` line is an error (see
    /// [`JsonDecoder::decode_with_fds`]).
    pub fn decode(
        &mut self,
        buf: &mut BytesMut,
        limits: &Limits,
    ) -> Result<Option<Frame>, WireError> {
        self.decode_with_fds(buf, &mut FdQueue::default(), limits)
    }

    /// As [`JsonDecoder::decode`], with the descriptors received so far: a `NODE_HANDLE` line
    /// becomes a [`Kind::Node`] frame holding the next one (the kernel delivers a descriptor
    /// with the first byte of the `sendmsg` that carried it, so it is here by the time its line
    /// is; none is [`WireError::MissingFds`]).
    pub fn decode_with_fds(
        &mut self,
        buf: &mut BytesMut,
        fds: &mut FdQueue,
        limits: &Limits,
    ) -> Result<Option<Frame>, WireError> {
        loop {
            let Some(pos) = memchr::memchr(b'\n', &buf[self.scanned..]).map(|p| p + self.scanned)
            else {
                if buf.len() > limits.max_frame_len {
                    return Err(WireError::FrameTooLarge {
                        len: buf.len(),
                        max: limits.max_frame_len,
                    });
                }
                self.scanned = buf.len();
                return Ok(None);
            };
            self.scanned = 0;
            if pos > limits.max_frame_len {
                return Err(WireError::FrameTooLarge {
                    len: pos,
                    max: limits.max_frame_len,
                });
            }
            let mut line = buf.split_to(pos + 1);
            line.truncate(pos);
            match classify(line.freeze())? {
                Some(frame) if frame.kind == Kind::Node && is_handle(&frame.payload) => {
                    if fds.is_empty() {
                        return Err(WireError::MissingFds {
                            claimed: 1,
                            received: 0,
                        });
                    }
                    return Ok(Some(frame.with_fds(fds.take(1))));
                }
                Some(frame) => return Ok(Some(frame)),
                None => self.ignored += 1,
            }
        }
    }
}

fn malformed(msg: impl Into<String>) -> WireError {
    WireError::Malformed(msg.into())
}

/// Turns one line into a frame, or `None` for a Node-internal message that is not herd's.
fn classify(line: Bytes) -> Result<Option<Frame>, WireError> {
    // serde skips ignored strings without checking them, so check the whole text once here.
    std::str::from_utf8(&line).map_err(|e| malformed(format!("json is not utf-8: {e}")))?;
    let first = line.iter().find(|b| !b.is_ascii_whitespace()).copied();
    match first {
        None => return Err(malformed("empty json message")),
        Some(b'{') => {}
        Some(_) => {
            serde_json::from_slice::<serde::de::IgnoredAny>(&line)
                .map_err(|e| malformed(format!("invalid json: {e}")))?;
            return Ok(Some(Frame::new(Kind::Message, Format::Json, line)));
        }
    }
    let env: Envelope<'_> =
        serde_json::from_slice(&line).map_err(|e| malformed(format!("invalid json: {e}")))?;
    let cmd: Option<Cow<'_, str>> = match env.cmd {
        Some(raw) if raw.get().starts_with('"') => Some(
            serde_json::from_str(raw.get()).map_err(|e| malformed(format!("invalid cmd: {e}")))?,
        ),
        _ => None,
    };
    // Node's isInternal(): a string cmd longer than the prefix that starts with it.
    let Some(cmd) = cmd.filter(|c| c.len() > "NODE_".len() && c.starts_with("NODE_")) else {
        return Ok(Some(Frame::new(Kind::Message, Format::Json, line)));
    };
    let slice = |raw: &RawValue| line.slice_ref(raw.get().as_bytes());
    let id = || -> Result<u64, WireError> {
        let raw = env
            .id
            .ok_or_else(|| malformed(format!("{cmd} without id")))?;
        let id: u64 = serde_json::from_str(raw.get())
            .map_err(|_| malformed(format!("{cmd} id is not an unsigned integer")))?;
        if id == 0 {
            return Err(malformed(format!("{cmd} id must not be 0")));
        }
        Ok(id)
    };
    let data = || {
        env.data
            .ok_or_else(|| malformed(format!("{cmd} without data")))
    };
    let frame = match &*cmd {
        REQ => Frame::new(Kind::Request, Format::Json, slice(data()?)).with_id(id()?),
        REP => match (env.data, env.error) {
            (Some(d), None) => Frame::new(Kind::Reply, Format::Json, slice(d)).with_id(id()?),
            (None, Some(e)) => Frame::new(Kind::ReplyError, Format::Json, slice(e)).with_id(id()?),
            _ => {
                return Err(malformed(format!(
                    "{cmd} needs exactly one of data and error"
                )))
            }
        },
        CTL => Frame::new(Kind::Control, Format::Json, slice(data()?)),
        HELLO => Frame::new(Kind::Hello, Format::Json, slice(data()?)),
        CACHE => Frame::new(Kind::CacheCall, Format::Json, slice(data()?)).with_id(id()?),
        own if NODE_OWN.contains(&own) || own == NODE_HANDLE => {
            Frame::new(Kind::Node, Format::Json, line.clone())
        }
        _ => return Ok(None),
    };
    Ok(Some(frame))
}

/// Whether a [`Kind::Node`] line (a JSON object whose `cmd` is one of Node's) is a
/// `NODE_HANDLE`: the only one that starts with these bytes, as `JSON.stringify` writes it and
/// [`classify`] accepted it.
fn is_handle(line: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Cmd<'a> {
        #[serde(borrow)]
        cmd: Cow<'a, str>,
    }
    serde_json::from_slice::<Cmd<'_>>(line).is_ok_and(|c| c.cmd == NODE_HANDLE)
}

/// Writes what goes before `frame`'s payload into `head` and returns what goes after it.
pub fn encode_around(frame: &Frame, head: &mut BytesMut) -> Result<&'static [u8], WireError> {
    if frame.format != Format::Json {
        return Err(WireError::Unsupported(
            "the node-json codec carries only json payloads",
        ));
    }
    if !frame.fds.is_empty() && frame.kind != Kind::Node {
        return Err(WireError::Unsupported(
            "the node-json codec carries file descriptors only with Node's own handle messages",
        ));
    }
    if frame.kind == Kind::Node && frame.payload.first() != Some(&b'{') {
        return Err(malformed("a Node internal message is a JSON object"));
    }
    let blank = |b: &[u8]| b.iter().all(|b| b.is_ascii_whitespace());
    if blank(&frame.payload) && blank(frame.trailer()) {
        return Err(malformed("empty json payload"));
    }
    if memchr::memchr(b'\n', &frame.payload).is_some()
        || memchr::memchr(b'\n', frame.trailer()).is_some()
    {
        return Err(malformed("json payload contains a raw newline"));
    }
    let Some((cmd, has_id, field)) = wrapper(frame.kind) else {
        return Ok(b"\n");
    };
    head.put_slice(b"{\"cmd\":\"");
    head.put_slice(cmd.as_bytes());
    head.put_slice(b"\"");
    if has_id {
        head.put_slice(b",\"id\":");
        head.put_slice(frame.id.to_string().as_bytes());
    }
    head.put_slice(b",\"");
    head.put_slice(field.as_bytes());
    head.put_slice(b"\":");
    Ok(b"}\n")
}

/// How many bytes [`encode_around`] puts around a payload of a frame of `kind` with request id
/// `id`: what a frame costs in the send queue is known before it is encoded.
pub(crate) fn framing_len(kind: Kind, id: u64) -> usize {
    let Some((cmd, has_id, field)) = wrapper(kind) else {
        return b"\n".len();
    };
    let id_len = if has_id {
        b",\"id\":".len() + id.checked_ilog10().map_or(1, |d| d as usize + 1)
    } else {
        0
    };
    // The pieces `encode_around` writes, in its order; the payload goes before the last.
    b"{\"cmd\":\"".len()
        + cmd.len()
        + b"\"".len()
        + id_len
        + b",\"".len()
        + field.len()
        + b"\":".len()
        + b"}\n".len()
}

/// The object herd's own frames of `kind` are wrapped in: its `cmd`, whether it carries the
/// request id, and the field holding the payload. `None` for a user message, sent bare.
fn wrapper(kind: Kind) -> Option<(&'static str, bool, &'static str)> {
    Some(match kind {
        Kind::Message | Kind::Node => return None,
        Kind::Request => (REQ, true, "data"),
        Kind::Reply => (REP, true, "data"),
        Kind::ReplyError => (REP, true, "error"),
        Kind::Control => (CTL, false, "data"),
        Kind::Hello => (HELLO, false, "data"),
        Kind::CacheCall => (CACHE, true, "data"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Found by the json_frames fuzz target: a number too large for f64 is valid JSON (Node's
    /// JSON.parse makes it Infinity); it is passed on, and decoding it is the receiver's error.
    #[test]
    fn huge_numbers_are_valid_json() {
        let frames = decode_all(b"3e333333333\n").unwrap();
        assert_eq!(frames.len(), 1);
        assert!(
            crate::decode_value::<serde_json::Value>(Format::Json, &frames[0].payload).is_err()
        );
    }

    /// The queue charges a frame before it is encoded: the length it expects is the length
    /// written, for every kind and every width of id.
    #[test]
    fn framing_len_is_what_encode_around_writes() {
        let kinds = [
            Kind::Hello,
            Kind::Message,
            Kind::Request,
            Kind::Reply,
            Kind::ReplyError,
            Kind::Control,
            Kind::CacheCall,
        ];
        let ids = [0, 1, 9, 10, 99, 100, 12_345, u64::from(u32::MAX), u64::MAX];
        for kind in kinds {
            for id in ids {
                let id = if kind.has_id() { id } else { 0 };
                let f = Frame::new(kind, Format::Json, Bytes::from_static(b"[1]")).with_id(id);
                let mut head = BytesMut::new();
                let tail = encode_around(&f, &mut head).unwrap();
                assert_eq!(
                    framing_len(kind, id),
                    head.len() + tail.len(),
                    "{kind:?} {id}"
                );
            }
        }
    }

    fn decode_all(bytes: &[u8]) -> Result<Vec<Frame>, WireError> {
        let mut d = JsonDecoder::default();
        let mut buf = BytesMut::from(bytes);
        let mut out = Vec::new();
        while let Some(f) = d.decode(&mut buf, &Limits::default())? {
            out.push(f);
        }
        Ok(out)
    }

    fn encode(frame: &Frame) -> Vec<u8> {
        let mut head = BytesMut::new();
        let tail = encode_around(frame, &mut head).unwrap();
        let mut v = head.to_vec();
        v.extend_from_slice(&frame.payload);
        v.extend_from_slice(tail);
        v
    }

    #[test]
    fn node_messages_and_herd_envelopes() {
        let input = b"\"hi worker\"\n{\"a\":1}\n{\"cmd\":\"NODE_SOMETHING\",\"type\":\"net.Native\"}\n{\"cmd\":\"NODE_HERD_REQ\",\"id\":7,\"data\":[1,2]}\n{\"cmd\":\"NODE_HERD_REP\",\"id\":7,\"error\":\"nope\"}\n{\"cmd\":5}\n{\"cmd\":\"NODE_\"}\n";
        let mut d = JsonDecoder::default();
        let mut buf = BytesMut::from(&input[..]);
        let mut f = Vec::new();
        while let Some(frame) = d.decode(&mut buf, &Limits::default()).unwrap() {
            f.push(frame);
        }
        assert_eq!(f.len(), 6, "{f:?}");
        assert_eq!(
            d.ignored(),
            1,
            "Node's other internal lines are dropped and counted"
        );
        assert_eq!(
            (f[5].kind, &f[5].payload[..]),
            (Kind::Message, &b"{\"cmd\":\"NODE_\"}"[..])
        );
        assert_eq!(
            (f[0].kind, &f[0].payload[..]),
            (Kind::Message, &b"\"hi worker\""[..])
        );
        assert_eq!(
            (f[1].kind, &f[1].payload[..]),
            (Kind::Message, &b"{\"a\":1}"[..])
        );
        assert_eq!(
            (f[2].kind, f[2].id, &f[2].payload[..]),
            (Kind::Request, 7, &b"[1,2]"[..])
        );
        assert_eq!(
            (f[3].kind, &f[3].payload[..]),
            (Kind::ReplyError, &b"\"nope\""[..])
        );
        assert_eq!(f[4].kind, Kind::Message);
    }

    /// Node's cluster messages and handle acknowledgements reach the owner whole, as
    /// `Kind::Node`, and are not counted as dropped.
    #[test]
    fn node_cluster_lines_are_handed_on() {
        let input = b"{\"cmd\":\"NODE_CLUSTER\",\"act\":\"online\",\"seq\":0}\n{\"cmd\":\"NODE_HANDLE_ACK\"}\n{\"cmd\":\"NODE_HANDLE_NACK\"}\n";
        let mut d = JsonDecoder::default();
        let mut buf = BytesMut::from(&input[..]);
        let mut f = Vec::new();
        while let Some(frame) = d.decode(&mut buf, &Limits::default()).unwrap() {
            f.push(frame);
        }
        assert_eq!(d.ignored(), 0);
        assert!(f.iter().all(|f| f.kind == Kind::Node), "{f:?}");
        assert_eq!(
            &f[0].payload[..],
            &b"{\"cmd\":\"NODE_CLUSTER\",\"act\":\"online\",\"seq\":0}"[..]
        );
        assert_eq!(&f[1].payload[..], &b"{\"cmd\":\"NODE_HANDLE_ACK\"}"[..]);
        // Sent as they are, one line each; only objects.
        let out = Frame::new(
            Kind::Node,
            Format::Json,
            Bytes::from_static(b"{\"cmd\":\"NODE_CLUSTER\",\"ack\":1}"),
        );
        assert_eq!(encode(&out), b"{\"cmd\":\"NODE_CLUSTER\",\"ack\":1}\n");
        let mut head = BytesMut::new();
        let not_object = Frame::new(Kind::Node, Format::Json, Bytes::from_static(b"[1]"));
        assert!(encode_around(&not_object, &mut head).is_err());
    }

    /// Node's `NODE_HANDLE` claims the next received descriptor; without one it is an error, and
    /// a line that only mentions NODE_HANDLE elsewhere claims nothing.
    #[test]
    fn node_handle_lines_claim_one_descriptor() {
        let memfd =
            || rustix::fs::memfd_create("herd-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        let input = b"{\"x\":\"NODE_HANDLE\"}\n{\"cmd\":\"NODE_HANDLE\",\"type\":\"net.Socket\",\"msg\":{\"hi\":1}}\n{\"cmd\":\"NODE_HANDLE_ACK\"}\n";
        let mut d = JsonDecoder::default();
        let mut buf = BytesMut::from(&input[..]);
        let mut fds = FdQueue::default();
        fds.extend([memfd(), memfd()]).unwrap();
        let mut f = Vec::new();
        while let Some(frame) = d
            .decode_with_fds(&mut buf, &mut fds, &Limits::default())
            .unwrap()
        {
            f.push(frame);
        }
        assert_eq!(f.len(), 3);
        assert_eq!((f[0].kind, f[0].fds.len()), (Kind::Message, 0));
        assert_eq!((f[1].kind, f[1].fds.len()), (Kind::Node, 1));
        assert_eq!((f[2].kind, f[2].fds.len()), (Kind::Node, 0));
        assert_eq!(fds.len(), 1, "one descriptor per NODE_HANDLE");
        // Without its descriptor: an error, not a wait.
        let mut buf = BytesMut::from(&b"{\"cmd\":\"NODE_HANDLE\",\"msg\":1}\n"[..]);
        assert!(matches!(
            d.decode(&mut buf, &Limits::default()),
            Err(WireError::MissingFds { claimed: 1, .. })
        ));
    }

    #[test]
    fn null_data_and_error_are_values() {
        let input = b"{\"cmd\":\"NODE_HERD_REQ\",\"id\":3,\"data\":null}\n{\"cmd\":\"NODE_HERD_REP\",\"id\":3,\"data\":null}\n{\"cmd\":\"NODE_HERD_REP\",\"id\":4,\"error\":null}\n";
        let f = decode_all(input).unwrap();
        assert_eq!(
            (f[0].kind, f[0].id, &f[0].payload[..]),
            (Kind::Request, 3, &b"null"[..])
        );
        assert_eq!((f[1].kind, &f[1].payload[..]), (Kind::Reply, &b"null"[..]));
        assert_eq!(
            (f[2].kind, f[2].id, &f[2].payload[..]),
            (Kind::ReplyError, 4, &b"null"[..])
        );
    }

    #[test]
    fn malformed_lines_are_errors() {
        for bad in [
            &b"{\"a\":\n"[..],
            b"\n",
            b"nope\n",
            b"{\"cmd\":\"NODE_HERD_REQ\",\"data\":1}\n",
            b"{\"cmd\":\"NODE_HERD_REQ\",\"id\":-1,\"data\":1}\n",
            b"{\"cmd\":\"NODE_HERD_REP\",\"id\":1,\"data\":1,\"error\":\"x\"}\n",
            b"\"\xff\xfe\"\n",
        ] {
            assert!(
                decode_all(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn long_line_without_newline_is_cut_off() {
        let limits = Limits {
            max_frame_len: 10,
            ..Limits::default()
        };
        let mut d = JsonDecoder::default();
        let mut buf = BytesMut::from(&b"\"0123456789"[..]);
        assert!(matches!(
            d.decode(&mut buf, &limits),
            Err(WireError::FrameTooLarge { .. })
        ));
    }

    proptest! {
        /// Any JSON value round-trips through every kind, whatever the read boundaries.
        #[test]
        fn roundtrip(
            values in proptest::collection::vec(any::<(String, i64, bool, Vec<u8>)>(), 1..10),
            kinds in proptest::collection::vec(0usize..5, 1..10),
            cut in 1usize..50,
        ) {
            let kinds_all = [
                Kind::Message,
                Kind::Request,
                Kind::Reply,
                Kind::ReplyError,
                Kind::Control,
                Kind::CacheCall,
            ];
            let mut wire = Vec::new();
            let mut expect = Vec::new();
            for (i, v) in values.iter().enumerate() {
                let kind = kinds_all[kinds[i % kinds.len()]];
                let payload = serde_json::to_vec(v).unwrap();
                let id = if kind.has_id() { i as u64 + 1 } else { 0 };
                let f = Frame::new(kind, Format::Json, Bytes::from(payload)).with_id(id);
                wire.extend(encode(&f));
                expect.push(f);
            }
            let mut d = JsonDecoder::default();
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in wire.chunks(cut) {
                buf.extend_from_slice(chunk);
                while let Some(f) = d.decode(&mut buf, &Limits::default()).unwrap() {
                    got.push(f);
                }
            }
            prop_assert_eq!(got.len(), expect.len());
            for (g, e) in got.iter().zip(&expect) {
                prop_assert_eq!(g.kind, e.kind);
                prop_assert_eq!(g.id, e.id);
                let gv: serde_json::Value = serde_json::from_slice(&g.payload).unwrap();
                let ev: serde_json::Value = serde_json::from_slice(&e.payload).unwrap();
                prop_assert_eq!(gv, ev);
            }
        }

        /// Arbitrary bytes never panic the decoder.
        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_all(&bytes);
        }
    }
}
