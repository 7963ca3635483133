//! herd's Node.js addon: the host-shared cache for Node workers, with large values as `Buffer`s
//! over the primary's shared memory.
//!
//! A Node worker of a herd primary with a cache inherits a second channel beside Node's IPC
//! channel (`HERD_CACHE_FD`, see `herd::cache::channel`), in herd's binary protocol. This addon
//! runs it on Node's own event loop (`conn`, `uv`) with herd's replica logic
//! ([`herd::cache::CacheClient`]: the local view, sequence-checked invalidations, sealed memfds
//! mapped copy-on-write), and hands values to JavaScript:
//!
//! - a value mapped from the hub's shared memory becomes a `Buffer` over that mapping: no copy;
//!   the pages are the same physical pages in every worker. The mapping lives as long as the
//!   local view or any `Buffer` over it holds it (see `buffers`).
//! - a small value (inline in the hub's reply) is copied into a fresh `Buffer`.
//!
//! The JavaScript side (`js/native.js` in the `herd-cluster` package) keeps each value's
//! `Buffer` beside the view's version of it and reads the view's change counter from memory
//! ([`changes_buffer`]), so most local hits make no call here at all.
//!
//! Errors reach JavaScript as `Error`s whose message starts with a code: `HERD_TIMEOUT:`,
//! `HERD_CLOSED:`, `HERD_BUSY:`, `HERD_NOT_READY:` or `HERD_REMOTE:` (the hub's refusal, e.g.
//! the source is down); the package turns the prefix into `err.code`.
//!
//! Unsafe code (Node-API and libuv calls) lives in `buffers`, `uv` and `conn`, each block
//! with its `SAFETY` comment.

#![deny(missing_docs)]

mod buffers;
mod conn;
mod spin;
mod uv;

use std::ptr;
use std::time::Duration;

use bytes::Bytes;
use herd::cache::{Answer, CacheClient, CacheError, Call, Versioned};
use napi::bindgen_prelude::{Buffer, Either, FromNapiValue, ToNapiValue};
use napi::{sys, Env, Error, Result};
use napi_derive::napi;

fn client() -> Result<&'static CacheClient> {
    conn::client().ok_or_else(|| Error::from_reason("HERD_CLOSED: the cache channel is not open"))
}

/// Opens the cache channel this worker inherited (idempotent). Throws with the reason when
/// there is none or it cannot be used: not a Node worker of a herd primary with a cache, not
/// the primary's own child, or a failed handshake.
#[napi]
pub fn open(env: &Env) -> Result<()> {
    // SAFETY: `env` is this JavaScript thread's, as napi passes it.
    unsafe { conn::open(env.raw()) }.map_err(Error::from_reason)
}

/// The version of `key`'s value in the local view (counted as a local hit), or `undefined`
/// when the view does not hold it.
#[napi]
pub fn version(key: String) -> Result<Option<f64>> {
    Ok(client()?.local_version(&key).map(|v| v as f64))
}

/// Whether the local view still holds version `version` of `key` (not counted as a lookup).
#[napi]
pub fn holds(key: String, version: f64) -> Result<bool> {
    Ok(client()?
        .local_entry(&key)
        .and_then(|e| e.version)
        .is_some_and(|v| v as f64 == version))
}

/// A Buffer over the 8 bytes of the view's change counter (little-endian), read by JavaScript
/// with `Atomics.load` on an `Int32Array`: while its low 32 bits stay the same, every version
/// the package holds is still the view's, so a local hit needs no call here. Given once.
#[napi]
pub fn changes_buffer(env: &Env) -> Result<Buffer> {
    // One Buffer per memory: V8 refuses a second over the same external memory.
    static GIVEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let counter = client()?.changes();
    if GIVEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::from_reason(
            "changesBuffer is given once per process",
        ));
    }
    // SAFETY: the counter lives in the client in a static `OnceLock`, never dropped; it is 8
    // bytes, and JavaScript only reads it (with Atomics.load).
    let value = unsafe { buffers::over_static(env.raw(), counter.as_ptr().cast(), 8)? };
    // SAFETY: `value` is a live Buffer of `env`.
    unsafe { Buffer::from_napi_value(env.raw(), value) }
}

/// `key`'s value from the local view, as `[version, Buffer | null, ttl]` (null: the key does
/// not exist; ttl: ms it may still be used, -1 until invalidated), or `undefined` when the
/// view does not hold it. Never waits.
#[napi]
pub fn take(key: String) -> Result<Option<Got>> {
    Ok(client()?.local_entry(&key).map(Got))
}

/// `key`'s value from the primary's hub: a Promise of `[version, Buffer | null, ttl]`,
/// `version` -1 when the local view does not keep it.
#[napi]
pub fn get(env: &Env, key: String) -> Result<Promise> {
    call(env, Call::Get(key))
}

/// Stores `value` (a string or a Buffer) through the hub, invalidating `key` everywhere; `ttl`
/// in ms. A Promise of `true`.
#[napi]
pub fn set(
    env: &Env,
    key: String,
    value: Either<String, Buffer>,
    ttl: Option<f64>,
) -> Result<Promise> {
    let value = match value {
        Either::A(s) => Bytes::from(s.into_bytes()),
        Either::B(b) => Bytes::copy_from_slice(&b),
    };
    let ttl = match ttl {
        Some(ms) if ms.is_finite() && ms >= 1.0 => Some(Duration::from_millis(ms as u64)),
        Some(ms) => {
            return Err(Error::from_reason(format!(
                "ttl {ms} is not a positive number of ms"
            )))
        }
        None => None,
    };
    call(env, Call::Set { key, value, ttl })
}

/// Deletes `key` everywhere: a Promise of whether it existed.
#[napi]
pub fn delete(env: &Env, key: String) -> Result<Promise> {
    call(env, Call::Delete(key))
}

/// A Promise of whether the hub's warm-up finished within `timeout` ms.
#[napi]
pub fn ready(env: &Env, timeout: f64) -> Result<Promise> {
    let timeout = Duration::from_millis(timeout.clamp(1.0, 86_400_000.0) as u64);
    call(env, Call::Ready(timeout))
}

/// A Promise of this worker's cache counters and the hub's, as JSON text.
#[napi]
pub fn stats(env: &Env) -> Result<Promise> {
    call(env, Call::Stats)
}

/// Rejects the calls whose reply is overdue (`HERD_TIMEOUT`), as each new call also does; the
/// package calls it from its timer while calls wait, so a lost reply does not keep the process
/// alive or its Promise pending.
#[napi]
pub fn expire() {
    conn::with_conn(|conn| conn.expire());
}

/// Reads the replies to the `get`s sent since the last call, until they are all answered or
/// `HERD_CACHE_SPIN_US` (default 100 µs) passes with nothing arriving, instead of leaving them
/// to the event loop, and settles their Promises: the package calls it from a microtask after
/// `get`s. Only while the loop has no other I/O ready, bounded per turn of the loop, and backs
/// off while the primary does not answer in time (see the `spin` module).
#[napi]
pub fn spin() {
    conn::with_conn(|c| c.spin());
    conn::settle_ready();
}

/// How `get`s waited for their replies (see `HERD_CACHE_SPIN_US`): `[waits begun, waits that
/// ended with every reply, the budget in µs, waits not begun or cut short for the loop's other
/// I/O]`.
#[napi]
pub fn spin_stats() -> Result<Vec<f64>> {
    conn::with_conn(|c| c.spin_counts().to_vec())
        .ok_or_else(|| Error::from_reason("HERD_CLOSED: the cache channel is not open"))
}

/// The local view's bounds: `[entries, bytes]`.
#[napi]
pub fn local_limits() -> Vec<f64> {
    vec![
        herd::cache::LOCAL_MAX_ENTRIES as f64,
        herd::cache::LOCAL_MAX_BYTES as f64,
    ]
}

/// Whether `buf` is valid UTF-8 (the package returns such values as strings by default).
#[napi]
pub fn is_utf8(buf: &[u8]) -> bool {
    std::str::from_utf8(buf).is_ok()
}

/// A Promise, as napi made it.
pub struct Promise(sys::napi_value);

impl ToNapiValue for Promise {
    unsafe fn to_napi_value(_env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        Ok(val.0)
    }
}

/// Sends `c` on the channel: a Promise settled by its reply.
fn call(env: &Env, c: Call) -> Result<Promise> {
    let mut deferred = ptr::null_mut();
    let mut promise = ptr::null_mut();
    // SAFETY: `env` is this thread's; napi fills both out-pointers on success.
    napi::check_status!(unsafe {
        sys::napi_create_promise(env.raw(), &mut deferred, &mut promise)
    })?;
    let sent = conn::with_conn(|conn| conn.call(c, deferred));
    conn::settle_ready();
    if sent.is_none() {
        // SAFETY: the deferred was just made on this thread and is settled once, here.
        unsafe {
            reject_text(
                env.raw(),
                deferred,
                "HERD_CLOSED: the cache channel is not open",
            )
        };
    }
    Ok(Promise(promise))
}

/// A value for JavaScript: `[version, Buffer | null, ttl ms or -1]`.
pub struct Got(Versioned);

impl ToNapiValue for Got {
    unsafe fn to_napi_value(env: sys::napi_env, val: Self) -> Result<sys::napi_value> {
        let Versioned {
            value,
            version,
            shared,
            ttl,
        } = val.0;
        let version = version.map_or(-1.0, |v| v as f64);
        let ttl = ttl.map_or(-1.0, |t| t.as_secs_f64() * 1000.0);
        // SAFETY: napi calls this on the JavaScript thread with its env.
        unsafe {
            let value = match value {
                Some(bytes) => buffers::to_buffer(env, bytes, shared)?,
                None => buffers::null(env)?,
            };
            buffers::triple(env, version, value, ttl)
        }
    }
}

/// Settles `deferred` with `answer`, or rejects it with the error's code and text.
///
/// # Safety
/// On the JavaScript thread, inside a handle scope; `deferred` not settled before.
pub(crate) unsafe fn settle_answer(
    env: sys::napi_env,
    deferred: sys::napi_deferred,
    answer: std::result::Result<Answer, CacheError>,
) {
    let value = match answer {
        // SAFETY: the caller's contract.
        Ok(Answer::Got(v)) => unsafe { Got::to_napi_value(env, Got(v)) },
        // SAFETY: as above.
        Ok(Answer::Done(b)) => unsafe { bool::to_napi_value(env, b) },
        Ok(Answer::Stats(s)) => match serde_json::to_string(&s) {
            // SAFETY: as above.
            Ok(text) => unsafe { String::to_napi_value(env, text) },
            Err(e) => Err(Error::from_reason(e.to_string())),
        },
        Err(e) => {
            // SAFETY: as above.
            unsafe { reject_text(env, deferred, &error_text(&e)) };
            return;
        }
    };
    match value {
        // SAFETY: as above.
        Ok(v) => unsafe {
            sys::napi_resolve_deferred(env, deferred, v);
        },
        // SAFETY: as above.
        Err(e) => unsafe { reject_text(env, deferred, &format!("HERD_REMOTE: {e}")) },
    }
}

/// Rejects `deferred` with an `Error` whose message is `text`.
///
/// # Safety
/// On the JavaScript thread, inside a handle scope; `deferred` not settled before.
pub(crate) unsafe fn reject_text(env: sys::napi_env, deferred: sys::napi_deferred, text: &str) {
    let mut message = ptr::null_mut();
    let mut error = ptr::null_mut();
    // SAFETY: the caller's contract; `text` is valid UTF-8 of its length.
    unsafe {
        sys::napi_create_string_utf8(env, text.as_ptr().cast(), text.len() as isize, &mut message);
        sys::napi_create_error(env, ptr::null_mut(), message, &mut error);
        sys::napi_reject_deferred(env, deferred, error);
    }
}

/// A cache error's text with its code prefixed.
fn error_text(e: &CacheError) -> String {
    let code = match e {
        CacheError::Channel(inner) => match inner.downcast_ref::<herd::Error>() {
            Some(herd::Error::Timeout(_)) => "HERD_TIMEOUT",
            _ => "HERD_CLOSED",
        },
        CacheError::NotReady(_) => "HERD_NOT_READY",
        _ => "HERD_REMOTE",
    };
    format!("{code}: {}", herd::error::chain(e))
}
