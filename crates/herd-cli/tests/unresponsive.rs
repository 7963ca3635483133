//! Hung workers are replaced (`--unresponsive`, issue 20): a worker stopped with SIGSTOP, and a
//! Node worker whose event loop spins in `for (;;) {}`, are seen within the limit, killed, and
//! their slot gets a new worker at once, counted in `herd status` as hung (not a crash), while
//! the other worker serves a steady load (both balance modes): only a request the hung worker
//! had already taken in can be lost (herd cannot answer for it), at most one per client here. The server is
//! an ordinary `http` server (hung_apps/server.js) run unchanged: Node workers answer herd's
//! pings through the preload herd adds to their NODE_OPTIONS.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::*;

fn server() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/hung_apps/server.js")
        .to_string_lossy()
        .into_owned()
}

/// `herd run -w WORKERS --balance BALANCE --unresponsive LIMIT` of the server, every worker
/// running.
fn start(name: &str, workers: usize, balance: &str, limit: &str) -> (Herd, SocketAddr) {
    let (listen, port) = demo_port();
    let n = workers.to_string();
    let herd = Herd::start(
        name,
        &[
            "-w",
            &n,
            "--balance",
            balance,
            "--unresponsive",
            limit,
            "--listen",
            &listen,
            "--env",
            &port,
            "--",
            "node",
            &server(),
        ],
    );
    let addr = herd.listening();
    herd.status_until("every worker running", |s| running(s) == workers);
    (herd, addr)
}

/// Sends `sig` to the process `pid`.
fn signal(pid: u64, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

/// Waits until the slot of the worker with `pid` has a new worker counted as hung; how long
/// it took.
fn replaced(herd: &Herd, pid: u64, since: Instant) -> Duration {
    herd.status_until("the hung worker replaced", |s| {
        running(s) == 2
            && !pids(s).contains(&pid)
            && s.status.workers.iter().any(|w| w.unresponsive == 1)
    });
    since.elapsed()
}

/// Waits until the load has had `more` more requests answered (the new worker serving too).
fn served_more(traffic: &Load, more: u64) {
    let (from, deadline) = (traffic.ok(), Instant::now() + DEADLINE);
    while traffic.ok() < from + more {
        assert!(Instant::now() < deadline, "the load stalled");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Requests lost at most: one per client, the one the hung worker had taken in.
const MAY_LOSE: u64 = 4;

/// A steady load of new connections, each `GET /` answered by some worker.
fn load(addr: SocketAddr) -> Load {
    Load::start(4, move |_, _| match get_pid(addr) {
        Ok(_) => true,
        Err(e) => {
            eprintln!("a request failed: {e}");
            false
        }
    })
}

fn a_spinning_event_loop_is_replaced(balance: &str) {
    let (herd, addr) = start(&format!("hung-loop-{balance}"), 2, balance, "1.5");
    let traffic = load(addr);
    // The request that hangs a worker (it never answers).
    let hang = std::thread::spawn(move || http_get(addr, "/hang"));
    // Which worker it hung: the one whose pid stops answering. Found from the log line herd
    // writes when it judges it.
    let started = Instant::now();
    let line = herd.stderr_line(|l| l.contains("answered no ping"));
    let took = replaced(&herd, worker_in(&line, &herd), started);
    served_more(&traffic, 200);
    let (ok, failed) = traffic.stop();
    assert!(hang.join().unwrap().is_err(), "/hang never answers");
    eprintln!("{balance}: replaced after {took:?}; load {ok} ok, {failed} failed");
    assert!(
        took < Duration::from_secs(10),
        "replaced only after {took:?}"
    );
    assert!(
        failed <= MAY_LOSE,
        "{failed} requests failed while a worker hung"
    );
    stop(herd);
}

/// The pid of the worker named in herd's "answered no ping" log line (`worker=wN` or
/// `worker=N`), from the status report's list of workers seen before.
fn worker_in(line: &str, herd: &Herd) -> u64 {
    let id: u64 = line
        .split("worker=")
        .nth(1)
        .and_then(|rest| {
            rest.trim_start_matches('w')
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or_else(|| panic!("no worker id in {line:?}"));
    // Its pid, if it is still listed (it may be gone already: then any pid not seen again).
    let s = herd.status();
    s.status
        .workers
        .iter()
        .find(|w| w.worker.0 == id)
        .map_or(0, |w| u64::from(w.pid))
}

#[test]
fn a_spinning_node_event_loop_is_replaced_rr() {
    a_spinning_event_loop_is_replaced("rr");
}

#[test]
fn a_spinning_node_event_loop_is_replaced_shared() {
    a_spinning_event_loop_is_replaced("shared");
}

#[test]
fn a_stopped_worker_is_replaced_and_the_other_serves_meanwhile_rr() {
    a_stopped_worker_is_replaced_and_the_other_serves_meanwhile("rr");
}

#[test]
fn a_stopped_worker_is_replaced_and_the_other_serves_meanwhile_shared() {
    a_stopped_worker_is_replaced_and_the_other_serves_meanwhile("shared");
}

fn a_stopped_worker_is_replaced_and_the_other_serves_meanwhile(balance: &str) {
    let (herd, addr) = start(&format!("hung-stopped-{balance}"), 2, balance, "1.5");
    let victim = pids(&herd.status())[0];
    // Stopped once it serves (its loop has turned, so it has answered a ping: a worker stopped
    // before its first answer is not told from a program that never answers).
    let deadline = Instant::now() + DEADLINE;
    while get_pid(addr).ok() != Some(victim) {
        assert!(Instant::now() < deadline, "worker {victim} never served");
    }
    let traffic = load(addr);
    let started = Instant::now();
    signal(victim, rustix::process::Signal::STOP);
    let took = replaced(&herd, victim, started);
    served_more(&traffic, 200);
    let (ok, failed) = traffic.stop();
    eprintln!("SIGSTOP {balance}: replaced after {took:?}; load {ok} ok, {failed} failed");
    assert!(
        took < Duration::from_secs(10),
        "replaced only after {took:?}"
    );
    assert!(
        failed <= MAY_LOSE,
        "{failed} requests failed while a worker was stopped"
    );
    assert!(wait_gone(victim), "the stopped worker was killed");
    stop(herd);
}

#[test]
fn unresponsive_off_leaves_a_stopped_worker_alone() {
    let (herd, _) = start("hung-off", 1, "shared", "off");
    let victim = pids(&herd.status())[0];
    signal(victim, rustix::process::Signal::STOP);
    // Longer than the shortest limit a test above uses, several times over.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(pids(&herd.status()), [victim], "nobody replaced it");
    signal(victim, rustix::process::Signal::CONT);
    stop(herd);
}

/// Whether `pid` is gone within the deadline.
fn wait_gone(pid: u64) -> bool {
    let deadline = Instant::now() + DEADLINE;
    while herd_test_support::process::pid_alive(pid) {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}
