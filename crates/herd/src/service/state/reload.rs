//! The machine's rolling reloads and scaling: which slots a reload replaces and in what
//! batches, when a candidate takes over its slot, what a failed candidate stops, and how slots
//! are added and removed (also in the middle of a reload).

use std::collections::VecDeque;

use super::{Effect, Machine, Reload, Reply, Role, Slot, SlotState, Token, MAX_LISTENS};
use crate::service::Readiness;
use crate::service::{ServiceError, ServiceEvent};
use crate::WorkerId;

impl Machine {
    /// A candidate is ready: it takes over its slot, whose old worker is disconnected.
    pub(super) fn became_ready(&mut self, worker: WorkerId, fx: &mut Vec<Effect>) {
        let Some(m) = self.members.get_mut(&worker) else {
            return;
        };
        if m.role != Role::Candidate {
            return;
        }
        m.role = Role::Active;
        m.ready_at = None;
        let slot = m.slot.unwrap_or(0);
        let listening = m.listening.clone();
        if let Some(r) = &mut self.reload {
            if r.batch.remove(&slot).is_some() {
                r.replaced += 1;
            }
        }
        let s = &mut self.slots[slot];
        if s.state == SlotState::Removed {
            self.retire(worker, fx);
        } else {
            tracing::info!(%worker, slot, "new worker ready");
            if matches!(s.state, SlotState::Failed(_)) {
                s.crashes.clear();
            }
            // It listens where the slot's workers listened (or the slot never listened).
            s.listens.extend(listening);
            // A pending restart (its old worker crashed during the reload) is no longer needed.
            let old = std::mem::replace(&mut s.state, SlotState::Serving(worker));
            fx.push(Effect::Emit(ServiceEvent::Serving { slot, worker }));
            if let SlotState::Serving(old) = old {
                self.retire(old, fx);
            }
        }
        self.advance_reload(fx);
    }

    /// `worker` says it listens on `address`: remembered for it (and for its slot, if it serves
    /// one); a candidate listening on every address its slot's workers listened on is ready
    /// ([`Readiness::Listening`]), and any listening counts under [`Readiness::Notice`].
    pub(super) fn listening(&mut self, worker: WorkerId, address: String, fx: &mut Vec<Effect>) {
        let Some(m) = self.members.get_mut(&worker) else {
            return;
        };
        if m.listening.len() < MAX_LISTENS {
            m.listening.insert(address.clone());
        }
        let slot = m.slot.and_then(|s| self.slots.get_mut(s));
        match (m.role, slot) {
            (Role::Active, Some(s)) if s.listens.len() < MAX_LISTENS => {
                s.listens.insert(address);
            }
            (Role::Candidate, Some(s)) => {
                let ready = match self.config.readiness {
                    Readiness::Notice => true,
                    Readiness::Listening => s.listens.is_subset(&m.listening),
                    _ => false,
                };
                if ready {
                    self.became_ready(worker, fx);
                }
            }
            _ => {}
        }
    }

    /// The reload stops: its candidates are killed, the old workers keep serving, its callers
    /// hear why.
    pub(super) fn candidate_failed(
        &mut self,
        worker: Option<WorkerId>,
        why: String,
        fx: &mut Vec<Effect>,
    ) {
        if let Some(w) = worker {
            self.kill(w, fx);
        }
        if self.replacement_failed(&why, fx) {
            return;
        }
        let Some(r) = self.reload.take() else { return };
        for (id, _) in r.batch.values().flatten() {
            self.kill(*id, fx);
        }
        tracing::error!(replaced = r.replaced, total = r.total, %why, "reload stopped");
        fx.push(Effect::Emit(ServiceEvent::ReloadFailed {
            replaced: r.replaced,
            total: r.total,
            why: why.clone(),
        }));
        for t in r.waiters {
            let err = ServiceError::Reload {
                replaced: r.replaced,
                total: r.total,
                why: why.clone(),
            };
            fx.push(Effect::Reply(t, Reply::Reload(Err(err))));
        }
    }

    /// The slots not scaled away, in order.
    pub(super) fn live_slots(&self) -> VecDeque<usize> {
        (0..self.slots.len())
            .filter(|i| self.slots[*i].state != SlotState::Removed)
            .collect()
    }

    pub(super) fn reload(&mut self, t: Token, fx: &mut Vec<Effect>) {
        if self.stopping.is_some() {
            fx.push(Effect::Reply(t, Reply::Reload(Err(ServiceError::Stopping))));
            return;
        }
        if let Some(r) = &mut self.reload {
            // One more pass once this one is done, so every worker runs code at least as new
            // as this request.
            r.again = true;
            r.waiters.push(t);
            return;
        }
        let queue = self.live_slots();
        tracing::info!(
            workers = queue.len(),
            batch = self.config.reload_batch,
            "rolling reload"
        );
        self.reload = Some(Reload::pass(queue, vec![t], true));
        self.advance_reload(fx);
    }

    /// Starts the next batch of a reload, or finishes it.
    pub(super) fn advance_reload(&mut self, fx: &mut Vec<Effect>) {
        loop {
            let Some(r) = &mut self.reload else { return };
            if !r.batch.is_empty() {
                return;
            }
            if r.queue.is_empty() {
                let r = self.reload.take().expect("a reload");
                if r.user {
                    self.reloads += 1;
                    tracing::info!(replaced = r.replaced, "reload done");
                    fx.push(Effect::Emit(ServiceEvent::Reloaded {
                        replaced: r.replaced,
                    }));
                }
                if r.again {
                    let queue = self.live_slots();
                    self.reload = Some(Reload::pass(queue, r.waiters, true));
                    continue;
                }
                for t in r.waiters {
                    fx.push(Effect::Reply(t, Reply::Reload(Ok(r.replaced))));
                }
                return;
            }
            let n = self.config.reload_batch.max(1);
            let mut batch = Vec::new();
            while batch.len() < n {
                match r.queue.pop_front() {
                    Some(s) if self.slots[s].state == SlotState::Removed => {}
                    Some(s) => batch.push(s),
                    None => break,
                }
            }
            for slot in batch {
                if let Some(r) = &mut self.reload {
                    r.batch.insert(slot, None);
                }
                self.fork(slot, Role::Candidate, fx);
            }
        }
    }

    pub(super) fn scale(&mut self, n: usize, t: Token, fx: &mut Vec<Effect>) {
        if self.stopping.is_some() {
            fx.push(Effect::Reply(t, Reply::Scale(Err(ServiceError::Stopping))));
            return;
        }
        let live = self.live_slots();
        self.config.workers = n;
        if n > live.len() {
            // Removed slots first, then new ones.
            let mut need = n - live.len();
            for slot in 0..self.slots.len() {
                if need > 0 && self.slots[slot].state == SlotState::Removed {
                    self.slots[slot] = Slot::starting();
                    self.fork(slot, Role::Active, fx);
                    need -= 1;
                }
            }
            for _ in 0..need {
                self.slots.push(Slot::starting());
                self.fork(self.slots.len() - 1, Role::Active, fx);
            }
        } else {
            for &slot in live.iter().rev().take(live.len() - n) {
                let old = std::mem::replace(&mut self.slots[slot].state, SlotState::Removed);
                if let SlotState::Serving(w) = old {
                    self.retire(w, fx);
                }
                if let Some(r) = &mut self.reload {
                    let queued = r.queue.iter().position(|s| *s == slot);
                    let candidate = r.batch.remove(&slot);
                    if queued.is_some() || candidate.is_some() {
                        r.total = r.total.saturating_sub(1);
                    }
                    if let Some(i) = queued {
                        r.queue.remove(i);
                    }
                    if let Some(Some((w, _))) = candidate {
                        self.kill(w, fx);
                    }
                }
            }
            self.advance_reload(fx);
        }
        tracing::info!(workers = n, "scaled");
        fx.push(Effect::Emit(ServiceEvent::Scaled { workers: n }));
        fx.push(Effect::Reply(t, Reply::Scale(Ok(()))));
    }
}
