//! The primary: forks workers, talks to them, and reports their lifecycle as [`Event`]s.
//!
//! Structure (after nextest's runner):
//! - `builder`: the settings, and starting a cluster; `config`: what every fork uses;
//! - `dispatcher`: one task owns the table of live workers and serves the [`Cluster`] handle's
//!   requests (fork, list, shut down);
//! - `life`: each worker's life as a pure state machine (after the service's `state`): its
//!   phase (starting, online, stopping, exited) and every timer of it (handshake, grace before
//!   `SIGKILL`, the linger before the stop signal, draining the channel and the output after
//!   exit), as `handle(now, input) -> effects`, unit-tested on a hand-moved clock;
//! - `supervisor`: each worker has one task, the shell around its life, that `select!`s over
//!   its child's exit, the frames on its channel, commands (disconnect, kill), its output and the
//!   life's next deadline, and runs the effects. It alone emits that worker's events, so they
//!   come in order: fork, online, messages, disconnect, exit;
//! - `spawn`: a process-wide spawner thread does every fork, so the `PR_SET_PDEATHSIG` each
//!   worker sets (it fires when the *thread* that forked it exits) stays armed for the process's
//!   life; and what a worker inherits (environment, descriptors);
//! - `handle`: [`WorkerHandle`], sending straight to the worker's channel queue, not through
//!   the dispatcher; `output`: captured stdout and stderr.
//!
//! Each worker runs in its own process group; stopping it is a signal, a grace period, then
//! `SIGKILL` to the group, and once the worker has exited, for whatever reason, `SIGKILL` to
//! what is left of its group. `reaper`: herd as a child subreaper (opt-in), reaping what
//! workers leave behind.

pub(crate) mod builder;
pub(crate) mod config;
pub(crate) mod dispatcher;
pub(crate) mod event;
pub(crate) mod handle;
pub(crate) mod life;
pub(crate) mod output;
pub(crate) mod reaper;
pub(crate) mod spawn;
pub(crate) mod supervisor;

use std::os::fd::OwnedFd;

use herd_wire::Kind;
use tokio::sync::{mpsc, oneshot};

pub use builder::ClusterBuilder;
use dispatcher::DispatchCmd;
pub use event::{Event, OutputStream, MAX_OUTPUT_LINE};
pub use handle::WorkerHandle;
use spawn::ForkOptions;

use crate::ids::{ExitStatus, WorkerId};
use crate::Error;

/// Runs `futs` concurrently on this task; their outputs in order.
pub(crate) async fn join_here<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let mut futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(out.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *o = Some(v),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(())
        }
    })
    .await;
    out.into_iter().flatten().collect()
}

/// The primary's handle on its workers.
///
/// Dropping it shuts the cluster down as [`Cluster::shutdown`] does, without waiting: every
/// worker is disconnected and, after its grace period, killed (if the tokio runtime itself is
/// gone, the workers are killed at once). Dropping a [`WorkerHandle`] does nothing to its worker.
pub struct Cluster {
    dispatch: mpsc::Sender<DispatchCmd>,
    events: mpsc::Receiver<Event>,
    /// Where Node workers' connections come from.
    balancer: std::sync::Arc<crate::node::balance::Balancer>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if let Err(mpsc::error::TrySendError::Full(cmd)) =
            self.dispatch.try_send(DispatchCmd::Shutdown(None))
        {
            let tx = self.dispatch.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = tx.send(cmd).await;
                });
            }
        }
    }
}

impl Cluster {
    fn new(
        dispatch: mpsc::Sender<DispatchCmd>,
        events: mpsc::Receiver<Event>,
        balancer: std::sync::Arc<crate::node::balance::Balancer>,
    ) -> Self {
        Cluster {
            dispatch,
            events,
            balancer,
        }
    }

    /// Every address herd listens on for its Node workers' servers (a server's
    /// `listen(port)` that herd bound, or a `--listen` socket a server took), how connections
    /// reach them there, and the workers whose servers listen there now.
    pub fn serving(&self) -> Vec<Serving> {
        let balance = self.balancer.mode();
        self.balancer
            .serving()
            .into_iter()
            .map(|(address, workers)| Serving {
                address,
                balance,
                workers,
            })
            .collect()
    }

    /// A builder with the defaults.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The next event. While the cluster can still fork it waits for one, even with no worker
    /// running; after [`Cluster::shutdown`] it returns `None` once every worker's last event
    /// ([`Event::Exit`]) has been taken.
    ///
    /// Cancel-safe: a call dropped before it returns loses no event.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Shuts the cluster down: no more forks ([`Error::ClusterGone`]), and every worker is
    /// disconnected (it reads end-of-stream; after its grace period, `SIGKILL`). Returns once all
    /// have exited; their events, ending with each one's [`Event::Exit`], are still delivered by
    /// [`Cluster::next_event`], which then returns `None`.
    pub async fn shutdown(&self) {
        let (tx, rx) = oneshot::channel();
        if self
            .dispatch
            .send(DispatchCmd::Shutdown(Some(tx)))
            .await
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    /// Forks one more worker.
    pub async fn fork(&self) -> Result<WorkerHandle, Error> {
        self.fork_with_fds(Vec::new()).await
    }

    /// Forks one more worker that also inherits `fds` (each at its number), besides the
    /// cluster's own: a socket of its own, say (`SO_REUSEPORT`).
    pub async fn fork_with_fds(&self, fds: Vec<(OwnedFd, i32)>) -> Result<WorkerHandle, Error> {
        self.fork_with(ForkOptions {
            fds,
            ..ForkOptions::default()
        })
        .await
    }

    /// Forks one more worker with descriptors and environment variables of its own.
    pub async fn fork_with(&self, opts: ForkOptions) -> Result<WorkerHandle, Error> {
        let (tx, rx) = oneshot::channel();
        self.dispatch
            .send(DispatchCmd::Fork(opts, tx))
            .await
            .map_err(|_| Error::ClusterGone)?;
        rx.await.map_err(|_| Error::ClusterGone)?
    }

    /// The workers whose processes have not yet been reaped, by id.
    pub async fn workers(&self) -> Vec<WorkerHandle> {
        let (tx, rx) = oneshot::channel();
        if self.dispatch.send(DispatchCmd::List(tx)).await.is_err() {
            return Vec::new();
        }
        rx.await.unwrap_or_default()
    }

    /// One worker by id, if it is still there.
    pub async fn worker(&self, id: WorkerId) -> Option<WorkerHandle> {
        self.workers().await.into_iter().find(|w| w.id() == id)
    }

    /// Sends a value to every worker whose channel is open; returns how many it went to.
    pub async fn broadcast<T: serde::Serialize + ?Sized>(&self, value: &T) -> usize {
        // Encoded once; sent to every worker at the same time, so a worker whose queue is full
        // holds up only its own copy (for at most the send timeout).
        let workers = self.workers().await;
        let Some(first) = workers.first() else {
            return 0;
        };
        let Ok((format, payload)) = herd_wire::encode_to_send(first.codec(), value) else {
            return 0;
        };
        let sends = workers.iter().map(|w| {
            let frame = herd_wire::Frame::new(Kind::Message, format, payload.clone());
            async move { w.peer_ref().send_frame(frame).await.is_ok() }
        });
        join_here(sends).await.into_iter().filter(|ok| *ok).count()
    }

    /// Disconnects every worker (each gets `grace` to exit, then `SIGKILL`) and waits for them
    /// all. Events keep arriving meanwhile; they are returned by [`Cluster::next_event`].
    pub async fn disconnect_all(&self) -> Vec<(WorkerId, Result<ExitStatus, Error>)> {
        let workers = self.workers().await;
        join_here(
            workers
                .iter()
                .map(|w| async move { (w.id(), w.disconnect().await) }),
        )
        .await
    }
}

/// An address herd serves Node workers' servers on ([`Cluster::serving`]).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub struct Serving {
    /// Where herd's socket listens (`0.0.0.0:3000`, a Unix path).
    pub address: String,
    /// How its connections reach the workers.
    pub balance: crate::Balance,
    /// The workers whose servers listen there now.
    pub workers: Vec<crate::WorkerId>,
}
