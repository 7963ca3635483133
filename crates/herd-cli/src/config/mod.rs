//! `herd run`'s settings: flags, or a TOML file (`--config`) with the same settings, flags
//! winning. Each setting is defined once, in [`Options`]; [`settings`] checks them. Unknown
//! fields, wrong types and bad values are errors that name the field.
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
//! mode = "always"                  # always | on-failure | never
//! backoff_min = 0.1
//! backoff_max = 30.0
//! max_restarts = 5
//! window = 60.0
//!
//! [reload]
//! batch = 1
//! ready = "notice"                 # listening | online | notice | message | port:HOST:PORT | delay:SECS
//! ready_timeout = 30.0
//!
//! [cache]
//! dir = "cache-data"               # or snapshot = "cache.json", or redis = "redis://..."
//! warm = ["user:*"]
//! max_stale = 300.0
//!
//! [logs]
//! file = "/var/log/app/all.log"    # or out_file / err_file, one per stream
//! max_size = "10M"                 # rotated past it: PATH.1 (newest) ... PATH.keep
//! keep = 5
//! time = true                      # a timestamp on each worker line
//! ```

use std::path::{Path, PathBuf};

use clap::FromArgMatches;

use crate::exit::{Context, Error, Result};

pub mod cpus;
pub mod logs;
mod options;
mod settings;

pub use options::{
    AutoWord, BalanceMode, CacheOptions, CodecName, LogFormat, Options, ReloadOptions, RescueMode,
    RestartOptions, Workers,
};
pub use settings::{settings, CacheSource, Settings};

/// `herd run`'s flags: a config file, and every setting.
#[derive(clap::Args, Debug, Clone)]
pub struct Flags {
    /// A TOML file with any of these settings (flags win).
    #[arg(short, long)]
    pub config: Option<PathBuf>,
    /// The settings.
    #[command(flatten)]
    pub options: Options,
}

/// Reads a config file.
pub fn read(path: &Path) -> Result<Options> {
    let text =
        std::fs::read_to_string(path).or_usage(|| format!("cannot read {}", path.display()))?;
    parse(&text).or_usage(|| format!("bad config file {}", path.display()))
}

/// Parses a config file's text.
pub fn parse(text: &str) -> Result<Options> {
    // toml's messages name the field and show the line.
    toml::from_str(text).map_err(|e| Error::usage(e.to_string().trim_end()))
}

/// The settings: the file `config` (if any) with the flags given in `matches` (from
/// [`Flags`]) over it, checked.
pub fn load(config: Option<&Path>, matches: &clap::ArgMatches) -> Result<Settings> {
    let file = match config {
        Some(p) => read(p)?,
        None => Options::default(),
    };
    settings(over(file, matches)?)
}

/// The flags given in `matches` over `file`: a flag given replaces the file's value, except
/// that `--env` adds to (and overrides by key) the file's `env` table.
fn over(mut file: Options, matches: &clap::ArgMatches) -> Result<Options> {
    let file_env = std::mem::take(&mut file.env);
    file.update_from_arg_matches(matches)
        .or_usage(|| "bad flags".into())?;
    file.env = file_env.into_iter().chain(file.env).collect();
    Ok(file)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use clap::{Args, FromArgMatches};
    use herd::service::{Readiness, Restart};

    use super::*;

    fn from(text: &str) -> Result<Settings> {
        settings(parse(text)?)
    }

    fn matches(args: &[&str]) -> clap::ArgMatches {
        Flags::augment_args(clap::Command::new("run"))
            .try_get_matches_from(std::iter::once("run").chain(args.iter().copied()))
            .unwrap()
    }

    /// What the flag parser says of `args` it refuses.
    fn refused(args: &[&str]) -> String {
        Flags::augment_args(clap::Command::new("run"))
            .try_get_matches_from(std::iter::once("run").chain(args.iter().copied()))
            .unwrap_err()
            .to_string()
    }

    fn merged(file: &str, args: &[&str]) -> Result<Settings> {
        settings(over(parse(file)?, &matches(args))?)
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
    fn pm2_defaults_restart_always_and_ready_message_parses() {
        let s = from("command = ['x']\n[reload]\nready = 'message'").unwrap();
        assert_eq!(s.restart_mode, Restart::Always);
        assert_eq!(s.ready, Readiness::Message);
        // A port herd does not hold is a fine readiness probe.
        let s = from(
            "command = ['x']\nlisten = ['127.0.0.1:8080']\n[reload]\nready = 'port:127.0.0.1:9090'",
        );
        assert!(s.is_ok());
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
            (
                "command = ['x']\nlisten = ['127.0.0.1:8080']\n[reload]\nready = 'port:127.0.0.1:8080'",
                "herd itself listens on",
            ),
            (
                "command = ['x']\nlisten = [':8080']\n[reload]\nready = 'port:127.0.0.1:8080'",
                "herd itself listens on",
            ),
            ("workers = 2", "command"),
        ] {
            let e = from(text).unwrap_err();
            assert_eq!(e.exit(), crate::Exit::Usage, "{text:?}");
            let e = crate::exit::report(&e);
            assert!(e.contains(field), "{text:?}: {e}");
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let s = merged(
            "command = ['a']\nworkers = 2\n[reload]\nready = 'notice'",
            &["-w", "5", "--", "b"],
        )
        .unwrap();
        assert_eq!((s.workers, s.command[0].as_str()), (5, "b"));
        assert_eq!(s.ready, Readiness::Notice);
    }

    #[test]
    fn flags_and_file_merge_setting_by_setting() {
        let file = r#"
            command = ["node", "app.js"]
            listen = ["127.0.0.1:0"]
            reuseport = true
            env = { A = "1", B = "2" }
            [restart]
            mode = "always"
            backoff_max = 10.0
            [cache]
            snapshot = "s.json"
            warm = ["a"]
            "#;
        // No flags: the file as it is.
        let s = merged(file, &[]).unwrap();
        assert!(s.reuseport);
        assert_eq!(s.restart_mode, Restart::Always);
        assert_eq!(s.warm, ["a"]);
        // Flags replace what they name (and nothing else); --env adds to the table.
        let s = merged(
            file,
            &[
                "--restart",
                "never",
                "--backoff-min",
                "2",
                "--warm",
                "b",
                "--warm",
                "c",
                "-e",
                "B=3",
                "-e",
                "C=4",
                "--reload-batch",
                "2",
                "-w",
                "auto",
            ],
        )
        .unwrap();
        assert_eq!(s.restart_mode, Restart::Never);
        assert_eq!(s.backoff_min, Duration::from_secs(2));
        assert_eq!(s.backoff_max, Duration::from_secs(10));
        assert_eq!(s.warm, ["b", "c"]);
        assert_eq!(s.reload_batch, 2);
        assert!(s.reuseport);
        assert_eq!(s.cache, Some(CacheSource::Snapshot("s.json".into())));
        let env: Vec<_> = s.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
        assert_eq!(env, ["A=1", "B=3", "C=4"]);
        // A flag for a second cache source is refused as in the file.
        let e = merged(file, &["--redis", "redis://x"]).unwrap_err();
        assert!(e.to_string().starts_with("cache:"), "{e}");
        // Only the flags: the defaults.
        let s = merged("", &["--reuseport", "-l", ":0", "--", "true"]).unwrap();
        assert!(s.reuseport);
        assert_eq!((s.grace, s.max_restarts), (Duration::from_secs(5), 5));
        assert_eq!(s.name, "herd");
        let s = merged("", &["--", "true"]).unwrap();
        assert!(!s.reuseport);
    }

    #[test]
    fn rescue_modes() {
        let s = merged("", &["--", "true"]).unwrap();
        assert_eq!(s.rescue, herd::Rescue::End, "the default");
        let s = merged("rescue = \"hold\"", &["--", "true"]).unwrap();
        assert_eq!(s.rescue, herd::Rescue::Hold);
        let s = merged("rescue = \"hold\"", &["--rescue", "off", "--", "true"]).unwrap();
        assert_eq!(s.rescue, herd::Rescue::Off, "the flag over the file");
        let e = refused(&["--rescue", "always", "--", "true"]);
        assert!(
            e.contains("--rescue") && e.contains("end, hold, off"),
            "{e}"
        );
        let e = parse("rescue = \"always\"").unwrap_err().to_string();
        assert!(e.contains("rescue") && e.contains("`end`"), "{e}");
    }

    #[test]
    fn balance_modes() {
        let s = merged("", &["--", "true"]).unwrap();
        assert_eq!((s.balance, s.reuseport), (herd::Balance::Shared, false));
        let s = merged("", &["--balance", "rr", "--", "true"]).unwrap();
        assert_eq!((s.balance, s.reuseport), (herd::Balance::RoundRobin, false));
        let s = merged("balance = \"rr\"", &["--balance", "shared", "--", "true"]).unwrap();
        assert_eq!(s.balance, herd::Balance::Shared, "the flag over the file");
        let s = merged("", &["--balance", "reuseport", "-l", ":0", "--", "true"]).unwrap();
        assert_eq!((s.balance, s.reuseport), (herd::Balance::Shared, true));
        let e = refused(&["--balance", "random", "--", "true"]);
        assert!(
            e.contains("--balance") && e.contains("rr, shared, reuseport"),
            "{e}"
        );
        for (args, field) in [
            (
                &["--balance", "rr", "--reuseport", "-l", ":0", "--", "true"][..],
                "reuseport",
            ),
            (&["--balance", "reuseport", "--", "true"], "reuseport"),
        ] {
            let e = merged("", args).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{field}:")), "{args:?}: {e}");
        }
    }

    #[test]
    fn flags_parse_into_options() {
        let m = matches(&[
            "-c",
            "x.toml",
            "-w",
            "3",
            "--cache-dir",
            "d",
            "--",
            "a",
            "b",
        ]);
        let f = Flags::from_arg_matches(&m).unwrap();
        assert_eq!(f.config.as_deref(), Some(Path::new("x.toml")));
        assert_eq!(f.options.workers, Some(Workers::Count(3)));
        assert_eq!(f.options.cache.dir.as_deref(), Some(Path::new("d")));
        assert_eq!(f.options.command, ["a", "b"]);
        let bad = Flags::augment_args(clap::Command::new("run"))
            .try_get_matches_from(["run", "-e", "NOEQUALS"]);
        assert!(bad.is_err());
    }
}
