//! The deploy stampede, replayed against a real `redis-server` that this benchmark starts with a
//! `maxmemory`: H simulated hosts with W workers each load K values of V MB at the same moment,
//! first the naive way (every worker reads Redis itself, as `cluster` apps do), then through
//! herd (each host's primary reads each key once and shares it). Then memory: the total PSS of
//! 8 workers holding a 1 GB cache, one copy per process beside herd's one copy per host. Then
//! latency: a local hit, and a miss answered by the primary from memory.
//!
//! Every experiment runs `--rounds N` rounds (default 5), each on a fresh Redis, naive and herd
//! alternating within a round (naive first in odd rounds, herd first in even ones); `report`
//! writes each figure as the median over the rounds with its min-max (`stats`).
//!
//! `cargo run --release -p herd-bench --bin stampede` writes its section of
//! docs/benchmarks.md (`--quick` for a small smoke run that writes nothing; `--help`).
//!
//! The simulated hosts are H clusters driven from this one process, each with its own hub and
//! its own Redis connection, which is what Redis sees from H real hosts.
//!
//! `worker` is what each simulated host's workers run; `runs` drives the hosts and measures.

mod report;
mod runs;
mod stats;
mod worker;

use report::Round;
use runs::{latencies, memory, stampede};
use worker::worker;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use herd::Role;
use herd_bench::sections;

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
    /// Rounds of every experiment, naive and herd alternating within each.
    rounds: usize,
    /// A sentence added to the method paragraph of the doc.
    note: Option<String>,
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
            rounds: 5,
            note: None,
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
                    rounds: 1,
                    note: None,
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
            "--rounds" => p.rounds = num(args.next(), "--rounds")?,
            "--note" => p.note = Some(args.next().context("--note needs a sentence")?),
            "--no-out" => p.out = None,
            "--only" => {
                p.only = Some(args.next().context("--only needs a part")?);
                p.out = None;
            }
            "--out" => p.out = Some(args.next().context("--out needs a path")?.into()),
            "-h" | "--help" => {
                println!(
                    "usage: stampede [--quick] [--hosts H] [--workers W] [--keys K] \
                     [--value-mb V] [--maxmemory-mb M] [--mem-mb N] [--rounds N] [--note TEXT] \
                     [--only stampede|memory|latency] [--out FILE | --no-out]\n\
                     Each experiment runs N rounds (default 5, --quick 1), naive and herd \
                     alternating; cells are the median (min-max) over rounds."
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    ensure!(
        p.hosts > 0 && p.workers > 0 && p.keys > 0 && p.rounds > 0,
        "counts must be positive"
    );
    Ok(p)
}

/// Runs `naive` and `herd` one after the other, naive first when `naive_first`.
async fn both<T, F, Fut>(naive_first: bool, f: F) -> Result<(T, T)>
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = Result<T>>,
{
    if naive_first {
        let naive = f("naive").await?;
        let herd = f("herd").await?;
        Ok((naive, herd))
    } else {
        let herd = f("herd").await?;
        let naive = f("naive").await?;
        Ok((naive, herd))
    }
}

/// The percentile `q` of sorted `v`.
fn pct(v: &[f64], q: f64) -> f64 {
    v[((v.len() - 1) as f64 * q) as usize]
}

/// One round of everything; naive first in odd rounds (counted from 1), herd first in even ones.
async fn round(p: &Params, number: usize) -> Result<Round> {
    let naive_first = number % 2 == 1;
    let t = Instant::now();
    eprintln!(
        "round {number}: memory ({} first)...",
        if naive_first { "naive" } else { "herd" }
    );
    let (mem_naive, mem_herd) = both(naive_first, |mode| memory(p, mode)).await?;
    eprintln!("{mem_naive:?}\n{mem_herd:?}\nround {number}: stampede...");
    let (naive, herd) = both(naive_first, |mode| stampede(p, mode)).await?;
    eprintln!("{naive:?}\n{herd:?}\nround {number}: latency...");
    let (miss_us, hit_ns) = latencies().await?;
    let full = (p.keys * p.value_mb * MB) as u64;
    ensure!(
        herd.bytes_per_worker == full && herd.missing == 0,
        "round {number}: through herd a worker loaded {} of {full} bytes",
        herd.bytes_per_worker
    );
    let r = Round {
        naive_first,
        naive,
        herd,
        mem_naive,
        mem_herd,
        miss_med_us: pct(&miss_us, 0.5),
        miss_p99_us: pct(&miss_us, 0.99),
        hit_ns,
    };
    eprintln!(
        "round {number}: miss median {:.1} us, p99 {:.1} us, hit {:.0} ns; took {:.0} s",
        r.miss_med_us,
        r.miss_p99_us,
        r.hit_ns,
        t.elapsed().as_secs_f64()
    );
    Ok(r)
}

async fn primary(p: Params) -> Result<()> {
    eprintln!("stampede: {p:?}");
    if let Some(part) = p.only.as_deref() {
        for number in 1..=p.rounds {
            let naive_first = number % 2 == 1;
            match part {
                "stampede" => {
                    let (naive, herd) = both(naive_first, |mode| stampede(&p, mode)).await?;
                    eprintln!("round {number}\n{naive:?}\n{herd:?}");
                }
                "memory" => {
                    let (naive, herd) = both(naive_first, |mode| memory(&p, mode)).await?;
                    eprintln!("round {number}\n{naive:?}\n{herd:?}");
                }
                "latency" => {
                    let (miss, hit_ns) = latencies().await?;
                    eprintln!(
                        "round {number}: miss median {:.1} us, p99 {:.1} us, hit {hit_ns:.0} ns",
                        pct(&miss, 0.5),
                        pct(&miss, 0.99)
                    );
                }
                other => bail!("unknown part {other:?}"),
            }
        }
        return Ok(());
    }
    let t = Instant::now();
    let mut rounds = Vec::new();
    for number in 1..=p.rounds {
        rounds.push(round(&p, number).await?);
    }
    let doc = report::document(&p, &rounds, t.elapsed());
    println!("{doc}");
    if let Some(out) = &p.out {
        sections::write_section(out, "stampede", &doc)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}
