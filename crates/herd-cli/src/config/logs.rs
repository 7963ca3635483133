//! The log-file settings of `herd run` (the `[logs]` table, `--log-file` and friends), and the
//! sizes they are given in (`10M`, also `--max-memory`'s): what is written where, rotated when,
//! and kept how long.

use std::path::PathBuf;

use serde::Deserialize;

use crate::exit::{Error, Result};

/// Where worker output goes besides herd's stdout and stderr: the `[logs]` table.
#[derive(clap::Args, Deserialize, Default, Debug, Clone, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LogOptions {
    /// Write every worker's output lines (stdout and stderr) to this file, as herd prints
    /// them (PM2's `log_file`).
    #[arg(long = "log-file", value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Write the workers' stdout lines to this file (PM2's `out_file`).
    #[arg(long = "out-file", value_name = "PATH")]
    pub out_file: Option<PathBuf>,
    /// Write the workers' stderr lines to this file (PM2's `error_file`).
    #[arg(long = "err-file", value_name = "PATH")]
    pub err_file: Option<PathBuf>,
    /// Rotate a log file once it passes this size: `10M` (default), `512K`, `1G` or bytes.
    #[arg(long = "log-max-size", value_name = "SIZE")]
    pub max_size: Option<String>,
    /// Rotated files kept per log file (`PATH.1` newest ... `PATH.N`; default 5).
    #[arg(long = "log-keep", value_name = "N")]
    pub keep: Option<usize>,
    /// Start each worker line (on herd's output and in log files) with when herd read it
    /// (RFC 3339, UTC).
    #[arg(long = "log-time", num_args = 0, default_missing_value = "true")]
    pub time: Option<bool>,
}

/// The checked log-file settings.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct LogSettings {
    /// Both streams' lines.
    pub file: Option<PathBuf>,
    /// Stdout lines.
    pub out_file: Option<PathBuf>,
    /// Stderr lines.
    pub err_file: Option<PathBuf>,
    /// Bytes past which a file is rotated.
    pub max_size: u64,
    /// Rotated files kept.
    pub keep: usize,
    /// Timestamps on worker lines.
    pub time: bool,
}

/// The smallest rotation size.
pub const MIN_LOG_SIZE: u64 = 4 << 10;
/// The most rotated files kept.
pub const MAX_KEEP: usize = 1000;

impl LogSettings {
    /// The files to write, in order: log file, out file, err file.
    pub fn paths(&self) -> impl Iterator<Item = &PathBuf> {
        [&self.file, &self.out_file, &self.err_file]
            .into_iter()
            .flatten()
    }
}

/// Checks the `[logs]` settings.
pub fn check(o: LogOptions) -> Result<LogSettings> {
    let bad = |field: &str, why: String| Error::usage(format!("logs.{field}: {why}"));
    let max_size = match o.max_size.as_deref() {
        None => 10 << 20,
        Some(text) => size(text).map_err(|e| bad("max_size", e))?,
    };
    if max_size < MIN_LOG_SIZE {
        return Err(bad(
            "max_size",
            format!("{max_size} bytes is below the smallest, 4K"),
        ));
    }
    let keep = o.keep.unwrap_or(5);
    if !(1..=MAX_KEEP).contains(&keep) {
        return Err(bad("keep", format!("must be 1 to {MAX_KEEP}, not {keep}")));
    }
    let s = LogSettings {
        file: o.file,
        out_file: o.out_file,
        err_file: o.err_file,
        max_size,
        keep,
        time: o.time.unwrap_or(false),
    };
    let paths: Vec<&PathBuf> = s.paths().collect();
    // `a.log` and `./a.log` are one file.
    let same: Vec<PathBuf> = paths
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf()))
        .collect();
    for (i, p) in paths.iter().enumerate() {
        if p.as_os_str().is_empty() || p.file_name().is_none() {
            return Err(bad("file", format!("{} is not a file name", p.display())));
        }
        if same[..i].contains(&same[i]) {
            return Err(bad(
                "file",
                format!(
                    "{} is given twice: give each log file its own path",
                    p.display()
                ),
            ));
        }
    }
    Ok(s)
}

/// A size: bytes, or a number with `K`, `M`, `G` or `T` (powers of 1024; `KB`, `MiB` and
/// lower case too), as PM2's `max_memory_restart` takes them.
pub fn size(text: &str) -> std::result::Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "kib" => 10,
        "m" | "mb" | "mib" => 20,
        "g" | "gb" | "gib" => 30,
        "t" | "tb" | "tib" => 40,
        _ => return Err(format!("{text:?} is not a size (10M, 512K, 1G or bytes)")),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a size (10M, 512K, 1G or bytes)"))?;
    let bytes = n * (1u64 << shift) as f64;
    if !(0.0..=(1u64 << 50) as f64).contains(&bytes) {
        return Err(format!("{text:?} is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_take_units() {
        assert_eq!(size("10M"), Ok(10 << 20));
        assert_eq!(size("512k"), Ok(512 << 10));
        assert_eq!(size("1.5G"), Ok(3 << 29));
        assert_eq!(size("4096"), Ok(4096));
        assert_eq!(size("200MB"), Ok(200 << 20));
        assert_eq!(size(" 1 GiB "), Ok(1 << 30));
        for bad in ["", "M", "ten", "-1M", "1X", "1e3", "99999999999T", "1.2.3K"] {
            assert!(size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn log_settings_are_checked() {
        let ok = check(LogOptions {
            file: Some("a.log".into()),
            err_file: Some("b.log".into()),
            ..LogOptions::default()
        })
        .unwrap();
        assert_eq!((ok.max_size, ok.keep, ok.time), (10 << 20, 5, false));
        for o in [
            LogOptions {
                max_size: Some("1K".into()),
                ..LogOptions::default()
            },
            LogOptions {
                keep: Some(0),
                ..LogOptions::default()
            },
            LogOptions {
                file: Some("a.log".into()),
                out_file: Some("a.log".into()),
                ..LogOptions::default()
            },
            LogOptions {
                file: Some("/".into()),
                ..LogOptions::default()
            },
            LogOptions {
                file: Some("a.log".into()),
                out_file: Some("./a.log".into()),
                ..LogOptions::default()
            },
        ] {
            assert!(check(o.clone()).is_err(), "{o:?}");
        }
    }
}
