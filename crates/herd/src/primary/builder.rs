//! [`ClusterBuilder`]: a cluster's settings, and starting it.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herd_wire::{Codec, Limits};
use tokio::sync::mpsc;

use super::config::{check_numbers, first_free_fd, Config, StopBy};
use super::dispatcher::dispatcher;
use super::{join_here, Cluster};
use crate::cache::Hub;
use crate::ipc::endpoint::SEND_TIMEOUT;
use crate::node::{self, balance::Balance, rescue::Rescue};
use crate::Error;

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
    channel_fd: Option<i32>,
    inherit: Vec<(Arc<OwnedFd>, i32)>,
    listeners: Vec<Arc<OwnedFd>>,
    capture_output: bool,
    send_timeout: Duration,
    stop: StopBy,
    subreaper: bool,
    cgroup: Option<PathBuf>,
    /// [`ClusterBuilder::workers`] was called (a service refuses a count it would not honour).
    workers_given: bool,
    balance: Balance,
    rescue: Rescue,
    unresponsive: Option<Duration>,
    stop_settle: Duration,
}

/// [`ClusterBuilder::stop_settle`]'s default.
pub(crate) const STOP_SETTLE: Duration = Duration::from_secs(1);

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
            channel_fd: None,
            inherit: Vec::new(),
            listeners: Vec::new(),
            capture_output: false,
            stop: StopBy::EndOfStream,
            send_timeout: SEND_TIMEOUT,
            subreaper: false,
            cgroup: None,
            workers_given: false,
            balance: Balance::default(),
            rescue: Rescue::default(),
            unresponsive: None,
            stop_settle: STOP_SETTLE,
        }
    }
}

impl ClusterBuilder {
    /// How many workers [`ClusterBuilder::start`] forks (default: one per CPU).
    pub fn workers(mut self, n: usize) -> Self {
        self.workers = n;
        self.workers_given = true;
        self
    }

    /// The count given with [`ClusterBuilder::workers`], if one was.
    pub(crate) fn workers_given(&self) -> Option<usize> {
        self.workers_given.then_some(self.workers)
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

    /// Replaces hung workers (default `None`: off). An online worker is pinged on its channel
    /// every third of `limit` (at most every 10 s); once it has answered one ping, a worker
    /// that then leaves a ping unanswered for `limit`, sending nothing (stopped, or its event
    /// loop blocked) is reported
    /// ([`Event::Unresponsive`](crate::Event::Unresponsive)), taken out of balancing and killed.
    /// herd's own workers answer from their channel's reader task; a Node worker (json codec)
    /// answers from its event loop through a preload herd adds to its `NODE_OPTIONS` (after the
    /// user's own). A program that never answers is never judged.
    pub fn unresponsive(mut self, limit: Option<Duration>) -> Self {
        self.unresponsive = limit;
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

    /// The descriptor number of the channel in workers (default: 3, Node's, or the first number
    /// after the listeners and inherited descriptors).
    pub fn channel_fd(mut self, fd: i32) -> Self {
        self.channel_fd = Some(fd);
        self
    }

    /// Every worker gets this listening socket (a `std::net::TcpListener`, a
    /// `std::os::unix::net::UnixListener`, any socket as `OwnedFd`), for all its life and across
    /// restarts: the primary keeps it, so connections queue while workers come and go. Workers
    /// take theirs with [`crate::Worker::listeners`], in the order given here. The channel moves
    /// past them by itself.
    pub fn listener(mut self, socket: impl Into<OwnedFd>) -> Self {
        self.listeners.push(Arc::new(socket.into()));
        self
    }

    /// Every worker inherits `fd` as descriptor number `at` (a listening socket shared by all
    /// workers, say). The primary keeps its own copy for later forks.
    pub fn inherit_fd(mut self, fd: impl Into<Arc<OwnedFd>>, at: i32) -> Self {
        self.inherit.push((fd.into(), at));
        self
    }

    /// Reads each worker's stdout and stderr and reports them line by line as
    /// [`Event::Output`](crate::Event::Output) (default: workers write to the primary's own stdout and stderr).
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

    /// How a worker is told to stop ([`crate::WorkerHandle::disconnect`]) besides its channel
    /// closing. [`StopBy::Signal`] sends the signal to its process group once its channel is
    /// closed — at once for a program that does not speak Node's cluster protocol; for a Node
    /// cluster worker, after it closed its servers, finished its connections and closed the
    /// channel, if it is still alive then (a timer or a pool keeps it) — so its own shutdown
    /// handlers run. [`StopBy::Message`] sends the message first (PM2's `'shutdown'`), then
    /// disconnects it as usual. The grace period still ends with `SIGKILL`. Default:
    /// [`StopBy::EndOfStream`] (herd's own workers exit at end-of-stream); `herd run` uses
    /// `SIGTERM`.
    pub fn stop_by(mut self, stop: StopBy) -> Self {
        self.stop = stop;
        self
    }

    /// How long after a stop request a Node cluster worker whose program listens for the
    /// [`StopBy::Signal`] signal gets it even though its channel is still open (default 1 s;
    /// `herd run --stop-settle`). Node closes a worker's channel only once its servers are
    /// closed, and a server holding long-lived connections (a WebSocket, an SSE stream) never
    /// closes by itself: its `process.on('SIGTERM')` hook is what ends them. herd's preload
    /// tells it which signals the program listens for; a program with no such listener gets
    /// the signal only once its channel is closed, as before (Node's default action for it is
    /// to die at once, in the middle of its requests). The signal is sent once.
    pub fn stop_settle(mut self, settle: Duration) -> Self {
        self.stop_settle = settle;
        self
    }

    /// Capacity of the event queue; when full, workers' channels are not read (backpressure).
    pub fn event_capacity(mut self, n: usize) -> Self {
        self.events = n.max(1);
        self
    }

    /// Makes this process a child subreaper (`PR_SET_CHILD_SUBREAPER`) when the cluster starts,
    /// and reaps what it adopts (default: off). Processes a worker started and left behind
    /// then re-parent to this process instead of pid 1, so the `SIGKILL` each worker's process
    /// group gets once the worker has exited reaches them and they are reaped here.
    ///
    /// This changes the whole process, for good: the reaper reaps every zombie child that herd
    /// did not fork and that is not in this process's own process group. Turn it on only if
    /// nothing else in the process waits for children of its own that run in a process group
    /// of their own. `herd run` turns it on.
    pub fn subreaper(mut self, on: bool) -> Self {
        self.subreaper = on;
        self
    }

    /// Puts every worker, before it runs, into the cgroup v2 directory `dir` (which must exist
    /// and be writable); what a worker starts is then in it too, wherever it moves in the
    /// process tree, so `cgroup.kill` reaches it all. herd does not kill the cgroup itself: that
    /// is for whoever outlives this process (`herd run` starts a watchdog for it).
    pub fn cgroup(mut self, dir: impl Into<PathBuf>) -> Self {
        self.cgroup = Some(dir.into());
        self
    }

    /// How connections to Node workers' servers are spread: [`Balance::Shared`] (default,
    /// every worker accepts on the socket) or [`Balance::RoundRobin`] (herd accepts and hands
    /// each to the next worker, as Node's own primary does on Linux). Applies to the sockets
    /// Node cluster workers ask herd for (`server.listen`).
    pub fn balance(mut self, balance: Balance) -> Self {
        self.balance = balance;
        self
    }

    /// What is done with a retiring Node cluster worker's client connections on the sockets
    /// herd shares (a reload, a scale-down, a stop): [`Rescue::End`] (default: kept open when
    /// the worker lets go of them and handed on with their next request, and a worker left
    /// holding only connections whose next request waits is ended after half its grace
    /// period), [`Rescue::Hold`] (kept and handed on, never ended early) or [`Rescue::Off`].
    pub fn rescue(mut self, rescue: Rescue) -> Self {
        self.rescue = rescue;
        self
    }

    /// Starts the dispatcher and forks the workers. Must be called inside a tokio runtime.
    ///
    /// If a fork fails, the workers already forked are killed (and reaped) before the error is
    /// returned: a failed start leaves no process behind.
    pub async fn start(self) -> Result<Cluster, Error> {
        let program = match self.program {
            Some(p) => p,
            None => std::env::current_exe().map_err(Error::Spawn)?,
        };
        let args = self
            .args
            .unwrap_or_else(|| std::env::args_os().skip(1).collect());
        let cgroup_procs = match &self.cgroup {
            Some(dir) => {
                let procs = std::fs::OpenOptions::new()
                    .write(true)
                    .open(dir.join("cgroup.procs"))
                    .map_err(|e| {
                        Error::Spawn(std::io::Error::new(
                            e.kind(),
                            format!("cgroup {}: {e}", dir.display()),
                        ))
                    })?;
                Some(Arc::new(OwnedFd::from(procs)))
            }
            None => None,
        };
        let preload = match (self.unresponsive, &self.stop, self.codec) {
            (Some(_), _, Codec::NodeJson) | (_, StopBy::Signal(_), Codec::NodeJson) => Some(
                Arc::new(node::preload::Preload::write().map_err(Error::Spawn)?),
            ),
            _ => None,
        };
        let cfg = Arc::new(Config {
            program,
            args,
            env: self.env,
            codec: self.codec,
            limits: self.limits,
            handshake_timeout: self.handshake_timeout,
            grace: self.grace,
            request_timeout: self.request_timeout,
            cache: self.cache,
            channel_fd: self.channel_fd.unwrap_or_else(|| {
                first_free_fd(self.listeners.len(), self.inherit.iter().map(|(_, at)| *at))
            }),
            inherit: self.inherit,
            listeners: self.listeners,
            capture_output: self.capture_output,
            send_timeout: self.send_timeout,
            node: node::session::Shared::new(self.balance, self.rescue),
            stop: self.stop,
            cgroup_procs,
            preload,
            unresponsive: self.unresponsive,
            stop_settle: self.stop_settle,
        });
        check_numbers(&cfg, &[])?;
        if self.subreaper {
            super::reaper::enable().map_err(Error::Spawn)?;
        }
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
        let cluster = Cluster::new(cmd_tx, events_rx, cfg.node.balancer.clone());
        let mut forked = Vec::new();
        for _ in 0..self.workers {
            match cluster.fork().await {
                Ok(w) => forked.push(w),
                Err(e) => {
                    join_here(forked.iter().map(|w| w.kill(crate::Signal::KILL))).await;
                    return Err(e);
                }
            }
        }
        Ok(cluster)
    }
}
