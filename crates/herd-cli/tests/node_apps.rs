//! Ordinary Node servers under `herd run`, herd as their cluster primary: Node's documentation
//! cluster example, a plain `http.createServer().listen(PORT)` and `listen(0)`, each with two
//! workers sharing one listening socket that herd made (Node's shared handles), and a graceful
//! `herd stop` (Node's disconnect: servers close, connections finish, exit 0).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

mod common;

use common::*;
use herd_test_support::process::{free_port, TempDir};

fn app(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/node_apps")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

/// The `node` processes among `pid`'s descendants.
fn node_descendants(pid: u32) -> Vec<u32> {
    let mut found = Vec::new();
    let mut todo = vec![pid];
    while let Some(p) = todo.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) else {
            continue;
        };
        for t in tasks.flatten() {
            let text = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
            for child in text
                .split_whitespace()
                .filter_map(|c| c.parse::<u32>().ok())
            {
                let comm =
                    std::fs::read_to_string(format!("/proc/{child}/comm")).unwrap_or_default();
                if comm.trim() == "node" {
                    found.push(child);
                }
                todo.push(child);
            }
        }
    }
    found.sort_unstable();
    found
}

/// The JSON object in an HTTP response's body (Node sends a body without a length chunked:
/// the JSON is between the chunk sizes).
fn json_in(body: &str) -> serde_json::Value {
    let json = &body[body.find('{').unwrap()..=body.rfind('}').unwrap()];
    serde_json::from_str(json).unwrap()
}

/// Asks `ask` until answers came from `n` different workers (by `key` of the JSON answer),
/// within the deadline; the values seen.
fn distinct(n: usize, key: &str, mut ask: impl FnMut() -> serde_json::Value) -> BTreeSet<u64> {
    let deadline = Instant::now() + DEADLINE;
    let mut seen = BTreeSet::new();
    while seen.len() < n {
        assert!(
            Instant::now() < deadline,
            "answers from {n} workers by {key}; saw {seen:?}"
        );
        seen.insert(ask()[key].as_u64().unwrap());
    }
    seen
}

/// `GET /` until answers came from `n` different workers (by `key`).
fn answers_from(addr: SocketAddr, key: &str, n: usize) -> BTreeSet<u64> {
    distinct(n, key, || {
        let (code, body) = http_get(addr, "/").unwrap();
        assert_eq!(code, 200, "{body}");
        json_in(&body)
    })
}

/// `herd run -w 2` of the app `script` with `PORT=port`, once both workers said they listen on
/// that port.
fn serve_on(port: u16, name: &str, script: &str) -> Herd {
    let env = format!("PORT={port}");
    let herd = Herd::start(
        name,
        &["-w", "2", "--env", &env, "--", "node", &app(script)],
    );
    for _ in 0..2 {
        let line = herd.stdout_line(|l| l.contains("listening on"));
        assert!(line.ends_with(&format!("listening on {port}")), "{line}");
    }
    herd
}

#[test]
fn node_docs_cluster_example_runs_as_herds_workers() {
    let port = free_port();
    let herd = Herd::start(
        "node-docs-cluster",
        &[
            "-w",
            "2",
            "--env",
            &format!("PORT={port}"),
            "--",
            "node",
            &app("cluster_docs.js"),
        ],
    );
    // Both are cluster workers (cluster.worker.id is herd's id), not primaries of their own.
    let mut listening = BTreeSet::new();
    for _ in 0..2 {
        let line = herd.stdout_line(|l| l.contains("listening on"));
        assert!(line.ends_with(&format!("listening on {port}")), "{line}");
        listening.insert(line[2..3].to_string());
    }
    assert_eq!(listening.len(), 2);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let ids = answers_from(addr, "worker", 2);
    assert_eq!(
        ids,
        BTreeSet::from([1, 2]),
        "cluster.worker.id is herd's id"
    );
    // Exactly the two workers: nobody forked nested workers.
    let s = herd.status_until("two running workers", |s| running(s) == 2);
    // The port herd bound for them is in status, with who listens there.
    assert_eq!(s.status.serving.len(), 1, "{:?}", s.status.serving);
    let at = &s.status.serving[0];
    assert!(at.address.ends_with(&format!(":{port}")), "{at:?}");
    assert_eq!(at.workers, [herd::WorkerId(1), herd::WorkerId(2)]);
    let text = String::from_utf8_lossy(&herd.ctl(&["status"]).stdout).into_owned();
    assert!(
        text.contains(&format!(
            ":{port} for Node workers (shared: every worker accepts): w1 w2"
        )),
        "{text}"
    );
    let mut pids: Vec<u32> = pids(&s).into_iter().map(|p| p as u32).collect();
    pids.sort_unstable();
    assert_eq!(node_descendants(herd.pid()), pids);
    assert_eq!(answers_from(addr, "pid", 2).len(), 2);
    // Its primary branch never runs: herd says so, naming the file, once.
    let warning = herd.stderr_line(|l| l.contains("code for Node's cluster primary"));
    assert!(
        warning.contains("cluster_docs.js") && warning.contains("cluster.isPrimary"),
        "{warning}"
    );
    herd.ctl(&["stop"]);
    let rest = rest(&herd.err);
    assert!(
        !rest
            .iter()
            .any(|l| l.contains("code for Node's cluster primary")),
        "once: {rest:?}"
    );
}

#[test]
fn a_reforking_cluster_app_is_restarted_and_reloaded_by_herd() {
    let port = free_port();
    let herd = Herd::start(
        "node-refork",
        &[
            "-w",
            "2",
            "--env",
            &format!("PORT={port}"),
            "--",
            "node",
            &app("cluster_refork.js"),
        ],
    );
    for _ in 0..2 {
        herd.stdout_line(|l| l.ends_with("listening"));
    }
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    assert_eq!(answers_from(addr, "worker", 2), BTreeSet::from([1, 2]));
    // A worker dies: herd restarts its slot (the app's own re-fork code never runs: herd is
    // the primary), and there are never more than 2 node processes.
    let _ = http_get(addr, "/crash");
    // Its replacement listens (herd restarted the slot: the app's `cluster.fork()` never runs).
    herd.stdout_line(|l| l.ends_with("worker 3 listening"));
    let s = herd.status_until("a restart", |s| {
        running(s) == 2 && s.status.workers.iter().any(|w| w.restarts == 1)
    });
    assert_eq!(node_descendants(herd.pid()).len(), 2);
    let before: BTreeSet<u64> = pids(&s).into_iter().collect();
    // A reload replaces every worker, each once the new one listens.
    assert!(herd.ctl(&["reload"]).status.success());
    let after = replaced(&herd, &before);
    assert_eq!(answers_from(addr, "pid", 2), after);
    stop_gracefully(herd, 4);
}

#[test]
fn an_app_with_two_ports_serves_both_from_every_worker() {
    let (port, admin) = (free_port(), free_port());
    let herd = Herd::start(
        "node-two-ports",
        &[
            "-w",
            "2",
            "--env",
            &format!("PORT={port}"),
            "--env",
            &format!("ADMIN_PORT={admin}"),
            "--",
            "node",
            &app("two_ports.js"),
        ],
    );
    for _ in 0..4 {
        herd.stdout_line(|l| l.ends_with(" listening"));
    }
    let pids: BTreeSet<u64> = pids(&herd.status()).into_iter().collect();
    for p in [port, admin] {
        let addr: SocketAddr = ([127, 0, 0, 1], p).into();
        assert_eq!(answers_from(addr, "pid", 2), pids, "port {p}");
    }
    assert!(herd.ctl(&["reload"]).status.success());
    let after = replaced(&herd, &pids);
    for p in [port, admin] {
        let addr: SocketAddr = ([127, 0, 0, 1], p).into();
        assert_eq!(
            answers_from(addr, "pid", 2),
            after,
            "port {p} after the reload"
        );
    }
    stop_gracefully(herd, 4);
}

/// The workers after a reload, once the retired ones (`before`) have left the status.
fn replaced(herd: &Herd, before: &BTreeSet<u64>) -> BTreeSet<u64> {
    let s = herd.status_until("only the new workers", |s| {
        workers(s) == 2 && pids(s).iter().all(|p| !before.contains(p))
    });
    pids(&s).into_iter().collect()
}

#[test]
fn a_plain_node_server_serves_from_every_worker_on_one_port() {
    let port = free_port();
    let herd = serve_on(port, "node-plain", "plain.js");
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let served: BTreeSet<u64> = answers_from(addr, "pid", 2);
    let s = herd.status();
    let pids: BTreeSet<u64> = pids(&s).into_iter().collect();
    assert_eq!(served, pids, "both workers serve on the one port");
    // A request in flight when herd stops is answered: the worker closes its server, finishes
    // the request, then exits (Node's disconnect), instead of exiting at once.
    let slow = std::thread::spawn(move || http_get(addr, "/slow"));
    herd.stdout_line(|l| l.ends_with("slow request started"));
    let stopping = std::time::Instant::now();
    stop_gracefully(herd, 2);
    let (code, body) = slow.join().unwrap().unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(stopping.elapsed() < DEADLINE);
}

#[test]
fn a_plain_server_asking_for_a_listen_address_gets_herds_socket() {
    // `--listen` makes herd bind the port itself (for programs that take LISTEN_FDS); a Node
    // server that simply listens on that port is handed herd's socket, not EADDRINUSE.
    let port = free_port();
    let herd = Herd::start(
        "node-plain-listen",
        &[
            "-w",
            "2",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--env",
            &format!("PORT={port}"),
            "--",
            "node",
            &app("plain.js"),
        ],
    );
    for _ in 0..2 {
        let line = herd.stdout_line(|l| l.contains("listening on"));
        assert!(line.ends_with(&format!("listening on {port}")), "{line}");
    }
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let served: BTreeSet<u64> = answers_from(addr, "pid", 2);
    let pids: BTreeSet<u64> = pids(&herd.status()).into_iter().collect();
    assert_eq!(served, pids, "both workers serve on herd's socket");
    stop_gracefully(herd, 2);
}

#[test]
fn by_default_a_reload_waits_until_the_new_worker_listens_where_the_old_one_did() {
    let port = free_port();
    let herd = Herd::start(
        "node-slow-listen",
        &[
            "-w",
            "1",
            "--env",
            &format!("PORT={port}"),
            "--",
            "node",
            &app("slow_listen.js"),
        ],
    );
    herd.stdout_line(|l| l.contains("listening on"));
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let before = get_pid(addr).unwrap();
    let t = Instant::now();
    assert!(herd.ctl(&["reload"]).status.success());
    assert!(
        t.elapsed().as_millis() >= 600,
        "the reload waited for the new worker to listen: {:?}",
        t.elapsed()
    );
    // The one socket never stopped listening; the new worker answers. The old one may still
    // take a connection until its server has closed (it shares the socket), so wait for that.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let after = get_pid(addr).expect("the socket listens throughout");
        if after != before {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only the old worker {before} answers"
        );
    }
    // Two retirements, both exit 0: the reload's old worker, then the stop's.
    stop_gracefully(herd, 2);
}

#[test]
fn listen_zero_gives_every_worker_the_same_port_across_reloads() {
    // Readiness by notice: a reloaded worker is ready once Node says it listens.
    let herd = Herd::start(
        "node-port-zero",
        &[
            "-w",
            "2",
            "--ready",
            "notice",
            "--",
            "node",
            &app("any_port.js"),
        ],
    );
    let port_of = |line: String| -> u16 { line.rsplit(' ').next().unwrap().parse().unwrap() };
    let first = port_of(herd.stdout_line(|l| l.contains("listening on")));
    let second = port_of(herd.stdout_line(|l| l.contains("listening on")));
    assert_eq!(first, second, "one port, chosen once");
    assert_ne!(first, 0);
    let addr: SocketAddr = ([127, 0, 0, 1], first).into();
    let before = answers_from(addr, "pid", 2);
    // A rolling reload: the new workers get the same socket (herd keeps it), and become ready
    // by Node's own listening notice.
    let out = herd.ctl(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for _ in 0..2 {
        let port = port_of(herd.stdout_line(|l| l.contains("listening on")));
        assert_eq!(port, first, "the same port after a reload");
    }
    let s = herd.status_until("two new workers", |s| {
        running(s) == 2 && pids(s).iter().all(|p| !before.contains(p))
    });
    let now: BTreeSet<u64> = pids(&s).into_iter().collect();
    assert_eq!(answers_from(addr, "pid", 2), now);
    stop_gracefully(herd, 4);
}

#[test]
fn a_unix_socket_server_is_shared_and_its_file_removed_at_the_end() {
    let dir = TempDir::new("node-unix");
    let path = dir.0.join("app.sock");
    let herd = Herd::start(
        "node-unix-herd",
        &[
            "-w",
            "2",
            "--env",
            &format!("SOCKET_PATH={}", path.display()),
            "--",
            "node",
            &app("unix_socket.js"),
        ],
    );
    for _ in 0..2 {
        herd.stdout_line(|l| l.contains("listening on"));
    }
    let served = distinct(2, "pid", || {
        let mut s = UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        json_in(&text)
    });
    let pids: BTreeSet<u64> = pids(&herd.status()).into_iter().collect();
    assert_eq!(served, pids);
    stop_gracefully(herd, 2);
    assert!(!path.exists(), "herd made the socket file and removes it");
}

#[test]
fn a_udp_service_shares_one_socket() {
    let port = free_port();
    let herd = serve_on(port, "node-udp", "udp.js");
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let served = distinct(2, "pid", || {
        client.send_to(b"hi", ("127.0.0.1", port)).unwrap();
        let mut buf = [0u8; 512];
        let n = client.recv(&mut buf).unwrap();
        serde_json::from_slice(&buf[..n]).unwrap()
    });
    let pids: BTreeSet<u64> = pids(&herd.status()).into_iter().collect();
    assert_eq!(served, pids);
    stop_gracefully(herd, 2);
}

#[test]
fn a_taken_port_gives_the_worker_nodes_usual_error() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut herd = Herd::start(
        "node-port-taken",
        &[
            "-w",
            "1",
            "--restart",
            "never",
            "--env",
            &format!("PORT={port}"),
            "--",
            "node",
            &app("port_taken.js"),
        ],
    );
    let line = herd.stdout_line(|l| l.contains("listen failed"));
    // As under Node's own primary: the worker's error names the primary's bind.
    assert!(
        line.ends_with(&format!("listen failed: EADDRINUSE bind {port}")),
        "{line}"
    );
    assert_eq!(herd.wait(), Some(1), "the worker failed");
}

#[test]
fn a_worker_whose_listen_failed_silently_shows_in_status_and_the_log() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let herd = Herd::start(
        "node-port-swallowed",
        &[
            "-w",
            "2",
            "--env",
            &format!("PORT={port}"),
            "--",
            "node",
            &app("port_taken_swallowed.js"),
        ],
    );
    let log = herd.stderr_line(|l| l.contains("cannot listen"));
    assert!(log.contains(&format!("127.0.0.1:{port}")), "{log}");
    let s = herd.status_until("both with the error", |s| {
        s.status
            .workers
            .iter()
            .filter(|w| w.listen_error.is_some())
            .count()
            == 2
    });
    let why = s.status.workers[0].listen_error.clone().unwrap();
    assert!(
        why.starts_with(&format!("listen on 127.0.0.1:{port}: ")) && why.contains("in use"),
        "{why}"
    );
    let text = String::from_utf8_lossy(&herd.ctl(&["status"]).stdout).into_owned();
    assert!(
        text.contains("0 running, 2 running but cannot listen"),
        "{text}"
    );
    assert!(text.contains("no-listen"), "{text}");
    common::stop(herd);
}

#[test]
fn a_worker_retrying_a_taken_port_is_logged_once() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let herd = Herd::start(
        "node-port-retry",
        &[
            "-w",
            "1",
            "--env",
            &format!("PORT={port}"),
            "--",
            "node",
            &app("port_taken_retry.js"),
        ],
    );
    herd.stdout_line(|l| l.ends_with("gave up after 500 tries"));
    herd.ctl(&["stop"]);
    let log = rest(&herd.err);
    let warned = log.iter().filter(|l| l.contains("cannot listen")).count();
    assert_eq!(warned, 1, "one line for 500 failures: {log:?}");
}
