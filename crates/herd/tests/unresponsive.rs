//! Hung workers through the library (`ClusterBuilder::unresponsive`, issue 20): a herd worker
//! stopped with SIGSTOP answers no ping (its reader task cannot run) and is reported
//! unresponsive and killed, while the worker beside it goes on answering; a program on the json
//! codec that never speaks herd's channel is never judged.

use std::time::{Duration, Instant};

use herd::{Cluster, Codec, Event};
use herd_test_support::echo_cluster;
use herd_test_support::events::until;
use serde_json::Value;

const LIMIT: Duration = Duration::from_millis(600);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_herd_worker_is_reported_and_killed_and_the_other_goes_on() {
    let mut cluster = echo_cluster(2)
        .unresponsive(Some(LIMIT))
        .start()
        .await
        .unwrap();
    // Forks and onlines in one loop: a worker's online may come before the other's fork.
    let (mut pids, mut online) = (Vec::new(), 0);
    while pids.len() < 2 || online < 2 {
        match until(&mut cluster, |e| {
            matches!(e, Event::Fork { .. } | Event::Online { .. })
        })
        .await
        {
            (Event::Fork { worker, pid }, _) => pids.push((worker, pid)),
            _ => online += 1,
        }
    }
    // Both answer pings for a while: nobody is judged.
    let calm = Instant::now();
    while calm.elapsed() < 3 * LIMIT {
        for w in cluster.workers().await {
            let r: Value = w.request(&"alive?").await.unwrap();
            assert_eq!(r["echo"], "alive?");
        }
    }
    let (victim, pid) = pids[0];
    let stopped = Instant::now();
    let p = rustix::process::Pid::from_raw(pid as i32).unwrap();
    rustix::process::kill_process(p, rustix::process::Signal::STOP).unwrap();
    let (ev, skipped) = until(&mut cluster, |e| matches!(e, Event::Unresponsive { .. })).await;
    let took = stopped.elapsed();
    assert!(
        skipped.iter().all(|e| !matches!(e, Event::Exit { .. })),
        "{skipped:?}"
    );
    let Event::Unresponsive { worker, silent } = ev else {
        unreachable!()
    };
    assert_eq!(worker, victim, "the stopped one, not the other");
    assert!(silent >= LIMIT, "{silent:?}");
    assert!(took < 4 * LIMIT, "seen after {took:?}");
    let (ev, _) = until(&mut cluster, |e| matches!(e, Event::Exit { .. })).await;
    let Event::Exit { worker, status } = ev else {
        unreachable!()
    };
    assert_eq!((worker, status.signal), (victim, Some(9)), "killed");
    // The other one was never judged and still answers.
    let other = cluster
        .worker(pids[1].0)
        .await
        .expect("the other worker lives");
    let r: Value = other.request(&"still?").await.unwrap();
    assert_eq!(r["echo"], "still?");
    cluster.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_program_that_never_answers_is_never_judged() {
    let mut cluster = Cluster::builder()
        .workers(1)
        .program("sh")
        .args(["-c", "exec sleep 30"])
        .codec(Codec::NodeJson)
        .grace(Duration::from_millis(200))
        .unresponsive(Some(Duration::from_millis(100)))
        .start()
        .await
        .unwrap();
    // Many times the limit: the events that come are its fork and online, nothing else.
    let quiet = tokio::time::timeout(Duration::from_secs(2), async {
        loop {
            let ev = cluster.next_event().await;
            if !matches!(ev, Some(Event::Fork { .. } | Event::Online { .. })) {
                return ev;
            }
        }
    })
    .await;
    assert!(quiet.is_err(), "an event came: {quiet:?}");
    cluster.shutdown().await;
}
