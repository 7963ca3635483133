//! Frames the primary sends on a Node worker's cache channel, as the addon's `CacheClient`
//! takes them: whatever the bytes, taking a frame and answering any call with it never panics,
//! and what it keeps in the local view it hands back the same way.
//!
//! Input: the first byte picks the frame's kind and the call it answers, the rest is the payload.
#![no_main]

use bytes::Bytes;
use herd::cache::{Answer, CacheClient, Call, Received};
use herd::WorkerId;
use herd_wire::{Format, Frame, Kind};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let kind = match pick % 4 {
        0 => Kind::Reply,
        1 => Kind::ReplyError,
        2 => Kind::Control,
        _ => Kind::Message,
    };
    let format = if pick & 0x10 == 0 { Format::MsgPack } else { Format::Json };
    let call = match (pick >> 2) % 4 {
        0 => Call::Get("k".into()),
        1 => Call::Delete("k".into()),
        2 => Call::Ready(std::time::Duration::from_millis(1)),
        _ => Call::Stats,
    };
    let client = CacheClient::new(WorkerId(1));
    let (id, _) = client.call(&call).expect("a call encodes");
    let frame = Frame::new(kind, format, Bytes::copy_from_slice(payload)).with_id(id);
    match client.receive(frame) {
        Ok(Received::Reply(_, frame)) => {
            if let Ok(Answer::Got(v)) = client.answer(&call, frame) {
                if let Some(version) = v.version {
                    let held = client.local_entry("k").expect("kept");
                    assert_eq!(held.version, Some(version));
                    assert_eq!(held.value, v.value);
                }
            }
        }
        Ok(_) | Err(_) => {}
    }
});
