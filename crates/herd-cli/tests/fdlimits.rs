//! herd under a low open-file limit (`ulimit -n`), the real binary: workers start and serve
//! under `ulimit -n 64`, and running out of descriptors (idle control connections) neither
//! spins herd nor costs a worker slot. The figures go to stderr (`-- --nocapture`).

use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

mod common;

use common::*;
use herd_test_support::process::fd_count;

/// herd's CPU time so far (user + system), from /proc/PID/stat.
fn cpu_time(pid: u32) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // The fields after the command (which may hold spaces) start after its closing ')'.
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the ')'.
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    // In clock ticks of USER_HZ, 100 per second on Linux whatever the kernel's own HZ.
    Duration::from_millis(ticks * 10)
}

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
    let (listen, port) = demo_port();
    let mut herd = Herd::start_after(
        "ulimit64",
        "ulimit -n 64",
        &[
            "--listen",
            &listen,
            "--env",
            &port,
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

#[test]
fn descriptor_exhaustion_neither_spins_nor_loses_a_slot() {
    let server = demo_server();
    let (listen, port) = demo_port();
    let herd = Herd::start_after(
        "exhaust",
        "ulimit -n 64",
        &[
            "--listen",
            &listen,
            "--env",
            &port,
            "-w",
            "2",
            "--max-restarts",
            "2",
            "--backoff-min",
            "0.05",
            "--",
            "node",
            server.to_str().unwrap(),
        ],
    );
    let addr = herd.listening();
    let s = herd.status_until("two workers running", |s| running(s) == 2);
    let victim = pids(&s)[0];
    // Both listen before descriptors run short (a Node cluster worker asks herd for its socket).
    served_by(addr, 2);

    // Idle control connections, more than herd has descriptors for.
    let mut idle = Vec::new();
    for _ in 0..150 {
        idle.push(UnixStream::connect(&herd.control).unwrap());
    }
    let deadline = Instant::now() + DEADLINE;
    while fd_count(herd.pid()) < 60 {
        assert!(
            Instant::now() < deadline,
            "herd never ran short: {} descriptors",
            fd_count(herd.pid())
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(victim as i32).unwrap(),
        rustix::process::Signal::KILL,
    )
    .unwrap();
    // herd does not spin while it is short: its CPU time over a window of 2 s.
    let before = cpu_time(herd.pid());
    let window = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let (used, took) = (cpu_time(herd.pid()) - before, window.elapsed());
    let share = used.as_secs_f64() / took.as_secs_f64();
    eprintln!(
        "out of descriptors: herd used {} ms of CPU in {} ms ({:.0}%), {} descriptors open",
        used.as_millis(),
        took.as_millis(),
        share * 100.0,
        fd_count(herd.pid())
    );
    assert!(share < 0.2, "herd spins: {:.0}% of a CPU", share * 100.0);
    // The killed worker's restart failed for want of descriptors, more often than
    // --max-restarts allows.
    for _ in 0..3 {
        herd.stderr_line(|l| l.contains("cannot start a worker") && l.contains("os error 24"));
    }

    // Descriptors come back: herd answers at once and the slot is served again.
    drop(idle);
    let released = Instant::now();
    let first = loop {
        if let Ok(s) = herd.try_status() {
            break s;
        }
        assert!(released.elapsed() < DEADLINE, "herd status never answered");
    };
    let answered = released.elapsed();
    eprintln!(
        "connections released: herd status answered in {} ms",
        answered.as_millis()
    );
    assert!(answered < Duration::from_secs(1), "{answered:?}");
    assert!(first.status.failed.is_empty(), "{:?}", first.status.failed);
    let s = herd.status_until("the killed worker replaced", |s| {
        running(s) == 2 && !pids(s).contains(&victim)
    });
    assert!(s.status.failed.is_empty(), "{:?}", s.status.failed);
    let restarts: u32 = s.status.workers.iter().map(|w| w.restarts).sum();
    assert_eq!(
        restarts, 1,
        "one restart: the failed starts were retries: {:?}",
        s.status.workers
    );
    served_by(addr, 2);
}
