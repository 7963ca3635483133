//! The host-shared cache over a real `redis-server` that each test starts on its own port:
//! one Redis read per key for the whole host (counted by Redis itself), invalidations pushed
//! from Redis to every worker, warm-up by pattern, writes through herd, and outages (Redis
//! stopped: stale values served, never-loaded keys fail; Redis back: tracking and data recover).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use herd::cache::{CacheConfig, Hub, RedisConfig, RedisSource};
use herd::{Cluster, WorkerId};
use herd_test_support::cache::*;
use herd_test_support::events::DEADLINE;
use herd_test_support::redis_server::RedisServer;
use serde_json::{json, Value};

fn source(server: &RedisServer, chunk_size: usize) -> Arc<RedisSource> {
    let mut config = RedisConfig::default();
    config.chunk_size = chunk_size;
    config.backoff_min = Duration::from_millis(20);
    config.backoff_max = Duration::from_millis(200);
    Arc::new(RedisSource::with_config(&server.url(), config).unwrap())
}

fn hub(source: &Arc<RedisSource>, config: CacheConfig) -> Hub {
    let hub = Hub::from_arc(source.clone(), config);
    hub.start();
    hub
}

async fn get(cluster: &mut Cluster, id: WorkerId, key: &str) -> Value {
    let a = ask(cluster, id, json!({"op": "cache_get", "key": key})).await;
    assert!(a.get("cache_error").is_none(), "worker {id} {key}: {a}");
    a["value"].clone()
}

/// Polls `check` until it holds, failing after the deadline.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check().await {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Asks worker `id` for `key` until the answer satisfies `want`, failing after the deadline.
async fn until_get(cluster: &mut Cluster, id: WorkerId, key: &str, want: impl Fn(&Value) -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let v = get(cluster, id, key).await;
        if want(&v) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "worker {id} never saw the change to {key}: last {v}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_worker_misses_at_once_and_redis_serves_each_key_once() {
    let server = RedisServer::start();
    let keys: Vec<String> = (0..20).map(|i| format!("user:{i}")).collect();
    for k in &keys {
        server.cmd::<()>(&[b"SET", k.as_bytes(), format!("value of {k}").as_bytes()]);
    }
    // A 1 MiB value, read in 256 KiB chunks and shared as a sealed memfd.
    let big: Vec<u8> = (0..1 << 20).map(|i| (i * 7 % 251) as u8).collect();
    server.cmd::<()>(&[b"SET", b"big", &big]);
    server.cmd::<()>(&[b"SET", b"expiring", b"soon", b"PX", b"600000"]);
    let mut all = keys.clone();
    all.extend(["big".to_string(), "expiring".into(), "absent".into()]);

    let src = source(&server, 256 << 10);
    let hub = hub(&src, quiet());
    let (mut cluster, ids) = start(&hub, 4).await;
    let before = server.command_calls("getrange");

    let answers = ask_all(&mut cluster, &ids, json!({"op": "cache_gets", "keys": all})).await;
    for (id, a) in &answers {
        assert!(a.get("cache_error").is_none(), "worker {id}: {a}");
        let got = &a["cache_gets"];
        for k in &keys {
            assert_eq!(
                got[k]["text"],
                json!(format!("value of {k}")),
                "worker {id} {k}"
            );
        }
        assert_eq!(got["big"]["len"], json!(big.len()));
        assert_eq!(got["big"]["sum"], json!(checksum(&big)));
        assert_eq!(got["expiring"]["text"], json!("soon"));
        assert_eq!(got["absent"]["found"], json!(false));
    }
    // Redis itself counts the reads: one GETRANGE per small key (in one pipelined batch with
    // its PTTL and STRLEN); the 1 MiB one is a 64 KiB head and then four 256 KiB chunks.
    let getranges = server.command_calls("getrange") - before;
    assert_eq!(getranges, 20 + 5 + 1 + 1, "GETRANGE calls seen by redis");
    assert_eq!(src.reads(), 22, "values read (the absent key is no value)");
    let stats = hub.stats();
    assert_eq!(stats.loads, 23, "{stats:?}");
    assert!(
        stats.coalesced > 0,
        "4 workers x 23 keys at once: {stats:?}"
    );
    assert_eq!(stats.shared_values, 1);
    assert!(stats.tracking);

    // Again from every worker: from their local views, not even the primary is asked.
    let again = ask_all(
        &mut cluster,
        &ids,
        json!({"op": "cache_gets", "keys": keys}),
    )
    .await;
    for a in again.values() {
        assert_eq!(a["cache_gets"]["user:0"]["local"], json!(true));
    }
    assert_eq!(server.command_calls("getrange") - before, getranges);
    cluster.disconnect_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_made_in_redis_reaches_every_worker() {
    let server = RedisServer::start();
    server.cmd::<()>(&[b"SET", b"config", b"v1"]);
    let src = source(&server, 4 << 20);
    let hub = hub(&src, quiet());
    let (mut cluster, ids) = start(&hub, 3).await;
    for id in &ids {
        assert_eq!(get(&mut cluster, *id, "config").await["text"], json!("v1"));
        assert_eq!(get(&mut cluster, *id, "config").await["local"], json!(true));
    }

    // Another client (another host's app, an operator) changes it in Redis.
    server.cmd::<()>(&[b"SET", b"config", b"v2"]);
    for id in ids.clone() {
        until_get(&mut cluster, id, "config", |v| v["text"] == json!("v2")).await;
    }
    assert!(hub.stats().invalidations >= 1);

    // Deleted in Redis: gone everywhere.
    server.cmd::<()>(&[b"DEL", b"config"]);
    for id in ids.clone() {
        until_get(&mut cluster, id, "config", |v| v["found"] == json!(false)).await;
    }

    // FLUSHALL: everything is re-read.
    server.cmd::<()>(&[b"SET", b"config", b"v3"]);
    for id in ids.clone() {
        until_get(&mut cluster, id, "config", |v| v["text"] == json!("v3")).await;
    }
    server.cmd::<()>(&[b"FLUSHALL"]);
    for id in ids.clone() {
        until_get(&mut cluster, id, "config", |v| v["found"] == json!(false)).await;
    }
    cluster.disconnect_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_serves_stale_values_and_recovers_when_it_is_back() {
    let mut server = RedisServer::start();
    server.cmd::<()>(&[b"SET", b"known", b"before the outage"]);
    server.cmd::<()>(&[b"SET", b"unknown", b"never read before the outage"]);
    let src = source(&server, 4 << 20);
    let hub = hub(&src, quiet());
    let (mut cluster, ids) = start(&hub, 2).await;
    assert_eq!(
        get(&mut cluster, ids[0], "known").await["text"],
        json!("before the outage")
    );

    server.stop();
    // The hub learns the connection is gone (tracking lost): nothing is fresh any more.
    eventually("the hub sees tracking lost", || async {
        !hub.stats().tracking
    })
    .await;
    // A value read before the outage is still served, to every worker...
    for id in &ids {
        let v = get(&mut cluster, *id, "known").await;
        assert_eq!(v["text"], json!("before the outage"), "worker {id}");
        assert_eq!(
            v["local"],
            json!(false),
            "no local copy is trusted without tracking"
        );
    }
    assert!(hub.stats().stale_served >= 2);
    // ...and a key never loaded is a clear error, not a hang or a crash.
    let a = ask(
        &mut cluster,
        ids[1],
        json!({"op": "cache_get", "key": "unknown"}),
    )
    .await;
    let error = a["cache_error"].as_str().unwrap_or_default().to_string();
    assert!(error.contains("unknown"), "{a}");

    // Redis comes back (empty, as after a crash); someone writes the new truth.
    server.restart();
    server.cmd::<()>(&[b"SET", b"known", b"after the outage"]);
    server.cmd::<()>(&[b"SET", b"unknown", b"now readable"]);
    eventually("tracking is restored", || async { hub.stats().tracking }).await;
    for id in &ids {
        assert_eq!(
            get(&mut cluster, *id, "known").await["text"],
            json!("after the outage")
        );
        assert_eq!(
            get(&mut cluster, *id, "unknown").await["text"],
            json!("now readable")
        );
    }
    // And invalidations flow again on the new connection.
    server.cmd::<()>(&[b"SET", b"known", b"changed again"]);
    until_get(&mut cluster, ids[0], "known", |v| {
        v["text"] == json!("changed again")
    })
    .await;
    cluster.disconnect_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_scans_a_pattern_and_later_workers_read_nothing_from_redis() {
    let server = RedisServer::start();
    for i in 0..300 {
        let k = format!("item:{i}");
        server.cmd::<()>(&[b"SET", k.as_bytes(), format!("item number {i}").as_bytes()]);
    }
    server.cmd::<()>(&[b"SET", b"other", b"not warmed"]);
    let src = source(&server, 4 << 20);
    let hub = hub(&src, {
        let mut c = quiet();
        c.warm_patterns = vec!["item:*".into()];
        c.warm_keys = vec!["other".into()];
        c.warm_batch = 64;
        c
    });
    assert!(hub.ready(DEADLINE).await, "warm-up finishes");
    assert_eq!(src.reads(), 301);
    // Pipelined: a few round trips of 64 keys, not 301 single reads.
    assert!(server.command_calls("getrange") == 301);

    let (mut cluster, ids) = start(&hub, 2).await;
    let keys: Vec<String> = (0..300).map(|i| format!("item:{i}")).collect();
    let answers = ask_all(
        &mut cluster,
        &ids,
        json!({"op": "cache_gets", "keys": keys}),
    )
    .await;
    for a in answers.values() {
        assert_eq!(
            a["cache_gets"]["item:299"]["text"],
            json!("item number 299")
        );
    }
    assert_eq!(
        src.reads(),
        301,
        "workers started after warm-up read nothing from redis"
    );
    assert_eq!(server.command_calls("getrange"), 301);
    cluster.disconnect_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_through_herd_reach_redis_and_every_worker() {
    let server = RedisServer::start();
    let src = source(&server, 4 << 20);
    let hub = hub(&src, quiet());
    let (mut cluster, ids) = start(&hub, 2).await;
    assert_eq!(
        get(&mut cluster, ids[1], "greeting").await["found"],
        json!(false)
    );

    let a = ask(
        &mut cluster,
        ids[0],
        json!({"op": "cache_set", "key": "greeting", "value": "hello", "ttl_ms": 60000}),
    )
    .await;
    assert_eq!(a, json!({"cache_set": "greeting"}));
    let stored: Vec<u8> = server.cmd(&[b"GET", b"greeting"]);
    assert_eq!(stored, b"hello");
    let pttl: i64 = server.cmd(&[b"PTTL", b"greeting"]);
    assert!(pttl > 50_000 && pttl <= 60_000, "{pttl}");
    // The other worker had cached "absent": it sees the new value.
    assert_eq!(
        get(&mut cluster, ids[1], "greeting").await["text"],
        json!("hello")
    );

    let a = ask(
        &mut cluster,
        ids[1],
        json!({"op": "cache_delete", "key": "greeting"}),
    )
    .await;
    assert_eq!(a["existed"], json!(true));
    let exists: i64 = server.cmd(&[b"EXISTS", b"greeting"]);
    assert_eq!(exists, 0);
    assert_eq!(
        get(&mut cluster, ids[0], "greeting").await["found"],
        json!(false)
    );
    cluster.disconnect_all().await;
}

/// Asks a Node cache worker; fails on its error answer.
async fn node_ask(cluster: &mut Cluster, id: WorkerId, op: Value) -> Value {
    let a = ask(cluster, id, op).await;
    assert!(a.get("error").is_none(), "node worker {id}: {a}");
    a
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_workers_share_the_cache_through_herd_js() {
    let server = RedisServer::start();
    let keys: Vec<String> = (0..10).map(|i| format!("page:{i}")).collect();
    for k in &keys {
        server.cmd::<()>(&[b"SET", k.as_bytes(), format!("<p>{k} ✓</p>").as_bytes()]);
    }
    let binary: Vec<u8> = (0..=255u8).rev().collect();
    server.cmd::<()>(&[b"SET", b"blob", &binary]);
    // Big ones go to Node as one text shared by every reply of them (cache/node_text.rs).
    let big = vec![b'x'; 300 << 10];
    server.cmd::<()>(&[b"SET", b"big", &big]);
    let bigbin: Vec<u8> = (0..200 << 10).map(|i| (i % 251) as u8 | 0x80).collect();
    server.cmd::<()>(&[b"SET", b"bigbin", &bigbin]);
    let mut all = keys.clone();
    all.extend([
        "blob".into(),
        "big".into(),
        "bigbin".into(),
        "absent".into(),
    ]);

    let src = source(&server, 4 << 20);
    let hub = hub(&src, quiet());
    let (mut cluster, ids) = start_node(
        &hub,
        2,
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node/cache_worker.js"),
    )
    .await;
    assert_eq!(
        node_ask(&mut cluster, ids[0], json!({"op": "ready"})).await["ready"],
        json!(true)
    );

    // Both Node workers ask for everything at once: one Redis read per key for the host.
    let answers = ask_all(&mut cluster, &ids, json!({"op": "gets", "keys": all})).await;
    for (id, a) in &answers {
        let v = &a["values"];
        assert!(a.get("error").is_none(), "node worker {id}: {a}");
        assert_eq!(v["page:3"]["text"], json!("<p>page:3 ✓</p>"));
        assert_eq!(v["blob"]["binary"], json!(true));
        assert_eq!(v["blob"]["len"], json!(256));
        assert_eq!(v["blob"]["sum"], json!(checksum(&binary).to_string()));
        assert_eq!(v["big"]["len"], json!(big.len()));
        assert_eq!(v["big"]["sum"], json!(checksum(&big).to_string()));
        assert_eq!(v["bigbin"]["binary"], json!(true));
        assert_eq!(v["bigbin"]["sum"], json!(checksum(&bigbin).to_string()));
        assert_eq!(v["absent"]["found"], json!(false));
    }
    assert_eq!(src.reads(), 13);
    assert_eq!(hub.stats().loads, 14);

    // A big value replaced in Redis reaches Node as the new one, not the text of the old.
    let big2 = vec![b'y'; 300 << 10];
    server.cmd::<()>(&[b"SET", b"big", &big2]);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let a = node_ask(&mut cluster, ids[0], json!({"op": "get", "key": "big"})).await;
        if a["value"]["sum"] == json!(checksum(&big2).to_string()) {
            break;
        }
        assert_eq!(a["value"]["sum"], json!(checksum(&big).to_string()), "{a}");
        assert!(tokio::time::Instant::now() < deadline, "never invalidated");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Then from the Node process's own copy; a change in Redis reaches it.
    let a = node_ask(&mut cluster, ids[1], json!({"op": "get", "key": "page:1"})).await;
    assert_eq!(a["local"], json!(true));
    server.cmd::<()>(&[b"SET", b"page:1", b"changed"]);
    let deadline = tokio::time::Instant::now() + DEADLINE;
    loop {
        let a = node_ask(&mut cluster, ids[1], json!({"op": "get", "key": "page:1"})).await;
        if a["value"]["text"] == json!("changed") {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never invalidated: {a}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Writes from Node go to Redis (binary safe) and reach the other worker.
    let a = node_ask(
        &mut cluster,
        ids[0],
        json!({"op": "set", "key": "blob", "value": "AAEC/w==", "binary": true, "ttl": 60000}),
    )
    .await;
    assert_eq!(a["done"], json!(true));
    let stored: Vec<u8> = server.cmd(&[b"GET", b"blob"]);
    assert_eq!(stored, vec![0, 1, 2, 255]);
    let a = node_ask(&mut cluster, ids[1], json!({"op": "get", "key": "blob"})).await;
    assert_eq!(a["value"]["len"], json!(4));
    let a = node_ask(&mut cluster, ids[1], json!({"op": "delete", "key": "blob"})).await;
    assert_eq!(a["existed"], json!(true));
    let a = node_ask(&mut cluster, ids[0], json!({"op": "get", "key": "blob"})).await;
    assert_eq!(a["value"]["found"], json!(false));

    let stats = node_ask(&mut cluster, ids[0], json!({"op": "stats"})).await["stats"].clone();
    assert!(stats["local_misses"].as_u64().unwrap() >= 14, "{stats}");
    assert_eq!(stats["hub"]["tracking"], json!(true));
    for (id, status) in cluster.disconnect_all().await {
        assert!(status.unwrap().success(), "node worker {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_waits_out_a_redis_outage_and_finishes_when_it_is_back() {
    let mut server = RedisServer::start();
    let src = source(&server, 4 << 20);
    server.stop();
    let hub = hub(&src, {
        let mut c = quiet();
        c.warm_patterns = vec!["w:*".into()];
        c.warm_keys = vec!["w:extra".into()];
        c
    });
    // Redis is down: warm-up is not done, and nothing crashes while it retries.
    assert!(!hub.ready(Duration::from_millis(500)).await);
    assert!(!hub.stats().warm);
    assert!(
        hub.get("w:1").await.is_err(),
        "never loaded, source down: an error"
    );

    server.restart();
    for i in 0..50 {
        let k = format!("w:{i}");
        server.cmd::<()>(&[b"SET", k.as_bytes(), b"warm"]);
    }
    assert!(
        hub.ready(DEADLINE).await,
        "warm-up finishes once redis is back"
    );
    assert_eq!(
        hub.get("w:49").await.unwrap().as_deref(),
        Some(&b"warm"[..])
    );
    assert_eq!(hub.get("w:extra").await.unwrap(), None);
    assert!(hub.stats().tracking);
}
