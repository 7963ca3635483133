//! A worker program for herd's integration tests. `HERD_TEST_MODE` picks its behaviour:
//!
//! - `echo` (default): messages come back as `{"echo": value, "pid": pid, "id": worker id}`;
//!   requests are answered `{"echo": value}`, except `"hang"` (never answered), `"drop"` (dropped
//!   unanswered) and `"fail"` (answered with an error). Objects with an `op` field are commands:
//!   `accept` (the attached descriptor is a listener: accept one connection and greet it),
//!   `take_listeners` (take the cluster's listeners; greet one connection on each),
//!   `send_fd` (answer with a memfd attached), `ask` (send a request to the primary and report the
//!   answer), `exit` (exit with `code`), `listening` / `ready` (send those notices), `burst`
//!   (send `n` messages `{"seq": i}`), `check_fd` (report whether the attached descriptor is
//!   close-on-exec), and the cache commands `cache_get` (`key`; reports the value's length, a
//!   checksum, its text if short, and whether the local view had it), `cache_gets` (`keys`, all
//!   at once), `cache_set` (`key`, `value`, `ttl_ms`), `cache_delete`, `cache_ready`,
//!   `cache_stats`. On disconnect the worker exits 0.
//! - `ignore-eof`: connects, then never exits on its own (even after the primary is gone).
//! - `primary`: runs as a primary forking `HERD_TEST_WORKERS` workers in mode
//!   `HERD_TEST_CHILD_MODE`, prints `worker <pid>` for each, then waits forever.

use std::io::Write;
use std::os::fd::{AsFd, OwnedFd};

use herd::{Cluster, Event, Incoming, Role, Worker};
use serde_json::{json, Value};

type Res<T> = Result<T, Box<dyn std::error::Error>>;

#[tokio::main]
async fn main() -> Res<()> {
    let mode = std::env::var("HERD_TEST_MODE").unwrap_or_else(|_| "echo".into());
    match (herd::role(), mode.as_str()) {
        (Role::Primary, _) => primary().await,
        (Role::Worker, "ignore-eof") => {
            let _w = Worker::connect().await?;
            std::future::pending::<()>().await;
            Ok(())
        }
        (Role::Worker, _) => echo().await,
    }
}

async fn primary() -> Res<()> {
    let n: usize = std::env::var("HERD_TEST_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(2);
    let child_mode = std::env::var("HERD_TEST_CHILD_MODE").unwrap_or_else(|_| "echo".into());
    let mut cluster = Cluster::builder()
        .workers(n)
        .args(Vec::<String>::new())
        .env("HERD_TEST_MODE", child_mode)
        .start()
        .await?;
    while let Some(ev) = cluster.next_event().await {
        if let Event::Online { worker } = ev {
            if let Some(w) = cluster.worker(worker).await {
                // The reader may have stopped listening: a closed stdout is not an error here.
                let mut out = std::io::stdout();
                let _ = writeln!(out, "worker {}", w.pid()).and_then(|()| out.flush());
            }
        }
    }
    Ok(())
}

async fn echo() -> Res<()> {
    let mut w = Worker::connect().await?;
    let id = w.id();
    let pid = std::process::id();
    let mut hung = Vec::new();
    while let Some(incoming) = w.recv().await? {
        match incoming {
            Incoming::Message(mut m) => {
                let v: Value = m.json()?;
                let fds = m.take_fds();
                if let Some(op) = v.get("op").and_then(Value::as_str) {
                    command(&w, op, &v, fds).await?;
                } else {
                    w.send(&json!({"echo": v, "pid": pid, "id": id})).await?;
                }
            }
            Incoming::Request(r) => {
                let v: Value = r.decode()?;
                match v.as_str() {
                    Some("hang") => hung.push(r),
                    Some("drop") => drop(r),
                    Some("fail") => r.reply_error("asked to fail").await?,
                    _ => r.reply(&json!({"echo": v})).await?,
                }
            }
        }
    }
    Ok(())
}

async fn command(w: &Worker, op: &str, v: &Value, fds: Vec<OwnedFd>) -> Res<()> {
    match op {
        "accept" => {
            let fd = fds.into_iter().next().ok_or("accept needs a descriptor")?;
            let listener = std::net::TcpListener::from(fd);
            let (mut s, _) = listener.accept()?;
            writeln!(s, "hello from worker {}", w.id())?;
            w.send(&json!({"accepted": true})).await?;
        }
        "take_listeners" => {
            // The cluster's listeners (ClusterBuilder::listener): greet one connection on each,
            // off the receive loop.
            let listeners: Vec<std::net::TcpListener> =
                w.listeners()?.into_iter().map(Into::into).collect();
            let n = listeners.len();
            let id = w.id();
            for l in listeners {
                std::thread::spawn(move || {
                    if let Ok((mut s, _)) = l.accept() {
                        let _ = writeln!(s, "hello from worker {id}");
                    }
                });
            }
            let again = w.listeners().is_err();
            w.send(&json!({"listeners": n, "second_take_refused": again}))
                .await?;
        }
        "send_fd" => {
            let fd = rustix::fs::memfd_create("herd-test", rustix::fs::MemfdFlags::CLOEXEC)?;
            let mut f = std::fs::File::from(fd);
            write!(f, "from worker {}", w.id())?;
            w.send_with_fds(&json!({"here": true}), vec![OwnedFd::from(f)])
                .await?;
        }
        "check_fd" => {
            let cloexec = fds
                .iter()
                .map(|f| {
                    rustix::io::fcntl_getfd(f.as_fd())
                        .map(|fl| fl.contains(rustix::io::FdFlags::CLOEXEC))
                        .unwrap_or(false)
                })
                .collect::<Vec<_>>();
            w.send(&json!({"cloexec": cloexec})).await?;
        }
        "ask" => {
            let answer: Result<Value, _> = w.request(&v["value"]).await;
            let report = match answer {
                Ok(a) => json!({"primary_said": a}),
                Err(e) => json!({"primary_failed": herd::error::chain(&e)}),
            };
            w.send(&report).await?;
        }
        "exit" => std::process::exit(v["code"].as_i64().unwrap_or(0) as i32),
        "listening" => {
            w.notify_listening(v["address"].as_str().unwrap_or("?"))
                .await?
        }
        "ready" => w.notify_ready().await?,
        "burst" => {
            for i in 0..v["n"].as_u64().unwrap_or(0) {
                w.send(&json!({"seq": i})).await?;
            }
        }
        op if op.starts_with("cache_") => {
            let report = cache_command(w, op, v)
                .await
                .unwrap_or_else(|e| json!({"cache_error": herd::error::chain(&e)}));
            w.send(&report).await?;
        }
        other => w.send(&json!({"unknown_op": other})).await?,
    }
    Ok(())
}

fn describe(value: Option<bytes::Bytes>, local: bool) -> Value {
    match value {
        None => json!({"found": false, "local": local}),
        Some(b) => {
            let sum = b
                .iter()
                .fold(0u64, |a, &x| a.wrapping_mul(31).wrapping_add(u64::from(x)));
            let text = (b.len() <= 256).then(|| String::from_utf8_lossy(&b).into_owned());
            json!({"found": true, "len": b.len(), "sum": sum, "text": text, "local": local})
        }
    }
}

async fn cache_command(w: &Worker, op: &str, v: &Value) -> Result<Value, herd::cache::CacheError> {
    let cache = w.cache();
    let key = v["key"].as_str().unwrap_or("");
    Ok(match op {
        "cache_get" => {
            let local = cache.is_local(key);
            let value = cache.get(key).await?;
            json!({"cache_get": key, "value": describe(value, local)})
        }
        "cache_gets" => {
            let keys: Vec<String> = v["keys"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|k| k.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            // All at once, each in its own task: concurrent misses, as a busy server makes.
            let mut set = tokio::task::JoinSet::new();
            for (i, k) in keys.iter().enumerate() {
                let (cache, k) = (cache.clone(), k.clone());
                set.spawn(async move {
                    let local = cache.is_local(&k);
                    (i, cache.get(&k).await.map(|v| describe(v, local)))
                });
            }
            let mut results: Vec<Option<Value>> = vec![None; keys.len()];
            while let Some(joined) = set.join_next().await {
                if let Ok((i, r)) = joined {
                    results[i] = Some(r?);
                }
            }
            let mut out = serde_json::Map::new();
            for (k, r) in keys.iter().zip(results) {
                out.insert(k.clone(), r.unwrap_or(Value::Null));
            }
            json!({"cache_gets": out})
        }
        "cache_set" => {
            let value = v["value"].as_str().unwrap_or("").to_string();
            let ttl = v["ttl_ms"].as_u64().map(std::time::Duration::from_millis);
            cache.set(key, value, ttl).await?;
            json!({"cache_set": key})
        }
        "cache_delete" => json!({"cache_delete": key, "existed": cache.delete(key).await?}),
        // `rounds` times: get the key (so the view holds it), set a new value, get it again;
        // how many times the second get gave something else (its own write not read).
        "cache_write_then_read" => {
            let rounds = v["rounds"].as_u64().unwrap_or(100);
            let mut stale = 0u64;
            for i in 0..rounds {
                cache.get(key).await?;
                let value = format!("v{i}");
                cache.set(key, value.clone(), None).await?;
                if cache.get(key).await?.as_deref() != Some(value.as_bytes()) {
                    stale += 1;
                }
            }
            json!({"cache_write_then_read": key, "stale": stale})
        }
        "cache_ready" => {
            cache.ready(std::time::Duration::from_secs(20)).await?;
            json!({"cache_ready": true})
        }
        "cache_stats" => json!({"cache_stats": cache.stats().await?}),
        other => json!({"unknown_op": other}),
    })
}
