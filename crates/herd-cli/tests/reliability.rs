//! Faults and leaks, measured on the real `herd` binary: workers SIGKILLed under HTTP load, a
//! thousand restarts with herd's descriptors, memory and children watched, and what a worker
//! inherits.

use std::time::{Duration, Instant};

mod common;

use common::*;
use herd_test_support::process::{children, fd_count, rss_kb};

#[test]
fn workers_killed_under_load_come_back_and_the_others_keep_serving() {
    let herd = Herd::serve_demo(
        "kill",
        &["-w", "3", "--backoff-min", "0.05", "--max-restarts", "100"],
    );
    let addr = herd.listening();
    herd.status_until("three workers", |s| pids(s).len() == 3);

    let load = Load::start(3, move |_, _| get_pid(addr).is_ok());
    // Kill a worker (a different one each round) five times, each time waiting for its
    // replacement; requests keep flowing the whole time.
    let mut killed = Vec::new();
    for round in 0..5 {
        let s = herd.status_until("three workers running", |s| {
            pids(s).len() == 3 && running(s) == 3
        });
        let victim = pids(&s)[round % 3];
        let before = load.ok();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(victim as i32).unwrap(),
            rustix::process::Signal::KILL,
        )
        .unwrap();
        killed.push(victim);
        herd.status_until("the killed worker is replaced", |s| {
            let p = pids(s);
            p.len() == 3 && !p.contains(&victim)
        });
        // The others served while it was down and came back.
        let deadline = Instant::now() + DEADLINE;
        while load.ok() < before + 20 {
            assert!(Instant::now() < deadline, "requests stopped after a kill");
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let (ok, failed) = load.stop();
    eprintln!("5 SIGKILLs under load: {ok} requests served, {failed} failed");
    // A request the killed worker had accepted dies with it; at most a few per kill.
    assert!(
        failed <= 5 * 3,
        "{failed} failed requests for 5 kills ({ok} served)"
    );
    assert!(ok > 200);
    let s = herd.status();
    let restarts: u32 = s.status.workers.iter().map(|w| w.restarts).sum();
    assert_eq!(restarts, 5);
    let (kids, zombies) = children(herd.pid());
    assert_eq!((kids, zombies), (3, 0), "three live workers, no zombies");
}

#[test]
fn a_thousand_restarts_leak_no_descriptor_memory_or_child() {
    let herd = Herd::start(
        "leak",
        &[
            "-w",
            "1",
            "--restart",
            "always",
            "--max-restarts",
            "1000000",
            "--backoff-min",
            "0",
            // With the host-shared cache: each worker has a push forwarder too.
            "--cache-snapshot",
            concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../examples/demo/cache.json"
            ),
            "--",
            "sh",
            "-c",
            "exit 0",
        ],
    );
    let restarts = |s: &Report| s.status.workers.first().map_or(0, |w| w.restarts);
    herd.status_until("100 restarts", |s| restarts(s) >= 100);
    let (fds0, rss0) = (fd_count(herd.pid()), rss_kb(herd.pid()));
    let t = Instant::now();
    let s = herd.status_until("1,100 restarts", |s| restarts(s) >= 1100);
    let (fds1, rss1) = (fd_count(herd.pid()), rss_kb(herd.pid()));
    let (kids, zombies) = children(herd.pid());
    eprintln!(
        "1,000 restarts in {:.1} s: herd's fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} kB, {kids} children ({zombies} zombies); status says {}",
        t.elapsed().as_secs_f64(),
        restarts(&s)
    );
    assert!(fds1 <= fds0, "fds grew from {fds0} to {fds1}");
    assert!(rss1 <= rss0 + 4096, "RSS grew from {rss0} kB to {rss1} kB");
    assert!(
        kids <= 1 && zombies <= 1,
        "{kids} children, {zombies} zombies"
    );
    let _ = &herd.out;
}

#[test]
fn a_worker_inherits_only_its_stdio_its_channel_and_its_sockets() {
    let herd = Herd::start(
        "fds",
        &[
            "-w",
            "1",
            "--restart",
            "never",
            "--listen",
            "127.0.0.1:0",
            "--",
            "sh",
            "-c",
            "exec ls -m /proc/self/fd",
        ],
    );
    let deadline = Instant::now() + DEADLINE;
    let line = loop {
        let l = herd
            .out
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("the worker lists its descriptors");
        if l.starts_with("[w1] ") {
            break l;
        }
    };
    // The shell exec'd into `ls`, which lists its own descriptors; it opens one itself, to read
    // the directory, above the inherited ones. Descriptors herd's own parent left open without
    // close-on-exec must not reach the worker.
    let mut fds: Vec<u32> = line["[w1] ".len()..]
        .split(", ")
        .filter_map(|f| f.trim().parse().ok())
        .collect();
    fds.sort_unstable();
    assert_eq!(
        &fds[..5],
        [0, 1, 2, 3, 4],
        "stdio, the socket at 3, the channel at 4: {line}"
    );
    assert_eq!(
        fds.len(),
        6,
        "nothing else but ls's own directory handle: {line}"
    );
}
