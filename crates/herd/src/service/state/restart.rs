//! Restarting a slot: after a crash (with a backoff, or giving up in a crash loop), after a
//! start that failed for want of resources (retried, never a crash), and after its worker was
//! killed for answering no liveness ping (at once, never a crash).

use std::time::Duration;

use tokio::time::Instant;

use super::{Effect, Machine, SlotState, START_RETRY_MAX, START_RETRY_MIN};
use crate::backoff::Backoff;
use crate::service::ServiceEvent;
use crate::{ExitStatus, WorkerId};

impl Machine {
    /// Slot `slot` lost its worker (or could not start one): restart after a backoff, or give
    /// up after too many crashes within the window.
    pub(super) fn crashed(
        &mut self,
        now: Instant,
        slot: usize,
        worker: Option<WorkerId>,
        status: Option<ExitStatus>,
        why: String,
        fx: &mut Vec<Effect>,
    ) {
        if self.stopping.is_some() {
            return;
        }
        let policy = &self.config.restart;
        let s = &mut self.slots[slot];
        s.start_failures = 0;
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
            s.state = SlotState::Failed(text.clone());
            fx.push(Effect::Emit(ServiceEvent::CrashLoop { slot, why: text }));
            return;
        }
        let delay = Backoff::new(policy.backoff_min, policy.backoff_max, false).delay_for(n);
        tracing::warn!(slot, %why, restart_in_ms = delay.as_millis() as u64, "worker crashed; restarting");
        s.state = SlotState::Restarting {
            at: crate::deadline::after(now, delay),
        };
        fx.push(Effect::Emit(ServiceEvent::Restarting {
            slot,
            worker,
            status,
            delay,
        }));
    }

    /// Slot `slot` could not start a worker for want of resources: try again after a backoff
    /// of its own (from the policy's first delay, at least [`START_RETRY_MIN`], doubling up to
    /// [`START_RETRY_MAX`]), with no crash counted.
    pub(super) fn start_later(
        &mut self,
        now: Instant,
        slot: usize,
        why: String,
        fx: &mut Vec<Effect>,
    ) {
        if self.stopping.is_some() {
            return;
        }
        let policy = &self.config.restart;
        let min = policy.backoff_min.max(START_RETRY_MIN);
        let s = &mut self.slots[slot];
        s.start_failures = s.start_failures.saturating_add(1);
        let delay = Backoff::new(min, START_RETRY_MAX.max(min), false).delay_for(s.start_failures);
        tracing::warn!(slot, %why, retry_in_ms = delay.as_millis() as u64, failures = s.start_failures, "cannot start a worker for want of resources; retrying (not a crash)");
        s.state = SlotState::Restarting {
            at: crate::deadline::after(now, delay),
        };
        fx.push(Effect::Emit(ServiceEvent::Restarting {
            slot,
            worker: None,
            status: None,
            delay,
        }));
    }

    /// Slot `slot`'s worker was killed for answering no liveness ping: a new one starts after
    /// the restart policy's backoff for the slot's count of such replacements (at once the
    /// first time, so a program that hangs again and again is not restarted in a tight loop),
    /// counted as a restart and as a replaced worker, never as a crash.
    pub(super) fn replace_unresponsive(
        &mut self,
        now: Instant,
        slot: usize,
        worker: WorkerId,
        status: ExitStatus,
        fx: &mut Vec<Effect>,
    ) {
        if self.stopping.is_some() {
            return;
        }
        let policy = &self.config.restart;
        let s = &mut self.slots[slot];
        s.unresponsive = s.unresponsive.saturating_add(1);
        s.start_failures = 0;
        let delay = match s.unresponsive {
            1 => Duration::ZERO,
            n => Backoff::new(policy.backoff_min, policy.backoff_max, false).delay_for(n - 1),
        };
        tracing::warn!(%worker, slot, %status, restart_in_ms = delay.as_millis() as u64, "unresponsive worker killed; starting its replacement");
        s.state = SlotState::Restarting {
            at: crate::deadline::after(now, delay),
        };
        fx.push(Effect::Emit(ServiceEvent::Restarting {
            slot,
            worker: Some(worker),
            status: Some(status),
            delay,
        }));
    }
}
