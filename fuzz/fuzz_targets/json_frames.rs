//! Node json lines from an untrusted peer, in arbitrary chunks: the decoder must never panic,
//! never buffer past the limit, and hand on only valid JSON.
//!
//! Found on its first run: `3e333333333` is valid JSON that `serde_json::Value` refuses; the
//! decoder rightly passes it on (see the assertion below and `message.rs`'s `json()`).
#![no_main]

use bytes::BytesMut;
use herd_wire::json::JsonDecoder;
use herd_wire::{Format, Limits};
use libfuzzer_sys::fuzz_target;

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
                    // Syntactically valid JSON (a number too large for f64, like `3e333333333`,
                    // is valid JSON, as Node's JSON.parse agrees; decoding it into a Rust type is
                    // the user's error to handle, not a panic).
                    let v = serde_json::from_slice::<serde::de::IgnoredAny>(&f.payload);
                    assert!(v.is_ok(), "accepted invalid json {:?}", f.payload);
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
