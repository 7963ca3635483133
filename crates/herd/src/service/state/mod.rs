//! The service's state machine, pure: [`Machine::handle`] turns the state and one [`Input`] (a
//! worker started or exited, a readiness signal, a command, the clock) into [`Effect`]s (fork,
//! disconnect, kill, probe, reply, emit) for the actor to run. No `.await`, no tasks, no worker
//! handles: workers are [`WorkerId`]s, time is the `now` it is given, so the tests drive it
//! without processes or sleeps.
//!
//! Each slot (one per wanted worker) is in one [`SlotState`]; each live worker is a member with a
//! [`Role`]. A rolling reload queues slots and forks a batch of candidates; a candidate takes
//! over its slot only once ready (`reload`: reloads and scaling).

mod memory;
mod reload;
mod restart;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::config::{Readiness, Restart, ServiceConfig};
use super::{Outcome, ServiceError, ServiceEvent};
use crate::{ExitStatus, WorkerId};

/// The first delay before retrying a start that failed for want of resources.
pub(crate) const START_RETRY_MIN: Duration = Duration::from_millis(10);
/// The longest delay between such retries: a slot is served again soon after resources are.
pub(crate) const START_RETRY_MAX: Duration = Duration::from_secs(1);

/// Names a waiting caller; the actor keeps the reply channel.
pub(crate) type Token = u64;

/// What a slot is doing.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum SlotState {
    /// A worker for it is being forked.
    Starting,
    /// This worker serves it.
    Serving(WorkerId),
    /// Its worker crashed; a new one is forked at this time.
    Restarting {
        /// When.
        at: Instant,
    },
    /// It gave up (crash loop), with this message.
    Failed(String),
    /// Its worker exited and is not restarted; whether with code 0.
    Done {
        /// Exit code 0.
        success: bool,
    },
    /// Scaled away.
    Removed,
}

/// One wanted worker's place.
#[derive(Debug)]
pub(crate) struct Slot {
    pub(crate) state: SlotState,
    /// Crash times within the window.
    crashes: VecDeque<Instant>,
    /// Restarts so far (a start retried after a shortage is not one more).
    pub(crate) restarts: u32,
    /// Workers replaced because they answered no liveness ping (counted in `restarts` too).
    pub(crate) unresponsive: u32,
    /// Workers replaced for staying over the memory limit.
    pub(crate) memory_replaced: u32,
    /// When the last of those replacements were (within 10 minutes; at most 16 kept).
    memory_recent: VecDeque<Instant>,
    /// Starts that failed in a row for want of resources (retried, never a crash).
    start_failures: u32,
    /// How the slot's last worker ended, if one has.
    pub(crate) last_exit: Option<ExitStatus>,
    /// The addresses the slot's workers listen on (a new worker is ready once it listens on all
    /// of them: [`Readiness::Listening`]).
    pub(crate) listens: BTreeSet<String>,
}

impl Slot {
    fn starting() -> Slot {
        Slot {
            state: SlotState::Starting,
            crashes: VecDeque::new(),
            restarts: 0,
            unresponsive: 0,
            memory_replaced: 0,
            memory_recent: VecDeque::new(),
            start_failures: 0,
            last_exit: None,
            listens: BTreeSet::new(),
        }
    }
}

/// What a live worker is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    /// Serving its slot (or forked to).
    Active,
    /// Forked by a reload for its slot; not yet ready.
    Candidate,
    /// Disconnected or killed; on its way out.
    Retiring,
}

/// A live worker (forked, not yet exited).
#[derive(Debug)]
pub(crate) struct Member {
    pub(crate) slot: Option<usize>,
    pub(crate) role: Role,
    pub(crate) started: Instant,
    pub(crate) messages: u64,
    /// Readiness by delay: ready at this time.
    ready_at: Option<Instant>,
    /// The addresses it said it listens on (at most [`MAX_LISTENS`]).
    listening: BTreeSet<String>,
    /// It answered no liveness ping and is being killed: its exit is a replacement, not a crash.
    pub(crate) unresponsive: bool,
    /// Since when every memory sample found it over the limit.
    over_since: Option<Instant>,
}

/// Addresses remembered per worker and per slot; more are not counted.
const MAX_LISTENS: usize = 64;

/// A command from the [`super::ServiceHandle`] that changes state.
#[derive(Debug)]
pub(crate) enum Cmd {
    /// A rolling reload; answered when done.
    Reload(Token),
    /// A new worker count.
    Scale(usize, Token),
    /// Stop every worker (at once if `fast`); answered when all have exited.
    Stop {
        /// Kill rather than disconnect.
        fast: bool,
        /// The caller.
        reply: Token,
    },
}

/// What the machine is told.
#[derive(Debug)]
pub(crate) enum Input {
    /// The fork for `slot` (as `role`) gave this worker.
    Started {
        slot: usize,
        role: Role,
        worker: WorkerId,
    },
    /// The fork for `slot` failed. `retry` when for want of resources (descriptors, memory,
    /// processes: not the program's fault), which is retried with a backoff and never counts
    /// as a crash; otherwise (no such program, say) it is a crash like any other.
    StartFailed {
        slot: usize,
        role: Role,
        why: String,
        retry: bool,
    },
    /// The worker's channel is up.
    Online(WorkerId),
    /// The worker sent a ready notice.
    Ready(WorkerId),
    /// The worker said it listens on an address.
    Listening { worker: WorkerId, address: String },
    /// The worker sent a message; `ready` when it was PM2's `'ready'`.
    Message { worker: WorkerId, ready: bool },
    /// The worker answered no liveness ping; it is being killed.
    Unresponsive(WorkerId),
    /// The worker exited.
    Exited {
        worker: WorkerId,
        status: ExitStatus,
    },
    /// A port probe for the worker succeeded.
    Probed(WorkerId),
    /// The resident memory of the workers sampled ([`Effect::SampleMemory`]), in bytes.
    Memory(Vec<(WorkerId, u64)>),
    /// Time passed (the next deadline, or any time).
    Tick,
    /// A command.
    Cmd(Cmd),
}

/// A reply to a waiting caller.
#[derive(Debug)]
pub(crate) enum Reply {
    Reload(Result<usize, ServiceError>),
    Scale(Result<(), ServiceError>),
    Stop,
}

/// What the actor is to do.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Fork a worker for `slot`; report [`Input::Started`] or [`Input::StartFailed`].
    Fork { slot: usize, role: Role },
    /// Close the worker's channel (it drains and exits; killed after the grace period).
    Disconnect(WorkerId),
    /// `SIGKILL` the worker.
    Kill(WorkerId),
    /// Connect to `addr` until it works, then report [`Input::Probed`].
    Probe(WorkerId, SocketAddr),
    /// Read these workers' resident memory, then report [`Input::Memory`].
    SampleMemory(Vec<WorkerId>),
    /// Answer a caller.
    Reply(Token, Reply),
    /// Tell the service's user.
    Emit(ServiceEvent),
    /// The service is over.
    Finish(Outcome),
}

/// A rolling reload in progress.
#[derive(Debug)]
struct Reload {
    /// Slots still to replace.
    queue: VecDeque<usize>,
    /// The current batch: slot -> its candidate and deadline, once forked.
    batch: BTreeMap<usize, Option<(WorkerId, Instant)>>,
    total: usize,
    replaced: usize,
    waiters: Vec<Token>,
    /// Another pass was asked for during this one.
    again: bool,
    /// Asked for by a user (a memory replacement is not).
    user: bool,
}

impl Reload {
    /// A new pass over `queue`, answering `waiters` when it ends.
    fn pass(queue: VecDeque<usize>, waiters: Vec<Token>, user: bool) -> Reload {
        Reload {
            total: queue.len(),
            queue,
            batch: BTreeMap::new(),
            replaced: 0,
            waiters,
            again: false,
            user,
        }
    }
}

/// The service's whole state.
#[derive(Debug)]
pub(crate) struct Machine {
    config: ServiceConfig,
    pub(crate) slots: Vec<Slot>,
    pub(crate) members: BTreeMap<WorkerId, Member>,
    /// Forks asked for and not yet reported.
    forking: usize,
    reload: Option<Reload>,
    pub(crate) reloads: u64,
    /// Stopping: whether fast, and the callers waiting for the end.
    stopping: Option<(bool, Vec<Token>)>,
    finished: bool,
    /// When the workers' memory is next sampled (with a limit set).
    sample_at: Instant,
    /// A sample is being taken, asked for at this time.
    sampling: Option<Instant>,
}

impl Machine {
    /// A machine for `config`, and the effects that start its workers.
    pub(crate) fn new(config: ServiceConfig) -> (Machine, Vec<Effect>) {
        let n = config.workers;
        let mut m = Machine {
            config,
            slots: Vec::new(),
            members: BTreeMap::new(),
            forking: 0,
            reload: None,
            reloads: 0,
            stopping: None,
            finished: false,
            sample_at: Instant::now(),
            sampling: None,
        };
        let mut fx = Vec::new();
        for slot in 0..n {
            m.slots.push(Slot::starting());
            m.fork(slot, Role::Active, &mut fx);
        }
        m.check_finished(&mut fx);
        (m, fx)
    }

    /// Whether a rolling reload is going on.
    pub(crate) fn reloading(&self) -> bool {
        self.reload.is_some()
    }

    /// Whether the service is stopping.
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.is_some()
    }

    /// Slots not scaled away.
    pub(crate) fn wanted(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.state != SlotState::Removed)
            .count()
    }

    /// The workers serving their slots, by slot.
    pub(crate) fn serving(&self) -> Vec<(usize, WorkerId)> {
        let serving = |(i, s): (usize, &Slot)| match s.state {
            SlotState::Serving(w) => Some((i, w)),
            _ => None,
        };
        self.slots.iter().enumerate().filter_map(serving).collect()
    }

    /// When [`Input::Tick`] next has something to do.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        if self.finished {
            return None;
        }
        let restarts = self.slots.iter().filter_map(|s| match s.state {
            SlotState::Restarting { at } if self.stopping.is_none() => Some(at),
            _ => None,
        });
        let reload = self
            .reload
            .iter()
            .flat_map(|r| r.batch.values().flatten().map(|(_, d)| *d));
        let delays = self
            .members
            .values()
            .filter(|m| m.role == Role::Candidate)
            .filter_map(|m| m.ready_at);
        restarts
            .chain(reload)
            .chain(delays)
            .chain(self.next_sample())
            .min()
    }

    /// One step: the effects of `input` at `now`, in order.
    pub(crate) fn handle(&mut self, now: Instant, input: Input) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.finished {
            return fx;
        }
        match input {
            Input::Started { slot, role, worker } => self.started(now, slot, role, worker, &mut fx),
            Input::StartFailed {
                slot,
                role,
                why,
                retry,
            } => {
                self.forking = self.forking.saturating_sub(1);
                match role {
                    Role::Candidate => {
                        let why = format!("slot {slot}: the new worker could not start: {why}");
                        if self
                            .reload
                            .as_ref()
                            .is_some_and(|r| r.batch.contains_key(&slot))
                        {
                            self.candidate_failed(None, why, &mut fx);
                        }
                    }
                    _ => {
                        let starting =
                            self.slots.get(slot).map(|s| &s.state) == Some(&SlotState::Starting);
                        if starting && retry {
                            self.start_later(now, slot, why, &mut fx);
                        } else if starting {
                            let why = format!("cannot start: {why}");
                            self.crashed(now, slot, None, None, why, &mut fx);
                        }
                    }
                }
            }
            Input::Online(w) => {
                // By listening: a slot whose workers never listened has nothing to wait for.
                let nothing_to_wait_for = self.config.readiness == Readiness::Listening
                    && self
                        .members
                        .get(&w)
                        .and_then(|m| m.slot)
                        .and_then(|s| self.slots.get(s))
                        .is_some_and(|s| s.listens.is_empty());
                if self.config.readiness == Readiness::Online || nothing_to_wait_for {
                    self.became_ready(w, &mut fx);
                }
            }
            Input::Ready(w) => {
                if self.config.readiness == Readiness::Notice {
                    self.became_ready(w, &mut fx);
                }
            }
            Input::Listening { worker, address } => self.listening(worker, address, &mut fx),
            Input::Probed(w) => {
                if matches!(self.config.readiness, Readiness::Port(_)) {
                    self.became_ready(w, &mut fx);
                }
            }
            Input::Message { worker, ready } => {
                if let Some(m) = self.members.get_mut(&worker) {
                    m.messages += 1;
                }
                if ready && self.config.readiness == Readiness::Message {
                    self.became_ready(worker, &mut fx);
                }
            }
            Input::Unresponsive(worker) => {
                if let Some(m) = self.members.get_mut(&worker) {
                    m.unresponsive = true;
                }
            }
            Input::Exited { worker, status } => self.exited(now, worker, status, &mut fx),
            Input::Memory(rss) => self.memory(now, rss, &mut fx),
            Input::Tick => {
                self.tick(now, &mut fx);
                self.memory_tick(now, &mut fx);
            }
            Input::Cmd(Cmd::Reload(t)) => self.reload(t, &mut fx),
            Input::Cmd(Cmd::Scale(n, t)) => self.scale(n, t, &mut fx),
            Input::Cmd(Cmd::Stop { fast, reply }) => self.stop(fast, reply, &mut fx),
        }
        self.check_finished(&mut fx);
        fx
    }

    fn fork(&mut self, slot: usize, role: Role, fx: &mut Vec<Effect>) {
        self.forking += 1;
        fx.push(Effect::Fork { slot, role });
    }

    fn started(
        &mut self,
        now: Instant,
        slot: usize,
        role: Role,
        worker: WorkerId,
        fx: &mut Vec<Effect>,
    ) {
        self.forking = self.forking.saturating_sub(1);
        let mut member = Member {
            slot: Some(slot),
            role,
            started: now,
            messages: 0,
            ready_at: None,
            listening: BTreeSet::new(),
            unresponsive: false,
            over_since: None,
        };
        if let Some((fast, _)) = self.stopping {
            member.role = Role::Retiring;
            self.members.insert(worker, member);
            fx.push(if fast {
                Effect::Kill(worker)
            } else {
                Effect::Disconnect(worker)
            });
            return;
        }
        match role {
            Role::Candidate => {
                let entry = self
                    .reload
                    .as_mut()
                    .and_then(|r| r.batch.get_mut(&slot))
                    .filter(|e| e.is_none());
                let Some(entry) = entry else {
                    // Its reload is over (failed, or its slot was scaled away).
                    member.role = Role::Retiring;
                    member.slot = None;
                    self.members.insert(worker, member);
                    fx.push(Effect::Kill(worker));
                    return;
                };
                *entry = Some((
                    worker,
                    crate::deadline::after(now, self.config.ready_timeout),
                ));
                match &self.config.readiness {
                    Readiness::Delay(d) => member.ready_at = Some(crate::deadline::after(now, *d)),
                    Readiness::Port(addr) => fx.push(Effect::Probe(worker, *addr)),
                    _ => {}
                }
                self.members.insert(worker, member);
            }
            _ => {
                let s = self.slots.get_mut(slot);
                if s.as_ref().map(|s| &s.state) != Some(&SlotState::Starting) {
                    // Scaled away while it started.
                    member.role = Role::Retiring;
                    member.slot = None;
                    self.members.insert(worker, member);
                    fx.push(Effect::Disconnect(worker));
                    return;
                }
                if let Some(s) = s {
                    s.state = SlotState::Serving(worker);
                    s.start_failures = 0;
                }
                self.members.insert(worker, member);
                fx.push(Effect::Emit(ServiceEvent::Serving { slot, worker }));
            }
        }
    }

    fn exited(&mut self, now: Instant, worker: WorkerId, status: ExitStatus, fx: &mut Vec<Effect>) {
        let Some(m) = self.members.remove(&worker) else {
            return;
        };
        if m.role == Role::Retiring || self.stopping.is_some() {
            tracing::info!(%worker, %status, "worker retired");
            return;
        }
        let Some(slot) = m.slot else { return };
        if m.role == Role::Candidate {
            tracing::warn!(%worker, %status, "new worker exited before it was ready");
            let why = format!("worker {worker} exited ({status}) before it was ready");
            self.candidate_failed(None, why, fx);
            return;
        }
        if self.slots.get(slot).map(|s| &s.state) != Some(&SlotState::Serving(worker)) {
            return;
        }
        self.slots[slot].last_exit = Some(status);
        let mode = self.config.restart.mode;
        if mode == Restart::Never || (mode == Restart::OnFailure && status.success()) {
            tracing::info!(%worker, slot, %status, "worker exited; not restarted");
            self.slots[slot].state = SlotState::Done {
                success: status.success(),
            };
            fx.push(Effect::Emit(ServiceEvent::Done {
                slot,
                worker,
                status,
            }));
            return;
        }
        let uptime_ms = now.duration_since(m.started).as_millis() as u64;
        tracing::warn!(%worker, slot, %status, uptime_ms, "worker exited");
        if m.unresponsive {
            self.replace_unresponsive(now, slot, worker, status, fx);
            return;
        }
        let why = format!("worker {worker} {status}");
        self.crashed(now, slot, Some(worker), Some(status), why, fx);
    }

    /// Disconnects a worker: it finishes what it has and exits (killed after the grace period).
    fn retire(&mut self, worker: WorkerId, fx: &mut Vec<Effect>) {
        if let Some(m) = self.members.get_mut(&worker) {
            m.role = Role::Retiring;
            m.slot = None;
            fx.push(Effect::Disconnect(worker));
        }
    }

    /// Kills a worker that is not to serve (once).
    fn kill(&mut self, worker: WorkerId, fx: &mut Vec<Effect>) {
        if let Some(m) = self
            .members
            .get_mut(&worker)
            .filter(|m| m.role != Role::Retiring)
        {
            m.role = Role::Retiring;
            m.slot = None;
            fx.push(Effect::Kill(worker));
        }
    }

    fn tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.stopping.is_some() {
            return;
        }
        for slot in 0..self.slots.len() {
            let s = &mut self.slots[slot];
            if matches!(s.state, SlotState::Restarting { at } if at <= now) {
                if s.start_failures == 0 {
                    s.restarts += 1;
                }
                s.state = SlotState::Starting;
                self.fork(slot, Role::Active, fx);
            }
        }
        let ready: Vec<WorkerId> = self
            .members
            .iter()
            .filter(|(_, m)| m.role == Role::Candidate && m.ready_at.is_some_and(|t| t <= now))
            .map(|(id, _)| *id)
            .collect();
        for id in ready {
            self.became_ready(id, fx);
        }
        let late = self.reload.as_ref().and_then(|r| {
            r.batch
                .values()
                .flatten()
                .find(|(_, d)| *d <= now)
                .map(|(id, _)| *id)
        });
        if let Some(id) = late {
            let why = format!(
                "worker {id} was not ready within {:?}",
                self.config.ready_timeout
            );
            self.candidate_failed(Some(id), why, fx);
        }
    }

    fn stop(&mut self, fast: bool, t: Token, fx: &mut Vec<Effect>) {
        let (was_fast, mut waiters) = self.stopping.take().unwrap_or((false, Vec::new()));
        let already = !waiters.is_empty();
        waiters.push(t);
        let fast = fast || was_fast;
        self.stopping = Some((fast, waiters));
        if already && (was_fast || !fast) {
            return;
        }
        if let Some(r) = self.reload.take() {
            for t in r.waiters {
                fx.push(Effect::Reply(t, Reply::Reload(Err(ServiceError::Stopping))));
            }
        }
        tracing::info!(fast, workers = self.members.len(), "stopping");
        fx.push(Effect::Emit(ServiceEvent::Stopping { fast }));
        for (id, m) in &mut self.members {
            m.role = Role::Retiring;
            fx.push(if fast {
                Effect::Kill(*id)
            } else {
                Effect::Disconnect(*id)
            });
        }
    }

    /// The service is over: stopping and no workers left, or every slot failed or done.
    fn outcome(&self) -> Option<Outcome> {
        if self.forking > 0 || !self.members.is_empty() {
            return None;
        }
        if self.stopping.is_some() {
            return Some(Outcome::Stopped);
        }
        let mut live = self
            .slots
            .iter()
            .filter(|s| s.state != SlotState::Removed)
            .peekable();
        live.peek()?;
        let mut failed = None;
        let mut success = true;
        for s in live {
            match &s.state {
                SlotState::Failed(why) => {
                    failed.get_or_insert_with(|| why.clone());
                }
                SlotState::Done { success: ok } => success &= ok,
                _ => return None,
            }
        }
        Some(match failed {
            Some(why) => Outcome::CrashLoop(why),
            None => Outcome::Exited(if success {
                super::Exits::AllSucceeded
            } else {
                super::Exits::SomeFailed
            }),
        })
    }

    fn check_finished(&mut self, fx: &mut Vec<Effect>) {
        let Some(outcome) = self.outcome() else {
            return;
        };
        self.finished = true;
        if let Some((_, waiters)) = self.stopping.take() {
            for t in waiters {
                fx.push(Effect::Reply(t, Reply::Stop));
            }
        }
        fx.push(Effect::Finish(outcome));
    }
}
