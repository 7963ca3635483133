//! herd under a low open-file limit (`ulimit -n`), the real binary: workers start and serve
//! under `ulimit -n 64`.

use std::time::{Duration, Instant};

mod common;

use common::*;

/// Waits (with a deadline) until requests to `addr` have been answered by `n` distinct workers.
fn served_by(addr: std::net::SocketAddr, n: usize) {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < n {
        assert!(Instant::now() < deadline, "only {seen:?} answered");
        if let Ok(pid) = get_pid(addr) {
            seen.insert(pid);
        }
    }
}

#[test]
fn workers_start_and_serve_under_ulimit_n_64() {
    let server = demo_server();
    let mut herd = Herd::start_after(
        "ulimit64",
        "ulimit -n 64",
        &[
            "--listen",
            "127.0.0.1:0",
            "-w",
            "2",
            "--",
            "node",
            server.to_str().unwrap(),
        ],
    );
    let addr = herd.listening();
    let s = herd.status_until("two workers running", |s| running(s) == 2);
    assert!(s.status.failed.is_empty(), "{:?}", s.status.failed);
    served_by(addr, 2);
    let out = herd.ctl(&["stop"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(herd.wait(), Some(0), "stopped cleanly");
}
