//! Supervising the workers with `herd::service`: the only file of herd-cli that drives it. It
//! turns the settings into the service's config, answers control calls, acts on signals
//! (SIGHUP reloads; SIGINT or SIGTERM stops gracefully, a second one at once; SIGQUIT stops at
//! once; SIGUSR2 logs a status line; SIGUSR1 reopens the log files),
//! prints the workers' output (queued, never awaited: see [`crate::sink`]), and turns how the
//! service ended into herd's exit code. Nothing in the loop awaits a worker or an output sink.

use std::sync::Arc;

use herd::cache::Hub;
use herd::listen::ListenAddr;
use herd::service::{
    Exits, Outcome, RestartPolicy, ServiceConfig, ServiceEvent, ServiceHandle, StopMode,
};
use herd::{ClusterBuilder, Event};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use super::output::Printer;
use crate::config::Settings;
use crate::control::proto::{Answer, Bool, Reply, Report, Request};
use crate::control::server::Call;
use crate::control::Listening;
use crate::exit::{Context, Error, Exit, Result};

/// What a status report adds to the service's own status.
#[derive(Clone)]
pub(super) struct Extras {
    /// The cache hub, if herd serves one.
    pub(super) hub: Option<Hub>,
    /// herd's listening sockets.
    pub(super) listening: Arc<[Listening]>,
    /// The workers' recent output (`herd logs`).
    pub(super) logs: crate::logs::Logs,
    /// The log files' sink, if there are log files.
    pub(super) files: Option<crate::sink::Sink>,
    /// The workers' last CPU samples.
    pub(super) cpu: super::cpu::Meter,
    /// The herd's name.
    pub(super) name: String,
    /// Where the worker count came from.
    pub(super) workers_from: String,
    /// When herd started.
    pub(super) started: std::time::Instant,
}

/// The service's config from the settings; `reuseport`: the addresses each worker binds.
fn config(s: &Settings, reuseport: Vec<ListenAddr>) -> ServiceConfig {
    let mut restart = RestartPolicy::default();
    restart.mode = s.restart_mode;
    restart.backoff_min = s.backoff_min;
    restart.backoff_max = s.backoff_max;
    restart.max_restarts = s.max_restarts;
    restart.window = s.window;
    let mut config = ServiceConfig::default();
    config.workers = s.workers;
    config.restart = restart;
    config.readiness = s.ready.clone();
    config.ready_timeout = s.ready_timeout;
    config.reload_batch = s.reload_batch;
    config.reuseport = reuseport;
    config.reuseport_fd = super::listen::FIRST_FD;
    config.relay = s.relay;
    config.max_memory = s.max_memory;
    config
}

/// Runs the service over the cluster `builder` describes until it ends, answering `calls`;
/// herd's exit code.
pub(super) async fn supervise(
    builder: ClusterBuilder,
    s: &Settings,
    reuseport: Vec<ListenAddr>,
    extras: Extras,
    mut calls: mpsc::Receiver<Call>,
) -> Result<Exit> {
    let signal = |kind| signal(kind).or_fail(|| "cannot handle signals".into());
    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut sigquit = signal(SignalKind::quit())?;
    let mut sigusr1 = signal(SignalKind::user_defined1())?;
    let mut sigusr2 = signal(SignalKind::user_defined2())?;
    let service = herd::service::start(builder, config(s, reuseport))
        .await
        .or_fail(|| format!("cannot start {:?}", s.command[0]))?;
    let (handle, mut events, mut task) = (service.handle, service.events, service.task);
    let mut printer = Printer::new(
        s.json_logs,
        s.logs.time,
        extras.logs.clone(),
        extras.files.clone(),
    );
    let mut signals = 0;
    loop {
        tokio::select! {
            outcome = &mut task => {
                // The last lines may still be queued (the queue closes after them).
                let rest = async {
                    while let Some(ev) = events.recv().await {
                        print(&mut printer, ev, s.log_messages);
                    }
                };
                let _ = tokio::time::timeout(std::time::Duration::from_secs(2), rest).await;
                if let Some(files) = &extras.files {
                    let files = files.clone();
                    let flush = tokio::task::spawn_blocking(move || {
                        files.flush(std::time::Duration::from_secs(2))
                    });
                    let _ = flush.await;
                }
                return exit(outcome.or_fail(|| "the service task failed".into())?);
            }
            Some(ev) = events.recv() => print(&mut printer, ev, s.log_messages),
            Some(call) = calls.recv() => {
                tokio::spawn(answer(handle.clone(), call, extras.clone()));
            }
            _ = sigint.recv() => stop_signal(&handle, &mut signals),
            _ = sigterm.recv() => stop_signal(&handle, &mut signals),
            _ = sigquit.recv() => {
                signals += 1;
                tracing::warn!("SIGQUIT: killing every worker");
                let handle = handle.clone();
                tokio::spawn(async move { handle.stop(StopMode::Fast).await });
            }
            _ = sigusr1.recv() => match &extras.files {
                Some(files) => files.reopen(),
                None => tracing::info!("SIGUSR1: herd writes no log files, so there is nothing to reopen"),
            },
            _ = sigusr2.recv() => {
                tokio::spawn(log_status(handle.clone()));
            }
            _ = sighup.recv() => {
                let handle = handle.clone();
                tokio::spawn(async move {
                    match handle.reload().await {
                        Ok(n) => tracing::info!(replaced = n, "SIGHUP reload done"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP reload failed"),
                    }
                });
            }
        }
    }
}

/// herd's exit code for how the service ended.
fn exit(outcome: Outcome) -> Result<Exit> {
    match outcome {
        Outcome::Stopped | Outcome::Exited(Exits::AllSucceeded) => Ok(Exit::Success),
        Outcome::Exited(Exits::SomeFailed) => Ok(Exit::Failure),
        Outcome::CrashLoop(why) => Err(Error::failure(format!("every worker gave up: {why}"))),
        other => Err(Error::failure(format!("the service ended: {other:?}"))),
    }
}

/// Prints a worker's output, and its messages with `--log-messages`; answers its requests with
/// an error (`herd run` serves none); the service logs lifecycle and supervision events itself.
fn print(printer: &mut Printer, ev: ServiceEvent, messages: bool) {
    match ev {
        ServiceEvent::Worker(Event::Output {
            worker,
            stream,
            line,
        }) => printer.line(worker, stream, &line),
        ServiceEvent::Worker(Event::Message { worker, message }) if messages => {
            let message = message.json().unwrap_or_else(|_| {
                serde_json::Value::String(format!("<{} bytes>", message.bytes().len()))
            });
            printer.message(worker, message)
        }
        ServiceEvent::Worker(Event::Request { worker, request }) => {
            let why = format!("worker {worker}: herd run answers no requests");
            // Queued at once, or dropped when the worker's queue is full (it is not reading):
            // never awaited here, and no task per request.
            request.try_reply_error(&why);
        }
        _ => {}
    }
}

/// Answers one control call.
async fn answer(service: ServiceHandle, call: Call, extras: Extras) {
    let answer = match call.request {
        Request::Status => status(&service, &extras).await.map(|(mut status, cpu)| {
            status.output_dropped += crate::sink::global().dropped()
                + extras.files.as_ref().map_or(0, crate::sink::Sink::dropped);
            Reply::Status(Box::new(Report {
                status,
                cache: extras.hub.as_ref().map(Hub::stats),
                listening: extras.listening.to_vec(),
                pid: std::process::id(),
                logs_dropped: extras.logs.dropped(),
                cpu,
                name: extras.name.clone(),
                workers_from: extras.workers_from.clone(),
                uptime_s: extras.started.elapsed().as_secs_f64(),
            }))
        }),
        Request::Reload => service
            .reload()
            .await
            .map(|replaced| Reply::Reloaded { replaced }),
        Request::Scale { workers } => service
            .scale(workers)
            .await
            .map(|()| Reply::Scaled { workers }),
        // The control server answers these itself, from the logs.
        Request::Logs { .. } => {
            let _ = call
                .answer
                .send(Answer::err("logs are read from the control server"));
            return;
        }
        Request::Stop => {
            // Answer first: the process ends once the workers have; the client then sees the
            // connection close.
            let _ = call
                .answer
                .send(Answer::Ok(Reply::Stopping { stopping: Bool }));
            let _ = service.stop(StopMode::Graceful).await;
            return;
        }
    };
    let _ = call
        .answer
        .send(answer.map_or_else(Answer::err, Answer::Ok));
}

/// The service's status with each worker's CPU use since the last report's sample (none for a
/// worker without one from 250 ms to 30 s ago: the answer never waits to measure; `herd status`
/// and `herd list` ask again then).
async fn status(
    service: &ServiceHandle,
    extras: &Extras,
) -> std::result::Result<
    (herd::service::Status, Vec<(u64, Option<f64>)>),
    herd::service::ServiceError,
> {
    let status = service.status().await?;
    let cpu = extras.cpu.percent(&status, std::time::Instant::now());
    Ok((status, cpu))
}

/// A stop signal: the first stops gracefully, the next ones at once.
fn stop_signal(handle: &ServiceHandle, signals: &mut u32) {
    *signals += 1;
    let mode = if *signals > 1 {
        StopMode::Fast
    } else {
        StopMode::Graceful
    };
    if mode == StopMode::Fast {
        tracing::warn!("second signal: killing every worker");
    } else {
        tracing::info!("stopping: workers get the grace period");
    }
    let handle = handle.clone();
    tokio::spawn(async move { handle.stop(mode).await });
}

/// SIGUSR2: one log line saying how the service is.
async fn log_status(service: ServiceHandle) {
    match tokio::time::timeout(std::time::Duration::from_secs(5), service.status()).await {
        Ok(Ok(s)) => tracing::info!(
            wanted = s.wanted,
            live = s.workers.len(),
            restarting = s.restarting.len(),
            failed = s.failed.len(),
            reloading = s.reloading,
            reloads = s.reloads,
            output_dropped = s.output_dropped + crate::sink::global().dropped(),
            "SIGUSR2: status"
        ),
        Ok(Err(e)) => tracing::warn!(error = %e, "SIGUSR2: no status"),
        Err(_) => tracing::warn!("SIGUSR2: the service did not answer within 5 s"),
    }
}
