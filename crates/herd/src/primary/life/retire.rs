//! A retiring Node worker's connections, as a phase of its life (`node::rescue` says what is
//! done to them and why): once the worker is asked to disconnect and herd shares sockets with
//! it, its life goes through
//! - **answering**: the connections herd sent it are answered for first (at most
//!   [`ANSWER_LIMIT`]);
//! - **grabbing**: herd takes a copy of each client connection it holds (the shell's job; with
//!   [`Rescue::Off`] none), then Node's disconnect is sent;
//! - **holding**: every [`LOOK_EVERY`] its descriptor table is read (connections it let go of
//!   are handed on) and, with [`Rescue::End`], [`Plan`] says when their marks go up, when the
//!   worker is ended and when herd gives up ending it early;
//! - **over**: nothing held, or the worker exited (what is held is handed on).
//!
//! Work that blocks (the copies, the table, the end) is the shell's, one job at a time; its
//! outcome comes back as an input. A job in flight when the worker exits still comes back: its
//! connections are then handed on. A job is waited for [`JOB_LIMIT`] at most, and
//! [`AFTER_EXIT`] once the worker has exited (the blocking threads may all be busy): past it
//! the shell drops it (its copies close; the worker's own connections are untouched) and the
//! worker retires as it would with [`Rescue::Off`].

use std::time::Duration;

use tokio::time::Instant;

use crate::node::rescue::plan::{Plan, Verdict};
use crate::Rescue;

/// How long a retiring worker has to answer for the connections sent to it before it is asked
/// to disconnect anyway.
pub(crate) const ANSWER_LIMIT: Duration = Duration::from_secs(1);

/// How often a retiring worker's descriptor table is read while herd holds its connections.
pub(crate) const LOOK_EVERY: Duration = Duration::from_millis(10);

/// How long a job of the shell's is waited for before it is dropped.
pub(crate) const JOB_LIMIT: Duration = Duration::from_secs(1);

/// How long, at most, a job still out when the worker exits is waited for: its exit is
/// reported only after.
pub(crate) const AFTER_EXIT: Duration = Duration::from_millis(250);

/// Where the rescue of a retiring worker is.
#[derive(Debug)]
pub(crate) enum Retire {
    /// Waiting until the connections sent to it are answered for, at most until `by`.
    Answering { by: Instant },
    /// The copies are being taken (a job, dropped at `by`).
    Grabbing { by: Instant },
    /// Connections held; the next look at `next`.
    Holding { plan: Plan, next: Instant },
    /// A look, or an attempt to end it, is under way (a job, dropped at `by`; none for a peek,
    /// answered at once).
    Busy { plan: Plan, by: Instant },
    /// Nothing more to do; `job`: a job is still out until then (its connections are handed
    /// on when it comes back: the worker exited).
    Over { job: Option<Instant> },
}

/// What the rescue asks of the shell.
#[derive(Debug, PartialEq)]
pub(crate) enum Step {
    /// Tell the life ([`Outcome::Answered`]) once every connection sent to it is answered for.
    AwaitAnswered,
    /// Take a copy of each of its client connections (a job: [`Outcome::Grabbed`]).
    Grab,
    /// Send Node's disconnect, kept until now.
    SendDisconnect,
    /// Read its table and hand on what it let go of (a job: [`Outcome::Looked`]).
    Look,
    /// Raise the held connections' marks.
    Pause,
    /// Peek at the held connections (answered at once: [`Outcome::Peeked`]).
    Peek,
    /// End it if it holds nothing more (a job: [`Outcome::Tried`]).
    TryEnd,
    /// Lower the marks for good.
    Resume,
    /// Hand on everything held (it exited).
    HandOn,
    /// Drop the job out: it took too long.
    DropJob,
}

/// What the shell found.
#[derive(Debug)]
pub(crate) enum Outcome {
    /// Every connection sent to it is answered for.
    Answered,
    /// `held` copies taken; `can_end`: herd can signal the worker.
    Grabbed { held: usize, can_end: bool },
    /// Its table read: `held` connections it still holds.
    Looked { held: usize },
    /// Its table could not be read (not a look: the next one is at the usual time).
    LookFailed,
    /// `all`: each held connection has its next request waiting; `stuck`: one's mark could
    /// not stay raised.
    Peeked { all: bool, stuck: bool },
    /// What an attempt to end it found; `stuck` as for [`Outcome::Peeked`].
    Tried { verdict: Verdict, stuck: bool },
}

impl Retire {
    /// A worker asked to disconnect at `now`, with sockets herd shares with it.
    pub(crate) fn start(now: Instant) -> (Retire, Vec<Step>) {
        (
            Retire::Answering {
                by: crate::deadline::after(now, ANSWER_LIMIT),
            },
            vec![Step::AwaitAnswered],
        )
    }

    /// When it next needs a tick.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match self {
            Retire::Answering { by } | Retire::Grabbing { by } | Retire::Busy { by, .. } => {
                Some(*by)
            }
            Retire::Holding { next, .. } => Some(*next),
            Retire::Over { job } => *job,
        }
    }

    /// Whether a job of the shell's is out.
    pub(crate) fn job_out(&self) -> bool {
        matches!(
            self,
            Retire::Grabbing { .. } | Retire::Busy { .. } | Retire::Over { job: Some(_) }
        )
    }

    /// Time passed.
    pub(crate) fn tick(&mut self, now: Instant, mode: Rescue, steps: &mut Vec<Step>) {
        match self {
            Retire::Answering { by } if now >= *by => {
                tracing::debug!(
                    "a retiring Node worker did not answer for its connections in time"
                );
                self.answered(now, mode, steps);
            }
            Retire::Holding { next, .. } if now >= *next => {
                let Retire::Holding { plan, .. } = self.take() else {
                    unreachable!()
                };
                *self = Retire::Busy {
                    plan,
                    by: crate::deadline::after(now, JOB_LIMIT),
                };
                steps.push(Step::Look);
            }
            Retire::Grabbing { by } if now >= *by => {
                tracing::warn!(
                    "taking a retiring Node worker's connections took too long: it retires \
                     without herd holding them"
                );
                *self = Retire::Over { job: None };
                steps.extend([Step::DropJob, Step::SendDisconnect]);
            }
            Retire::Busy { by, .. } | Retire::Over { job: Some(by) } if now >= *by => {
                tracing::warn!(
                    "looking at a retiring Node worker's connections took too long: herd lets \
                     go of those it held"
                );
                *self = Retire::Over { job: None };
                steps.push(Step::DropJob);
            }
            _ => {}
        }
    }

    /// This phase, leaving a placeholder.
    fn take(&mut self) -> Retire {
        std::mem::replace(self, Retire::Over { job: None })
    }

    fn answered(&mut self, now: Instant, mode: Rescue, steps: &mut Vec<Step>) {
        if mode == Rescue::Off {
            *self = Retire::Over { job: None };
            steps.push(Step::SendDisconnect);
        } else {
            *self = Retire::Grabbing {
                by: crate::deadline::after(now, JOB_LIMIT),
            };
            steps.push(Step::Grab);
        }
    }

    /// The worker exited at `now`: what is held is handed on (now, or when the job out comes
    /// back, if it does within [`AFTER_EXIT`]).
    pub(crate) fn exited(&mut self, now: Instant, steps: &mut Vec<Step>) {
        let job = match self {
            Retire::Grabbing { by } | Retire::Busy { by, .. } | Retire::Over { job: Some(by) } => {
                Some((*by).min(crate::deadline::after(now, AFTER_EXIT)))
            }
            _ => None,
        };
        if !matches!(self, Retire::Over { .. }) {
            steps.push(Step::HandOn);
        }
        *self = Retire::Over { job };
    }

    /// What the shell found, at `now`; `mode` and `grace` are the worker's.
    pub(crate) fn outcome(
        &mut self,
        now: Instant,
        outcome: Outcome,
        (mode, grace): (Rescue, Duration),
        steps: &mut Vec<Step>,
    ) {
        if let Retire::Over { job } = self {
            // The worker exited meanwhile: the job's connections go on too.
            if job.is_some() && !matches!(outcome, Outcome::Answered | Outcome::Peeked { .. }) {
                *job = None;
                steps.push(Step::HandOn);
            }
            return;
        }
        let next = now + LOOK_EVERY;
        let by = crate::deadline::after(now, JOB_LIMIT);
        match (self.take(), outcome) {
            (Retire::Answering { .. }, Outcome::Answered) => self.answered(now, mode, steps),
            (Retire::Grabbing { .. }, Outcome::Grabbed { held, can_end }) => {
                steps.push(Step::SendDisconnect);
                if held > 0 {
                    let mut plan = Plan::new(mode, now, grace);
                    if !can_end {
                        plan.never_end();
                    }
                    *self = Retire::Holding { plan, next };
                }
            }
            (Retire::Busy { mut plan, .. }, Outcome::Looked { held }) => {
                if held == 0 {
                    return;
                }
                if plan.pause_now(now) {
                    steps.push(Step::Pause);
                }
                if plan.paused() {
                    steps.push(Step::Peek);
                    *self = Retire::Busy { plan, by };
                } else {
                    *self = Retire::Holding { plan, next };
                }
            }
            (Retire::Busy { plan, .. }, Outcome::LookFailed) => {
                *self = Retire::Holding { plan, next };
            }
            (Retire::Busy { mut plan, .. }, Outcome::Peeked { all, stuck }) => {
                if plan.looked(all) {
                    steps.push(Step::TryEnd);
                    *self = Retire::Busy { plan, by };
                    return;
                }
                if plan.settle(now, Verdict::Later, stuck) {
                    steps.push(Step::Resume);
                }
                *self = Retire::Holding { plan, next };
            }
            (Retire::Busy { mut plan, .. }, Outcome::Tried { verdict, stuck }) => {
                if plan.settle(now, verdict, stuck) {
                    steps.push(Step::Resume);
                }
                *self = Retire::Holding { plan, next };
            }
            // An outcome the phase does not wait for (a late answer): nothing changes.
            (state, _) => *self = state,
        }
    }
}
