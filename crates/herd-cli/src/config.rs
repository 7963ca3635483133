//! `herd run`'s settings: a TOML file (`--config`) with the same fields as the flags, flags
//! winning. Unknown fields, wrong types and bad values are errors that name the field.
//!
//! ```toml
//! command = ["node", "app.js"]
//! workers = 4                      # or "auto"
//! listen = ["127.0.0.1:8080"]      # shared sockets (LISTEN_FDS), or with reuseport = true
//! grace = 5.0
//! codec = "json"                   # or "binary"
//! name = "app"                     # control socket name
//! log_format = "text"              # or "json"
//! env = { NODE_ENV = "production" }
//!
//! [restart]
//! mode = "on-failure"              # always | on-failure | never
//! backoff_min = 0.1
//! backoff_max = 30.0
//! max_restarts = 5
//! window = 60.0
//!
//! [reload]
//! batch = 1
//! ready = "notice"                 # online | notice | port:HOST:PORT | delay:SECS
//! ready_timeout = 30.0
//!
//! [cache]
//! dir = "cache-data"               # or snapshot = "cache.json", or redis = "redis://..."
//! warm = ["user:*"]
//! max_stale = 300.0
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use herd::listen::ListenAddr;
use herd::service::{Readiness, Restart};
use herd::Codec;
use serde::Deserialize;

/// The file's shape.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // fields: the flags and TOML keys of the same names (module docs)
pub struct FileConfig {
    pub command: Option<Vec<String>>,
    pub workers: Option<Workers>,
    pub listen: Option<Vec<String>>,
    pub reuseport: Option<bool>,
    pub grace: Option<f64>,
    pub codec: Option<String>,
    pub name: Option<String>,
    pub control: Option<PathBuf>,
    pub log_format: Option<String>,
    pub env: Option<BTreeMap<String, String>>,
    pub restart: Option<RestartFile>,
    pub reload: Option<ReloadFile>,
    pub cache: Option<CacheFile>,
}

/// A count or `"auto"` (one per CPU).
#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(untagged)]
#[allow(missing_docs)] // fields: the flags and TOML keys of the same names (module docs)
pub enum Workers {
    Count(i64),
    Auto(AutoWord),
}

#[derive(Deserialize, Debug, Clone, Copy)]
#[allow(missing_docs)] // fields: the flags and TOML keys of the same names (module docs)
pub enum AutoWord {
    #[serde(rename = "auto")]
    Auto,
}

/// The `[restart]` table.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // fields: the flags and TOML keys of the same names (module docs)
pub struct RestartFile {
    pub mode: Option<String>,
    pub backoff_min: Option<f64>,
    pub backoff_max: Option<f64>,
    pub max_restarts: Option<u32>,
    pub window: Option<f64>,
}

/// The `[reload]` table.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // fields: the flags and TOML keys of the same names (module docs)
pub struct ReloadFile {
    pub batch: Option<usize>,
    pub ready: Option<String>,
    pub ready_timeout: Option<f64>,
}

/// The `[cache]` table.
#[derive(Deserialize, Default, Debug)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)] // fields: the flags and TOML keys of the same names (module docs)
pub struct CacheFile {
    pub dir: Option<PathBuf>,
    pub snapshot: Option<PathBuf>,
    pub redis: Option<String>,
    pub warm: Option<Vec<String>>,
    pub max_stale: Option<f64>,
}

/// Where the cache's data comes from.
#[derive(Debug, Clone, PartialEq)]
#[allow(missing_docs)] // fields: the flags and TOML keys of the same names (module docs)
pub enum CacheSource {
    Dir(PathBuf),
    Snapshot(PathBuf),
    Redis(String),
}

/// The validated settings `herd run` works with.
#[derive(Debug, Clone)]
#[allow(missing_docs)] // fields: the flags and TOML keys of the same names (module docs)
pub struct Settings {
    pub command: Vec<String>,
    pub workers: usize,
    pub listen: Vec<ListenAddr>,
    pub reuseport: bool,
    pub grace: Duration,
    pub codec: Codec,
    pub name: String,
    pub control: PathBuf,
    pub json_logs: bool,
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
}

/// Reads a config file.
pub fn read(path: &Path) -> Result<FileConfig> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    parse(&text).with_context(|| format!("bad config file {}", path.display()))
}

/// Parses a config file's text.
pub fn parse(text: &str) -> Result<FileConfig> {
    // toml's messages name the field and show the line.
    toml::from_str(text).map_err(|e| anyhow::anyhow!("{}", e.to_string().trim_end()))
}

fn seconds(field: &str, v: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(v)
        .map_err(|_| anyhow::anyhow!("{field}: {v} is not a number of seconds (0 or more)"))
}

/// What the flags gave (`None`: not given).
#[derive(Debug, Default, Clone)]
#[allow(missing_docs)] // fields: the flags and TOML keys of the same names (module docs)
pub struct Flags {
    pub command: Vec<String>,
    pub workers: Option<usize>,
    pub listen: Vec<String>,
    pub reuseport: bool,
    pub grace: Option<f64>,
    pub codec: Option<String>,
    pub name: Option<String>,
    pub control: Option<PathBuf>,
    pub log_format: Option<String>,
    pub env: Vec<String>,
    pub restart: Option<String>,
    pub max_restarts: Option<u32>,
    pub backoff_min: Option<f64>,
    pub reload_batch: Option<usize>,
    pub ready: Option<String>,
    pub ready_timeout: Option<f64>,
    pub cache_dir: Option<PathBuf>,
    pub cache_snapshot: Option<PathBuf>,
    pub redis: Option<String>,
    pub warm: Vec<String>,
}

/// Merges flags over the file and checks everything.
pub fn settings(flags: Flags, file: FileConfig) -> Result<Settings> {
    let command = if flags.command.is_empty() {
        file.command.unwrap_or_default()
    } else {
        flags.command
    };
    if command.is_empty() || command[0].is_empty() {
        bail!("command: nothing to run (give it after `--`, or as `command` in the config file)");
    }
    let workers = match (flags.workers, file.workers) {
        (Some(n), _) => n,
        (None, Some(Workers::Count(n))) => {
            usize::try_from(n).map_err(|_| anyhow::anyhow!("workers: {n} is not a count"))?
        }
        (None, Some(Workers::Auto(_))) | (None, None) => {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    };
    if workers == 0 {
        bail!("workers: must be at least 1");
    }
    let listen_text = if flags.listen.is_empty() {
        file.listen.unwrap_or_default()
    } else {
        flags.listen
    };
    let listen = listen_text
        .iter()
        .map(|a| {
            a.parse::<ListenAddr>()
                .map_err(|e| anyhow::anyhow!("listen: {e}"))
        })
        .collect::<Result<Vec<_>>>()?;
    let reuseport = flags.reuseport || file.reuseport.unwrap_or(false);
    if reuseport && listen.is_empty() {
        bail!("reuseport: needs at least one listen address");
    }
    if reuseport && listen.iter().any(|a| matches!(a, ListenAddr::Unix(_))) {
        bail!("reuseport: works with TCP addresses only");
    }
    let grace = seconds("grace", flags.grace.or(file.grace).unwrap_or(5.0))?;
    let codec_text = flags.codec.or(file.codec).unwrap_or_else(|| "json".into());
    let codec = Codec::parse(&codec_text).ok_or_else(|| {
        anyhow::anyhow!("codec: unknown codec {codec_text:?} (use json or binary)")
    })?;
    let name = flags.name.or(file.name).unwrap_or_else(|| "herd".into());
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || name.starts_with('.')
    {
        bail!("name: {name:?} must be letters, digits, '-', '_' or '.'");
    }
    let control = match flags.control.or(file.control) {
        Some(p) => p,
        None => crate::control::default_path(&name),
    };
    let log_format = flags
        .log_format
        .or(file.log_format)
        .unwrap_or_else(|| "text".into());
    let json_logs = match log_format.as_str() {
        "text" => false,
        "json" => true,
        other => bail!("log_format: unknown format {other:?} (use text or json)"),
    };
    let mut env = file.env.unwrap_or_default();
    for kv in flags.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("env: {kv:?} is not KEY=VALUE");
        };
        env.insert(k.into(), v.into());
    }
    if let Some(bad) = env.keys().find(|k| k.is_empty() || k.contains('=')) {
        bail!("env: {bad:?} is not a variable name");
    }
    let r = file.restart.unwrap_or_default();
    let restart_mode = flags
        .restart
        .or(r.mode)
        .unwrap_or_else(|| "on-failure".into())
        .parse::<Restart>()
        .map_err(|e| anyhow::anyhow!("restart.mode: {e}"))?;
    let backoff_min = seconds(
        "restart.backoff_min",
        flags.backoff_min.or(r.backoff_min).unwrap_or(0.1),
    )?;
    let backoff_max = seconds("restart.backoff_max", r.backoff_max.unwrap_or(30.0))?;
    if backoff_max < backoff_min {
        bail!("restart.backoff_max: must be at least restart.backoff_min");
    }
    let max_restarts = flags.max_restarts.or(r.max_restarts).unwrap_or(5);
    let window = seconds("restart.window", r.window.unwrap_or(60.0))?;
    let rl = file.reload.unwrap_or_default();
    let reload_batch = flags.reload_batch.or(rl.batch).unwrap_or(1);
    if reload_batch == 0 {
        bail!("reload.batch: must be at least 1");
    }
    let ready = flags
        .ready
        .or(rl.ready)
        .unwrap_or_else(|| "online".into())
        .parse::<Readiness>()
        .map_err(|e| anyhow::anyhow!("reload.ready: {e}"))?;
    let ready_timeout = seconds(
        "reload.ready_timeout",
        flags.ready_timeout.or(rl.ready_timeout).unwrap_or(30.0),
    )?;
    let c = file.cache.unwrap_or_default();
    let sources = [
        flags.cache_dir.or(c.dir).map(CacheSource::Dir),
        flags
            .cache_snapshot
            .or(c.snapshot)
            .map(CacheSource::Snapshot),
        flags.redis.or(c.redis).map(CacheSource::Redis),
    ];
    let mut sources = sources.into_iter().flatten();
    let cache = sources.next();
    if sources.next().is_some() {
        bail!("cache: give one of dir, snapshot and redis");
    }
    let warm = if flags.warm.is_empty() {
        c.warm.unwrap_or_default()
    } else {
        flags.warm
    };
    if !warm.is_empty() && cache.is_none() {
        bail!("cache.warm: needs a cache source (dir, snapshot or redis)");
    }
    let max_stale = seconds("cache.max_stale", c.max_stale.unwrap_or(300.0))?;
    Ok(Settings {
        command,
        workers,
        listen,
        reuseport,
        grace,
        codec,
        name,
        control,
        json_logs,
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from(text: &str) -> Result<Settings> {
        settings(Flags::default(), parse(text)?)
    }

    #[test]
    fn a_full_file_is_read() {
        let s = from(
            r#"
            command = ["node", "app.js"]
            workers = 3
            listen = ["127.0.0.1:0", "unix:/tmp/x.sock"]
            grace = 2.5
            log_format = "json"
            env = { A = "1" }
            [restart]
            mode = "always"
            max_restarts = 2
            [reload]
            batch = 2
            ready = "delay:0.5"
            [cache]
            dir = "data"
            warm = ["k:*"]
            "#,
        )
        .unwrap();
        assert_eq!(s.command, ["node", "app.js"]);
        assert_eq!(s.workers, 3);
        assert_eq!(s.listen.len(), 2);
        assert_eq!(s.grace, Duration::from_millis(2500));
        assert!(s.json_logs);
        assert_eq!(s.restart_mode, Restart::Always);
        assert_eq!(s.max_restarts, 2);
        assert_eq!(s.reload_batch, 2);
        assert_eq!(s.ready, Readiness::Delay(Duration::from_millis(500)));
        assert_eq!(s.cache, Some(CacheSource::Dir("data".into())));
        assert_eq!(s.env["A"], "1");
    }

    #[test]
    fn errors_name_the_bad_field() {
        for (text, field) in [
            ("command = ['x']\nwrokers = 2", "wrokers"),
            ("command = ['x']\nworkers = 'many'", "workers"),
            ("command = ['x']\nworkers = 0", "workers"),
            ("command = ['x']\nlisten = ['nowhere']", "listen"),
            ("command = ['x']\ngrace = -1.0", "grace"),
            ("command = ['x']\ncodec = 'xml'", "codec"),
            (
                "command = ['x']\n[restart]\nmode = 'sometimes'",
                "restart.mode",
            ),
            ("command = ['x']\n[reload]\nready = 'soon'", "reload.ready"),
            ("command = ['x']\n[reload]\nbatch = 0", "reload.batch"),
            (
                "command = ['x']\n[cache]\ndir = 'a'\nredis = 'redis://x'",
                "cache",
            ),
            ("command = ['x']\n[cache]\ncolour = 'blue'", "colour"),
            ("command = ['x']\nname = '../etc'", "name"),
            ("workers = 2", "command"),
        ] {
            let e = format!("{:#}", from(text).unwrap_err());
            assert!(e.contains(field), "{text:?}: {e}");
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let file = parse("command = ['a']\nworkers = 2\n[reload]\nready = 'notice'").unwrap();
        let flags = Flags {
            workers: Some(5),
            command: vec!["b".into()],
            ..Flags::default()
        };
        let s = settings(flags, file).unwrap();
        assert_eq!((s.workers, s.command[0].as_str()), (5, "b"));
        assert_eq!(s.ready, Readiness::Notice);
    }
}
