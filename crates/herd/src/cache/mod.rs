//! The host-shared cache: one load per key per host, one copy in memory per host.
//!
//! The primary runs the **hub**: it owns the cached data, loads misses from a [`Source`] (Redis,
//! or files) with single-flight, warms up configured keys, and pushes invalidations to every
//! worker. Each worker has a **replica**, a local view read at memory speed; a miss asks the hub.
//! Large values live in sealed memfds mapped read-only by every worker.
//!
//! | module | owns |
//! |---|---|
//! | `config` | [`CacheConfig`], [`Progress`], [`WarmProgress`] |
//! | `error` | [`CacheError`], and how its kind crosses the channel |
//! | `store` | the hub's entries, byte accounting and eviction, in-flight loads, invalidation numbers |
//! | `hub` | the [`Hub`] handle: lookups, loads, writes, stats, invalidations |
//! | `warm` | warm-up: batches, retries, progress |
//! | `serve` | the worker-facing side: a worker's calls, their replies, pushes to it |
//! | `proto` | the payloads of cache calls and replies |
//! | `replica` | the worker's side: [`Cache`] and its local view |
//! | [`channel`] | the cache channel a Node worker gets for the `herd-node` addon: both sides |
//! | `client` | [`CacheClient`]: the replica's logic without I/O, for the addon |
//! | `source`, `file`, `redis` | [`Source`], [`FileSource`] (a folder it watches, or a snapshot), `RedisSource` (feature `redis`) |

pub mod channel;
mod client;
mod config;
pub(crate) mod error;
mod file;
mod hub;
mod node_text;
mod proto;
#[cfg(feature = "redis")]
mod redis;
mod replica;
pub(crate) mod serve;
mod source;
mod store;
mod warm;

pub use client::{Answer, CacheClient, Call, Received};
pub use config::{CacheConfig, Progress, ProgressFn, WarmProgress};
pub use error::CacheError;
pub use file::FileSource;
pub use hub::{Hub, HubStats};
#[cfg(feature = "redis")]
pub use redis::{RedisConfig, RedisSource};
pub(crate) use replica::LocalView;
pub use replica::{Cache, CacheStats, Versioned};
pub use replica::{LOCAL_MAX_BYTES, LOCAL_MAX_ENTRIES};
pub use source::{BoxFuture, Invalidation, Loaded, Source, SourceError};
pub use store::ENTRY_OVERHEAD;
