//! A big value's Node text is made off the runtime's threads (issue 19): two Node-json workers
//! (`sh` writing exact lines to their channels) each ask for four 24 MiB text values (the same
//! four: each text is made once, and shared by both workers' replies, `cache/node_text.rs`).
//! Measuring such a text (a pass over the value) and encoding it take a debug build hundreds of
//! milliseconds; done on the task that supervises the worker, or on any of the runtime's worker
//! threads, they stall supervision, the service's control calls and every timer for that long
//! (measuring on the runtime: a 5 ms timer 690 ms late). A ticker in the same runtime measures
//! how late its 5 ms sleeps wake while the replies are made.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herd::cache::{FileSource, Hub};

/// The value's size: text, so a Node peer gets it as a JSON string.
const VALUE: usize = 24 << 20;
/// Calls each worker sends, one per value.
const CALLS: usize = 4;
/// The latest a 5 ms timer may wake while replies are encoded (the machine is shared and the
/// build unoptimised; a reply encoded on a runtime thread costs several hundred ms).
const MAX_LATE: Duration = Duration::from_millis(150);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn encoding_big_node_replies_never_stalls_the_runtime() {
    let data: BTreeMap<String, Bytes> = (0..CALLS)
        .map(|i| (format!("big{i}"), Bytes::from(vec![b'x'; VALUE])))
        .collect();
    let hub = Hub::new(
        FileSource::from_map("big", data),
        herd_test_support::cache::quiet(),
    );
    // Loaded (one miss each) before the workers ask.
    for i in 0..CALLS {
        assert_eq!(
            hub.get(&format!("big{i}")).await.unwrap().unwrap().len(),
            VALUE
        );
    }
    let before = herd_test_support::process::rss_kb(std::process::id()) << 10;

    let stop = Arc::new(AtomicBool::new(false));
    let worst = Arc::new(AtomicU64::new(0));
    let ticker = {
        let (stop, worst) = (stop.clone(), worst.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                tokio::time::sleep(Duration::from_millis(5)).await;
                let late = t.elapsed().saturating_sub(Duration::from_millis(5));
                worst.fetch_max(late.as_micros() as u64, Ordering::Relaxed);
            }
        })
    };

    let cluster = herd_test_support::cache::unread_calls(
        &hub,
        2,
        CALLS,
        ("", r#"{"op":"get","key":"big%d"}"#, "$i"),
    )
    .await;

    // Until every call was looked up and the four texts were made: the primary has grown by
    // that much.
    let deadline = Instant::now() + Duration::from_secs(60);
    let made = || {
        let rss = herd_test_support::process::rss_kb(std::process::id()) << 10;
        rss.saturating_sub(before) >= 4 * VALUE as u64
    };
    while (hub.stats().hits < 2 * CALLS as u64 || !made()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(made(), "four texts were never made");
    stop.store(true, Ordering::Relaxed);
    ticker.await.unwrap();
    let late = Duration::from_micros(worst.load(Ordering::Relaxed));
    println!(
        "{} lookups of a {VALUE}-byte value: a 5 ms timer woke at worst {late:?} late",
        hub.stats().hits
    );
    // The first loads were the misses; every worker call is a hit.
    let s = hub.stats();
    assert_eq!(s.hits, 2 * CALLS as u64, "every call was looked up: {s:?}");
    assert!(
        late < MAX_LATE,
        "a 5 ms timer woke {late:?} late while big replies were encoded"
    );
    cluster.shutdown().await;
}
