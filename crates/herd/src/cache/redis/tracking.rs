//! Redis's invalidation pushes (client tracking, RESP3) turned into [`Invalidation`]s, on a
//! bounded stream to the hub: when the hub falls behind, the overflow collapses into one `All`.
//! The keys being read in chunks are watched ([`Events::watch`]): an invalidation of one of them,
//! or the loss of the connection, during the read tells the reader to start again.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use redis::{PushInfo, PushKind, Value};
use tokio::sync::mpsc;

use crate::cache::source::Invalidation;

/// The invalidation stream: bounded; when the hub falls behind, what does not fit collapses into
/// one `All` (which loses nothing: everything is re-checked).
pub(super) struct Events {
    tx: mpsc::Sender<Invalidation>,
    overflow: AtomicBool,
    /// Whether tracking is known to be down (`TrackingLost` sent, `TrackingRestored` not yet).
    pub(super) lost: AtomicBool,
    /// Keys being read in chunks: how many reads watch each, and how often it changed.
    watched: Arc<Mutex<HashMap<String, (usize, u64)>>>,
}

/// A key watched for changes while it is read; unwatched when dropped.
pub(super) struct Watch {
    watched: Arc<Mutex<HashMap<String, (usize, u64)>>>,
    key: String,
    seen: u64,
}

impl Watch {
    /// Whether the key changed (or the connection was lost) since the watch began.
    pub(super) fn changed(&self) -> bool {
        lock(&self.watched)
            .get(&self.key)
            .is_some_and(|w| w.1 != self.seen)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        let mut w = lock(&self.watched);
        if let Some(e) = w.get_mut(&self.key) {
            e.0 -= 1;
            if e.0 == 0 {
                w.remove(&self.key);
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Events {
    pub(super) fn new(tx: mpsc::Sender<Invalidation>) -> Events {
        Events {
            tx,
            overflow: AtomicBool::new(false),
            lost: AtomicBool::new(false),
            watched: Arc::default(),
        }
    }

    /// Watches `key` for changes from now on (see [`Watch::changed`]).
    pub(super) fn watch(&self, key: &str) -> Watch {
        let mut w = lock(&self.watched);
        let e = w.entry(key.to_owned()).or_insert((0, 0));
        e.0 += 1;
        Watch {
            watched: self.watched.clone(),
            key: key.to_owned(),
            seen: e.1,
        }
    }

    /// Marks `keys` (every watched key if `None`) as changed.
    pub(super) fn changed(&self, keys: Option<&[String]>) {
        let mut w = lock(&self.watched);
        if w.is_empty() {
            return;
        }
        match keys {
            Some(keys) => {
                for k in keys {
                    if let Some(e) = w.get_mut(k) {
                        e.1 += 1;
                    }
                }
            }
            None => w.values_mut().for_each(|e| e.1 += 1),
        }
    }

    /// Queues `inv` for the hub without waiting (an overflow becomes one `All`).
    pub(super) fn send(&self, inv: Invalidation) {
        if self.overflow.load(Ordering::Acquire) {
            if self.tx.try_send(Invalidation::All).is_err() {
                return;
            }
            self.overflow.store(false, Ordering::Release);
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(inv) {
            self.overflow.store(true, Ordering::Release);
        }
    }

    /// Takes a push from Redis (on the connection's own task: must not block): an
    /// invalidation is queued for the hub; whether the push says the connection closed.
    pub(super) fn on_push(&self, push: PushInfo) -> bool {
        match push.kind {
            PushKind::Invalidate => {
                let inv = match push.data.into_iter().next() {
                    Some(Value::Array(keys)) | Some(Value::Set(keys)) => Invalidation::Keys(
                        keys.into_iter()
                            .filter_map(|k| match k {
                                Value::BulkString(b) => {
                                    Some(String::from_utf8_lossy(&b).into_owned())
                                }
                                Value::SimpleString(s) => Some(s),
                                _ => None,
                            })
                            .collect(),
                    ),
                    // A nil key list: the whole keyspace was flushed.
                    _ => Invalidation::All,
                };
                match &inv {
                    Invalidation::Keys(keys) => self.changed(Some(keys)),
                    _ => self.changed(None),
                }
                self.send(inv);
                false
            }
            PushKind::Disconnection => true,
            _ => false,
        }
    }
}
