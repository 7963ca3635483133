//! A supervised server in a few lines: a primary shares one TCP listener with 2 workers, serves
//! them a host-shared cache, and restarts any worker that crashes. The workers answer HTTP
//! `GET /KEY` from the cache. No `unsafe`, no restart loop, no descriptor numbers.
//!
//! Run it with `cargo run --release -p herd --example server`, then
//! `curl localhost:8080/greeting` (or `PORT=0` for any free port; the primary prints it).
//! `curl localhost:8080/crash` makes the worker that answers exit; the service starts another.

use std::time::Duration;

use bytes::Bytes;
use herd::cache::{CacheConfig, FileSource, Hub};
use herd::service::{ServiceConfig, ServiceEvent};
use herd::{Cluster, Role, Worker};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match herd::role() {
        Role::Primary => primary().await,
        Role::Worker => worker().await,
    }
}

async fn primary() -> Result<(), Box<dyn std::error::Error>> {
    let port = std::env::var("PORT").unwrap_or_else(|_| "8080".into());
    let listener = std::net::TcpListener::bind(format!("127.0.0.1:{port}"))?;
    println!("listening on {}", listener.local_addr()?);
    let data = [(
        "greeting".into(),
        Bytes::from("hello from the host-shared cache\n"),
    )];
    let source = FileSource::from_map("example", data.into_iter().collect());
    let hub = Hub::new(source, CacheConfig::default());
    let cluster = Cluster::builder().listener(listener).cache(hub);
    let mut config = ServiceConfig::default();
    config.workers = 2;
    let mut service = herd::service::start(cluster, config).await?;
    while let Some(event) = service.events.recv().await {
        if let ServiceEvent::Restarting {
            slot,
            status,
            delay,
            ..
        } = event
        {
            let how = status.map_or("could not start".into(), |s| s.to_string());
            println!("slot {slot}: worker ended ({how}); restarting in {delay:?}");
        }
    }
    println!("service ended: {:?}", service.task.await?);
    Ok(())
}

async fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let w = Worker::connect().await?;
    let fd = w.listeners()?.pop().ok_or("no listener from the primary")?;
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(true)?;
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let cache = w.cache();
    cache.ready(Duration::from_secs(30)).await?;
    loop {
        let (stream, _) = listener.accept().await?;
        let cache = cache.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            BufReader::new(read).read_line(&mut line).await?;
            let key = line
                .split(' ')
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/');
            if key == "crash" {
                std::process::exit(1);
            }
            let (status, body) = match cache.get(key).await {
                Ok(Some(v)) => ("200 OK", v),
                Ok(None) => ("404 Not Found", Bytes::from_static(b"no such key\n")),
                Err(e) => ("503 Service Unavailable", Bytes::from(format!("{e}\n"))),
            };
            let head = format!(
                "HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                body.len()
            );
            write.write_all(head.as_bytes()).await?;
            write.write_all(&body).await?;
            Ok::<_, std::io::Error>(())
        });
    }
}
