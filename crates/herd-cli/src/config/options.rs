//! Every setting of `herd run`, defined once: each field is both a flag (clap) and a key of the
//! config file (serde), unset unless given. [`super::load`] reads the file and lays the flags
//! given over it; [`super::Settings`] checks the result.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer};

/// `herd run`'s settings, as given: flags (clap) or the config file's top level (serde).
#[derive(clap::Args, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// The program and its arguments.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
    /// Number of workers, or `auto` (default: one per CPU).
    #[arg(short, long)]
    pub workers: Option<Workers>,
    /// Listen on ADDR (HOST:PORT, :PORT or unix:/PATH) and share the socket with every worker
    /// as descriptor 3, 4, ... (LISTEN_FDS). Repeatable.
    #[arg(short, long = "listen", value_name = "ADDR")]
    pub listen: Vec<String>,
    /// How connections reach Node workers' servers: `shared` (default: every worker accepts
    /// on the same socket), `rr` (herd accepts and hands each to the next worker, as Node's own
    /// primary does), `sticky` (as rr, every connection of one client to one worker: by its
    /// socket.io session, else its address; socket.io's polling needs it) or `reuseport` (a
    /// socket per worker on the --listen addresses).
    #[arg(long)]
    pub balance: Option<BalanceMode>,
    /// Same as `--balance reuseport`: each worker gets a socket of its own on the --listen
    /// addresses (SO_REUSEPORT).
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub reuseport: Option<bool>,
    /// What herd does with a retiring Node worker's client connections (a reload, a
    /// scale-down, a stop): `end` (default: it keeps a copy of each, so one the worker lets go
    /// of stays open and goes to another worker with its next request; after half the grace
    /// period a worker left holding only connections whose next request waits is ended),
    /// `hold` (kept and handed on, the worker never ended early) or `off` (Node's own
    /// `server.close()`: idle keep-alive connections are closed).
    #[arg(long)]
    pub rescue: Option<RescueMode>,
    /// Seconds a worker has to exit after a stop before it is killed (default 5).
    #[arg(long)]
    pub grace: Option<f64>,
    /// Seconds a running worker may leave herd's liveness ping unanswered, sending nothing,
    /// before it is replaced (killed, and its slot restarted, not counted as a crash), or `off`
    /// (default 30). A Node worker answers from its event loop, through a preload herd appends
    /// to its NODE_OPTIONS; a program that never answers is never judged.
    #[arg(long, value_name = "SECS|off")]
    pub unresponsive: Option<String>,
    /// The signal a stopped worker gets once its channel is closed (a Node cluster worker: once
    /// its servers are done), so its own shutdown handlers run: `SIGTERM` (default), `SIGINT`,
    /// `SIGHUP`, `SIGQUIT`, `SIGUSR1`, `SIGUSR2` (with or without `SIG`).
    #[arg(long)]
    pub kill_signal: Option<String>,
    /// Seconds after a stop (or a worker's turn in a reload) before a Node worker whose program
    /// listens for --kill-signal (`process.on('SIGTERM')`) gets it, whether or not its servers
    /// have closed, so that a WebSocket or SSE server's hook ends its connections (default 1).
    /// A program with no such listener gets the signal once its servers are done, as before.
    #[arg(long, value_name = "SECS")]
    pub stop_settle: Option<f64>,
    /// Replace a worker whose resident memory stays above SIZE (`300M`, `1G`) for 3 s, as a
    /// reload replaces it: the new one ready first, the old one drained (PM2's
    /// `max_memory_restart`, without the dropped requests).
    #[arg(long, value_name = "SIZE")]
    pub max_memory: Option<String>,
    /// Serve OpenMetrics (Prometheus) text on http://ADDR/metrics (HOST:PORT): workers' CPU,
    /// memory, restarts and state, reloads, drops, the cache's counters.
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Stop workers with PM2's `'shutdown'` message instead of a signal.
    #[arg(long)]
    pub shutdown_message: Option<bool>,
    /// What herd does with a worker's messages (`process.send`): `off` (default) or `others`
    /// (each goes on to every other worker, as an app's primary that forwards them does:
    /// `@socket.io/cluster-adapter`'s broadcasts then reach every worker).
    #[arg(long)]
    pub relay: Option<RelayMode>,
    /// Print each worker message (`process.send`) on herd's stdout as a JSON line.
    #[arg(long, num_args = 0, default_missing_value = "true")]
    pub log_messages: Option<bool>,
    /// Channel codec: `json` (Node's format, any language; default) or `binary` (herd's Rust
    /// workers).
    #[arg(long)]
    pub codec: Option<CodecName>,
    /// This herd's name, for its control socket (default `herd`).
    #[arg(long)]
    pub name: Option<String>,
    /// The control socket's path (default: from --name).
    #[arg(long)]
    pub control: Option<PathBuf>,
    /// `text` (worker lines prefixed `[wN]`) or `json` (one JSON object per line).
    #[arg(long)]
    pub log_format: Option<LogFormat>,
    /// An environment variable for the workers (KEY=VALUE). Repeatable; the file's is a table.
    #[arg(short, long = "env", value_name = "KEY=VALUE", value_parser = env_var)]
    #[serde(deserialize_with = "env_table")]
    pub env: Vec<(String, String)>,
    /// The `[restart]` table.
    #[command(flatten)]
    pub restart: RestartOptions,
    /// The `[reload]` table.
    #[command(flatten)]
    pub reload: ReloadOptions,
    /// The `[cache]` table.
    #[command(flatten)]
    pub cache: CacheOptions,
    /// The `[logs]` table.
    #[command(flatten)]
    pub logs: super::logs::LogOptions,
}

/// `--balance`: how connections reach Node workers' servers.
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BalanceMode {
    /// herd accepts and hands each connection to the next worker (Node's round-robin).
    Rr,
    /// Every worker accepts on the same socket (the default).
    Shared,
    /// A socket per worker on the --listen addresses (SO_REUSEPORT).
    Reuseport,
    /// As `rr`, but every connection of one client goes to one worker: by the socket.io
    /// session its first request names, else by the client's address.
    Sticky,
}

/// `--rescue`: what is done with a retiring Node worker's connections.
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RescueMode {
    /// Kept and handed on; a worker holding only connections whose next request waits is
    /// ended after half its grace period (the default).
    End,
    /// Kept and handed on; the worker is never ended early.
    Hold,
    /// Nothing: Node's own `server.close()`.
    Off,
}

/// `--relay`: what is done with a worker's messages.
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RelayMode {
    /// Reported only (printed with --log-messages).
    Off,
    /// Relayed to every other worker.
    Others,
}

/// `--codec`: the channel's format.
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum CodecName {
    /// Node's JSON lines (any language; the default).
    Json,
    /// herd's binary frames (herd's Rust workers).
    Binary,
}

/// `--log-format`: how herd writes its own and its workers' lines.
#[derive(clap::ValueEnum, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Worker lines prefixed `[wN]` (the default).
    Text,
    /// One JSON object per line.
    Json,
}

/// When crashed workers are restarted: the `[restart]` table.
#[derive(clap::Args, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct RestartOptions {
    /// Which exits are restarted: always (default: a server that exits, even with 0, is not
    /// serving), on-failure or never.
    #[arg(long = "restart", value_name = "RESTART")]
    pub mode: Option<String>,
    /// Crashes within the window (60 s) before a worker slot gives up (default 5).
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// The first restart delay in seconds (default 0.1; doubles per crash, up to 30).
    #[arg(long)]
    pub backoff_min: Option<f64>,
    /// The longest restart delay in seconds (default 30). Config file only.
    #[arg(skip)]
    pub backoff_max: Option<f64>,
    /// Seconds over which crashes are counted (default 60). Config file only.
    #[arg(skip)]
    pub window: Option<f64>,
}

/// How workers are replaced: the `[reload]` table.
#[derive(clap::Args, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ReloadOptions {
    /// Workers replaced at once in a rolling reload (default 1).
    #[arg(long = "reload-batch", value_name = "RELOAD_BATCH")]
    pub batch: Option<usize>,
    /// When a new worker is ready: listening (default: it listens on every address its slot's
    /// worker listened on, or it is online if that one never listened), online, notice (it calls
    /// herd.ready() or herd.listening(), or Node says it listens), message (PM2's
    /// process.send('ready')), port:HOST:PORT (a connection succeeds) or delay:SECS.
    #[arg(long)]
    pub ready: Option<String>,
    /// Seconds a new worker has to become ready (default 30).
    #[arg(long)]
    pub ready_timeout: Option<f64>,
}

/// The host-shared cache: the `[cache]` table.
#[derive(clap::Args, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct CacheOptions {
    /// Serve the host-shared cache from the files in this folder (one key per file).
    #[arg(long = "cache-dir", value_name = "CACHE_DIR")]
    pub dir: Option<PathBuf>,
    /// Serve the host-shared cache from this JSON snapshot ({"key": "value", ...}).
    #[arg(long = "cache-snapshot", value_name = "CACHE_SNAPSHOT")]
    pub snapshot: Option<PathBuf>,
    /// Serve the host-shared cache from this Redis (redis://HOST:PORT[/DB]).
    #[arg(long)]
    pub redis: Option<String>,
    /// Keys or patterns (Redis glob) to load before workers ask. Repeatable.
    #[arg(long = "warm", value_name = "PATTERN")]
    pub warm: Vec<String>,
    /// Seconds a value may be served stale while its source fails (default 300). Config file
    /// only.
    #[arg(skip)]
    pub max_stale: Option<f64>,
}

/// A count or `auto` (one per CPU).
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[serde(untagged)]
pub enum Workers {
    /// This many (checked: at least 1).
    Count(i64),
    /// One per CPU.
    Auto(AutoWord),
}

/// The word `auto`.
#[derive(Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoWord {
    /// `auto`
    #[serde(rename = "auto")]
    Auto,
}

impl FromStr for Workers {
    type Err = String;

    fn from_str(s: &str) -> Result<Workers, String> {
        if s == "auto" {
            return Ok(Workers::Auto(AutoWord::Auto));
        }
        s.parse()
            .map(Workers::Count)
            .map_err(|_| format!("{s:?} is not a count or `auto`"))
    }
}

/// `KEY=VALUE`, from a flag.
fn env_var(kv: &str) -> Result<(String, String), String> {
    kv.split_once('=')
        .map(|(k, v)| (k.into(), v.into()))
        .ok_or_else(|| format!("{kv:?} is not KEY=VALUE"))
}

/// `env = { KEY = "VALUE" }`, from the file.
fn env_table<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(String, String)>, D::Error> {
    Ok(
        std::collections::BTreeMap::<String, String>::deserialize(d)?
            .into_iter()
            .collect(),
    )
}
