//! How `herd run` stops workers, with real programs: a Node cluster worker is first asked to
//! disconnect (its servers close once their requests are done), then a worker still alive gets
//! the stop signal (`--kill-signal`, default SIGTERM) so its own shutdown code runs, or PM2's
//! `'shutdown'` message (`--shutdown-message`); a program that is not a Node cluster worker gets
//! the signal at once. No well-behaved app is SIGKILLed.

use std::path::PathBuf;
use std::time::Instant;

mod common;

use common::*;
use herd_test_support::process::free_port;

fn app(name: &str) -> String {
    let p: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "stop_apps", name]
        .iter()
        .collect();
    p.to_str().unwrap().to_owned()
}

#[test]
fn an_app_that_cleans_up_on_sigterm_gets_sigterm_after_its_servers_close() {
    let port = free_port();
    let herd = Herd::start(
        "stop-sigterm",
        &[
            "-w",
            "2",
            "--grace",
            "20",
            "--env",
            &format!("PORT={port}"),
            "--",
            "node",
            &app("sigterm_only.js"),
        ],
    );
    for _ in 0..2 {
        herd.stdout_line(|l| l.contains("listening on"));
    }
    assert!(get_pid(([127, 0, 0, 1], port).into()).is_ok());
    let t = Instant::now();
    let out = herd.ctl(&["stop"]);
    assert!(out.status.success());
    for _ in 0..2 {
        herd.stdout_line(|l| l.ends_with("SIGTERM: closing the pool"));
    }
    assert!(
        t.elapsed().as_secs() < 10,
        "stopped by its handler, not by the 20 s grace period: {:?}",
        t.elapsed()
    );
    stop_gracefully_after(herd, 2);
}

#[test]
fn with_shutdown_message_an_app_gets_pm2s_message() {
    let herd = Herd::start(
        "stop-message",
        &[
            "-w",
            "1",
            "--grace",
            "20",
            "--shutdown-message",
            "true",
            "--",
            "node",
            &app("shutdown_message.js"),
        ],
    );
    herd.stdout_line(|l| l.ends_with("started"));
    let out = herd.ctl(&["stop"]);
    assert!(out.status.success());
    herd.stdout_line(|l| l.ends_with("shutdown message: closing the pool"));
    stop_gracefully_after(herd, 1);
}

#[test]
fn a_program_that_is_no_node_worker_gets_the_signal_at_once() {
    let script = "trap 'echo got TERM; exit 0' TERM; echo up; while :; do sleep 0.05; done";
    let herd = Herd::start(
        "stop-sh",
        &["-w", "1", "--grace", "20", "--", "sh", "-c", script],
    );
    herd.stdout_line(|l| l.ends_with("up"));
    let t = Instant::now();
    assert!(herd.ctl(&["stop"]).status.success());
    herd.stdout_line(|l| l.ends_with("got TERM"));
    assert!(t.elapsed().as_secs() < 10, "{:?}", t.elapsed());
    stop_gracefully_after(herd, 1);
}
