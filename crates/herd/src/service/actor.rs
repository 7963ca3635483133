//! The service's async shell: one task owns the [`Cluster`], the worker handles and the
//! [`Machine`]. It `select!`s over the cluster's events, the [`super::ServiceHandle`]'s calls,
//! port probes' reports and the machine's next deadline; turns each into an [`Input`]; and runs
//! the [`Effect`]s that come back.
//!
//! It never waits on a worker: disconnects, kills and probes run in their own tasks, and their
//! results come back as cluster events (`Exit`) or probe reports. The one thing it awaits inline
//! is a fork (the cluster's dispatcher and the spawner thread, not a worker), so that the
//! machine knows a worker before any of its events. Events for the user go out with
//! `try_send`; what does not fit waits in an outbox (see [`ServiceEvent`]).

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::meter::{Depth, Meter};
use super::state::{Cmd, Effect, Input, Machine, Reply, Role, Token};
use super::status::{self, Dropped, Status};
use super::{Outcome, Readiness, Relay, ServiceConfig, ServiceError, ServiceEvent};
use crate::{Cluster, Event, ForkOptions, Signal, WorkerHandle, WorkerId};

/// Lifecycle events kept for a slow reader before the oldest are dropped.
const MAX_OUTBOX: usize = 65_536;

/// A call from a [`super::ServiceHandle`].
pub(crate) enum Call {
    Status(oneshot::Sender<Status>),
    Workers(oneshot::Sender<Vec<(usize, WorkerHandle)>>),
    Reload(oneshot::Sender<Result<usize, ServiceError>>),
    Scale(usize, oneshot::Sender<Result<(), ServiceError>>),
    Stop(bool, oneshot::Sender<()>),
}

/// A caller waiting for the machine's [`Reply`].
enum Pending {
    Reload(oneshot::Sender<Result<usize, ServiceError>>),
    Scale(oneshot::Sender<Result<(), ServiceError>>),
    Stop(oneshot::Sender<()>),
}

/// What woke the actor.
enum Step {
    Idle,
    Event(Option<Event>),
    Call(Option<Call>),
    Input(Input),
}

/// The largest worker message relayed to the others ([`Relay::Others`]).
const MAX_RELAYED: usize = 1 << 20;

struct Actor {
    cluster: Cluster,
    machine: Machine,
    config: ServiceConfig,
    handles: HashMap<WorkerId, WorkerHandle>,
    events: mpsc::Sender<ServiceEvent>,
    /// Events waiting for room in `events`, in order.
    outbox: VecDeque<ServiceEvent>,
    dropped: Dropped,
    pending: HashMap<Token, Pending>,
    next_token: Token,
    probes: mpsc::Sender<WorkerId>,
    /// Where a memory sample's figures come back.
    samples: mpsc::Sender<Vec<(WorkerId, u64)>>,
    /// Reads workers' figures from /proc for status, on a thread of its own.
    meter: Arc<Meter>,
    /// Reads the memory limit's samples, on another (a stuck full read does not stop it).
    samples_meter: Arc<Meter>,
    outcome: Option<Outcome>,
}

/// Starts the actor over `cluster`: its call sender, its events, its task.
pub(crate) fn spawn(
    cluster: Cluster,
    config: ServiceConfig,
) -> (
    mpsc::Sender<Call>,
    mpsc::Receiver<ServiceEvent>,
    JoinHandle<Outcome>,
) {
    let (call_tx, call_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(config.event_capacity.max(1));
    let (probe_tx, probe_rx) = mpsc::channel(64);
    let (sample_tx, sample_rx) = mpsc::channel(1);
    let (machine, first) = Machine::new(config.clone());
    let actor = Actor {
        cluster,
        machine,
        config,
        handles: HashMap::new(),
        events: ev_tx,
        outbox: VecDeque::new(),
        dropped: Dropped::default(),
        pending: HashMap::new(),
        next_token: 0,
        probes: probe_tx,
        samples: sample_tx,
        meter: Arc::new(Meter::new(Depth::Full)),
        samples_meter: Arc::new(Meter::new(Depth::Private)),
        outcome: None,
    };
    let task = tokio::spawn(actor.run(first, call_rx, probe_rx, sample_rx));
    (call_tx, ev_rx, task)
}

impl Actor {
    async fn run(
        mut self,
        first: Vec<Effect>,
        mut calls: mpsc::Receiver<Call>,
        mut probes: mpsc::Receiver<WorkerId>,
        mut samples: mpsc::Receiver<Vec<(WorkerId, u64)>>,
    ) -> Outcome {
        self.apply(first).await;
        let mut calls_open = true;
        while self.outcome.is_none() {
            let wake = self.machine.next_deadline();
            let far = Instant::now() + Duration::from_secs(86_400);
            let step = tokio::select! {
                permit = self.events.reserve(), if !self.outbox.is_empty() => {
                    match permit {
                        Ok(p) => p.send(self.outbox.pop_front().expect("a waiting event")),
                        // Nobody reads the events any more.
                        Err(_) => self.outbox.clear(),
                    }
                    Step::Idle
                }
                ev = self.cluster.next_event() => Step::Event(ev),
                call = calls.recv(), if calls_open => Step::Call(call),
                Some(w) = probes.recv() => Step::Input(Input::Probed(w)),
                Some(rss) = samples.recv() => Step::Input(Input::Memory(rss)),
                _ = tokio::time::sleep_until(wake.unwrap_or(far)), if wake.is_some() => Step::Input(Input::Tick),
            };
            match step {
                Step::Idle => {}
                Step::Event(Some(ev)) => self.on_event(ev).await,
                // The cluster is gone: nothing more can happen.
                Step::Event(None) => self.outcome = Some(Outcome::Stopped),
                Step::Call(Some(call)) => self.on_call(call).await,
                Step::Call(None) => calls_open = false,
                Step::Input(input) => self.feed(input).await,
            }
        }
        // The last events go out in their own task: the outcome does not wait for the reader.
        let (events, outbox) = (self.events.clone(), std::mem::take(&mut self.outbox));
        if !outbox.is_empty() {
            tokio::spawn(async move {
                for ev in outbox {
                    if events.send(ev).await.is_err() {
                        return;
                    }
                }
            });
        }
        self.outcome.take().unwrap_or(Outcome::Stopped)
    }

    /// Feeds `input` to the machine and runs the effects, and those of the inputs they give.
    async fn feed(&mut self, input: Input) {
        let mut inputs = VecDeque::from([input]);
        while let Some(input) = inputs.pop_front() {
            let fx = self.machine.handle(Instant::now(), input);
            for e in fx {
                if let Some(next) = self.run_effect(e).await {
                    inputs.push_back(next);
                }
            }
        }
    }

    async fn apply(&mut self, fx: Vec<Effect>) {
        let mut inputs = VecDeque::new();
        for e in fx {
            if let Some(next) = self.run_effect(e).await {
                inputs.push_back(next);
            }
        }
        for input in inputs {
            self.feed(input).await;
        }
    }

    async fn run_effect(&mut self, effect: Effect) -> Option<Input> {
        match effect {
            Effect::Fork { slot, role } => return Some(self.fork(slot, role).await),
            Effect::Disconnect(w) => {
                if let Some(h) = self.handles.get(&w).cloned() {
                    tokio::spawn(async move {
                        let _ = h.disconnect().await;
                    });
                }
            }
            Effect::Kill(w) => {
                if let Some(h) = self.handles.get(&w).cloned() {
                    tokio::spawn(async move {
                        let _ = h.kill(Signal::KILL).await;
                    });
                }
            }
            Effect::Probe(w, addr) => {
                let limit = self.config.ready_timeout;
                tokio::spawn(probe(addr, w, self.probes.clone(), limit));
            }
            Effect::SampleMemory(workers) => {
                // /proc reads block: on the meter's thread, the figures back as an input. The
                // machine asks for one sample at a time, so the channel (room for one) never
                // holds the job up.
                let pids: Vec<(WorkerId, u32)> = workers
                    .into_iter()
                    .filter_map(|w| Some((w, self.handles.get(&w)?.pid())))
                    .collect();
                let (tx, meter) = (self.samples.clone(), self.samples_meter.clone());
                tokio::spawn(async move {
                    let only: Vec<u32> = pids.iter().map(|(_, p)| *p).collect();
                    let figures = meter.read(&only).await;
                    let rss = pids
                        .into_iter()
                        .filter_map(|(w, pid)| Some((w, figures.get(&pid)?.private?)))
                        .collect();
                    let _ = tx.try_send(rss);
                });
            }
            Effect::Reply(t, reply) => match (self.pending.remove(&t), reply) {
                (Some(Pending::Reload(tx)), Reply::Reload(r)) => drop(tx.send(r)),
                (Some(Pending::Scale(tx)), Reply::Scale(r)) => drop(tx.send(r)),
                (Some(Pending::Stop(tx)), Reply::Stop) => drop(tx.send(())),
                _ => tracing::debug!(token = t, "a reply nobody waits for"),
            },
            Effect::Emit(ev) => self.forward(ev),
            Effect::Finish(outcome) => self.outcome = Some(outcome),
        }
        None
    }

    /// Forks a worker for `slot`, with its own `SO_REUSEPORT` sockets and its slot number.
    async fn fork(&mut self, slot: usize, role: Role) -> Input {
        let mut fds = Vec::new();
        for (i, addr) in self.config.reuseport.iter().enumerate() {
            match crate::listen::bind(addr, true) {
                Ok(fd) => fds.push((fd, self.config.reuseport_fd + i as i32)),
                Err(e) => {
                    tracing::error!(slot, %addr, error = %e, "cannot bind a SO_REUSEPORT socket");
                    let why = format!("cannot bind {addr}: {e}");
                    let retry = is_shortage(&e);
                    return Input::StartFailed {
                        slot,
                        role,
                        why,
                        retry,
                    };
                }
            }
        }
        // The slot, under herd's name and PM2's (apps use it to run a job in one instance only).
        let env = vec![
            (crate::env::HERD_WORKER_SLOT.into(), slot.to_string().into()),
            (
                crate::env::NODE_APP_INSTANCE.into(),
                slot.to_string().into(),
            ),
        ];
        match self.cluster.fork_with(ForkOptions { fds, env }).await {
            Ok(h) => {
                let worker = h.id();
                tracing::info!(%worker, pid = h.pid(), slot, "worker started");
                self.handles.insert(worker, h);
                Input::Started { slot, role, worker }
            }
            Err(e) => {
                let why = crate::error::chain(&e);
                tracing::error!(slot, error = %why, "cannot start a worker");
                let retry = is_shortage(&e);
                Input::StartFailed {
                    slot,
                    role,
                    why,
                    retry,
                }
            }
        }
    }

    /// `from`'s message, to every other worker (queued if there is room now, never awaited).
    fn relay(&mut self, from: WorkerId, message: &crate::Message) {
        // Bounded: one message costs at most MAX_RELAYED in each other worker's queue.
        if !message.fds().is_empty() || message.bytes().len() > MAX_RELAYED {
            self.dropped.relayed.1 += 1;
            return;
        }
        for (id, h) in &self.handles {
            if *id == from {
                continue;
            }
            let frame = herd_wire::Frame::new(
                herd_wire::Kind::Message,
                message.format(),
                message.bytes().clone(),
            );
            if h.peer().try_send(frame) {
                self.dropped.relayed.0 += 1;
            } else {
                self.dropped.relayed.1 += 1;
            }
        }
    }

    async fn on_event(&mut self, ev: Event) {
        let input = match &ev {
            Event::Online { worker } => Some(Input::Online(*worker)),
            Event::Ready { worker } => Some(Input::Ready(*worker)),
            Event::Listening { worker, address } => Some(Input::Listening {
                worker: *worker,
                address: address.clone(),
            }),
            Event::Message { worker, message } => {
                if self.config.relay == Relay::Others {
                    self.relay(*worker, message);
                }
                Some(Input::Message {
                    worker: *worker,
                    ready: self.config.readiness == Readiness::Message && is_ready_message(message),
                })
            }
            Event::Exit { worker, status } => {
                self.handles.remove(worker);
                Some(Input::Exited {
                    worker: *worker,
                    status: *status,
                })
            }
            Event::Error { worker, error } => {
                tracing::warn!(%worker, error = %crate::error::chain(error), "worker channel error");
                None
            }
            Event::Unresponsive { worker, .. } => Some(Input::Unresponsive(*worker)),
            _ => None,
        };
        self.forward(ServiceEvent::Worker(ev));
        if let Some(input) = input {
            self.feed(input).await;
        }
    }

    /// Passes an event to the user without waiting (see [`ServiceEvent`] for what is dropped).
    fn forward(&mut self, ev: ServiceEvent) {
        let droppable = matches!(
            ev,
            ServiceEvent::Worker(
                Event::Output { .. } | Event::Message { .. } | Event::Request { .. }
            )
        );
        let ev = if self.outbox.is_empty() {
            match self.events.try_send(ev) {
                Ok(()) | Err(mpsc::error::TrySendError::Closed(_)) => return,
                Err(mpsc::error::TrySendError::Full(ev)) => ev,
            }
        } else {
            ev
        };
        if droppable {
            // Supervision must not wait for a slow reader: what does not fit is counted.
            self.dropped.output += 1;
            if self.dropped.output.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped.output,
                    "worker output lines and messages dropped: the service's event reader is too slow"
                );
            }
            return;
        }
        self.outbox.push_back(ev);
        if self.outbox.len() > MAX_OUTBOX {
            self.outbox.pop_front();
            self.dropped.events += 1;
            if self.dropped.events.is_power_of_two() {
                tracing::warn!(
                    dropped = self.dropped.events,
                    "service events dropped: their reader is far behind"
                );
            }
        }
    }

    fn token(&mut self, p: Pending) -> Token {
        self.next_token += 1;
        self.pending.insert(self.next_token, p);
        self.next_token
    }

    async fn on_call(&mut self, call: Call) {
        let cmd = match call {
            Call::Status(tx) => {
                let handles = &self.handles;
                let process = |id| {
                    handles.get(&id).map_or((0, 0, None), |h| {
                        (h.pid(), h.dropped_internal(), h.listen_error())
                    })
                };
                let mut s = status::build(&self.machine, Instant::now(), process, self.dropped);
                s.serving = self.cluster.serving();
                let meter = self.meter.clone();
                tokio::spawn(async move {
                    status::add_memory(&mut s, &meter).await;
                    let _ = tx.send(s);
                });
                return;
            }
            Call::Workers(tx) => {
                let serving = self.machine.serving().into_iter();
                let workers = serving
                    .filter_map(|(slot, w)| self.handles.get(&w).map(|h| (slot, h.clone())))
                    .collect();
                let _ = tx.send(workers);
                return;
            }
            Call::Reload(tx) => Cmd::Reload(self.token(Pending::Reload(tx))),
            Call::Scale(n, tx) => Cmd::Scale(n, self.token(Pending::Scale(tx))),
            Call::Stop(fast, tx) => Cmd::Stop {
                fast,
                reply: self.token(Pending::Stop(tx)),
            },
        };
        self.feed(Input::Cmd(cmd)).await;
    }
}

/// Tries to connect to `addr` until it works (then reports `worker`) or `limit` passes.
async fn probe(
    addr: SocketAddr,
    worker: WorkerId,
    report: mpsc::Sender<WorkerId>,
    limit: Duration,
) {
    let deadline = crate::deadline::from_now(limit);
    while Instant::now() < deadline {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            let _ = report.send(worker).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether `error` (or an error under it) is a shortage of resources: descriptors (`EMFILE`,
/// `ENFILE`), processes or memory (`EAGAIN`, `ENOMEM`). A start that fails so is retried and
/// never counted as the program crashing; anything else (`ENOENT`, `EACCES` on exec) is the
/// program's fault.
fn is_shortage(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        let code = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::raw_os_error);
        if matches!(
            code,
            Some(libc::EMFILE | libc::ENFILE | libc::EAGAIN | libc::ENOMEM)
        ) {
            return true;
        }
        next = e.source();
    }
    false
}

/// Whether `message` is PM2's readiness message, the string `'ready'` (checked without decoding
/// anything larger).
fn is_ready_message(message: &crate::Message) -> bool {
    message.bytes().len() <= 16 && matches!(message.decode::<String>().as_deref(), Ok("ready"))
}

#[cfg(test)]
mod tests {
    use super::is_shortage;
    use crate::Error;
    use std::io;

    #[test]
    fn shortages_are_told_from_the_program_s_faults() {
        for code in [libc::EMFILE, libc::ENFILE, libc::EAGAIN, libc::ENOMEM] {
            let e = Error::Spawn(io::Error::from_raw_os_error(code));
            assert!(is_shortage(&e), "{code}");
            assert!(is_shortage(&io::Error::from_raw_os_error(code)));
        }
        for code in [libc::ENOENT, libc::EACCES, libc::ENOEXEC, libc::EINVAL] {
            assert!(!is_shortage(&Error::Spawn(io::Error::from_raw_os_error(
                code
            ))));
        }
        assert!(!is_shortage(&Error::Spawn(io::Error::other("no layout"))));
    }
}
