//! herd's error type.

use std::time::Duration;

use crate::cache::error::CacheError;
use crate::ids::WorkerId;

pub use crate::report::chain;

/// What went wrong.
///
/// A send or request to a peer whose channel is gone is [`Error::ChannelClosed`] either way; a
/// peer that stopped reading is [`Error::Stalled`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The channel failed (bad frames from the peer, limits, i/o).
    #[error("channel error")]
    Wire(#[source] herd_wire::WireError),
    /// A worker process could not be started.
    #[error("cannot start worker")]
    Spawn(#[source] std::io::Error),
    /// This process was not started as a worker.
    #[error("not running as a herd worker: {0}")]
    NotAWorker(String),
    /// The handshake failed or did not come.
    #[error("handshake failed: {0}")]
    Handshake(String),
    /// The peer broke the protocol.
    #[error("protocol violation: {0}")]
    Protocol(String),
    /// A wait for the peer ran out of time.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
    /// The peer has not read its channel for this long: its queue stayed full.
    #[error("the peer is not reading its channel: its queue stayed full for {0:?}")]
    Stalled(Duration),
    /// The peer answered a request with an error.
    #[error("peer answered with an error: {0}")]
    Remote(String),
    /// Too many requests are waiting for replies.
    #[error("too many requests in flight (limit {0})")]
    TooManyRequests(usize),
    /// The channel is closed.
    #[error("channel closed")]
    ChannelClosed,
    /// The worker is gone.
    #[error("worker {0} is gone")]
    WorkerGone(WorkerId),
    /// The cluster's dispatcher is gone.
    #[error("the cluster is shut down")]
    ClusterGone,
    /// A system call failed.
    #[error("i/o error")]
    Io(#[from] std::io::Error),
    /// A descriptor cannot go to a Node worker (nothing was sent).
    #[error("cannot send this descriptor to a Node worker")]
    NodeHandle(#[from] crate::node::envelope::NodeHandleError),
    /// A cache operation failed.
    #[error("cache")]
    Cache(#[from] CacheError),
    /// Settings that cannot be used together, or at all (nothing was started).
    #[error("bad settings: {0}")]
    Config(String),
}

impl From<herd_wire::WireError> for Error {
    fn from(e: herd_wire::WireError) -> Error {
        match e {
            herd_wire::WireError::Closed => Error::ChannelClosed,
            herd_wire::WireError::Stalled(d) => Error::Stalled(d),
            e => Error::Wire(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn question_mark_turns_a_cache_error_into_the_crate_error() {
        fn call() -> Result<(), Error> {
            Err(CacheError::Busy(3))?
        }
        let e = call().unwrap_err();
        assert!(matches!(e, Error::Cache(CacheError::Busy(3))));
        assert_eq!(chain(&e), "cache: too many cache calls in flight (limit 3)");
    }

    #[test]
    fn a_cache_call_s_channel_failure_is_the_crate_error_underneath() {
        fn call() -> Result<(), Error> {
            Err(CacheError::Channel(Box::new(Error::ChannelClosed)))?
        }
        let e = call().unwrap_err();
        let Error::Cache(CacheError::Channel(inner)) = &e else {
            panic!("{e:?}");
        };
        assert!(matches!(
            inner.downcast_ref::<Error>(),
            Some(Error::ChannelClosed)
        ));
        assert_eq!(chain(&e), "cache: cache call failed: channel closed");
    }
}
