//! The worker-facing side of the hub, run by the primary: a worker's cache call, its answer in
//! the worker's codec (values inline, as Node text, or as a sealed memfd; errors as a
//! [`WireError`](super::proto::WireError) or, for Node, their text), and the forwarding of the
//! hub's invalidations to each worker. The hub and its store know no codec: this does.
//!
//! What one worker's calls may hold is bounded by [`CacheCalls`] in calls and in bytes of
//! requests ([`MAX_REQUEST_BYTES`]; past either the worker's channel is not read), in bytes of encoded replies not yet queued
//! ([`MAX_REPLY_BYTES`]: a reply takes its room before it is encoded; the send queue bounds the
//! queued ones) and in descriptors. Keys are at most [`MAX_KEY`] bytes, so neither a miss nor an
//! error text grows with what a worker sends. A value whose Node text would pass [`MAX_NODE_TEXT`]
//! is refused to a Node-json worker (the frame could not be sent anyway).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::CacheError;
use super::hub::{Hub, Push};
use super::node_text;
use super::proto::{self, CacheOp, GetReply, NodeGetReply, NodeText, WireValue};
use super::store::{Found, Value};
use crate::ipc::control::Control;
use crate::ipc::Request;
use crate::report::chain;
use crate::{Codec, Peer, WorkerId};
use herd_wire::Format;

/// Cache calls one worker may have in flight at the hub, refusals included. Past it the
/// worker's channel is not read until one is answered (backpressure).
const MAX_CACHE_CALLS: usize = 1024;

/// The longest a worker's `ready` call is held by the hub.
const MAX_READY_WAIT: Duration = Duration::from_secs(600);

/// Bytes of encoded replies one worker's calls may hold while they wait for room in its send
/// queue (which bounds the queued ones, 64 MiB by default). A reply larger than this waits until
/// it is the only one held.
pub(crate) const MAX_REPLY_BYTES: usize = 16 << 20;

/// Bytes of request frames one worker's calls in flight may hold (a `set` holds its value until
/// the source has it, which a frozen Redis can make its command deadline): past it the worker's
/// channel is not read until one is answered. A request larger than this waits until it is the
/// only one held (meanwhile the worker's channel is not read). A Node `set` in flight costs
/// about five times its value (its frame, the decoded value, the Redis command and its
/// encoding): about 40 MB per worker for sets up to this size (tests/cache_request_bytes.rs),
/// and five times the one request for a bigger one (a frame is at most herd-wire's 256 MiB).
pub(crate) const MAX_REQUEST_BYTES: usize = 8 << 20;

/// The longest key a worker may ask for (bytes); a longer one is refused before any lookup.
pub(crate) const MAX_KEY: usize = 64 << 10;

/// The longest Node text of a value sent to a Node-json worker: herd-wire's default frame limit
/// less room for the reply's other fields.
pub(crate) const MAX_NODE_TEXT: usize = (256 << 20) - 4096;

/// The longest Node text encoded on the runtime's threads; longer ones are made on a blocking
/// thread (tests/cache_reply_encoding.rs).
const ENCODE_HERE: usize = 64 << 10;

/// What a reply is charged beyond its value's bytes (its other fields, the frame's envelope).
const REPLY_OVERHEAD: usize = 256;

/// Replies carrying a shared value's descriptor that one worker's calls may hold while they
/// wait for room in its send queue (past them such a call waits before duplicating the
/// descriptor). With the send queue's own bound on queued descriptors (herd-wire charges each),
/// a worker that stops reading makes the primary hold at most a few hundred descriptors.
const MAX_SHARED_WAITING: usize = 64;

/// One worker's cache calls in flight (at most [`MAX_CACHE_CALLS`]): each holds a permit from
/// when it is read until its reply is queued or fails (the reply's send deadline bounds that).
pub(crate) struct CacheCalls {
    calls: Arc<Semaphore>,
    /// Bytes of requests in flight ([`MAX_REQUEST_BYTES`]).
    requests: Arc<Semaphore>,
    budget: Arc<Budget>,
}

/// One call's admission: its place among the calls in flight and its request's bytes, held
/// until its reply is queued or fails.
pub(crate) struct Admission {
    _call: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

/// What a request of `len` bytes is charged against [`MAX_REQUEST_BYTES`].
fn request_charge(len: usize) -> u32 {
    len.saturating_add(REPLY_OVERHEAD).min(MAX_REQUEST_BYTES) as u32
}

/// What one worker's replies waiting for queue room may hold besides their call permits.
struct Budget {
    /// Bytes of encoded replies ([`MAX_REPLY_BYTES`]).
    bytes: Semaphore,
    /// Descriptors ([`MAX_SHARED_WAITING`]).
    shared: Semaphore,
}

impl Budget {
    /// Waits until a reply of about `len` value bytes may be encoded (cancel-safe: a dropped
    /// wait gives up its place). Held until the reply is queued. `None` only if the semaphore
    /// were closed, which it never is.
    async fn bytes(&self, len: usize) -> Option<tokio::sync::SemaphorePermit<'_>> {
        let charge = len.saturating_add(REPLY_OVERHEAD).min(MAX_REPLY_BYTES);
        self.bytes.acquire_many(charge as u32).await.ok()
    }
}

impl Default for CacheCalls {
    fn default() -> Self {
        CacheCalls {
            calls: Arc::new(Semaphore::new(MAX_CACHE_CALLS)),
            requests: Arc::new(Semaphore::new(MAX_REQUEST_BYTES)),
            budget: Arc::new(Budget {
                bytes: Semaphore::new(MAX_REPLY_BYTES),
                shared: Semaphore::new(MAX_SHARED_WAITING),
            }),
        }
    }
}

impl CacheCalls {
    /// Admission for one more call whose request is `len` bytes, if there is room now.
    pub(crate) fn try_admit(&self, len: usize) -> Option<Admission> {
        let call = self.calls.clone().try_acquire_owned().ok()?;
        let bytes = (self.requests.clone())
            .try_acquire_many_owned(request_charge(len))
            .ok()?;
        Some(Admission {
            _call: call,
            _bytes: bytes,
        })
    }

    /// Waits for admission of a call whose request is `len` bytes (cancel-safe: dropping the
    /// future gives up its place and whatever it held). `None` only if a semaphore were
    /// closed, which they never are.
    pub(crate) fn admit(&self, len: usize) -> impl Future<Output = Option<Admission>> + 'static {
        let call = self.permit();
        let bytes = self.bytes(len);
        async move {
            let call = call.await?;
            bytes.await.map(|bytes| Admission {
                _call: call,
                _bytes: bytes,
            })
        }
    }

    /// Waits for a place among the calls in flight, before the request is read (cancel-safe).
    pub(crate) fn permit(
        &self,
    ) -> impl std::future::Future<Output = Option<OwnedSemaphorePermit>> + 'static {
        let sem = self.calls.clone();
        async move { sem.acquire_owned().await.ok() }
    }

    /// Waits for room for a request of `len` bytes (cancel-safe).
    pub(crate) fn bytes(&self, len: usize) -> impl Future<Output = Option<OwnedSemaphorePermit>> {
        let sem = self.requests.clone();
        async move { sem.acquire_many_owned(request_charge(len)).await.ok() }
    }

    /// The admission of a call that has its place (`call`, from [`CacheCalls::permit`]) and
    /// its request's room (`bytes`, from [`CacheCalls::bytes`]).
    pub(crate) fn admission(call: OwnedSemaphorePermit, bytes: OwnedSemaphorePermit) -> Admission {
        Admission {
            _call: call,
            _bytes: bytes,
        }
    }

    /// Serves one call from `worker` on `hub`, or refuses it when there is no hub, holding
    /// `admission` until the reply is queued or its deadline passes.
    ///
    /// The call runs at once, here, as far as it can without waiting: a value the hub holds is
    /// answered and its reply queued before this returns, with no task of its own (a miss
    /// answered from memory is the common call). Whatever has to wait (a load from the source,
    /// a full send queue) goes on in its own task, so the caller never waits.
    pub(crate) fn serve(
        &self,
        hub: Option<&Hub>,
        worker: WorkerId,
        codec: Codec,
        request: Request,
        admission: Admission,
    ) {
        let hub = hub.cloned();
        let budget = self.budget.clone();
        let mut call = Box::pin(async move {
            let _admission = admission;
            let sent = match hub {
                Some(hub) => answer(&hub, codec, request, &budget).await,
                None => reply_error(codec, request, &CacheError::NoHub, &budget).await,
            };
            if let Err(e) = sent {
                tracing::debug!(%worker, error = %chain(&e), "cache reply not sent");
            }
        });
        // Polled once with a waker that does nothing: if it is not done, the task spawned
        // with it polls it again at once, which registers the task's own waker wherever the
        // call waits.
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        if call.as_mut().poll(&mut cx).is_pending() {
            tokio::spawn(call);
        }
    }
}

async fn answer(
    hub: &Hub,
    codec: Codec,
    request: Request,
    budget: &Budget,
) -> Result<(), crate::Error> {
    let op: CacheOp = match request.decode() {
        Ok(op) => op,
        Err(e) => {
            let e = CacheError::BadCall(chain(&e));
            return reply_error(codec, request, &e, budget).await;
        }
    };
    let key_len = match &op {
        CacheOp::Get { key } | CacheOp::Set { key, .. } | CacheOp::Delete { key } => key.len(),
        CacheOp::Ready { .. } | CacheOp::Stats => 0,
    };
    if key_len > MAX_KEY {
        let e = CacheError::BadCall(format!(
            "a key of {key_len} bytes is longer than the limit of {MAX_KEY}"
        ));
        return reply_error(codec, request, &e, budget).await;
    }
    match op {
        CacheOp::Get { key } => match hub.lookup(&key).await {
            Ok(f) => reply_found(codec, &key, request, f, budget).await,
            Err(e) => reply_error(codec, request, &e, budget).await,
        },
        CacheOp::Set {
            key,
            value,
            encoding,
            ttl_ms,
        } => {
            let value = match codec {
                Codec::NodeJson => match proto::from_node(value, encoding.as_deref()) {
                    Ok(v) => v,
                    Err(e) => {
                        return reply_error(codec, request, &CacheError::BadCall(e), budget).await
                    }
                },
                Codec::Binary => value.0,
            };
            match hub
                .set(&key, value, ttl_ms.map(Duration::from_millis))
                .await
            {
                Ok(()) => request.reply(&true).await,
                Err(e) => reply_error(codec, request, &e, budget).await,
            }
        }
        CacheOp::Delete { key } => match hub.delete(&key).await {
            Ok(existed) => request.reply(&existed).await,
            Err(e) => reply_error(codec, request, &e, budget).await,
        },
        CacheOp::Ready { timeout_ms } => {
            // Bounded: a worker may be gone, and warm-up may wait for a source that is down.
            let limit = timeout_ms
                .map(Duration::from_millis)
                .unwrap_or(hub.inner.config.load_timeout)
                .min(MAX_READY_WAIT);
            let warm = hub.ready(limit).await;
            request.reply(&warm).await
        }
        CacheOp::Stats => request.reply(&hub.stats()).await,
    }
}

/// Answers with `e`: its kind for a replica (binary codec), its text for a Node peer.
async fn reply_error(
    codec: Codec,
    request: Request,
    e: &CacheError,
    budget: &Budget,
) -> Result<(), crate::Error> {
    let text = match codec {
        Codec::Binary => e.to_wire().encode(),
        Codec::NodeJson => chain(e),
    };
    let _bytes = budget.bytes(text.len()).await;
    request.reply_error(&text).await
}

async fn reply_found(
    codec: Codec,
    key: &str,
    request: Request,
    f: Found,
    budget: &Budget,
) -> Result<(), crate::Error> {
    let ttl_ms = f.ttl.map(|t| t.as_millis().min(u64::MAX as u128) as u64);
    match codec {
        Codec::NodeJson => {
            if request.codec() != Some(herd_wire::Codec::NodeJson) {
                return Err(crate::Error::ChannelClosed);
            }
            let bytes = f.value.as_ref().map(Value::bytes);
            let own = node_text::Own {
                ttl_ms,
                seq: f.seq,
                local: f.local,
                stale: f.stale,
            };
            let cell = f.value.as_ref().and_then(Value::node_text);
            if let Some(shared) = cell.and_then(node_text::TextCell::made) {
                // Made for an earlier call: neither measured nor encoded again.
                let _bytes = budget.bytes(shared.len()).await;
                return request
                    .reply_shared(Format::Json, shared, node_text::trailer(&own))
                    .await;
            }
            let len = match bytes.clone() {
                None => 0,
                Some(b) if b.len() <= ENCODE_HERE => NodeText::len_of(&b),
                // Measuring the text is a pass over the value: off the runtime's threads too.
                Some(b) => off_runtime(move || NodeText::len_of(&b)).await?,
            };
            if len > MAX_NODE_TEXT {
                let e = CacheError::TooLarge {
                    key: key.to_owned(),
                    len,
                    max: MAX_NODE_TEXT,
                };
                return reply_error(codec, request, &e, budget).await;
            }
            // Room first, then the text: a worker that does not read holds at most the budget
            // of replies (and one value's text beyond it), however many calls it makes.
            let _bytes = budget.bytes(len).await;
            let (seq, local, stale) = (f.seq, f.local, f.stale);
            // A big value's text is made once and shared by every reply of it (`node_text`).
            if let (Some(cell), Some(b)) = (cell, &bytes) {
                let made = cell.text(b.clone(), len, |v| async move {
                    off_runtime(move || node_text::shared_part(&v)).await
                });
                match made.await {
                    Ok(shared) => {
                        return request
                            .reply_shared(Format::Json, shared, node_text::trailer(&own))
                            .await
                    }
                    Err(node_text::NotKept::Failed(e)) => return Err(e),
                    // The process keeps as many texts as it may: this reply makes its own.
                    Err(node_text::NotKept::Full) => {}
                }
            }
            let found = f.value.is_some();
            let encode = move || {
                let text = bytes.as_deref().map(NodeText::of);
                let reply = NodeGetReply {
                    found,
                    value: text.as_ref().map(|t| &*t.json),
                    encoding: text.as_ref().and_then(|t| t.encoding),
                    ttl_ms,
                    seq,
                    local,
                    stale,
                };
                herd_wire::encode_to_send(herd_wire::Codec::NodeJson, &reply)
            };
            let (format, payload) = if len <= ENCODE_HERE {
                encode()?
            } else {
                // Off the runtime's threads: escaping a big value takes long enough to stall
                // the task that supervises the worker, and every task sharing its thread.
                off_runtime(encode).await??
            };
            request.reply_encoded(format, payload).await
        }
        Codec::Binary => {
            let mut reply = GetReply {
                found: f.value.is_some(),
                value: None,
                encoding: None,
                shared_len: None,
                ttl_ms,
                seq: f.seq,
                local: f.local,
                stale: f.stale,
            };
            match &f.value {
                Some(v @ Value::Shared(s)) => {
                    reply.shared_len = Some(v.len() as u64);
                    // Held until the reply is queued (see MAX_SHARED_WAITING); never closed.
                    let _room = budget.shared.acquire().await.ok();
                    let fd = s.fd().try_clone().map_err(crate::Error::Io)?;
                    request.reply_with_fds(&reply, vec![fd]).await
                }
                Some(Value::Inline(b)) => {
                    let _bytes = budget.bytes(b.len()).await;
                    reply.value = Some(WireValue(b.clone()));
                    request.reply(&reply).await
                }
                None => request.reply(&reply).await,
            }
        }
    }
}

/// Runs `work` on a blocking thread, at most one per CPU at once for the whole process: the
/// calls of every worker share them, so a flood of big replies neither takes the runtime's
/// blocking pool (which the folder source's reads and the reaper use too) nor more CPUs than
/// there are. Waiting for a turn is cancel-safe; the turn is held by the blocking work itself,
/// so a caller that gives up does not free it while the work still runs.
async fn off_runtime<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, crate::Error> {
    static TURNS: std::sync::OnceLock<Arc<Semaphore>> = std::sync::OnceLock::new();
    let turns = TURNS.get_or_init(|| {
        Arc::new(Semaphore::new(
            std::thread::available_parallelism().map_or(1, |n| n.get()),
        ))
    });
    let turn = turns.clone().acquire_owned().await;
    tokio::task::spawn_blocking(move || {
        let _turn = turn;
        work()
    })
    .await
    .map_err(|e| crate::Error::Io(std::io::Error::other(e)))
}

/// Sends the hub's invalidations to one worker, in order. A worker too slow to keep up (pushes
/// piling up, or one not taken within the send timeout) is told to drop its whole view instead. Ends when the worker's channel closes. Subscribes at once:
/// call it (and spawn the future) before the worker can ask anything, so it misses nothing.
pub(crate) fn forward_pushes(hub: &Hub, peer: Peer) -> impl std::future::Future<Output = ()> {
    let mut pushes = hub.subscribe();
    let hub = hub.clone();
    async move {
        // A push the worker did not take within the send timeout is lost to it: it owes a
        // clear, sent as soon as the worker reads again.
        let mut owe_clear = false;
        loop {
            let control = if owe_clear {
                Control::CacheClear {
                    seq: hub.current_seq(),
                }
            } else {
                // Ends with the worker's channel, not at the next push after it: a source that
                // never invalidates would otherwise keep every dead worker's channel open.
                let next = tokio::select! {
                    next = pushes.recv() => next,
                    () = peer.closed() => return,
                };
                match next {
                    Ok(Push::Invalidate { keys, seq }) => Control::CacheInvalidate { keys, seq },
                    Ok(Push::Clear { seq }) => Control::CacheClear { seq },
                    Err(RecvError::Lagged(_)) => Control::CacheClear {
                        seq: hub.current_seq(),
                    },
                    Err(RecvError::Closed) => return,
                }
            };
            match peer.control(&control).await {
                Ok(()) => owe_clear = false,
                Err(crate::Error::Stalled(_)) => owe_clear = true,
                Err(_) => return,
            }
        }
    }
}
