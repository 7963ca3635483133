//! The control socket's request parser: any bytes give a request or an error, never a panic;
//! a `scale` request is always within bounds.
#![no_main]

use herd_cli::control::{parse_request, Request, MAX_WORKERS};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(line) = std::str::from_utf8(data) else {
        return;
    };
    match parse_request(line) {
        Ok(Request::Scale { workers }) => assert!((1..=MAX_WORKERS).contains(&workers)),
        Ok(_) => {}
        Err(e) => assert!(!e.is_empty()),
    }
});
