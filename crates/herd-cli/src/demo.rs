//! `herd demo`: herd's main job on its embedded default, end to end, with no Redis.
//!
//! Writes the bundled demo (a plain Node HTTP server, js/herd.js with native.js, and a JSON
//! snapshot of 103 cache values, three of them ~96 KB) to a temporary folder, starts `herd run` on it (this same
//! binary) with one worker per CPU (at least 2) on one shared port, and then, as a client would:
//! asks every worker for every cached value through that port, reloads every worker under load,
//! and stops. It prints what happened: who answered, the cache's one load per key for the whole
//! host, zero failed requests across the reload.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::control::client;
use crate::exit::{Context, Error, Exit, Result};
use crate::which::which;

const SERVER: &str = include_str!("../../../examples/demo/server.js");
const HERD_JS: &str = include_str!("../../../js/herd.js");
const NATIVE_JS: &str = include_str!("../../../js/native.js");
const SNAPSHOT: &str = include_str!("../../../examples/demo/cache.json");

/// One HTTP/1.1 request with `Connection: close`: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, Value)> {
    let mut s = tokio::time::timeout(Duration::from_secs(5), tokio::net::TcpStream::connect(addr))
        .await
        .or_fail(|| "connect timed out".into())?
        .or_fail(|| format!("cannot connect to {addr}"))?;
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: demo\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .await
    .or_fail(|| "cannot send the request".into())?;
    let mut text = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut text))
        .await
        .or_fail(|| "read timed out".into())?
        .or_fail(|| "cannot read the answer".into())?;
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| Error::failure("not an HTTP answer"))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("null");
    Ok((code, serde_json::from_str(body).unwrap_or(Value::Null)))
}

fn write_files(dir: &Path, port: u16) -> std::io::Result<PathBuf> {
    std::fs::create_dir_all(dir.join("examples/demo"))?;
    std::fs::create_dir_all(dir.join("js"))?;
    std::fs::write(dir.join("examples/demo/server.js"), SERVER)?;
    std::fs::write(dir.join("js/herd.js"), HERD_JS)?;
    std::fs::write(dir.join("js/native.js"), NATIVE_JS)?;
    std::fs::write(dir.join("examples/demo/cache.json"), SNAPSHOT)?;
    let config = dir.join("herd.toml");
    std::fs::write(
        &config,
        format!(
            "command = [\"node\", {server:?}]\nenv = {{ PORT = \"{port}\" }}\n\n[cache]\nsnapshot = {snap:?}\nwarm = [\"*\"]\n",
            server = dir.join("examples/demo/server.js").display().to_string(),
            snap = dir.join("examples/demo/cache.json").display().to_string(),
        ),
    )?;
    Ok(config)
}

/// Runs the demo; its exit code (success: every request succeeded and herd stopped cleanly).
pub async fn run() -> Result<Exit> {
    let dir = std::env::temp_dir().join(format!("herd-demo-{}", std::process::id()));
    let result = demo(&dir).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn demo(dir: &Path) -> Result<Exit> {
    if which("node").is_none() {
        return Err(Error::failure(
            "the demo's workers are Node programs: install node (https://nodejs.org) and retry",
        ));
    }
    // A free port for the server's own listen($PORT).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .or_fail(|| "cannot find a free port".into())?
        .port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config =
        write_files(dir, port).or_fail(|| format!("cannot write the demo to {}", dir.display()))?;
    let control = dir.join("control.sock");
    let workers = std::thread::available_parallelism().map_or(2, |n| n.get().max(2));
    let keys: Vec<String> = serde_json::from_str::<serde_json::Map<String, Value>>(SNAPSHOT)
        .or_fail(|| "the bundled snapshot is not a JSON object".into())?
        .keys()
        .cloned()
        .collect();
    println!("herd demo: {workers} Node HTTP workers on one shared port, one cache of {} values for the host", keys.len());
    let exe = std::env::current_exe().or_fail(|| "cannot find herd's own executable".into())?;
    let mut herd = tokio::process::Command::new(exe)
        .arg("run")
        .arg("--config")
        .arg(&config)
        .arg("--control")
        .arg(&control)
        .args(["--workers", &workers.to_string()])
        .env("HERD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .or_fail(|| "cannot start herd run".into())?;
    let stderr = herd.stderr.take().expect("herd run's stderr is piped");
    let mut stderr = BufReader::new(stderr).lines();
    tokio::spawn(async move {
        while let Ok(Some(line)) = stderr.next_line().await {
            eprintln!("  herd: {line}");
        }
    });
    println!(
        "1. `herd run -- node server.js`: the unmodified server's listen({port}) in every worker gets the one socket herd holds (herd is their cluster primary)"
    );
    let long = Duration::from_secs(60);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = client::status(&control, long).await {
            let running = r.status.workers.iter().filter(|w| w.state == "running");
            if running.count() == workers && r.cache.is_some_and(|c| c.warm) {
                break;
            }
        }
        if Instant::now() > deadline {
            return Err(Error::failure("the workers did not start in time"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The port exists once the first worker's listen reached herd (the others share it).
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        if Instant::now() > deadline {
            return Err(Error::failure("the workers did not listen in time"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Every worker asked for every key: through the shared port, many connections at once.
    let t = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for round in 0..workers * 2 {
        for k in &keys {
            let path = format!("/cache/{k}");
            tasks.spawn(async move { (round, get(addr, &path).await) });
        }
    }
    let (mut ok, mut failed) = (0u64, 0u64);
    let mut by_pid = std::collections::BTreeMap::<u64, u64>::new();
    let mut held = 0u64;
    while let Some(r) = tasks.join_next().await {
        match r.or_fail(|| "a request task failed".into())? {
            (_, Ok((200, v))) => {
                ok += 1;
                *by_pid.entry(v["pid"].as_u64().unwrap_or(0)).or_default() += 1;
                held += u64::from(v["held"] == Value::Bool(true));
            }
            (_, other) => {
                failed += 1;
                eprintln!("  request failed: {other:?}");
            }
        }
    }
    println!(
        "2. {ok} cache reads over HTTP in {:.0} ms ({failed} failed), answered by {} worker processes: {:?}",
        t.elapsed().as_secs_f64() * 1e3,
        by_pid.len(),
        by_pid.values().collect::<Vec<_>>()
    );
    let c = client::status(&control, long)
        .await?
        .cache
        .ok_or_else(|| Error::failure("herd serves no cache"))?;
    println!(
        "3. the primary loaded each value once for the whole host: {} loads for {} keys \
         (warm-up), {} answered from its memory, {} values in sealed shared memory; \
         {held} reads were answered from a worker's own copy without asking the primary",
        c.loads,
        keys.len(),
        c.hits,
        c.shared_values
    );

    // A rolling reload under load: no request fails.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = tokio::task::JoinSet::new();
    for _ in 0..4 {
        let stop = stop.clone();
        load.spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                match get(addr, "/").await {
                    Ok((200, _)) => ok += 1,
                    _ => failed += 1,
                }
            }
            (ok, failed)
        });
    }
    let t = Instant::now();
    let replaced = client::reload(&control, long).await?;
    let reload_ms = t.elapsed().as_secs_f64() * 1e3;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut failed) = (0, 0);
    while let Some(r) = load.join_next().await {
        let (o, f) = r.or_fail(|| "a load task failed".into())?;
        ok += o;
        failed += f;
    }
    println!(
        "4. rolling reload: {replaced} workers replaced one at a time in {reload_ms:.0} ms while {ok} requests ran; {failed} failed"
    );
    client::stop(&control, long).await?;
    let status = tokio::time::timeout(Duration::from_secs(30), herd.wait())
        .await
        .or_fail(|| "herd run did not stop in time".into())?
        .or_fail(|| "cannot wait for herd run".into())?;
    println!("5. stopped: herd run exited with {status}");
    Ok(if failed > 0 || !status.success() {
        Exit::Failure
    } else {
        Exit::Success
    })
}
