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
//!
//! `worker` is what each simulated host's workers run; `runs` drives the hosts and measures.

mod runs;
mod worker;

use runs::{latencies, memory, stampede};
use worker::worker;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use herd::Role;
use herd_bench::sections::{self, thousands};

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
