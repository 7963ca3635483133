//! A peer's hello (the first frame of the binary protocol), on both codecs: decoding and
//! negotiating must never panic.
#![no_main]

use herd_wire::{decode_value, Format, Hello};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for format in [Format::MsgPack, Format::Json, Format::Raw] {
        if let Ok(theirs) = decode_value::<Hello>(format, data) {
            let _ = Hello::new(1).negotiate(&theirs);
        }
    }
});
