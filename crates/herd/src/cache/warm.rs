//! Warm-up: the hub loads the configured keys and patterns at start, in pipelined batches,
//! retrying (with the crate's [`Backoff`]) while the source is down, and reports its progress as
//! [`CacheConfig::progress`](super::CacheConfig::progress) asks: log lines, a callback, or not
//! at all. A key a lookup loaded first is left alone.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::config::{CacheConfig, Progress, WarmProgress};
use super::error::CacheError;
use super::source::{Loaded, Source, SourceError};
use super::store::{self, Store};
use crate::backoff::Backoff;
use crate::report::chain;

/// Loads the keys and patterns that `cfg` names from `source` into `store`, in batches, until
/// done.
pub(super) async fn warm_up(source: &dyn Source, store: &Store, cfg: &CacheConfig) {
    if cfg.warm_keys.is_empty() && cfg.warm_patterns.is_empty() {
        return;
    }
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), true);
    let keys = loop {
        match warm_keys(source, cfg).await {
            Ok(k) => break k,
            Err(e) => {
                let wait = backoff.fail();
                tracing::warn!(error = %e, ?wait, "warm-up cannot list keys; retrying");
                tokio::time::sleep(wait).await;
            }
        }
    };
    let started = std::time::Instant::now();
    let mut progress = WarmProgress {
        done: 0,
        total: keys.len() as u64,
        bytes: 0,
        finished: false,
    };
    if let Progress::Report(f) = &cfg.progress {
        f(&progress);
    }
    for chunk in keys.chunks(cfg.warm_batch.max(1)) {
        // Each value is kept (or dropped) as soon as it is read; after a failure the batch goes
        // on from the first key not yet handed on.
        let mut next = 0;
        while next < chunk.len() {
            let mut handed = 0;
            let mut each = |i: usize, outcome: Result<Option<Loaded>, SourceError>| {
                let key = &chunk[next + i];
                store.counters.loads.fetch_add(1, Ordering::Relaxed);
                match outcome.map_err(|e| CacheError::source(key, e)) {
                    Ok(loaded) => {
                        progress.bytes += loaded.as_ref().map_or(0, |l| l.value.len() as u64);
                        match store::fetched(key, loaded, cfg) {
                            Ok(value) => store.keep_warm(key, value),
                            Err(e) => {
                                tracing::warn!(key, error = %chain(&e), "warm-up skipped a key")
                            }
                        }
                    }
                    Err(e) => tracing::warn!(key, error = %chain(&e), "warm-up skipped a key"),
                }
                handed += 1;
            };
            let result = source.load_each(&chunk[next..], &mut each).await;
            next += handed;
            match result {
                Ok(()) if next < chunk.len() => {
                    tracing::error!(
                        asked = chunk.len(),
                        got = next,
                        "source answered a batch with too few values"
                    );
                    break;
                }
                Ok(()) => backoff.reset(),
                Err(e) => {
                    let wait = backoff.fail();
                    tracing::warn!(error = %e, ?wait, "warm-up batch failed; retrying");
                    tokio::time::sleep(wait).await;
                }
            }
        }
        progress.done += chunk.len() as u64;
        match &cfg.progress {
            Progress::Log => tracing::info!(
                done = progress.done,
                total = progress.total,
                bytes = progress.bytes,
                "cache warm-up"
            ),
            Progress::Report(f) => f(&progress),
            Progress::Off => {}
        }
    }
    progress.finished = true;
    if let Progress::Report(f) = &cfg.progress {
        f(&progress);
    }
    if !matches!(cfg.progress, Progress::Off) {
        tracing::info!(
            keys = keys.len(),
            bytes = progress.bytes,
            elapsed = ?started.elapsed(),
            "cache warm-up done"
        );
    }
}

/// The configured keys, then the keys matching the configured patterns, each once.
async fn warm_keys(source: &dyn Source, cfg: &CacheConfig) -> Result<Vec<String>, SourceError> {
    let mut seen = HashSet::new();
    let mut keys = Vec::new();
    for k in &cfg.warm_keys {
        if seen.insert(k.clone()) {
            keys.push(k.clone());
        }
    }
    for p in &cfg.warm_patterns {
        for k in source.scan(p).await? {
            if seen.insert(k.clone()) {
                keys.push(k);
            }
        }
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use bytes::Bytes;

    use super::*;
    use crate::cache::file::FileSource;

    #[tokio::test]
    async fn progress_is_reported_before_after_each_batch_and_at_the_end() {
        let data: BTreeMap<String, Bytes> = (0..5)
            .map(|i| (format!("k{i}"), Bytes::from(vec![b'v'; 10])))
            .collect();
        let reports = Arc::new(Mutex::new(Vec::new()));
        let seen = reports.clone();
        let config = CacheConfig {
            warm_patterns: vec!["k*".into()],
            warm_batch: 2,
            progress: Progress::report(move |p| seen.lock().unwrap().push(p.clone())),
            ..CacheConfig::default()
        };
        let store = Store::new(&config);
        warm_up(&FileSource::from_map("test", data), &store, &config).await;
        let reports = reports.lock().unwrap();
        let done: Vec<(u64, u64, bool)> = reports
            .iter()
            .map(|p| (p.done, p.bytes, p.finished))
            .collect();
        assert_eq!(
            done,
            [
                (0, 0, false),
                (2, 20, false),
                (4, 40, false),
                (5, 50, false),
                (5, 50, true)
            ]
        );
        assert!(reports.iter().all(|p| p.total == 5));
        assert_eq!(store.held().entries, 5);
        assert_eq!(store.counters.loads.load(Ordering::Relaxed), 5);
    }
}
