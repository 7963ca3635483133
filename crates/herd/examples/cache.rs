//! herd's main job on its embedded default: one cache for the whole host.
//!
//! The primary serves a host-shared cache from a built-in source (200 values, a tenth of them
//! 1 MB, generated in memory: no Redis needed) and forks one worker per CPU. Every worker asks for
//! every key at the same moment, as a fleet of freshly deployed processes would; the primary's
//! hub loads each key once, shares the large values as sealed memfds that every worker maps
//! read-only, and each worker then reads them from its local view at memory speed.
//!
//! Run it with `cargo run --release -p herd --example cache` (`HERD_WORKERS=N` for the count).
//! With `HERD_REDIS=redis://127.0.0.1:6379` the same data is written to that Redis first (keys
//! `demo:000`..`demo:199`) and the cache loads it from there: one Redis read per key per host.

use std::collections::BTreeMap;
use std::time::Instant;

use bytes::Bytes;
use herd::cache::{CacheConfig, FileSource, Hub, RedisSource, Source};
use herd::{Cluster, Event, Incoming, Role, Worker};
use serde::{Deserialize, Serialize};

const KEYS: usize = 200;

#[derive(Serialize, Deserialize, Debug)]
struct Report {
    keys: usize,
    bytes: u64,
    first_pass_ms: f64,
    local_hit_ns: f64,
    mapped_bytes: u64,
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match herd::role() {
        Role::Primary => primary().await,
        Role::Worker => worker().await,
    }
}

fn key(i: usize) -> String {
    format!("demo:{i:03}")
}

/// The embedded source: deterministic values, every tenth one 1 MB.
fn embedded() -> FileSource {
    let mut map = BTreeMap::new();
    for i in 0..KEYS {
        let len = if i % 10 == 0 { 1_000_000 } else { 200 };
        let v: Vec<u8> = (0..len).map(|j| b'a' + ((i + j) % 26) as u8).collect();
        map.insert(key(i), Bytes::from(v));
    }
    FileSource::from_map("embedded demo data", map)
}

async fn primary() -> Result<(), Box<dyn std::error::Error>> {
    let hub = match std::env::var("HERD_REDIS") {
        Ok(url) => {
            let redis = RedisSource::open(&url)?;
            let data = embedded();
            for k in data.scan("*").await? {
                if let Some(l) = data.load(&k).await? {
                    redis.store(&k, l.value, None).await?;
                }
            }
            println!("wrote {KEYS} demo keys to {}", redis.describe());
            Hub::new(redis, CacheConfig::default())
        }
        Err(_) => Hub::new(embedded(), CacheConfig::default()),
    };
    let mut builder = Cluster::builder().cache(hub.clone());
    if let Some(n) = std::env::var("HERD_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        builder = builder.workers(n);
    }
    let started = Instant::now();
    let mut cluster = builder.start().await?;
    let total = cluster.workers().await.len();
    println!(
        "primary {}: {total} workers share one cache of {KEYS} keys ({})",
        std::process::id(),
        hub.source().describe()
    );
    let (mut reported, mut exited) = (0, 0);
    while let Some(event) = cluster.next_event().await {
        match event {
            Event::Message { worker, message } => {
                let r: Report = message.decode()?;
                println!(
                    "worker {worker}: {} keys, {:.1} MB in {:.1} ms on first read; then a local \
                     hit takes {:.0} ns; {:.1} MB mapped from shared memory",
                    r.keys,
                    r.bytes as f64 / 1e6,
                    r.first_pass_ms,
                    r.local_hit_ns,
                    r.mapped_bytes as f64 / 1e6
                );
                reported += 1;
                if reported == total {
                    let s = hub.stats();
                    println!(
                        "hub: {} loads from the source for {} workers x {KEYS} keys \
                         ({} lookups coalesced into in-flight loads, {} answered from memory); \
                         {:.1} MB in {} sealed memfds + {:.1} KB inline, one copy for the host",
                        s.loads,
                        total,
                        s.coalesced,
                        s.hits,
                        s.shared_bytes as f64 / 1e6,
                        s.shared_values,
                        s.inline_bytes as f64 / 1e3
                    );
                    cluster.disconnect_all().await;
                }
            }
            Event::Exit { worker, status } => {
                if !status.success() {
                    eprintln!("worker {worker} ended with {status}");
                }
                exited += 1;
                if exited == total {
                    break;
                }
            }
            Event::Error { worker, error } => {
                eprintln!("worker {worker}: {}", herd::error::chain(&error));
            }
            _ => {}
        }
    }
    println!("done in {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

async fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let mut w = Worker::connect().await?;
    let cache = w.cache();
    // Every key at once, each in its own task: the deploy-time stampede.
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for i in 0..KEYS {
        let cache = cache.clone();
        set.spawn(async move { cache.get(&key(i)).await });
    }
    let mut bytes = 0u64;
    while let Some(r) = set.join_next().await {
        bytes += r?
            .map_err(|e| herd::error::chain(&e))?
            .map_or(0, |v| v.len() as u64);
    }
    let first_pass_ms = t.elapsed().as_secs_f64() * 1e3;

    // Then reads as a server makes them: from the local view.
    let rounds = 200;
    let t = Instant::now();
    for _ in 0..rounds {
        for i in 0..KEYS {
            let v = cache
                .get_local(&key(i))
                .ok_or("a key left the local view")?;
            std::hint::black_box(v);
        }
    }
    let local_hit_ns = t.elapsed().as_nanos() as f64 / (rounds * KEYS) as f64;
    let stats = cache.stats().await?;
    w.send(&Report {
        keys: KEYS,
        bytes,
        first_pass_ms,
        local_hit_ns,
        mapped_bytes: stats.mapped_bytes,
    })
    .await?;
    // Wait for the primary to disconnect us.
    while let Some(i) = w.recv().await? {
        drop::<Incoming>(i);
    }
    Ok(())
}
