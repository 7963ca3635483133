//! A value's shared Node text lives as long as the value (issue 19, `cache/node_text.rs`): a
//! hub that keeps about one 6 MiB value (`max_bytes` 8 MiB) is asked once for each of 24 such
//! values by a Node-json worker that never reads (`sh` writing exact lines). While it lives,
//! its send queue holds replies; once it is gone, the primary holds the hub's one value and
//! its text again, not a text (and a value) for every value the hub let go of: the first build
//! of shared texts kept them in a table of their own, +200 MB here. One test in its own binary,
//! so no other test's memory muddies the figure (`cargo test -p herd --test
//! cache_text_lifetime -- --nocapture`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herd::cache::{FileSource, Hub};
use herd_test_support::process::own_rss;

const VALUE: usize = 6 << 20;
const KEYS: usize = 24;
/// What the primary may still hold once the worker is gone: the hub's value and its text, and
/// the allocator's slack, which dominates (+59 to +78 MB seen, the same with no text kept at
/// all); the table of the first build kept about 200 MB more.
const MAX_LEFT: u64 = 128 << 20;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn texts_of_values_the_hub_let_go_of_go_with_them() {
    let data: BTreeMap<String, Bytes> = (0..KEYS)
        .map(|i| (format!("big{i}"), Bytes::from(vec![b'a' + i as u8; VALUE])))
        .collect();
    let hub = Hub::new(FileSource::from_map("big", data), {
        let mut config = herd_test_support::cache::quiet();
        config.max_bytes = 8 << 20;
        config
    });
    let before = own_rss();
    let cluster = herd_test_support::cache::unread_calls(
        &hub,
        1,
        KEYS,
        ("", r#"{"op":"get","key":"big%d"}"#, "$i"),
    )
    .await;
    let deadline = Instant::now() + Duration::from_secs(60);
    while hub.stats().misses < KEYS as u64 {
        assert!(Instant::now() < deadline, "never asked for every value");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let during = own_rss();
    cluster.shutdown().await;
    // Until what the worker's replies held is let go of (at most 10 s).
    let settle = Instant::now() + Duration::from_secs(10);
    let mut after = own_rss();
    while after.saturating_sub(before) >= MAX_LEFT && Instant::now() < settle {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = own_rss();
    }
    let s = hub.stats();
    println!(
        "{KEYS} values of {VALUE} bytes, {} evicted: RSS {:.1} MB, {:.1} MB while the worker \
         lived, {:.1} MB after (+{:.1} MB)",
        s.evictions,
        before as f64 / 1e6,
        during as f64 / 1e6,
        after as f64 / 1e6,
        after.saturating_sub(before) as f64 / 1e6
    );
    assert!(s.evictions >= KEYS as u64 - 2, "{s:?}");
    assert!(
        after.saturating_sub(before) < MAX_LEFT,
        "the primary kept {} bytes after the worker was gone",
        after.saturating_sub(before)
    );
}
