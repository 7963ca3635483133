//! `herd`: the command-line face of the herd library.
//!
//! `herd run [-w N] -- CMD ARGS...` starts N copies of CMD as workers with a channel in their
//! environment (Node's variables too, so a Node program's `process.send` just works), prints
//! every message a worker sends as one JSON line, and on SIGINT or SIGTERM disconnects every
//! worker (each gets the grace period, then SIGKILL). A second signal kills at once.
//!
//! Exit codes: 0 every worker exited 0; 1 a worker failed or herd hit an error; 2 bad usage.

use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use herd::{Cluster, Codec, Event, Signal};
use tokio::signal::unix::{signal, SignalKind};

#[derive(Parser)]
#[command(
    name = "herd",
    version,
    about = "Run any program as a cluster of workers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start N copies of a program as workers and relay what they send.
    Run {
        /// Number of workers (default: one per CPU).
        #[arg(short, long)]
        workers: Option<usize>,
        /// Seconds a worker has to exit after a stop before it is killed.
        #[arg(long, default_value_t = 5.0)]
        grace: f64,
        /// Channel codec: `json` (Node's format, any language) or `binary` (herd's Rust workers).
        #[arg(long, default_value = "json", value_parser = parse_codec)]
        codec: Codec,
        /// The program and its arguments.
        #[arg(required = true, last = true)]
        cmd: Vec<String>,
    },
}

fn parse_codec(s: &str) -> Result<Codec, String> {
    Codec::parse(s).ok_or_else(|| format!("unknown codec {s:?} (use json or binary)"))
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("HERD_LOG")
                .unwrap_or_else(|_| "herd=info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herd: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(run(cli)) {
        Ok(all_ok) => i32::from(!all_ok),
        Err(e) => {
            eprintln!("herd: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// Runs the command; `Ok(true)` when every worker exited 0.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    let Command::Run {
        workers,
        grace,
        codec,
        cmd,
    } = cli.command;
    let grace = Duration::try_from_secs_f64(grace).context("--grace must be a positive number")?;
    // The count is fixed here, not read back from the cluster: a worker may already have exited
    // (and left the cluster's table) by the time we would ask.
    let total = match workers {
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    anyhow::ensure!(total > 0, "--workers must be at least 1");
    let mut cluster = Cluster::builder()
        .program(&cmd[0])
        .args(&cmd[1..])
        .codec(codec)
        .grace(grace)
        .workers(total)
        .start()
        .await
        .with_context(|| format!("cannot start {:?}", cmd[0]))?;
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut stopping = false;
    let mut exited = 0;
    let mut all_ok = true;
    while exited < total {
        tokio::select! {
            ev = cluster.next_event() => {
                let Some(ev) = ev else { break };
                match ev {
                    Event::Fork { worker, pid } => tracing::info!(%worker, pid, "worker started"),
                    Event::Message { worker, message } => {
                        let text = match message.json() {
                            Ok(v) => v.to_string(),
                            Err(_) => format!("{:?}", message.bytes()),
                        };
                        println!("{{\"worker\":{worker},\"message\":{text}}}");
                    }
                    Event::Request { worker, request } => {
                        tracing::warn!(%worker, "request answered with an error: herd run has no handler");
                        let _ = request.reply_error("herd run does not answer requests").await;
                    }
                    Event::Error { worker, error } => {
                        tracing::error!(%worker, error = %herd::error::chain(&error), "worker error");
                    }
                    Event::Exit { worker, status } => {
                        exited += 1;
                        all_ok &= status.success();
                        tracing::info!(%worker, %status, "worker exited");
                    }
                    _ => {}
                }
            }
            _ = sigint.recv() => stop(&cluster, &mut stopping).await,
            _ = sigterm.recv() => stop(&cluster, &mut stopping).await,
        }
    }
    Ok(all_ok)
}

/// First signal: disconnect every worker (in the background; exits arrive as events). Second:
/// SIGKILL them all.
async fn stop(cluster: &Cluster, stopping: &mut bool) {
    let workers = cluster.workers().await;
    if *stopping {
        tracing::warn!("second signal: killing every worker");
        for w in workers {
            tokio::spawn(async move { w.kill(Signal::KILL).await });
        }
        return;
    }
    *stopping = true;
    tracing::info!("stopping: disconnecting every worker");
    for w in workers {
        tokio::spawn(async move { w.disconnect().await });
    }
}
