//! The machine's memory limit ([`ServiceConfig::max_memory`](crate::service::ServiceConfig)):
//! every [`ServiceConfig::memory_interval`](crate::service::ServiceConfig) the serving workers'
//! private resident memory is sampled ([`Effect::SampleMemory`], one job at a time, its
//! figures back as [`Input::Memory`]; a job not back within [`SAMPLE_TIME`] is given up on); a
//! worker over the limit in every sample for its window is replaced as a reload replaces it:
//! its slot goes through the reload queue, so the new worker is ready before the old one is
//! disconnected and drains (a candidate that fails leaves the old one serving). One sample
//! under the limit starts the window again. The window is
//! [`ServiceConfig::memory_window`](crate::service::ServiceConfig) doubled for each of the
//! slot's replacements in the last [`RECENT`] (at most [`MAX_WINDOW`]): a limit the program
//! needs more than is not a replacement loop.

use std::time::Duration;

use tokio::time::Instant;

use super::{Effect, Machine, Reload, Role, SlotState};
use crate::WorkerId;

/// How long a sample job may take before another is asked for.
pub(crate) const SAMPLE_TIME: Duration = Duration::from_secs(10);
/// Replacements this recent lengthen the window.
pub(crate) const RECENT: Duration = Duration::from_secs(600);
/// The longest window.
pub(crate) const MAX_WINDOW: Duration = Duration::from_secs(300);
/// The shortest sampling interval.
const MIN_INTERVAL: Duration = Duration::from_millis(100);

impl Machine {
    /// When the next sample is due, if one is.
    pub(super) fn next_sample(&self) -> Option<Instant> {
        self.config.max_memory?;
        if self.stopping.is_some() {
            return None;
        }
        Some(match self.sampling {
            // The job may be lost: another is asked for past its time.
            Some(asked) => self
                .sample_at
                .max(crate::deadline::after(asked, SAMPLE_TIME)),
            None => self.sample_at,
        })
    }

    /// Asks for a sample of the serving workers when one is due.
    pub(super) fn memory_tick(&mut self, now: Instant, fx: &mut Vec<Effect>) {
        if self.next_sample().is_none_or(|at| at > now) {
            return;
        }
        let workers: Vec<WorkerId> = self
            .members
            .iter()
            .filter(|(_, m)| m.role == Role::Active && m.slot.is_some())
            .map(|(id, _)| *id)
            .collect();
        let every = self.config.memory_interval.max(MIN_INTERVAL);
        self.sample_at = crate::deadline::after(now, every);
        self.sampling = None;
        if !workers.is_empty() {
            self.sampling = Some(now);
            fx.push(Effect::SampleMemory(workers));
        }
    }

    /// How long `slot`'s worker must stay over the limit at `now`.
    fn window(&mut self, slot: usize, now: Instant) -> Duration {
        let recent = &mut self.slots[slot].memory_recent;
        while recent
            .front()
            .is_some_and(|t| now.saturating_duration_since(*t) > RECENT)
        {
            recent.pop_front();
        }
        let doublings = recent.len().min(16) as u32;
        self.config
            .memory_window
            .saturating_mul(1u32 << doublings.min(20))
            .min(MAX_WINDOW.max(self.config.memory_window))
    }

    /// The sample's figures (private resident bytes per worker; a worker whose figure could
    /// not be read is left out).
    pub(super) fn memory(&mut self, now: Instant, rss: Vec<(WorkerId, u64)>, fx: &mut Vec<Effect>) {
        self.sampling = None;
        let Some(limit) = self.config.max_memory else {
            return;
        };
        for (worker, bytes) in rss {
            let Some(m) = self.members.get_mut(&worker) else {
                continue;
            };
            if bytes <= limit {
                m.over_since = None;
                continue;
            }
            let since = *m.over_since.get_or_insert(now);
            let Some(slot) = m.slot.filter(|_| m.role == Role::Active) else {
                continue;
            };
            if self.slots.get(slot).map(|s| &s.state) != Some(&SlotState::Serving(worker))
                || self.stopping.is_some()
            {
                continue;
            }
            let window = self.window(slot, now);
            if now.saturating_duration_since(since) < window {
                continue;
            }
            if self.replace_slot(slot, fx) {
                if let Some(m) = self.members.get_mut(&worker) {
                    m.over_since = None;
                }
                let s = &mut self.slots[slot];
                s.memory_replaced = s.memory_replaced.saturating_add(1);
                if s.memory_recent.len() >= 16 {
                    s.memory_recent.pop_front();
                }
                s.memory_recent.push_back(now);
                tracing::warn!(
                    %worker,
                    slot,
                    rss = bytes,
                    limit,
                    window_ms = window.as_millis() as u64,
                    "worker over the memory limit: replacing it (the new one ready first)"
                );
            }
        }
    }

    /// Queues `slot` for replacement as a reload replaces a slot (starting a reload of it
    /// alone if none is going on); false if it is already queued or being replaced.
    fn replace_slot(&mut self, slot: usize, fx: &mut Vec<Effect>) -> bool {
        match &mut self.reload {
            Some(r) if r.queue.contains(&slot) || r.batch.contains_key(&slot) => false,
            Some(r) => {
                r.queue.push_back(slot);
                r.total += 1;
                true
            }
            None => {
                self.reload = Some(Reload::pass([slot].into(), Vec::new(), false));
                self.advance_reload(fx);
                true
            }
        }
    }

    /// A memory replacement's candidate failed: the old worker keeps serving (logged); a user's
    /// reload asked for meanwhile still gets its pass. True if the reload was such a
    /// replacement (and is handled).
    pub(super) fn replacement_failed(&mut self, why: &str, fx: &mut Vec<Effect>) -> bool {
        if self.reload.as_ref().is_none_or(|r| r.user) {
            return false;
        }
        let r = self.reload.take().expect("a reload");
        for (id, _) in r.batch.values().flatten() {
            self.kill(*id, fx);
        }
        tracing::error!(%why, "the memory limit's replacement failed: the old worker keeps serving");
        if r.again {
            let queue = self.live_slots();
            self.reload = Some(Reload::pass(queue, r.waiters, true));
            self.advance_reload(fx);
        }
        true
    }
}
