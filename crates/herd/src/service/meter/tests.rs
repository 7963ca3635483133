//! The meter on readers that answer, and on one that blocks: callers answer by their
//! deadline, and one thread's worth of reads is all a stuck reader costs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Depth, Figures, Meter, Reader, WAIT};

fn counting(calls: Arc<AtomicUsize>) -> Arc<Reader> {
    Arc::new(move |pid, depth| {
        let n = calls.fetch_add(1, Ordering::SeqCst) as u64 + 1;
        Figures {
            rss: (depth == Depth::Full).then_some(u64::from(pid) * 10),
            private: Some(n),
            ..Figures::default()
        }
    })
}

#[tokio::test]
async fn figures_come_back_for_each_pid_asked() {
    let calls = Arc::new(AtomicUsize::new(0));
    let meter = Meter::with_reader(counting(calls.clone()));
    let got = meter.read(&[7, 9], Depth::Full).await;
    assert_eq!(got[&7].rss, Some(70));
    assert_eq!(got[&9].rss, Some(90));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_fresh_reading_serves_the_next_caller_and_a_deeper_one_does_not_come_from_a_shallow() {
    let calls = Arc::new(AtomicUsize::new(0));
    let meter = Meter::with_reader(counting(calls.clone()));
    meter.read(&[1], Depth::Full).await;
    // Within FRESH: the same reading, no new read.
    let again = meter.read(&[1], Depth::Private).await;
    assert_eq!(again[&1].rss, Some(10));
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // A pid the reading lacks needs a new job.
    meter.read(&[1, 2], Depth::Private).await;
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    // That job was shallow: a full read needs another.
    let full = meter.read(&[2], Depth::Full).await;
    assert_eq!(full[&2].rss, Some(20));
}

#[tokio::test]
async fn a_stale_reading_is_read_again() {
    let calls = Arc::new(AtomicUsize::new(0));
    let meter = Meter::with_reader(counting(calls.clone()));
    let first = meter.read(&[1], Depth::Private).await;
    tokio::time::sleep(super::FRESH + Duration::from_millis(20)).await;
    let second = meter.read(&[1], Depth::Private).await;
    assert_ne!(first[&1].private, second[&1].private, "read again");
}

/// The finding this module answers: a read stuck in the kernel. Fifty callers at once, then
/// fifty more: each answers within its deadline, and the reader was entered once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stuck_reader_costs_one_read_and_every_caller_answers_by_its_deadline() {
    let entered = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let (e, r) = (entered.clone(), release.clone());
    let reader: Arc<Reader> = Arc::new(move |_, _| {
        e.fetch_add(1, Ordering::SeqCst);
        while !r.load(Ordering::SeqCst) {
            std::thread::sleep(Duration::from_millis(5));
        }
        Figures::default()
    });
    let meter = Arc::new(Meter::with_reader(reader));
    for round in 0..2 {
        let started = Instant::now();
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let m = meter.clone();
                tokio::spawn(async move { m.read(&[100 + i], Depth::Full).await })
            })
            .collect();
        for c in calls {
            assert!(c.await.unwrap().is_empty(), "nothing was read");
        }
        let took = started.elapsed();
        assert!(took < WAIT * 3, "round {round} took {took:?}");
    }
    assert_eq!(
        entered.load(Ordering::SeqCst),
        1,
        "one read, however many callers"
    );
    release.store(true, Ordering::SeqCst);
}

/// Callers that arrive while a job runs share the next one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_during_a_job_are_merged_into_one_more() {
    let jobs = Arc::new(AtomicUsize::new(0));
    let j = jobs.clone();
    let reader: Arc<Reader> = Arc::new(move |pid, _| {
        if pid == 0 {
            j.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(30));
        Figures {
            private: Some(1),
            ..Figures::default()
        }
    });
    let meter = Arc::new(Meter::with_reader(reader));
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let m = meter.clone();
            tokio::spawn(async move { m.read(&[0], Depth::Private).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap()[&0].private, Some(1));
    }
    assert!(
        jobs.load(Ordering::SeqCst) <= 2,
        "{jobs:?} jobs for 20 callers"
    );
}
