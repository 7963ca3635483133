//! The connection to Redis: made lazily (connecting is single-flight), with tracking on
//! before it is handed out, dropped when it fails, and remade in the background with the
//! crate's [`Backoff`] while calls fail fast.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, RedisError};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::tracking::Events;
use super::RedisConfig;
use crate::backoff::Backoff;
use crate::cache::source::{BoxFuture, Invalidation, SourceError};

/// A source's state, shared with its connection's push callback and its reconnect task.
pub(super) struct Shared {
    pub(super) client: redis::Client,
    pub(super) describe: String,
    pub(super) config: RedisConfig,
    /// The connection in use, with its generation (a reconnect makes a new generation).
    pub(super) current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Serializes connecting; holds the backoff state.
    pub(super) link: tokio::sync::Mutex<Link>,
    pub(super) calls: AtomicU64,
    pub(super) reads: AtomicU64,
    /// Bounds the chunks in flight (and so this client's output buffer in Redis).
    pub(super) chunks: tokio::sync::Semaphore,
    /// Bounds the bytes of values being assembled, in KiB ([`RedisConfig::max_assembling`]).
    pub(super) assembling: tokio::sync::Semaphore,
    /// Its size, in KiB.
    pub(super) assembling_kib: u32,
    pub(super) events: Events,
    /// Wakes the reconnect task.
    pub(super) wake: Arc<Notify>,
    /// The receiving end, until the hub takes it.
    pub(super) rx: Mutex<Option<mpsc::Receiver<Invalidation>>>,
}

/// Connecting: the generation, and the backoff after failures.
pub(super) struct Link {
    pub(super) generation: u64,
    pub(super) backoff: Backoff,
    pub(super) retry_at: Option<Instant>,
    pub(super) last_error: String,
}

impl Shared {
    /// The state of a source for `url`; nothing connects yet.
    pub(super) fn new(url: &str, config: RedisConfig) -> Result<Shared, SourceError> {
        let client = redis::Client::open(url)
            .map_err(|e| SourceError::Failed(format!("bad redis url {}: {e}", redact(url))))?;
        let info = client.get_connection_info().clone();
        let describe = format!("redis://{}/{}", info.addr(), info.redis_settings().db());
        let client = if config.track {
            // Client tracking pushes invalidations on the same connection, which needs RESP3.
            let redis = info
                .redis_settings()
                .clone()
                .set_protocol(redis::ProtocolVersion::RESP3);
            redis::Client::open(info.set_redis_settings(redis))
                .map_err(|e| SourceError::Failed(format!("redis client: {e}")))?
        } else {
            client
        };
        let (tx, rx) = mpsc::channel(config.invalidation_buffer.max(2));
        let chunks_in_flight = config.chunks_in_flight.max(1);
        let backoff = Backoff::new(config.backoff_min, config.backoff_max, true);
        let assembling_kib = config
            .max_assembling
            .div_ceil(1024)
            .clamp(1, u32::MAX as usize) as u32;
        Ok(Shared {
            client,
            describe,
            config,
            current: Mutex::new(None),
            link: tokio::sync::Mutex::new(Link {
                generation: 0,
                backoff,
                retry_at: None,
                last_error: String::new(),
            }),
            calls: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            chunks: tokio::sync::Semaphore::new(chunks_in_flight),
            assembling: tokio::sync::Semaphore::new(assembling_kib as usize),
            assembling_kib,
            events: Events::new(tx),
            wake: Arc::new(Notify::new()),
            rx: Mutex::new(Some(rx)),
        })
    }
}

pub(super) fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => format!("{}://***{}", &url[..s], &url[at..]),
        _ => url.to_string(),
    }
}

/// Whether `e` means the connection is unusable (rather than Redis refusing one command).
fn is_link_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

impl Shared {
    /// The connection to use, connecting if there is none (and the backoff allows).
    pub(super) async fn conn(
        self: &Arc<Self>,
    ) -> Result<(u64, MultiplexedConnection), SourceError> {
        if let Some(c) = lock(&self.current).clone() {
            return Ok(c);
        }
        let mut link = self.link.lock().await;
        if let Some(c) = lock(&self.current).clone() {
            return Ok(c);
        }
        let now = Instant::now();
        if let Some(at) = link.retry_at.filter(|at| *at > now) {
            return Err(SourceError::Unavailable(format!(
                "{} is unreachable ({}); next attempt in {} ms",
                self.describe,
                link.last_error,
                (at - now).as_millis()
            )));
        }
        let generation = link.generation + 1;
        match self.connect(generation).await {
            Ok(conn) => {
                link.generation = generation;
                link.backoff.reset();
                link.retry_at = None;
                *lock(&self.current) = Some((generation, conn.clone()));
                if self.config.track && self.events.lost.swap(false, Ordering::AcqRel) {
                    tracing::info!(source = %self.describe, "redis is back; tracking restored");
                    self.events.send(Invalidation::TrackingRestored);
                }
                Ok((generation, conn))
            }
            Err(e) => {
                let delay = link.backoff.fail();
                link.retry_at = Some(crate::deadline::after(now, delay));
                link.last_error = e.to_string();
                if self.config.track && !self.events.lost.swap(true, Ordering::AcqRel) {
                    self.events.send(Invalidation::TrackingLost);
                }
                tracing::warn!(
                    source = %self.describe,
                    error = %e,
                    retry_in_ms = delay.as_millis() as u64,
                    "redis connect failed"
                );
                Err(SourceError::Unavailable(format!(
                    "{} is unreachable: {e}",
                    self.describe
                )))
            }
        }
    }

    /// Opens a connection; with tracking on before it is handed out.
    async fn connect(
        self: &Arc<Self>,
        generation: u64,
    ) -> Result<MultiplexedConnection, RedisError> {
        let mut config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.config.connect_timeout))
            .set_response_timeout(Some(self.config.command_timeout));
        if self.config.track {
            let weak = Arc::downgrade(self);
            config = config.set_push_sender(move |push: PushInfo| -> Result<(), ()> {
                if let Some(shared) = weak.upgrade() {
                    if shared.events.on_push(push) {
                        shared.broken(generation, "the connection closed");
                    }
                }
                Ok(())
            });
        }
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        if self.config.track {
            self.calls.fetch_add(1, Ordering::Relaxed);
            redis::cmd("CLIENT")
                .arg("TRACKING")
                .arg("ON")
                .arg("NOLOOP")
                .query_async::<()>(&mut conn)
                .await?;
        }
        Ok(conn)
    }
}

impl Shared {
    /// Connection `generation` is unusable: drop it, report tracking lost, wake the reconnector.
    pub(super) fn broken(&self, generation: u64, why: &str) {
        {
            let mut cur = lock(&self.current);
            if !matches!(&*cur, Some((g, _)) if *g == generation) {
                return;
            }
            *cur = None;
        }
        tracing::warn!(source = %self.describe, why, "redis connection lost");
        // A read spanning the loss may have missed a change: it starts again.
        self.events.changed(None);
        if self.config.track && !self.events.lost.swap(true, Ordering::AcqRel) {
            self.events.send(Invalidation::TrackingLost);
        }
        self.wake.notify_one();
    }

    /// Maps a command error, dropping the connection if it is the link that failed.
    fn fail(&self, generation: u64, e: RedisError) -> SourceError {
        if is_link_error(&e) {
            self.broken(generation, "a command failed");
            SourceError::Unavailable(format!("{}: {e}", self.describe))
        } else {
            SourceError::Failed(e.to_string())
        }
    }

    /// Sends a command (or pipeline of `n` commands) and maps its errors.
    pub(super) async fn query<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        n: u64,
        run: impl FnOnce(MultiplexedConnection) -> BoxFuture<'static, Result<T, RedisError>>,
    ) -> Result<T, SourceError> {
        let (generation, conn) = self.conn().await?;
        self.calls.fetch_add(n, Ordering::Relaxed);
        run(conn).await.map_err(|e| self.fail(generation, e))
    }
}

/// Reconnects in the background while tracking is wanted and the connection is down.
pub(super) async fn keep_connected(weak: Weak<Shared>, wake: Arc<Notify>) {
    loop {
        let wait = {
            let Some(shared) = weak.upgrade() else { return };
            if lock(&shared.current).is_some() {
                None
            } else {
                let link = shared.link.lock().await;
                Some(
                    link.retry_at
                        .map(|at| at.saturating_duration_since(Instant::now()))
                        .unwrap_or_default(),
                )
            }
        };
        match wait {
            // Connected: sleep until woken (a loss), checking now and then whether the source
            // is gone.
            None => {
                let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
            }
            Some(delay) => {
                tokio::time::sleep(delay).await;
                let Some(shared) = weak.upgrade() else { return };
                let _ = shared.conn().await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_redacted() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
    }
}
