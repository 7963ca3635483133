//! A supervised service: a [`Cluster`] kept at N workers, one per **slot** (`herd run` is built
//! on it, and so can any primary).
//!
//! ```no_run
//! use herd::service::{ServiceConfig, ServiceEvent};
//! use herd::{Cluster, Event};
//!
//! # async fn run() -> Result<(), herd::Error> {
//! let mut config = ServiceConfig::default();
//! config.workers = 4;
//! let mut service = herd::service::start(Cluster::builder(), config).await?;
//! while let Some(ev) = service.events.recv().await {
//!     match ev {
//!         ServiceEvent::Worker(Event::Request { request, .. }) => {
//!             let _ = request.reply(&"pong").await;
//!         }
//!         ServiceEvent::CrashLoop { slot, why } => eprintln!("slot {slot} gave up: {why}"),
//!         _ => {}
//!     }
//! }
//! let outcome = service.task.await;
//! # Ok(()) }
//! ```
//!
//! - **Slots.** Slot `i` keeps one worker, forked with `HERD_WORKER_SLOT=i`
//!   ([`crate::env::HERD_WORKER_SLOT`]) in its environment, stable across restarts and reloads.
//! - **Restarts.** A worker that exits while it should run (per [`Restart`]) is restarted after
//!   an exponential backoff; more than [`RestartPolicy::max_restarts`] crashes (a failed fork
//!   counts as one) within [`RestartPolicy::window`] is a crash loop: the slot gives up, with a
//!   clear message. When every slot has given up or is done, the service ends.
//! - **Rolling reload.** Slots are replaced a batch at a time: a new worker is forked for each,
//!   and only once it is ready (see [`Readiness`]) within the deadline is the old one
//!   disconnected (it finishes what it has, then exits; killed after the grace period). A new
//!   worker that fails or is not ready in time is killed and the reload stops, the old workers
//!   still serving.
//! - **Stop.** Graceful: every worker is disconnected and given the grace period. Fast: killed.
//!
//! Structure (after nextest's dispatcher and watchexec's jobs): `state` is a pure state machine,
//! `(state, input) -> effects`, unit-tested without processes; `actor` is the one task that owns
//! the [`Cluster`] and the worker handles, feeds the machine the cluster's events, the
//! [`ServiceHandle`]'s commands and the clock, and runs the effects without ever waiting on a
//! worker (disconnects, kills and port probes run in their own tasks).

mod actor;
mod config;
mod meter;
mod state;
mod status;
#[cfg(test)]
mod tests;

use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::{Cluster, ClusterBuilder, Error, Event, ExitStatus, WorkerHandle, WorkerId};

pub use config::{Readiness, Relay, Restart, RestartPolicy, ServiceConfig};
pub use status::{Status, WorkerStatus};

/// What the service reports: everything the cluster reports, plus its own decisions.
///
/// The queue is bounded ([`ServiceConfig::event_capacity`]); supervision never waits for its
/// reader. When it is full, worker output lines, messages and requests are dropped and counted
/// ([`Status::output_dropped`]; a dropped request is answered with an error, as any [`Request`]
/// dropped without a reply is). Every other event waits in an overflow queue, in order, until
/// the reader catches up; only beyond 65,536 waiting events are the oldest dropped, counted in
/// [`Status::events_dropped`] and logged.
///
/// [`Request`]: crate::Request
#[derive(Debug)]
#[non_exhaustive]
pub enum ServiceEvent {
    /// An event of the cluster, unchanged: output, messages (with their descriptors), requests
    /// (answer them, or drop them to answer with an error), and every worker's lifecycle.
    Worker(Event),
    /// A worker took over slot `slot` (first start, restart, or a reload's new worker once
    /// ready).
    Serving {
        /// The slot.
        slot: usize,
        /// The worker.
        worker: WorkerId,
    },
    /// Slot `slot` lost its worker and starts another after `delay`.
    Restarting {
        /// The slot.
        slot: usize,
        /// The worker that exited (`None`: the fork itself failed).
        worker: Option<WorkerId>,
        /// How it exited (`None`: the fork itself failed).
        status: Option<ExitStatus>,
        /// The backoff before the restart.
        delay: Duration,
    },
    /// Slot `slot` crashed too often within the window and gave up.
    CrashLoop {
        /// The slot.
        slot: usize,
        /// What happened, for people.
        why: String,
    },
    /// Slot `slot`'s worker exited and is not restarted (per [`Restart`]).
    Done {
        /// The slot.
        slot: usize,
        /// The worker.
        worker: WorkerId,
        /// How it exited.
        status: ExitStatus,
    },
    /// A rolling reload finished.
    Reloaded {
        /// Workers replaced.
        replaced: usize,
    },
    /// A rolling reload stopped; the old workers of the slots not yet replaced still serve.
    ReloadFailed {
        /// Workers replaced before it stopped.
        replaced: usize,
        /// Workers it meant to replace.
        total: usize,
        /// What went wrong.
        why: String,
    },
    /// The number of slots changed.
    Scaled {
        /// Slots now.
        workers: usize,
    },
    /// The service is stopping (every worker disconnected, or killed if `fast`).
    Stopping {
        /// Killed rather than disconnected.
        fast: bool,
    },
}

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// The service has ended.
    #[error("the service has stopped")]
    Gone,
    /// A rolling reload could not finish.
    #[error("reload stopped after {replaced} of {total} workers: {why}")]
    Reload {
        /// Workers replaced before it stopped.
        replaced: usize,
        /// Workers it meant to replace.
        total: usize,
        /// What went wrong.
        why: String,
    },
    /// The service is stopping.
    #[error("the service is stopping")]
    Stopping,
}

/// How the service ended.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Outcome {
    /// Stopped on request.
    Stopped,
    /// Every slot gave up after crashing (or is done, and at least one gave up); the first
    /// slot's message.
    CrashLoop(String),
    /// Every worker exited and none is to be restarted; how they exited.
    Exited(Exits),
}

/// How the workers of a service that ended by itself exited ([`Outcome::Exited`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exits {
    /// Every one with code 0.
    AllSucceeded,
    /// At least one otherwise (a code, a signal).
    SomeFailed,
}

/// How [`ServiceHandle::stop`] stops the workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum StopMode {
    /// Each is asked to stop and gets its grace period (`ClusterBuilder::grace`).
    #[default]
    Graceful,
    /// Each is killed at once (`SIGKILL`).
    Fast,
}

/// A running service: its handle, its events and the task that ends with its outcome.
#[derive(Debug)]
#[non_exhaustive]
pub struct Service {
    /// Commands: status, reload, scale, stop, the serving workers.
    pub handle: ServiceHandle,
    /// What happens (see [`ServiceEvent`]); ends after the service has.
    pub events: mpsc::Receiver<ServiceEvent>,
    /// Ends with the service's outcome.
    pub task: tokio::task::JoinHandle<Outcome>,
}

/// A handle on a running service; cheap to clone. Each call returns when its work is done.
#[derive(Clone, Debug)]
pub struct ServiceHandle {
    calls: mpsc::Sender<actor::Call>,
}

impl ServiceHandle {
    async fn call<T>(
        &self,
        call: impl FnOnce(oneshot::Sender<T>) -> actor::Call,
    ) -> Result<T, ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.calls
            .send(call(tx))
            .await
            .map_err(|_| ServiceError::Gone)?;
        rx.await.map_err(|_| ServiceError::Gone)
    }

    /// The current state of every worker.
    pub async fn status(&self) -> Result<Status, ServiceError> {
        self.call(actor::Call::Status).await
    }

    /// The workers serving their slots, by slot: send to them, ask them.
    pub async fn workers(&self) -> Result<Vec<(usize, WorkerHandle)>, ServiceError> {
        self.call(actor::Call::Workers).await
    }

    /// A rolling reload; returns how many workers were replaced, once all are. Asked during a
    /// reload, it makes one more pass after the current one (both callers hear at its end).
    pub async fn reload(&self) -> Result<usize, ServiceError> {
        self.call(actor::Call::Reload).await?
    }

    /// Changes the number of slots: new workers are forked, extra ones disconnected (the
    /// highest slots go first).
    pub async fn scale(&self, workers: usize) -> Result<(), ServiceError> {
        self.call(|tx| actor::Call::Scale(workers, tx)).await?
    }

    /// Stops every worker, as `mode` says; returns once all have exited.
    pub async fn stop(&self, mode: StopMode) -> Result<(), ServiceError> {
        let fast = mode == StopMode::Fast;
        self.call(|tx| actor::Call::Stop(fast, tx)).await
    }
}

/// Starts `builder`'s cluster with no worker of its own, then the service over it, which forks
/// [`ServiceConfig::workers`] workers. A count given to the builder too
/// ([`ClusterBuilder::workers`]) must be the same: [`Error::Config`] otherwise, before anything
/// starts. Must be called inside a tokio runtime.
pub async fn start(builder: ClusterBuilder, config: ServiceConfig) -> Result<Service, Error> {
    if let Some(n) = builder.workers_given().filter(|&n| n != config.workers) {
        return Err(Error::Config(format!(
            "ClusterBuilder::workers({n}) and ServiceConfig::workers ({}) disagree: a service \
             forks its own workers, set ServiceConfig::workers only",
            config.workers
        )));
    }
    let cluster: Cluster = builder.workers(0).start().await?;
    let (calls, events, task) = actor::spawn(cluster, config);
    Ok(Service {
        handle: ServiceHandle { calls },
        events,
        task,
    })
}
