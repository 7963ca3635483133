//! The cache protocol between a worker's replica and the primary's hub: the payload of a
//! [`herd_wire::Kind::CacheCall`] and of its reply. Pushes from the hub are
//! `Control` notices (`cache_invalidate`, `cache_clear`).
//!
//! Values are bytes. On the binary codec they travel as msgpack binary, or, above the hub's
//! sharing threshold, as a sealed memfd attached to the reply. On the Node-json codec they travel
//! as a string: the value itself when it is UTF-8, base64 with `"encoding":"base64"` otherwise.
//!
//! A failed call is answered with an error reply, whose payload is a text. For a Node peer it is
//! the error's message; on the binary codec it is a [`WireError`] (JSON), so the replica rebuilds
//! the hub's [`CacheError`](super::CacheError) kind. A text that is no `WireError` (from a hub
//! that predates it) becomes [`CacheError::Hub`](super::CacheError::Hub).

use base64::Engine;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

/// A call from a replica.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(super) enum CacheOp {
    /// The value of a key.
    Get {
        /// The key.
        key: String,
    },
    /// Store a value through the hub (written to the source, invalidated everywhere).
    Set {
        /// The key.
        key: String,
        /// The value.
        value: WireValue,
        /// How it is encoded, for Node peers (`"base64"`); absent means as is.
        #[serde(default)]
        encoding: Option<String>,
        /// Expiry in milliseconds.
        #[serde(default)]
        ttl_ms: Option<u64>,
    },
    /// Delete a key (in the source, and everywhere).
    Delete {
        /// The key.
        key: String,
    },
    /// Wait until the hub's warm-up is done (at most `timeout_ms`, or the hub's load timeout).
    Ready {
        /// How long the caller waits, in milliseconds.
        #[serde(default)]
        timeout_ms: Option<u64>,
    },
    /// The hub's counters.
    Stats,
}

impl CacheOp {
    /// The [`Source`](super::Source) call this op makes, as named in
    /// [`SourceError::Unsupported`](super::SourceError::Unsupported).
    pub(super) fn source_call(&self) -> &'static str {
        match self {
            CacheOp::Get { .. } => "load",
            CacheOp::Set { .. } => "store",
            CacheOp::Delete { .. } => "delete",
            CacheOp::Ready { .. } => "scan",
            CacheOp::Stats => "calls",
        }
    }
}

/// Bytes on the wire: msgpack binary on the binary codec; a JSON string from Node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WireValue(pub(super) Bytes);

impl Serialize for WireValue {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for WireValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = WireValue;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("bytes or a string")
            }
            fn visit_bytes<E>(self, v: &[u8]) -> Result<WireValue, E> {
                Ok(WireValue(Bytes::copy_from_slice(v)))
            }
            fn visit_byte_buf<E>(self, v: Vec<u8>) -> Result<WireValue, E> {
                Ok(WireValue(Bytes::from(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<WireValue, E> {
                Ok(WireValue(Bytes::copy_from_slice(v.as_bytes())))
            }
            fn visit_string<E>(self, v: String) -> Result<WireValue, E> {
                Ok(WireValue(Bytes::from(v)))
            }
            // What JSON makes of bytes: an array of numbers.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<WireValue, A::Error> {
                let mut v = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    v.push(b);
                }
                Ok(WireValue(Bytes::from(v)))
            }
        }
        d.deserialize_any(V)
    }
}

/// The answer to [`CacheOp::Get`] on the binary codec.
#[derive(Debug, Serialize, Deserialize)]
pub(super) struct GetReply {
    /// Whether the key exists.
    pub(super) found: bool,
    /// The value, when it travels inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) value: Option<WireValue>,
    /// How `value` is encoded when it came as a Node peer's string (`"base64"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) encoding: Option<String>,
    /// The value's length, when it travels as the memfd attached to this reply.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) shared_len: Option<u64>,
    /// Milliseconds until the value expires (Redis's TTL), if it does.
    #[serde(default)]
    pub(super) ttl_ms: Option<u64>,
    /// The hub's invalidation sequence number when the value was read.
    pub(super) seq: u64,
    /// Whether the replica may keep it in its local view (false while invalidations cannot be
    /// trusted to arrive).
    pub(super) local: bool,
    /// Whether the hub served it stale (the source is unreachable).
    pub(super) stale: bool,
}

/// The answer to [`CacheOp::Get`] for a Node peer.
#[derive(Debug, Serialize)]
pub(super) struct NodeGetReply<'a> {
    pub(super) found: bool,
    /// The value's JSON string, as [`NodeText`] made it (written as it is).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) value: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(super) encoding: Option<&'static str>,
    pub(super) ttl_ms: Option<u64>,
    pub(super) seq: u64,
    pub(super) local: bool,
    pub(super) stale: bool,
}

/// A failed call, as the hub tells a replica on the binary codec (see the [module docs](self)).
#[derive(Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "code", rename_all = "snake_case")]
pub(super) enum WireError {
    /// The source is unreachable and nothing usable is cached.
    Unavailable { key: String, why: String },
    /// The source answered with an error.
    SourceFailed { key: String, why: String },
    /// The source does not support the call.
    Unsupported { key: String, why: String },
    /// The value is over the hub's limit.
    TooLarge { key: String, len: u64, max: u64 },
    /// The load took longer than the hub's load timeout.
    Timeout { key: String, ms: u64 },
    /// The hub could not share the value.
    Shared { why: String },
    /// The primary serves no cache.
    NoHub,
    /// The worker has too many calls in flight.
    Busy { limit: u64 },
    /// The hub could not read the call.
    BadCall { why: String },
    /// Anything else.
    Hub { why: String },
}

impl WireError {
    /// The reply-error text.
    pub(super) fn encode(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "cache hub error".into())
    }

    /// The wire error in a reply-error text, if it is one.
    pub(super) fn decode(text: &str) -> Option<WireError> {
        serde_json::from_str(text).ok()
    }
}

/// A value as a Node peer gets it: a JSON string, already escaped, and its encoding.
#[derive(Debug)]
pub(super) struct NodeText {
    /// The JSON string.
    pub(super) json: Box<RawValue>,
    /// `Some("base64")` when the value is not UTF-8.
    pub(super) encoding: Option<&'static str>,
}

impl NodeText {
    /// Encodes `v` (text as it is, anything else as base64).
    pub(super) fn of(v: &[u8]) -> NodeText {
        let (text, encoding) = node_value(v);
        let json =
            serde_json::value::to_raw_value(&text).expect("a string always serializes as JSON");
        NodeText { json, encoding }
    }

    /// Bytes of its JSON text.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.json.get().len()
    }

    /// Bytes [`NodeText::of`] would make of `v`, without making them: base64's length for a
    /// value that is not UTF-8, else the JSON string's (quotes, and escapes as serde_json
    /// writes them: 2 bytes for `"`, `\\` and the five short ones, 6 for other control bytes).
    pub(super) fn len_of(v: &[u8]) -> usize {
        if std::str::from_utf8(v).is_err() {
            return v.len().div_ceil(3) * 4 + 2;
        }
        2 + v
            .iter()
            .map(|&b| match b {
                b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
                0..=0x1f => 6,
                _ => 1,
            })
            .sum::<usize>()
    }
}

/// A value as a Node peer receives it: itself if UTF-8, base64 otherwise.
pub(super) fn node_value(v: &[u8]) -> (String, Option<&'static str>) {
    match std::str::from_utf8(v) {
        Ok(s) => (s.to_string(), None),
        Err(_) => (
            base64::engine::general_purpose::STANDARD.encode(v),
            Some("base64"),
        ),
    }
}

/// Decodes a value a Node peer sent with `encoding`.
pub(super) fn from_node(v: WireValue, encoding: Option<&str>) -> Result<Bytes, String> {
    match encoding {
        None | Some("utf8") | Some("utf-8") => Ok(v.0),
        Some("base64") => base64::engine::general_purpose::STANDARD
            .decode(&v.0)
            .map(Bytes::from)
            .map_err(|e| format!("bad base64 value: {e}")),
        Some(other) => Err(format!("unknown encoding {other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd_wire::Codec;

    #[test]
    fn ops_round_trip_on_both_codecs() {
        for codec in [Codec::Binary, Codec::NodeJson] {
            let op = CacheOp::Set {
                key: "k".into(),
                value: WireValue(Bytes::from_static(b"v\n\x01")),
                encoding: None,
                ttl_ms: Some(5),
            };
            let (f, b) = herd_wire::encode_value(codec, &op).unwrap();
            let back: CacheOp = herd_wire::decode_value(f, &b).unwrap();
            match back {
                CacheOp::Set { key, ttl_ms, .. } => {
                    assert_eq!(key, "k");
                    assert_eq!(ttl_ms, Some(5));
                }
                other => panic!("{other:?}"),
            }
        }
        // What the JS module sends.
        let op: CacheOp =
            serde_json::from_str(r#"{"op":"set","key":"a","value":"aGk=","encoding":"base64"}"#)
                .unwrap();
        let CacheOp::Set {
            value, encoding, ..
        } = op
        else {
            panic!()
        };
        assert_eq!(from_node(value, encoding.as_deref()).unwrap(), "hi");
        assert!(serde_json::from_str::<CacheOp>(r#"{"op":"nope"}"#).is_err());
    }

    proptest::proptest! {
        /// Any key and value survive a Set on both codecs; a Node peer's value survives the
        /// text-or-base64 encoding.
        #[test]
        fn set_round_trips(key in ".{0,40}", value in proptest::collection::vec(proptest::num::u8::ANY, 0..300), ttl in proptest::option::of(0u64..u64::MAX)) {
            for codec in [Codec::Binary, Codec::NodeJson] {
                let op = CacheOp::Set {
                    key: key.clone(),
                    value: WireValue(Bytes::from(value.clone())),
                    encoding: None,
                    ttl_ms: ttl,
                };
                let (f, b) = herd_wire::encode_value(codec, &op).unwrap();
                match herd_wire::decode_value::<CacheOp>(f, &b).unwrap() {
                    CacheOp::Set { key: k, value: v, ttl_ms, .. } => {
                        proptest::prop_assert_eq!(&k, &key);
                        proptest::prop_assert_eq!(&v.0[..], &value[..]);
                        proptest::prop_assert_eq!(ttl_ms, ttl);
                    }
                    other => proptest::prop_assert!(false, "{:?}", other),
                }
            }
            let (text, enc) = node_value(&value);
            proptest::prop_assert_eq!(&from_node(WireValue(Bytes::from(text)), enc).unwrap()[..], &value[..]);
        }

        /// Arbitrary bytes never panic the decoder of cache calls.
        #[test]
        fn garbage_is_an_error_not_a_panic(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200)) {
            for format in [herd_wire::Format::MsgPack, herd_wire::Format::Json, herd_wire::Format::Raw] {
                let _ = herd_wire::decode_value::<CacheOp>(format, &data);
                let _ = herd_wire::decode_value::<GetReply>(format, &data);
            }
        }
    }

    #[test]
    fn node_text_len_is_told_without_encoding() {
        for v in [
            &b""[..],
            b"plain",
            b"q\"uo\\te\n\r\t\x08\x0c",
            b"\x01\x02\x1f\x7f",
            "caf\u{e9} \u{1f600}".as_bytes(),
            &[0xff, 0x00, 0x01],
            &[0xfe; 7],
        ] {
            assert_eq!(NodeText::len_of(v), NodeText::of(v).len(), "{v:?}");
        }
        assert_eq!(NodeText::len_of(&[1u8; 100]), 602);
    }

    #[test]
    fn node_values_are_text_or_base64() {
        assert_eq!(node_value(b"caf\xc3\xa9"), ("café".into(), None));
        let (s, enc) = node_value(&[0xff, 0x00]);
        assert_eq!(enc, Some("base64"));
        assert_eq!(
            from_node(WireValue(Bytes::from(s)), enc).unwrap(),
            Bytes::from_static(&[0xff, 0x00])
        );
    }
}
