//! The primary: forks workers, talks to them, and reports their lifecycle as [`Event`]s.
//!
//! Structure (after nextest's runner):
//! - one **dispatcher** task owns the table of live workers and serves the [`Cluster`] handle's
//!   requests (fork, list);
//! - each worker has one **supervisor** task, a state machine that `select!`s over its child's
//!   exit, the frames on its channel, commands (disconnect, kill) and deadlines (handshake, grace
//!   before `SIGKILL`, draining the channel after exit). It alone emits that worker's events, so
//!   they come in order: fork, online, messages, disconnect, exit;
//! - a process-wide **spawner** thread does every fork, so the `PR_SET_PDEATHSIG` each worker
//!   sets (it fires when the *thread* that forked it exits) stays armed for the process's life.
//!
//! Each worker runs in its own process group; stopping it is a signal, a grace period, then
//! `SIGKILL` to the group. Sending goes straight from a [`WorkerHandle`] to the worker's channel
//! queue, not through the dispatcher.

use std::collections::{BTreeMap, VecDeque};
use std::ffi::OsString;
use std::fmt;
use std::ops::Deref;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use herd_wire::{Codec, Hello, Kind, Limits, Receiver};
use rustix::process::{Pid, Signal};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use crate::cache::hub::Push;
use crate::cache::Hub;
pub use crate::ids::{ExitStatus, WorkerId};
use crate::message::{Control, Endpoint, Incoming, Routed};
use crate::peer::Peer;
use crate::{env, sys, Error, Message, Request};

/// How long a worker's channel is drained after the worker exited, for its last messages.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// What happened in the cluster, per worker, in order. Mirrors Node's `cluster` events.
#[derive(Debug)]
pub enum Event {
    /// The worker process was started.
    Fork {
        /// Which worker.
        worker: WorkerId,
        /// Its process id.
        pid: u32,
    },
    /// The worker's channel is up (binary: its handshake arrived; Node json: at fork, since a
    /// plain Node program sends nothing until it has something to say).
    Online {
        /// Which worker.
        worker: WorkerId,
    },
    /// The worker reported that it listens on an address.
    Listening {
        /// Which worker.
        worker: WorkerId,
        /// The address it reported.
        address: String,
    },
    /// The worker reported that it is ready for work.
    Ready {
        /// Which worker.
        worker: WorkerId,
    },
    /// A message from the worker.
    Message {
        /// Which worker.
        worker: WorkerId,
        /// The message.
        message: Message,
    },
    /// A request from the worker; answer it with [`Request::reply`].
    Request {
        /// Which worker.
        worker: WorkerId,
        /// The request.
        request: Request,
    },
    /// The worker's channel closed (it disconnected, exited, or was cut off after an error).
    Disconnect {
        /// Which worker.
        worker: WorkerId,
    },
    /// The worker process ended; always the worker's last event.
    Exit {
        /// Which worker.
        worker: WorkerId,
        /// How it ended.
        status: ExitStatus,
    },
    /// A line the worker wrote to its stdout or stderr (with [`ClusterBuilder::capture_output`];
    /// without its newline; lines longer than [`MAX_OUTPUT_LINE`] come in pieces).
    Output {
        /// Which worker.
        worker: WorkerId,
        /// Which stream.
        stream: OutputStream,
        /// The line (invalid UTF-8 replaced).
        line: String,
    },
    /// Something went wrong with the worker (bad frames, a failed handshake). Its channel is
    /// closed; the primary and the other workers go on.
    Error {
        /// Which worker.
        worker: WorkerId,
        /// What went wrong.
        error: Error,
    },
}

impl Event {
    /// The worker the event is about.
    pub fn worker(&self) -> WorkerId {
        match self {
            Event::Fork { worker, .. }
            | Event::Online { worker }
            | Event::Listening { worker, .. }
            | Event::Ready { worker }
            | Event::Message { worker, .. }
            | Event::Request { worker, .. }
            | Event::Disconnect { worker }
            | Event::Exit { worker, .. }
            | Event::Output { worker, .. }
            | Event::Error { worker, .. } => *worker,
        }
    }
}

/// A worker's output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    /// Its standard output.
    Stdout,
    /// Its standard error.
    Stderr,
}

impl OutputStream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// The longest line of captured output delivered as one [`Event::Output`].
pub const MAX_OUTPUT_LINE: usize = 16 << 10;

/// How long a worker's output is still read after it exited (a grandchild may hold the pipe).
const OUTPUT_AFTER_EXIT: Duration = Duration::from_millis(500);

#[derive(Clone, Debug)]
struct Config {
    program: PathBuf,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    codec: Codec,
    limits: Limits,
    handshake_timeout: Duration,
    grace: Duration,
    request_timeout: Duration,
    max_pending_requests: usize,
    cache: Option<Hub>,
    channel_fd: i32,
    inherit: Vec<(Arc<OwnedFd>, i32)>,
    capture_output: bool,
    send_timeout: Duration,
}

/// Cache calls one worker may have in flight at the hub; more are refused with an error reply.
const MAX_CACHE_CALLS: usize = 1024;

/// Builds a [`Cluster`]. Defaults: one worker per CPU, this program re-executed with the same
/// arguments, the binary codec.
#[derive(Debug)]
pub struct ClusterBuilder {
    workers: usize,
    program: Option<PathBuf>,
    args: Option<Vec<OsString>>,
    env: Vec<(OsString, OsString)>,
    codec: Codec,
    limits: Limits,
    handshake_timeout: Duration,
    grace: Duration,
    request_timeout: Duration,
    events: usize,
    cache: Option<Hub>,
    channel_fd: i32,
    inherit: Vec<(Arc<OwnedFd>, i32)>,
    capture_output: bool,
    send_timeout: Duration,
}

impl Default for ClusterBuilder {
    fn default() -> Self {
        ClusterBuilder {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            program: None,
            args: None,
            env: Vec::new(),
            codec: Codec::Binary,
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(30),
            grace: Duration::from_secs(5),
            request_timeout: Duration::from_secs(30),
            events: 1024,
            cache: None,
            channel_fd: sys::CHANNEL_FD,
            inherit: Vec::new(),
            capture_output: false,
            send_timeout: crate::message::SEND_TIMEOUT,
        }
    }
}

impl ClusterBuilder {
    /// How many workers [`ClusterBuilder::start`] forks (default: one per CPU).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self
    }

    /// The program workers run (default: this executable).
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// The workers' arguments (default: this process's arguments).
    pub fn args<I, S>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// An extra environment variable for workers.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// The codec: [`Codec::Binary`] for herd workers in Rust, [`Codec::NodeJson`] for Node.js
    /// (or any program that speaks one JSON text per line on the channel).
    pub fn codec(mut self, codec: Codec) -> Self {
        self.codec = codec;
        self
    }

    /// Frame, descriptor and queue limits for every worker's channel.
    pub fn limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// How long a binary worker has to complete its handshake (default 30 s).
    pub fn handshake_timeout(mut self, t: Duration) -> Self {
        self.handshake_timeout = t;
        self
    }

    /// How long a worker has to exit after a disconnect or a signal before `SIGKILL`
    /// (default 5 s).
    pub fn grace(mut self, t: Duration) -> Self {
        self.grace = t;
        self
    }

    /// Default deadline for requests to workers (default 30 s).
    pub fn request_timeout(mut self, t: Duration) -> Self {
        self.request_timeout = t;
        self
    }

    /// Serves the host-shared cache from `hub`: workers' [`crate::cache::Cache`] calls reach it,
    /// and its invalidations reach every worker. [`ClusterBuilder::start`] starts the hub
    /// (tracking and warm-up) if it is not running yet.
    pub fn cache(mut self, hub: Hub) -> Self {
        self.cache = Some(hub);
        self
    }

    /// The descriptor number of the channel in workers (default 3, Node's). Move it when
    /// descriptors 3 and up are taken, as with [`ClusterBuilder::inherit_fd`] and `LISTEN_FDS`.
    pub fn channel_fd(mut self, fd: i32) -> Self {
        self.channel_fd = fd;
        self
    }

    /// Every worker inherits `fd` as descriptor number `at` (a listening socket shared by all
    /// workers, say). The primary keeps its own copy for later forks.
    pub fn inherit_fd(mut self, fd: impl Into<Arc<OwnedFd>>, at: i32) -> Self {
        self.inherit.push((fd.into(), at));
        self
    }

    /// Reads each worker's stdout and stderr and reports them line by line as
    /// [`Event::Output`] (default: workers write to the primary's own stdout and stderr).
    pub fn capture_output(mut self, capture: bool) -> Self {
        self.capture_output = capture;
        self
    }

    /// How long a send to a worker waits for room in its queue (default 30 s). A worker that
    /// stops reading its channel fills its bounded queue; sends to it then fail with
    /// [`Error::Stalled`] after this, and sends to other workers are not held up.
    pub fn send_timeout(mut self, t: Duration) -> Self {
        self.send_timeout = t;
        self
    }

    /// Capacity of the event queue; when full, workers' channels are not read (backpressure).
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.events = n.max(1);
        self
    }

    /// Starts the dispatcher and forks the workers. Must be called inside a tokio runtime.
    pub async fn start(self) -> Result<Cluster, Error> {
        let program = match self.program {
            Some(p) => p,
            None => std::env::current_exe().map_err(Error::Spawn)?,
        };
        let args = self
            .args
            .unwrap_or_else(|| std::env::args_os().skip(1).collect());
        let cfg = Arc::new(Config {
            program,
            args,
            env: self.env,
            codec: self.codec,
            limits: self.limits,
            handshake_timeout: self.handshake_timeout,
            grace: self.grace,
            request_timeout: self.request_timeout,
            max_pending_requests: 65_536,
            cache: self.cache,
            channel_fd: self.channel_fd,
            inherit: self.inherit,
            capture_output: self.capture_output,
            send_timeout: self.send_timeout,
        });
        check_numbers(&cfg, &[])?;
        if let Some(hub) = &cfg.cache {
            hub.start();
        }
        let (events_tx, events_rx) = mpsc::channel(self.events);
        let (cmd_tx, cmd_rx) = mpsc::channel(64);
        tokio::spawn(dispatcher(
            cfg.clone(),
            cmd_rx,
            cmd_tx.downgrade(),
            events_tx,
        ));
        let cluster = Cluster {
            dispatch: cmd_tx,
            events: events_rx,
        };
        for _ in 0..self.workers {
            cluster.fork().await?;
        }
        Ok(cluster)
    }
}

/// Runs `futs` concurrently on this task; their outputs in order.
async fn join_here<F: std::future::Future>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output> {
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
pub struct Cluster {
    dispatch: mpsc::Sender<DispatchCmd>,
    events: mpsc::Receiver<Event>,
}

impl Cluster {
    /// A builder with the defaults.
    pub fn builder() -> ClusterBuilder {
        ClusterBuilder::default()
    }

    /// The next event, or `None` once every worker is gone and no more can be forked.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Forks one more worker.
    pub async fn fork(&self) -> Result<WorkerHandle, Error> {
        self.fork_with_fds(Vec::new()).await
    }

    /// Forks one more worker that also inherits `fds` (each at its number), besides the
    /// cluster's own: a socket of its own, say (`SO_REUSEPORT`).
    pub async fn fork_with_fds(&self, fds: Vec<(OwnedFd, i32)>) -> Result<WorkerHandle, Error> {
        let (tx, rx) = oneshot::channel();
        self.dispatch
            .send(DispatchCmd::Fork(fds, tx))
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
            async move { w.endpoint().send_frame(frame).await.is_ok() }
        });
        join_here(sends).await.into_iter().filter(|ok| *ok).count()
    }

    /// Disconnects every worker (each gets `grace` to exit, then `SIGKILL`) and waits for them
    /// all. Events keep arriving meanwhile; they are returned by [`Cluster::next_event`].
    pub async fn disconnect_all(&self) -> Vec<(WorkerId, Result<ExitStatus, Error>)> {
        let workers = self.workers().await;
        let waits = workers.into_iter().map(|w| async move {
            let r = w.disconnect().await;
            (w.id(), r)
        });
        let mut out = Vec::new();
        for (id, r) in join_all(waits).await {
            out.push((id, r));
        }
        out
    }
}

async fn join_all<F>(futs: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let handles: Vec<_> = futs.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        if let Ok(v) = h.await {
            out.push(v);
        }
    }
    out
}

struct WorkerShared {
    id: WorkerId,
    pid: u32,
    peer: Peer,
    cmds: mpsc::Sender<WorkerCmd>,
    exit: watch::Receiver<Option<ExitStatus>>,
    grace: Duration,
}

/// A handle on one worker: send to it (through [`Peer`]'s methods), disconnect it, kill it.
/// Cheap to clone.
#[derive(Clone)]
pub struct WorkerHandle {
    inner: Arc<WorkerShared>,
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("id", &self.inner.id)
            .field("pid", &self.inner.pid)
            .finish()
    }
}

impl Deref for WorkerHandle {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        &self.inner.peer
    }
}

impl WorkerHandle {
    /// The worker's id.
    pub fn id(&self) -> WorkerId {
        self.inner.id
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// How the worker ended, if it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.inner.exit.borrow()
    }

    /// Closes the worker's channel after everything already queued to it; the worker reads
    /// end-of-stream, finishes and exits. After the grace period it is killed. Returns how it
    /// ended.
    pub async fn disconnect(&self) -> Result<ExitStatus, Error> {
        let _ = self.inner.cmds.send(WorkerCmd::Disconnect).await;
        self.wait().await
    }

    /// Sends `signal` to the worker's process group; after the grace period, `SIGKILL`. Returns
    /// how it ended.
    pub async fn kill(&self, signal: Signal) -> Result<ExitStatus, Error> {
        let _ = self.inner.cmds.send(WorkerCmd::Kill(signal)).await;
        self.wait().await
    }

    /// Waits for the worker to exit, without asking it to.
    pub async fn wait(&self) -> Result<ExitStatus, Error> {
        let mut exit = self.inner.exit.clone();
        // The supervisor kills after the grace period; this outer deadline only guards against a
        // process the kernel cannot reap.
        let deadline = self.inner.grace + Duration::from_secs(10);
        let waited = tokio::time::timeout(deadline, exit.wait_for(|s| s.is_some())).await;
        match waited {
            Ok(Ok(s)) => Ok((*s).expect("waited for Some")),
            Ok(Err(_)) => Err(Error::WorkerGone(self.inner.id)),
            Err(_) => Err(Error::Timeout(deadline)),
        }
    }
}

enum WorkerCmd {
    Disconnect,
    Kill(Signal),
}

enum DispatchCmd {
    Fork(
        Vec<(OwnedFd, i32)>,
        oneshot::Sender<Result<WorkerHandle, Error>>,
    ),
    List(oneshot::Sender<Vec<WorkerHandle>>),
    Exited(WorkerId),
}

async fn dispatcher(
    cfg: Arc<Config>,
    mut rx: mpsc::Receiver<DispatchCmd>,
    me: mpsc::WeakSender<DispatchCmd>,
    events: mpsc::Sender<Event>,
) {
    let mut workers: BTreeMap<WorkerId, WorkerHandle> = BTreeMap::new();
    let mut next_id = 1u64;
    while let Some(cmd) = rx.recv().await {
        match cmd {
            DispatchCmd::Fork(extra, reply) => {
                let id = WorkerId(next_id);
                next_id += 1;
                let Some(me) = me.upgrade() else { break };
                let r = match check_numbers(&cfg, &extra) {
                    Ok(()) => fork(&cfg, id, &extra, events.clone(), me).await,
                    Err(e) => Err(e),
                };
                if let Ok(h) = &r {
                    workers.insert(id, h.clone());
                }
                let _ = reply.send(r);
            }
            DispatchCmd::List(reply) => {
                let _ = reply.send(workers.values().cloned().collect());
            }
            DispatchCmd::Exited(id) => {
                workers.remove(&id);
            }
        }
    }
}

struct SpawnJob {
    cmd: Command,
    runtime: tokio::runtime::Handle,
    reply: oneshot::Sender<std::io::Result<Child>>,
}

/// The process-wide spawner thread (see the module docs for why it must outlive every fork).
fn spawner() -> &'static Mutex<std::sync::mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<std::sync::mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("herd-spawner".into())
            .spawn(move || {
                for mut job in rx {
                    let _guard = job.runtime.enter();
                    let _ = job.reply.send(job.cmd.spawn());
                }
            })
            .expect("cannot start the herd-spawner thread");
        Mutex::new(tx)
    })
}

async fn spawn(cmd: Command) -> std::io::Result<Child> {
    let (tx, rx) = oneshot::channel();
    let job = SpawnJob {
        cmd,
        runtime: tokio::runtime::Handle::current(),
        reply: tx,
    };
    spawner()
        .lock()
        .map_err(|_| std::io::Error::other("spawner lock poisoned"))?
        .send(job)
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    rx.await
        .map_err(|_| std::io::Error::other("spawner dropped the job"))?
}

/// Checks that the descriptor numbers workers get are in range and distinct.
fn check_numbers(cfg: &Config, extra: &[(OwnedFd, i32)]) -> Result<(), Error> {
    let mut numbers: Vec<i32> = cfg.inherit.iter().map(|(_, at)| *at).collect();
    numbers.extend(extra.iter().map(|(_, at)| *at));
    numbers.push(cfg.channel_fd);
    numbers.sort_unstable();
    if let Some(bad) = numbers
        .iter()
        .find(|n| !(3..sys::MAX_CHILD_FD).contains(*n))
    {
        return Err(Error::Spawn(std::io::Error::other(format!(
            "descriptor number {bad} for workers is outside 3..{}",
            sys::MAX_CHILD_FD
        ))));
    }
    if numbers.windows(2).any(|w| w[0] == w[1]) {
        return Err(Error::Spawn(std::io::Error::other(
            "two descriptors for workers share one number",
        )));
    }
    Ok(())
}

async fn fork(
    cfg: &Arc<Config>,
    id: WorkerId,
    extra: &[(OwnedFd, i32)],
    events: mpsc::Sender<Event>,
    dispatch: mpsc::Sender<DispatchCmd>,
) -> Result<WorkerHandle, Error> {
    let (ours, theirs) = sys::socketpair().map_err(Error::Spawn)?;
    let mut cmd = Command::new(&cfg.program);
    cmd.args(&cfg.args)
        .envs(cfg.env.iter().map(|(k, v)| (k, v)))
        .env(env::HERD_CHANNEL_FD, cfg.channel_fd.to_string())
        .env(env::HERD_CHANNEL_CODEC, cfg.codec.as_str())
        .env(env::HERD_WORKER_ID, id.0.to_string())
        .env(env::HERD_PRIMARY_PID, std::process::id().to_string())
        .env_remove(env::NODE_CHANNEL_FD)
        .env_remove(env::NODE_CHANNEL_SERIALIZATION_MODE)
        .env_remove(env::NODE_UNIQUE_ID)
        .process_group(0)
        .kill_on_drop(true);
    if cfg.codec == Codec::NodeJson {
        cmd.env(env::NODE_CHANNEL_FD, cfg.channel_fd.to_string())
            .env(env::NODE_CHANNEL_SERIALIZATION_MODE, "json");
    }
    if cfg.capture_output {
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
    }
    let mut fds: Vec<(&OwnedFd, i32)> = vec![(&theirs, cfg.channel_fd)];
    fds.extend(cfg.inherit.iter().map(|(fd, at)| (&**fd, *at)));
    fds.extend(extra.iter().map(|(fd, at)| (fd, *at)));
    sys::prepare_child(&mut cmd, &fds);
    let mut child = spawn(cmd).await.map_err(Error::Spawn)?;
    let output = if cfg.capture_output {
        let (tx, rx) = mpsc::channel(256);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(read_lines(out, OutputStream::Stdout, tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(read_lines(err, OutputStream::Stderr, tx));
        }
        Some(rx)
    } else {
        None
    };
    drop(theirs);
    let pid = child.id().unwrap_or(0);
    let (tx, rx) = herd_wire::channel(ours, cfg.codec, cfg.limits)?;
    let ep = Endpoint::new(tx, cfg.max_pending_requests, cfg.send_timeout);
    if cfg.codec == Codec::Binary {
        ep.send_value(Kind::Hello, &Hello::new(id.0), Vec::new())
            .await?;
    }
    if let Some(hub) = &cfg.cache {
        // Subscribed before the worker can ask anything, so it misses no invalidation.
        tokio::spawn(forward_pushes(
            hub.clone(),
            Peer::new(ep.clone(), cfg.request_timeout),
        ));
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let (exit_tx, exit_rx) = watch::channel(None);
    let handle = WorkerHandle {
        inner: Arc::new(WorkerShared {
            id,
            pid,
            peer: Peer::new(ep.clone(), cfg.request_timeout),
            cmds: cmd_tx,
            exit: exit_rx,
            grace: cfg.grace,
        }),
    };
    let sup = Supervisor {
        id,
        pid,
        child,
        rx,
        ep,
        cmds: cmd_rx,
        events,
        exit: exit_tx,
        cfg: cfg.clone(),
        outbox: VecDeque::new(),
        online: cfg.codec == Codec::NodeJson,
        cache_calls: Arc::new(tokio::sync::Semaphore::new(MAX_CACHE_CALLS)),
        open: true,
        exited: None,
        kill_at: None,
        drain_until: None,
        output,
        output_until: None,
    };
    tokio::spawn(async move {
        sup.run().await;
        let _ = dispatch.send(DispatchCmd::Exited(id)).await;
    });
    Ok(handle)
}

/// What woke a supervisor.
enum Step {
    Idle,
    Exited(std::io::Result<std::process::ExitStatus>),
    Cmd(Option<WorkerCmd>),
    Frame(Result<Option<herd_wire::Frame>, herd_wire::WireError>),
    KillNow,
    DrainOver,
    NoHandshake,
    Output(Option<(OutputStream, String)>),
}

async fn recv_output(
    rx: &mut Option<mpsc::Receiver<(OutputStream, String)>>,
) -> Option<(OutputStream, String)> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

/// One worker's state machine.
struct Supervisor {
    id: WorkerId,
    pid: u32,
    child: Child,
    rx: Receiver,
    ep: Arc<Endpoint>,
    cmds: mpsc::Receiver<WorkerCmd>,
    events: mpsc::Sender<Event>,
    exit: watch::Sender<Option<ExitStatus>>,
    cfg: Arc<Config>,
    /// Events waiting for room in the event queue; while any wait, the channel is not read.
    outbox: VecDeque<Event>,
    online: bool,
    /// Bounds this worker's cache calls in flight.
    cache_calls: Arc<tokio::sync::Semaphore>,
    open: bool,
    exited: Option<ExitStatus>,
    kill_at: Option<Instant>,
    drain_until: Option<Instant>,
    /// Captured output lines, until both pipes close (or `output_until` passes after exit).
    output: Option<mpsc::Receiver<(OutputStream, String)>>,
    output_until: Option<Instant>,
}

/// Reads `pipe` line by line (at most [`MAX_OUTPUT_LINE`] bytes per piece) into `tx`; ends at
/// end-of-file, on a read error, or when nobody takes the lines.
async fn read_lines<R: tokio::io::AsyncRead + Unpin>(
    pipe: R,
    stream: OutputStream,
    tx: mpsc::Sender<(OutputStream, String)>,
) {
    use tokio::io::AsyncBufReadExt;
    let mut reader = tokio::io::BufReader::with_capacity(MAX_OUTPUT_LINE, pipe);
    let mut line: Vec<u8> = Vec::new();
    loop {
        let (done, used) = match reader.fill_buf().await {
            Ok([]) | Err(_) => {
                if !line.is_empty() {
                    let _ = tx
                        .send((stream, String::from_utf8_lossy(&line).into_owned()))
                        .await;
                }
                return;
            }
            Ok(buf) => {
                let room = MAX_OUTPUT_LINE - line.len();
                match memchr_nl(&buf[..buf.len().min(room)]) {
                    Some(i) => {
                        line.extend_from_slice(&buf[..i]);
                        (true, i + 1)
                    }
                    None => {
                        let n = buf.len().min(room);
                        line.extend_from_slice(&buf[..n]);
                        (line.len() >= MAX_OUTPUT_LINE, n)
                    }
                }
            }
        };
        reader.consume(used);
        if done {
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            line.clear();
            if tx.send((stream, text)).await.is_err() {
                return;
            }
        }
    }
}

fn memchr_nl(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

impl Supervisor {
    async fn run(mut self) {
        let id = self.id;
        self.emit(Event::Fork {
            worker: id,
            pid: self.pid,
        });
        if self.online {
            self.emit(Event::Online { worker: id });
        }
        let handshake_deadline = Instant::now() + self.cfg.handshake_timeout;
        let mut cmds_open = true;
        let mut exit_queued = false;
        loop {
            if !exit_queued && !self.open && self.output.is_none() {
                if let Some(status) = self.exited {
                    self.emit(Event::Exit { worker: id, status });
                    let _ = self.exit.send(Some(status));
                    exit_queued = true;
                }
            }
            if exit_queued && self.outbox.is_empty() {
                break;
            }
            let far = Instant::now() + Duration::from_secs(86_400);
            let step = tokio::select! {
                biased;
                permit = self.events.reserve(), if !self.outbox.is_empty() => match permit {
                    Ok(p) => {
                        p.send(self.outbox.pop_front().expect("outbox is not empty"));
                        Step::Idle
                    }
                    // Nobody listens for events any more.
                    Err(_) => {
                        self.outbox.clear();
                        Step::Idle
                    }
                },
                status = self.child.wait(), if self.exited.is_none() => Step::Exited(status),
                cmd = self.cmds.recv(), if cmds_open => Step::Cmd(cmd),
                frame = self.rx.recv(), if self.open && self.outbox.is_empty() => Step::Frame(frame),
                _ = tokio::time::sleep_until(self.kill_at.unwrap_or(far)), if self.kill_at.is_some() && self.exited.is_none() => Step::KillNow,
                _ = tokio::time::sleep_until(self.drain_until.unwrap_or(far)), if self.drain_until.is_some() && self.open => Step::DrainOver,
                _ = tokio::time::sleep_until(handshake_deadline), if !self.online && self.open => Step::NoHandshake,
                line = recv_output(&mut self.output), if self.output.is_some() && self.outbox.is_empty() => Step::Output(line),
                _ = tokio::time::sleep_until(self.output_until.unwrap_or(far)), if self.output_until.is_some() && self.output.is_some() => Step::Output(None),
            };
            match step {
                Step::Idle => {}
                Step::Exited(status) => {
                    let status = status.map(ExitStatus::from).unwrap_or(ExitStatus {
                        code: None,
                        signal: None,
                    });
                    tracing::debug!(worker = %id, %status, "worker exited");
                    self.exited = Some(status);
                    if self.open {
                        self.drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
                    }
                    self.output_until = Some(Instant::now() + OUTPUT_AFTER_EXIT);
                }
                Step::Cmd(Some(WorkerCmd::Disconnect)) => {
                    self.close_channel();
                    self.arm_kill();
                }
                Step::Cmd(Some(WorkerCmd::Kill(sig))) => {
                    self.signal(sig);
                    self.arm_kill();
                }
                Step::Cmd(None) => cmds_open = false,
                Step::Frame(Ok(Some(frame))) => self.on_frame(frame),
                Step::Frame(Ok(None)) => self.lost_channel(None),
                Step::Frame(Err(e)) => self.lost_channel(Some(e.into())),
                Step::KillNow => {
                    tracing::warn!(worker = %id, "worker did not exit within its grace period: SIGKILL");
                    self.signal(Signal::KILL);
                    self.kill_at = None;
                }
                Step::DrainOver => {
                    // The process is gone but something else holds its channel open.
                    self.drain_until = None;
                    self.lost_channel(None);
                }
                Step::NoHandshake => {
                    let why = format!("no handshake within {:?}", self.cfg.handshake_timeout);
                    self.lost_channel(Some(Error::Handshake(why)));
                }
                Step::Output(Some((stream, line))) => self.emit(Event::Output {
                    worker: id,
                    stream,
                    line,
                }),
                // Both pipes closed, or the worker is gone and its output time is over.
                Step::Output(None) => self.output = None,
            }
        }
    }

    /// Queues an event, keeping order: straight into the event queue when nothing is waiting
    /// and there is room, into the outbox otherwise.
    fn emit(&mut self, ev: Event) {
        if self.outbox.is_empty() {
            match self.events.try_send(ev) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(ev)) => self.outbox.push_back(ev),
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        } else {
            self.outbox.push_back(ev);
        }
    }

    fn on_frame(&mut self, frame: herd_wire::Frame) {
        let id = self.id;
        if !self.online {
            match self.handshake(frame) {
                Ok(()) => {
                    self.online = true;
                    self.emit(Event::Online { worker: id });
                }
                Err(e) => self.lost_channel(Some(e)),
            }
            return;
        }
        match self.ep.route(frame) {
            Ok(Routed::Incoming(Incoming::Message(message))) => {
                self.emit(Event::Message {
                    worker: id,
                    message,
                });
            }
            Ok(Routed::Incoming(Incoming::Request(request))) => {
                self.emit(Event::Request {
                    worker: id,
                    request,
                });
            }
            Ok(Routed::Control(Control::Listening { address })) => {
                self.emit(Event::Listening {
                    worker: id,
                    address,
                });
            }
            Ok(Routed::Control(Control::Ready)) => self.emit(Event::Ready { worker: id }),
            Ok(Routed::Control(
                Control::Unknown | Control::CacheInvalidate { .. } | Control::CacheClear { .. },
            )) => {
                tracing::debug!(worker = %id, "unknown control notice ignored");
            }
            Ok(Routed::Cache(request)) => self.cache_call(request),
            Ok(Routed::Handled) => {}
            Err(e) => self.lost_channel(Some(e)),
        }
    }

    fn cache_call(&self, request: Request) {
        let refuse = |request: Request, why: &'static str| {
            tokio::spawn(async move {
                let _ = request.reply_error(why).await;
            });
        };
        let Some(hub) = &self.cfg.cache else {
            return refuse(request, "this primary serves no cache");
        };
        match self.cache_calls.clone().try_acquire_owned() {
            Ok(permit) => hub.serve(self.id, self.cfg.codec, request, permit),
            Err(_) => refuse(request, "too many cache calls in flight"),
        }
    }

    fn handshake(&self, frame: herd_wire::Frame) -> Result<(), Error> {
        if frame.kind != Kind::Hello {
            return Err(Error::Handshake(format!(
                "first frame is {:?}, not a hello",
                frame.kind
            )));
        }
        let hello: Hello = herd_wire::decode_value(frame.format, &frame.payload)
            .map_err(|e| Error::Handshake(format!("unreadable hello: {e}")))?;
        Hello::new(self.id.0)
            .negotiate(&hello)
            .map_err(|e| Error::Handshake(e.to_string()))?;
        if hello.worker_id != self.id.0 {
            return Err(Error::Handshake(format!(
                "worker {} claims to be worker {}",
                self.id, hello.worker_id
            )));
        }
        if hello.pid != self.pid {
            tracing::debug!(worker = %self.id, pid = self.pid, claimed = hello.pid, "worker reports another pid (a wrapper process?)");
        }
        Ok(())
    }

    /// The channel is gone: at end-of-stream (`None`) or after an error, which is reported. Our
    /// side is closed too, so the worker reads end-of-stream.
    fn lost_channel(&mut self, error: Option<Error>) {
        if !self.open {
            return;
        }
        self.open = false;
        self.drain_until = None;
        self.ep.fail_all();
        if let Some(error) = error {
            tracing::warn!(worker = %self.id, error = %crate::error::chain(&error), "closing the worker's channel");
            self.emit(Event::Error {
                worker: self.id,
                error,
            });
            // A worker that broke the protocol cannot be managed any more: it gets the grace
            // period to exit on its own (it reads end-of-stream), then SIGKILL.
            self.arm_kill();
        }
        // Either way nothing more can be said to the worker: sends fail from now on.
        self.close_channel();
        self.emit(Event::Disconnect { worker: self.id });
    }

    fn close_channel(&self) {
        let tx = self.ep.sender().clone();
        // The queue may be full of frames the worker is not reading; the grace period bounds it.
        tokio::spawn(async move {
            let _ = tx.close();
        });
    }

    fn arm_kill(&mut self) {
        if self.exited.is_none() && self.kill_at.is_none() {
            self.kill_at = Some(Instant::now() + self.cfg.grace);
        }
    }

    fn signal(&self, sig: Signal) {
        if self.exited.is_some() {
            return;
        }
        let Some(pid) = Pid::from_raw(self.pid as i32) else {
            return;
        };
        if let Err(e) = rustix::process::kill_process_group(pid, sig) {
            // The group may be gone already while the process is not yet reaped.
            tracing::debug!(worker = %self.id, error = %e, "signal to process group failed; trying the process");
            let _ = rustix::process::kill_process(pid, sig);
        }
    }
}

/// Sends the hub's invalidations to one worker, in order. A worker too slow to keep up is told
/// to drop its whole view instead. Ends when the worker's channel closes.
async fn forward_pushes(hub: Hub, peer: Peer) {
    let mut pushes = hub.subscribe();
    use tokio::sync::broadcast::error::RecvError;
    loop {
        // Ends with the worker's channel, not at the next push after it: a source that never
        // invalidates would otherwise keep every dead worker's channel open.
        let next = tokio::select! {
            next = pushes.recv() => next,
            () = peer.endpoint().sender().closed() => return,
        };
        let control = match next {
            Ok(Push::Invalidate { keys, seq }) => Control::CacheInvalidate { keys, seq },
            Ok(Push::Clear { seq }) => Control::CacheClear { seq },
            Err(RecvError::Lagged(_)) => Control::CacheClear {
                seq: hub.current_seq(),
            },
            Err(RecvError::Closed) => return,
        };
        if peer.control(&control).await.is_err() {
            return;
        }
    }
}
