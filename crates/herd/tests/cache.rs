//! The host-shared cache end to end, with real worker processes and a file source (the
//! Redis-backed tests are in `redis_cache.rs`): one load per key for the whole host, large values
//! shared as sealed memfds, invalidation reaching every worker, warm-up serving later workers
//! with no source reads.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use bytes::Bytes;
use herd::cache::{CacheConfig, FileSource, Hub, Progress};
use herd::{Cluster, Event};
use herd_test_support::cache::*;
use herd_test_support::events::next;
use herd_test_support::test_worker;
use serde_json::{json, Value};

fn folder(name: &str, values: &[(&str, Vec<u8>)]) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herd-cache-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (k, v) in values {
        std::fs::write(dir.join(k), v).unwrap();
    }
    dir
}

#[tokio::test]
async fn every_worker_misses_at_once_and_the_source_is_read_once_per_key() {
    let keys: Vec<String> = (0..20).map(|i| format!("user:{i}")).collect();
    let values: Vec<(&str, Vec<u8>)> = keys
        .iter()
        .map(|k| (k.as_str(), format!("value of {k}").into_bytes()))
        .collect();
    let dir = folder("once", &values);
    let hub = Hub::new(FileSource::folder(&dir).unwrap(), quiet());
    let (mut cluster, ids) = start(&hub, 4).await;

    // Every worker asks for every key at the same moment.
    let answers = ask_all_ok(
        &mut cluster,
        &ids,
        json!({"op": "cache_gets", "keys": keys}),
    )
    .await;
    for (id, a) in &answers {
        for k in &keys {
            let got = &a["cache_gets"][k];
            assert_eq!(
                got["text"],
                json!(format!("value of {k}")),
                "worker {id} {k}"
            );
            assert_eq!(got["local"], json!(false));
        }
    }
    let stats = hub.stats();
    assert_eq!(stats.loads, 20, "one load per key for 4 workers: {stats:?}");
    assert_eq!(hub.source().calls(), 20);
    assert_eq!(stats.misses, stats.loads + stats.coalesced, "{stats:?}");

    // Again: every answer now comes from each worker's local view, nothing reaches the hub.
    let answers = ask_all_ok(
        &mut cluster,
        &ids,
        json!({"op": "cache_gets", "keys": keys}),
    )
    .await;
    for a in answers.values() {
        assert!(keys
            .iter()
            .all(|k| a["cache_gets"][k]["local"] == json!(true)));
    }
    assert_eq!(hub.stats().misses, stats.misses);
    let s = ask_ok(&mut cluster, ids[0], json!({"op": "cache_stats"})).await;
    assert_eq!(s["cache_stats"]["local_hits"], json!(20));
    assert_eq!(s["cache_stats"]["local_misses"], json!(20));

    // A key that does not exist is one load too, and then known absent.
    let a = ask_all_ok(
        &mut cluster,
        &ids,
        json!({"op": "cache_get", "key": "nope"}),
    )
    .await;
    assert!(a.values().all(|v| v["value"]["found"] == json!(false)));
    assert_eq!(hub.source().calls(), 21);
    cluster.disconnect_all().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn large_values_are_one_sealed_memfd_mapped_by_every_worker() {
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let dir = folder("big", &[("big", big.clone()), ("small", b"tiny".to_vec())]);
    let hub = Hub::new(FileSource::folder(&dir).unwrap(), quiet());
    let (mut cluster, ids) = start(&hub, 3).await;
    let answers = ask_all_ok(
        &mut cluster,
        &ids,
        json!({"op": "cache_gets", "keys": ["big", "small"]}),
    )
    .await;
    for a in answers.values() {
        assert_eq!(a["cache_gets"]["big"]["len"], json!(big.len()));
        assert_eq!(a["cache_gets"]["big"]["sum"], json!(checksum(&big)));
        assert_eq!(a["cache_gets"]["small"]["text"], json!("tiny"));
    }
    let stats = hub.stats();
    assert_eq!(stats.shared_values, 1, "{stats:?}");
    assert_eq!(stats.shared_bytes, big.len() as u64);
    assert_eq!(stats.inline_bytes, 4);
    // Each worker maps the hub's memfd (the same inode) rather than holding a copy.
    let mut inodes = std::collections::HashSet::new();
    for id in &ids {
        let pid = cluster.worker(*id).await.unwrap().pid();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
        let line = maps
            .lines()
            .find(|l| l.contains("memfd:herd-cache:big"))
            .unwrap_or_else(|| panic!("worker {id} has no mapping of the memfd:\n{maps}"));
        // address perms offset dev inode path: mapped read-only, shared.
        let f: Vec<&str> = line.split_whitespace().collect();
        assert_eq!(f[1], "r--s", "{line}");
        inodes.insert(f[4].to_string());
        let s = ask_ok(&mut cluster, *id, json!({"op": "cache_stats"})).await;
        assert_eq!(s["cache_stats"]["mapped_bytes"], json!(big.len()));
    }
    assert_eq!(inodes.len(), 1, "one memfd for the whole host");
    cluster.disconnect_all().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn set_and_delete_through_herd_reach_every_worker() {
    let dir = folder("inval", &[("k", b"v1".to_vec())]);
    let hub = Hub::new(FileSource::folder(&dir).unwrap(), quiet());
    let (mut cluster, ids) = start(&hub, 2).await;
    let (a, b) = (ids[0], ids[1]);
    let get = json!({"op": "cache_get", "key": "k"});
    ask_all_ok(&mut cluster, &ids, get.clone()).await;
    let v = ask_ok(&mut cluster, b, get.clone()).await;
    assert_eq!(v["value"]["local"], json!(true));

    // Worker a writes; worker b's view drops the key (the push), and its next read sees v2.
    ask_ok(
        &mut cluster,
        a,
        json!({"op": "cache_set", "key": "k", "value": "v2"}),
    )
    .await;
    assert_eq!(std::fs::read(dir.join("k")).unwrap(), b"v2");
    let seen = wait_for(&mut cluster, b, &get, |v| v["value"]["text"] == json!("v2")).await;
    assert_eq!(seen["value"]["text"], json!("v2"));

    ask_ok(&mut cluster, a, json!({"op": "cache_delete", "key": "k"})).await;
    wait_for(&mut cluster, b, &get, |v| {
        v["value"]["found"] == json!(false)
    })
    .await;
    assert!(!dir.join("k").exists());
    assert!(hub.stats().invalidations >= 2);

    // The primary uses the same hub directly.
    hub.set("k", Bytes::from_static(b"v3"), None).await.unwrap();
    assert_eq!(hub.get("k").await.unwrap().unwrap(), "v3");
    wait_for(&mut cluster, a, &get, |v| v["value"]["text"] == json!("v3")).await;
    cluster.disconnect_all().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A worker reads its own write: after `set` returns, its next `get` gives the new value, not
/// the one its view held (the hub's reply may arrive before its invalidation).
#[tokio::test]
async fn a_worker_reads_its_own_writes() {
    let dir = folder("ryw", &[("k", b"v".to_vec())]);
    let hub = Hub::new(FileSource::folder(&dir).unwrap(), quiet());
    let (mut cluster, ids) = start(&hub, 1).await;
    let v = ask_ok(
        &mut cluster,
        ids[0],
        json!({"op": "cache_write_then_read", "key": "k", "rounds": 300}),
    )
    .await;
    assert_eq!(v["stale"], json!(0), "{v}");
    cluster.disconnect_all().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn warm_up_loads_once_and_later_workers_read_nothing_from_the_source() {
    let values: Vec<(String, Vec<u8>)> = (0..50)
        .map(|i| {
            (
                format!("item:{i}"),
                vec![b'a' + (i % 26) as u8; 100 + i * 2000],
            )
        })
        .chain([("other".to_string(), b"not warmed".to_vec())])
        .collect();
    let refs: Vec<(&str, Vec<u8>)> = values
        .iter()
        .map(|(k, v)| (k.as_str(), v.clone()))
        .collect();
    let dir = folder("warm", &refs);
    let mut config = CacheConfig::default();
    config.warm_patterns = vec!["item:*".into()];
    config.warm_batch = 16;
    config.progress = Progress::Log;
    let hub = Hub::new(FileSource::folder(&dir).unwrap(), config);
    let (mut cluster, ids) = start(&hub, 2).await;
    ask_ok(&mut cluster, ids[0], json!({"op": "cache_ready"})).await;
    assert!(hub.ready(Duration::ZERO).await);
    let after_warm = hub.source().calls();
    assert_eq!(after_warm, 1 + 50, "one scan and one read per key");
    assert_eq!(
        hub.stats().shared_values,
        50 - 33,
        "values above 64 KiB are shared"
    );

    // A worker forked later (a restart, a reload) gets everything with no source read.
    let late = cluster.fork().await.unwrap().id();
    loop {
        if let Event::Online { worker } = next(&mut cluster).await {
            if worker == late {
                break;
            }
        }
    }
    let keys: Vec<&String> = values
        .iter()
        .map(|(k, _)| k)
        .filter(|k| k.starts_with("item:"))
        .collect();
    let a = ask_ok(
        &mut cluster,
        late,
        json!({"op": "cache_gets", "keys": keys}),
    )
    .await;
    for (k, v) in values.iter().filter(|(k, _)| k.starts_with("item:")) {
        assert_eq!(a["cache_gets"][k]["sum"], json!(checksum(v)), "{k}");
    }
    assert_eq!(
        hub.source().calls(),
        after_warm,
        "no source read for a late worker"
    );
    cluster.disconnect_all().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_cluster_without_a_hub_answers_cache_calls_with_an_error() {
    let mut cluster = Cluster::builder()
        .workers(1)
        .program(test_worker())
        .args(Vec::<String>::new())
        .start()
        .await
        .unwrap();
    let id = loop {
        if let Event::Online { worker } = next(&mut cluster).await {
            break worker;
        }
    };
    cluster
        .worker(id)
        .await
        .unwrap()
        .send(&json!({"op": "cache_get", "key": "k"}))
        .await
        .unwrap();
    loop {
        if let Event::Message { message, .. } = next(&mut cluster).await {
            let v: Value = message.json().unwrap();
            let e = v["cache_error"].as_str().unwrap();
            assert!(e.contains("serves no cache"), "{e}");
            break;
        }
    }
    cluster.disconnect_all().await;
}

#[tokio::test]
async fn snapshot_source_serves_without_files_per_key() {
    let mut map = BTreeMap::new();
    map.insert("a".to_string(), Bytes::from_static(b"1"));
    let hub = Hub::new(FileSource::from_map("embedded", map), quiet());
    assert_eq!(hub.get("a").await.unwrap().unwrap(), "1");
    assert_eq!(hub.get("b").await.unwrap(), None);
    assert!(hub.set("a", Bytes::new(), None).await.is_err());
}
