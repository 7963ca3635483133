//! [`RedisSource`]: the cache's source over one Redis connection, owned by the primary.
//!
//! - **One connection per host.** The primary's hub is the only Redis client on the host; it
//!   multiplexes every load, write and scan over one connection (the `redis` crate's
//!   `MultiplexedConnection`), made lazily and remade after a failure.
//! - **Freshness.** The connection speaks RESP3 and turns on client-side caching
//!   (`CLIENT TRACKING ON NOLOOP`) *before* its first read, so Redis pushes an `invalidate` for
//!   every key this host has read and someone else changed; `FLUSHALL` arrives as
//!   [`Invalidation::All`]. When the connection drops, [`Invalidation::TrackingLost`] is
//!   reported at once; when a new one is tracking again, [`Invalidation::TrackingRestored`].
//! - **Outages.** Connecting and every command have deadlines. After a failure, reconnects
//!   back off exponentially with jitter; calls made meanwhile fail at once (the hub then serves
//!   what it has) instead of queueing behind a dead server. A background task reconnects while
//!   tracking is wanted, so freshness comes back without waiting for a miss.
//! - **Bounded replies.** A batch of loads is one pipelined round trip that reads each value's
//!   first [`HEAD_LEN`] bytes; longer values continue in `GETRANGE` chunks of
//!   [`RedisConfig::chunk_size`], at most [`RedisConfig::chunks_in_flight`] at once, so Redis
//!   never holds more than that in this client's output buffer (the buffer that counts toward
//!   `maxmemory`, and that evicts live keys in a stampede). Big values are assembled in anonymous
//!   mappings, so their memory goes back to the system once the hub has sealed its copy.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, PushInfo, PushKind, RedisError, Value};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::source::{BoxFuture, Invalidation, Loaded, Source, SourceError};
use crate::backoff::Backoff;

/// How [`RedisSource`] talks to Redis.
#[derive(Clone, Debug)]
pub struct RedisConfig {
    /// The deadline for opening a connection (default 1 s).
    pub connect_timeout: Duration,
    /// The deadline for each command's reply (default 5 s).
    pub command_timeout: Duration,
    /// Values longer than [`HEAD_LEN`] are read in chunks of this size (default 4 MiB).
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
        }
    }
}

/// How much of each value the first (pipelined) read fetches. Values up to this long take one
/// round trip, with every other key of a batch; longer ones continue in chunks.
pub const HEAD_LEN: usize = 64 << 10;

/// Values longer than this are assembled in an anonymous mapping (returned to the system when
/// dropped) rather than on the heap, which would keep the high-water mark of a big load.
const MAPPED_ABOVE: usize = 1 << 20;

/// A [`Source`] backed by Redis string values. See the [module docs](self).
pub struct RedisSource {
    shared: Arc<Shared>,
}

struct Shared {
    client: redis::Client,
    describe: String,
    config: RedisConfig,
    /// The connection in use, with its generation (a reconnect makes a new generation).
    current: Mutex<Option<(u64, MultiplexedConnection)>>,
    /// Serializes connecting; holds the backoff state.
    link: tokio::sync::Mutex<Link>,
    calls: AtomicU64,
    reads: AtomicU64,
    /// Bounds the chunks in flight (and so this client's output buffer in Redis).
    chunks: tokio::sync::Semaphore,
    events: Events,
    /// Wakes the reconnect task.
    wake: Arc<Notify>,
    /// The receiving end, until the hub takes it.
    rx: Mutex<Option<mpsc::Receiver<Invalidation>>>,
}

struct Link {
    generation: u64,
    backoff: Backoff,
    retry_at: Option<Instant>,
    last_error: String,
}

/// The invalidation stream: bounded; when the hub falls behind, what does not fit collapses into
/// one `All` (which loses nothing: everything is re-checked).
struct Events {
    tx: mpsc::Sender<Invalidation>,
    overflow: AtomicBool,
    /// Whether tracking is known to be down (`TrackingLost` sent, `TrackingRestored` not yet).
    lost: AtomicBool,
}

impl Events {
    fn send(&self, inv: Invalidation) {
        if self.overflow.load(Ordering::Acquire) {
            if self.tx.try_send(Invalidation::All).is_err() {
                return;
            }
            self.overflow.store(false, Ordering::Release);
        }
        if let Err(mpsc::error::TrySendError::Full(_)) = self.tx.try_send(inv) {
            self.overflow.store(true, Ordering::Release);
        }
    }
}

impl RedisSource {
    /// A source for `url` (`redis://[user:password@]host:port[/db]`, or `redis+unix:///path`)
    /// with default settings. Nothing connects until the first call.
    pub fn open(url: &str) -> Result<RedisSource, SourceError> {
        RedisSource::with_config(url, RedisConfig::default())
    }

    /// A source for `url` with `config`.
    pub fn with_config(url: &str, config: RedisConfig) -> Result<RedisSource, SourceError> {
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
        Ok(RedisSource {
            shared: Arc::new(Shared {
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
                events: Events {
                    tx,
                    overflow: AtomicBool::new(false),
                    lost: AtomicBool::new(false),
                },
                wake: Arc::new(Notify::new()),
                rx: Mutex::new(Some(rx)),
            }),
        })
    }

    /// Values read from Redis (a value read in chunks counts once).
    pub fn reads(&self) -> u64 {
        self.shared.reads.load(Ordering::Relaxed)
    }

    /// Whether a connection is up now.
    pub fn connected(&self) -> bool {
        lock(&self.shared.current).is_some()
    }
}

impl Drop for RedisSource {
    fn drop(&mut self) {
        // The reconnect task holds only a weak reference; wake it so it sees it is gone.
        self.shared.wake.notify_one();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
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
    async fn conn(self: &Arc<Self>) -> Result<(u64, MultiplexedConnection), SourceError> {
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
                link.retry_at = Some(now + delay);
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
                    shared.on_push(generation, push);
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

    /// A push from connection `generation` (called on the connection's own task: must not block).
    fn on_push(&self, generation: u64, push: PushInfo) {
        match push.kind {
            PushKind::Invalidate => {
                let inv = match push.data.into_iter().next() {
                    Some(Value::Array(keys)) | Some(Value::Set(keys)) => Invalidation::Keys(
                        keys.into_iter()
                            .filter_map(|k| match k {
                                Value::BulkString(b) => {
                                    Some(String::from_utf8_lossy(&b).into_owned())
                                }
                                Value::SimpleString(s) => Some(s),
                                _ => None,
                            })
                            .collect(),
                    ),
                    // A nil key list: the whole keyspace was flushed.
                    _ => Invalidation::All,
                };
                self.events.send(inv);
            }
            PushKind::Disconnection => self.broken(generation, "the connection closed"),
            _ => {}
        }
    }

    /// Connection `generation` is unusable: drop it, report tracking lost, wake the reconnector.
    fn broken(&self, generation: u64, why: &str) {
        {
            let mut cur = lock(&self.current);
            if !matches!(&*cur, Some((g, _)) if *g == generation) {
                return;
            }
            *cur = None;
        }
        tracing::warn!(source = %self.describe, why, "redis connection lost");
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
    async fn query<T: redis::FromRedisValue>(
        self: &Arc<Self>,
        n: u64,
        run: impl FnOnce(MultiplexedConnection) -> BoxFuture<'static, Result<T, RedisError>>,
    ) -> Result<T, SourceError> {
        let (generation, conn) = self.conn().await?;
        self.calls.fetch_add(n, Ordering::Relaxed);
        run(conn).await.map_err(|e| self.fail(generation, e))
    }

    /// The first chunk of each key with its TTL and length: one round trip for all of them.
    async fn heads(self: &Arc<Self>, keys: &[String]) -> Result<Vec<Head>, SourceError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut pipe = redis::pipe();
        let end = HEAD_LEN as i64 - 1;
        for k in keys {
            pipe.cmd("PTTL").arg(k);
            pipe.cmd("STRLEN").arg(k);
            pipe.cmd("GETRANGE").arg(k).arg(0).arg(end);
        }
        let values: Vec<Value> = self
            .query(3 * keys.len() as u64, move |mut c| {
                Box::pin(async move { pipe.query_async(&mut c).await })
            })
            .await?;
        if values.len() != 3 * keys.len() {
            return Err(SourceError::Failed(format!(
                "redis answered {} replies to {} commands",
                values.len(),
                3 * keys.len()
            )));
        }
        let mut out = Vec::with_capacity(keys.len());
        for (key, v) in keys.iter().zip(values.chunks_exact(3)) {
            let ttl = int(&v[0], "PTTL", key)?;
            let len = int(&v[1], "STRLEN", key)?;
            let head = match &v[2] {
                Value::BulkString(b) => Bytes::copy_from_slice(b),
                Value::Nil => Bytes::new(),
                other => return Err(unexpected("GETRANGE", key, other)),
            };
            out.push(Head {
                ttl,
                len: usize::try_from(len).unwrap_or(0),
                head,
            });
        }
        Ok(out)
    }

    /// Completes one value from its head: `None` if the key does not exist.
    async fn finish(self: &Arc<Self>, key: &str, h: Head) -> Result<Option<Loaded>, SourceError> {
        if h.ttl == -2 {
            return Ok(None);
        }
        let ttl = u64::try_from(h.ttl).ok().map(Duration::from_millis);
        let value = if h.head.len() >= h.len {
            h.head
        } else {
            self.read_rest(key, h).await?
        };
        self.reads.fetch_add(1, Ordering::Relaxed);
        Ok(Some(Loaded { value, ttl }))
    }
}

impl Shared {
    /// Reads the rest of a value after its head, chunk by chunk, into one buffer of its length.
    async fn read_rest(self: &Arc<Self>, key: &str, h: Head) -> Result<Bytes, SourceError> {
        let mut buf = ValueBuf::new(h.len)?;
        buf.as_mut()[..h.head.len()].copy_from_slice(&h.head);
        let chunk = self.config.chunk_size.max(1);
        let mut filled = h.head.len();
        while filled < h.len {
            let (start, end) = (filled, (filled + chunk).min(h.len) - 1);
            let key_owned = key.to_string();
            let permit = self
                .chunks
                .acquire()
                .await
                .map_err(|_| SourceError::Failed("the source is closing".into()))?;
            let part: Vec<u8> = self
                .query(1, move |mut c| {
                    Box::pin(async move {
                        redis::cmd("GETRANGE")
                            .arg(key_owned)
                            .arg(start)
                            .arg(end)
                            .query_async(&mut c)
                            .await
                    })
                })
                .await?;
            drop(permit);
            if part.is_empty() || part.len() > end + 1 - start {
                break;
            }
            buf.as_mut()[start..start + part.len()].copy_from_slice(&part);
            filled += part.len();
        }
        if filled != h.len {
            return Err(SourceError::Failed(format!(
                "{key:?} changed while it was read ({} bytes, then {filled})",
                h.len
            )));
        }
        buf.freeze()
    }
}

/// A value being assembled: on the heap when small, in an anonymous mapping when big.
enum ValueBuf {
    Heap(Vec<u8>),
    Mapped(memmap2::MmapMut),
}

impl ValueBuf {
    fn new(len: usize) -> Result<ValueBuf, SourceError> {
        if len > MAPPED_ABOVE {
            memmap2::MmapMut::map_anon(len)
                .map(ValueBuf::Mapped)
                .map_err(|e| SourceError::Failed(format!("no memory for a {len}-byte value: {e}")))
        } else {
            Ok(ValueBuf::Heap(vec![0; len]))
        }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        match self {
            ValueBuf::Heap(v) => v,
            ValueBuf::Mapped(m) => m,
        }
    }

    fn freeze(self) -> Result<Bytes, SourceError> {
        match self {
            ValueBuf::Heap(v) => Ok(Bytes::from(v)),
            ValueBuf::Mapped(m) => m
                .make_read_only()
                .map(Bytes::from_owner)
                .map_err(|e| SourceError::Failed(format!("mprotect: {e}"))),
        }
    }
}

struct Head {
    ttl: i64,
    len: usize,
    head: Bytes,
}

fn int(v: &Value, cmd: &str, key: &str) -> Result<i64, SourceError> {
    match v {
        Value::Int(n) => Ok(*n),
        other => Err(unexpected(cmd, key, other)),
    }
}

fn unexpected(cmd: &str, key: &str, v: &Value) -> SourceError {
    match v {
        Value::ServerError(e) => SourceError::Failed(format!("{cmd} {key:?}: {e:?}")),
        other => SourceError::Failed(format!("{cmd} {key:?}: unexpected reply {other:?}")),
    }
}

/// Reconnects in the background while tracking is wanted and the connection is down.
async fn keep_connected(weak: Weak<Shared>, wake: Arc<Notify>) {
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

impl Source for RedisSource {
    fn describe(&self) -> String {
        self.shared.describe.clone()
    }

    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Loaded>, SourceError>> {
        Box::pin(async move {
            let keys = [key.to_string()];
            let mut heads = self.shared.heads(&keys).await?;
            let h = heads.pop().expect("one head per key");
            self.shared.finish(key, h).await
        })
    }

    fn load_many<'a>(
        &'a self,
        keys: &'a [String],
    ) -> BoxFuture<'a, Result<Vec<Option<Loaded>>, SourceError>> {
        Box::pin(async move {
            let heads = self.shared.heads(keys).await?;
            let mut out = Vec::with_capacity(keys.len());
            for (k, h) in keys.iter().zip(heads) {
                out.push(self.shared.finish(k, h).await?);
            }
            Ok(out)
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
    fn urls_are_redacted_and_described() {
        assert_eq!(redact("redis://u:secret@h:1/0"), "redis://***@h:1/0");
        assert_eq!(redact("redis://h:1"), "redis://h:1");
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
