//! The machine's memory limit ([`ServiceConfig::max_memory`](crate::service::ServiceConfig)):
//! every [`ServiceConfig::memory_interval`](crate::service::ServiceConfig) the serving workers'
//! resident memory is sampled ([`Effect::SampleMemory`], one job at a time, its figures back
//! as [`Input::Memory`]); a worker over the limit in every sample for
//! [`ServiceConfig::memory_window`](crate::service::ServiceConfig) is replaced as a reload
//! replaces it: its slot goes through the reload queue, so the new worker is ready before the
//! old one is disconnected and drains (a candidate that fails leaves the old one serving).
//! One sample under the limit starts the window again.

use tokio::time::Instant;

use super::{Effect, Machine, Reload, Role, SlotState};
use crate::WorkerId;

impl Machine {
    /// When the next sample is due, if one is.
    pub(super) fn next_sample(&self) -> Option<Instant> {
        self.config.max_memory?;
        (!self.sampling && self.stopping.is_none()).then_some(self.sample_at)
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
        self.sample_at = crate::deadline::after(now, self.config.memory_interval);
        if !workers.is_empty() {
            self.sampling = true;
            fx.push(Effect::SampleMemory(workers));
        }
    }

    /// The sample's figures (resident bytes per worker; a worker whose figure could not be
    /// read is left out).
    pub(super) fn memory(&mut self, now: Instant, rss: Vec<(WorkerId, u64)>, fx: &mut Vec<Effect>) {
        self.sampling = false;
        let Some(limit) = self.config.max_memory else {
            return;
        };
        let window = self.config.memory_window;
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
            if now.saturating_duration_since(since) < window
                || self.slots.get(slot).map(|s| &s.state) != Some(&SlotState::Serving(worker))
                || self.stopping.is_some()
            {
                continue;
            }
            if self.replace_slot(slot, fx) {
                if let Some(m) = self.members.get_mut(&worker) {
                    m.over_since = None;
                }
                let s = &mut self.slots[slot];
                s.memory_replaced = s.memory_replaced.saturating_add(1);
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
                self.reload = Some(Reload {
                    queue: [slot].into(),
                    batch: Default::default(),
                    total: 1,
                    replaced: 0,
                    waiters: Vec::new(),
                    again: false,
                    user: false,
                });
                self.advance_reload(fx);
                true
            }
        }
    }
}
