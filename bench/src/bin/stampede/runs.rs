//! The primary's side of the stampede: simulated hosts (one cluster each) driven at once, Redis's
//! memory sampled while they load, and the three measurements (stampede, memory, latency).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use herd::cache::{CacheConfig, Hub, Progress, RedisConfig, RedisSource};
use herd::{Cluster, Event};
use herd_test_support::redis_server::{info_field, RedisServer};

use super::{Params, DEADLINE, MB};
use crate::worker::{Order, Report};

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
        let mut config = RedisConfig::default();
        config.command_timeout = Duration::from_secs(60);
        let source = Arc::new(RedisSource::with_config(url, config)?);
        let mut hub_config = CacheConfig::default();
        hub_config.progress = Progress::Off;
        hub_config.load_timeout = DEADLINE;
        let hub = Hub::from_arc(source.clone(), hub_config);
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
    // Concurrently on this task (no spawning: they borrow the hosts).
    for r in futures_util::future::join_all(tasks).await {
        reports.extend(r?);
    }
    Ok(reports)
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
pub(crate) struct Run {
    pub(crate) value_reads: u64,
    pub(crate) read_commands: u64,
    pub(crate) baseline_used: u64,
    pub(crate) peak_used: u64,
    pub(crate) peak_clients: u64,
    pub(crate) evicted: u64,
    pub(crate) big_keys_left: u64,
    pub(crate) ms_all: f64,
    pub(crate) bytes_per_worker: u64,
    /// Values workers found missing (evicted while they were being read).
    pub(crate) missing: u64,
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

pub(crate) async fn stampede(p: &Params, mode: &str) -> Result<Run> {
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
pub(crate) struct Mem {
    pub(crate) data: u64,
    pub(crate) workers_pss: u64,
    pub(crate) primary_pss_delta: u64,
}

/// `n` workers each holding every value of a `mb` MB cache: their PSS, and the primary's growth.
pub(crate) async fn memory(p: &Params, mode: &str) -> Result<Mem> {
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
pub(crate) async fn latencies() -> Result<(Vec<f64>, f64)> {
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
