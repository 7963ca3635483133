//! The meter on readers that answer, and on one that blocks: callers answer by their
//! deadline, and one thread's worth of reads is all a stuck reader costs.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Depth, Figures, Meter, Reader, FRESH, WAIT};

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
    let meter = Meter::with_reader(Depth::Full, FRESH, counting(calls.clone()));
    let got = meter.read(&[7, 9]).await;
    assert_eq!(got[&7].rss, Some(70));
    assert_eq!(got[&9].rss, Some(90));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_fresh_figure_serves_the_next_caller_and_a_missing_pid_is_read() {
    let calls = Arc::new(AtomicUsize::new(0));
    // Figures kept fresh a long time, so that reuse does not depend on the machine's speed.
    let long = Duration::from_secs(60);
    let meter = Meter::with_reader(Depth::Full, long, counting(calls.clone()));
    let first = meter.read(&[1]).await;
    let again = meter.read(&[1, 0]).await;
    assert_eq!(again, first, "the same figures; pid 0 is never read");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "reused, not read again");
    let both = meter.read(&[1, 2]).await;
    assert_eq!(both.len(), 2);
    assert_eq!(
        calls.load(Ordering::SeqCst),
        2,
        "only the pid not read yet is read"
    );
}

#[tokio::test]
async fn a_stale_figure_is_read_again() {
    let calls = Arc::new(AtomicUsize::new(0));
    let meter = Meter::with_reader(Depth::Private, FRESH, counting(calls.clone()));
    let first = meter.read(&[1]).await;
    tokio::time::sleep(FRESH + Duration::from_millis(20)).await;
    let second = meter.read(&[1]).await;
    assert_ne!(first[&1].private, second[&1].private, "read again");
}

/// The red-team case: jobs finish faster than a waiter is polled, so by then the last job is
/// not the one that read its pids. Each caller still gets its own pids' figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_caller_gets_its_pids_whichever_job_read_them() {
    let meter = Arc::new(Meter::with_reader(
        Depth::Full,
        FRESH,
        counting(Arc::new(AtomicUsize::new(0))),
    ));
    let calls: Vec<_> = (1..41u32)
        .map(|i| {
            let m = meter.clone();
            tokio::spawn(async move { (i, m.read(&[i, 1000 + i]).await) })
        })
        .collect();
    for c in calls {
        let (i, got) = c.await.unwrap();
        assert_eq!(got[&i].rss, Some(u64::from(i) * 10));
        assert_eq!(got[&(1000 + i)].rss, Some(u64::from(1000 + i) * 10));
    }
}

/// The finding this module answers: a read stuck in the kernel. Fifty callers at once, then
/// fifty more: each answers within its deadline with no figures (not stale ones), and the
/// reader was entered once.
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
    let meter = Arc::new(Meter::with_reader(Depth::Full, FRESH, reader));
    for round in 0..2 {
        let started = Instant::now();
        let calls: Vec<_> = (0..50)
            .map(|i| {
                let m = meter.clone();
                tokio::spawn(async move { m.read(&[100 + i]).await })
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
        if pid == 5 {
            j.fetch_add(1, Ordering::SeqCst);
        }
        std::thread::sleep(Duration::from_millis(30));
        Figures {
            private: Some(1),
            ..Figures::default()
        }
    });
    let meter = Arc::new(Meter::with_reader(Depth::Private, FRESH, reader));
    let calls: Vec<_> = (0..20)
        .map(|_| {
            let m = meter.clone();
            tokio::spawn(async move { m.read(&[5]).await })
        })
        .collect();
    for c in calls {
        assert_eq!(c.await.unwrap()[&5].private, Some(1));
    }
    assert!(
        jobs.load(Ordering::SeqCst) <= 2,
        "{jobs:?} jobs for 20 callers"
    );
}
