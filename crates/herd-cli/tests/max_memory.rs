//! `--max-memory` with a real Node server that leaks, under load: the leaking worker is
//! replaced the way a reload replaces it (the new one ready first, the old one drained), with
//! no failed request, logged with its figure and counted in `herd status`.

use std::net::SocketAddr;
use std::path::Path;

mod common;

use common::*;
use herd_test_support::process::{free_port, TempDir};

#[test]
fn a_worker_past_the_memory_limit_is_replaced_under_load_without_a_failed_request() {
    let dir = TempDir::new("max-memory");
    let marker = dir.path().join("leaker");
    let port = free_port();
    let app = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/node_apps/leaky.js");
    let herd = Herd::start(
        "max-memory",
        &[
            "-w",
            "2",
            "--max-memory",
            "150M",
            "--env",
            &format!("PORT={port}"),
            "--env",
            &format!("LEAK_ONCE_FILE={}", marker.display()),
            "--",
            "node",
            app.to_str().unwrap(),
        ],
    );
    for _ in 0..2 {
        herd.stdout_line(|l| l.contains("listening on"));
    }
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let load = Load::start(4, move |_, _| get_pid(addr).is_ok());
    let deadline = std::time::Instant::now() + DEADLINE;
    let leaker: u64 = loop {
        if let Some(pid) = std::fs::read_to_string(&marker)
            .ok()
            .and_then(|t| t.trim().parse().ok())
        {
            break pid;
        }
        assert!(std::time::Instant::now() < deadline, "no worker leaks");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let line = herd.stderr_line(|l| l.contains("over the memory limit"));
    assert!(
        line.contains("rss=") && line.contains("limit=157286400"),
        "{line}"
    );
    let s = herd.status_until("the leaker replaced and gone", |s| {
        running(s) == 2
            && !pids(s).contains(&leaker)
            && s.status.workers.iter().any(|w| w.memory_replaced == 1)
    });
    let (ok, failed) = load.stop();
    assert_eq!(failed, 0, "{ok} requests served");
    assert!(ok > 100, "{ok} requests served");
    // The replacement does not leak: its slot was replaced once, and it was no crash.
    assert!(s.status.workers.iter().all(|w| w.restarts == 0), "{s:?}");
    let table = String::from_utf8_lossy(&herd.ctl(&["status"]).stdout).into_owned();
    assert!(table.contains("0 (1 mem)"), "{table}");
    stop_gracefully(herd, 3);
}
