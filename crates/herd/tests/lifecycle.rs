//! The cluster's lifecycle as a user meets it: listeners every worker gets, what a failed send
//! says, shutting down, dropping the `Cluster`. Real worker processes; every wait has a deadline.

use std::io::{BufRead, BufReader};
use std::time::Duration;

use herd::{Cluster, ClusterBuilder, Error, Event, WorkerId};
use serde_json::{json, Value};

use herd_test_support::process::pid_alive as alive;
const DEADLINE: Duration = Duration::from_secs(20);

fn builder(n: usize) -> ClusterBuilder {
    herd_test_support::echo_cluster(n)
}

async fn next(cluster: &mut Cluster) -> Option<Event> {
    tokio::time::timeout(DEADLINE, cluster.next_event())
        .await
        .expect("no event before the deadline")
}

async fn message_from(cluster: &mut Cluster, from: WorkerId) -> Value {
    loop {
        if let Some(Event::Message { worker, message }) = next(cluster).await {
            if worker == from {
                return message.json().unwrap();
            }
        }
    }
}

#[tokio::test]
async fn every_worker_gets_the_clusters_listeners_safely() {
    let a = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let b = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (addr_a, addr_b) = (a.local_addr().unwrap(), b.local_addr().unwrap());
    let mut cluster = builder(2).listener(a).listener(b).start().await.unwrap();
    for w in cluster.workers().await {
        w.send(&json!({"op": "take_listeners"})).await.unwrap();
        let report = message_from(&mut cluster, w.id()).await;
        assert_eq!(report, json!({"listeners": 2, "second_take_refused": true}));
    }
    // Each worker greets one connection on each listener: four greetings from both workers.
    let mut greeted = std::collections::BTreeSet::new();
    for addr in [addr_a, addr_a, addr_b, addr_b] {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        assert!(line.starts_with("hello from worker "), "{line:?}");
        greeted.insert((addr, line));
    }
    assert_eq!(
        greeted.len(),
        4,
        "each worker answered on each listener: {greeted:?}"
    );
    cluster.shutdown().await;
}

#[tokio::test]
async fn sends_and_requests_to_an_exited_worker_fail_alike() {
    let mut cluster = builder(1).start().await.unwrap();
    let w = cluster.workers().await.remove(0);
    w.send(&json!({"op": "exit", "code": 3})).await.unwrap();
    let status = tokio::time::timeout(DEADLINE, w.wait())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.code, Some(3));
    // The supervisor closes the channel once the worker is gone; both calls then say so alike.
    while !w.is_closed() {
        let _ = next(&mut cluster).await;
    }
    assert!(matches!(w.send(&"hi").await, Err(Error::ChannelClosed)));
    let r: Result<Value, _> = w.request(&"hi").await;
    assert!(matches!(r, Err(Error::ChannelClosed)), "{r:?}");
}

#[tokio::test]
async fn shutdown_ends_the_event_stream_after_every_exit() {
    let mut cluster = builder(2).start().await.unwrap();
    let pids: Vec<u32> = cluster.workers().await.iter().map(|w| w.pid()).collect();
    tokio::time::timeout(DEADLINE, cluster.shutdown())
        .await
        .expect("shutdown within the deadline");
    assert!(matches!(cluster.fork().await, Err(Error::ClusterGone)));
    let mut exits = 0;
    while let Some(ev) = next(&mut cluster).await {
        if let Event::Exit { status, .. } = ev {
            assert_eq!(status.code, Some(0), "disconnected workers exit 0");
            exits += 1;
        }
    }
    assert_eq!(exits, 2, "every exit came before the end of the stream");
    assert!(pids.iter().all(|p| !alive(u64::from(*p))));
}

#[tokio::test]
async fn dropping_the_cluster_stops_its_workers() {
    let cluster = builder(2).start().await.unwrap();
    let workers = cluster.workers().await;
    drop(cluster);
    for w in workers {
        let status = tokio::time::timeout(DEADLINE, w.wait())
            .await
            .expect("the worker exits once its cluster is dropped")
            .unwrap();
        assert_eq!(status.code, Some(0), "it was disconnected, not killed");
        assert!(!alive(u64::from(w.pid())));
    }
}

#[tokio::test]
async fn a_failed_start_leaves_no_worker_behind() {
    // The channel's number collides with a listener's: refused before any fork.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let r = builder(2).listener(l).channel_fd(3).start().await;
    assert!(matches!(r, Err(Error::Spawn(_))), "{:?}", r.err());
    // A program that does not exist: the first fork fails, nothing runs.
    let r = builder(2).program("/nonexistent/herd-worker").start().await;
    assert!(matches!(r, Err(Error::Spawn(_))), "{:?}", r.err());
}

/// A library user's "forever" (`Duration::MAX`) as the grace period and the handshake timeout
/// is a far deadline, not a panic in the worker's supervisor: the cluster starts, shuts down
/// within the deadline, and its workers exit as disconnected workers do.
#[tokio::test]
async fn forever_as_grace_and_handshake_timeout_still_shuts_down() {
    let mut cluster = builder(2)
        .grace(Duration::MAX)
        .handshake_timeout(Duration::MAX)
        .start()
        .await
        .unwrap();
    tokio::time::timeout(DEADLINE, cluster.shutdown())
        .await
        .expect("shutdown within the deadline");
    let mut exits = 0;
    while let Some(ev) = next(&mut cluster).await {
        if let Event::Exit { status, .. } = ev {
            assert_eq!(status.code, Some(0), "disconnected workers exit 0");
            exits += 1;
        }
    }
    assert_eq!(exits, 2);
}
