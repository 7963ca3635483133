//! `herd run`: starts N copies of a program as supervised workers with the settings given, and
//! runs until they stop; see the binary's docs for what it does. The steps are one file each:
//! the listening sockets ([`listen`]), the cluster and its cache (`cluster`), the supervision
//! (`service`, the one user of `herd::service`), the printing of worker output (`output`) and
//! the workers' cgroup with its watchdog, for a kill -9 of herd (`watchdog`).

use std::sync::Arc;

use tokio::sync::mpsc;

use crate::config::Settings;
use crate::control::server;
use crate::exit::{Context, Error, Exit, Result};
use crate::which::which;

mod cluster;
mod cpu;
pub mod listen;
mod output;
mod service;
pub mod watchdog;

pub use listen::{listen_exec, LISTEN_EXEC};
pub use watchdog::{watchdog, WATCHDOG};

/// Runs the herd `s` describes until it ends; its exit code.
pub async fn run(s: Settings) -> Result<Exit> {
    if which(&s.command[0]).is_none() {
        return Err(Error::failure(format!(
            "cannot start {:?}: no such program",
            s.command[0]
        )));
    }
    let sockets = listen::bind(&s)?;
    let listening: Arc<[_]> = sockets.listening.clone().into();
    let reuseport = sockets.reuseport.clone();
    let (mut builder, hub) = cluster::builder(&s, sockets)?;
    // Held until herd returns: the watchdog kills the cgroup once herd is gone.
    let watchdog = watchdog::start();
    if let Some(w) = &watchdog {
        builder = builder.cgroup(w.dir());
    }
    let control = server::bind(&s.control).await?;
    tracing::info!(name = %s.name, control = %s.control.display(), workers = s.workers, "herd running");
    let (calls_tx, calls) = mpsc::channel(16);
    if let Some(addr) = s.metrics {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .or_fail(|| format!("cannot serve metrics on {addr}"))?;
        let at = listener.local_addr().map_or(addr, |a| a);
        tracing::info!(address = %at, "metrics on http://{at}/metrics");
        tokio::spawn(crate::metrics::http::serve(listener, calls_tx.clone()));
    }
    let logs = crate::logs::Logs::default();
    let files = crate::logs::files::start(crate::logs::files::Plan {
        file: s.logs.file.as_deref(),
        out_file: s.logs.out_file.as_deref(),
        err_file: s.logs.err_file.as_deref(),
        max_size: s.logs.max_size,
        keep: s.logs.keep,
    })?;
    tokio::spawn(server::serve(control, calls_tx, logs.clone()));
    let extras = service::Extras {
        hub,
        listening,
        logs,
        files,
        cpu: cpu::Meter::default(),
        name: s.name.clone(),
        workers_from: s.workers_from.clone(),
        started: std::time::Instant::now(),
    };
    let exit = service::supervise(builder, &s, reuseport, extras, calls).await;
    let _ = std::fs::remove_file(&s.control);
    drop(watchdog);
    exit
}
