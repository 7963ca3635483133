//! The "big values multiply in the primary" attack (issue 19, item 2), reproduced with a real
//! worker process: a Node-json worker (`sh` writing exact lines to its channel, then sleeping)
//! asks for a 1 MiB value 3,000 times and never reads a reply. The hub is in this process, so
//! this process's resident set is the primary's: it must stay bounded in bytes (the per-worker
//! reply budget, the send queue's own bound), not grow by a copy or two of the value per call in
//! flight (before: about 2.2 GB for 1,024 calls). One test in its own binary, so no other test's
//! memory muddies the figure (`cargo test -p herd --test cache_reply_bytes -- --nocapture`).

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use herd::cache::{FileSource, Hub};
use herd_test_support::events::DEADLINE;
use herd_test_support::process::own_rss;

/// The value's size: text, so a Node peer gets it as a JSON string.
const VALUE: usize = 1 << 20;
/// Calls the worker sends without reading.
const CALLS: usize = 3000;
/// The most the process may grow. The value's text is made once and every reply shares it
/// (`cache/node_text.rs`): one text, the frames' own few bytes, the socket buffers and the
/// allocator's slack (+6 MB seen). With a text made per reply, the send queue (64 MiB) and the
/// reply budget (16 MiB) filled with copies: +100-120 MB.
const MAX_GROWTH: u64 = 32 << 20;

/// This process's resident set, in bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_never_reads_big_replies_costs_a_bounded_number_of_bytes() {
    let data = BTreeMap::from([("big".to_string(), Bytes::from(vec![b'x'; VALUE]))]);
    let hub = Hub::new(
        FileSource::from_map("big", data),
        herd_test_support::cache::quiet(),
    );
    // Loaded once before the figure: the value itself is the hub's, not the attack's.
    assert_eq!(hub.get("big").await.unwrap().unwrap().len(), VALUE);
    let before = own_rss();

    let cluster = herd_test_support::cache::unread_calls(
        &hub,
        1,
        CALLS,
        ("", r#"{"op":"get","key":"big"}"#, ""),
    )
    .await;

    // The primary takes calls until the worker's permits are all held, and encodes their
    // replies (off the runtime, behind the lookups) until the budgets are full: watch its
    // memory until its lookups pass that and neither they nor its memory have grown for 8 s
    // (a debug build measures every waiting call's text before it encodes the first: seconds
    // with nothing growing; at most a minute, then the figure is what it is).
    let started = tokio::time::Instant::now();
    let mut peak = 0;
    let mut last = (0, 0, tokio::time::Instant::now());
    loop {
        let now = own_rss();
        peak = peak.max(now);
        let s = hub.stats();
        let seen = s.hits + s.misses;
        if seen != last.0 || now > last.1 + (1 << 20) {
            last = (seen, now.max(last.1), tokio::time::Instant::now());
        } else if seen > 1024 && last.2.elapsed() > Duration::from_secs(8) {
            break;
        }
        if started.elapsed() > DEADLINE.min(Duration::from_secs(60)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let growth = peak.saturating_sub(before);
    let s = hub.stats();
    println!(
        "{} calls for a {VALUE}-byte value, none read: RSS {:.1} MB -> peak {:.1} MB \
         (+{:.1} MB)",
        s.hits + s.misses - 1,
        before as f64 / 1e6,
        peak as f64 / 1e6,
        growth as f64 / 1e6,
    );
    assert!(
        growth < MAX_GROWTH,
        "one worker that does not read its replies grew the primary by {growth} bytes"
    );
    cluster.shutdown().await;
}
