//! Hardening (issue 19): warm-up against a real `redis-server` on a free port.
//!
//! - A batch of big values never sits in herd's memory at once: each value goes to the hub as
//!   soon as it is read, so a warm-up holds at most the hub's `max_bytes` and the source's
//!   `max_assembling`, not its batch of values (twelve 16 MiB values in one batch of 256 once
//!   grew the process by all 192 MiB).
//! - One bad key does not stall warm-up: a key of another type (a hash) or a value over the
//!   size limit is skipped with a warning; the others in its batch load (once, such a key made
//!   every retry of its whole batch fail, for good).

use std::sync::Arc;
use std::time::Duration;

use herd::cache::{Hub, RedisConfig, RedisSource, Source};
use herd_test_support::cache::quiet;
use herd_test_support::events::DEADLINE;
use herd_test_support::redis_server::RedisServer;

const MIB: usize = 1 << 20;

/// This process's peak resident set, in KiB, since the last [`reset_peak`].
fn peak_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM in /proc/self/status")
}

fn resident_kb() -> u64 {
    herd_test_support::process::rss_kb(std::process::id())
}

/// Resets the peak resident set to the current one (Linux's `clear_refs` 5).
fn reset_peak() {
    std::fs::write("/proc/self/clear_refs", "5").expect("clear_refs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_up_batch_of_big_values_holds_the_budgets_not_the_batch() {
    let server = RedisServer::start();
    let keys = 12;
    for i in 0..keys {
        server.cmd::<()>(&[
            b"SET",
            format!("big:{i}").as_bytes(),
            &vec![b'a' + i as u8; 16 * MIB],
        ]);
    }
    let mut config = RedisConfig::default();
    config.max_assembling = 32 * MIB;
    let src = Arc::new(RedisSource::with_config(&server.url(), config).unwrap());
    let hub = Hub::from_arc(src.clone(), {
        let mut c = quiet();
        c.warm_patterns = vec!["big:*".into()];
        c.max_bytes = 32 * MIB;
        c
    });
    reset_peak();
    let before = resident_kb();
    hub.start();
    assert!(hub.ready(DEADLINE).await, "warm-up finishes");
    let grew_mb = peak_kb().saturating_sub(before) / 1024;
    eprintln!("warm-up of {keys} x 16 MiB: peak growth {grew_mb} MB");
    assert_eq!(src.reads(), keys as u64, "every value was read");
    let stats = hub.stats();
    assert!(stats.bytes <= 32 * MIB as u64, "{stats:?}");
    // The hub's 32 MiB, one value being assembled (16 MiB) and one being copied into its
    // shared segment (16 MiB), with room for the allocator: far below the batch's 192 MiB.
    assert!(
        grew_mb < 96,
        "warm-up of {keys} x 16 MiB grew the process by {grew_mb} MB at its peak"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_of_another_type_or_too_long_is_skipped_and_the_rest_of_its_batch_loads() {
    let server = RedisServer::start();
    server.cmd::<()>(&[b"SET", b"w:1", b"one"]);
    server.cmd::<()>(&[b"HSET", b"w:hash", b"field", b"value"]);
    server.cmd::<()>(&[b"SET", b"w:long", &vec![b'x'; 2 * MIB]]);
    server.cmd::<()>(&[b"SET", b"w:2", b"two"]);
    let mut config = RedisConfig::default();
    config.max_value = MIB;
    let src = Arc::new(RedisSource::with_config(&server.url(), config).unwrap());
    let hub = Hub::from_arc(src.clone(), {
        let mut c = quiet();
        c.warm_patterns = vec!["w:*".into()];
        c
    });
    hub.start();
    assert!(
        hub.ready(Duration::from_secs(10)).await,
        "warm-up finishes despite the bad keys"
    );
    let stats = hub.stats();
    assert_eq!(stats.entries, 2, "w:1 and w:2 are held: {stats:?}");
    let calls = src.calls();
    assert_eq!(hub.get("w:1").await.unwrap().as_deref(), Some(&b"one"[..]));
    assert_eq!(hub.get("w:2").await.unwrap().as_deref(), Some(&b"two"[..]));
    assert_eq!(
        src.calls(),
        calls,
        "both came from warm-up, not from a miss"
    );
    let e = hub.get("w:hash").await.expect_err("a hash is not a value");
    assert!(e.to_string().contains("w:hash"), "{e}");
    let e = hub.get("w:long").await.expect_err("over the limit");
    let why = std::error::Error::source(&e).map(|s| s.to_string());
    assert!(
        why.as_deref().unwrap_or("").contains("more than"),
        "{e}: {why:?}"
    );
}
