//! `herd run`'s config file: any text gives validated settings or an error, never a panic; what
//! validates satisfies the invariants herd relies on.
#![no_main]

use herd_cli::config::{parse, settings};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(file) = parse(text) else {
        return;
    };
    if let Ok(s) = settings(file) {
        assert!(s.workers >= 1);
        assert!(!s.command.is_empty() && !s.command[0].is_empty());
        assert!(s.reload_batch >= 1);
        assert!(s.backoff_min <= s.backoff_max);
        assert!(!s.name.is_empty() && !s.name.contains('/'));
        assert!(!s.reuseport || !s.listen.is_empty());
    }
});
