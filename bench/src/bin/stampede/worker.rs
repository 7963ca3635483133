//! The workers' side of the stampede: what the primary orders, what a worker reports, and how it
//! loads values (naively from Redis, or through herd's cache) and times cache reads.

use std::time::Instant;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use herd::{Incoming, Worker};
use serde::{Deserialize, Serialize};

use super::DEADLINE;

/// What the primary tells a worker.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Order {
    /// Load these keys (the stampede) and report; keep them if `hold`.
    Load { keys: Vec<String>, hold: bool },
    /// Time `gets` of distinct keys the primary holds (misses here) and `hits` local hits.
    Latency { keys: Vec<String>, hits: usize },
    /// Drop what is held.
    Release,
}

/// What a worker answers.
#[derive(Serialize, Deserialize, Debug)]
pub(crate) enum Report {
    Loaded {
        bytes: u64,
        missing: u64,
        ms: f64,
        pid: u32,
    },
    Latency {
        miss_us: Vec<f64>,
        hit_ns: f64,
    },
    Released,
    Failed(String),
}

pub(crate) async fn worker() -> Result<()> {
    let mut w = Worker::connect().await?;
    let naive = std::env::var("STAMPEDE_MODE").as_deref() == Ok("naive");
    let url = std::env::var("STAMPEDE_REDIS").unwrap_or_default();
    let mut held: Vec<Bytes> = Vec::new();
    while let Some(incoming) = w.recv().await? {
        let Incoming::Message(m) = incoming else {
            continue;
        };
        let report = match m.decode::<Order>()? {
            Order::Load { keys, hold } => {
                let t = Instant::now();
                let loaded = if naive {
                    naive_load(&url, &keys).await
                } else {
                    herd_load(&w, &keys).await
                };
                match loaded {
                    Ok(values) => {
                        // Use the data (read every cache line), as a server would: it is then
                        // resident in this process, however it got here.
                        let touched: u64 = values
                            .iter()
                            .flatten()
                            .map(|v| v.iter().step_by(64).map(|&b| u64::from(b)).sum::<u64>())
                            .sum();
                        std::hint::black_box(touched);
                        let ms = t.elapsed().as_secs_f64() * 1e3;
                        let bytes = values.iter().flatten().map(|v| v.len() as u64).sum();
                        let missing = values.iter().filter(|v| v.is_none()).count() as u64;
                        if hold {
                            held = values.into_iter().flatten().collect();
                        }
                        Report::Loaded {
                            bytes,
                            missing,
                            ms,
                            pid: std::process::id(),
                        }
                    }
                    Err(e) => Report::Failed(format!("{e:#}")),
                }
            }
            Order::Latency { keys, hits } => match latency(&w, &keys, hits).await {
                Ok(r) => r,
                Err(e) => Report::Failed(format!("{e:#}")),
            },
            Order::Release => {
                held = Vec::new();
                Report::Released
            }
        };
        w.send(&report).await?;
    }
    drop(held);
    Ok(())
}

/// What a `cluster` app does at start: its own connection, every key at once. A value missing
/// (evicted under it) is `None`: the app would go to its database for it.
async fn naive_load(url: &str, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
    let client = redis::Client::open(url)?;
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(DEADLINE))
        .set_response_timeout(Some(DEADLINE));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let mut pipe = redis::pipe();
    for k in keys {
        pipe.cmd("GET").arg(k);
    }
    let values: Vec<Option<Vec<u8>>> = pipe.query_async(&mut conn).await?;
    Ok(values.into_iter().map(|v| v.map(Bytes::from)).collect())
}

async fn herd_load(w: &Worker, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
    let cache = w.cache();
    let mut set = tokio::task::JoinSet::new();
    for (i, k) in keys.iter().enumerate() {
        let (cache, k) = (cache.clone(), k.clone());
        set.spawn(async move { (i, k.clone(), cache.get(&k).await) });
    }
    let mut out = vec![None; keys.len()];
    while let Some(joined) = set.join_next().await {
        let (i, _, r) = joined?;
        out[i] = r.map_err(|e| anyhow::anyhow!(herd::error::chain(&e)))?;
    }
    Ok(out)
}

async fn latency(w: &Worker, keys: &[String], hits: usize) -> Result<Report> {
    let cache = w.cache();
    let mut miss_us = Vec::with_capacity(keys.len());
    for k in keys {
        let t = Instant::now();
        let v = cache
            .get(k)
            .await
            .map_err(|e| anyhow::anyhow!(herd::error::chain(&e)))?;
        miss_us.push(t.elapsed().as_secs_f64() * 1e6);
        ensure!(v.is_some(), "{k} is missing");
    }
    let key = keys.first().context("no keys")?;
    ensure!(cache.is_local(key), "{key} was not kept locally");
    let t = Instant::now();
    let mut n = 0usize;
    for _ in 0..hits {
        n += cache.get_local(key).flatten().map_or(0, |v| v.len());
    }
    let hit_ns = t.elapsed().as_secs_f64() * 1e9 / hits as f64;
    ensure!(n > 0, "no local hits");
    Ok(Report::Latency { miss_us, hit_ns })
}
