//! Real-time Node servers under `herd run`, with the real `ws` package and real clients: a
//! server with open WebSocket or SSE connections never closes by itself, so its SIGTERM hook
//! must run while they are open (herd sends the stop signal a settle time after the stop to a
//! worker that listens for it), and its clients see the hook's clean close, not a `SIGKILL`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::npm::{self, Client};
use common::Herd;
use herd_test_support::process::free_port;

/// `herd run -w 2 FLAGS` of a real-time app on a free port, its workers listening.
fn serve(name: &str, modules: &str, script: &str, port: u16, flags: &[&str]) -> Herd {
    let (port, path) = (format!("PORT={port}"), format!("NODE_PATH={modules}"));
    let app = npm::app(script);
    let mut args = vec!["-w", "2"];
    args.extend_from_slice(flags);
    args.extend(["--env", &port, "--env", &path, "--", "node", &app]);
    let herd = Herd::start(name, &args);
    for _ in 0..2 {
        herd.stdout_line(|l| l.contains("listening on"));
    }
    herd
}

/// Waits until the workers' SIGTERM hooks have closed `clients` clients in all, and each hook
/// that ran finished its cleanup. (A worker no client went to exits by Node's own disconnect,
/// before any signal: it has nothing to close.)
fn hooks_ran(herd: &Herd, clients: usize) {
    let (mut closed, mut hooks, mut cleanups) = (0, 0, 0);
    while closed < clients || cleanups < hooks {
        let line =
            herd.stdout_line(|l| l.contains("SIGTERM: closing") || l.ends_with("cleanup done"));
        if line.ends_with("cleanup done") {
            cleanups += 1;
            continue;
        }
        hooks += 1;
        let n = line.rsplit("closing ").next().unwrap();
        closed += n.trim_end_matches(" clients").parse::<usize>().unwrap();
    }
    assert_eq!(closed, clients);
}

#[test]
fn a_ws_servers_clients_see_1001_on_stop_and_its_hook_runs() {
    let Some(modules) = npm::modules("a_ws_servers_clients_see_1001_on_stop_and_its_hook_runs")
    else {
        return;
    };
    let port = free_port();
    let herd = serve("ws-stop", &modules, "ws_chat.js", port, &["--grace", "20"]);
    let clients = Client::start(&modules, "ws_clients.js", &[&port.to_string(), "8"]);
    clients.line(|l| l == "open 8");
    let t = Instant::now();
    let out = herd.ctl(&["stop"]);
    assert!(out.status.success());
    assert_eq!(
        clients.line(|l| l.starts_with("codes ")),
        r#"codes {"1001":8}"#,
        "every client told the server is going away"
    );
    hooks_ran(&herd, 8);
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "stopped by the hook, not the 20 s grace period: {:?}",
        t.elapsed()
    );
    common::stop_gracefully_after(herd, 2);
}

#[test]
fn a_ws_servers_clients_see_1001_on_reload_and_new_clients_are_served() {
    let Some(modules) =
        npm::modules("a_ws_servers_clients_see_1001_on_reload_and_new_clients_are_served")
    else {
        return;
    };
    let port = free_port();
    let herd = serve(
        "ws-reload",
        &modules,
        "ws_chat.js",
        port,
        &["--grace", "20"],
    );
    let clients = Client::start(&modules, "ws_clients.js", &[&port.to_string(), "8"]);
    clients.line(|l| l == "open 8");
    let t = Instant::now();
    let out = herd.ctl(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        clients.line(|l| l.starts_with("codes ")),
        r#"codes {"1001":8}"#
    );
    hooks_ran(&herd, 8);
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "each worker stopped by its hook: {:?}",
        t.elapsed()
    );
    let again = Client::start(&modules, "ws_clients.js", &[&port.to_string(), "4"]);
    again.line(|l| l == "open 4");
    drop(again);
    common::stop(herd);
}

#[test]
fn an_sse_stream_ends_cleanly_on_stop_and_the_hook_runs() {
    let Some(modules) = npm::modules("an_sse_stream_ends_cleanly_on_stop_and_the_hook_runs") else {
        return;
    };
    let port = free_port();
    let herd = serve("sse-stop", &modules, "sse.js", port, &["--grace", "20"]);
    let mut conn = TcpStream::connect(("127.0.0.1", port)).unwrap();
    conn.set_read_timeout(Some(common::DEADLINE)).unwrap();
    conn.write_all(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut r = BufReader::new(conn);
    let mut line = String::new();
    while !line.contains("hello from") {
        line.clear();
        r.read_line(&mut line).unwrap();
    }
    let t = Instant::now();
    let stop = std::thread::spawn({
        let control = herd.control.clone();
        move || common::ctl_at(&control, &["stop"])
    });
    // The stream goes on until the hook ends it: its last event, then chunked encoding's end.
    let mut rest = Vec::new();
    loop {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => rest.push(line.trim_end().to_string()),
            Err(e) => panic!("the stream broke: {e} after {rest:?}"),
        }
        if rest.ends_with(&["0".to_string(), String::new()]) {
            break;
        }
    }
    assert!(
        rest.iter().any(|l| l == "event: bye"),
        "the hook's last event: {rest:?}"
    );
    assert!(
        rest.ends_with(&["0".to_string(), String::new()]),
        "a complete response (its last chunk): {rest:?}"
    );
    assert!(stop.join().unwrap().status.success());
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    // The worker that held the stream ran its hook (the other may have had nothing to end).
    herd.stdout_line(|l| l.ends_with("SIGTERM: ending 1 streams"));
    common::stop_gracefully_after(herd, 2);
}

/// `herd run -w 2 --balance BALANCE` of the socket.io server, and 8 polling clients.
fn socketio_clients(modules: &str, balance: &str) -> (String, String) {
    let port = free_port();
    let herd = serve(
        "socketio",
        modules,
        "socketio.js",
        port,
        &["--balance", balance],
    );
    let clients = Client::start(modules, "sio_clients.js", &[&port.to_string(), "8"]);
    let pids = clients.line(|l| l.starts_with("pids "));
    let ok = clients.line(|l| l.starts_with("ok "));
    common::stop(herd);
    (ok, pids)
}

#[test]
fn socketio_polling_clients_all_connect_under_sticky_balancing() {
    let Some(modules) = npm::modules("socketio_polling_clients_all_connect_under_sticky_balancing")
    else {
        return;
    };
    let (ok, pids) = socketio_clients(&modules, "sticky");
    assert_eq!(ok, "ok 8 of 8", "{pids}");
}

#[test]
fn cluster_adapter_broadcasts_reach_clients_on_every_worker_with_relay() {
    let Some(modules) =
        npm::modules("cluster_adapter_broadcasts_reach_clients_on_every_worker_with_relay")
    else {
        return;
    };
    let port = free_port();
    let flags = ["--balance", "rr", "--relay", "others"];
    let herd = serve("sio-adapter", &modules, "socketio_adapter.js", port, &flags);
    let clients = Client::start(&modules, "sio_broadcast.js", &[&port.to_string(), "6"]);
    let pids = clients.line(|l| l.starts_with("pids "));
    let greeted: serde_json::Value = serde_json::from_str(&pids["pids ".len()..]).unwrap();
    assert_eq!(
        greeted.as_object().unwrap().len(),
        2,
        "clients on both workers: {pids}"
    );
    assert_eq!(clients.line(|l| l.starts_with("news ")), "news 36 of 36");
    let relayed = herd.status().status.relayed;
    assert!(relayed.0 > 0 && relayed.1 == 0, "{relayed:?}");
    common::stop(herd);
}
