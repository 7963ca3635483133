//! `--rescue`: what herd does with a retiring Node worker's client connections, seen by real
//! keep-alive clients of an unmodified Node server (`balance_apps/server.js`, answering with its
//! pid) across `herd reload`.
//! - `end` (the default) and `hold`: a keep-alive connection survives the reload; its next
//!   request is answered by a new worker, on the same connection (Node's `server.close()`
//!   destroyed it in the old worker, herd's copy kept it open and handed it on).
//! - `off`: Node's own behaviour: the connection is closed with the old worker.
//! - with busy clients (`balance_apps/slow.js`, 20 ms a request: Node keeps the connections
//!   busy when its server closes), `end` ends the old worker once it has answered them, after
//!   half its grace period, with no request lost; `hold` lets it serve them until its grace
//!   period's `SIGKILL`, which takes the requests it was answering (4 seen).

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;

use common::http::*;
use common::*;

/// `herd reload`, answered once the new workers are in place.
fn reload(herd: &Herd) {
    let out = herd.ctl(&["reload"]);
    assert!(
        out.status.success(),
        "herd reload: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// One keep-alive client asking every 100 ms across a reload of 2 workers, until both old
/// workers are gone and a few more requests went: the pids that answered on its first
/// connection, its reconnects and its failures.
fn one_slow_client(mode: &str) -> (BTreeSet<u64>, u64, u64, Vec<String>) {
    let name = format!("rescue-slow-{mode}");
    let (herd, addr) = serve_port(
        &name,
        &["--rescue", mode],
        &["node", &balance_app("server.js")],
        2,
    );
    let mut client = KeepAlive::new(addr);
    let mut first_conn = BTreeSet::new();
    let (mut failed, mut reasons) = (0, Vec::new());
    let mut ask = |client: &mut KeepAlive, first: &mut BTreeSet<u64>| {
        let before = client.reconnects;
        match client.get() {
            Ok(pid) if client.reconnects == before && before == 0 && failed == 0 => {
                first.insert(pid);
            }
            Ok(_) => {}
            Err(e) => {
                failed += 1;
                reasons.push(e);
            }
        }
    };
    for _ in 0..3 {
        ask(&mut client, &mut first_conn);
    }
    reload(&herd);
    let deadline = Instant::now() + DEADLINE;
    let mut retired = 0;
    let mut after = 0;
    while after < 5 {
        assert!(
            Instant::now() < deadline,
            "{mode}: the old workers never retired"
        );
        retired += herd
            .err
            .try_iter()
            .filter(|l| l.contains("worker retired"))
            .count();
        if retired >= 2 {
            after += 1;
        }
        std::thread::sleep(Duration::from_millis(100));
        ask(&mut client, &mut first_conn);
    }
    let reconnects = client.reconnects;
    drop(client);
    stop(herd);
    (first_conn, reconnects, failed, reasons)
}

#[test]
fn end_and_hold_keep_an_idle_keep_alive_connection_across_a_reload_and_off_does_not() {
    for mode in ["end", "hold"] {
        let (pids, reconnects, failed, reasons) = one_slow_client(mode);
        eprintln!("--rescue {mode}: pids on one connection {pids:?}, {reconnects} reconnects, {failed} failed");
        assert_eq!((reconnects, failed), (0, 0), "--rescue {mode}: {reasons:?}");
        assert!(
            pids.len() >= 2,
            "--rescue {mode}: the connection was never handed to a new worker: {pids:?}"
        );
    }
    let (pids, reconnects, failed, reasons) = one_slow_client("off");
    eprintln!("--rescue off: pids on the first connection {pids:?}, {reconnects} reconnects, {failed} failed ({reasons:?})");
    assert!(
        reconnects + failed >= 1,
        "--rescue off: the old worker's connection outlived it ({pids:?})"
    );
    assert_eq!(pids.len(), 1, "--rescue off: handed on: {pids:?}");
}

/// Four clients sending one request after another on keep-alive connections to one worker of
/// `slow.js`,
/// reloaded once with a 3 s grace period: whether the old worker was ended by the rescue, or
/// killed at its grace period; the requests that failed.
fn busy_clients(mode: &str) -> (bool, bool, u64, Vec<String>) {
    let name = format!("rescue-busy-{mode}");
    let flags = ["--rescue", mode, "--grace", "3"];
    let (herd, addr) = serve_port(&name, &flags, &["node", &balance_app("slow.js")], 1);
    let tally = Arc::new(Tally::default());
    let clients: Arc<Vec<Mutex<KeepAlive>>> =
        Arc::new((0..4).map(|_| Mutex::new(KeepAlive::new(addr))).collect());
    let load = {
        let (tally, clients) = (tally.clone(), clients.clone());
        Load::start(4, move |c, _| {
            tally.record(clients[c].lock().unwrap().get())
        })
    };
    let deadline = Instant::now() + DEADLINE;
    while tally.ok() < 50 {
        assert!(Instant::now() < deadline, "no load");
        std::thread::sleep(Duration::from_millis(5));
    }
    reload(&herd);
    let (mut ended, mut killed) = (false, false);
    loop {
        let line = wait_line(&herd.err, |_| true, "the old worker's retirement");
        ended |= line.contains("answered its last requests");
        killed |= line.contains("did not exit within its grace period");
        if line.contains("worker retired") {
            break;
        }
    }
    let more = tally.ok() + 20;
    while tally.ok() < more {
        assert!(Instant::now() < deadline, "no load after the reload");
        std::thread::sleep(Duration::from_millis(5));
    }
    let _ = load.stop();
    clients.iter().for_each(|c| c.lock().unwrap().conn = None);
    stop(herd);
    (ended, killed, tally.failed(), tally.reasons())
}

#[test]
fn end_ends_a_worker_with_busy_clients_early_and_hold_lets_it_serve_to_its_grace_period() {
    let (ended, killed, failed, reasons) = busy_clients("end");
    eprintln!("--rescue end: ended {ended}, killed at grace {killed}, {failed} failed");
    assert!(
        ended && !killed,
        "--rescue end: ended {ended}, killed {killed}"
    );
    assert_eq!(failed, 0, "--rescue end: {reasons:?}");
    let (ended, killed, failed, reasons) = busy_clients("hold");
    eprintln!(
        "--rescue hold: ended {ended}, killed at grace {killed}, {failed} failed ({reasons:?})"
    );
    assert!(
        !ended && killed,
        "--rescue hold: ended {ended}, killed {killed}"
    );
}
