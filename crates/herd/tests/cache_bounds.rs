//! The "missing keys are cached forever" attack, reproduced against the hub: one million
//! distinct missing keys must not grow the process by more than 24 MB, and the hub's stats must
//! say what it holds. One test in its own binary, so no other test's memory muddies the figure
//! (run it with `cargo test -p herd --test cache_bounds -- --nocapture` to see the figures).

use std::collections::BTreeMap;
use std::time::Instant;

use herd::cache::{CacheConfig, FileSource, Hub, Progress};
use herd_test_support::process::own_rss;

/// The attack's size.
const KEYS: usize = 1_000_000;
/// The most the process may grow while it runs.
const MAX_GROWTH: u64 = 24 << 20;

/// This process's resident set, in bytes.
/// An attacker's key: distinct, about as long as a URL path.
fn key(i: usize) -> String {
    format!("/products/search?q=attack-{i:07}&page=1&sort=price")
}

#[tokio::test]
async fn a_million_missing_keys_stay_within_the_budget() {
    let mut config = CacheConfig::default();
    config.progress = Progress::Off;
    let hub = Hub::new(FileSource::from_map("empty", BTreeMap::new()), config);
    // Settle the runtime and allocator before the first figure.
    for i in 0..1000 {
        assert_eq!(hub.get(&format!("warm-{i}")).await.unwrap(), None);
    }
    let before = own_rss();
    let started = Instant::now();
    for i in 0..KEYS {
        assert_eq!(hub.get(&key(i)).await.unwrap(), None);
    }
    let after = own_rss();
    let growth = after.saturating_sub(before);
    let s = hub.stats();
    println!(
        "{KEYS} missing keys in {:?}: RSS {:.1} MB -> {:.1} MB (+{:.1} MB); hub: {} entries, \
         {} bytes, {} misses cached, {} evictions",
        started.elapsed(),
        before as f64 / 1e6,
        after as f64 / 1e6,
        growth as f64 / 1e6,
        s.entries,
        s.bytes,
        s.misses_cached,
        s.evictions,
    );
    assert!(
        growth < MAX_GROWTH,
        "the hub grew the process by {growth} bytes for {KEYS} missing keys"
    );

    // The stats are true: every entry held is a miss, charged its key and the overhead.
    let defaults = CacheConfig::default();
    assert!(s.entries <= defaults.max_entries as u64, "{s:?}");
    assert!(s.bytes <= defaults.max_bytes as u64, "{s:?}");
    assert_eq!(s.misses_cached, s.entries, "{s:?}");
    let key_len = key(0).len() as u64;
    assert_eq!(
        s.bytes,
        s.entries * (key_len + herd::cache::ENTRY_OVERHEAD as u64),
        "{s:?}"
    );
    assert_eq!(s.evictions + s.entries, KEYS as u64 + 1000, "{s:?}");
}
