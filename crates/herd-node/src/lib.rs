//! herd's Node.js addon: the host-shared cache for Node workers, with large values as `Buffer`s
//! over the primary's shared memory.
//!
//! A Node worker of a herd primary with a cache inherits a second channel beside Node's IPC
//! channel (`HERD_CACHE_FD`, see `herd::cache::channel`). This addon opens it with herd's own
//! worker-side replica ([`herd::cache::Cache`]: the local view, sequence-checked invalidations,
//! sealed memfds mapped copy-on-write) and hands values to JavaScript:
//!
//! - a value mapped from the hub's shared memory becomes a `Buffer` over that mapping: no copy,
//!   the pages are the same physical pages in every worker. The mapping lives as long as the
//!   local view or any `Buffer` over it holds it (a finalizer drops it after collection). One
//!   mapping never backs two `Buffer`s at once (V8 requires that of external memory): see
//!   [`buffers`].
//! - a small value (inline in the hub's reply) is copied into a fresh `Buffer`.
//!
//! The JavaScript side (`js/native.js` in the `herd-cluster` package) keeps each value's
//! `Buffer` beside the view's version of it, so a local hit is one call here ([`version`]) and a
//! map lookup there. Calls that need the primary return Promises, settled from the addon's own
//! runtime thread.
//!
//! Errors reach JavaScript as `Error`s whose message starts with a code: `HERD_TIMEOUT:`,
//! `HERD_CLOSED:`, `HERD_NOT_READY:` or `HERD_REMOTE:` (the hub's refusal, e.g. the source is
//! down); the package turns the prefix into `err.code`.

#![deny(missing_docs)]

mod buffers;

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use herd::cache::{Cache, CacheError, Versioned};
use napi::bindgen_prelude::Object;
use napi::bindgen_prelude::{Buffer, Either, FromNapiValue, ToNapiValue};
use napi::{sys, Env, Error, Result};
use napi_derive::napi;

/// The addon's runtime: one thread runs the channel's reader and every call to the primary.
fn runtime() -> Result<&'static tokio::runtime::Runtime> {
    static RT: OnceLock<std::result::Result<tokio::runtime::Runtime, String>> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("herd-cache")
            .enable_all()
            .build()
            .map_err(|e| format!("cannot start the addon's runtime thread: {e}"))
    })
    .as_ref()
    .map_err(|e| Error::from_reason(e.clone()))
}

static CACHE: OnceLock<Cache> = OnceLock::new();

fn cache() -> Result<&'static Cache> {
    CACHE
        .get()
        .ok_or_else(|| Error::from_reason("HERD_CLOSED: the cache channel is not open"))
}

/// Opens the cache channel this worker inherited (idempotent). Throws with the reason when
/// there is none or it cannot be used: not a Node worker of a herd primary with a cache, not
/// the primary's own child, or a failed handshake.
#[napi]
pub fn open() -> Result<()> {
    if CACHE.get().is_some() {
        return Ok(());
    }
    let cache = runtime()?
        .block_on(herd::cache::channel::connect())
        .map_err(|e| Error::from_reason(chain(&e)))?;
    let _ = CACHE.set(cache);
    Ok(())
}

/// The version of `key`'s value in the local view (a local hit), or `undefined` when the view
/// does not hold it.
#[napi]
pub fn version(key: String) -> Result<Option<f64>> {
    Ok(cache()?.local_version(&key).map(|v| v as f64))
}

/// Whether the local view still holds version `version` of `key` (not counted as a lookup).
#[napi]
pub fn holds(key: String, version: f64) -> Result<bool> {
    Ok(cache()?
        .local_entry(&key)
        .and_then(|e| e.version)
        .is_some_and(|v| v as f64 == version))
}

/// How many times the local view has dropped entries; while it stays the same, every version
/// handed out is still held.
#[napi]
pub fn changes() -> Result<f64> {
    Ok(cache()?.changes() as f64)
}

/// A Buffer over the 8 bytes of the view's change counter ([`changes`], little-endian), read by
/// JavaScript with `Atomics.load` on an `Int32Array`: while its low 32 bits stay the same, every
/// version the package holds is still the view's, so a local hit needs no call here.
#[napi]
pub fn changes_buffer(env: &Env) -> Result<Buffer> {
    // One Buffer per memory: V8 refuses a second over the same external memory.
    static GIVEN: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let counter = cache()?.changes_counter();
    if GIVEN.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return Err(Error::from_reason(
            "changesBuffer is given once per process",
        ));
    }
    // SAFETY: the counter lives in the view of the cache in `CACHE`, a static never dropped;
    // it is 8 bytes, and JavaScript only reads it (with Atomics.load).
    let value = unsafe { buffers::over_static(env.raw(), counter.as_ptr().cast(), 8)? };
    // SAFETY: `value` is a live Buffer of `env`.
    unsafe { Buffer::from_napi_value(env.raw(), value) }
}

/// `key`'s value from the local view, as `[version, Buffer | null, ttl]` (null: the key does not
/// exist), or `undefined` when the view does not hold it. Never waits.
#[napi]
pub fn take(key: String) -> Result<Option<Got>> {
    Ok(cache()?.local_entry(&key).map(Got))
}

/// `key`'s value: a Promise of `[version, Buffer | null, ttl]`, `version` -1 when the local view
/// does not keep it, `ttl` the ms it may still be used (-1: until invalidated). From the local view if it holds the key, else from the primary's hub.
#[napi]
pub fn get<'e>(env: &'e Env, key: String) -> Result<Object<'e>> {
    settle(env, async move {
        cache()?
            .get_versioned(&key)
            .await
            .map(Got)
            .map_err(cache_error)
    })
}

/// Stores `value` (a string or a Buffer) through the hub, invalidating `key` everywhere; `ttl`
/// in ms. A Promise of `true`.
#[napi]
pub fn set<'e>(
    env: &'e Env,
    key: String,
    value: Either<String, Buffer>,
    ttl: Option<f64>,
) -> Result<Object<'e>> {
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
    settle(env, async move {
        cache()?.set(&key, value, ttl).await.map_err(cache_error)?;
        Ok(true)
    })
}

/// Deletes `key` everywhere: a Promise of whether it existed.
#[napi]
pub fn delete<'e>(env: &'e Env, key: String) -> Result<Object<'e>> {
    settle(env, async move {
        cache()?.delete(&key).await.map_err(cache_error)
    })
}

/// A Promise of `true` once the hub's warm-up is done; rejects (`HERD_NOT_READY:`) after
/// `timeout` ms.
#[napi]
pub fn ready<'e>(env: &'e Env, timeout: f64) -> Result<Object<'e>> {
    let timeout = Duration::from_millis(timeout.clamp(1.0, 86_400_000.0) as u64);
    settle(env, async move {
        cache()?.ready(timeout).await.map_err(cache_error)?;
        Ok(true)
    })
}

/// A Promise of this worker's cache counters and the hub's, as JSON text.
#[napi]
pub fn stats<'e>(env: &'e Env) -> Result<Object<'e>> {
    settle(env, async move {
        let stats = cache()?.stats().await.map_err(cache_error)?;
        serde_json_text(&stats)
    })
}

/// Whether `buf` is valid UTF-8 (the package returns such values as strings by default).
#[napi]
pub fn is_utf8(buf: &[u8]) -> bool {
    std::str::from_utf8(buf).is_ok()
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
        let value = match value {
            Some(bytes) => buffers::to_buffer(env, bytes, shared)?,
            None => buffers::null(env)?,
        };
        buffers::triple(env, version, value, ttl)
    }
}

/// A Promise settled with `fut`'s outcome, run on the addon's runtime.
fn settle<'e, T, F>(env: &'e Env, fut: F) -> Result<Object<'e>>
where
    T: ToNapiValue + Send + 'static,
    F: std::future::Future<Output = Result<T>> + Send + 'static,
{
    let (deferred, promise) = env.create_deferred::<T, _>()?;
    runtime()?.spawn(async move {
        match fut.await {
            Ok(v) => deferred.resolve(move |_| Ok(v)),
            Err(e) => deferred.reject(e),
        }
    });
    Ok(promise)
}

/// A cache error as a JavaScript error with its code prefixed.
fn cache_error(e: CacheError) -> Error {
    let code = match &e {
        CacheError::Channel(inner) => match inner.downcast_ref::<herd::Error>() {
            Some(herd::Error::Timeout(_)) => "HERD_TIMEOUT",
            _ => "HERD_CLOSED",
        },
        CacheError::NotReady(_) => "HERD_NOT_READY",
        _ => "HERD_REMOTE",
    };
    Error::from_reason(format!("{code}: {}", chain(&e)))
}

/// An error with its sources on one line.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    herd::error::chain(e)
}

fn serde_json_text(stats: &herd::cache::CacheStats) -> Result<String> {
    serde_json::to_string(stats).map_err(|e| Error::from_reason(e.to_string()))
}
