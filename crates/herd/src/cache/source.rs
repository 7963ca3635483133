//! Where the primary's cache hub loads values from: the [`Source`] trait, implemented by
//! [`RedisSource`](super::RedisSource) and [`FileSource`](super::FileSource).
//!
//! A source is used by the primary alone (workers never talk to it). Every call may fail with a
//! [`SourceError`]; the hub keeps serving what it has cached (within its staleness bound) while a
//! source is down, so a source must fail fast (with its own timeouts) rather than hang.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

/// A boxed, sendable future (sources are used as trait objects).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A value loaded from a source.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Loaded {
    /// The value's bytes.
    pub value: Bytes,
    /// How long the source says it lives (Redis's `PTTL`), if it expires.
    pub ttl: Option<Duration>,
}

/// A change the source reports by itself (Redis's invalidation pushes).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Invalidation {
    /// These keys changed or were deleted.
    Keys(Vec<String>),
    /// Everything may have changed (`FLUSHALL`, a tracking connection re-established after
    /// invalidations may have been missed).
    All,
    /// The tracking connection is down: nothing cached can be trusted as fresh until
    /// [`Invalidation::TrackingRestored`].
    TrackingLost,
    /// Tracking works (again). Changes made while it was down were not reported, so this
    /// implies [`Invalidation::All`]: everything cached must be confirmed again.
    TrackingRestored,
}

/// Why a source call failed.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source cannot be reached (connection refused or lost, timed out).
    #[error("source unavailable: {0}")]
    Unavailable(String),
    /// The source answered with an error.
    #[error("source error: {0}")]
    Failed(String),
    /// The source does not support this operation (a read-only snapshot file, say).
    #[error("not supported by this source: {0}")]
    Unsupported(&'static str),
}

/// A place values come from. Implementations must be cheap to call concurrently; the hub makes
/// sure each key is loaded by one call at a time (single-flight).
pub trait Source: Send + Sync + 'static {
    /// A short description for logs and stats (`redis://127.0.0.1:6379/0`, `file:/srv/data`).
    fn describe(&self) -> String;

    /// Loads one key; `Ok(None)` if it does not exist.
    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Loaded>, SourceError>>;

    /// Loads many keys at once (pipelined where the source can), handing each key's outcome to
    /// `each`, with its index in `keys`, as soon as it is read: the caller keeps or drops each
    /// value before the next is read, so a batch of big values is never held at once. A key's
    /// own failure (a value over the size limit, a key of another type) is its outcome and the
    /// batch goes on; the call fails only when the source cannot go on (unreachable), after
    /// handing on every key before the one it failed at.
    fn load_each<'a>(
        &'a self,
        keys: &'a [String],
        each: &'a mut (dyn FnMut(usize, Result<Option<Loaded>, SourceError>) + Send),
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            for (i, k) in keys.iter().enumerate() {
                match self.load(k).await {
                    Err(e @ SourceError::Unavailable(_)) => return Err(e),
                    outcome => each(i, outcome),
                }
            }
            Ok(())
        })
    }

    /// The keys matching a glob `pattern` (Redis's `MATCH` syntax: `*`, `?`, `[...]`).
    fn scan<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<String>, SourceError>>;

    /// Stores a value (with an expiry, if given).
    fn store<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), SourceError>>;

    /// Deletes a key; whether it existed.
    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, SourceError>>;

    /// Starts reporting changes made by others, once; `None` if the source cannot (a snapshot
    /// file). Redis reports them through client tracking, a folder through its file-system
    /// watch. The hub calls it once at start.
    fn invalidations(&self) -> Option<mpsc::Receiver<Invalidation>> {
        None
    }

    /// How many calls this source has made to its backend (Redis commands sent, files read).
    fn calls(&self) -> u64;
}
