//! Redis's invalidation pushes (client tracking, RESP3) turned into [`Invalidation`]s, on a
//! bounded stream to the hub: when the hub falls behind, the overflow collapses into one `All`.

use std::sync::atomic::{AtomicBool, Ordering};

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
}

impl Events {
    pub(super) fn new(tx: mpsc::Sender<Invalidation>) -> Events {
        Events {
            tx,
            overflow: AtomicBool::new(false),
            lost: AtomicBool::new(false),
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
                self.send(inv);
                false
            }
            PushKind::Disconnection => true,
            _ => false,
        }
    }
}
