//! The supervised service as a library, with real worker processes (`herd-test-worker`): a
//! builder's worker count that disagrees with the service's is refused, each worker knows its slot, cluster events (requests
//! included) reach the user, crashes and reloads are reported as events, `workers()` hands out
//! the serving workers. Every wait has a deadline; nothing sleeps to synchronise.

use std::time::Duration;

use herd::service::{Outcome, ServiceConfig, ServiceEvent};
use herd::{Cluster, Event, WorkerId};
use serde_json::json;
use tokio::sync::mpsc;

use herd_test_support::test_worker;
const DEADLINE: Duration = Duration::from_secs(20);

/// Waits for an event matching `want` (answering or dropping requests on the way as `want`
/// decides: it gets every event).
async fn until<T>(
    events: &mut mpsc::Receiver<ServiceEvent>,
    mut want: impl FnMut(ServiceEvent) -> Option<T>,
) -> T {
    tokio::time::timeout(DEADLINE, async {
        loop {
            let ev = events.recv().await.expect("the events ended");
            if let Some(t) = want(ev) {
                return t;
            }
        }
    })
    .await
    .expect("no such event before the deadline")
}

fn slot_of(pid: u32) -> Option<String> {
    let environ = std::fs::read(format!("/proc/{pid}/environ")).ok()?;
    environ
        .split(|b| *b == 0)
        .find_map(|kv| kv.strip_prefix(b"HERD_WORKER_SLOT="))
        .map(|v| String::from_utf8_lossy(v).into_owned())
}

/// The service forks its own workers: a builder's count it would not honour is refused before
/// anything starts, the same count is taken.
#[tokio::test]
async fn a_builder_worker_count_the_service_would_not_honour_is_refused() {
    let builder = |n| {
        Cluster::builder()
            .workers(n)
            .program(test_worker())
            .args(Vec::<String>::new())
            .env("HERD_TEST_MODE", "echo")
    };
    let config = || {
        let mut config = ServiceConfig::default();
        config.workers = 2;
        config
    };
    match herd::service::start(builder(5), config()).await {
        Err(herd::Error::Config(why)) => assert!(why.contains("workers(5)"), "{why}"),
        Err(e) => panic!("another error: {e}"),
        Ok(_) => panic!("a count of 5 for a service of 2 was taken"),
    }
    let service = herd::service::start(builder(2), config()).await.unwrap();
    let (handle, mut events) = (service.handle, service.events);
    let mut serving = 0;
    while serving < 2 {
        until(&mut events, |ev| {
            matches!(ev, ServiceEvent::Serving { .. }).then_some(())
        })
        .await;
        serving += 1;
    }
    handle
        .stop(herd::service::StopMode::Graceful)
        .await
        .unwrap();
    assert_eq!(service.task.await.unwrap(), Outcome::Stopped);
}

#[tokio::test]
async fn a_service_supervises_reports_and_hands_out_its_workers() {
    let builder = Cluster::builder()
        .program(test_worker())
        .args(Vec::<String>::new())
        .env("HERD_TEST_MODE", "echo")
        .grace(Duration::from_secs(2));
    let mut config = ServiceConfig::default();
    config.workers = 2;
    config.restart.backoff_min = Duration::from_millis(20);
    let service = herd::service::start(builder, config).await.unwrap();
    let (handle, mut events, task) = (service.handle, service.events, service.task);

    // Two slots, each served, and the cluster's own events come through.
    let mut serving = Vec::new();
    let mut online = 0;
    while serving.len() < 2 || online < 2 {
        let ev = until(&mut events, |ev| match ev {
            ServiceEvent::Serving { slot, worker } => Some(Some((slot, worker))),
            ServiceEvent::Worker(Event::Online { .. }) => Some(None),
            _ => None,
        })
        .await;
        match ev {
            Some(s) => serving.push(s),
            None => online += 1,
        }
    }
    serving.sort();
    assert_eq!(serving, [(0, WorkerId(1)), (1, WorkerId(2))]);
    let workers = handle.workers().await.unwrap();
    assert_eq!(workers.len(), 2);
    for (slot, w) in &workers {
        assert_eq!(slot_of(w.pid()), Some(slot.to_string()));
    }

    // A worker's request reaches the user, who answers it; a dropped one is answered with an
    // error.
    let (_, w0) = &workers[0];
    for (value, answer) in [("ping", true), ("drop me", false)] {
        w0.send(&json!({"op": "ask", "value": value}))
            .await
            .unwrap();
        let report = until(&mut events, |ev| match ev {
            ServiceEvent::Worker(Event::Request { request, .. }) => {
                if answer {
                    tokio::spawn(async move { request.reply(&"pong").await });
                }
                None
            }
            ServiceEvent::Worker(Event::Message { message, .. }) => message.json().ok(),
            _ => None,
        })
        .await;
        if answer {
            assert_eq!(report, json!({"primary_said": "pong"}));
        } else {
            let failed = report["primary_failed"].as_str().unwrap_or_default();
            assert!(failed.contains("dropped"), "{report}");
        }
    }

    // A crash is reported with its status and delay, and the slot is served again.
    let (_, w1) = &workers[1];
    w1.send(&json!({"op": "exit", "code": 3})).await.unwrap();
    let (status, delay) = until(&mut events, |ev| match ev {
        ServiceEvent::Restarting {
            slot: 1,
            worker: Some(WorkerId(2)),
            status,
            delay,
        } => Some((status, delay)),
        _ => None,
    })
    .await;
    assert_eq!(status.and_then(|s| s.code), Some(3));
    assert_eq!(delay, Duration::from_millis(20));
    let again = until(&mut events, |ev| match ev {
        ServiceEvent::Serving { slot: 1, worker } => Some(worker),
        _ => None,
    })
    .await;
    assert_eq!(again, WorkerId(3));

    // A rolling reload, reported; the reader keeps reading meanwhile.
    let reload = tokio::spawn({
        let handle = handle.clone();
        async move { handle.reload().await }
    });
    let replaced = until(&mut events, |ev| match ev {
        ServiceEvent::Reloaded { replaced } => Some(replaced),
        _ => None,
    })
    .await;
    assert_eq!(replaced, 2);
    assert_eq!(reload.await.unwrap().unwrap(), 2);
    let status = handle.status().await.unwrap();
    assert_eq!(status.reloads, 1);
    assert_eq!(status.workers[0].restarts, 0);
    assert_eq!(status.workers[1].restarts, 1);

    // Stop: every worker exits, the events end, the outcome is Stopped.
    let stop = tokio::spawn({
        let handle = handle.clone();
        async move { handle.stop(herd::service::StopMode::Graceful).await }
    });
    let drained = tokio::time::timeout(DEADLINE, async { while events.recv().await.is_some() {} });
    drained.await.expect("the events end after the service");
    stop.await.unwrap().unwrap();
    assert_eq!(task.await.unwrap(), Outcome::Stopped);
    assert!(handle.status().await.is_err());
}
