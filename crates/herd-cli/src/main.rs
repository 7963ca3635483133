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
//! - `herd status | reload | stop | scale N | logs` talk to a running `herd run` over its
//!   control socket.
//!
//! Exit codes (`herd_cli::Exit`): 0 stopped on request, or every worker exited 0 and none is
//! restarted; 1 a worker failed (crash loop, or a failure not restarted) or herd hit an error;
//! 2 bad usage or a bad config file.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use herd_cli::control::{client, format_status};
use herd_cli::{config, control, demo, run, sink, Exit};

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
    Run(Box<config::Flags>),
    /// Show a running herd's workers and cache.
    Status {
        #[command(flatten)]
        at: At,
        /// Print the status as JSON.
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
    /// List every herd of this user on the host (those with their control socket in herd's
    /// own directory): state, workers, CPU, memory, restarts, uptime.
    List {
        /// Print the list as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print a running herd's recent worker output, and with -f follow it.
    Logs {
        #[command(flatten)]
        at: At,
        /// Go on printing new lines as they come (until Ctrl-C or herd ends).
        #[arg(short, long)]
        follow: bool,
        /// Recent lines to print first (default 15, as PM2's).
        #[arg(short = 'n', long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
        lines: u64,
        /// Only this worker's lines (its id: the N of `[wN]`).
        #[arg(long)]
        worker: Option<u64>,
        /// Only lines from this time on: `10m`, `1h` back from now, an RFC 3339 time or
        /// seconds since the epoch.
        #[arg(long, value_parser = herd_cli::control::logs::parse_since)]
        since: Option<std::time::SystemTime>,
        /// One JSON object per line (seq, ts, worker, stream, line).
        #[arg(long)]
        json: bool,
        /// Start each line with when herd read it (RFC 3339, UTC).
        #[arg(long)]
        time: bool,
    },
    /// Change the number of workers of a running herd.
    Scale {
        /// The new number of workers (1 to 4096), or a change to it: `+2`, `-1` (as PM2's).
        #[arg(allow_hyphen_values = true, value_parser = control::client::Count::parse)]
        workers: control::client::Count,
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

/// How long herd waits, when it exits, for a slow reader to take what it printed.
const FLUSH: Duration = Duration::from_secs(2);

/// How long a control command waits for its answer.
const LIMIT: Duration = Duration::from_secs(3600);

fn main() {
    let mut argv = std::env::args_os();
    match argv.nth(1) {
        Some(a) if a == run::LISTEN_EXEC => run::listen_exec(argv.skip(1).collect()),
        Some(a) if a == run::WATCHDOG => run::watchdog(argv.collect()),
        _ => {}
    }
    let (cli, matches) = match parse() {
        Ok(parsed) => parsed,
        Err(e) => {
            // Bad usage, or --help / --version (printed to stdout: not an error).
            let _ = e.print();
            let exit = if e.use_stderr() {
                Exit::Usage
            } else {
                Exit::Success
            };
            std::process::exit(exit.code());
        }
    };
    let json_logs = matches!(&cli.command, Command::Run(r)
        if r.options.log_format == Some(herd_cli::config::LogFormat::Json));
    let filter = tracing_subscriber::EnvFilter::try_from_env("HERD_LOG")
        .unwrap_or_else(|_| "herd=info,herd_cli=info".into());
    // Colour only for a person at a terminal: a pipe, a file or journald gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour)
        .with_writer(sink::Logs);
    if json_logs {
        fmt.json().init();
    } else {
        fmt.init();
    }
    let exit = match tokio::runtime::Runtime::new() {
        Ok(runtime) => match runtime.block_on(dispatch(cli, &matches)) {
            Ok(exit) => exit,
            Err(e) => {
                let text = format!("herd: {}\n", herd_cli::exit::report(&e));
                sink::global().write(sink::Stream::Err, control::printable(&text).into_bytes());
                e.exit()
            }
        },
        Err(e) => {
            let text = format!("herd: cannot start the runtime: {e}\n");
            sink::global().write(sink::Stream::Err, text.into_bytes());
            Exit::Failure
        }
    };
    // What is queued is written if the reader takes it within the deadline; a stalled reader
    // does not keep herd from exiting.
    sink::global().flush(FLUSH);
    std::process::exit(exit.code());
}

/// The command line, parsed; the matches too, to tell which `run` flags were given.
fn parse() -> Result<(Cli, clap::ArgMatches), clap::Error> {
    let matches = Cli::command().try_get_matches()?;
    Ok((Cli::from_arg_matches(&matches)?, matches))
}

async fn dispatch(cli: Cli, matches: &clap::ArgMatches) -> herd_cli::Result<Exit> {
    match cli.command {
        Command::Run(flags) => {
            let flags_given = matches
                .subcommand_matches("run")
                .expect("the run subcommand's matches");
            let settings = config::load(flags.config.as_deref(), flags_given)?;
            run::run(settings).await
        }
        Command::Demo => demo::run().await,
        Command::Status { at, json } => {
            // The table shows CPU now, which needs two reports; JSON is one report (its
            // `cpu` figures are since the last one, when there was one).
            let report = if json {
                client::status(&at.path(), LIMIT).await?
            } else {
                client::status_with_cpu(&at.path(), LIMIT).await?
            };
            if json {
                let text = serde_json::to_string(&report).expect("a report serialises");
                say(&format!("{text}\n"))
            } else {
                say(&format_status(&report))
            }
        }
        Command::Reload { at } => {
            let replaced = client::reload(&at.path(), LIMIT).await?;
            say(&format!("reloaded: {replaced} workers replaced\n"))
        }
        Command::Stop { at } => {
            client::stop(&at.path(), LIMIT).await?;
            say("stopped\n")
        }
        Command::List { json } => {
            let found = control::list::list(&control::default_dir()).await?;
            if json {
                let text = serde_json::to_string(&found).expect("a list serialises");
                say(&format!("{text}\n"))
            } else {
                say(&control::list::format_list(&found))
            }
        }
        Command::Logs {
            at,
            follow,
            lines,
            worker,
            since,
            json,
            time,
        } => {
            let ask = herd_cli::control::logs::Ask {
                lines: lines as usize,
                worker,
                since,
                follow,
                json,
                time,
            };
            herd_cli::control::logs::logs(&at.path(), &ask).await
        }
        Command::Scale { workers, at } => {
            let n = client::scale(&at.path(), workers, LIMIT).await?;
            say(&format!("scaled to {n} workers\n"))
        }
    }
}

/// A client command's answer on stdout, with no control bytes (what a herd sent is not trusted
/// to drive the terminal); a reader that closed the pipe (`herd status | head -0`) ends the
/// command quietly.
fn say(text: &str) -> herd_cli::Result<Exit> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out
        .write_all(control::printable(text).as_bytes())
        .and_then(|()| out.flush())
    {
        Ok(()) => Ok(Exit::Success),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(Exit::Success),
        Err(e) => Err(herd_cli::Error::failure(format!(
            "cannot write the answer: {e}"
        ))),
    }
}
