//! What herd's tests and benchmarks share (`publish = false`; never a dependency of the library).
//!
//! - [`test_worker`]: the path of the `herd-test-worker` binary (this crate's `[[bin]]`), built
//!   (or brought up to date) on first use; [`echo_cluster`], a cluster of them.
//! - [`redis_server::RedisServer`]: a private `redis-server` on a free port (never 127.0.0.1:6379).
//! - [`cache`]: clusters of test workers (or Node workers) sharing a cache hub.
//! - [`events`]: a cluster's next event, or the next matching one, within a deadline.
//! - [`process`]: a process harness: free ports, temporary directories, child output read line
//!   by line with a deadline, and `/proc` (liveness, children, descriptors, memory).

#![deny(missing_docs)]

pub mod cache;
pub mod events;
pub mod process;
pub mod redis_server;
mod worker;

pub use worker::{echo_cluster, test_worker};

/// Says that the calling test cannot run what it is for here, and why (a tool or an other Node
/// version it needs is not installed): on stderr, and as a line in the file named by
/// `HERD_SKIP_LOG` when it is set, which `.ci/run` sets and counts at the end, so a skipped
/// test is reported as skipped, not as passed. The caller then returns.
pub fn skip(test: &str, why: &str) {
    eprintln!("SKIPPED {test}: {why}");
    if let Some(path) = std::env::var_os("HERD_SKIP_LOG") {
        use std::io::Write;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
        {
            let _ = writeln!(f, "{test}: {why}");
        }
    }
}
