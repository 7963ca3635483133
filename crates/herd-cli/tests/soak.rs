//! A soak: `herd run` serving the demo (Node HTTP workers, the host-shared cache) under steady
//! HTTP load while workers are reloaded and SIGKILLed over and over; herd's descriptors, memory
//! and children must stay flat and requests must keep succeeding.
//!
//! 12 s by default (so it runs with every test); `SOAK_SECS=3600 cargo test --release -p herd-cli
//! --test soak -- --nocapture` for a long one. It prints what it measured.

use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::*;
use herd_test_support::process::{children, fd_count, rss_kb};

#[test]
fn soak_under_load_with_reloads_and_kills() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let snapshot = root.join("examples/demo/cache.json");
    let mut herd = Herd::serve_demo(
        "soak",
        &[
            "-w",
            "2",
            "--ready",
            "notice",
            "--backoff-min",
            "0.05",
            "--max-restarts",
            "1000000",
            "--cache-snapshot",
            snapshot.to_str().unwrap(),
            "--warm",
            "*",
        ],
    );
    let addr = herd.listening();
    let hp = herd.pid();
    herd.status_until("two workers", |s| running(s) == 2);

    let load = Load::start(2, move |c, i| {
        let path = if c == 0 {
            format!("/cache/product:{:03}", i % 100)
        } else {
            "/".to_string()
        };
        matches!(http_get(addr, &path), Ok((200, _)))
    });

    // Warm up, then take the baseline.
    std::thread::sleep(Duration::from_secs(2));
    let (fds0, rss0) = (fd_count(hp), rss_kb(hp));
    let start = Instant::now();
    let (mut reloads, mut kills, mut round) = (0u64, 0u64, 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        round += 1;
        if round % 2 == 0 {
            let out = herd.ctl(&["reload"]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            reloads += 1;
        } else if let Some(p) = herd
            .try_status()
            .ok()
            .and_then(|s| pids(&s).first().copied())
        {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(p as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    // Let the last restart settle before the final reading.
    herd.status_until("both workers back", |s| {
        running(s) == 2 && pids(s).len() == 2
    });
    std::thread::sleep(Duration::from_millis(500));
    let (fds1, rss1) = (fd_count(hp), rss_kb(hp));
    let (_, z) = children(hp);
    let (ok, failed) = load.stop();
    let s = herd.status();
    let listing: Vec<_> = std::fs::read_dir(format!("/proc/{hp}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    eprintln!(
        "herd's fds at the end: {listing:?}\nworkers: {:?}",
        s.status.workers
    );
    eprintln!(
        "soak {secs} s: {reloads} reloads, {kills} SIGKILLs; {ok} requests served, {failed} failed; \
         herd fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} kB, {z} zombies; cache loads {} (of 103 keys)",
        cache_loads(&s)
    );
    herd.signal(rustix::process::Signal::TERM);
    assert_eq!(herd.wait(), Some(0));
    assert!(ok > 100 * secs / 2, "only {ok} requests in {secs} s");
    // Only a killed worker's accepted requests may fail: a few per kill, none per reload.
    assert!(failed <= 3 * kills, "{failed} failed for {kills} kills");
    assert!(
        fds1 <= fds0,
        "herd's descriptors grew: {fds0} -> {fds1}; workers: {:?}; fds: {:?}",
        s.status.workers,
        std::fs::read_dir(format!("/proc/{hp}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .collect::<Vec<_>>()
    );
    assert!(
        rss1 <= rss0 + 8 * 1024,
        "herd's RSS grew: {rss0} -> {rss1} kB"
    );
    assert_eq!(z, 0);
    // Nothing was loaded twice: the cache stayed warm through every reload and kill.
    assert_eq!(cache_loads(&s), 103);
}

fn cache_loads(s: &Report) -> u64 {
    s.cache.as_ref().map_or(0, |c| c.loads)
}
