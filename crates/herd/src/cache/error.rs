//! [`CacheError`]: why a cache operation failed, on the hub's side and on a worker's; and how a
//! hub-side error crosses the channel with its kind intact ([`WireError`]).

use std::time::Duration;

use super::proto::WireError;
use super::source::SourceError;
use crate::report::chain;

/// Why a cache operation failed. A worker's [`crate::cache::Cache`] sees the same kinds the hub
/// produced (the hub sends a code with every error), so both sides can be matched alike.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CacheError {
    /// The source failed and nothing usable is cached (never loaded, or older than
    /// [`crate::cache::CacheConfig::max_stale`]).
    #[error("the source failed on {key:?}")]
    Source {
        /// The key.
        key: String,
        /// Why: [`SourceError::Unavailable`] when the source is down.
        #[source]
        source: SourceError,
    },
    /// The value is larger than [`crate::cache::CacheConfig::max_value`].
    #[error("value of {key:?} is {len} bytes, more than the limit of {max}")]
    TooLarge {
        /// The key.
        key: String,
        /// Its length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// The load did not finish in time.
    #[error("loading {0:?} took longer than {1:?}")]
    Timeout(String, Duration),
    /// A shared value could not be created or mapped.
    #[error("shared memory")]
    Shared(#[source] std::io::Error),
    /// The primary serves no cache (its cluster was built without a hub).
    #[error("this primary serves no cache")]
    NoHub,
    /// This worker has too many cache calls in flight at the hub (from older primaries: this
    /// one stops reading a worker's channel instead, until a call is answered).
    #[error("too many cache calls in flight (limit {0})")]
    Busy(usize),
    /// The hub could not read the call (a bad value encoding, say).
    #[error("bad cache call: {0}")]
    BadCall(String),
    /// The hub's warm-up did not finish in time ([`crate::cache::Cache::ready`]).
    #[error("the cache's warm-up did not finish within {0:?}")]
    NotReady(Duration),
    /// The hub's answer broke the cache protocol.
    #[error("bad answer from the cache hub: {0}")]
    BadReply(String),
    /// The hub failed in a way of no other kind (or answered with a bare text).
    #[error("cache hub: {0}")]
    Hub(String),
    /// The channel to the primary failed. The source is the channel's error, a `herd::Error`
    /// (`downcast_ref::<herd::Error>()` gets it back).
    #[error("cache call failed")]
    Channel(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl CacheError {
    /// The error for `key` when its source call failed with `source`.
    pub(super) fn source(key: &str, source: SourceError) -> CacheError {
        CacheError::Source {
            key: key.into(),
            source,
        }
    }

    /// A copy for one more waiter of a shared load (errors are not `Clone`), about `key`.
    pub(super) fn for_waiter(&self, key: &str) -> CacheError {
        match self {
            CacheError::Source { source, .. } => CacheError::source(
                key,
                match source {
                    SourceError::Unavailable(s) => SourceError::Unavailable(s.clone()),
                    SourceError::Failed(s) => SourceError::Failed(s.clone()),
                    SourceError::Unsupported(s) => SourceError::Unsupported(s),
                },
            ),
            CacheError::TooLarge { key, len, max } => CacheError::TooLarge {
                key: key.clone(),
                len: *len,
                max: *max,
            },
            CacheError::Timeout(k, d) => CacheError::Timeout(k.clone(), *d),
            other => CacheError::Hub(chain(other)),
        }
    }

    /// What the hub sends a worker about this error.
    pub(super) fn to_wire(&self) -> WireError {
        match self {
            CacheError::Source { key, source } => {
                let key = key.clone();
                match source {
                    SourceError::Unavailable(why) => WireError::Unavailable {
                        key,
                        why: why.clone(),
                    },
                    SourceError::Failed(why) => WireError::SourceFailed {
                        key,
                        why: why.clone(),
                    },
                    SourceError::Unsupported(what) => WireError::Unsupported {
                        key,
                        why: (*what).into(),
                    },
                }
            }
            CacheError::TooLarge { key, len, max } => WireError::TooLarge {
                key: key.clone(),
                len: *len as u64,
                max: *max as u64,
            },
            CacheError::Timeout(key, d) => WireError::Timeout {
                key: key.clone(),
                ms: d.as_millis().min(u128::from(u64::MAX)) as u64,
            },
            CacheError::Shared(e) => WireError::Shared { why: chain(e) },
            CacheError::NoHub => WireError::NoHub,
            CacheError::Busy(limit) => WireError::Busy {
                limit: *limit as u64,
            },
            CacheError::BadCall(why) => WireError::BadCall { why: why.clone() },
            CacheError::Hub(why) => WireError::Hub { why: why.clone() },
            other => WireError::Hub { why: chain(other) },
        }
    }

    /// The error a worker's call of `op` gets from the hub's `wire` error. `op` names what a
    /// source refused as unsupported (its own text does not cross the channel).
    pub(super) fn from_wire(wire: WireError, op: &'static str) -> CacheError {
        let size = |n: u64| usize::try_from(n).unwrap_or(usize::MAX);
        match wire {
            WireError::Unavailable { key, why } => {
                CacheError::source(&key, SourceError::Unavailable(why))
            }
            WireError::SourceFailed { key, why } => {
                CacheError::source(&key, SourceError::Failed(why))
            }
            WireError::Unsupported { key, .. } => {
                CacheError::source(&key, SourceError::Unsupported(op))
            }
            WireError::TooLarge { key, len, max } => CacheError::TooLarge {
                key,
                len: size(len),
                max: size(max),
            },
            WireError::Timeout { key, ms } => CacheError::Timeout(key, Duration::from_millis(ms)),
            WireError::Shared { why } => CacheError::Shared(std::io::Error::other(why)),
            WireError::NoHub => CacheError::NoHub,
            WireError::Busy { limit } => CacheError::Busy(size(limit)),
            WireError::BadCall { why } => CacheError::BadCall(why),
            WireError::Hub { why } => CacheError::Hub(why),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_survives_the_channel() {
        let errors = [
            CacheError::source("k", SourceError::Unavailable("down".into())),
            CacheError::source("k", SourceError::Failed("WRONGTYPE".into())),
            CacheError::source("k", SourceError::Unsupported("store")),
            CacheError::TooLarge {
                key: "k".into(),
                len: 5,
                max: 4,
            },
            CacheError::Timeout("k".into(), Duration::from_millis(1500)),
            CacheError::NoHub,
            CacheError::Busy(1024),
            CacheError::BadCall("unknown encoding".into()),
            CacheError::Hub("the load was abandoned".into()),
        ];
        for e in errors {
            let text = e.to_wire().encode();
            let back = CacheError::from_wire(WireError::decode(&text).unwrap(), "store");
            assert_eq!(back.to_string(), e.to_string(), "{text}");
            assert_eq!(chain(&back), chain(&e), "{text}");
        }
        let shared = CacheError::Shared(std::io::Error::other("no memfd"));
        let back = CacheError::from_wire(shared.to_wire(), "get");
        assert!(matches!(back, CacheError::Shared(_)));
        assert!(chain(&back).contains("no memfd"));
    }

    #[test]
    fn a_bare_text_is_no_wire_error() {
        assert!(WireError::decode("this primary serves no cache").is_none());
        assert!(WireError::decode("{\"code\":\"from_the_future\"}").is_none());
    }
}
