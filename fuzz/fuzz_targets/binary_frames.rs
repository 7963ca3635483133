//! Binary frames from an untrusted peer, in arbitrary chunks: the decoder must never panic, never
//! buffer past the frame limit, and every frame it accepts must re-encode to the bytes it came
//! from.
#![no_main]

use bytes::BytesMut;
use herd_wire::frame::{self, FdQueue};
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
        .filter_map(|_| std::fs::File::open("/dev/null").ok().map(std::os::fd::OwnedFd::from))
        .collect();
    let _ = fds.extend(devnull);
    let mut buf = BytesMut::new();
    let mut consumed = 0usize;
    for piece in data.chunks(chunk) {
        buf.extend_from_slice(piece);
        loop {
            let before = buf.len();
            match frame::decode(&mut buf, &mut fds, &limits) {
                Ok(Some(f)) => {
                    assert!(f.payload.len() <= limits.max_frame_len);
                    assert!(f.fds.len() <= limits.max_fds_per_frame);
                    let mut again = BytesMut::new();
                    frame::encode(&f, &mut again);
                    let used = before - buf.len();
                    assert_eq!(&again[..], &data[consumed..consumed + used]);
                    consumed += used;
                }
                Ok(None) => {
                    assert!(buf.len() <= frame::HEADER_LEN + limits.max_frame_len);
                    break;
                }
                Err(WireError::Io(_)) => unreachable!("no i/o in decode"),
                Err(_) => return,
            }
        }
    }
});
