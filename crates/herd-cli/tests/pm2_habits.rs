//! What PM2 users count on, under `herd run` with real `node`: `process.send('ready')` as the
//! readiness signal of a slow start (`--ready message`), `NODE_APP_INSTANCE` as the stable slot
//! index, and every exit restarted by default (PM2's autorestart), with the last exit in
//! `herd status`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

mod common;

use common::*;

fn app(name: &str) -> String {
    let p: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "pm2_apps", name]
        .iter()
        .collect();
    p.to_str().unwrap().to_owned()
}

/// The instance a worker's first message reports.
fn instance(herd: &Herd) -> String {
    let line = herd.stdout_line(|l| l.contains("\"instance\""));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    v["message"]["instance"].as_str().unwrap().to_owned()
}

#[test]
fn a_reload_waits_for_each_new_workers_ready_message() {
    let script = app("slow_ready.js");
    let herd = Herd::start(
        "pm2-ready",
        &[
            "-w",
            "2",
            "--ready",
            "message",
            "--log-messages",
            "--",
            "node",
            &script,
        ],
    );
    let mut first = vec![instance(&herd), instance(&herd)];
    first.sort();
    assert_eq!(first, ["0", "1"], "NODE_APP_INSTANCE is the slot");
    herd.status_until("both running", |s| running(s) == 2);
    // Each new worker takes 400 ms to say 'ready'; one at a time, the old one serves until then.
    let t = Instant::now();
    let out = herd.ctl(&["reload"]);
    let took = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        took >= Duration::from_millis(800),
        "two slow starts were waited for: {took:?}"
    );
    let mut again = vec![instance(&herd), instance(&herd)];
    again.sort();
    assert_eq!(again, ["0", "1"], "the new workers took the same slots");
    assert_eq!(herd.status().status.reloads, 1);
}

#[test]
fn a_worker_that_never_says_ready_fails_the_reload_and_the_old_ones_stay() {
    let script = app("slow_ready.js");
    let herd = Herd::start(
        "pm2-never-ready",
        &[
            "-w",
            "1",
            "--ready",
            "message",
            "--log-messages",
            "--ready-timeout",
            "0.5",
            "-e",
            "WARM_MS=60000",
            "--",
            "node",
            &script,
        ],
    );
    let before = herd.status_until("running", |s| running(s) == 1);
    let out = herd.ctl(&["reload"]);
    assert!(!out.status.success(), "the reload cannot finish");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("not ready within"), "{err}");
    let after = herd.status_until("the old worker alone", |s| s.status.workers.len() == 1);
    assert_eq!(pids(&after), pids(&before), "the old worker still serves");
}

#[test]
fn every_exit_is_restarted_by_default_and_status_shows_the_last_one() {
    let script = app("exits_cleanly.js");
    let herd = Herd::start(
        "pm2-restart",
        &["-w", "1", "--log-messages", "--", "node", &script],
    );
    assert_eq!(instance(&herd), "0");
    assert_eq!(instance(&herd), "0", "restarted into the same slot");
    let s = herd.status_until("a restart recorded", |s| {
        s.status
            .workers
            .iter()
            .any(|w| w.restarts >= 1 && w.last_exit.is_some())
    });
    let w = s.status.workers.iter().find(|w| w.restarts >= 1).unwrap();
    assert_eq!(w.last_exit.as_deref(), Some("exit code 0"));
    let table = herd.ctl(&["status"]);
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("LAST EXIT") && table.contains("exit code 0"),
        "{table}"
    );
}

/// `pm2 scale app +2` is relative: so is `herd scale +2` (and `-1`), applied to the number of
/// workers wanted now; a count out of 1 to 4096, or a change that would leave one, is refused
/// before anything is asked (exit 2), and nothing changes.
#[test]
fn scale_takes_a_count_or_a_change_and_refuses_what_is_out_of_bounds() {
    let herd = Herd::start("pm2-scale", &["-w", "2", "--", "sleep", "600"]);
    herd.status_until("2 running", |s| running(s) == 2);
    let scaled = |args: &[&str]| {
        let out = herd.ctl(args);
        assert!(out.status.success(), "{args:?}: {out:?}");
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    assert_eq!(scaled(&["scale", "+2"]), "scaled to 4 workers");
    herd.status_until("4 running", |s| running(s) == 4 && s.status.wanted == 4);
    assert_eq!(scaled(&["scale", "-3"]), "scaled to 1 workers");
    herd.status_until("1 running", |s| running(s) == 1 && s.status.wanted == 1);
    for bad in [
        &["scale", "-1"][..],
        &["scale", "1000000"],
        &["scale", "+0"],
        &["scale", "two"],
    ] {
        let out = herd.ctl(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {out:?}");
        assert!(!out.stderr.is_empty(), "{bad:?} says why");
    }
    assert_eq!(herd.status().status.wanted, 1, "nothing changed");
    stop(herd);
}
