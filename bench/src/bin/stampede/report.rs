//! The stampede's section of docs/benchmarks.md, written from every round: each cell the median
//! over the rounds with the min-max beside it, each target judged per round and on the median.

use std::time::Duration;

use crate::runs::{Mem, Run};
use crate::stats::{count, fixed, median, megabytes, verdict};
use crate::{Params, MB};

/// One round: both ways of every experiment, and herd's latencies.
#[derive(Debug)]
pub(crate) struct Round {
    /// Whether naive went first in this round.
    pub(crate) naive_first: bool,
    pub(crate) naive: Run,
    pub(crate) herd: Run,
    pub(crate) mem_naive: Mem,
    pub(crate) mem_herd: Mem,
    /// The median and p99 of this round's misses served by the primary (µs).
    pub(crate) miss_med_us: f64,
    pub(crate) miss_p99_us: f64,
    /// This round's mean local hit (ns).
    pub(crate) hit_ns: f64,
}

impl Round {
    fn pss_ratio(m: &Mem) -> f64 {
        (m.workers_pss + m.primary_pss_delta) as f64 / m.data as f64
    }
}

/// The figure `f` of every round.
fn each(rounds: &[Round], f: impl Fn(&Round) -> f64) -> Vec<f64> {
    rounds.iter().map(f).collect()
}

fn stampede_table(p: &Params, rounds: &[Round]) -> String {
    let mut t = String::new();
    t.push_str("| | naive (every worker reads Redis) | herd (one read per key per host) |\n");
    t.push_str("|---|---:|---:|\n");
    let mut row = |name: &str, fmt: &dyn Fn(&[f64]) -> String, f: &dyn Fn(&Run) -> f64| {
        let naive = fmt(&each(rounds, |r| f(&r.naive)));
        let herd = fmt(&each(rounds, |r| f(&r.herd)));
        t.push_str(&format!("| {name} | {naive} | {herd} |\n"));
    };
    row("values read from Redis", &count, &|r| r.value_reads as f64);
    row("read commands (GET / GETRANGE chunks)", &count, &|r| {
        r.read_commands as f64
    });
    row("Redis `used_memory` before the load", &megabytes, &|r| {
        r.baseline_used as f64
    });
    row("Redis `used_memory` peak", &megabytes, &|r| {
        r.peak_used as f64
    });
    row("peak `mem_clients_normal`", &megabytes, &|r| {
        r.peak_clients as f64
    });
    row("`evicted_keys`", &count, &|r| r.evicted as f64);
    let of = format!(" of {}", p.keys);
    row(
        "cache values still in Redis afterwards",
        &|v| count(v) + &of,
        &|r| r.big_keys_left as f64,
    );
    row(
        "values a worker found missing (evicted under it)",
        &count,
        &|r| r.missing as f64,
    );
    row(
        "time until every worker's load returned",
        &|v| fixed(v, 0, " ms"),
        &|r| r.ms_all,
    );
    let asked = (p.hosts * p.workers * p.keys) as f64;
    let missing = each(rounds, |r| r.naive.missing as f64);
    t.push_str(&format!(
        "\nThe last row is not a like-for-like race: the naive workers asked for {} values \
         in all and {} of them had been evicted under them and came back empty, so their \
         loads returned having moved far less data; herd's workers received every value in \
         every round. It is the time to a complete copy only for herd.\n",
        herd_bench::sections::thousands(asked),
        count(&missing),
    ));
    t
}

fn memory_table(p: &Params, rounds: &[Round]) -> String {
    let mut m = String::from("| | one copy per process | herd |\n|---|---:|---:|\n");
    let mut row = |name: &str, fmt: &dyn Fn(&[f64]) -> String, f: &dyn Fn(&Mem) -> f64| {
        let naive = fmt(&each(rounds, |r| f(&r.mem_naive)));
        let herd = fmt(&each(rounds, |r| f(&r.mem_herd)));
        m.push_str(&format!("| {name} | {naive} | {herd} |\n"));
    };
    row(
        &format!("PSS of the {} workers", p.mem_workers),
        &megabytes,
        &|m| m.workers_pss as f64,
    );
    row("primary's growth (PSS)", &megabytes, &|m| {
        m.primary_pss_delta as f64
    });
    let data = rounds.first().map_or(0, |r| r.mem_herd.data);
    row(
        &format!("total ÷ data ({} MB)", data as usize / MB),
        &|v| fixed(v, 2, "x"),
        &Round::pss_ratio,
    );
    m
}

fn targets_table(p: &Params, rounds: &[Round]) -> String {
    let n = rounds.len();
    let mut r = String::from(
        "| target | measured, median (min-max) | verdict (rounds that met it) |\n|---|---:|---|\n",
    );
    let want_reads = (p.keys * p.hosts) as f64;
    let reads = each(rounds, |x| x.herd.value_reads as f64);
    r.push_str(&format!(
        "| exactly one Redis read per key per host ({} keys x {} hosts) | {} reads | {} |\n",
        p.keys,
        p.hosts,
        count(&reads),
        verdict(
            median(&reads) == want_reads,
            &reads.iter().map(|&x| x == want_reads).collect::<Vec<_>>()
        )
    ));
    let ev_naive = each(rounds, |x| x.naive.evicted as f64);
    let ev_herd = each(rounds, |x| x.herd.evicted as f64);
    r.push_str(&format!(
        "| no evictions where the naive way evicts | naive {}, herd {} | {} |\n",
        count(&ev_naive),
        count(&ev_herd),
        verdict(
            median(&ev_herd) == 0.0 && median(&ev_naive) > 0.0,
            &(0..n)
                .map(|i| ev_herd[i] == 0.0 && ev_naive[i] > 0.0)
                .collect::<Vec<_>>()
        )
    ));
    let ratio = each(rounds, |x| Round::pss_ratio(&x.mem_herd));
    r.push_str(&format!(
        "| total PSS ≤ 1.2x the data | {} | {} |\n",
        fixed(&ratio, 2, "x"),
        verdict(
            median(&ratio) <= 1.2,
            &ratio.iter().map(|&x| x <= 1.2).collect::<Vec<_>>()
        )
    ));
    let hit = each(rounds, |x| x.hit_ns);
    r.push_str(&format!(
        "| local hit < 1 µs | {} | {} |\n",
        fixed(&hit, 0, " ns"),
        verdict(
            median(&hit) < 1000.0,
            &hit.iter().map(|&x| x < 1000.0).collect::<Vec<_>>()
        )
    ));
    let miss = each(rounds, |x| x.miss_med_us);
    let p99 = each(rounds, |x| x.miss_p99_us);
    r.push_str(&format!(
        "| miss served by the primary < 100 µs (each round's median; its p99 for reference) \
         | {}; p99 {} | {} |\n",
        fixed(&miss, 1, " µs"),
        fixed(&p99, 1, " µs"),
        verdict(
            median(&miss) < 100.0,
            &miss.iter().map(|&x| x < 100.0).collect::<Vec<_>>()
        )
    ));
    r
}

fn machine() -> String {
    let redis = std::process::Command::new("redis-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    format!("{}, {redis}", herd_bench::figures::machine())
}

/// The whole section.
pub(crate) fn document(p: &Params, rounds: &[Round], elapsed: Duration) -> String {
    let data_mb = rounds.first().map_or(0, |r| r.mem_herd.data) as usize / MB;
    let note = p.note.as_deref().map_or(String::new(), |n| format!(" {n}"));
    let naive_first: Vec<String> = rounds
        .iter()
        .enumerate()
        .filter(|(_, r)| r.naive_first)
        .map(|(i, _)| (i + 1).to_string())
        .collect();
    format!(
        "## Cache: the deploy stampede against a real Redis\n\n\
         Made by `cargo run --release -p herd-bench --bin stampede` (bench/src/bin/stampede/).\n\n\
         Method: {n} rounds. Each round runs all three experiments (memory, stampede, latency), \
         each on a freshly started and seeded `redis-server`; within a round naive and herd \
         alternate, naive first in odd rounds and herd first in even ones (naive went first in rounds \
         {naive_first}). A cell is the \
         **median over the rounds, with the min-max in brackets** (a single number when every \
         round gave the same). A target is computed within each round; it is met when the \
         median meets it, and the count of rounds that met it is beside. The whole run took \
         {secs:.0} s.{note}\n\n\
         Machine: {machine}; shared with other work, so the min-max spread is part of the \
         result.\n\n\
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
         Memory: {mw} workers each hold every value of a {data_mb} MB cache loaded from Redis \
         (16 MB values); PSS from /proc/PID/smaps_rollup while they hold it. One copy per process \
         is each worker `GET`ting into its own heap; herd is the workers' mappings of the \
         primary's sealed memfds (PSS splits shared pages among the processes that have them \
         mapped). The primary's growth is its PSS after minus before within the round; it \
         includes what its allocator kept from loading, and after the first round part of \
         that is memory kept from earlier rounds and reused.\n\n\
         {m}\n\
         Latency (herd only; there is no naive counterpart): one worker asks for 2,000 small \
         values the primary already holds (each a miss in the worker, answered by the primary \
         over the channel), then reads one of them 2,000,000 times from its local view; each \
         round gives the misses' median and p99 and the mean hit.\n\n\
         {r}",
        n = rounds.len(),
        naive_first = naive_first.join(", "),
        secs = elapsed.as_secs_f64(),
        machine = machine(),
        maxmem = p.maxmemory_mb,
        keys = p.keys,
        v = p.value_mb,
        filler = herd_bench::sections::thousands(p.filler_keys as f64),
        fkb = p.filler_kb,
        hosts = p.hosts,
        workers = p.workers,
        mw = p.mem_workers,
        t = stampede_table(p, rounds),
        m = memory_table(p, rounds),
        r = targets_table(p, rounds),
    )
}
