//! How the hub behaves: [`CacheConfig`], and how warm-up progress is reported ([`Progress`],
//! [`WarmProgress`]).

use std::sync::Arc;
use std::time::Duration;

/// How the hub behaves. Every field has a sensible default.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct CacheConfig {
    /// Values larger than this many bytes are shared as sealed memfds (default 64 KiB).
    pub share_above: usize,
    /// Largest value the hub accepts from its source (default 1 GiB); larger ones are errors.
    pub max_value: usize,
    /// Most bytes the hub keeps (default 8 GiB), counting every entry's key, value and a fixed
    /// per-entry overhead ([`ENTRY_OVERHEAD`](super::ENTRY_OVERHEAD)), known-absent keys
    /// included. Beyond it, entries are evicted: known-absent keys first, then the least
    /// recently used. A value larger than the whole budget is served but not kept.
    pub max_bytes: usize,
    /// Most entries the hub keeps, known-absent keys included (default 100,000); evicted as for
    /// `max_bytes`. It bounds the hub's bookkeeping whatever the keys: at the default, about
    /// 30 MB for keys of 100 bytes.
    pub max_entries: usize,
    /// Most known-absent keys the hub keeps (default 20,000, within `max_entries`); the oldest
    /// goes first. A flood of distinct missing keys (a scraper probing URLs) then costs a few
    /// megabytes, and never the values' room: 300,000 of them grow `herd run` by under 40 MB
    /// (herd-cli's tests/missing_keys.rs).
    pub max_misses: usize,
    /// How long a key the source said does not exist is remembered, by the hub and by workers
    /// (default 5 s); the next lookup after that asks the source again.
    pub miss_ttl: Duration,
    /// How long after it was last confirmed by the source a value may still be served while the
    /// source is unreachable (default 5 minutes).
    pub max_stale: Duration,
    /// How long one load may take before its waiters give up (default 30 s).
    pub load_timeout: Duration,
    /// Keys to load at start.
    pub warm_keys: Vec<String>,
    /// Patterns (Redis `MATCH` globs) whose keys are loaded at start.
    pub warm_patterns: Vec<String>,
    /// Keys per pipelined batch during warm-up (default 256).
    pub warm_batch: usize,
    /// How warm-up progress is reported (default: log lines).
    pub progress: Progress,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            share_above: 64 * 1024,
            max_value: 1 << 30,
            max_bytes: 8 << 30,
            max_entries: 100_000,
            max_misses: 20_000,
            miss_ttl: Duration::from_secs(5),
            max_stale: Duration::from_secs(300),
            load_timeout: Duration::from_secs(30),
            warm_keys: Vec::new(),
            warm_patterns: Vec::new(),
            warm_batch: 256,
            progress: Progress::Log,
        }
    }
}

/// A callback told about warm-up progress.
pub type ProgressFn = Arc<dyn Fn(&WarmProgress) + Send + Sync>;

/// How warm-up progress is reported. Either way, the end of warm-up is logged (unless `Off`).
#[derive(Clone, Default)]
pub enum Progress {
    /// A log line (`tracing` at info level) after each batch.
    #[default]
    Log,
    /// A call after each batch (and one before the first), e.g. to draw a progress bar. It
    /// runs on the warm-up task: it must return quickly.
    Report(ProgressFn),
    /// Nothing.
    Off,
}

impl Progress {
    /// Reports progress to `f`.
    pub fn report(f: impl Fn(&WarmProgress) + Send + Sync + 'static) -> Progress {
        Progress::Report(Arc::new(f))
    }
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Progress::Log => "Log",
            Progress::Report(_) => "Report(..)",
            Progress::Off => "Off",
        })
    }
}

/// Where warm-up stands, as given to [`Progress::Report`].
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct WarmProgress {
    /// Keys loaded (or skipped) so far.
    pub done: u64,
    /// Keys to load in all.
    pub total: u64,
    /// Bytes loaded so far.
    pub bytes: u64,
    /// Whether warm-up is over (the last report).
    pub finished: bool,
}
