//! Floods from a worker that writes to its channel and never reads, played by `sh` writing raw
//! Node json lines to `$NODE_CHANNEL_FD`, against the real `herd` binary: a request flood must
//! not stall the service (status answers, a killed worker is restarted), and a cache-call flood
//! must not grow the primary (its calls are bounded; past the bound the worker is not read).

use std::time::{Duration, Instant};

mod common;

use common::*;
use herd_test_support::process::rss_kb;
use rustix::process::{kill_process, Pid, Signal};

/// The longest `herd status` may take while a worker floods.
const STATUS_WITHIN: Duration = Duration::from_secs(1);

/// The most the primary's RSS may grow during a flood.
const MAX_GROWTH_KB: u64 = 64 * 1024;

/// `sh` for slot 0 writing `count` lines `{"cmd":CMD,"id":N,"data":DATA}` (N from 1) to its
/// channel, then saying `flood written` and sleeping without reading; other slots just sleep.
fn flooder(cmd: &str, data: &str, count: u64) -> String {
    format!(
        r#"if [ "$HERD_WORKER_SLOT" = 0 ]; then echo flooding; seq 1 {count} | sed 's/.*/{{"cmd":"{cmd}","id":&,"data":{data}}}/' >&$NODE_CHANNEL_FD; echo flood written; fi; exec sleep 600"#
    )
}

/// `herd status`, which must answer within [`STATUS_WITHIN`].
fn quick_status(herd: &Herd, when: &str) -> Report {
    let t = Instant::now();
    let s = herd
        .try_status()
        .unwrap_or_else(|e| panic!("herd status {when}: {e}"));
    let took = t.elapsed();
    assert!(took < STATUS_WITHIN, "herd status took {took:?} {when}");
    s
}

fn kill(pid: u64) {
    kill_process(Pid::from_raw(pid as i32).unwrap(), Signal::KILL).unwrap();
}

/// `herd stop` answers at once and herd ends, the flooder included.
fn stop(mut herd: Herd) {
    let t = Instant::now();
    let out = herd.ctl(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        t.elapsed() < STATUS_WITHIN,
        "herd stop took {:?}",
        t.elapsed()
    );
    herd.wait();
}

#[test]
fn a_request_flood_from_a_worker_that_never_reads_leaves_the_service_responsive() {
    // Ten times the issue's 20,000: each used to hold a task and its request for 30 s.
    let script = flooder("NODE_HERD_REQ", "1", 200_000);
    let herd = Herd::start(
        "req-flood",
        &[
            "-w",
            "2",
            "--grace",
            "1",
            "--backoff-min",
            "0.05",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    herd.status_until("two workers running", |s| running(s) == 2);
    herd.stdout_line(|l| l.contains("flooding"));
    let before = rss_kb(herd.pid());
    herd.stdout_line(|l| l.contains("flood written"));
    // Every request is read: their answers are queued or dropped, none is waited for, so
    // nothing is kept for them.
    let s = quick_status(&herd, "after the flood");
    let grown = rss_kb(herd.pid()).saturating_sub(before);
    eprintln!("200,000 requests: herd RSS +{grown} kB");
    assert!(
        grown < MAX_GROWTH_KB,
        "herd grew {grown} kB during a request flood"
    );
    assert_eq!(running(&s), 2);
    // The healthy worker (slot 1) is killed and comes back.
    let healthy = s
        .status
        .workers
        .iter()
        .find(|w| w.slot == Some(1))
        .map(|w| u64::from(w.pid))
        .expect("slot 1 has a worker");
    kill(healthy);
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = quick_status(&herd, "while the killed worker is replaced");
        let p = pids(&s);
        if p.len() == 2 && !p.contains(&healthy) && running(&s) == 2 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the killed worker never came back: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    stop(herd);
}

/// A cache-call flood of `count` `stats` calls for `seconds`: the primary's RSS, sampled every
/// 100 ms, grows less than 64 MB, and herd keeps answering.
fn cache_flood(name: &str, cache: &[&str], count: u64, seconds: u64) {
    let script = flooder("NODE_HERD_CACHE", r#"{"op":"stats"}"#, count);
    let mut args = vec!["-w", "1", "--grace", "1"];
    args.extend(cache);
    args.extend(["--", "sh", "-c", &script]);
    let herd = Herd::start(name, &args);
    herd.status_until("the worker running", |s| running(s) == 1);
    herd.stdout_line(|l| l.contains("flooding"));
    let before = rss_kb(herd.pid());
    let (mut max, mut next_status) = (before, Instant::now());
    let end = Instant::now() + Duration::from_secs(seconds);
    while Instant::now() < end {
        max = max.max(rss_kb(herd.pid()));
        if Instant::now() >= next_status {
            quick_status(&herd, "during the cache flood");
            next_status = Instant::now() + Duration::from_secs(1);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let grown = max.saturating_sub(before);
    eprintln!("{name}: {count} cache calls offered for {seconds} s: herd RSS {before} kB -> max {max} kB (+{grown} kB)");
    assert!(
        grown < 64 * 1024,
        "herd grew {grown} kB during a cache-call flood"
    );
    stop(herd);
}

#[test]
fn a_cache_call_flood_from_a_worker_that_never_reads_is_bounded() {
    let snapshot = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/demo/cache.json"
    );
    cache_flood(
        "cache-flood",
        &["--cache-snapshot", snapshot],
        5_000_000,
        20,
    );
}

#[test]
fn a_cache_call_flood_without_a_cache_is_bounded() {
    cache_flood("cache-flood-nohub", &[], 5_000_000, 10);
}
