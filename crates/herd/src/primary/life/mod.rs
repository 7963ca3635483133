//! One worker's life, pure: [`Life::handle`] turns the worker's state and one [`Input`] (its
//! exit, a command, its channel's end or handshake, its output's end, the clock) into
//! [`Effect`]s (signal it, close or ask to close its channel, report an event) for the
//! supervisor's task to run. No `.await`, no processes, no channel: time is the `now` it is
//! given, so the tests drive every phase on a hand-moved clock.
//!
//! A worker is in one [`Phase`] (starting, online, stopping, exited), and independently its
//! channel is open or closed and its output pipes open or closed. Every timer of its life is a
//! field here, and [`Life::next_deadline`] is the earliest: the shell sleeps until then and
//! sends [`Input::Tick`]. The timers:
//! - the **handshake** deadline, while a worker that must say hello has not;
//! - the **grace** period after a stop or kill request (or a protocol error), then `SIGKILL`;
//! - the **linger** after a worker asked to stop closed its channel, then the stop signal;
//! - the **settle** time after a Node worker whose program listens for its stop signal is
//!   asked to stop, then the stop signal, channel open or not (its servers may hold WebSocket
//!   or SSE connections, which only its hook ends). The stop signal is sent once;
//! - the **drain** after exit, for the worker's last frames, then the channel is closed;
//! - the **output** time after exit, for its last lines, then its pipes are let go;
//! - with [`Rules::unresponsive`], the **liveness** pings of an online worker and the verdict:
//!   a worker that has answered a ping once, and then leaves a ping sent `limit` ago
//!   unanswered with nothing else heard from it meanwhile, is unresponsive (stopped, or its
//!   event loop blocked for at least `limit`). It is taken out of balancing and killed, and its
//!   slot gets a new worker (not counted as a crash). A worker that never answers (a program
//!   that does not speak herd's channel) is never judged: pings stop after
//!   [`FIRST_ANSWER_WITHIN`]. No answer can arrive while the shell does not read the channel
//!   (backpressure) or while herd itself is held up (a late tick), and a ping that could not be
//!   queued was never asked: each of these starts a fresh window. Any frame from the worker
//!   counts as an answer.
//!
//! - for a retiring Node worker whose sockets herd shares, the **rescue** of its connections
//!   ([`retire`]): answering for those sent to it, taking copies, looking at its table every
//!   10 ms, pausing and ending it as [`crate::Rescue`] says.
//!
//! The worker is done ([`Effect::Exited`]) once it has exited, its channel is closed, its
//! output is over and no rescue job is out: its events then end with its exit.

#[cfg(test)]
mod hook_tests;
pub(crate) mod retire;
#[cfg(test)]
mod retire_tests;
#[cfg(test)]
mod testkit;
#[cfg(test)]
mod tests;

use std::collections::VecDeque;
use std::time::Duration;

use rustix::process::Signal;
use tokio::time::Instant;

use crate::ids::ExitStatus;
use crate::{Error, Rescue};
use retire::{Outcome, Retire, Step};

/// How long a worker that closed its channel after a stop request may take to exit by itself
/// before it gets the stop signal.
pub(crate) const STOP_LINGER: Duration = Duration::from_secs(1);

/// How long a worker's channel is drained after the worker exited, for its last messages.
pub(crate) const DRAIN_AFTER_EXIT: Duration = Duration::from_millis(500);

/// How long a worker's output is read after it exited, for its last lines (a process it left
/// behind may hold the pipes).
pub(crate) const OUTPUT_AFTER_EXIT: Duration = Duration::from_millis(500);

/// How long a worker that has never answered a ping is asked (it does not speak herd's channel,
/// or has no preload: it is then never judged unresponsive). Long enough for a slow start on a
/// loaded host: a Node worker answers once its event loop first turns.
pub(crate) const FIRST_ANSWER_WITHIN: Duration = Duration::from_secs(60);

/// How often an online worker is pinged, for an unresponsive limit of `limit`: a third of it,
/// within 50 ms and 10 s.
pub(crate) fn ping_every(limit: Duration) -> Duration {
    (limit / 3).clamp(Duration::from_millis(50), Duration::from_secs(10))
}

/// How a worker is asked to stop, besides its channel closing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StopWith {
    /// Nothing more: it reads end-of-stream and exits by itself.
    EndOfStream,
    /// This signal to its process group.
    Signal(Signal),
    /// A message on the channel before it closes.
    Message,
}

/// What a worker's life needs to know of its cluster's settings.
#[derive(Clone, Debug)]
pub(crate) struct Rules {
    /// From a stop or kill request to `SIGKILL`.
    pub(crate) grace: Duration,
    /// How long a worker may take to say hello.
    pub(crate) handshake_timeout: Duration,
    /// How it is asked to stop.
    pub(crate) stop: StopWith,
    /// It needs no hello (a Node worker): online at once.
    pub(crate) online_at_start: bool,
    /// It speaks Node's cluster protocol: a stop first asks it to disconnect.
    pub(crate) node: bool,
    /// How long an online worker that answers pings may go without answering one before it
    /// is replaced (`None`: never pinged).
    pub(crate) unresponsive: Option<Duration>,
    /// What is done with a retiring Node worker's connections.
    pub(crate) rescue: Rescue,
    /// From a stop request to the stop signal of a worker with a hook for it.
    pub(crate) settle: Duration,
}

/// Where a worker is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Forked; its hello has not come yet.
    Starting,
    /// It said hello (or needs none) and has not been asked to stop.
    Online,
    /// Asked to stop; it has not exited yet.
    Stopping,
    /// It exited (its channel and output may still be read for a moment).
    Exited,
}

/// What happened to the worker.
#[derive(Debug)]
pub(crate) enum Input {
    /// Its process exited.
    Exited(ExitStatus),
    /// A request to stop it (disconnect).
    Stop,
    /// A request to signal it, then kill it after the grace period.
    Kill(Signal),
    /// Its hello was good.
    Hello,
    /// Its channel ended: at end-of-stream (`None`) or with this error (a bad hello, a frame
    /// that could not be decoded, a protocol violation).
    ChannelEnded(Option<Error>),
    /// A Node worker would not be asked to disconnect (not a cluster worker, or asked
    /// already): its channel is closed instead.
    NodeDeclined,
    /// Its output pipes closed.
    OutputEnded,
    /// It was asked to disconnect and herd shares sockets with it: its connections are to be
    /// rescued ([`retire`]).
    Retiring,
    /// What the shell found for the rescue.
    Rescue(Outcome),
    /// Its program listens for its stop signal (`true`) or no longer does.
    Hooked(bool),
    /// It answered ping `seq`.
    Pong(u64),
    /// It sent something (any frame): it is alive, whatever pings wait.
    Heard,
    /// Ping `seq` could not be queued (the send queue was full): not waited for.
    PingDropped(u64),
    /// The shell reads the channel (`true`) or has stopped reading it for backpressure.
    Reading(bool),
    /// Time passed: deadlines due by `now` fire.
    Tick,
}

/// What the shell does.
#[derive(Debug)]
pub(crate) enum Effect {
    /// Report it online.
    Online,
    /// Send the stop message, before anything that closes the channel.
    SendStopMessage,
    /// Ask the Node worker to disconnect; answer [`Input::NodeDeclined`] if it cannot be.
    AskNodeDisconnect,
    /// Close our side of the channel after what is queued.
    CloseChannel,
    /// The channel is gone: fail the requests waiting on it, take the worker out of balancing.
    ChannelGone,
    /// Report this error (the channel is closed for it).
    Error(Error),
    /// Report the channel closed.
    Disconnected,
    /// Its grace period is over and it still runs (a `SIGKILL` follows): say so.
    GraceOver,
    /// Signal the worker's process group (it has not exited).
    Signal(Signal),
    /// It has been reaped: `SIGKILL` what is left of its process group.
    KillLeftovers,
    /// Stop reading its output.
    DropOutput,
    /// Ping it (sequence number `seq`), without waiting for room.
    Ping(u64),
    /// It answered no ping for this long: report it, take it out of balancing (a `SIGKILL`
    /// follows).
    Unresponsive(Duration),
    /// A step of its connections' rescue ([`retire`]).
    Rescue(Step),
    /// Report its exit and publish it: its life is over.
    Exited(ExitStatus),
}

/// One worker's life (see the [module docs](self)).
#[derive(Debug)]
pub(crate) struct Life {
    rules: Rules,
    phase: Phase,
    /// Its channel is open (frames are read, sends go out).
    open: bool,
    /// Its output pipes are read.
    output: bool,
    exit: Option<ExitStatus>,
    /// Its exit was reported.
    done: bool,
    /// It has been online (a hello is taken once).
    been_online: bool,
    handshake_by: Option<Instant>,
    kill_at: Option<Instant>,
    stop_signal_at: Option<Instant>,
    drain_until: Option<Instant>,
    output_until: Option<Instant>,
    alive: Alive,
    /// Its connections' rescue, once it retires.
    retire: Option<Retire>,
    /// Its program listens for its stop signal.
    hooked: bool,
    /// It was sent its stop signal (once).
    signalled: bool,
}

/// The liveness checks of an online worker ([`Rules::unresponsive`]).
#[derive(Debug, Default)]
struct Alive {
    /// When the next ping goes.
    ping_at: Option<Instant>,
    /// The next ping's sequence number.
    seq: u64,
    /// When the first ping went.
    first_ping: Option<Instant>,
    /// It has answered a ping: from now on it is judged.
    armed: bool,
    /// Pings queued and not answered yet (sequence number, when sent), oldest first, at most
    /// [`MAX_WAITING_PINGS`].
    waiting: VecDeque<(u64, Instant)>,
    /// The shell has stopped reading the channel: no verdict meanwhile.
    paused: bool,
}

/// Unanswered pings remembered; the verdict comes long before (a limit is three pings).
const MAX_WAITING_PINGS: usize = 16;

impl Alive {
    /// When it is judged unless it answers first: a ping sent `limit` ago and still unanswered.
    fn verdict_at(&self, limit: Duration) -> Option<Instant> {
        if !self.armed || self.paused {
            return None;
        }
        let (_, sent) = self.waiting.front()?;
        Some(crate::deadline::after(*sent, limit))
    }
}

impl Life {
    /// A worker just forked at `now`, with output pipes if `output`; what to do first.
    pub(crate) fn start(rules: Rules, now: Instant, output: bool) -> (Life, Vec<Effect>) {
        let online = rules.online_at_start;
        let life = Life {
            handshake_by: (!online).then(|| crate::deadline::after(now, rules.handshake_timeout)),
            rules,
            phase: if online {
                Phase::Online
            } else {
                Phase::Starting
            },
            open: true,
            output,
            exit: None,
            done: false,
            been_online: online,
            kill_at: None,
            stop_signal_at: None,
            drain_until: None,
            output_until: None,
            alive: Alive::default(),
            retire: None,
            hooked: false,
            signalled: false,
        };
        let mut life = life;
        let effects = if online {
            life.went_online(now);
            vec![Effect::Online]
        } else {
            vec![]
        };
        (life, effects)
    }

    /// Where it is.
    #[cfg(test)]
    pub(crate) fn phase(&self) -> Phase {
        self.phase
    }

    /// Whether it has been online (its hello taken, or none needed).
    pub(crate) fn been_online(&self) -> bool {
        self.been_online
    }

    /// Whether its channel is open.
    pub(crate) fn channel_open(&self) -> bool {
        self.open
    }

    /// Whether its output is still read.
    #[cfg(test)]
    pub(crate) fn output_open(&self) -> bool {
        self.output
    }

    /// Whether its process is still to be waited for.
    pub(crate) fn running(&self) -> bool {
        self.exit.is_none()
    }

    /// Whether its life is over (its exit reported).
    pub(crate) fn done(&self) -> bool {
        self.done
    }

    /// The earliest deadline, if any: send [`Input::Tick`] then.
    pub(crate) fn next_deadline(&self) -> Option<Instant> {
        [
            self.handshake_by,
            self.kill_at,
            self.stop_signal_at,
            self.drain_until,
            self.output_until,
            self.alive.ping_at,
            self.rules
                .unresponsive
                .and_then(|l| self.alive.verdict_at(l)),
            self.retire.as_ref().and_then(Retire::deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Takes one input at `now`.
    pub(crate) fn handle(&mut self, now: Instant, input: Input) -> Vec<Effect> {
        let mut fx = Vec::new();
        if self.done {
            return fx;
        }
        match input {
            Input::Exited(status) => self.exited(now, status, &mut fx),
            Input::Stop => self.stop(now, &mut fx),
            Input::Kill(sig) => {
                // Its grace period rules from now on (a slow handler of `sig` is no hang).
                self.alive = Alive::default();
                self.signal(sig, &mut fx);
                self.arm_kill(now);
            }
            // A hello read after a stop request or the exit still makes it online (once).
            Input::Hello if !self.been_online && self.open => {
                self.been_online = true;
                self.handshake_by = None;
                if self.phase == Phase::Starting {
                    self.phase = Phase::Online;
                    self.went_online(now);
                }
                fx.push(Effect::Online);
            }
            Input::Hooked(hooked) => {
                self.hooked = hooked;
                if self.phase == Phase::Stopping {
                    self.settle(now);
                }
            }
            Input::Pong(seq) => self.pong(seq),
            Input::Heard => self.heard(),
            Input::PingDropped(seq) => self.alive.waiting.retain(|(s, _)| *s != seq),
            Input::Reading(reading) => self.reading(reading),
            Input::Hello => {}
            Input::ChannelEnded(error) => self.lost_channel(now, error, &mut fx),
            Input::NodeDeclined => {
                fx.push(Effect::CloseChannel);
                self.stop_signal(&mut fx);
            }
            Input::OutputEnded => self.drop_output(&mut fx),
            Input::Retiring if self.retire.is_none() && self.exit.is_none() => {
                let (retire, steps) = Retire::start(now);
                self.retire = Some(retire);
                fx.extend(steps.into_iter().map(Effect::Rescue));
            }
            // Exited already: nothing to rescue, but the disconnect it was asked for.
            Input::Retiring if self.retire.is_none() => {
                fx.push(Effect::Rescue(Step::SendDisconnect))
            }
            // Retiring already (the shell keeps the first rescue).
            Input::Retiring => {}
            Input::Rescue(outcome) => {
                if let Some(retire) = &mut self.retire {
                    let mut steps = Vec::new();
                    let rules = (self.rules.rescue, self.rules.grace);
                    retire.outcome(now, outcome, rules, &mut steps);
                    fx.extend(steps.into_iter().map(Effect::Rescue));
                }
            }
            Input::Tick => self.tick(now, &mut fx),
        }
        self.finish(&mut fx);
        fx
    }

    fn exited(&mut self, now: Instant, status: ExitStatus, fx: &mut Vec<Effect>) {
        if self.exit.is_some() {
            return;
        }
        self.exit = Some(status);
        self.phase = Phase::Exited;
        if let Some(retire) = &mut self.retire {
            let mut steps = Vec::new();
            retire.exited(now, &mut steps);
            fx.extend(steps.into_iter().map(Effect::Rescue));
        }
        self.alive = Alive::default();
        self.kill_at = None;
        self.stop_signal_at = None;
        fx.push(Effect::KillLeftovers);
        if self.open {
            self.drain_until = Some(now + DRAIN_AFTER_EXIT);
        }
        if self.output {
            self.output_until = Some(now + OUTPUT_AFTER_EXIT);
        }
    }

    fn stop(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.phase != Phase::Exited {
            self.phase = Phase::Stopping;
        }
        // Its grace period rules from now on.
        self.alive = Alive::default();
        if self.rules.stop == StopWith::Message && self.open {
            fx.push(Effect::SendStopMessage);
        }
        // A Node cluster worker is asked, as Node's primary asks it: it closes its servers,
        // finishes its connections, then closes the channel itself (and is signalled if still
        // alive then: see `lost_channel`).
        if self.open && self.rules.node {
            fx.push(Effect::AskNodeDisconnect);
            self.settle(now);
        } else {
            fx.push(Effect::CloseChannel);
            self.stop_signal(fx);
        }
        self.arm_kill(now);
    }

    /// The channel is gone: at end-of-stream (`None`) or after an error, which is reported.
    fn lost_channel(&mut self, now: Instant, error: Option<Error>, fx: &mut Vec<Effect>) {
        if !self.open {
            return;
        }
        self.open = false;
        self.drain_until = None;
        self.handshake_by = None;
        self.alive = Alive::default();
        fx.push(Effect::ChannelGone);
        if let Some(error) = error {
            fx.push(Effect::Error(error));
            // A worker that broke the protocol cannot be managed any more: it gets the grace
            // period to exit on its own (it reads end-of-stream), then SIGKILL.
            self.arm_kill(now);
        }
        // Either way nothing more can be said to the worker: sends fail from now on.
        fx.push(Effect::CloseChannel);
        if self.phase == Phase::Stopping && !self.signalled {
            // A worker asked to stop closed its channel (its servers are done). It normally
            // exits a moment later; one that lives on (a timer or a pool keeps it) gets the
            // signal.
            let linger = now + (self.rules.grace / 4).min(STOP_LINGER);
            self.stop_signal_at = Some(self.stop_signal_at.map_or(linger, |t| t.min(linger)));
        }
        fx.push(Effect::Disconnected);
    }

    fn tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let due = |t: Option<Instant>| t.is_some_and(|t| t <= now);
        if due(self.handshake_by) {
            self.handshake_by = None;
            let why = format!("no handshake within {:?}", self.rules.handshake_timeout);
            self.lost_channel(now, Some(Error::Handshake(why)), fx);
        }
        if due(self.stop_signal_at) {
            self.stop_signal_at = None;
            self.stop_signal(fx);
        }
        if due(self.kill_at) {
            self.kill_at = None;
            if self.exit.is_none() {
                fx.push(Effect::GraceOver);
            }
            self.signal(Signal::KILL, fx);
        }
        if due(self.drain_until) {
            // The process is gone but something else holds its channel open.
            self.drain_until = None;
            self.lost_channel(now, None, fx);
        }
        if due(self.output_until) {
            self.drop_output(fx);
        }
        if let Some(limit) = self.rules.unresponsive {
            if (self.alive.ping_at).is_some_and(|due| now > due + ping_every(limit)) {
                // This tick comes late: herd itself was held up (stopped, paused, starved)
                // and sent nothing meanwhile. What waits is not the worker's fault: a fresh
                // window.
                self.alive.waiting.clear();
            }
            if due(self.alive.verdict_at(limit)) {
                let silent = self.alive.waiting.front().map_or(limit, |(_, t)| now - *t);
                self.alive = Alive::default();
                fx.push(Effect::Unresponsive(silent));
                self.signal(Signal::KILL, fx);
                self.arm_kill(now);
            }
        }
        if due(self.alive.ping_at) {
            self.ping(now, fx);
        }
        if let Some(retire) = &mut self.retire {
            let mut steps = Vec::new();
            retire.tick(now, self.rules.rescue, &mut steps);
            fx.extend(steps.into_iter().map(Effect::Rescue));
        }
    }

    /// Online from `now`: the first ping goes at once (it is answered once the worker's loop
    /// first turns).
    fn went_online(&mut self, now: Instant) {
        if self.rules.unresponsive.is_some() {
            self.alive = Alive {
                ping_at: Some(now),
                ..Alive::default()
            };
        }
    }

    fn ping(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        let Some(limit) = self.rules.unresponsive else {
            return;
        };
        let every = ping_every(limit);
        let a = &mut self.alive;
        if !a.armed {
            let first = *a.first_ping.get_or_insert(now);
            if now.duration_since(first) >= FIRST_ANSWER_WITHIN {
                // It does not answer pings at all: never judged.
                a.ping_at = None;
                return;
            }
        }
        if a.waiting.len() < MAX_WAITING_PINGS {
            a.waiting.push_back((a.seq, now));
        }
        fx.push(Effect::Ping(a.seq));
        a.seq += 1;
        a.ping_at = Some(now + every);
    }

    fn pong(&mut self, seq: u64) {
        let a = &mut self.alive;
        // Only an answer to a ping sent counts; none once the checks are over.
        if seq >= a.seq || a.ping_at.is_none() {
            return;
        }
        a.armed = true;
        a.waiting.retain(|(s, _)| *s > seq);
    }

    /// Any frame from an armed worker: its loop runs, so nothing that waits counts against it.
    fn heard(&mut self) {
        if self.alive.armed {
            self.alive.waiting.clear();
        }
    }

    fn reading(&mut self, reading: bool) {
        let a = &mut self.alive;
        a.paused = !reading;
        if reading {
            // A fresh window: answers could not be read meanwhile.
            a.waiting.clear();
        }
    }

    fn drop_output(&mut self, fx: &mut Vec<Effect>) {
        self.output_until = None;
        if self.output {
            self.output = false;
            fx.push(Effect::DropOutput);
        }
    }

    /// A Node worker asked to stop whose program listens for its stop signal gets it a settle
    /// time after `now`, whether or not it has closed its channel.
    fn settle(&mut self, now: Instant) {
        if self.hooked
            && !self.signalled
            && self.stop_signal_at.is_none()
            && matches!(self.rules.stop, StopWith::Signal(_))
        {
            self.stop_signal_at = Some(crate::deadline::after(now, self.rules.settle));
        }
    }

    /// The stop signal, if the cluster has one, to a worker asked to stop (once: a second
    /// one would run its hook again).
    fn stop_signal(&mut self, fx: &mut Vec<Effect>) {
        if let StopWith::Signal(sig) = self.rules.stop {
            if !self.signalled && self.exit.is_none() {
                self.signalled = true;
                self.signal(sig, fx);
            }
        }
    }

    fn signal(&mut self, sig: Signal, fx: &mut Vec<Effect>) {
        if self.exit.is_none() {
            fx.push(Effect::Signal(sig));
        }
    }

    fn arm_kill(&mut self, now: Instant) {
        if self.exit.is_none() && self.kill_at.is_none() {
            self.kill_at = Some(crate::deadline::after(now, self.rules.grace));
        }
    }

    /// Exited, channel closed, output over and no rescue job out: the exit is reported, last.
    fn finish(&mut self, fx: &mut Vec<Effect>) {
        if self.retire.as_ref().is_some_and(Retire::job_out) {
            return;
        }
        if let (false, false, Some(status)) = (self.open, self.output, self.exit) {
            self.done = true;
            fx.push(Effect::Exited(status));
        }
    }
}
