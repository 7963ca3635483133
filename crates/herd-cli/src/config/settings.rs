//! `herd run`'s checked settings: [`Options`] with every default filled in and every value
//! validated. The errors name the setting (its config key).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use herd::listen::ListenAddr;
use herd::service::{Readiness, Restart};
use herd::Codec;

use super::options::{Options, Workers};
use crate::control::proto::MAX_WORKERS;
use crate::exit::{Error, Result};

/// Where the cache's data comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum CacheSource {
    /// `dir` / `--cache-dir`: one key per file.
    Dir(PathBuf),
    /// `snapshot` / `--cache-snapshot`: a JSON object.
    Snapshot(PathBuf),
    /// `redis` / `--redis`: a Redis URL.
    Redis(String),
}

/// The validated settings `herd run` works with (the fields are documented on [`Options`]).
#[derive(Debug, Clone)]
#[allow(missing_docs)] // fields: the settings of the same names on `Options`
pub struct Settings {
    pub command: Vec<String>,
    pub workers: usize,
    /// Where the worker count came from, in words (`given`, or what decided `auto`).
    pub workers_from: String,
    pub listen: Vec<ListenAddr>,
    pub reuseport: bool,
    /// How Node workers' connections are spread (`--balance`; reuseport is `Shared` with a
    /// socket per worker).
    pub balance: herd::Balance,
    /// `--rescue`: what is done with a retiring Node worker's connections.
    pub rescue: herd::Rescue,
    pub grace: Duration,
    /// `--stop-settle`: from a stop to the stop signal of a Node worker with a hook for it.
    pub stop_settle: Duration,
    /// `--unresponsive`: how long a running worker may go without answering a ping.
    pub unresponsive: Option<Duration>,
    /// How a stopped worker is told to stop after its channel is closed.
    pub stop: herd::StopBy,
    pub codec: Codec,
    pub name: String,
    pub control: PathBuf,
    pub json_logs: bool,
    /// `--relay`: worker messages go on to the other workers.
    pub relay: herd::service::Relay,
    /// `--log-messages`: worker messages are printed.
    pub log_messages: bool,
    pub env: BTreeMap<String, String>,
    pub restart_mode: Restart,
    pub backoff_min: Duration,
    pub backoff_max: Duration,
    pub max_restarts: u32,
    pub window: Duration,
    pub reload_batch: usize,
    pub ready: Readiness,
    pub ready_timeout: Duration,
    pub cache: Option<CacheSource>,
    pub warm: Vec<String>,
    pub max_stale: Duration,
    /// `[logs]`: log files and timestamps.
    pub logs: super::logs::LogSettings,
    /// `--max-memory`: the resident memory a worker is replaced past.
    pub max_memory: Option<u64>,
    /// `--metrics`: where `/metrics` is served.
    pub metrics: Option<std::net::SocketAddr>,
}

/// A usage error about `field`.
fn bad(field: &str, why: impl std::fmt::Display) -> Error {
    Error::usage(format!("{field}: {why}"))
}

/// `given` (else `default`) parsed as a `T`; the error names `field`.
fn parsed<T: std::str::FromStr<Err = String>>(
    field: &str,
    given: Option<String>,
    default: &str,
) -> Result<T> {
    given
        .as_deref()
        .unwrap_or(default)
        .parse()
        .map_err(|e| bad(field, e))
}

/// An hour: the longest grace period, restart delay and readiness timeout.
pub const MAX_WAIT: Duration = Duration::from_secs(3600);
/// A day: the longest crash-loop window.
pub const MAX_WINDOW: Duration = Duration::from_secs(86_400);
/// A week: the longest a stale cache value may be served.
pub const MAX_STALE: Duration = Duration::from_secs(7 * 86_400);
/// The most restarts a crash-loop window may allow.
pub const MAX_RESTARTS: u32 = 1_000_000;

/// `v` seconds, refused (naming `field`) unless it is a number from 0 to `max`.
fn seconds(field: &str, v: f64, max: Duration) -> Result<Duration> {
    match Duration::try_from_secs_f64(v) {
        Ok(d) if d <= max => Ok(d),
        _ => Err(bad(
            field,
            format_args!("{v} is not a number of seconds from 0 to {}", max.as_secs()),
        )),
    }
}

/// Fills in the defaults and checks everything.
pub fn settings(o: Options) -> Result<Settings> {
    let command = o.command;
    if command.is_empty() || command[0].is_empty() {
        return Err(bad(
            "command",
            "nothing to run (give it after `--`, or as `command` in the config file)",
        ));
    }
    let (workers, workers_from) = match o.workers {
        Some(Workers::Count(n)) => (
            usize::try_from(n).map_err(|_| bad("workers", format_args!("{n} is not a count")))?,
            "given".to_string(),
        ),
        Some(Workers::Auto(_)) | None => {
            let cpus = super::cpus::Cpus::read();
            (cpus.count, cpus.explain())
        }
    };
    if !(1..=MAX_WORKERS).contains(&workers) {
        return Err(bad(
            "workers",
            format_args!("must be 1 to {MAX_WORKERS}, not {workers}"),
        ));
    }
    let listen = o
        .listen
        .iter()
        .map(|a| a.parse::<ListenAddr>().map_err(|e| bad("listen", e)))
        .collect::<Result<Vec<_>>>()?;
    use super::options::{BalanceMode, CodecName, LogFormat, RelayMode, RescueMode};
    let relay = match o.relay {
        None | Some(RelayMode::Off) => herd::service::Relay::Off,
        Some(RelayMode::Others) => herd::service::Relay::Others,
    };
    let log_messages = o.log_messages.unwrap_or(false);
    let (balance, reuseport) = match (o.balance, o.reuseport) {
        (Some(BalanceMode::Rr), None | Some(false)) => (herd::Balance::RoundRobin, false),
        (Some(BalanceMode::Sticky), None | Some(false)) => (herd::Balance::Sticky, false),
        (None | Some(BalanceMode::Shared), None | Some(false)) => (herd::Balance::Shared, false),
        (Some(BalanceMode::Reuseport), _) | (None, Some(true)) => (herd::Balance::Shared, true),
        (Some(BalanceMode::Rr | BalanceMode::Shared | BalanceMode::Sticky), Some(true)) => {
            return Err(bad(
                "reuseport",
                "is --balance reuseport, which contradicts the --balance given",
            ))
        }
    };
    if reuseport && listen.is_empty() {
        return Err(bad("reuseport", "needs at least one listen address"));
    }
    if reuseport && listen.iter().any(|a| matches!(a, ListenAddr::Unix(_))) {
        return Err(bad("reuseport", "works with TCP addresses only"));
    }
    let rescue = match o.rescue {
        None | Some(RescueMode::End) => herd::Rescue::End,
        Some(RescueMode::Hold) => herd::Rescue::Hold,
        Some(RescueMode::Off) => herd::Rescue::Off,
    };
    let grace = seconds("grace", o.grace.unwrap_or(5.0), MAX_WAIT)?;
    // By default 1 s, or half a shorter grace period; one given must be shorter than it.
    let stop_settle = match o.stop_settle {
        None => Duration::from_secs(1).min(grace / 2),
        Some(secs) => seconds("stop_settle", secs, MAX_WAIT)?,
    };
    if o.stop_settle.is_some() && stop_settle >= grace {
        return Err(bad(
            "stop_settle",
            format_args!(
                "{stop_settle:?} is not shorter than the grace period ({grace:?}): the hook \
                 would never get its signal before SIGKILL"
            ),
        ));
    }
    let unresponsive = match o.unresponsive.as_deref().map(str::trim) {
        None => Some(Duration::from_secs(30)),
        Some("off") => None,
        Some(text) => {
            let secs: f64 = text.parse().map_err(|_| {
                bad(
                    "unresponsive",
                    format_args!("{text:?} is neither seconds nor off"),
                )
            })?;
            let limit = seconds("unresponsive", secs, MAX_WAIT)?;
            if limit < Duration::from_millis(100) {
                return Err(bad("unresponsive", "must be at least 0.1 s, or off"));
            }
            Some(limit)
        }
    };
    let stop = if o.shutdown_message.unwrap_or(false) {
        herd::StopBy::Message("shutdown".into())
    } else {
        let text = o.kill_signal.unwrap_or_else(|| "SIGTERM".into());
        herd::StopBy::Signal(signal(&text).ok_or_else(|| {
            bad(
                "kill_signal",
                format_args!("unknown signal {text:?} (use SIGTERM, SIGINT, SIGHUP, SIGQUIT, SIGUSR1 or SIGUSR2)"),
            )
        })?)
    };
    let codec = match o.codec {
        None | Some(CodecName::Json) => Codec::NodeJson,
        Some(CodecName::Binary) => Codec::Binary,
    };
    let name = o.name.unwrap_or_else(|| "herd".into());
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || name.starts_with('.')
    {
        return Err(bad(
            "name",
            format_args!("{name:?} must be letters, digits, '-', '_' or '.'"),
        ));
    }
    let control = o
        .control
        .unwrap_or_else(|| crate::control::default_path(&name));
    let json_logs = o.log_format == Some(LogFormat::Json);
    // Later entries (the flags') win.
    let env: BTreeMap<String, String> = o.env.into_iter().collect();
    if let Some(bad_key) = env.keys().find(|k| k.is_empty() || k.contains('=')) {
        return Err(bad(
            "env",
            format_args!("{bad_key:?} is not a variable name"),
        ));
    }
    let r = o.restart;
    let restart_mode: Restart = parsed("restart.mode", r.mode, "always")?;
    let backoff_min = seconds(
        "restart.backoff_min",
        r.backoff_min.unwrap_or(0.1),
        MAX_WAIT,
    )?;
    let backoff_max = seconds(
        "restart.backoff_max",
        r.backoff_max.unwrap_or(30.0),
        MAX_WAIT,
    )?;
    if backoff_max < backoff_min {
        return Err(bad(
            "restart.backoff_max",
            "must be at least restart.backoff_min",
        ));
    }
    let max_restarts = r.max_restarts.unwrap_or(5);
    if max_restarts > MAX_RESTARTS {
        return Err(bad(
            "restart.max_restarts",
            format_args!("must be at most {MAX_RESTARTS}, not {max_restarts}"),
        ));
    }
    let window = seconds("restart.window", r.window.unwrap_or(60.0), MAX_WINDOW)?;
    let rl = o.reload;
    let reload_batch = rl.batch.unwrap_or(1);
    if !(1..=MAX_WORKERS).contains(&reload_batch) {
        return Err(bad(
            "reload.batch",
            format_args!("must be 1 to {MAX_WORKERS}, not {reload_batch}"),
        ));
    }
    let ready: Readiness = parsed("reload.ready", rl.ready, "listening")?;
    if let Readiness::Port(addr) = &ready {
        // herd holds these sockets itself: a connection succeeds before any worker is ready.
        if !reuseport && listen.iter().any(|l| held_by_herd(l, addr)) {
            return Err(bad(
                "reload.ready",
                format_args!(
                    "port:{addr} is a socket herd itself listens on, so it would be met at once; \
                     use notice or message"
                ),
            ));
        }
    }
    let ready_timeout = seconds(
        "reload.ready_timeout",
        rl.ready_timeout.unwrap_or(30.0),
        MAX_WAIT,
    )?;
    let c = o.cache;
    let mut sources = [
        c.dir.map(CacheSource::Dir),
        c.snapshot.map(CacheSource::Snapshot),
        c.redis.map(CacheSource::Redis),
    ]
    .into_iter()
    .flatten();
    let cache = sources.next();
    if sources.next().is_some() {
        return Err(bad("cache", "give one of dir, snapshot and redis"));
    }
    let warm = c.warm;
    if !warm.is_empty() && cache.is_none() {
        return Err(bad(
            "cache.warm",
            "needs a cache source (dir, snapshot or redis)",
        ));
    }
    let max_stale = seconds("cache.max_stale", c.max_stale.unwrap_or(300.0), MAX_STALE)?;
    let logs = super::logs::check(o.logs)?;
    let max_memory = match o.max_memory.as_deref() {
        None => None,
        Some(text) => {
            let bytes = super::logs::size(text).map_err(|e| bad("max_memory", e))?;
            if bytes < 1 << 20 {
                return Err(bad(
                    "max_memory",
                    format_args!("{bytes} bytes is below the smallest, 1M"),
                ));
            }
            Some(bytes)
        }
    };
    let metrics = match o.metrics.as_deref() {
        None => None,
        Some(text) => Some(text.trim().parse::<std::net::SocketAddr>().map_err(|_| {
            bad(
                "metrics",
                format_args!("{text:?} is not HOST:PORT (127.0.0.1:9100, [::1]:9100)"),
            )
        })?),
    };
    Ok(Settings {
        command,
        workers,
        workers_from,
        listen,
        reuseport,
        balance,
        rescue,
        grace,
        stop_settle,
        unresponsive,
        stop,
        codec,
        name,
        control,
        json_logs,
        relay,
        log_messages,
        env,
        restart_mode,
        backoff_min,
        backoff_max,
        max_restarts,
        window,
        reload_batch,
        ready,
        ready_timeout,
        cache,
        warm,
        max_stale,
        logs,
        max_memory,
        metrics,
    })
}

/// Whether a connection to `probe` would reach the socket herd binds for `listen`.
fn held_by_herd(listen: &ListenAddr, probe: &std::net::SocketAddr) -> bool {
    match listen {
        ListenAddr::Tcp(a) => {
            a.port() == probe.port() && (a.ip().is_unspecified() || a.ip() == probe.ip())
        }
        _ => false,
    }
}

/// A stop signal by name, `SIGTERM` or `TERM` (not `SIGKILL`, which no handler sees: the
/// grace period ends with it anyway).
fn signal(name: &str) -> Option<herd::Signal> {
    name.parse().ok().filter(|s| *s != herd::Signal::KILL)
}
