//! Big writes wait in the primary bounded in bytes (issue 19, item 2, the request side): a
//! Node-json worker (`sh` writing exact lines to its channel) sends 300 `set`s of a 1 MiB value
//! while Redis is frozen (SIGSTOP), so no write can finish. The hub is in this process, so this
//! process's resident set is the primary's: the worker's calls in flight hold at most the
//! per-worker request budget, then its channel is not read; before, each of up to 1,024 calls
//! held its frame, its decoded value and its Redis command (about 3 MB a call). One test in its
//! own binary, so no other test's memory muddies the figure
//! (`cargo test -p herd --test cache_request_bytes -- --nocapture`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herd::cache::{Hub, RedisConfig, RedisSource};
use herd_test_support::events::DEADLINE;
use herd_test_support::process::own_rss;
use herd_test_support::redis_server::RedisServer;

/// The value's size.
const VALUE: usize = 1 << 20;
/// Writes the worker sends.
const CALLS: usize = 300;
/// The most the process may grow: the request budget (8 MiB) as frame, decoded value and
/// Redis command, the frame the reader stopped at, socket buffers and the allocator's slack.
const MAX_GROWTH: u64 = 100 << 20;

/// This process's resident set, in bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_a_frozen_redis_cannot_take_hold_a_bounded_number_of_bytes() {
    let server = RedisServer::start();
    let mut config = RedisConfig::default();
    config.command_timeout = Duration::from_secs(120);
    config.track = false;
    let source = Arc::new(RedisSource::with_config(&server.url(), config).unwrap());
    let hub = Hub::from_arc(source, herd_test_support::cache::quiet());
    // Connected before Redis freezes (a connect would time out and fail fast instead).
    hub.set("first", Bytes::from_static(b"1"), None)
        .await
        .unwrap();
    server.pause();
    let before = own_rss();

    let cluster = herd_test_support::cache::unread_calls(
        &hub,
        1,
        CALLS,
        (
            &format!("v=$(head -c {VALUE} /dev/zero | tr '\\0' x)"),
            r#"{"op":"set","key":"k%d","value":"%s"}"#,
            r#"$i "$v""#,
        ),
    )
    .await;

    // Watch the primary's memory until it stops growing for 2 s (it has taken what it will
    // take), at most a minute.
    let started = tokio::time::Instant::now();
    let mut peak = 0;
    let mut last = (0, tokio::time::Instant::now());
    loop {
        let now = own_rss();
        if now > last.0 + (1 << 20) {
            last = (now, tokio::time::Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(2) {
            break;
        }
        peak = peak.max(now);
        if started.elapsed() > DEADLINE.min(Duration::from_secs(60)) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let growth = peak.saturating_sub(before);
    println!(
        "{CALLS} writes of {VALUE} bytes to a frozen Redis: RSS {:.1} MB -> peak {:.1} MB \
         (+{:.1} MB)",
        before as f64 / 1e6,
        peak as f64 / 1e6,
        growth as f64 / 1e6,
    );
    server.resume();
    assert!(
        growth < MAX_GROWTH,
        "one worker's writes to a frozen Redis grew the primary by {growth} bytes"
    );
    cluster.shutdown().await;
}
