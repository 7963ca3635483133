//! The host-shared cache: one load per key per host, one copy in memory per host.
//!
//! The primary runs the **hub**: it owns the cached data, loads misses from a [`Source`] (Redis,
//! or files) with single-flight, warms up configured keys, and pushes invalidations to every
//! worker. Each worker has a **replica**, a local view read at memory speed; a miss asks the hub.
//! Large values live in sealed memfds mapped read-only by every worker.

mod file;
pub(crate) mod hub;
mod proto;
mod redis_source;
mod replica;
mod source;

pub use file::{glob_match, FileSource};
pub use hub::{CacheConfig, CacheError, Hub, HubStats, Progress};
pub use redis_source::{RedisConfig, RedisSource};
pub(crate) use replica::LocalView;
pub use replica::{Cache, CacheStats};
pub use source::{BoxFuture, Invalidation, Loaded, Source, SourceError};
