//! One worker's supervisor: the async shell around the worker's [`Life`], a pure state
//! machine. The task `select!`s over the child's exit, the frames on its channel, commands from
//! its handles (disconnect, kill), captured output and the life's next deadline, hands each to
//! the life as an [`Input`] and runs the [`Effect`]s it answers. It alone emits the worker's
//! events, so they come in order: `Fork, Online, (Listening|Ready|Message|Request|Output)*,
//! [Unresponsive], [Error], Disconnect, Exit`.
//!
//! **Backpressure**: events go into one bounded queue shared by all workers. When it is full the
//! supervisor parks the event in a local outbox and stops reading the worker's channel until
//! there is room; lifecycle handling (exit, kill, deadlines) goes on meanwhile. Likewise a cache
//! call needs admission among the worker's [`CacheCalls`] (calls and bytes): when there is none
//! the call is parked and the channel is not read until there is.
//!
//! **Rescue**: a retiring Node worker's connections ([`crate::Rescue`]) are held by a
//! [`Rescuer`]; the life says what to do with them (`life::retire`), and each blocking step
//! runs as the one job out, polled here beside everything else, its outcome an input.
//!
//! **Containment**: a decode error, a failed handshake or a protocol violation ends the channel
//! with an error ([`Event::Error`]); the channel is closed both ways, pending requests fail at
//! once, and the worker gets the grace period before `SIGKILL`.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use herd_wire::{Codec, Frame, Kind, Receiver};
use rustix::process::{Pid, Signal};
use tokio::process::Child;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::config::{Config, StopBy};
use super::event::{Event, OutputStream};
use super::handle::{WorkerCmd, WorkerShared};
use super::life::retire::{Outcome, Step as RetireStep};
use super::life::{Effect, Input, Life, Rules, StopWith};
use super::output;
use super::reaper;
use crate::cache::serve::{Admission, CacheCalls};
use crate::ids::{ExitStatus, WorkerId};
use crate::ipc::control::Control;
use crate::ipc::endpoint::Routed;
use crate::ipc::{handshake, Incoming, Message, Peer, Request};
use crate::node::rescue::{Found, Held, Job, Rescuer};
use crate::node::session::{Asked, NodeEvent, Session};
use crate::Error;

/// What woke a supervisor.
enum Step {
    Idle,
    Exited(std::io::Result<std::process::ExitStatus>),
    Cmd(Option<WorkerCmd>),
    Frame(Result<Option<herd_wire::Frame>, herd_wire::WireError>),
    Deadline,
    Output(Option<(OutputStream, String)>),
    CachePermit(Option<Admission>),
    /// A rescue job came back with its connections and what it found.
    Rescued(Vec<Held>, Found),
    /// Every connection sent to the retiring worker is answered for.
    Answered,
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
    /// Its life: phases and timers.
    life: Life,
    /// Bounds this worker's cache calls in flight.
    cache_calls: CacheCalls,
    /// A cache call waiting for a permit; while it waits, the channel is not read.
    parked_call: Option<Request>,
    /// Its request's length, which its admission is charged.
    parked_len: usize,
    /// Captured output lines, until both pipes close (or the life lets them go after exit).
    output: Option<mpsc::Receiver<(OutputStream, String)>>,
    /// A Node worker's side of Node's cluster protocol (json codec only).
    node: Option<Session>,
    /// Effects the life answered, not yet run (an effect can lead to another input).
    effects: VecDeque<Effect>,
    /// A retiring Node worker's rescue: the connections held for it (`node::rescue`).
    rescuer: Option<Rescuer>,
    /// The rescue's job out, at most one (the life waits for it).
    job: Option<Job>,
    /// Waits until the retiring worker's connections sent are answered for (the life bounds it).
    answering: Option<Pin<Box<dyn Future<Output = ()> + Send>>>,
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
        let rules = Rules {
            grace: cfg.grace,
            handshake_timeout: cfg.handshake_timeout,
            stop: match cfg.stop {
                StopBy::EndOfStream => StopWith::EndOfStream,
                StopBy::Signal(sig) => StopWith::Signal(sig.to_rustix()),
                StopBy::Message(_) => StopWith::Message,
            },
            online_at_start: cfg.codec == Codec::NodeJson,
            node: node.is_some(),
            unresponsive: cfg.unresponsive,
            rescue: cfg.node.rescue,
            settle: cfg.stop_settle,
        };
        let (life, first) = Life::start(rules, Instant::now(), output.is_some());
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
            life,
            effects: first.into(),
            cfg,
            outbox: VecDeque::new(),
            cache_calls: CacheCalls::default(),
            parked_call: None,
            parked_len: 0,
            output,
            node,
            rescuer: None,
            job: None,
            answering: None,
        }
    }

    pub(super) async fn run(mut self) {
        let id = self.id;
        // Fork first, then what the life began with (a Node worker is online at once).
        let first: Vec<Effect> = self.effects.drain(..).collect();
        self.emit(Event::Fork {
            worker: id,
            pid: self.pid,
        });
        self.run_effects(first);
        let mut cmds_open = true;
        let mut reading = true;
        loop {
            if self.life.done() && self.outbox.is_empty() {
                break;
            }
            let far = Instant::now() + Duration::from_secs(86_400);
            let open = self.life.channel_open();
            // While the channel is not read (backpressure) no ping's answer can arrive.
            let reads = open && self.outbox.is_empty() && self.parked_call.is_none();
            if reads != reading && open {
                reading = reads;
                let effects = self.life.handle(Instant::now(), Input::Reading(reads));
                self.run_effects(effects);
            }
            let deadline = self.life.next_deadline();
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
                status = self.child.wait(), if self.life.running() => Step::Exited(status),
                (held, found) = out(&mut self.job), if self.job.is_some() => Step::Rescued(held, found),
                cmd = self.cmds.recv(), if cmds_open => Step::Cmd(cmd),
                permit = self.cache_calls.admit(self.parked_len), if open && self.parked_call.is_some() => Step::CachePermit(permit),
                frame = self.rx.recv(), if open && self.outbox.is_empty() && self.parked_call.is_none() => Step::Frame(frame),
                _ = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => Step::Deadline,
                line = output::recv_output(&mut self.output), if self.output.is_some() && self.outbox.is_empty() => Step::Output(line),
                () = out(&mut self.answering), if self.answering.is_some() => Step::Answered,
            };
            let input = match step {
                Step::Idle => None,
                Step::Exited(status) => {
                    let status = status.map(ExitStatus::from).unwrap_or(ExitStatus {
                        code: None,
                        signal: None,
                    });
                    tracing::debug!(worker = %id, %status, "worker exited");
                    Some(Input::Exited(status))
                }
                Step::Cmd(Some(WorkerCmd::Disconnect)) => Some(Input::Stop),
                Step::Cmd(Some(WorkerCmd::Kill(sig))) => Some(Input::Kill(sig.to_rustix())),
                Step::Cmd(None) => {
                    cmds_open = false;
                    None
                }
                Step::Frame(Ok(Some(frame))) => {
                    if self.cfg.unresponsive.is_some() && self.life.been_online() {
                        let effects = self.life.handle(Instant::now(), Input::Heard);
                        self.run_effects(effects);
                    }
                    let input = self.on_frame(frame);
                    self.shared
                        .dropped_internal
                        .store(self.rx.ignored_internal(), Ordering::Relaxed);
                    input
                }
                Step::Frame(Ok(None)) => Some(Input::ChannelEnded(None)),
                Step::Frame(Err(e)) => Some(Input::ChannelEnded(Some(e.into()))),
                Step::CachePermit(permit) => {
                    if let (Some(request), Some(permit)) = (self.parked_call.take(), permit) {
                        self.serve_cache_call(request, permit);
                    }
                    None
                }
                Step::Deadline => Some(Input::Tick),
                Step::Output(Some((stream, line))) => {
                    self.emit(Event::Output {
                        worker: id,
                        stream,
                        line,
                    });
                    None
                }
                Step::Output(None) => Some(Input::OutputEnded),
                Step::Rescued(held, found) => {
                    self.job = None;
                    if let Some(r) = &mut self.rescuer {
                        r.put_back(held);
                    }
                    Some(Input::Rescue(match found {
                        Found::Grabbed { held, can_end } => Outcome::Grabbed { held, can_end },
                        Found::Looked { held } => Outcome::Looked { held },
                        Found::LookFailed => Outcome::LookFailed,
                        Found::Tried { verdict, stuck } => Outcome::Tried { verdict, stuck },
                    }))
                }
                Step::Answered => {
                    self.answering = None;
                    Some(Input::Rescue(Outcome::Answered))
                }
            };
            if let Some(input) = input {
                let effects = self.life.handle(Instant::now(), input);
                self.run_effects(effects);
            }
        }
    }

    /// Runs the life's effects in order, and those of any input they lead to.
    fn run_effects(&mut self, effects: Vec<Effect>) {
        self.effects.extend(effects);
        while let Some(effect) = self.effects.pop_front() {
            if let Some(input) = self.run_effect(effect) {
                let more = self.life.handle(Instant::now(), input);
                self.effects.extend(more);
            }
        }
    }

    fn run_effect(&mut self, effect: Effect) -> Option<Input> {
        let id = self.id;
        match effect {
            Effect::Online => self.emit(Event::Online { worker: id }),
            Effect::SendStopMessage => {
                if let StopBy::Message(value) = &self.cfg.stop {
                    if let Ok((format, bytes)) = herd_wire::encode_value(self.cfg.codec, value) {
                        self.peer
                            .send_soon(Frame::new(Kind::Message, format, bytes));
                    }
                }
            }
            Effect::AskNodeDisconnect => {
                let asked = self.node.as_mut().map(|n| n.disconnect(&self.peer));
                match asked {
                    None | Some(Asked::Declined) => return Some(Input::NodeDeclined),
                    Some(Asked::Sent) => {}
                    Some(Asked::Retiring(rescuer)) => {
                        // The first rescue is kept (it may hold connections).
                        self.rescuer.get_or_insert(rescuer);
                        return Some(Input::Retiring);
                    }
                }
            }
            Effect::Rescue(step) => return self.rescue(step),
            Effect::CloseChannel => self.peer.close(),
            Effect::ChannelGone => {
                self.peer.fail_all();
                if let Some(node) = &self.node {
                    node.channel_lost();
                }
            }
            Effect::Error(error) => {
                tracing::warn!(worker = %id, error = %crate::error::chain(&error), "closing the worker's channel");
                self.emit(Event::Error { worker: id, error });
            }
            Effect::Disconnected => self.emit(Event::Disconnect { worker: id }),
            Effect::GraceOver => {
                tracing::warn!(worker = %id, "worker did not exit within its grace period: SIGKILL");
            }
            Effect::Signal(sig) => self.signal(sig),
            Effect::KillLeftovers => self.kill_group_after_exit(),
            Effect::DropOutput => self.output = None,
            Effect::Ping(seq) => {
                if !self.peer.control_soon(&Control::Ping { seq }) {
                    return Some(Input::PingDropped(seq));
                }
            }
            Effect::Unresponsive(silent) => {
                tracing::warn!(worker = %id, silent_ms = silent.as_millis() as u64, "worker answered no ping: replacing it");
                // No new connection goes to it; those it had not taken go to the others.
                if let Some(node) = &self.node {
                    node.channel_lost();
                }
                self.emit(Event::Unresponsive { worker: id, silent });
            }
            Effect::Exited(status) => {
                self.emit(Event::Exit { worker: id, status });
                let _ = self.exit.send(Some(status));
            }
        }
        None
    }

    /// Runs one step of the retiring worker's rescue; a peek is answered at once. Without a
    /// rescuer (which the life never asks of a worker that has none) each step answers that
    /// nothing is held, so that the life goes on.
    fn rescue(&mut self, step: RetireStep) -> Option<Input> {
        let (Some(node), Some(r)) = (self.node.as_mut(), self.rescuer.as_mut()) else {
            tracing::warn!(worker = %self.id, ?step, "a rescue step without a rescuer");
            return nothing_held(step).map(Input::Rescue);
        };
        match step {
            RetireStep::AwaitAnswered => self.answering = Some(Box::pin(node.answered_all())),
            RetireStep::Grab => {
                self.answering = None;
                self.job = Some(r.grab(self.life.running()));
            }
            RetireStep::SendDisconnect => {
                self.answering = None;
                node.send_disconnect(&self.peer);
            }
            RetireStep::Look => self.job = Some(r.look()),
            RetireStep::Pause => r.pause(),
            RetireStep::Peek => {
                let (all, stuck) = r.peek();
                return Some(Input::Rescue(Outcome::Peeked { all, stuck }));
            }
            RetireStep::TryEnd => self.job = Some(r.try_end()),
            RetireStep::Resume => r.resume(),
            RetireStep::HandOn => r.hand_on(),
            RetireStep::DropJob => self.job = None,
        }
        None
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

    /// A frame from the worker: its hello while it starts, then anything it may say; what it
    /// means for its life, if anything.
    fn on_frame(&mut self, frame: herd_wire::Frame) -> Option<Input> {
        let id = self.id;
        if !self.life.been_online() {
            return Some(match self.handshake(frame) {
                Ok(()) => Input::Hello,
                Err(e) => Input::ChannelEnded(Some(e)),
            });
        }
        // herd's notices from a worker are small: a big one is a lying worker's, ignored
        // before it is decoded (a decoded value costs several times its bytes).
        if frame.kind == herd_wire::Kind::Control && frame.payload.len() > MAX_NOTICE {
            tracing::debug!(worker = %id, bytes = frame.payload.len(), "oversized control notice ignored");
            return None;
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
            Ok(Routed::Control(Control::Pong { seq })) => return Some(Input::Pong(seq)),
            Ok(Routed::Control(Control::PrimaryCode { file, found })) => {
                use std::sync::atomic::Ordering::Relaxed;
                if !self.cfg.node.primary_code_seen.swap(true, Relaxed) {
                    let cut = |s: String| s.chars().take(256).collect::<String>();
                    let (file, found) = (cut(file), cut(found));
                    tracing::warn!(
                        "{file:?} has code for Node's cluster primary ({found:?}); under herd every \
                         process is a worker and herd is the primary, so that code never runs. \
                         herd does what such code usually does: --balance sticky (for \
                         @socket.io/sticky's setupMaster), --relay others (for \
                         @socket.io/cluster-adapter's setupPrimary); run jobs meant for one \
                         process where HERD_WORKER_SLOT is 0"
                    );
                }
            }
            Ok(Routed::Control(Control::Hooks { signals })) => {
                let StopBy::Signal(sig) = self.cfg.stop else {
                    return None;
                };
                let name = sig.name();
                return Some(Input::Hooked(signals.contains(&name)));
            }
            Ok(Routed::Control(
                Control::Unknown
                | Control::Ping { .. }
                | Control::CacheInvalidate { .. }
                | Control::CacheClear { .. },
            )) => {
                tracing::debug!(worker = %id, "unknown control notice ignored");
            }
            Ok(Routed::Cache(request)) => self.cache_call(request),
            Ok(Routed::Node(frame)) => return self.node_line(frame),
            Ok(Routed::Handled) => {}
            Err(e) => return Some(Input::ChannelEnded(Some(e))),
        }
        None
    }

    /// One of Node's internal lines: answered by the worker's cluster session.
    fn node_line(&mut self, frame: herd_wire::Frame) -> Option<Input> {
        let node = self.node.as_mut()?;
        match node.on_frame(frame, &self.peer) {
            Ok(Some(NodeEvent::Listening(address))) => {
                // It listens now: an earlier failure is over.
                if let Ok(mut last) = self.shared.listen_error.lock() {
                    *last = None;
                }
                self.emit(Event::Listening {
                    worker: self.id,
                    address,
                })
            }
            Ok(Some(NodeEvent::Message(frame))) => self.emit(Event::Message {
                worker: self.id,
                message: Message::from_frame(frame),
            }),
            Ok(Some(NodeEvent::ListenFailed(why))) => {
                if let Ok(mut last) = self.shared.listen_error.lock() {
                    // Logged when it changes (a worker retrying in a loop logs once).
                    if last.as_deref() != Some(why.as_str()) {
                        tracing::warn!(worker = %self.id, error = ?why, "a Node worker's server cannot listen");
                    }
                    *last = Some(why);
                }
            }
            Ok(None) => {}
            Err(e) => return Some(Input::ChannelEnded(Some(Error::Protocol(e.to_string())))),
        }
        None
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

    /// `sig` to the worker's process group (the life sends none once it has exited).
    fn signal(&self, sig: Signal) {
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

/// The future in `slot`, polled where it lies (cancel-safe: left there if another branch
/// wins). Only called with one in it.
async fn out<F: Future + Unpin>(slot: &mut Option<F>) -> F::Output {
    match slot.as_mut() {
        Some(f) => f.await,
        None => std::future::pending().await,
    }
}

/// The largest control notice herd decodes from a worker (its own are tens of bytes).
const MAX_NOTICE: usize = 64 * 1024;

/// What a rescue step finds where nothing is held.
fn nothing_held(step: RetireStep) -> Option<Outcome> {
    Some(match step {
        RetireStep::AwaitAnswered => Outcome::Answered,
        RetireStep::Grab => Outcome::Grabbed {
            held: 0,
            can_end: false,
        },
        RetireStep::Look => Outcome::Looked { held: 0 },
        RetireStep::Peek => Outcome::Peeked {
            all: false,
            stuck: true,
        },
        RetireStep::TryEnd => Outcome::Tried {
            verdict: crate::node::rescue::plan::Verdict::Never,
            stuck: true,
        },
        RetireStep::SendDisconnect
        | RetireStep::Pause
        | RetireStep::Resume
        | RetireStep::HandOn
        | RetireStep::DropJob => return None,
    })
}
