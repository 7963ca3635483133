//! The state machine, driven without processes or sleeps: inputs in, effects out, the clock
//! moved by hand. This module is the harness; the tests are grouped by concern beside it.

use std::time::Duration;

use tokio::time::Instant;

use super::state::{Cmd, Effect, Input, Machine, Reply, Role, SlotState};
use super::status::{build, Dropped};
use super::{
    Outcome, Readiness, Restart, RestartPolicy, ServiceConfig, ServiceError, ServiceEvent,
};
use crate::{ExitStatus, WorkerId};

pub(super) const CODE_0: ExitStatus = ExitStatus {
    code: Some(0),
    signal: None,
};
pub(super) const CODE_1: ExitStatus = ExitStatus {
    code: Some(1),
    signal: None,
};

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn w(n: u64) -> WorkerId {
    WorkerId(n)
}

pub(super) fn config(workers: usize) -> ServiceConfig {
    ServiceConfig {
        workers,
        restart: RestartPolicy {
            mode: Restart::OnFailure,
            backoff_min: ms(100),
            backoff_max: ms(1000),
            max_restarts: 3,
            window: Duration::from_secs(60),
        },
        readiness: Readiness::Online,
        ready_timeout: ms(5000),
        reload_batch: 1,
        ..ServiceConfig::default()
    }
}

/// A machine with a hand-driven clock and worker ids handed out in fork order.
pub(super) struct Harness {
    pub(super) m: Machine,
    pub(super) now: Instant,
    pub(super) next_worker: u64,
    pub(super) next_token: u64,
}

impl Harness {
    /// A machine whose initial forks all succeeded: slot `i` is served by worker `i + 1`.
    pub(super) fn start(config: ServiceConfig) -> Harness {
        let (m, fx) = Machine::new(config);
        let mut h = Harness {
            m,
            now: Instant::now(),
            next_worker: 1,
            next_token: 0,
        };
        let fx = h.forks_succeed(fx);
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Emit(ServiceEvent::Serving { .. }))));
        h
    }

    pub(super) fn step(&mut self, input: Input) -> Vec<Effect> {
        self.m.handle(self.now, input)
    }

    /// Every `Fork` in `fx` succeeds (in order, ids counting up); `fx` and what followed.
    pub(super) fn forks_succeed(&mut self, fx: Vec<Effect>) -> Vec<Effect> {
        let mut all = Vec::new();
        let mut queue: std::collections::VecDeque<Effect> = fx.into();
        while let Some(e) = queue.pop_front() {
            if let Effect::Fork { slot, role } = e {
                let worker = w(self.next_worker);
                self.next_worker += 1;
                queue.extend(self.step(Input::Started { slot, role, worker }));
            }
            all.push(e);
        }
        all
    }

    pub(super) fn advance(&mut self, d: Duration) -> Vec<Effect> {
        self.now += d;
        self.step(Input::Tick)
    }

    pub(super) fn cmd(&mut self, cmd: impl FnOnce(u64) -> Cmd) -> (u64, Vec<Effect>) {
        self.next_token += 1;
        let t = self.next_token;
        (t, self.step(Input::Cmd(cmd(t))))
    }

    pub(super) fn exit(&mut self, worker: u64, status: ExitStatus) -> Vec<Effect> {
        self.step(Input::Exited {
            worker: w(worker),
            status,
        })
    }

    pub(super) fn serving(&self) -> Vec<(usize, WorkerId)> {
        self.m.serving()
    }
}

pub(super) fn forks(fx: &[Effect]) -> Vec<(usize, Role)> {
    fx.iter()
        .filter_map(|e| match e {
            Effect::Fork { slot, role } => Some((*slot, *role)),
            _ => None,
        })
        .collect()
}

pub(super) fn disconnects(fx: &[Effect]) -> Vec<WorkerId> {
    let mut v: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Disconnect(w) => Some(*w),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

pub(super) fn kills(fx: &[Effect]) -> Vec<WorkerId> {
    let mut v: Vec<_> = fx
        .iter()
        .filter_map(|e| match e {
            Effect::Kill(w) => Some(*w),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

pub(super) fn restart_delay(fx: &[Effect]) -> Option<Duration> {
    fx.iter().find_map(|e| match e {
        Effect::Emit(ServiceEvent::Restarting { delay, .. }) => Some(*delay),
        _ => None,
    })
}

pub(super) fn finish(fx: &[Effect]) -> Option<Outcome> {
    fx.iter().find_map(|e| match e {
        Effect::Finish(o) => Some(o.clone()),
        _ => None,
    })
}

pub(super) fn reload_reply(fx: &[Effect], token: u64) -> Option<&Result<usize, ServiceError>> {
    fx.iter().find_map(|e| match e {
        Effect::Reply(t, Reply::Reload(r)) if *t == token => Some(r),
        _ => None,
    })
}

pub(super) fn stop_replied(fx: &[Effect], token: u64) -> bool {
    fx.iter()
        .any(|e| matches!(e, Effect::Reply(t, Reply::Stop) if *t == token))
}

mod lifecycle;
mod memory;
mod reloads;
mod restarts;
