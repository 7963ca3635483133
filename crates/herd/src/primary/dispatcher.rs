//! The dispatcher: one task owns the table of live workers and serves the [`super::Cluster`]
//! handle's requests (fork, list, shut down). It is not on the data path: sends go straight from
//! a [`WorkerHandle`] to the worker's channel.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::config::{check_numbers, Config};
use super::event::Event;
use super::handle::WorkerHandle;
use super::spawn::{fork, ForkOptions};
use crate::ids::WorkerId;
use crate::Error;

/// What the [`super::Cluster`] handle and the supervisors ask of the dispatcher.
pub(super) enum DispatchCmd {
    Fork(ForkOptions, oneshot::Sender<Result<WorkerHandle, Error>>),
    List(oneshot::Sender<Vec<WorkerHandle>>),
    /// A supervisor ended: its worker exited and its last event is queued.
    Exited(WorkerId),
    /// No more forks; disconnect every worker; answer once all have exited.
    Shutdown(Option<oneshot::Sender<()>>),
}

pub(super) async fn dispatcher(
    cfg: Arc<Config>,
    mut rx: mpsc::Receiver<DispatchCmd>,
    me: mpsc::WeakSender<DispatchCmd>,
    events: mpsc::Sender<Event>,
) {
    let mut workers: BTreeMap<WorkerId, WorkerHandle> = BTreeMap::new();
    let mut next_id = 1u64;
    // Dropped at shutdown: the event queue then closes once the last supervisor is done.
    let mut events = Some(events);
    let mut shutdown_waiters: Vec<oneshot::Sender<()>> = Vec::new();
    while let Some(cmd) = rx.recv().await {
        match cmd {
            DispatchCmd::Fork(opts, reply) => {
                let (Some(events), Some(me)) = (&events, me.upgrade()) else {
                    let _ = reply.send(Err(Error::ClusterGone));
                    continue;
                };
                let id = WorkerId(next_id);
                next_id += 1;
                let r = match check_numbers(&cfg, &opts.fds) {
                    Ok(()) => fork(&cfg, id, opts, events.clone()).await,
                    Err(e) => Err(e),
                };
                let r = r.map(|(handle, supervisor)| {
                    tokio::spawn(async move {
                        supervisor.run().await;
                        let _ = me.send(DispatchCmd::Exited(id)).await;
                    });
                    workers.insert(id, handle.clone());
                    handle
                });
                let _ = reply.send(r);
            }
            DispatchCmd::List(reply) => {
                let _ = reply.send(workers.values().cloned().collect());
            }
            DispatchCmd::Exited(id) => {
                workers.remove(&id);
            }
            DispatchCmd::Shutdown(reply) => {
                if events.take().is_some() {
                    tracing::debug!(workers = workers.len(), "cluster shutting down");
                    for w in workers.values() {
                        let w = w.clone();
                        tokio::spawn(async move {
                            let _ = w.disconnect().await;
                        });
                    }
                }
                shutdown_waiters.extend(reply);
            }
        }
        if events.is_none() && workers.is_empty() {
            for w in shutdown_waiters.drain(..) {
                let _ = w.send(());
            }
        }
    }
}
