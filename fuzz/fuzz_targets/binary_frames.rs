//! Binary frames from an untrusted peer, in arbitrary chunks: the decoder must never panic, never
//! buffer past the frame limit, reject a bad header as soon as the header is complete, and every
//! frame it accepts must re-encode to the bytes it came from and take exactly its descriptors.
//!
//! Input: the first byte is the chunk size of the simulated reads, the rest is the stream.
#![no_main]

use bytes::BytesMut;
use herd_wire::frame::{self, Check, FdQueue};
use herd_wire::{Limits, WireError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&chunk, data)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(chunk).max(1);
    let limits = Limits {
        max_frame_len: 4096,
        max_fds_per_frame: 4,
        ..Limits::default()
    };
    // Some descriptors "arrived" with the bytes (the receiver owns them as OwnedFd).
    let mut fds = FdQueue::default();
    let devnull: Vec<_> = (0..data.len() % 4)
        .filter_map(|_| {
            std::fs::File::open("/dev/null")
                .ok()
                .map(std::os::fd::OwnedFd::from)
        })
        .collect();
    let opened = devnull.len();
    fds.extend(devnull).expect("a few fds fit the queue");
    assert_eq!(fds.len(), opened);
    let mut buf = BytesMut::new();
    let mut consumed = 0usize;
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            let queued = fds.len();
            match frame::decode(&mut buf, &mut fds, &limits) {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= limits.max_frame_len);
                    assert!(f.fds.len() <= limits.max_fds_per_frame);
                    assert_eq!(fds.len() + f.fds.len(), queued);
                    assert!(f.id == 0 || f.kind.has_id());
                    frame::validate_outgoing(&f, &limits).expect("accepted frame is valid");
                    let mut again = BytesMut::new();
                    frame::encode(&f, &mut again);
                    let used = before - buf.len();
                    assert_eq!(&again[..], &data[consumed..consumed + used]);
                    consumed += used;
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before);
                    assert_eq!(fds.len(), queued);
                    // A whole header is checked before its payload is buffered: once it is
                    // there and accepted, only a bounded payload remains to come.
                    match frame::check(&buf, &limits) {
                        Ok(Check::Incomplete { payload_left: None }) => {
                            assert!(buf.len() < frame::HEADER_LEN)
                        }
                        Ok(Check::Incomplete {
                            payload_left: Some(left),
                        }) => {
                            assert!(buf.len() >= frame::HEADER_LEN && left > 0);
                            assert!(buf.len() + left <= frame::HEADER_LEN + limits.max_frame_len);
                        }
                        other => panic!("decode said incomplete, check said {other:?}"),
                    }
                    break;
                }
                Err(WireError::Io(_)) => unreachable!("no i/o in decode"),
                Err(_) => {
                    // Errors come from the header alone, and only once it is complete.
                    assert!(buf.len() >= frame::HEADER_LEN);
                    return;
                }
            }
        }
    }
});
