//! A Node worker's local copies of the cache (js/herd.js) stay bounded under a flood of
//! distinct missing keys, with the real `node`: the Map never holds more than its cap, a key in
//! use stays, and a known-absent key is forgotten after the hub's miss TTL.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use herd::cache::{CacheConfig, FileSource, Hub};
use herd_test_support::cache::{ask, quiet, start_node};
use herd_test_support::events::DEADLINE;
use serde_json::{json, Value};

/// Distinct missing keys asked in all.
const KEYS: u64 = 200_000;
/// Keys per message to the worker (each answered well within the event deadline).
const PER_ASK: u64 = 20_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn herd_js_keeps_a_bounded_map_under_a_flood_of_missing_keys() {
    let data = BTreeMap::from([("hot".to_string(), Bytes::from_static(b"in use"))]);
    let hub = Hub::new(FileSource::from_map("flood", data), {
        let mut c = quiet();
        c.miss_ttl = Duration::from_millis(500);
        c
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/cache_flood.js");
    let (mut cluster, ids) = start_node(&hub, 1, &script).await;
    let id = ids[0];

    let mut last: Value = Value::Null;
    for from in (0..KEYS).step_by(PER_ASK as usize) {
        let op = json!({"op": "flood", "prefix": "/missing?q=", "from": from,
                        "count": PER_ASK, "batch": 1000, "hot": "hot"});
        last = ask(&mut cluster, id, op).await;
        assert!(last.get("error").is_none(), "{last}");
        let cap = last["stats"]["local_max_entries"].as_u64().unwrap();
        assert!(last["max_local"].as_u64().unwrap() <= cap, "{last}");
        assert_eq!(
            last["hot_local"],
            json!(true),
            "a key in use is kept: {last}"
        );
    }
    let stats = &last["stats"];
    println!("herd.js after {KEYS} missing keys: {stats}");
    assert_eq!(
        stats["local_entries"], stats["local_max_entries"],
        "{stats}"
    );
    assert!(
        stats["local_evictions"].as_u64().unwrap() >= KEYS - 10_000,
        "{stats}"
    );
    assert!(
        stats["local_bytes"].as_u64().unwrap() <= stats["local_max_bytes"].as_u64().unwrap(),
        "{stats}"
    );
    let hub_stats = hub.stats();
    assert!(
        hub_stats.entries <= CacheConfig::default().max_entries as u64,
        "{hub_stats:?}"
    );

    // A known-absent key is forgotten once the hub's miss TTL (500 ms) is over.
    let key = format!("/missing?q={}", KEYS - 1);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let a = ask(&mut cluster, id, json!({"op": "peek", "key": key})).await;
        let held = a["held"].as_bool().unwrap();
        if !held {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the miss is never forgotten"
        );
        tokio::time::sleep(Duration::from_millis(50)).await; // poll, bounded by the deadline
    }
    for (id, status) in cluster.disconnect_all().await {
        assert!(status.unwrap().success(), "node worker {id}");
    }
}
