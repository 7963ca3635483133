//! `herd`: run any program as a supervised cluster, thin over the herd library.
//!
//! - `herd run [OPTIONS] -- CMD ARGS...` starts N copies of CMD as workers with a channel in
//!   their environment (Node's variables too, so a Node program's `process.send` just works),
//!   restarts them when they crash (exponential backoff; a crash loop gives up with a message),
//!   shares listening sockets (`--listen`, systemd's `LISTEN_FDS` convention, or `--reuseport`),
//!   prefixes their output with their id (`--log-format json` for JSON lines), hosts the
//!   host-shared cache (`--cache-dir`, `--cache-snapshot`, `--redis`), reloads them one batch at
//!   a time on SIGHUP or `herd reload`, and stops them gracefully on SIGINT or SIGTERM (a second
//!   signal kills at once). Settings can come from a TOML file (`--config`).
//! - `herd status | reload | stop | scale N` talk to a running `herd run` over its control
//!   socket.
//!
//! Exit codes: 0 stopped on request, or every worker exited 0 and none is restarted; 1 a worker
//! failed (crash loop, or a failure not restarted) or herd hit an error; 2 bad usage or a bad
//! config file.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use herd::cache::{CacheConfig, FileSource, Hub, RedisSource};
use herd::listen::ListenAddr;
use herd::service::{Outcome, RestartPolicy, ServiceConfig, ServiceEvent};
use herd::{Cluster, OutputStream};
use herd_cli::{config, control, demo};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::signal::unix::{signal, SignalKind};

/// The hidden first argument of the `LISTEN_PID` shim (see [`listen_exec`]).
const LISTEN_EXEC: &str = "__listen-exec";

#[derive(Parser)]
#[command(
    name = "herd",
    version,
    about = "Run any program as a supervised cluster of workers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start N copies of a program as supervised workers.
    Run(Box<RunArgs>),
    /// Show a running herd's workers and cache.
    Status {
        #[command(flatten)]
        at: At,
        /// Print the raw JSON answer.
        #[arg(long)]
        json: bool,
    },
    /// Replace every worker of a running herd, a batch at a time, without downtime.
    Reload {
        #[command(flatten)]
        at: At,
    },
    /// Stop a running herd gracefully; returns once it has.
    Stop {
        #[command(flatten)]
        at: At,
    },
    /// herd's main job on its embedded default: Node HTTP workers on one shared port, one cache
    /// for the host, a rolling reload under load. Needs only `node`.
    Demo,
    /// Change the number of workers of a running herd.
    Scale {
        /// The new number of workers.
        workers: usize,
        #[command(flatten)]
        at: At,
    },
}

/// Which running herd to talk to.
#[derive(Args)]
struct At {
    /// The herd's name (as given to `herd run --name`).
    #[arg(long, default_value = "herd")]
    name: String,
    /// The control socket's path (overrides --name).
    #[arg(long)]
    control: Option<PathBuf>,
}

impl At {
    fn path(&self) -> PathBuf {
        self.control
            .clone()
            .unwrap_or_else(|| control::default_path(&self.name))
    }
}

#[derive(Args)]
struct RunArgs {
    /// A TOML file with any of these settings (flags win).
    #[arg(short, long)]
    config: Option<PathBuf>,
    /// Number of workers (default: one per CPU).
    #[arg(short, long)]
    workers: Option<usize>,
    /// Listen on ADDR (HOST:PORT, :PORT or unix:/PATH) and share the socket with every worker
    /// as descriptor 3, 4, ... (LISTEN_FDS). Repeatable.
    #[arg(short, long = "listen", value_name = "ADDR")]
    listen: Vec<String>,
    /// Give each worker a socket of its own on the --listen addresses (SO_REUSEPORT).
    #[arg(long)]
    reuseport: bool,
    /// Seconds a worker has to exit after a stop before it is killed (default 5).
    #[arg(long)]
    grace: Option<f64>,
    /// Channel codec: `json` (Node's format, any language; default) or `binary` (herd's Rust
    /// workers).
    #[arg(long)]
    codec: Option<String>,
    /// This herd's name, for its control socket (default `herd`).
    #[arg(long)]
    name: Option<String>,
    /// The control socket's path (default: from --name).
    #[arg(long)]
    control: Option<PathBuf>,
    /// `text` (worker lines prefixed `[wN]`) or `json` (one JSON object per line).
    #[arg(long)]
    log_format: Option<String>,
    /// An environment variable for the workers (KEY=VALUE). Repeatable.
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    env: Vec<String>,
    /// Which exits are restarted: always, on-failure (default) or never.
    #[arg(long)]
    restart: Option<String>,
    /// Crashes within the window (60 s) before a worker slot gives up (default 5).
    #[arg(long)]
    max_restarts: Option<u32>,
    /// The first restart delay in seconds (default 0.1; doubles per crash, up to 30).
    #[arg(long)]
    backoff_min: Option<f64>,
    /// Workers replaced at once in a rolling reload (default 1).
    #[arg(long)]
    reload_batch: Option<usize>,
    /// When a new worker is ready: online (default), notice (it calls herd.ready() or
    /// herd.listening()), port:HOST:PORT (a connection succeeds) or delay:SECS.
    #[arg(long)]
    ready: Option<String>,
    /// Seconds a new worker has to become ready (default 30).
    #[arg(long)]
    ready_timeout: Option<f64>,
    /// Serve the host-shared cache from the files in this folder (one key per file).
    #[arg(long)]
    cache_dir: Option<PathBuf>,
    /// Serve the host-shared cache from this JSON snapshot ({"key": "value", ...}).
    #[arg(long)]
    cache_snapshot: Option<PathBuf>,
    /// Serve the host-shared cache from this Redis (redis://HOST:PORT[/DB]).
    #[arg(long)]
    redis: Option<String>,
    /// Keys or patterns (Redis glob) to load before workers ask. Repeatable.
    #[arg(long = "warm", value_name = "PATTERN")]
    warm: Vec<String>,
    /// The program and its arguments.
    #[arg(last = true)]
    cmd: Vec<String>,
}

/// A usage error: exit code 2.
#[derive(Debug)]
struct Usage(anyhow::Error);

impl std::fmt::Display for Usage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#}", self.0)
    }
}

impl std::error::Error for Usage {}

fn main() {
    let mut argv = std::env::args_os();
    if argv.nth(1).is_some_and(|a| a == LISTEN_EXEC) {
        listen_exec(argv.skip(1).collect());
    }
    let cli = Cli::parse();
    let json_logs =
        matches!(&cli.command, Command::Run(r) if r.log_format.as_deref() == Some("json"));
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERD_LOG")
        .unwrap_or_else(|_| "herd=info,herd_cli=info".into());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json_logs {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("herd: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = match runtime.block_on(dispatch(cli)) {
        Ok(code) => code,
        Err(e) if e.is::<Usage>() => {
            eprintln!("herd: {e:#}");
            2
        }
        Err(e) => {
            eprintln!("herd: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

/// The `LISTEN_PID` shim: herd runs itself as `herd __listen-exec -- CMD ARGS...` so that,
/// in the worker's own process (its pid known at last), it can set `LISTEN_PID` as systemd's
/// convention asks and then become CMD with `exec`.
fn listen_exec(args: Vec<std::ffi::OsString>) -> ! {
    let mut args = args.into_iter();
    let Some(program) = args.next() else {
        eprintln!("herd {LISTEN_EXEC}: no program");
        std::process::exit(127);
    };
    let err = std::process::Command::new(&program)
        .args(args)
        .env("LISTEN_PID", std::process::id().to_string())
        .exec();
    eprintln!("herd: cannot run {}: {err}", program.to_string_lossy());
    std::process::exit(127);
}

async fn dispatch(cli: Cli) -> Result<i32> {
    let limit = Duration::from_secs(3600);
    match cli.command {
        Command::Run(args) => run(*args).await,
        Command::Demo => demo::run().await,
        Command::Status { at, json } => {
            let a = control::request(&at.path(), json!({"cmd": "status"}), limit).await?;
            if json {
                println!("{a}");
            } else {
                print!("{}", control::format_status(&a));
            }
            Ok(0)
        }
        Command::Reload { at } => {
            let a = control::request(&at.path(), json!({"cmd": "reload"}), limit).await?;
            println!("reloaded: {} workers replaced", a["replaced"]);
            Ok(0)
        }
        Command::Stop { at } => {
            control::request(&at.path(), json!({"cmd": "stop"}), limit).await?;
            println!("stopped");
            Ok(0)
        }
        Command::Scale { workers, at } => {
            let req = json!({"cmd": "scale", "workers": workers});
            control::request(&at.path(), req, limit).await?;
            println!("scaled to {workers} workers");
            Ok(0)
        }
    }
}

/// Whether `program` can be run (found on PATH, or an existing path).
fn findable(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join(program).is_file()))
}

async fn run(args: RunArgs) -> Result<i32> {
    let file = match &args.config {
        Some(p) => config::read(p).map_err(|e| anyhow::Error::new(Usage(e)))?,
        None => config::FileConfig::default(),
    };
    let flags = config::Flags {
        command: args.cmd,
        workers: args.workers,
        listen: args.listen,
        reuseport: args.reuseport,
        grace: args.grace,
        codec: args.codec,
        name: args.name,
        control: args.control,
        log_format: args.log_format,
        env: args.env,
        restart: args.restart,
        max_restarts: args.max_restarts,
        backoff_min: args.backoff_min,
        reload_batch: args.reload_batch,
        ready: args.ready,
        ready_timeout: args.ready_timeout,
        cache_dir: args.cache_dir,
        cache_snapshot: args.cache_snapshot,
        redis: args.redis,
        warm: args.warm,
    };
    let s = config::settings(flags, file).map_err(|e| anyhow::Error::new(Usage(e)))?;
    if !findable(&s.command[0]) {
        anyhow::bail!("cannot start {:?}: no such program", s.command[0]);
    }

    // Listening sockets, bound once here (shared mode) or per worker (reuseport).
    let mut shared: Vec<(OwnedFd, ListenAddr)> = Vec::new();
    let mut reuse: Vec<ListenAddr> = Vec::new();
    let mut listening = Vec::new();
    for addr in &s.listen {
        let fd = herd::listen::bind(addr, s.reuseport)
            .with_context(|| format!("cannot listen on {addr}"))?;
        let real = herd::listen::local_addr(&fd)?;
        tracing::info!(address = %real, reuseport = s.reuseport, "listening");
        eprintln!("herd: listening on {real}");
        listening.push(control::Listening {
            address: real.to_string(),
            reuseport: s.reuseport,
        });
        if s.reuseport {
            // Port 0 is resolved once, so every worker's socket shares the same port.
            reuse.push(real);
        } else {
            shared.push((fd, real));
        }
    }
    let nfds = s.listen.len() as i32;

    let hub = match &s.cache {
        None => None,
        Some(src) => {
            let config = CacheConfig {
                warm_patterns: s.warm.clone(),
                max_stale: s.max_stale,
                progress: herd_cli::progress::warm_up(),
                ..CacheConfig::default()
            };
            let hub = match src {
                config::CacheSource::Dir(d) => Hub::new(
                    FileSource::folder(d).with_context(|| format!("cache dir {}", d.display()))?,
                    config,
                ),
                config::CacheSource::Snapshot(p) => Hub::new(
                    FileSource::snapshot(p)
                        .with_context(|| format!("cache snapshot {}", p.display()))?,
                    config,
                ),
                config::CacheSource::Redis(url) => Hub::new(RedisSource::open(url)?, config),
            };
            tracing::info!(source = %hub.source().describe(), "serving the host-shared cache");
            Some(hub)
        }
    };

    let mut builder = Cluster::builder()
        .workers(0)
        .codec(s.codec)
        .grace(s.grace)
        .capture_output(true);
    if nfds > 0 {
        // systemd's convention: sockets from 3 up, then herd's channel above them.
        let exe = std::env::current_exe()?;
        let mut shim = vec![LISTEN_EXEC.to_string(), "--".into()];
        shim.extend(s.command.iter().cloned());
        builder = builder
            .program(exe)
            .args(shim)
            .channel_fd(3 + nfds)
            .env("LISTEN_FDS", nfds.to_string())
            .env(
                "LISTEN_FDNAMES",
                s.listen
                    .iter()
                    .map(|a| a.to_string().replace(':', "_"))
                    .collect::<Vec<_>>()
                    .join(":"),
            );
        for (i, (fd, _)) in shared.into_iter().enumerate() {
            builder = builder.inherit_fd(Arc::new(fd), 3 + i as i32);
        }
    } else {
        builder = builder.program(&s.command[0]).args(&s.command[1..]);
    }
    for (k, v) in &s.env {
        builder = builder.env(k, v);
    }
    if let Some(hub) = &hub {
        builder = builder.cache(hub.clone());
    }
    let cluster = builder
        .start()
        .await
        .with_context(|| format!("cannot start {:?}", s.command[0]))?;
    let config = ServiceConfig {
        workers: s.workers,
        restart: RestartPolicy {
            mode: s.restart_mode,
            backoff_min: s.backoff_min,
            backoff_max: s.backoff_max,
            max_restarts: s.max_restarts,
            window: s.window,
        },
        readiness: s.ready.clone(),
        ready_timeout: s.ready_timeout,
        reload_batch: s.reload_batch,
        reuseport: reuse,
        reuseport_fd: 3,
    };
    let mut sock = control::bind(&s.control).await?;
    tracing::info!(name = %s.name, control = %s.control.display(), workers = s.workers, "herd running");
    let (handle, mut events, mut task) = herd::service::start(cluster, config);
    {
        let (handle, hub) = (handle.clone(), hub.clone());
        tokio::spawn(async move { control::serve(&mut sock, handle, hub, listening).await });
    }

    let mut sigint = signal(SignalKind::interrupt())?;
    let mut sigterm = signal(SignalKind::terminate())?;
    let mut sighup = signal(SignalKind::hangup())?;
    let mut signals = 0;
    let mut out = tokio::io::stdout();
    let mut err = tokio::io::stderr();
    loop {
        tokio::select! {
            outcome = &mut task => {
                // The last lines may still be queued.
                while let Ok(ev) = events.try_recv() {
                    print_event(ev, s.json_logs, &mut out, &mut err).await;
                }
                let _ = out.flush().await;
                let outcome = outcome.context("the service task failed")?;
                let _ = std::fs::remove_file(&s.control);
                return Ok(match outcome {
                    Outcome::Stopped | Outcome::Exited(true) => 0,
                    Outcome::Exited(false) => 1,
                    Outcome::CrashLoop(why) => {
                        eprintln!("herd: every worker gave up: {why}");
                        1
                    }
                });
            }
            Some(ev) = events.recv() => print_event(ev, s.json_logs, &mut out, &mut err).await,
            _ = sigint.recv() => intent(&handle, &mut signals),
            _ = sigterm.recv() => intent(&handle, &mut signals),
            _ = sighup.recv() => {
                let handle = handle.clone();
                tokio::spawn(async move {
                    match handle.reload().await {
                        Ok(n) => tracing::info!(replaced = n, "SIGHUP reload done"),
                        Err(e) => tracing::error!(error = %e, "SIGHUP reload failed"),
                    }
                });
            }
        }
    }
}

/// A stop signal: the first stops gracefully, the next ones at once.
fn intent(handle: &herd::service::ServiceHandle, signals: &mut u32) {
    *signals += 1;
    let fast = *signals > 1;
    if fast {
        tracing::warn!("second signal: killing every worker");
    } else {
        tracing::info!("stopping: workers get the grace period");
    }
    let handle = handle.clone();
    tokio::spawn(async move { handle.stop(fast).await });
}

async fn print_event(
    ev: ServiceEvent,
    json_logs: bool,
    out: &mut tokio::io::Stdout,
    err: &mut tokio::io::Stderr,
) {
    let ts = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0.0, |d| d.as_secs_f64())
    };
    let (text, to_err) = match ev {
        ServiceEvent::Output {
            worker,
            stream,
            line,
        } => {
            if json_logs {
                let v = json!({"ts": ts(), "worker": worker.0, "stream": stream.as_str(), "line": line});
                (format!("{v}\n"), false)
            } else {
                (
                    format!("[w{worker}] {line}\n"),
                    stream == OutputStream::Stderr,
                )
            }
        }
        ServiceEvent::Message { worker, message } => {
            let v = if json_logs {
                json!({"ts": ts(), "worker": worker.0, "message": message})
            } else {
                json!({"worker": worker.0, "message": message})
            };
            (format!("{v}\n"), false)
        }
    };
    let r = if to_err {
        err.write_all(text.as_bytes()).await
    } else {
        out.write_all(text.as_bytes()).await
    };
    // A reader that went away is not a reason to stop the workers.
    let _ = r;
}
