//! A peer's hello (the first frame of the binary protocol), on both codecs: decoding and
//! negotiating must never panic, negotiation must follow the version rules, and an accepted hello
//! must survive re-encoding.
#![no_main]

use herd_wire::{decode_value, encode_value, Codec, Format, Hello, PROTOCOL_MAJOR, PROTOCOL_MINOR};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let me = Hello::new(1);
    for format in [Format::MsgPack, Format::Json, Format::Raw] {
        let Ok(theirs) = decode_value::<Hello>(format, data) else {
            continue;
        };
        assert_ne!(format, Format::Raw, "raw payloads are never a hello");
        match me.negotiate(&theirs) {
            Ok(minor) => {
                assert_eq!(theirs.major, PROTOCOL_MAJOR);
                assert_eq!(minor, PROTOCOL_MINOR.min(theirs.minor));
            }
            Err(_) => assert_ne!(theirs.major, PROTOCOL_MAJOR),
        }
        for codec in [Codec::Binary, Codec::NodeJson] {
            let (f, bytes) = encode_value(codec, &theirs).expect("a hello encodes");
            let back: Hello = decode_value(f, &bytes).expect("an encoded hello decodes");
            assert_eq!(back, theirs);
        }
    }
});
