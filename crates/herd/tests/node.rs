//! Node interop with the real `node`: a herd primary runs unchanged Node workers (Node's json
//! serialization, `process.send` / `process.on('message')`), and a Node primary's
//! `child_process.fork` runs a herd Rust worker. Node's internal `NODE_*` messages never reach
//! user code; garbage from a Node worker is contained to that worker.

use std::os::fd::OwnedFd;
use std::process::Command;
use std::time::Duration;

use herd::{Cluster, Codec, Event, NodeHandleError, WorkerId};
use herd_test_support::events::next;
use herd_test_support::test_worker;
use serde_json::{json, Value};

fn script(name: &str) -> String {
    format!("{}/tests/node/{name}", env!("CARGO_MANIFEST_DIR"))
}

async fn node_cluster(n: usize) -> (Cluster, Vec<WorkerId>) {
    node_cluster_of("echo_worker.js", n).await
}

async fn node_cluster_of(worker_script: &str, n: usize) -> (Cluster, Vec<WorkerId>) {
    let mut cluster = Cluster::builder()
        .workers(n)
        .program("node")
        .args([script(worker_script)])
        .codec(Codec::NodeJson)
        .grace(Duration::from_secs(5))
        .start()
        .await
        .unwrap();
    let mut ids = Vec::new();
    let mut forked = Vec::new();
    while ids.len() < n {
        match next(&mut cluster).await {
            Event::Fork { worker, .. } => forked.push(worker),
            Event::Online { worker } => {
                assert!(forked.contains(&worker), "online before fork");
                ids.push(worker);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    ids.sort();
    (cluster, ids)
}

async fn message_from(cluster: &mut Cluster, from: WorkerId) -> Value {
    loop {
        match next(cluster).await {
            Event::Message { worker, message } if worker == from => return message.json().unwrap(),
            Event::Error { worker, error } if worker == from => {
                panic!("worker {worker}: {}", herd::error::chain(&error))
            }
            _ => {}
        }
    }
}

#[tokio::test]
async fn node_workers_talk_to_a_herd_primary_unchanged() {
    let (mut cluster, ids) = node_cluster(2).await;
    let w = cluster.worker(ids[0]).await.unwrap();
    let values = [
        json!("hi worker"),
        json!("line one\nline two\r\n\ttab \"quoted\" \\ back"),
        json!("unicode: 日本語 ✓ 🦀 \u{2028} end"),
        json!({"nested": {"deep": [1, 2.5, -3, null, true, {"x": "y"}]}, "empty": {}}),
        json!([]),
        json!(12345678901234_i64),
        json!(null),
        json!({"cmd": "not internal, a user field"}),
    ];
    for v in &values {
        w.send(v).await.unwrap();
        let back = message_from(&mut cluster, ids[0]).await;
        assert_eq!(&back["echo"], v);
    }

    // Broadcast reaches every Node worker (their echoes come back in any order).
    assert_eq!(cluster.broadcast(&json!({"all": true})).await, 2);
    let mut echoed = std::collections::BTreeMap::new();
    while echoed.len() < ids.len() {
        if let Event::Message { worker, message } = next(&mut cluster).await {
            echoed.insert(worker, message.json().unwrap()["echo"].clone());
        }
    }
    for id in &ids {
        assert_eq!(echoed[id], json!({"all": true}), "worker {id}");
    }

    // disconnect(): Node's 'disconnect' fires, the worker exits 0, events come in order.
    for (id, status) in cluster.disconnect_all().await {
        assert!(status.unwrap().success(), "worker {id}");
    }
}

#[tokio::test]
async fn values_made_by_node_decode_in_rust() {
    let (mut cluster, ids) = node_cluster(1).await;
    let w = cluster.worker(ids[0]).await.unwrap();
    w.send(&json!({"op": "values"})).await.unwrap();
    let mut got = Vec::new();
    loop {
        let m = message_from(&mut cluster, ids[0]).await;
        if m == json!({"done": true}) {
            break;
        }
        got.push(m["value"].clone());
    }
    // JSON.stringify's output for each of echo_worker.js's VALUES (-0 is 0 in JSON).
    assert_eq!(
        got,
        vec![
            json!("line one\nline two\r\n\ttab \"quoted\" \\ back"),
            json!("emoji \u{1F980} \u{1F600}, CJK 日本語 中文 한국어, U+2028 \u{2028} U+2029 \u{2029}, NUL \u{0} end"),
            json!({"nested": {"deep": [1, 2.5, -3, null, true, {"x": "y"}]}, "empty": {}, "list": []}),
            json!([]),
            json!(""),
            json!(0),
            json!(0),
            json!(0.1),
            json!(1e21),
            json!(9007199254740992_u64),
            json!(-42),
            json!(null),
            json!(true),
        ]
    );
    cluster.disconnect_all().await;
}

#[tokio::test]
async fn a_node_worker_using_herd_js_answers_and_asks() {
    let (mut cluster, ids) = node_cluster_of("herd_worker.js", 1).await;
    let w = cluster.worker(ids[0]).await.unwrap();
    let pid = w.pid();

    // The primary's requests, answered by herd.onRequest.
    let answer: Value = w.request(&json!({"k": [1, "two"]})).await.unwrap();
    assert_eq!(answer, json!({"echo": {"k": [1, "two"]}, "pid": pid}));
    let answer: Value = w.request(&json!("undefined")).await.unwrap();
    assert_eq!(answer, Value::Null);
    for (ask, says) in [
        ("throw", "the handler threw"),
        ("reject", "the handler rejected"),
        ("throw_string", "a bare string"),
        ("bigint", "reply not sendable"),
    ] {
        match w.request::<_, Value>(&json!(ask)).await {
            Err(herd::Error::Remote(text)) => assert!(text.contains(says), "{ask}: {text}"),
            other => panic!("{ask}: {other:?}"),
        }
    }
    // Replies are matched by id, not by order: the held ones are answered last first.
    let holds: Vec<_> = (0..3)
        .map(|k| {
            let w = w.clone();
            tokio::spawn(async move { w.request::<_, Value>(&json!({"hold": k})).await })
        })
        .collect();
    let released: Value = w.request(&json!({"release": 3})).await.unwrap();
    assert_eq!(released, json!({"released": 3}));
    for (k, h) in holds.into_iter().enumerate() {
        assert_eq!(h.await.unwrap().unwrap(), json!({"held": {"hold": k}}));
    }

    // The worker asks the primary: an Event::Request, answered here.
    w.send(&json!({"op": "ask", "value": {"q": "a\nb"}, "timeout": 5000}))
        .await
        .unwrap();
    loop {
        match next(&mut cluster).await {
            Event::Request { worker, request } => {
                assert_eq!(worker, ids[0]);
                let asked: Value = request.decode().unwrap();
                request.reply(&json!({"primary": asked})).await.unwrap();
                break;
            }
            Event::Error { error, .. } => panic!("{}", herd::error::chain(&error)),
            _ => {}
        }
    }
    assert_eq!(
        message_from(&mut cluster, ids[0]).await,
        json!({"primary_said": {"primary": {"q": "a\nb"}}})
    );

    // Notices: ready, and listening with the address of a real server.
    w.send(&json!({"op": "ready"})).await.unwrap();
    w.send(&json!({"op": "serve"})).await.unwrap();
    let (mut ready, mut address) = (false, None);
    while !ready || address.is_none() {
        match next(&mut cluster).await {
            Event::Ready { .. } => ready = true,
            Event::Listening { address: a, .. } => address = Some(a),
            Event::Error { error, .. } => panic!("{}", herd::error::chain(&error)),
            _ => {}
        }
    }
    let address = address.unwrap();
    let greeting = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(&address).unwrap();
        let mut text = String::new();
        std::io::Read::read_to_string(&mut s, &mut text).unwrap();
        text
    })
    .await
    .unwrap();
    assert_eq!(greeting, format!("hello from node {pid}\n"));

    // None of herd's envelopes was a 'message' event: this is the worker's 4th message.
    w.send(&json!("plain")).await.unwrap();
    assert_eq!(
        message_from(&mut cluster, ids[0]).await,
        json!({"echo": "plain", "seen": 4})
    );
    for (id, status) in cluster.disconnect_all().await {
        assert!(status.unwrap().success(), "worker {id}");
    }
}

#[tokio::test]
async fn node_internal_messages_never_reach_user_code() {
    let (mut cluster, ids) = node_cluster(1).await;
    let w = cluster.worker(ids[0]).await.unwrap();
    w.send(&json!({"op": "internal"})).await.unwrap();
    // The worker sent {cmd: 'NODE_CLUSTER', ...} and then a normal message: only the second
    // is a message event.
    let first = message_from(&mut cluster, ids[0]).await;
    assert_eq!(first, json!({"after": "internal"}));
    // {cmd: 'NODE_'} is not internal for Node (it needs a longer prefix): a user message.
    w.send(&json!({"op": "node_prefix"})).await.unwrap();
    let m = message_from(&mut cluster, ids[0]).await;
    assert_eq!(m, json!({"cmd": "NODE_"}));
    cluster.disconnect_all().await;
}

#[tokio::test]
async fn garbage_from_a_node_worker_is_contained() {
    let (mut cluster, ids) = node_cluster(2).await;
    let liar = cluster.worker(ids[0]).await.unwrap();
    liar.send(&json!({"op": "garbage"})).await.unwrap();
    loop {
        match next(&mut cluster).await {
            Event::Error { worker, error } => {
                assert_eq!(worker, ids[0]);
                let text = herd::error::chain(&error);
                assert!(text.contains("invalid json"), "{text}");
                break;
            }
            Event::Message { worker, .. } => panic!("unexpected message from {worker}"),
            _ => {}
        }
    }
    // The other Node worker still answers.
    let other = cluster.worker(ids[1]).await.unwrap();
    other.send(&json!("still there?")).await.unwrap();
    assert_eq!(
        message_from(&mut cluster, ids[1]).await["echo"],
        json!("still there?")
    );
    cluster.disconnect_all().await;
}

/// Node's own cluster messages are untrusted too: a flood of socket queries is answered, within
/// bounds (the cluster keeps 64 sockets, then EMFILE; handles waiting for their ack are bounded,
/// then EAGAIN), and a NODE_CLUSTER line that breaks the protocol closes that worker alone.
#[tokio::test]
async fn node_cluster_floods_and_garbage_are_contained() {
    let (mut cluster, ids) = node_cluster(2).await;
    let flooder = cluster.worker(ids[0]).await.unwrap();
    flooder
        .send(&json!({"op": "flood", "n": 100}))
        .await
        .unwrap();
    let answers = message_from(&mut cluster, ids[0]).await;
    let count = |errno: &str| answers["answers"][errno].as_u64().unwrap_or(0);
    assert_eq!(count("-24"), 36, "beyond 64 sockets: EMFILE; {answers}");
    assert_eq!(count("0") + count("-11"), 64, "{answers}");
    assert!(count("0") >= 1, "{answers}");
    let liar = cluster.worker(ids[1]).await.unwrap();
    liar.send(&json!({"op": "cluster_garbage"})).await.unwrap();
    loop {
        match next(&mut cluster).await {
            Event::Error { worker, error } => {
                assert_eq!(worker, ids[1]);
                let text = herd::error::chain(&error);
                assert!(
                    text.contains("NODE_CLUSTER") && text.contains("seq"),
                    "{text}"
                );
                break;
            }
            Event::Message { worker, .. } => panic!("unexpected message from {worker}"),
            _ => {}
        }
    }
    // The flooder still answers, and stops gracefully.
    flooder.send(&json!("still there?")).await.unwrap();
    assert_eq!(
        message_from(&mut cluster, ids[0]).await["echo"],
        json!("still there?")
    );
    assert!(flooder.disconnect().await.unwrap().success());
    cluster.disconnect_all().await;
}

/// Node workers of herd's are Node cluster workers: one that disconnects by itself (`cluster.worker.disconnect()`) gets herd's acknowledgement,
/// closes its channel and exits 0.
#[tokio::test]
async fn a_node_cluster_worker_disconnects_by_itself() {
    let (mut cluster, ids) = node_cluster(1).await;
    let w = cluster.worker(ids[0]).await.unwrap();
    w.send(&json!({"op": "leave"})).await.unwrap();
    let mut disconnected = false;
    loop {
        match next(&mut cluster).await {
            Event::Disconnect { worker } => {
                assert_eq!(worker, ids[0]);
                disconnected = true;
            }
            Event::Exit { worker, status } => {
                assert_eq!(worker, ids[0]);
                assert!(disconnected && status.success(), "{status}");
                break;
            }
            Event::Error { error, .. } => panic!("{}", herd::error::chain(&error)),
            _ => {}
        }
    }
    assert_eq!(
        w.dropped_internal(),
        0,
        "herd answered Node's cluster messages"
    );
}

#[tokio::test]
async fn a_node_primary_forks_a_herd_rust_worker() {
    let values = json!(["hi", {"n": 1, "s": "a\nb ✓"}, [1, 2, 3], null, 4.5]);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script("fork_herd.js"))
            .arg(test_worker())
            .arg(values.to_string())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        report["got"],
        json!(["hi", {"n": 1, "s": "a\nb ✓"}, [1, 2, 3], null, 4.5])
    );
    // Requests through js/herd.js are answered by the Rust worker, in order, null included.
    assert_eq!(
        report["replies"],
        json!([{"echo": "hi"}, {"echo": {"n": 1, "s": "a\nb ✓"}}, {"echo": [1, 2, 3]},
               {"echo": null}, {"echo": 4.5}])
    );
    assert_eq!(
        report["failed"],
        json!({"message": "asked to fail", "code": "HERD_REMOTE"})
    );
    // The Rust worker's own request, answered by herd.onRequest in the Node primary.
    assert_eq!(
        report["asked"],
        json!({"primary_said": {"node_says": {"from": "rust", "s": "a\nb ✓"}}})
    );
    // child.disconnect(): the herd worker sees end-of-stream and exits 0.
    assert_eq!(report["code"], json!(0), "{report}");
}

// Descriptors over the json channel, both ways, as Node passes handles (`NODE_HANDLE`).

/// The next message from `from`, whole (with its descriptors).
async fn whole_message_from(cluster: &mut Cluster, from: WorkerId) -> herd::Message {
    loop {
        match next(cluster).await {
            Event::Message { worker, message } if worker == from => return message,
            Event::Error { worker, error } if worker == from => {
                panic!("worker {worker}: {}", herd::error::chain(&error))
            }
            Event::Exit { worker, status } if worker == from => panic!("worker exited: {status}"),
            _ => {}
        }
    }
}

/// `GET /` on 127.0.0.1:`port`, the whole answer (blocking, with deadlines).
async fn http_get(port: u16) -> String {
    tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        out
    })
    .await
    .unwrap()
}

/// A connected pair over 127.0.0.1: (the client end, the accepted end as herd would hold it).
fn tcp_pair() -> (std::net::TcpStream, OwnedFd) {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    (client, OwnedFd::from(l.accept().unwrap().0))
}

fn read_all(mut s: std::net::TcpStream) -> String {
    use std::io::Read;
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test]
async fn a_listening_socket_sent_to_a_node_worker_serves_http() {
    let (mut cluster, ids) = node_cluster_of("handle_worker.js", 1).await;
    let w = cluster.worker(ids[0]).await.unwrap();
    for op in ["serve", "serve_direct"] {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        w.send_with_fds(&json!({"op": op}), vec![OwnedFd::from(l)])
            .await
            .unwrap();
        let m = message_from(&mut cluster, ids[0]).await;
        assert_eq!(m["serving"], json!(port), "{op}: {m}");
        // Every connection is answered (none lost to a second listener in the worker).
        for _ in 0..6 {
            let answer = http_get(port).await;
            assert!(answer.starts_with("HTTP/1.1 200"), "{op}: {answer}");
            assert!(answer.contains("from node"), "{op}: {answer}");
        }
    }
    // A listening Unix socket too (Node asks its primary by the worker's descriptor number),
    // used as it arrives: a re-listen would leave two listeners in the worker (see docs/node.md).
    let dir = std::env::temp_dir().join(format!("herd-node-handles-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("http.sock");
    let _ = std::fs::remove_file(&path);
    let l = std::os::unix::net::UnixListener::bind(&path).unwrap();
    w.send_with_fds(&json!({"op": "serve_direct"}), vec![OwnedFd::from(l)])
        .await
        .unwrap();
    message_from(&mut cluster, ids[0]).await;
    let answer = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let _ = std::fs::remove_dir_all(path.parent().unwrap());
        out
    })
    .await
    .unwrap();
    assert!(answer.contains("from node"), "unix: {answer}");
    cluster.disconnect_all().await;
}

#[tokio::test]
async fn an_accepted_connection_sent_to_a_node_worker_is_a_net_socket() {
    let (mut cluster, ids) = node_cluster_of("handle_worker.js", 1).await;
    let w = cluster.worker(ids[0]).await.unwrap();
    let (client, conn) = tcp_pair();
    w.send_with_fds(
        &json!({"op": "write", "text": "written by node"}),
        vec![conn],
    )
    .await
    .unwrap();
    let m = message_from(&mut cluster, ids[0]).await;
    assert_eq!(m, json!({"wrote": "written by node"}));
    let got = tokio::task::spawn_blocking(move || read_all(client))
        .await
        .unwrap();
    assert_eq!(got, "written by node");
    // A UDP socket arrives as a dgram.Socket.
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let target = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    target
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let to = target.local_addr().unwrap().port();
    w.send_with_fds(
        &json!({"op": "udp", "text": "datagram", "port": to}),
        vec![OwnedFd::from(udp)],
    )
    .await
    .unwrap();
    assert_eq!(
        message_from(&mut cluster, ids[0]).await,
        json!({"udp": "datagram"})
    );
    let mut buf = [0u8; 64];
    let n = target.recv(&mut buf).unwrap();
    assert_eq!(&buf[..n], b"datagram");
    cluster.disconnect_all().await;
}

#[tokio::test]
async fn a_node_worker_sends_a_connection_to_the_primary() {
    let (mut cluster, ids) = node_cluster_of("handle_worker.js", 1).await;
    let w = cluster.worker(ids[0]).await.unwrap();
    w.send(&json!({"op": "accept"})).await.unwrap();
    let port = message_from(&mut cluster, ids[0]).await["listening"]
        .as_u64()
        .unwrap() as u16;
    // Twice: the second handle only leaves Node once herd acknowledged the first.
    for round in 0..2 {
        let client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut m = whole_message_from(&mut cluster, ids[0]).await;
        assert_eq!(
            m.json().unwrap(),
            json!({"hi": 1}),
            "the envelope is not shown"
        );
        let fds = m.take_fds();
        assert_eq!(fds.len(), 1);
        let mut conn = std::net::TcpStream::from(fds.into_iter().next().unwrap());
        conn.set_nonblocking(false).unwrap();
        std::io::Write::write_all(&mut conn, format!("herd writes {round}").as_bytes()).unwrap();
        drop(conn);
        let got = tokio::task::spawn_blocking(move || read_all(client))
            .await
            .unwrap();
        assert_eq!(got, format!("herd writes {round}"));
    }
    cluster.disconnect_all().await;
}

#[tokio::test]
async fn descriptors_node_cannot_take_are_refused_and_the_worker_lives() {
    let (mut cluster, ids) = node_cluster_of("handle_worker.js", 1).await;
    let w = cluster.worker(ids[0]).await.unwrap();
    let memfd = rustix::fs::memfd_create("herd-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    let file = OwnedFd::from(std::fs::File::open(script("handle_worker.js")).unwrap());
    let (pipe_r, _pipe_w) = rustix::pipe::pipe().unwrap();
    for fd in [memfd, file, pipe_r] {
        match w.send_with_fds(&json!({"op": "write"}), vec![fd]).await {
            Err(herd::Error::NodeHandle(NodeHandleError::NotASocket(_))) => {}
            other => panic!("{other:?}"),
        }
    }
    let (_c1, a) = tcp_pair();
    let (_c2, b) = tcp_pair();
    let e = w.send_with_fds(&json!({}), vec![a, b]).await.unwrap_err();
    assert!(
        matches!(e, herd::Error::NodeHandle(NodeHandleError::Count(2))),
        "{e:?}"
    );
    assert!(
        herd::error::chain(&e).contains("exactly one"),
        "{}",
        herd::error::chain(&e)
    );
    // Nothing was written: the worker is alive and answers.
    w.send(&json!("still there?")).await.unwrap();
    let m = message_from(&mut cluster, ids[0]).await;
    assert_eq!(m, json!({"echo": "still there?", "handle": "none"}));
    cluster.disconnect_all().await;
}

#[tokio::test]
async fn handles_sent_back_to_back_all_arrive() {
    let (mut cluster, ids) = node_cluster_of("handle_worker.js", 1).await;
    let w = cluster.worker(ids[0]).await.unwrap();
    let mut clients = Vec::new();
    for i in 0..3 {
        let (client, conn) = tcp_pair();
        // Each send returns once its handle is on its way: after the worker acknowledged the
        // one before.
        w.send_with_fds(&json!({"op": "write", "text": format!("n{i}")}), vec![conn])
            .await
            .unwrap();
        clients.push(client);
    }
    let mut wrote = Vec::new();
    for _ in 0..3 {
        wrote.push(message_from(&mut cluster, ids[0]).await["wrote"].clone());
    }
    assert_eq!(wrote, [json!("n0"), json!("n1"), json!("n2")]);
    for (i, client) in clients.into_iter().enumerate() {
        let got = tokio::task::spawn_blocking(move || read_all(client))
            .await
            .unwrap();
        assert_eq!(got, format!("n{i}"));
    }
    cluster.disconnect_all().await;
}

/// A Node primary's `child.send(msg, socket)` to a herd Rust worker: the worker acknowledges
/// each handle (Node sends the second only then) and gets `msg`.
#[tokio::test]
async fn a_node_primary_sends_sockets_to_a_herd_rust_worker() {
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script("fork_herd_handles.js"))
            .arg(test_worker())
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "node failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["got"], json!([{"n": 1}, {"n": 2}]));
}

/// A `NODE_HANDLE` line that comes without its descriptor breaks the protocol: that worker's
/// channel is closed, the other worker goes on.
#[tokio::test]
async fn a_node_handle_without_its_descriptor_is_contained() {
    let (mut cluster, ids) = node_cluster_of("handle_worker.js", 2).await;
    let liar = cluster.worker(ids[0]).await.unwrap();
    liar.send(&json!({"op": "fake_handle"})).await.unwrap();
    loop {
        match next(&mut cluster).await {
            Event::Error { worker, error } => {
                assert_eq!(worker, ids[0]);
                let text = herd::error::chain(&error);
                assert!(text.contains("file descriptors"), "{text}");
                break;
            }
            Event::Message { worker, .. } => panic!("unexpected message from {worker}"),
            _ => {}
        }
    }
    let other = cluster.worker(ids[1]).await.unwrap();
    other.send(&json!("still there?")).await.unwrap();
    assert_eq!(
        message_from(&mut cluster, ids[1]).await,
        json!({"echo": "still there?", "handle": "none"})
    );
    cluster.disconnect_all().await;
}
