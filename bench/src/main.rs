//! herd's IPC benchmark: herd beside Node's `cluster` (the real `node`, json and advanced
//! serialization) and beside a raw `socketpair` between two processes, in one run.
//!
//! Cases, each measured from the primary with one worker:
//! - **ping-pong**: a small message out, its echo back (median and p99 round trip, µs);
//! - **stream**: many small messages one way, then one answer after the last (messages/s);
//! - **bulk**: one payload of 1, 10 and 100 MB, answered with its length (ms, median of runs).
//!
//! Run it with `cargo run --release -p herd-bench`; it prints the table and writes it to
//! `docs/benchmarks.md` (`--out` to choose another file, `--quick` for a fast smoke run).

use herd_bench::sections::{self, thousands};

use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use herd::{Cluster, Event, Format, Incoming, Message, Role, Worker, WorkerHandle};
use serde::{Deserialize, Serialize};

/// Environment variable that turns this binary into the raw-socket echo child.
const RAW_CHILD: &str = "HERD_BENCH_RAW_CHILD";
const MB: usize = 1_000_000;
/// Size of the small message in the raw cases: about what `{"ping":123}` costs on the wire.
const RAW_SMALL: usize = 16;

/// The messages of the herd cases.
#[derive(Serialize, Deserialize, Debug)]
enum Msg {
    Ping(u64),
    Item(u64),
    End(u64),
    Ack(u64),
    Blob(String),
}

#[derive(Clone, Debug)]
struct Config {
    pings: usize,
    stream: usize,
    sizes: Vec<usize>,
    out: Option<PathBuf>,
    /// Measure only herd (for profiling herd itself).
    herd_only: bool,
}

/// One column of the table.
#[derive(Default, Debug)]
struct Column {
    rtt_us: Vec<f64>,
    stream_per_s: f64,
    /// (size in bytes, median ms)
    bulk_ms: Vec<(usize, f64)>,
}

impl Column {
    fn rtt(&mut self, q: f64) -> f64 {
        percentile(&mut self.rtt_us, q)
    }
    fn bulk(&self, size: usize) -> Option<f64> {
        self.bulk_ms
            .iter()
            .find(|(s, _)| *s == size)
            .map(|(_, t)| *t)
    }
}

fn main() -> Result<()> {
    if std::env::var_os(RAW_CHILD).is_some() {
        return raw_child();
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    match herd::role() {
        Role::Worker => rt.block_on(herd_worker()),
        Role::Primary => {
            let config = parse_args()?;
            run(&rt, &config)
        }
    }
}

fn parse_args() -> Result<Config> {
    let mut config = Config {
        pings: 20_000,
        stream: 200_000,
        sizes: vec![MB, 10 * MB, 100 * MB],
        out: Some(PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../docs/benchmarks.md"
        ))),
        herd_only: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => {
                config.pings = 2_000;
                config.stream = 20_000;
                config.sizes = vec![MB, 10 * MB];
                config.out = None;
            }
            "--out" => config.out = Some(args.next().context("--out needs a path")?.into()),
            "--no-out" => config.out = None,
            "--herd-only" => {
                config.herd_only = true;
                config.out = None;
            }
            "--pings" => config.pings = args.next().context("--pings needs a count")?.parse()?,
            "--stream" => config.stream = args.next().context("--stream needs a count")?.parse()?,
            "-h" | "--help" => {
                println!(
                    "usage: herd-bench [--quick] [--herd-only] [--pings N] [--stream N] \
                     [--out FILE | --no-out]"
                );
                std::process::exit(0);
            }
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    Ok(config)
}

fn run(rt: &tokio::runtime::Runtime, config: &Config) -> Result<()> {
    eprintln!("herd (binary codec)...");
    let (mut herd, herd_string) = rt.block_on(herd_primary(config))?;
    eprintln!("herd request/reply...");
    let mut herd_req = rt.block_on(herd_requests(config))?;
    if config.herd_only {
        println!(
            "herd: ping-pong median {:.1} µs, p99 {:.1} µs; request/reply median {:.1} µs; \
             stream {} msgs/s; bulk {:?}; strings {:?}",
            herd.rtt(0.5),
            herd.rtt(0.99),
            herd_req.rtt(0.5),
            thousands(herd.stream_per_s),
            herd.bulk_ms,
            herd_string.bulk_ms
        );
        return Ok(());
    }
    eprintln!("raw socketpair...");
    let mut raw = raw_primary(config)?;
    eprintln!("node cluster (json)...");
    let mut json = node(config, "json")?;
    eprintln!("node cluster (advanced)...");
    let mut adv = node(config, "advanced")?;

    let mut t = String::new();
    let cols = "| case | herd | Node cluster json | Node cluster advanced | raw socketpair |\n\
                |---|---:|---:|---:|---:|\n";
    t.push_str(cols);
    for (name, q) in [("ping-pong median (µs)", 0.5), ("ping-pong p99 (µs)", 0.99)] {
        t.push_str(&format!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |\n",
            herd.rtt(q),
            json.rtt(q),
            adv.rtt(q),
            raw.rtt(q)
        ));
    }
    t.push_str(&format!(
        "| request/reply median / p99 (µs) | {:.1} / {:.1} | | | |\n",
        herd_req.rtt(0.5),
        herd_req.rtt(0.99)
    ));
    t.push_str(&format!(
        "| stream of small messages (msgs/s) | {} | {} | {} | {} |\n",
        thousands(herd.stream_per_s),
        thousands(json.stream_per_s),
        thousands(adv.stream_per_s),
        thousands(raw.stream_per_s)
    ));
    for &size in &config.sizes {
        let cell = |c: &Column| match c.bulk(size) {
            Some(ms) => format!("{ms:.1} ({:.2} GB/s)", size as f64 / ms / 1e6),
            None => "-".into(),
        };
        t.push_str(&format!(
            "| {} MB payload (ms) | {} | {} | {} | {} |\n",
            size / MB,
            cell(&herd),
            cell(&json),
            cell(&adv),
            cell(&raw)
        ));
    }
    for &size in &config.sizes {
        if let Some(ms) = herd_string.bulk(size) {
            t.push_str(&format!(
                "| {} MB as a string value (ms) | {ms:.1} ({:.2} GB/s) | | | |\n",
                size / MB,
                size as f64 / ms / 1e6
            ));
        }
    }

    // Ratios against the targets of issue 2.
    let big = *config.sizes.last().expect("at least one size");
    let stream_x = herd.stream_per_s / json.stream_per_s;
    let rtt_vs_node = herd.rtt(0.5) / json.rtt(0.5).min(adv.rtt(0.5));
    let rtt_vs_raw = herd.rtt(0.5) / raw.rtt(0.5);
    let bulk_vs_raw = raw.bulk(big).unwrap_or(f64::NAN) / herd.bulk(big).unwrap_or(f64::NAN);
    let met = |ok: bool| if ok { "met" } else { "**not met**" };
    let mut r = String::new();
    r.push_str("| target | measured | |\n|---|---:|---|\n");
    r.push_str(&format!(
        "| small-message throughput ≥ 20x Node json | {stream_x:.1}x | {} |\n",
        met(stream_x >= 20.0)
    ));
    r.push_str(&format!(
        "| round trip ≤ Node's (best of json/advanced) | {rtt_vs_node:.2}x | {} |\n",
        met(rtt_vs_node <= 1.0)
    ));
    r.push_str(&format!(
        "| round trip ≤ 1.3x raw socketpair | {rtt_vs_raw:.2}x | {} |\n",
        met(rtt_vs_raw <= 1.3)
    ));
    r.push_str(&format!(
        "| bulk ({} MB) bandwidth ≥ 0.5x raw socketpair | {bulk_vs_raw:.2}x | {} |\n",
        big / MB,
        met(bulk_vs_raw >= 0.5)
    ));

    println!("{t}\n{r}");
    if let Some(out) = &config.out {
        let doc = document(config, &t, &r)?;
        sections::write_section(out, "ipc", &doc)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

fn document(config: &Config, table: &str, ratios: &str) -> Result<String> {
    let node_version = Command::new("node").arg("--version").output()?;
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    Ok(format!(
        "## IPC: herd beside Node's cluster and the raw socket\n\n\
         Made by `cargo run --release -p herd-bench` (bench/src/main.rs, Node side in \
         bench/node/cluster_bench.js), every column in the same run.\n\n\
         Machine: {cpus} CPUs ({cpu}), Linux {kernel}, node {node}. \
         {pings} round trips after 1,000 warm-up ones; a stream of {stream} messages; \
         payloads sent 5 times (3 times from 50 MB up), median shown.\n\n\
         {table}\n\
         {ratios}\n\
         How each column is measured:\n\n\
         - **herd**: a `Cluster` with one worker on the binary codec (msgpack), the primary and the \
           worker on tokio's current-thread runtime. Ping-pong is `send` of `Msg::Ping(n)` and \
           the echo arriving as `Event::Message`; request/reply is `request` answered by \
           `Request::reply`. The stream is `send` of `Msg::Item(i)` in a loop (bounded queue, so \
           with backpressure), then one `End` answered with the count. Bulk is `send_bytes` of \
           the payload as raw bytes, answered with its length; the string row sends the payload \
           as a `String` inside a msgpack message, decoded by the worker, like Node's string.\n\
         - **Node cluster**: `cluster.fork()` with `serialization: 'json'` or `'advanced'`; \
           `{{ping: i}}` echoed, `{{item: i}}` streamed, a string of the payload's size.\n\
         - **raw socketpair**: a `socketpair(AF_UNIX, SOCK_STREAM)` to a child process, plain \
           blocking `read`/`write`: {RAW_SMALL}-byte messages for ping-pong and stream, the \
           payload into a buffer of its size for bulk. The floor no IPC library can beat.\n\n\
         Figures move from run to run by 10-30% on this shared 2-CPU machine; ratios within \
         one run are the comparable numbers. Two swing more: the raw round trip is about 12 µs \
         when the kernel happens to run both processes on one CPU and 40-60 µs across CPUs \
         (seen both ways in consecutive runs), and Node's stream rate ranged from 144k to \
         252k msgs/s over the runs made while tuning herd's. Four runs of this code before \
         this one: herd 4.26-5.26M msgs/s, Node json 165k-239k, 22.0x-26.3x (before the send \
         path was reworked herd made 2.2-3.3M).\n",
        node = String::from_utf8_lossy(&node_version.stdout).trim(),
        kernel = kernel.trim(),
        pings = thousands(config.pings as f64),
        stream = thousands(config.stream as f64),
    ))
}

// ---------------------------------------------------------------------------------------------
// herd

async fn start_one() -> Result<(Cluster, WorkerHandle)> {
    let mut cluster = Cluster::builder().workers(1).start().await?;
    loop {
        match next(&mut cluster).await? {
            Event::Online { worker } => {
                let handle = cluster.worker(worker).await.context("worker vanished")?;
                return Ok((cluster, handle));
            }
            Event::Fork { .. } => {}
            other => bail!("unexpected event before online: {other:?}"),
        }
    }
}

async fn next(cluster: &mut Cluster) -> Result<Event> {
    tokio::time::timeout(Duration::from_secs(60), cluster.next_event())
        .await
        .context("no event from the cluster within 60 s")?
        .context("the cluster ended")
}

async fn next_msg(cluster: &mut Cluster) -> Result<Msg> {
    loop {
        match next(cluster).await? {
            Event::Message { message, .. } => return Ok(message.decode()?),
            Event::Error { error, .. } => bail!("worker error: {}", herd::error::chain(&error)),
            Event::Exit { status, .. } => bail!("worker exited: {status}"),
            _ => {}
        }
    }
}

async fn herd_primary(config: &Config) -> Result<(Column, Column)> {
    let (mut cluster, w) = start_one().await?;
    let mut col = Column::default();
    for i in 0..1000 {
        w.send(&Msg::Ping(i)).await?;
        next_msg(&mut cluster).await?;
    }
    for i in 0..config.pings as u64 {
        let t = Instant::now();
        w.send(&Msg::Ping(i)).await?;
        let Msg::Ping(n) = next_msg(&mut cluster).await? else {
            bail!("expected the ping back")
        };
        col.rtt_us.push(t.elapsed().as_secs_f64() * 1e6);
        ensure!(n == i, "ping {i} came back as {n}");
    }

    let n = config.stream as u64;
    let t = Instant::now();
    for i in 0..n {
        w.send(&Msg::Item(i)).await?;
    }
    w.send(&Msg::End(n)).await?;
    let Msg::Ack(got) = next_msg(&mut cluster).await? else {
        bail!("expected the stream's ack")
    };
    col.stream_per_s = n as f64 / t.elapsed().as_secs_f64();
    ensure!(got == n, "the worker counted {got} of {n}");

    let mut strings = Column::default();
    for &size in &config.sizes {
        let payload = bytes::Bytes::from(vec![b'x'; size]);
        let mut times = Vec::new();
        for _ in 0..runs(size) {
            let t = Instant::now();
            w.send_bytes(payload.clone()).await?;
            let Msg::Ack(got) = next_msg(&mut cluster).await? else {
                bail!("expected the payload's ack")
            };
            times.push(t.elapsed().as_secs_f64() * 1e3);
            ensure!(got as usize == size, "the worker got {got} of {size} bytes");
        }
        col.bulk_ms.push((size, percentile(&mut times, 0.5)));

        let text = "x".repeat(size);
        let mut times = Vec::new();
        for _ in 0..runs(size) {
            let blob = Msg::Blob(text.clone());
            let t = Instant::now();
            w.send(&blob).await?;
            let Msg::Ack(got) = next_msg(&mut cluster).await? else {
                bail!("expected the string's ack")
            };
            times.push(t.elapsed().as_secs_f64() * 1e3);
            ensure!(got as usize == size, "the worker got {got} of {size} bytes");
        }
        strings.bulk_ms.push((size, percentile(&mut times, 0.5)));
    }
    shutdown(cluster).await?;
    Ok((col, strings))
}

async fn herd_requests(config: &Config) -> Result<Column> {
    let (cluster, w) = start_one().await?;
    let mut col = Column::default();
    for i in 0..1000 {
        let _: Msg = w.request(&Msg::Ping(i)).await?;
    }
    for i in 0..config.pings as u64 {
        let t = Instant::now();
        let back: Msg = w.request(&Msg::Ping(i)).await?;
        col.rtt_us.push(t.elapsed().as_secs_f64() * 1e6);
        ensure!(matches!(back, Msg::Ping(n) if n == i), "bad reply {back:?}");
    }
    shutdown(cluster).await?;
    Ok(col)
}

async fn shutdown(cluster: Cluster) -> Result<()> {
    for (id, status) in cluster.disconnect_all().await {
        let status = status?;
        ensure!(status.success(), "worker {id} ended with {status}");
    }
    Ok(())
}

async fn herd_worker() -> Result<()> {
    let mut w = Worker::connect().await?;
    let mut count = 0u64;
    while let Some(incoming) = w.recv().await? {
        match incoming {
            Incoming::Message(m) => {
                if let Some(reply) = answer(&m, &mut count)? {
                    w.send(&reply).await?;
                }
            }
            Incoming::Request(r) => {
                let m: Msg = r.decode()?;
                r.reply(&m).await?;
            }
        }
    }
    Ok(())
}

fn answer(m: &Message, count: &mut u64) -> Result<Option<Msg>> {
    if m.format() == Format::Raw {
        return Ok(Some(Msg::Ack(m.bytes().len() as u64)));
    }
    Ok(match m.decode::<Msg>()? {
        Msg::Ping(n) => Some(Msg::Ping(n)),
        Msg::Item(_) => {
            *count += 1;
            None
        }
        Msg::End(_) => Some(Msg::Ack(std::mem::take(count))),
        Msg::Blob(s) => Some(Msg::Ack(s.len() as u64)),
        Msg::Ack(_) => None,
    })
}

// ---------------------------------------------------------------------------------------------
// raw socketpair

fn raw_primary(config: &Config) -> Result<Column> {
    let (mut sock, theirs) = UnixStream::pair()?;
    let mut child = Command::new(std::env::current_exe()?)
        .env(RAW_CHILD, "1")
        .stdin(Stdio::from(OwnedFd::from(theirs)))
        .spawn()?;
    let mut col = Column::default();
    let mut msg = [0u8; RAW_SMALL];

    command(&mut sock, b'p', 1000 + config.pings as u64)?;
    for i in 0..1000 + config.pings {
        let t = Instant::now();
        sock.write_all(&msg)?;
        sock.read_exact(&mut msg)?;
        if i >= 1000 {
            col.rtt_us.push(t.elapsed().as_secs_f64() * 1e6);
        }
    }

    let n = config.stream as u64;
    command(&mut sock, b's', n)?;
    let t = Instant::now();
    for _ in 0..n {
        sock.write_all(&msg)?;
    }
    ensure!(ack(&mut sock)? == n, "raw stream lost messages");
    col.stream_per_s = n as f64 / t.elapsed().as_secs_f64();

    for &size in &config.sizes {
        let payload = vec![b'x'; size];
        let mut times = Vec::new();
        for _ in 0..runs(size) {
            command(&mut sock, b'b', size as u64)?;
            let t = Instant::now();
            sock.write_all(&payload)?;
            ensure!(ack(&mut sock)? == size as u64, "raw bulk lost bytes");
            times.push(t.elapsed().as_secs_f64() * 1e3);
        }
        col.bulk_ms.push((size, percentile(&mut times, 0.5)));
    }
    command(&mut sock, b'q', 0)?;
    let status = child.wait()?;
    ensure!(status.success(), "raw child ended with {status}");
    Ok(col)
}

fn command(sock: &mut UnixStream, op: u8, arg: u64) -> Result<()> {
    let mut b = [0u8; 9];
    b[0] = op;
    b[1..].copy_from_slice(&arg.to_le_bytes());
    sock.write_all(&b)?;
    Ok(())
}

fn ack(sock: &mut UnixStream) -> Result<u64> {
    let mut b = [0u8; 8];
    sock.read_exact(&mut b)?;
    Ok(u64::from_le_bytes(b))
}

/// The raw child: blocking reads and writes on the socket it got as stdin.
fn raw_child() -> Result<()> {
    let fd = std::io::stdin().as_fd().try_clone_to_owned()?;
    let mut sock = UnixStream::from(fd);
    let mut out = sock.try_clone()?;
    let mut cmd = [0u8; 9];
    loop {
        sock.read_exact(&mut cmd)?;
        let arg = u64::from_le_bytes(cmd[1..].try_into()?);
        match cmd[0] {
            b'p' => {
                let mut msg = [0u8; RAW_SMALL];
                for _ in 0..arg {
                    sock.read_exact(&mut msg)?;
                    out.write_all(&msg)?;
                }
            }
            b's' => {
                let mut left = arg as usize * RAW_SMALL;
                let mut buf = vec![0u8; 64 * 1024];
                while left > 0 {
                    let n = sock.read(&mut buf[..left.min(64 * 1024)])?;
                    ensure!(n > 0, "raw stream ended early");
                    left -= n;
                }
                out.write_all(&arg.to_le_bytes())?;
            }
            b'b' => {
                let mut buf = vec![0u8; arg as usize];
                sock.read_exact(&mut buf)?;
                out.write_all(&(buf.len() as u64).to_le_bytes())?;
            }
            b'q' => return Ok(()),
            op => bail!("raw child: unknown op {op}"),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Node

fn node(config: &Config, mode: &str) -> Result<Column> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/node/cluster_bench.js");
    let sizes: Vec<String> = config.sizes.iter().map(|s| s.to_string()).collect();
    let out = Command::new("node")
        .arg(script)
        .arg(mode)
        .arg(config.pings.to_string())
        .arg(config.stream.to_string())
        .arg(sizes.join(","))
        .stderr(Stdio::inherit())
        .output()
        .context("running node (is it installed?)")?;
    ensure!(out.status.success(), "node {mode} failed: {}", out.status);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("node's output")?;
    let rtt_us = v["rtt_us"]
        .as_array()
        .context("rtt_us")?
        .iter()
        .filter_map(|x| x.as_f64())
        .collect();
    let bulk_ms = config
        .sizes
        .iter()
        .filter_map(|s| Some((*s, v["bulk_ms"][s.to_string()].as_f64()?)))
        .collect();
    Ok(Column {
        rtt_us,
        stream_per_s: v["stream_msgs_per_s"].as_f64().context("stream")?,
        bulk_ms,
    })
}

// ---------------------------------------------------------------------------------------------

fn runs(size: usize) -> usize {
    if size >= 50 * MB {
        3
    } else {
        5
    }
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i]
}
