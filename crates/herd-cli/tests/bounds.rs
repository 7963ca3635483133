//! Hardening (issue 19, item 6): every duration and count `herd run` takes, from flags or the
//! config file, has an upper bound and is refused past it with exit 2 naming the field, before
//! anything starts (`--grace 1e19` used to make `herd stop` and SIGTERM hang; a 1e19 readiness
//! delay, timeout or backoff panicked; `-w 1000000` was taken).

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::HERD;
use herd_test_support::process::TempDir;

fn herd(args: &[&str]) -> Output {
    let dir = TempDir::new("bounds");
    let out = Command::new(HERD)
        .arg("run")
        .arg("--control")
        .arg(dir.0.join("c.sock"))
        .args(args)
        .output()
        .unwrap();
    drop(dir);
    out
}

fn refused(args: &[&str], field: &str) {
    let out = herd(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(err.contains(field), "{args:?} must name {field}: {err}");
    assert!(!err.contains("panicked"), "{args:?}: {err}");
}

#[test]
fn flags_past_their_bounds_are_refused_naming_the_field() {
    for v in ["1e19", "3601", "NaN", "inf", "-1"] {
        // `--flag=-1`, so that clap takes a negative number as the value.
        for (flag, field) in [
            ("--grace", "grace"),
            ("--backoff-min", "restart.backoff_min"),
            ("--ready-timeout", "reload.ready_timeout"),
        ] {
            refused(&[&format!("{flag}={v}"), "--", "true"], field);
        }
    }
    refused(&["--ready", "delay:1e19", "--", "true"], "reload.ready");
    refused(&["--ready", "delay:3601", "--", "true"], "reload.ready");
    refused(&["-w", "1000000", "--", "true"], "workers");
    refused(&["-w", "4097", "--", "true"], "workers");
    refused(&["--reload-batch", "4097", "--", "true"], "reload.batch");
    refused(
        &["--max-restarts", "4000000000", "--", "true"],
        "max_restarts",
    );
}

#[test]
fn the_config_file_has_the_same_bounds() {
    let dir = TempDir::new("bounds-file");
    for (text, field) in [
        ("grace = 1e19", "grace"),
        ("workers = 1000000", "workers"),
        ("[restart]\nbackoff_min = 1e19", "restart.backoff_min"),
        ("[restart]\nbackoff_max = 1e19", "restart.backoff_max"),
        ("[restart]\nwindow = 86401", "restart.window"),
        ("[restart]\nwindow = 1e300", "restart.window"),
        ("[restart]\nmax_restarts = 2000000", "restart.max_restarts"),
        ("[reload]\nready = 'delay:1e19'", "reload.ready"),
        ("[reload]\nready_timeout = 1e19", "reload.ready_timeout"),
        ("[reload]\nbatch = 100000", "reload.batch"),
        ("[cache]\nmax_stale = 1e19", "cache.max_stale"),
    ] {
        let path = dir.0.join("herd.toml");
        std::fs::write(&path, format!("command = ['true']\n{text}\n")).unwrap();
        refused(&["--config", path.to_str().unwrap()], field);
    }
}

#[test]
fn values_at_their_bounds_are_taken() {
    // Started and stopped by the one worker's exit: the bounds are not refusals.
    let started = std::time::Instant::now();
    let out = herd(&[
        "--grace",
        "3600",
        "--ready-timeout",
        "3600",
        "--ready",
        "delay:3600",
        "--restart",
        "never",
        "-w",
        "1",
        "--",
        "true",
    ]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{:?}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(started.elapsed() < Duration::from_secs(30));
}
