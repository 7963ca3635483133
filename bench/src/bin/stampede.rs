//! The deploy stampede, replayed against a real `redis-server` that this benchmark starts with a
//! `maxmemory`: H simulated hosts with W workers each load K values of V MB at the same moment,
//! first the naive way (every worker reads Redis itself, as `cluster` apps do), then through
//! herd (each host's primary reads each key once and shares it). Then memory: the total PSS of
//! 8 workers holding a 1 GB cache, one copy per process beside herd's one copy per host. Then
//! latency: a local hit, and a miss answered by the primary from memory.
//!
//! `cargo run --release -p herd-bench --bin stampede` writes its section of
//! docs/benchmarks.md (`--quick` for a small smoke run that writes nothing; `--help`).
//!
//! The simulated hosts are H clusters driven from this one process, each with its own hub and
//! its own Redis connection, which is what Redis sees from H real hosts.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use bytes::Bytes;
use herd::cache::{CacheConfig, Hub, Progress, RedisConfig, RedisSource};
use herd::{Cluster, Event, Incoming, Role, Worker};
use herd_bench::sections::{self, thousands};
use herd_test_support::redis_server::{info_field, RedisServer};
use serde::{Deserialize, Serialize};

const MB: usize = 1 << 20;
const DEADLINE: Duration = Duration::from_secs(300);

#[derive(Clone, Debug)]
struct Params {
    hosts: usize,
    workers: usize,
    keys: usize,
    value_mb: usize,
    filler_keys: usize,
    filler_kb: usize,
    maxmemory_mb: usize,
    mem_workers: usize,
    mem_mb: usize,
    out: Option<PathBuf>,
    /// Run only this part (`stampede`, `memory`, `latency`); writes nothing.
    only: Option<String>,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            hosts: 2,
            workers: 16,
            keys: 10,
            value_mb: 20,
            filler_keys: 4000,
            filler_kb: 10,
            maxmemory_mb: 600,
            mem_workers: 8,
            mem_mb: 1024,
            out: Some(PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../docs/benchmarks.md"
            ))),
            only: None,
        }
    }
}

/// What the primary tells a worker.
#[derive(Serialize, Deserialize, Debug)]
enum Order {
    /// Load these keys (the stampede) and report; keep them if `hold`.
    Load { keys: Vec<String>, hold: bool },
    /// Time `gets` of distinct keys the primary holds (misses here) and `hits` local hits.
    Latency { keys: Vec<String>, hits: usize },
    /// Drop what is held.
    Release,
}

/// What a worker answers.
#[derive(Serialize, Deserialize, Debug)]
enum Report {
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

fn main() -> Result<()> {
    match herd::role() {
        // A worker is one task at a time: a current-thread runtime, as in the IPC benchmark.
        Role::Worker => tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?
            .block_on(worker()),
        Role::Primary => {
            let params = parse_args()?;
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?
                .block_on(primary(params))
        }
    }
}

fn parse_args() -> Result<Params> {
    let mut p = Params::default();
    let mut args = std::env::args().skip(1);
    let num = |a: Option<String>, what: &str| -> Result<usize> {
        a.with_context(|| format!("{what} needs a number"))?
            .parse()
            .with_context(|| format!("{what} needs a number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => {
                p = Params {
                    hosts: 1,
                    workers: 16,
                    keys: 4,
                    value_mb: 8,
                    filler_keys: 2000,
                    filler_kb: 10,
                    maxmemory_mb: 200,
                    mem_workers: 4,
                    mem_mb: 128,
                    out: None,
                    only: None,
                };
            }
            "--hosts" => p.hosts = num(args.next(), "--hosts")?,
            "--workers" => p.workers = num(args.next(), "--workers")?,
            "--keys" => p.keys = num(args.next(), "--keys")?,
            "--value-mb" => p.value_mb = num(args.next(), "--value-mb")?,
            "--maxmemory-mb" => p.maxmemory_mb = num(args.next(), "--maxmemory-mb")?,
            "--mem-mb" => p.mem_mb = num(args.next(), "--mem-mb")?,
            "--no-out" => p.out = None,
            "--only" => {
                p.only = Some(args.next().context("--only needs a part")?);
                p.out = None;
            }
            "--out" => p.out = Some(args.next().context("--out needs a path")?.into()),
            "-h" | "--help" => {
                println!(
                    "usage: stampede [--quick] [--hosts H] [--workers W] [--keys K] \
                     [--value-mb V] [--maxmemory-mb M] [--mem-mb N] [--only stampede|memory|latency] \
                     [--out FILE | --no-out]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    ensure!(
        p.hosts > 0 && p.workers > 0 && p.keys > 0,
        "counts must be positive"
    );
    Ok(p)
}

// ---------------------------------------------------------------------------------------------
// workers

async fn worker() -> Result<()> {
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

// ---------------------------------------------------------------------------------------------
// primary

/// A simulated host: a cluster (and its hub, for herd).
struct Host {
    cluster: Cluster,
    hub: Option<(Hub, Arc<RedisSource>)>,
    workers: usize,
}

async fn start_host(mode: &str, url: &str, workers: usize, cache: bool) -> Result<Host> {
    let mut b = Cluster::builder()
        .workers(workers)
        .env("STAMPEDE_MODE", mode)
        .env("STAMPEDE_REDIS", url)
        .request_timeout(DEADLINE);
    let hub = if cache {
        let config = RedisConfig {
            command_timeout: Duration::from_secs(60),
            ..RedisConfig::default()
        };
        let source = Arc::new(RedisSource::with_config(url, config)?);
        let hub = Hub::from_arc(
            source.clone(),
            CacheConfig {
                progress: Progress::Off,
                load_timeout: DEADLINE,
                ..CacheConfig::default()
            },
        );
        hub.start();
        b = b.cache(hub.clone());
        Some((hub, source))
    } else {
        None
    };
    let mut cluster = b.start().await?;
    let mut online = 0;
    while online < workers {
        match next(&mut cluster).await? {
            Event::Online { .. } => online += 1,
            Event::Error { worker, error } => {
                bail!("worker {worker}: {}", herd::error::chain(&error))
            }
            Event::Exit { worker, status } => bail!("worker {worker} exited: {status}"),
            _ => {}
        }
    }
    Ok(Host {
        cluster,
        hub,
        workers,
    })
}

async fn next(cluster: &mut Cluster) -> Result<Event> {
    tokio::time::timeout(DEADLINE, cluster.next_event())
        .await
        .context("no event within the deadline")?
        .context("the cluster stopped")
}

/// Sends `order` to every worker of every host and collects one report from each.
async fn order_all(hosts: &mut [Host], order: &Order) -> Result<Vec<Report>> {
    for h in hosts.iter() {
        let n = h.cluster.broadcast(order).await;
        ensure!(
            n == h.workers,
            "{n} of {} workers took the order",
            h.workers
        );
    }
    let mut reports = Vec::new();
    // Each host's events are read concurrently, so no host's channel backs up.
    let mut tasks = Vec::new();
    for h in hosts.iter_mut() {
        let want = h.workers;
        let cluster = &mut h.cluster;
        tasks.push(async move {
            let mut got = Vec::new();
            while got.len() < want {
                match next(cluster).await? {
                    Event::Message { worker, message } => match message.decode::<Report>()? {
                        Report::Failed(e) => bail!("worker {worker}: {e}"),
                        r => got.push(r),
                    },
                    Event::Error { worker, error } => {
                        bail!("worker {worker}: {}", herd::error::chain(&error))
                    }
                    Event::Exit { worker, status } => bail!("worker {worker} exited: {status}"),
                    _ => {}
                }
            }
            Ok::<_, anyhow::Error>(got)
        });
    }
    for r in futures_join_all(tasks).await {
        reports.extend(r?);
    }
    Ok(reports)
}

/// Runs futures concurrently on this task (no spawning: they borrow the hosts).
async fn futures_join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (i, f) in futs.iter_mut().enumerate() {
            if out[i].is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => out[i] = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter()
        .map(|o| o.expect("every future finished"))
        .collect()
}

async fn stop_hosts(hosts: Vec<Host>) {
    for h in hosts {
        h.cluster.disconnect_all().await;
    }
}

/// Peaks of Redis's memory while a run goes on, sampled from `INFO memory` on its own
/// connection every few milliseconds.
struct Sampler {
    stop: Arc<AtomicBool>,
    used: Arc<AtomicU64>,
    clients: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<()>,
}

impl Sampler {
    fn start(server: &RedisServer) -> Result<Sampler> {
        let mut conn = server.connection()?;
        let stop = Arc::new(AtomicBool::new(false));
        let used = Arc::new(AtomicU64::new(0));
        let clients = Arc::new(AtomicU64::new(0));
        let (s, u, c) = (stop.clone(), used.clone(), clients.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Ok(info) = redis::cmd("INFO").arg("memory").query::<String>(&mut conn) {
                    u.fetch_max(
                        info_field(&info, "used_memory").unwrap_or(0),
                        Ordering::Relaxed,
                    );
                    c.fetch_max(
                        info_field(&info, "mem_clients_normal").unwrap_or(0),
                        Ordering::Relaxed,
                    );
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        Ok(Sampler {
            stop,
            used,
            clients,
            thread,
        })
    }

    fn finish(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
        (
            self.used.load(Ordering::Relaxed),
            self.clients.load(Ordering::Relaxed),
        )
    }
}

#[derive(Debug, Default)]
struct Run {
    value_reads: u64,
    read_commands: u64,
    baseline_used: u64,
    peak_used: u64,
    peak_clients: u64,
    evicted: u64,
    big_keys_left: u64,
    ms_all: f64,
    bytes_per_worker: u64,
    /// Values workers found missing (evicted while they were being read).
    missing: u64,
}

fn big_key(i: usize) -> String {
    format!("cache:big:{i}")
}

/// A Redis like the team's: big cache values plus many small live keys, under a maxmemory.
fn seeded_server(p: &Params) -> Result<RedisServer> {
    let maxmemory = format!("{}mb", p.maxmemory_mb);
    let server = RedisServer::start_with(&[
        "--maxmemory",
        &maxmemory,
        "--maxmemory-policy",
        "allkeys-lru",
    ]);
    let mut c = server.connection()?;
    for i in 0..p.keys {
        let v: Vec<u8> = (0..p.value_mb * MB).map(|j| (i + j) as u8).collect();
        redis::cmd("SET")
            .arg(big_key(i))
            .arg(v)
            .query::<()>(&mut c)?;
    }
    let filler = vec![b'f'; p.filler_kb << 10];
    let ids: Vec<usize> = (0..p.filler_keys).collect();
    for batch in ids.chunks(500) {
        let mut pipe = redis::pipe();
        for i in batch {
            pipe.cmd("SET")
                .arg(format!("live:{i}"))
                .arg(&filler[..])
                .ignore();
        }
        pipe.query::<()>(&mut c)?;
    }
    redis::cmd("CONFIG").arg("RESETSTAT").query::<()>(&mut c)?;
    Ok(server)
}

async fn stampede(p: &Params, mode: &str) -> Result<Run> {
    let server = seeded_server(p)?;
    let url = server.url();
    let mut hosts = Vec::new();
    for _ in 0..p.hosts {
        hosts.push(start_host(mode, &url, p.workers, mode == "herd").await?);
    }
    let baseline_used = server.info_u64("used_memory");
    let keys: Vec<String> = (0..p.keys).map(big_key).collect();
    let sampler = Sampler::start(&server)?;
    let t = Instant::now();
    let reports = order_all(&mut hosts, &Order::Load { keys, hold: false }).await?;
    let ms_all = t.elapsed().as_secs_f64() * 1e3;
    let (peak_used, peak_clients) = sampler.finish();
    let bytes_per_worker = reports
        .iter()
        .map(|r| match r {
            Report::Loaded { bytes, .. } => *bytes,
            _ => 0,
        })
        .min()
        .unwrap_or(0);
    let missing = reports
        .iter()
        .map(|r| match r {
            Report::Loaded { missing, .. } => *missing,
            _ => 0,
        })
        .sum();
    let value_reads = match mode {
        "herd" => hosts
            .iter()
            .filter_map(|h| h.hub.as_ref())
            .map(|(_, s)| s.reads())
            .sum(),
        _ => server.command_calls("get"),
    };
    let big_keys_left = (0..p.keys)
        .filter(|i| server.cmd::<i64>(&[b"EXISTS", big_key(*i).as_bytes()]) == 1)
        .count() as u64;
    let run = Run {
        value_reads,
        read_commands: server.command_calls("get") + server.command_calls("getrange"),
        baseline_used,
        peak_used,
        peak_clients,
        evicted: server.info_u64("evicted_keys"),
        big_keys_left,
        ms_all,
        bytes_per_worker,
        missing,
    };
    stop_hosts(hosts).await;
    Ok(run)
}

/// Proportional set size of a process, from /proc/PID/smaps_rollup (bytes).
fn pss(pid: u32) -> Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .with_context(|| format!("reading smaps_rollup of {pid}"))?;
    let kb = text
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no Pss line")?;
    Ok(kb * 1024)
}

#[derive(Debug, Default)]
struct Mem {
    data: u64,
    workers_pss: u64,
    primary_pss_delta: u64,
}

/// `n` workers each holding every value of a `mb` MB cache: their PSS, and the primary's growth.
async fn memory(p: &Params, mode: &str) -> Result<Mem> {
    let server = RedisServer::start();
    let value = 16 * MB;
    let count = (p.mem_mb * MB).div_ceil(value);
    let keys: Vec<String> = (0..count).map(|i| format!("mem:{i}")).collect();
    {
        let mut c = server.connection()?;
        for (i, k) in keys.iter().enumerate() {
            let v: Vec<u8> = (0..value).map(|j| (i * 31 + j) as u8).collect();
            redis::cmd("SET").arg(k).arg(v).query::<()>(&mut c)?;
        }
    }
    let before = pss(std::process::id())?;
    let mut hosts = vec![start_host(mode, &server.url(), p.mem_workers, mode == "herd").await?];
    let reports = order_all(&mut hosts, &Order::Load { keys, hold: true }).await?;
    let mut workers_pss = 0;
    for r in &reports {
        if let Report::Loaded {
            pid,
            bytes,
            missing,
            ..
        } = r
        {
            ensure!(
                *bytes == (count * value) as u64 && *missing == 0,
                "a worker holds {bytes} bytes ({missing} values missing)"
            );
            workers_pss += pss(*pid)?;
        }
    }
    let after = pss(std::process::id())?;
    order_all(&mut hosts, &Order::Release).await?;
    stop_hosts(hosts).await;
    Ok(Mem {
        data: (count * value) as u64,
        workers_pss,
        primary_pss_delta: after.saturating_sub(before),
    })
}

/// Miss latency (the primary answers from memory) and local-hit latency, through herd.
async fn latencies() -> Result<(Vec<f64>, f64)> {
    let server = RedisServer::start();
    {
        let mut c = server.connection()?;
        let mut pipe = redis::pipe();
        for i in 0..2000 {
            pipe.cmd("SET")
                .arg(format!("small:{i}"))
                .arg(vec![b's'; 100])
                .ignore();
        }
        pipe.query::<()>(&mut c)?;
    }
    let mut host = start_host("herd", &server.url(), 1, true).await?;
    let (hub, _) = host.hub.as_ref().context("a hub")?;
    // The primary holds every key before the worker asks (so each miss is IPC, not Redis).
    let keys: Vec<String> = (0..2000).map(|i| format!("small:{i}")).collect();
    for k in &keys {
        hub.get(k).await?;
    }
    let reports = order_all(
        std::slice::from_mut(&mut host),
        &Order::Latency {
            keys,
            hits: 2_000_000,
        },
    )
    .await?;
    stop_hosts(vec![host]).await;
    match reports.into_iter().next() {
        Some(Report::Latency {
            mut miss_us,
            hit_ns,
        }) => {
            miss_us.sort_by(f64::total_cmp);
            Ok((miss_us, hit_ns))
        }
        other => bail!("unexpected report {other:?}"),
    }
}

fn mb(b: u64) -> String {
    format!("{:.0} MB", b as f64 / MB as f64)
}

async fn primary(p: Params) -> Result<()> {
    eprintln!("stampede: {p:?}");
    match p.only.as_deref() {
        None => {}
        Some("stampede") => {
            eprintln!("{:?}", stampede(&p, "naive").await?);
            eprintln!("{:?}", stampede(&p, "herd").await?);
            return Ok(());
        }
        Some("memory") => {
            eprintln!("{:?}", memory(&p, "naive").await?);
            eprintln!("{:?}", memory(&p, "herd").await?);
            return Ok(());
        }
        Some("latency") => {
            let (miss, hit_ns) = latencies().await?;
            eprintln!(
                "miss median {:.1} us, hit {hit_ns:.0} ns",
                miss[miss.len() / 2]
            );
            return Ok(());
        }
        Some(other) => bail!("unknown part {other:?}"),
    }
    // Memory first, while this process is fresh: the primary's growth is then its own.
    eprintln!("memory, herd...");
    let mem_herd = memory(&p, "herd").await?;
    eprintln!("{mem_herd:?}\nmemory, one copy per process...");
    let mem_naive = memory(&p, "naive").await?;
    eprintln!("{mem_naive:?}\nnaive stampede...");
    let naive = stampede(&p, "naive").await?;
    eprintln!("{naive:?}\nherd stampede...");
    let herd = stampede(&p, "herd").await?;
    eprintln!("{herd:?}\nlatency...");
    let (miss_us, hit_ns) = latencies().await?;
    let pct = |q: f64| miss_us[((miss_us.len() - 1) as f64 * q) as usize];

    let mut t = String::new();
    t.push_str("| | naive (every worker reads Redis) | herd (one read per key per host) |\n");
    t.push_str("|---|---:|---:|\n");
    let row = |t: &mut String, name: &str, a: String, b: String| {
        t.push_str(&format!("| {name} | {a} | {b} |\n"));
    };
    row(
        &mut t,
        "values read from Redis",
        thousands(naive.value_reads as f64),
        thousands(herd.value_reads as f64),
    );
    row(
        &mut t,
        "read commands (GET / GETRANGE chunks)",
        thousands(naive.read_commands as f64),
        thousands(herd.read_commands as f64),
    );
    row(
        &mut t,
        "Redis `used_memory` before → peak",
        format!("{} → {}", mb(naive.baseline_used), mb(naive.peak_used)),
        format!("{} → {}", mb(herd.baseline_used), mb(herd.peak_used)),
    );
    row(
        &mut t,
        "peak `mem_clients_normal`",
        mb(naive.peak_clients),
        mb(herd.peak_clients),
    );
    row(
        &mut t,
        "`evicted_keys`",
        thousands(naive.evicted as f64),
        thousands(herd.evicted as f64),
    );
    row(
        &mut t,
        "cache values still in Redis afterwards",
        format!("{} of {}", naive.big_keys_left, p.keys),
        format!("{} of {}", herd.big_keys_left, p.keys),
    );
    row(
        &mut t,
        "values a worker found missing (evicted under it)",
        thousands(naive.missing as f64),
        thousands(herd.missing as f64),
    );
    row(
        &mut t,
        "time until every worker has the data",
        format!("{:.0} ms", naive.ms_all),
        format!("{:.0} ms", herd.ms_all),
    );

    let total_herd = mem_herd.workers_pss + mem_herd.primary_pss_delta;
    let mut m = String::new();
    m.push_str("| | one copy per process | herd |\n|---|---:|---:|\n");
    m.push_str(&format!(
        "| PSS of the {} workers | {} | {} |\n",
        p.mem_workers,
        mb(mem_naive.workers_pss),
        mb(mem_herd.workers_pss)
    ));
    m.push_str(&format!(
        "| primary's growth (PSS) | {} | {} |\n",
        mb(mem_naive.primary_pss_delta),
        mb(mem_herd.primary_pss_delta)
    ));
    m.push_str(&format!(
        "| total ÷ data ({}) | {:.2}x | {:.2}x |\n",
        mb(mem_herd.data),
        (mem_naive.workers_pss + mem_naive.primary_pss_delta) as f64 / mem_naive.data as f64,
        total_herd as f64 / mem_herd.data as f64
    ));

    let met = |ok: bool| if ok { "met" } else { "**not met**" };
    let reads_ok = herd.value_reads == (p.keys * p.hosts) as u64;
    let evict_ok = herd.evicted == 0 && naive.evicted > 0;
    let pss_ratio = total_herd as f64 / mem_herd.data as f64;
    let mut r = String::new();
    r.push_str("| target | measured | |\n|---|---:|---|\n");
    r.push_str(&format!(
        "| exactly one Redis read per key per host ({} keys x {} hosts) | {} reads | {} |\n",
        p.keys,
        p.hosts,
        herd.value_reads,
        met(reads_ok)
    ));
    r.push_str(&format!(
        "| no evictions where the naive way evicts | naive {}, herd {} | {} |\n",
        thousands(naive.evicted as f64),
        thousands(herd.evicted as f64),
        met(evict_ok)
    ));
    r.push_str(&format!(
        "| total PSS ≤ 1.2x the data | {pss_ratio:.2}x | {} |\n",
        met(pss_ratio <= 1.2)
    ));
    r.push_str(&format!(
        "| local hit < 1 µs | {hit_ns:.0} ns | {} |\n",
        met(hit_ns < 1000.0)
    ));
    r.push_str(&format!(
        "| miss served by the primary < 100 µs (median; p99) | {:.1} µs; {:.1} µs | {} |\n",
        pct(0.5),
        pct(0.99),
        met(pct(0.5) < 100.0)
    ));

    let redis_version = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let doc = format!(
        "## Cache: the deploy stampede against a real Redis\n\n\
         Made by `cargo run --release -p herd-bench --bin stampede` (bench/src/bin/stampede.rs), \
         on {cpus} CPUs with {redis_version}.\n\n\
         Redis is started by the benchmark with `--maxmemory {maxmem}mb --maxmemory-policy \
         allkeys-lru` and seeded with {keys} cache values of {v} MB plus {filler} live keys of \
         {fkb} KB. Then {hosts} simulated hosts x {workers} workers all load every cache value at \
         the same moment. **naive**: each worker opens its own connection and `GET`s every value \
         (pipelined, as a Node app's `Promise.all` does). **herd**: each host is a cluster whose \
         primary's hub loads from Redis (one RESP3 connection with client tracking; a pipelined \
         64 KB head per value, then 4 MB `GETRANGE` chunks, at most 2 in flight) and shares each \
         value with its workers as a sealed memfd. \
         Peaks are sampled from `INFO memory` every 2 ms on a separate connection. Each host is \
         a cluster driven from the one benchmark process, with its own hub and connection.\n\n\
         {t}\n\
         Memory: {mw} workers each hold every value of a {data} cache loaded from Redis \
         (16 MB values); PSS from /proc/PID/smaps_rollup while they hold it. One copy per process \
         is each worker `GET`ting into its own heap; herd is the workers' mappings of the \
         primary's sealed memfds (PSS splits shared pages among the processes that have them \
         mapped; the primary's growth is its PSS after minus before, measured first in this \
         process, and includes what its allocator kept from loading).\n\n\
         {m}\n\
         Latency: one worker asks for 2,000 small values the primary already holds (each a miss \
         in the worker, answered by the primary over the channel), then reads one of them \
         2,000,000 times from its local view.\n\n\
         {r}",
        maxmem = p.maxmemory_mb,
        keys = p.keys,
        v = p.value_mb,
        filler = thousands(p.filler_keys as f64),
        fkb = p.filler_kb,
        hosts = p.hosts,
        workers = p.workers,
        mw = p.mem_workers,
        data = mb(mem_herd.data),
    );
    println!("{doc}");
    let full = (p.keys * p.value_mb * MB) as u64;
    ensure!(
        herd.bytes_per_worker == full && herd.missing == 0,
        "through herd a worker loaded {} of {full} bytes",
        herd.bytes_per_worker
    );
    if let Some(out) = &p.out {
        sections::write_section(out, "stampede", &doc)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
