//! Node interop with the real `node`: a herd primary runs unchanged Node workers (Node's json
//! serialization, `process.send` / `process.on('message')`), and a Node primary's
//! `child_process.fork` runs a herd Rust worker. Node's internal `NODE_*` messages never reach
//! user code; garbage from a Node worker is contained to that worker.

use std::process::Command;
use std::time::Duration;

use herd::{Cluster, Codec, Event, WorkerId};
use serde_json::{json, Value};

const WORKER: &str = env!("CARGO_BIN_EXE_herd-test-worker");
const DEADLINE: Duration = Duration::from_secs(20);

fn script(name: &str) -> String {
    format!("{}/tests/node/{name}", env!("CARGO_MANIFEST_DIR"))
}

async fn next(cluster: &mut Cluster) -> Event {
    tokio::time::timeout(DEADLINE, cluster.next_event())
        .await
        .expect("an event within the deadline")
        .expect("the cluster is running")
}

async fn node_cluster(n: usize) -> (Cluster, Vec<WorkerId>) {
    let mut cluster = Cluster::builder()
        .workers(n)
        .program("node")
        .args([script("echo_worker.js")])
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

    // Broadcast reaches every Node worker.
    cluster.broadcast(&json!({"all": true})).await;
    for id in &ids {
        assert_eq!(
            message_from(&mut cluster, *id).await["echo"],
            json!({"all": true})
        );
    }

    // disconnect(): Node's 'disconnect' fires, the worker exits 0, events come in order.
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

#[tokio::test]
async fn a_node_primary_forks_a_herd_rust_worker() {
    let values = json!(["hi", {"n": 1, "s": "a\nb ✓"}, [1, 2, 3], null, 4.5]);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("node")
            .arg(script("fork_herd.js"))
            .arg(WORKER)
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
    // child.disconnect(): the herd worker sees end-of-stream and exits 0.
    assert_eq!(report["code"], json!(0), "{report}");
}
