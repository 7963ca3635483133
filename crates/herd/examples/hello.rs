//! Node's `cluster` example, in Rust.
//!
//! The primary forks one worker per CPU and sends `hi worker` to each; each worker prints
//! `<pid> worker receive: hi worker` and answers `<pid> worker send: hi master`, which the primary
//! prints. Once every worker has answered, the primary disconnects them all, each exits cleanly,
//! and so does the primary.
//!
//! Run it with `cargo run --release --example hello` (`HERD_WORKERS=N` to choose the count).

use herd::{Cluster, Event, Incoming, Role, Worker};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    match herd::role() {
        Role::Primary => primary().await,
        Role::Worker => worker().await,
    }
}

async fn primary() -> Result<(), Box<dyn std::error::Error>> {
    let mut builder = Cluster::builder();
    if let Some(n) = std::env::var("HERD_WORKERS")
        .ok()
        .and_then(|n| n.parse().ok())
    {
        builder = builder.workers(n);
    }
    let mut cluster = builder.start().await?;
    let total = cluster.workers().await.len();
    println!("primary {} is running, {total} workers", std::process::id());
    let (mut answered, mut exited) = (0, 0);
    while let Some(event) = cluster.next_event().await {
        match event {
            Event::Online { worker } => {
                if let Some(w) = cluster.worker(worker).await {
                    w.send("hi worker").await?;
                }
            }
            Event::Message { message, .. } => {
                println!("{}", message.decode::<String>()?);
                answered += 1;
                if answered == total {
                    for (id, status) in cluster.disconnect_all().await {
                        if !status.as_ref().is_ok_and(|s| s.success()) {
                            eprintln!("worker {id} ended badly: {status:?}");
                        }
                    }
                }
            }
            Event::Exit { worker, status } => {
                println!("worker {worker} exited ({status})");
                exited += 1;
                if exited == total {
                    break;
                }
            }
            Event::Error { worker, error } => {
                eprintln!("worker {worker}: {}", herd::error::chain(&error));
            }
            _ => {}
        }
    }
    Ok(())
}

async fn worker() -> Result<(), Box<dyn std::error::Error>> {
    let mut w = Worker::connect().await?;
    let pid = std::process::id();
    while let Some(incoming) = w.recv().await? {
        if let Incoming::Message(m) = incoming {
            println!("{pid} worker receive: {}", m.decode::<String>()?);
            w.send(&format!("{pid} worker send: hi master")).await?;
        }
    }
    // The primary disconnected us: finish cleanly.
    Ok(())
}
