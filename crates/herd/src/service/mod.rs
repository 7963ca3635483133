//! A supervised service: a [`Cluster`] kept at N workers, for `herd run`.
//!
//! One task owns all the state (after nextest's runner): the slots (one per wanted worker), the
//! workers in them, restart timers and the rolling reload in progress. It `select!`s over the
//! cluster's events, the [`ServiceHandle`]'s commands and its next deadline. Slow things (a worker
//! draining after a disconnect, a port probe) run in their own tasks and report back.
//!
//! - **Restarts.** A worker that exits while it should run is restarted after an exponential
//!   backoff; more than [`RestartPolicy::max_restarts`] crashes within
//!   [`RestartPolicy::window`] is a crash loop: the slot stops restarting, with a clear message.
//!   When every slot has given up, the service ends.
//! - **Rolling reload.** Slots are replaced a batch at a time: a new worker is forked for each,
//!   and only once it is ready (see [`Readiness`]) within the deadline is the old one
//!   disconnected (it finishes what it has, then exits; killed after the grace period). A new
//!   worker that fails or is not ready in time is killed and the reload stops, the old workers
//!   still serving.
//! - **Stop.** Graceful: every worker is disconnected and given the grace period. Fast: killed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::{Cluster, Event, ExitStatus, OutputStream, Signal, WorkerHandle, WorkerId};

/// When a new worker counts as ready to take over (rolling reloads, scale-up).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Readiness {
    /// As soon as its channel is up.
    Online,
    /// When it says so: a ready or listening notice (`herd.ready()`, `herd.listening()`,
    /// [`crate::Worker::notify_ready`]).
    Notice,
    /// When a TCP connection to this address succeeds (for workers that bind their own port).
    Port(SocketAddr),
    /// This long after it started (for programs that say nothing).
    Delay(Duration),
}

impl std::str::FromStr for Readiness {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "online" => Ok(Readiness::Online),
            "notice" | "ready" => Ok(Readiness::Notice),
            _ => {
                if let Some(a) = s.strip_prefix("port:") {
                    a.parse()
                        .map(Readiness::Port)
                        .map_err(|_| format!("bad address in {s:?}"))
                } else if let Some(d) = s.strip_prefix("delay:") {
                    d.trim_end_matches('s')
                        .parse::<f64>()
                        .ok()
                        .filter(|d| d.is_finite() && *d >= 0.0)
                        .map(|d| Readiness::Delay(Duration::from_secs_f64(d)))
                        .ok_or_else(|| format!("bad seconds in {s:?}"))
                } else {
                    Err(format!(
                        "unknown readiness {s:?} (use online, notice, port:HOST:PORT or delay:SECS)"
                    ))
                }
            }
        }
    }
}

/// Which exits are restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Restart {
    /// Every exit the service did not ask for.
    Always,
    /// Exits with a non-zero code or a signal (a worker that exits 0 is done).
    OnFailure,
    /// None: the service ends when every worker has exited.
    Never,
}

impl std::str::FromStr for Restart {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Restart::Always),
            "on-failure" => Ok(Restart::OnFailure),
            "never" => Ok(Restart::Never),
            _ => Err(format!(
                "unknown restart mode {s:?} (use always, on-failure or never)"
            )),
        }
    }
}

/// How crashed workers are restarted.
#[derive(Clone, Debug)]
pub struct RestartPolicy {
    /// Which exits are restarted (default [`Restart::OnFailure`]).
    pub mode: Restart,
    /// The first restart delay (default 100 ms); it doubles with each crash in the window.
    pub backoff_min: Duration,
    /// The longest restart delay (default 30 s).
    pub backoff_max: Duration,
    /// Crashes allowed within `window` before the slot gives up (default 5).
    pub max_restarts: u32,
    /// The window crashes are counted in (default 60 s).
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            mode: Restart::OnFailure,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            max_restarts: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// A service's settings.
#[derive(Clone, Debug)]
pub struct ServiceConfig {
    /// Workers to keep running.
    pub workers: usize,
    /// Restarts after crashes.
    pub restart: RestartPolicy,
    /// When a new worker is ready.
    pub readiness: Readiness,
    /// How long a new worker has to become ready (default 30 s).
    pub ready_timeout: Duration,
    /// Workers replaced at once in a rolling reload (default 1).
    pub reload_batch: usize,
    /// Addresses each worker gets a socket of its own for (`SO_REUSEPORT`), at descriptor
    /// numbers `reuseport_fd`, `reuseport_fd + 1`, ...
    pub reuseport: Vec<crate::listen::ListenAddr>,
    /// The first descriptor number for `reuseport` sockets.
    pub reuseport_fd: i32,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            restart: RestartPolicy::default(),
            readiness: Readiness::Online,
            ready_timeout: Duration::from_secs(30),
            reload_batch: 1,
            reuseport: Vec::new(),
            reuseport_fd: 3,
        }
    }
}

/// What the service reports besides its logs.
#[derive(Debug)]
pub enum ServiceEvent {
    /// A line of a worker's output.
    Output {
        /// The worker.
        worker: WorkerId,
        /// Which stream.
        stream: OutputStream,
        /// The line.
        line: String,
    },
    /// A message from a worker.
    Message {
        /// The worker.
        worker: WorkerId,
        /// The message, as JSON.
        message: serde_json::Value,
    },
}

/// One worker, as `herd status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    /// Its slot (0-based), if it holds one.
    pub slot: Option<usize>,
    /// The worker's id.
    pub worker: u64,
    /// Its process id.
    pub pid: u32,
    /// `starting`, `running`, `retiring` (being replaced or scaled away), `stopping`.
    pub state: String,
    /// Seconds since it started.
    pub uptime_s: f64,
    /// Restarts of its slot so far.
    pub restarts: u32,
    /// Resident memory (bytes), from /proc.
    pub rss: u64,
    /// Proportional set size (bytes; shared pages split among their users), from /proc.
    pub pss: u64,
    /// Messages received from it.
    pub messages: u64,
}

/// The whole service, as `herd status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Workers wanted.
    pub wanted: usize,
    /// Live workers.
    pub workers: Vec<WorkerStatus>,
    /// Slots waiting to restart: (slot, seconds until it does).
    pub restarting: Vec<(usize, f64)>,
    /// Slots that gave up (crash loop): (slot, why).
    pub failed: Vec<(usize, String)>,
    /// Whether a rolling reload is going on.
    pub reloading: bool,
    /// Rolling reloads completed.
    pub reloads: u64,
    /// Worker output lines and messages dropped because the reader of the service's events was
    /// too slow.
    pub output_dropped: u64,
}

/// Why a service call failed.
#[derive(Debug, thiserror::Error)]
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
pub enum Outcome {
    /// Stopped on request.
    Stopped,
    /// Every slot gave up after crashing.
    CrashLoop(String),
    /// Every worker exited and none is to be restarted; whether all exited with code 0.
    Exited(bool),
}

enum Cmd {
    Status(oneshot::Sender<Status>),
    Reload(oneshot::Sender<Result<usize, ServiceError>>),
    Scale(usize, oneshot::Sender<Result<(), ServiceError>>),
    Stop(bool, oneshot::Sender<()>),
}

/// Internal reports from helper tasks.
enum Note {
    /// A port probe for this worker succeeded.
    Probed(WorkerId),
}

/// A handle on a running service; cheap to clone. Each call returns when its work is done.
#[derive(Clone)]
pub struct ServiceHandle {
    cmds: mpsc::Sender<Cmd>,
}

impl ServiceHandle {
    /// The current state of every worker.
    pub async fn status(&self) -> Result<Status, ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Status(tx))
            .await
            .map_err(|_| ServiceError::Gone)?;
        rx.await.map_err(|_| ServiceError::Gone)
    }

    /// A rolling reload; returns how many workers were replaced, once all are.
    pub async fn reload(&self) -> Result<usize, ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Reload(tx))
            .await
            .map_err(|_| ServiceError::Gone)?;
        rx.await.map_err(|_| ServiceError::Gone)?
    }

    /// Changes the number of workers: new ones are forked, extra ones disconnected.
    pub async fn scale(&self, workers: usize) -> Result<(), ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Scale(workers, tx))
            .await
            .map_err(|_| ServiceError::Gone)?;
        rx.await.map_err(|_| ServiceError::Gone)?
    }

    /// Stops every worker (gracefully, or at once if `fast`); returns once all have exited.
    pub async fn stop(&self, fast: bool) -> Result<(), ServiceError> {
        let (tx, rx) = oneshot::channel();
        self.cmds
            .send(Cmd::Stop(fast, tx))
            .await
            .map_err(|_| ServiceError::Gone)?;
        rx.await.map_err(|_| ServiceError::Gone)
    }
}

/// Starts the service over `cluster` (which should have been started with zero workers: the
/// service forks them). Returns its handle, its events and the task that ends with its outcome.
pub fn start(
    cluster: Cluster,
    config: ServiceConfig,
) -> (
    ServiceHandle,
    mpsc::Receiver<ServiceEvent>,
    tokio::task::JoinHandle<Outcome>,
) {
    let (cmd_tx, cmd_rx) = mpsc::channel(64);
    let (ev_tx, ev_rx) = mpsc::channel(1024);
    let (note_tx, note_rx) = mpsc::channel(64);
    let svc = Svc {
        cluster,
        slots: (0..config.workers).map(|_| Slot::default()).collect(),
        config,
        members: HashMap::new(),
        events: ev_tx,
        notes: note_tx,
        reload: None,
        reloads: 0,
        stopping: None,
        output_dropped: 0,
    };
    let task = tokio::spawn(svc.run(cmd_rx, note_rx));
    (ServiceHandle { cmds: cmd_tx }, ev_rx, task)
}

#[derive(Default)]
struct Slot {
    /// The worker serving this slot.
    active: Option<WorkerId>,
    /// Restart at this time.
    restart_at: Option<Instant>,
    /// Crash times within the window.
    crashes: VecDeque<Instant>,
    restarts: u32,
    failed: Option<String>,
    /// Its worker exited and is not restarted; whether with code 0.
    done: Option<bool>,
    /// Being removed (scale down): not restarted.
    removed: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    /// Serving its slot.
    Active,
    /// Started by a reload (or a restart) for this slot; not yet ready.
    Candidate,
    /// Disconnected; draining.
    Retiring,
}

struct Member {
    handle: WorkerHandle,
    slot: Option<usize>,
    role: Role,
    started: Instant,
    messages: u64,
    ready_at: Option<Instant>,
}

struct Reload {
    queue: VecDeque<usize>,
    /// Candidates in the current batch: worker -> (slot, deadline).
    batch: BTreeMap<WorkerId, (usize, Instant)>,
    total: usize,
    replaced: usize,
    waiters: Vec<oneshot::Sender<Result<usize, ServiceError>>>,
    again: bool,
}

struct Svc {
    cluster: Cluster,
    config: ServiceConfig,
    slots: Vec<Slot>,
    members: HashMap<WorkerId, Member>,
    events: mpsc::Sender<ServiceEvent>,
    notes: mpsc::Sender<Note>,
    reload: Option<Reload>,
    reloads: u64,
    stopping: Option<(bool, Vec<oneshot::Sender<()>>)>,
    output_dropped: u64,
}

impl Svc {
    async fn run(
        mut self,
        mut cmds: mpsc::Receiver<Cmd>,
        mut notes: mpsc::Receiver<Note>,
    ) -> Outcome {
        for i in 0..self.slots.len() {
            self.start_worker(i, Role::Active).await;
        }
        let mut cmds_open = true;
        loop {
            if let Some(outcome) = self.finished() {
                if let Some((_, waiters)) = self.stopping.take() {
                    for w in waiters {
                        let _ = w.send(());
                    }
                }
                return outcome;
            }
            let wake = self.next_deadline();
            let far = Instant::now() + Duration::from_secs(86_400);
            tokio::select! {
                ev = self.cluster.next_event() => match ev {
                    Some(ev) => self.on_event(ev).await,
                    None => return Outcome::Stopped,
                },
                cmd = cmds.recv(), if cmds_open => match cmd {
                    Some(cmd) => self.on_cmd(cmd).await,
                    None => cmds_open = false,
                },
                Some(note) = notes.recv() => match note {
                    Note::Probed(id) => self.became_ready(id).await,
                },
                _ = tokio::time::sleep_until(wake.unwrap_or(far)), if wake.is_some() => self.on_deadline().await,
            }
        }
    }

    /// The service is over: stopping and no workers left, or every slot failed.
    fn finished(&self) -> Option<Outcome> {
        if self.stopping.is_some() && self.members.is_empty() {
            return Some(Outcome::Stopped);
        }
        let mut live = self.slots.iter().filter(|s| !s.removed).peekable();
        if self.stopping.is_some() || !self.members.is_empty() || live.peek().is_none() {
            return None;
        }
        if !live.all(|s| s.failed.is_some() || s.done.is_some()) {
            return None;
        }
        if let Some(why) = self.slots.iter().find_map(|s| s.failed.clone()) {
            return Some(Outcome::CrashLoop(why));
        }
        Some(Outcome::Exited(
            self.slots.iter().all(|s| s.removed || s.done == Some(true)),
        ))
    }

    fn next_deadline(&self) -> Option<Instant> {
        let restarts = self.slots.iter().filter_map(|s| s.restart_at);
        let reload = self
            .reload
            .iter()
            .flat_map(|r| r.batch.values().map(|(_, d)| *d));
        let delays = self.members.values().filter_map(|m| match m.role {
            Role::Candidate => m.ready_at,
            _ => None,
        });
        restarts.chain(reload).chain(delays).min()
    }

    async fn start_worker(&mut self, slot: usize, role: Role) -> Option<WorkerId> {
        let mut fds: Vec<(OwnedFd, i32)> = Vec::new();
        for (i, addr) in self.config.reuseport.iter().enumerate() {
            match crate::listen::bind(addr, true) {
                Ok(fd) => fds.push((fd, self.config.reuseport_fd + i as i32)),
                Err(e) => {
                    tracing::error!(slot, %addr, error = %e, "cannot bind a SO_REUSEPORT socket");
                    // A reload's candidate failing leaves the slot's worker in place (the
                    // reload reports it); only a slot that has no worker counts a crash.
                    if role == Role::Active {
                        self.crashed(slot, format!("cannot bind {addr}: {e}"));
                    }
                    return None;
                }
            }
        }
        match self.cluster.fork_with_fds(fds).await {
            Ok(handle) => {
                let id = handle.id();
                tracing::info!(worker = %id, pid = handle.pid(), slot, "worker started");
                let now = Instant::now();
                let ready_at = match (&self.config.readiness, role) {
                    (Readiness::Delay(d), Role::Candidate) => Some(now + *d),
                    _ => None,
                };
                if let (Readiness::Port(addr), Role::Candidate) = (&self.config.readiness, role) {
                    tokio::spawn(probe(
                        *addr,
                        id,
                        self.notes.clone(),
                        self.config.ready_timeout,
                    ));
                }
                self.members.insert(
                    id,
                    Member {
                        handle,
                        slot: Some(slot),
                        role,
                        started: now,
                        messages: 0,
                        ready_at,
                    },
                );
                if role == Role::Active {
                    self.slots[slot].active = Some(id);
                }
                Some(id)
            }
            Err(e) => {
                tracing::error!(slot, error = %crate::error::chain(&e), "cannot start a worker");
                if role == Role::Active {
                    self.crashed(slot, format!("cannot start: {}", crate::error::chain(&e)));
                }
                None
            }
        }
    }

    /// Slot `slot` lost its worker unexpectedly: schedule a restart, or give up.
    fn crashed(&mut self, slot: usize, why: String) {
        if self.stopping.is_some() || self.slots[slot].removed {
            return;
        }
        let policy = &self.config.restart;
        let now = Instant::now();
        let s = &mut self.slots[slot];
        s.active = None;
        s.crashes.push_back(now);
        while s
            .crashes
            .front()
            .is_some_and(|t| now.duration_since(*t) > policy.window)
        {
            s.crashes.pop_front();
        }
        let n = s.crashes.len() as u32;
        if n > policy.max_restarts {
            let text = format!(
                "crash loop: {n} crashes within {:?} (last: {why}); not restarting slot {slot}",
                policy.window
            );
            tracing::error!(slot, "{text}");
            s.failed = Some(text);
            s.restart_at = None;
            return;
        }
        let delay = crate::backoff::Backoff::new(policy.backoff_min, policy.backoff_max, false)
            .delay_for(n);
        tracing::warn!(slot, %why, restart_in_ms = delay.as_millis() as u64, "worker crashed; restarting");
        s.restart_at = Some(now + delay);
    }

    async fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Exit { worker, status } => self.on_exit(worker, status).await,
            Event::Online { worker } => {
                if self.config.readiness == Readiness::Online {
                    self.became_ready(worker).await;
                }
            }
            Event::Ready { worker } | Event::Listening { worker, .. } => {
                if self.config.readiness == Readiness::Notice {
                    self.became_ready(worker).await;
                }
            }
            Event::Message { worker, message } => {
                if let Some(m) = self.members.get_mut(&worker) {
                    m.messages += 1;
                }
                let value = message.json().unwrap_or_else(|_| {
                    serde_json::Value::String(format!("<{} bytes>", message.bytes().len()))
                });
                let ev = ServiceEvent::Message {
                    worker,
                    message: value,
                };
                if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(ev) {
                    self.output_dropped += 1;
                }
            }
            Event::Request { worker, request } => {
                let _ = request
                    .reply_error(&format!("worker {worker}: herd run answers no requests"))
                    .await;
            }
            Event::Output {
                worker,
                stream,
                line,
            } => {
                // Supervision must not wait for a slow log reader: lines that do not fit are
                // counted (in the status) rather than queued without bound.
                let ev = ServiceEvent::Output {
                    worker,
                    stream,
                    line,
                };
                if let Err(mpsc::error::TrySendError::Full(_)) = self.events.try_send(ev) {
                    self.output_dropped += 1;
                    if self.output_dropped.is_power_of_two() {
                        tracing::warn!(
                            dropped = self.output_dropped,
                            "worker output lines dropped: the log reader is too slow"
                        );
                    }
                }
            }
            Event::Error { worker, error } => {
                tracing::warn!(%worker, error = %crate::error::chain(&error), "worker channel error");
            }
            Event::Fork { .. } | Event::Disconnect { .. } => {}
        }
    }

    async fn on_exit(&mut self, worker: WorkerId, status: ExitStatus) {
        let Some(m) = self.members.remove(&worker) else {
            return;
        };
        let ran = m.started.elapsed();
        match m.role {
            Role::Retiring => {
                tracing::info!(%worker, %status, "worker retired");
            }
            _ if self.stopping.is_some() => {
                tracing::info!(%worker, %status, "worker stopped");
            }
            Role::Candidate => {
                tracing::warn!(%worker, %status, "new worker exited before it was ready");
                let why = format!("worker {worker} exited ({status}) before it was ready");
                self.candidate_failed(Some(worker), why).await;
            }
            Role::Active => {
                let slot = m.slot.unwrap_or(0);
                let mode = self.config.restart.mode;
                if mode == Restart::Never || (mode == Restart::OnFailure && status.success()) {
                    tracing::info!(%worker, slot, %status, "worker exited; not restarted");
                    if let Some(s) = self.slots.get_mut(slot) {
                        s.active = None;
                        s.done = Some(status.success());
                    }
                    return;
                }
                if status.success() {
                    tracing::warn!(%worker, slot, "worker exited on its own with code 0");
                } else {
                    tracing::warn!(%worker, slot, %status, uptime_ms = ran.as_millis() as u64, "worker failed");
                }
                if self.slots.get(slot).and_then(|s| s.active) == Some(worker) {
                    self.crashed(slot, format!("worker {worker} {status}"));
                }
            }
        }
    }

    async fn became_ready(&mut self, worker: WorkerId) {
        let Some(m) = self.members.get_mut(&worker) else {
            return;
        };
        if m.role != Role::Candidate {
            return;
        }
        m.role = Role::Active;
        m.ready_at = None;
        let slot = m.slot.unwrap_or(0);
        if self.slots.get(slot).is_none_or(|s| s.removed) {
            // Its slot was scaled away while it started.
            if let Some(r) = &mut self.reload {
                r.batch.remove(&worker);
            }
            self.retire(worker);
            self.advance_reload().await;
            return;
        }
        tracing::info!(%worker, slot, "new worker ready");
        // It serves the slot now: a restart pending for the slot (its old worker crashed during
        // the reload) is no longer needed.
        self.slots[slot].restart_at = None;
        let old = self.slots[slot].active.replace(worker);
        if let Some(old) = old.filter(|o| *o != worker) {
            self.retire(old);
        }
        if let Some(r) = &mut self.reload {
            if r.batch.remove(&worker).is_some() {
                r.replaced += 1;
            }
        }
        self.advance_reload().await;
    }

    /// Disconnects a worker (it finishes what it has and exits; killed after the grace period).
    fn retire(&mut self, worker: WorkerId) {
        if let Some(m) = self.members.get_mut(&worker) {
            m.role = Role::Retiring;
            m.slot = None;
            let h = m.handle.clone();
            tokio::spawn(async move {
                let _ = h.disconnect().await;
            });
        }
    }

    async fn candidate_failed(&mut self, worker: Option<WorkerId>, why: String) {
        if let Some(m) = worker.and_then(|w| self.members.get_mut(&w)) {
            // Not ready in time: it goes.
            m.role = Role::Retiring;
            let h = m.handle.clone();
            tokio::spawn(async move {
                let _ = h.kill(Signal::KILL).await;
            });
        }
        if let Some(mut r) = self.reload.take() {
            // The rest of the batch goes too; the old workers keep serving.
            for (id, _) in std::mem::take(&mut r.batch) {
                if Some(id) != worker {
                    if let Some(m) = self.members.get_mut(&id) {
                        m.role = Role::Retiring;
                        let h = m.handle.clone();
                        tokio::spawn(async move {
                            let _ = h.kill(Signal::KILL).await;
                        });
                    }
                }
            }
            tracing::error!(replaced = r.replaced, total = r.total, %why, "reload stopped");
            for w in r.waiters {
                let _ = w.send(Err(ServiceError::Reload {
                    replaced: r.replaced,
                    total: r.total,
                    why: why.clone(),
                }));
            }
        }
    }

    async fn on_deadline(&mut self) {
        let now = Instant::now();
        // Restarts that are due.
        let due: Vec<usize> = self
            .slots
            .iter()
            .enumerate()
            .filter(|(_, s)| s.restart_at.is_some_and(|t| t <= now))
            .map(|(i, _)| i)
            .collect();
        for slot in due {
            self.slots[slot].restart_at = None;
            if self.slots[slot].active.is_some() {
                continue;
            }
            self.slots[slot].restarts += 1;
            self.start_worker(slot, Role::Active).await;
        }
        // Delay readiness.
        let ready: Vec<WorkerId> = self
            .members
            .iter()
            .filter(|(_, m)| m.role == Role::Candidate && m.ready_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            self.became_ready(id).await;
        }
        // Candidates out of time.
        let late = self.reload.as_ref().and_then(|r| {
            r.batch
                .iter()
                .find(|(_, (_, d))| *d <= now)
                .map(|(id, _)| *id)
        });
        if let Some(id) = late {
            let why = format!(
                "worker {id} was not ready within {:?}",
                self.config.ready_timeout
            );
            self.candidate_failed(Some(id), why).await;
        }
    }

    async fn on_cmd(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Status(reply) => {
                let _ = reply.send(self.status().await);
            }
            Cmd::Reload(reply) => {
                if self.stopping.is_some() {
                    let _ = reply.send(Err(ServiceError::Stopping));
                    return;
                }
                match &mut self.reload {
                    Some(r) => {
                        // One more pass once this one is done, so every worker runs code at
                        // least as new as this request.
                        r.again = true;
                        r.waiters.push(reply);
                    }
                    None => {
                        let queue: VecDeque<usize> = (0..self.slots.len())
                            .filter(|i| !self.slots[*i].removed)
                            .collect();
                        tracing::info!(
                            workers = queue.len(),
                            batch = self.config.reload_batch,
                            "rolling reload"
                        );
                        self.reload = Some(Reload {
                            total: queue.len(),
                            queue,
                            batch: BTreeMap::new(),
                            replaced: 0,
                            waiters: vec![reply],
                            again: false,
                        });
                        self.advance_reload().await;
                    }
                }
            }
            Cmd::Scale(n, reply) => {
                if self.stopping.is_some() {
                    let _ = reply.send(Err(ServiceError::Stopping));
                    return;
                }
                self.scale(n).await;
                let _ = reply.send(Ok(()));
            }
            Cmd::Stop(fast, reply) => {
                let already_fast = matches!(self.stopping, Some((true, _)));
                let waiters = match self.stopping.take() {
                    Some((_, mut w)) => {
                        w.push(reply);
                        w
                    }
                    None => vec![reply],
                };
                let fast = fast || already_fast;
                self.stopping = Some((fast, waiters));
                if let Some(r) = self.reload.take() {
                    for w in r.waiters {
                        let _ = w.send(Err(ServiceError::Stopping));
                    }
                }
                for s in &mut self.slots {
                    s.restart_at = None;
                }
                tracing::info!(fast, workers = self.members.len(), "stopping");
                for m in self.members.values() {
                    let h = m.handle.clone();
                    tokio::spawn(async move {
                        if fast {
                            let _ = h.kill(Signal::KILL).await;
                        } else {
                            let _ = h.disconnect().await;
                        }
                    });
                }
            }
        }
    }

    /// Starts the next batch of a reload, or finishes it.
    async fn advance_reload(&mut self) {
        loop {
            let Some(r) = &mut self.reload else { return };
            if !r.batch.is_empty() {
                return;
            }
            if r.queue.is_empty() {
                let r = self.reload.take().expect("a reload");
                self.reloads += 1;
                tracing::info!(replaced = r.replaced, "reload done");
                if r.again {
                    let queue: VecDeque<usize> = (0..self.slots.len())
                        .filter(|i| !self.slots[*i].removed)
                        .collect();
                    self.reload = Some(Reload {
                        total: queue.len(),
                        queue,
                        batch: BTreeMap::new(),
                        replaced: 0,
                        waiters: r.waiters,
                        again: false,
                    });
                    continue;
                }
                for w in r.waiters {
                    let _ = w.send(Ok(r.replaced));
                }
                return;
            }
            let n = self.config.reload_batch.max(1);
            let mut slots = Vec::new();
            while slots.len() < n {
                match r.queue.pop_front() {
                    Some(s) => slots.push(s),
                    None => break,
                }
            }
            for slot in slots {
                if self.slots[slot].removed {
                    continue;
                }
                // A slot that gave up or finished gets a fresh start.
                if self.slots[slot].failed.take().is_some() {
                    self.slots[slot].crashes.clear();
                }
                self.slots[slot].done = None;
                self.slots[slot].restart_at = None;
                match self.start_worker(slot, Role::Candidate).await {
                    Some(id) => {
                        let deadline = Instant::now() + self.config.ready_timeout;
                        if let Some(r) = &mut self.reload {
                            r.batch.insert(id, (slot, deadline));
                        }
                    }
                    None => {
                        let why = format!("slot {slot}: the new worker could not start");
                        self.candidate_failed(None, why).await;
                        return;
                    }
                }
            }
        }
    }

    async fn scale(&mut self, n: usize) {
        let live: Vec<usize> = (0..self.slots.len())
            .filter(|i| !self.slots[*i].removed)
            .collect();
        self.config.workers = n;
        if n > live.len() {
            // Reuse removed slots first, then add.
            let mut need = n - live.len();
            for i in 0..self.slots.len() {
                if need == 0 {
                    break;
                }
                if self.slots[i].removed && self.slots[i].active.is_none() {
                    self.slots[i] = Slot::default();
                    self.start_worker(i, Role::Active).await;
                    need -= 1;
                }
            }
            for _ in 0..need {
                self.slots.push(Slot::default());
                let i = self.slots.len() - 1;
                self.start_worker(i, Role::Active).await;
            }
        } else {
            for &i in live.iter().rev().take(live.len() - n) {
                let s = &mut self.slots[i];
                s.removed = true;
                s.restart_at = None;
                if let Some(id) = s.active.take() {
                    self.retire(id);
                }
            }
        }
        tracing::info!(workers = n, "scaled");
    }

    async fn status(&self) -> Status {
        let now = Instant::now();
        let mut workers = Vec::new();
        for (id, m) in &self.members {
            let (rss, pss) = memory(m.handle.pid()).await;
            let state = match m.role {
                _ if self.stopping.is_some() => "stopping",
                Role::Active => "running",
                Role::Candidate => "starting",
                Role::Retiring => "retiring",
            };
            workers.push(WorkerStatus {
                slot: m.slot,
                worker: id.0,
                pid: m.handle.pid(),
                state: state.into(),
                uptime_s: now.duration_since(m.started).as_secs_f64(),
                restarts: m.slot.map_or(0, |s| self.slots[s].restarts),
                rss,
                pss,
                messages: m.messages,
            });
        }
        workers.sort_by_key(|w| (w.slot.unwrap_or(usize::MAX), w.worker));
        Status {
            wanted: self.slots.iter().filter(|s| !s.removed).count(),
            workers,
            restarting: self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| {
                    s.restart_at
                        .map(|t| (i, t.saturating_duration_since(now).as_secs_f64()))
                })
                .collect(),
            failed: self
                .slots
                .iter()
                .enumerate()
                .filter_map(|(i, s)| s.failed.clone().map(|f| (i, f)))
                .collect(),
            reloading: self.reload.is_some(),
            reloads: self.reloads,
            output_dropped: self.output_dropped,
        }
    }
}

/// RSS and PSS of a process, from /proc/PID/smaps_rollup (zeros if it cannot be read).
async fn memory(pid: u32) -> (u64, u64) {
    let Ok(text) = tokio::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).await else {
        return (0, 0);
    };
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kb| kb * 1024)
    };
    (field("Rss:"), field("Pss:"))
}

/// Tries to connect to `addr` until it works (then reports `worker` ready) or `limit` passes.
async fn probe(addr: SocketAddr, worker: WorkerId, notes: mpsc::Sender<Note>, limit: Duration) {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let attempt = tokio::time::timeout(
            Duration::from_millis(500),
            tokio::net::TcpStream::connect(addr),
        )
        .await;
        if matches!(attempt, Ok(Ok(_))) {
            let _ = notes.send(Note::Probed(worker)).await;
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_parses() {
        assert_eq!("online".parse::<Readiness>().unwrap(), Readiness::Online);
        assert_eq!("notice".parse::<Readiness>().unwrap(), Readiness::Notice);
        assert_eq!(
            "port:127.0.0.1:80".parse::<Readiness>().unwrap(),
            Readiness::Port("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            "delay:1.5".parse::<Readiness>().unwrap(),
            Readiness::Delay(Duration::from_millis(1500))
        );
        for bad in ["", "port:x", "delay:-1", "soon"] {
            assert!(bad.parse::<Readiness>().is_err(), "{bad}");
        }
    }
}
