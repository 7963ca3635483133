//! Node json lines from an untrusted peer, in arbitrary chunks: the decoder must never panic,
//! never buffer past the limit, hand on only valid JSON, and every frame it accepts must encode
//! (`encode_around`) to a line that decodes to the same frame.
//!
//! Input: the first byte is the chunk size of the simulated reads, the rest is the stream.
//!
//! Found on its first run: `3e333333333` is valid JSON that `serde_json::Value` refuses; the
//! decoder rightly passes it on (see the assertion below and herd's `Message::json()`).
#![no_main]

use bytes::BytesMut;
use herd_wire::frame::Frame;
use herd_wire::json::{self, JsonDecoder};
use herd_wire::{Format, Limits};
use libfuzzer_sys::fuzz_target;

/// Encodes `f` as the Node codec would send it and decodes it again.
fn reencode(f: &Frame) {
    let mut line = BytesMut::new();
    let tail = json::encode_around(f, &mut line).expect("accepted frame re-encodes");
    line.extend_from_slice(&f.payload);
    line.extend_from_slice(tail);
    let mut dec = JsonDecoder::default();
    let back = dec
        .decode(&mut line, &Limits::default())
        .expect("re-encoded frame decodes")
        .expect("re-encoded frame is whole");
    assert!(line.is_empty(), "one line, one frame");
    assert_eq!(dec.ignored(), 0);
    assert_eq!((back.kind, back.id, back.format), (f.kind, f.id, f.format));
    assert_eq!(back.payload, f.payload);
}

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let limits = Limits {
        max_frame_len: 4096,
        ..Limits::default()
    };
    let mut dec = JsonDecoder::default();
    let mut buf = BytesMut::new();
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf, &limits) {
                Ok(Some(f)) => {
                    assert_eq!(f.format, Format::Json);
                    assert!(f.fds.is_empty());
                    assert!(f.payload.len() <= limits.max_frame_len);
                    assert!(f.id == 0 || f.kind.has_id());
                    assert!(!f.kind.has_id() || f.id != 0);
                    // Syntactically valid JSON (a number too large for f64, like `3e333333333`,
                    // is valid JSON, as Node's JSON.parse agrees; decoding it into a Rust type is
                    // the user's error to handle, not a panic).
                    let v = serde_json::from_slice::<serde::de::IgnoredAny>(&f.payload);
                    assert!(v.is_ok(), "accepted invalid json {:?}", f.payload);
                    reencode(&f);
                }
                Ok(None) => {
                    assert!(buf.len() <= limits.max_frame_len);
                    break;
                }
                Err(_) => return,
            }
        }
    }
});
