//! [`RedisSource`]: the cache's source over one Redis connection, owned by the primary.
//!
//! - **One connection per host.** The primary's hub is the only Redis client on the host; it
//!   multiplexes every load, write and scan over one connection (the `redis` crate's
//!   `MultiplexedConnection`), made lazily and remade after a failure ([`link`]).
//! - **Freshness.** The connection speaks RESP3 and turns on client-side caching
//!   (`CLIENT TRACKING ON NOLOOP`) *before* its first read, so Redis pushes an `invalidate` for
//!   every key this host has read and someone else changed; `FLUSHALL` arrives as
//!   [`Invalidation::All`]. When the connection drops, [`Invalidation::TrackingLost`] is
//!   reported at once; when a new one is tracking again, [`Invalidation::TrackingRestored`]
//!   ([`tracking`]).
//! - **Outages.** Connecting and every command have deadlines. After a failure, reconnects
//!   back off exponentially with jitter; calls made meanwhile fail at once (the hub then serves
//!   what it has) instead of queueing behind a dead server. A background task reconnects while
//!   tracking is wanted, so freshness comes back without waiting for a miss.
//! - **Bounded replies.** A batch of loads is one pipelined round trip that reads each value's
//!   first 64 KiB; longer values continue in `GETRANGE` chunks of [`RedisConfig::chunk_size`],
//!   at most [`RedisConfig::chunks_in_flight`] at once, so Redis never holds more than that in
//!   this client's output buffer (the buffer that counts toward `maxmemory`, and that evicts live
//!   keys in a stampede). Big values are assembled in anonymous mappings, so their memory goes
//!   back to the system once the hub has sealed its copy ([`read`]).

mod link;
mod read;
mod tracking;

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::source::{BoxFuture, Invalidation, Loaded, Source, SourceError};
use link::{keep_connected, lock, Shared};

/// How [`RedisSource`] talks to Redis.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The deadline for opening a connection (default 1 s).
    pub connect_timeout: Duration,
    /// The deadline for each command's reply (default 5 s).
    pub command_timeout: Duration,
    /// Values longer than the first read (64 KiB) continue in chunks of this size (default
    /// 4 MiB).
    pub chunk_size: usize,
    /// How many chunks may be in flight at once (default 2): with `chunk_size`, what Redis holds
    /// in this client's output buffer for big values.
    pub chunks_in_flight: usize,
    /// Whether to track invalidations (RESP3 client tracking; default true).
    pub track: bool,
    /// The first reconnect delay (default 100 ms); it doubles after each failure.
    pub backoff_min: Duration,
    /// The longest reconnect delay (default 5 s).
    pub backoff_max: Duration,
    /// The `COUNT` hint for `SCAN` (default 1000).
    pub scan_count: usize,
    /// How many invalidations may wait for the hub before they collapse into one
    /// [`Invalidation::All`] (default 4096).
    pub invalidation_buffer: usize,
    /// The longest value read (default 1 GiB, the hub's own default limit): a longer one is
    /// refused from its `STRLEN`, before any byte past its first read is fetched.
    pub max_value: usize,
    /// Most bytes of chunked values being assembled at once, however many keys load together
    /// (default 1 GiB): a read waits for room before it takes its buffer. A value longer than
    /// this waits until it is the only one.
    pub max_assembling: usize,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(5),
            chunk_size: 4 << 20,
            chunks_in_flight: 2,
            track: true,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(5),
            scan_count: 1000,
            invalidation_buffer: 4096,
            max_value: 1 << 30,
            max_assembling: 1 << 30,
        }
    }
}

/// A [`Source`] backed by Redis string values: one connection per host (RESP3, with client
/// tracking so changes made by others are pushed as invalidations), deadlines on everything,
/// reconnects with backoff while calls fail fast, and replies bounded by chunked reads.
pub struct RedisSource {
    shared: Arc<Shared>,
}

impl RedisSource {
    /// A source for `url` (`redis://[user:password@]host:port[/db]`, or `redis+unix:///path`)
    /// with default settings. Nothing connects until the first call.
    pub fn open(url: &str) -> Result<RedisSource, SourceError> {
        RedisSource::with_config(url, RedisConfig::default())
    }

    /// A source for `url` with `config`.
    pub fn with_config(url: &str, config: RedisConfig) -> Result<RedisSource, SourceError> {
        Ok(RedisSource {
            shared: Arc::new(Shared::new(url, config)?),
        })
    }

    /// Values read from Redis (a value read in chunks counts once).
    pub fn reads(&self) -> u64 {
        self.shared.reads.load(Ordering::Relaxed)
    }
}

impl Drop for RedisSource {
    fn drop(&mut self) {
        // The reconnect task holds only a weak reference; wake it so it sees it is gone.
        self.shared.wake.notify_one();
    }
}

impl Source for RedisSource {
    fn describe(&self) -> String {
        self.shared.describe.clone()
    }

    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Loaded>, SourceError>> {
        Box::pin(async move {
            let h = self.shared.head(key).await?;
            self.shared.finish(key, h).await
        })
    }

    fn load_each<'a>(
        &'a self,
        keys: &'a [String],
        each: &'a mut (dyn FnMut(usize, Result<Option<Loaded>, SourceError>) + Send),
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            let mut done = 0;
            for group in keys.chunks(self.shared.heads_per_trip()) {
                let heads = match self.shared.heads(group).await {
                    Ok(heads) => heads,
                    Err(e @ SourceError::Unavailable(_)) => return Err(e),
                    // Redis refused the whole transaction (one key's ACL, say: EXECABORT):
                    // each key on its own, so the others load and that one is its error.
                    Err(_) if group.len() > 1 => {
                        let mut one_by_one = Vec::with_capacity(group.len());
                        for k in group {
                            match self.shared.head(k).await {
                                Err(e @ SourceError::Unavailable(_)) => return Err(e),
                                h => one_by_one.push(h),
                            }
                        }
                        one_by_one
                    }
                    Err(e) => vec![Err(e)],
                };
                for (k, h) in group.iter().zip(heads) {
                    let outcome = match h {
                        Ok(h) => self.shared.finish(k, h).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e @ SourceError::Unavailable(_)) = outcome {
                        return Err(e);
                    }
                    each(done, outcome);
                    done += 1;
                }
            }
            Ok(())
        })
    }

    fn scan<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<String>, SourceError>> {
        Box::pin(async move {
            let mut seen = HashSet::new();
            let mut keys = Vec::new();
            let mut cursor: u64 = 0;
            loop {
                let (pattern, count) = (pattern.to_string(), self.shared.config.scan_count);
                let (next, batch): (u64, Vec<Vec<u8>>) = self
                    .shared
                    .query(1, move |mut c| {
                        Box::pin(async move {
                            redis::cmd("SCAN")
                                .arg(cursor)
                                .arg("MATCH")
                                .arg(pattern)
                                .arg("COUNT")
                                .arg(count)
                                .query_async(&mut c)
                                .await
                        })
                    })
                    .await?;
                for k in batch {
                    // Keys that are not UTF-8 cannot be named through herd's API: skipped.
                    if let Ok(k) = String::from_utf8(k) {
                        if seen.insert(k.clone()) {
                            keys.push(k);
                        }
                    }
                }
                if next == 0 {
                    return Ok(keys);
                }
                cursor = next;
            }
        })
    }

    fn store<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            let key = key.to_string();
            self.shared
                .query(1, move |mut c| {
                    Box::pin(async move {
                        let mut cmd = redis::cmd("SET");
                        cmd.arg(key).arg(&value[..]);
                        if let Some(ttl) = ttl {
                            cmd.arg("PX").arg(ttl.as_millis().max(1) as u64);
                        }
                        cmd.query_async::<()>(&mut c).await
                    })
                })
                .await
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, SourceError>> {
        Box::pin(async move {
            let key = key.to_string();
            let n: i64 = self
                .shared
                .query(1, move |mut c| {
                    Box::pin(async move { redis::cmd("DEL").arg(key).query_async(&mut c).await })
                })
                .await?;
            Ok(n > 0)
        })
    }

    fn invalidations(&self) -> Option<mpsc::Receiver<Invalidation>> {
        if !self.shared.config.track {
            return None;
        }
        let rx = lock(&self.shared.rx).take()?;
        if tokio::runtime::Handle::try_current().is_ok() {
            tokio::spawn(keep_connected(
                Arc::downgrade(&self.shared),
                self.shared.wake.clone(),
            ));
            // Connect now, so tracking (and the first reads) do not wait for a miss.
            self.shared.wake.notify_one();
            let weak = Arc::downgrade(&self.shared);
            tokio::spawn(async move {
                if let Some(shared) = weak.upgrade() {
                    let _ = shared.conn().await;
                }
            });
        }
        Some(rx)
    }

    fn calls(&self) -> u64 {
        self.shared.calls.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_described_without_their_password() {
        let s = RedisSource::open("redis://:pw@127.0.0.1:7/2").unwrap();
        assert_eq!(s.describe(), "redis://127.0.0.1:7/2");
        assert!(RedisSource::open("nope://x").is_err());
    }

    #[tokio::test]
    async fn an_unreachable_server_fails_fast_and_backs_off() {
        // A port nothing listens on: bind one, then close it.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let s = RedisSource::open(&format!("redis://127.0.0.1:{port}")).unwrap();
        let mut rx = s.invalidations().unwrap();
        let t = std::time::Instant::now();
        let e = s.load("k").await.unwrap_err();
        assert!(matches!(e, SourceError::Unavailable(_)), "{e}");
        // The second call is inside the backoff window: refused without trying.
        let e = s.load("k").await.unwrap_err();
        assert!(e.to_string().contains("next attempt"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(2));
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(5), rx.recv())
                .await
                .unwrap(),
            Some(Invalidation::TrackingLost)
        );
    }
}
