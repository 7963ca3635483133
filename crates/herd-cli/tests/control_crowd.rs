//! Hardening (issue 19, item 8): idle connections to the control socket cannot starve others,
//! and a second herd of the same name never takes a live herd's socket, even when that herd's
//! backlog is full.

mod common;

use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{Herd, HERD};

/// Raises this process's open-file limit to its hard limit (the test holds many sockets).
fn raise_nofile() -> u64 {
    let lim = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    let hard = lim.maximum.unwrap_or(1 << 20);
    let _ = rustix::process::setrlimit(
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(hard),
            maximum: lim.maximum,
        },
    );
    hard
}

#[test]
fn thousands_of_idle_connections_do_not_block_status() {
    let hard = raise_nofile();
    let herd = Herd::start("crowd", &["-w", "1", "--", "sleep", "1000"]);
    herd.status_until("one worker", |s| common::running(s) == 1);
    let want = 3000.min(hard.saturating_sub(200) as usize);
    let mut idle = Vec::new();
    for _ in 0..want {
        // Some connects may fail once the backlog is full: the crowd is what got in.
        match UnixStream::connect(&herd.control) {
            Ok(c) => idle.push(c),
            Err(_) => break,
        }
    }
    assert!(idle.len() > 100, "only {} idle connections", idle.len());
    // Each status is answered promptly while the crowd holds its connections.
    for _ in 0..5 {
        let started = Instant::now();
        let s = herd.try_status();
        assert!(
            s.is_ok(),
            "status failed with {} idle connections: {s:?}",
            idle.len()
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "status took {:?} with {} idle connections",
            started.elapsed(),
            idle.len()
        );
    }
    drop(idle);
}

#[test]
fn a_second_herd_of_the_same_name_leaves_a_live_herd_reachable() {
    raise_nofile();
    let herd = Herd::start("same-name", &["-w", "1", "--", "sleep", "1000"]);
    herd.status_until("one worker", |s| common::running(s) == 1);
    // Fill the backlog: connects that would block are a live herd, not a dead one.
    let mut crowd = Vec::new();
    for _ in 0..2000 {
        match UnixStream::connect(&herd.control) {
            Ok(c) => crowd.push(c),
            Err(_) => break,
        }
    }
    let mut second = Command::new(HERD)
        .arg("run")
        .arg("--control")
        .arg(&herd.control)
        .args(["--", "sleep", "1000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(code) = second.try_wait().unwrap() {
            break code;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let _ = second.wait();
            panic!("a second herd of the same name started beside a live one");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_ne!(code.code(), Some(0));
    drop(crowd);
    assert!(herd.control.exists(), "the first herd's socket was removed");
    assert_eq!(
        common::running(&herd.status()),
        1,
        "the first herd is reachable"
    );
}

/// Children killed and reaped when dropped.
struct Reaped([std::process::Child; 2]);

impl Drop for Reaped {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Two herds of one name started at the same moment over a stale socket (a herd that was
/// SIGKILLed leaves one): exactly one keeps the name and stays reachable; the other refuses to
/// start. Without a lock both see the stale socket refuse, both remove it and bind, and the
/// second removes the first's live socket (or fails to bind). Fifty rounds.
#[test]
fn two_herds_racing_for_a_stale_name_leave_one_reachable() {
    let dir = herd_test_support::process::TempDir::new("name-race");
    for round in 0..50 {
        let control = dir.path().join(format!("race-{round}.sock"));
        // A stale socket: bound, never listened on again, not removed.
        drop(std::os::unix::net::UnixListener::bind(&control).unwrap());
        let start = || {
            Command::new(HERD)
                .arg("run")
                .arg("--control")
                .arg(&control)
                .args(["-w", "1", "--", "sleep", "1000"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        };
        // Killed however the round ends (a failed assertion included).
        let mut herds = Reaped([start(), start()]);
        let herds = &mut herds.0;
        // The loser exits (non-zero, saying why); the winner runs on.
        let deadline = Instant::now() + Duration::from_secs(20);
        let loser = loop {
            if let Some(i) = (0..2).find(|&i| herds[i].try_wait().unwrap().is_some()) {
                break i;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: both herds run under one name"
            );
            std::thread::sleep(Duration::from_millis(20));
        };
        let status = herds[loser].wait().unwrap();
        let mut why = String::new();
        std::io::Read::read_to_string(herds[loser].stderr.as_mut().unwrap(), &mut why).unwrap();
        assert_ne!(status.code(), Some(0), "round {round}: {why}");
        assert!(why.contains("another herd"), "round {round}: {why}");
        let winner = &mut herds[1 - loser];
        let out = Command::new(HERD)
            .args(["status", "--control"])
            .arg(&control)
            .output()
            .unwrap();
        let reachable = out.status.success();
        let _ = winner.kill();
        let _ = winner.wait();
        assert!(
            reachable,
            "round {round}: the herd that runs is unreachable: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
