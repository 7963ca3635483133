//! One worker's supervisor: a task and a state machine that `select!`s over the child's exit,
//! the frames on its channel, commands from its handles (disconnect, kill), captured output and
//! deadlines (handshake, grace before `SIGKILL`, draining the channel after exit). It alone emits
//! the worker's events, so they come in order: `Fork, Online, (Listening|Ready|Message|Request|
//! Output)*, [Error], Disconnect, Exit`.
//!
//! **Backpressure**: events go into one bounded queue shared by all workers. When it is full the
//! supervisor parks the event in a local outbox and stops reading the worker's channel until
//! there is room; lifecycle handling (exit, kill, deadlines) goes on meanwhile. Likewise a cache
//! call needs one of the worker's [`CacheCalls`] permits: when none is free the call is parked
//! and the channel is not read until one is.
//!
//! **Containment**: a decode error, a failed handshake or a protocol violation becomes
//! [`Event::Error`]; the channel is closed both ways, pending requests fail at once, and the
//! worker gets the grace period before `SIGKILL`.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herd_wire::{Codec, Frame, Kind, Receiver};
use rustix::process::{Pid, Signal};
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::config::{Config, Stop};
use super::event::{Event, OutputStream};
use super::handle::{WorkerCmd, WorkerShared};
use super::output;
use super::reaper;
use crate::cache::serve::{Admission, CacheCalls};
use crate::ids::{ExitStatus, WorkerId};
use crate::ipc::control::Control;
use crate::ipc::endpoint::Routed;
use crate::ipc::{handshake, Incoming, Message, Peer, Request};
use crate::node::session::{NodeEvent, Session};
use crate::Error;

/// How long a worker that closed its channel after a stop request may take to exit by itself
/// before it gets the stop signal.
const STOP_LINGER: Duration = Duration::from_secs(1);

/// How long a worker's channel is drained after the worker exited, for its last messages.
const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// What woke a supervisor.
enum Step {
    Idle,
    Exited(std::io::Result<std::process::ExitStatus>),
    Cmd(Option<WorkerCmd>),
    Frame(Result<Option<herd_wire::Frame>, herd_wire::WireError>),
    KillNow,
    StopSignalNow,
    DrainOver,
    NoHandshake,
    Output(Option<(OutputStream, String)>),
    CachePermit(Option<Admission>),
}

/// One worker's state machine.
pub(super) struct Supervisor {
    id: WorkerId,
    pid: u32,
    /// What the worker's handles share (the exit status and counters are published there).
    shared: Arc<WorkerShared>,
    child: Child,
    rx: Receiver,
    peer: Peer,
    cmds: mpsc::Receiver<WorkerCmd>,
    events: mpsc::Sender<Event>,
    exit: watch::Sender<Option<ExitStatus>>,
    cfg: Arc<Config>,
    /// Events waiting for room in the event queue; while any wait, the channel is not read.
    outbox: VecDeque<Event>,
    online: bool,
    /// Bounds this worker's cache calls in flight.
    cache_calls: CacheCalls,
    /// A cache call waiting for a permit; while it waits, the channel is not read.
    parked_call: Option<Request>,
    /// Its request's length, which its admission is charged.
    parked_len: usize,
    open: bool,
    exited: Option<ExitStatus>,
    kill_at: Option<Instant>,
    /// When a worker that closed its channel after a stop request gets the stop signal if it
    /// still lives.
    stop_signal_at: Option<Instant>,
    drain_until: Option<Instant>,
    /// Captured output lines, until both pipes close (or `output_until` passes after exit).
    output: Option<mpsc::Receiver<(OutputStream, String)>>,
    output_until: Option<Instant>,
    /// A Node worker's side of Node's cluster protocol (json codec only).
    node: Option<Session>,
    /// It was asked to stop (a disconnect).
    stopping: bool,
}

impl Supervisor {
    #[allow(clippy::too_many_arguments)]
    pub(super) fn new(
        shared: Arc<WorkerShared>,
        child: Child,
        rx: Receiver,
        cmds: mpsc::Receiver<WorkerCmd>,
        events: mpsc::Sender<Event>,
        exit: watch::Sender<Option<ExitStatus>>,
        cfg: Arc<Config>,
        output: Option<mpsc::Receiver<(OutputStream, String)>>,
        node: Option<Session>,
    ) -> Supervisor {
        Supervisor {
            id: shared.id,
            pid: shared.pid,
            peer: shared.peer.clone(),
            shared,
            child,
            rx,
            cmds,
            events,
            exit,
            online: cfg.codec == Codec::NodeJson,
            cfg,
            outbox: VecDeque::new(),
            cache_calls: CacheCalls::default(),
            parked_call: None,
            parked_len: 0,
            open: true,
            exited: None,
            kill_at: None,
            stop_signal_at: None,
            drain_until: None,
            output,
            output_until: None,
            node,
            stopping: false,
        }
    }

    pub(super) async fn run(mut self) {
        let id = self.id;
        self.emit(Event::Fork {
            worker: id,
            pid: self.pid,
        });
        if self.online {
            self.emit(Event::Online { worker: id });
        }
        let handshake_deadline = crate::deadline::from_now(self.cfg.handshake_timeout);
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
                permit = self.cache_calls.admit(self.parked_len), if self.open && self.parked_call.is_some() => Step::CachePermit(permit),
                frame = self.rx.recv(), if self.open && self.outbox.is_empty() && self.parked_call.is_none() => Step::Frame(frame),
                _ = tokio::time::sleep_until(self.kill_at.unwrap_or(far)), if self.kill_at.is_some() && self.exited.is_none() => Step::KillNow,
                _ = tokio::time::sleep_until(self.stop_signal_at.unwrap_or(far)), if self.stop_signal_at.is_some() && self.exited.is_none() => Step::StopSignalNow,
                _ = tokio::time::sleep_until(self.drain_until.unwrap_or(far)), if self.drain_until.is_some() && self.open => Step::DrainOver,
                _ = tokio::time::sleep_until(handshake_deadline), if !self.online && self.open => Step::NoHandshake,
                line = output::recv_output(&mut self.output), if self.output.is_some() && self.outbox.is_empty() => Step::Output(line),
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
                    self.kill_group_after_exit();
                    if self.open {
                        self.drain_until = Some(Instant::now() + DRAIN_AFTER_EXIT);
                    }
                    self.output_until = Some(Instant::now() + output::OUTPUT_AFTER_EXIT);
                }
                Step::Cmd(Some(WorkerCmd::Disconnect)) => {
                    self.stopping = true;
                    if let (Stop::Message(value), true) = (&self.cfg.stop, self.open) {
                        if let Ok((format, bytes)) = herd_wire::encode_value(self.cfg.codec, value)
                        {
                            self.peer
                                .send_soon(Frame::new(Kind::Message, format, bytes));
                        }
                    }
                    // A Node cluster worker is asked, as Node's primary asks it: it closes its
                    // servers, finishes its connections, then closes the channel itself (and is
                    // signalled if still alive then: see `lost_channel`).
                    let asked =
                        self.open && self.node.as_mut().is_some_and(|n| n.disconnect(&self.peer));
                    if !asked {
                        self.close_channel();
                        self.stop_signal();
                    }
                    self.arm_kill();
                }
                Step::Cmd(Some(WorkerCmd::Kill(sig))) => {
                    self.signal(sig);
                    self.arm_kill();
                }
                Step::Cmd(None) => cmds_open = false,
                Step::Frame(Ok(Some(frame))) => {
                    self.on_frame(frame);
                    self.shared
                        .dropped_internal
                        .store(self.rx.ignored_internal(), Ordering::Relaxed);
                }
                Step::CachePermit(permit) => {
                    if let (Some(request), Some(permit)) = (self.parked_call.take(), permit) {
                        self.serve_cache_call(request, permit);
                    }
                }
                Step::Frame(Ok(None)) => self.lost_channel(None),
                Step::Frame(Err(e)) => self.lost_channel(Some(e.into())),
                Step::StopSignalNow => {
                    self.stop_signal_at = None;
                    self.stop_signal();
                }
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
        match self.peer.route(frame) {
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
            Ok(Routed::Node(frame)) => self.node_line(frame),
            Ok(Routed::Handled) => {}
            Err(e) => self.lost_channel(Some(e)),
        }
    }

    /// One of Node's internal lines: answered by the worker's cluster session.
    fn node_line(&mut self, frame: herd_wire::Frame) {
        let Some(node) = self.node.as_mut() else {
            return;
        };
        match node.on_frame(frame, &self.peer) {
            Ok(Some(NodeEvent::Listening(address))) => self.emit(Event::Listening {
                worker: self.id,
                address,
            }),
            Ok(Some(NodeEvent::Message(frame))) => self.emit(Event::Message {
                worker: self.id,
                message: Message::from_frame(frame),
            }),
            Ok(None) => {}
            Err(e) => self.lost_channel(Some(Error::Protocol(e.to_string()))),
        }
    }

    /// A cache call: served at once if a permit is free, else parked (backpressure).
    fn cache_call(&mut self, request: Request) {
        let len = request.message().bytes().len();
        match self.cache_calls.try_admit(len) {
            Some(admission) => self.serve_cache_call(request, admission),
            None => {
                self.parked_len = len;
                self.parked_call = Some(request);
            }
        }
    }

    fn serve_cache_call(&self, request: Request, admission: Admission) {
        let hub = self.cfg.cache.as_ref();
        self.cache_calls
            .serve(hub, self.id, self.cfg.codec, request, admission);
    }

    fn handshake(&self, frame: herd_wire::Frame) -> Result<(), Error> {
        let hello = handshake::check(frame, self.id)?;
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
        self.peer.fail_all();
        if let Some(node) = &self.node {
            node.channel_lost();
        }
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
        if self.stopping && self.exited.is_none() {
            // A worker asked to stop closed its channel (its servers are done). It normally exits
            // a moment later; one that lives on (a timer or a pool keeps it) gets the signal.
            let linger = (self.cfg.grace / 4).min(STOP_LINGER);
            self.stop_signal_at = Some(crate::deadline::from_now(linger));
        }
        self.emit(Event::Disconnect { worker: self.id });
    }

    /// The stop signal, if the cluster has one, to a worker asked to stop.
    fn stop_signal(&self) {
        if let Stop::Signal(sig) = self.cfg.stop {
            tracing::debug!(worker = %self.id, signal = ?sig, "stop signal");
            self.signal(sig);
        }
    }

    /// Closes our side after what is queued: the worker reads end-of-stream.
    fn close_channel(&self) {
        self.peer.close();
    }

    fn arm_kill(&mut self) {
        if self.exited.is_none() && self.kill_at.is_none() {
            self.kill_at = Some(crate::deadline::from_now(self.cfg.grace));
        }
    }

    /// Once the worker has been reaped: `SIGKILL` to what is left of its process group (its
    /// id is the worker's pid), whatever the worker started and left behind. A group's id is
    /// not reused while any member lives, so this reaches only them; when nobody is left the
    /// answer is `ESRCH`.
    fn kill_group_after_exit(&self) {
        reaper::release(self.pid);
        let Some(pid) = Pid::from_raw(self.pid as i32) else {
            return;
        };
        match rustix::process::kill_process_group(pid, Signal::KILL) {
            Ok(()) => {
                tracing::debug!(worker = %self.id, "killed what the worker left in its process group")
            }
            Err(rustix::io::Errno::SRCH) => {}
            Err(e) => {
                tracing::debug!(worker = %self.id, error = %e, "cannot kill the worker's process group")
            }
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
