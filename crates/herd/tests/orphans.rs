//! The library's side of "no orphans": once a worker exited, what it left in its process group
//! is killed, and with `ClusterBuilder::subreaper(true)` this process reaps it, while every
//! worker's own exit status still reaches its supervisor (the reaper never steals it). Alone in
//! its binary: a subreaper changes the whole test process.

use std::time::{Duration, Instant};

use herd::{Cluster, Event};
use herd_test_support::events::next;
use herd_test_support::process::unique;

/// The pids of the processes whose command line is exactly `sleep ARG` (zombies included).
fn sleeping(arg: &str) -> Vec<u32> {
    let want = format!("sleep\0{arg}\0");
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| c == want.as_bytes())
        })
        .collect()
}

#[tokio::test]
async fn what_workers_leave_behind_is_killed_and_reaped_and_their_statuses_are_kept() {
    let left = format!("1000.{}", unique() % 1_000_000_000);
    let script = format!("(exec sleep {left}) & exit $HERD_WORKER_ID");
    let mut cluster = Cluster::builder()
        .workers(4)
        .program("sh")
        .args(["-c", &script])
        .codec(herd::Codec::NodeJson)
        .subreaper(true)
        .start()
        .await
        .unwrap();
    let mut exits = Vec::new();
    let mut pids = Vec::new();
    while exits.len() < 4 {
        match next(&mut cluster).await {
            Event::Fork { pid, .. } => pids.push(pid),
            Event::Exit { worker, status } => exits.push((worker.0, status.code)),
            _ => {}
        }
    }
    exits.sort_unstable();
    // Each status is the worker's own: none was reaped by the subreaper.
    let want: Vec<_> = (1..=4).map(|i| (i, Some(i as i32))).collect();
    assert_eq!(exits, want);
    // Whatever each left behind (it re-parented to this process) is killed and reaped: it is
    // gone from /proc, not even a zombie.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let still = sleeping(&left);
        if still.is_empty() {
            break;
        }
        if Instant::now() >= deadline {
            for pid in &still {
                let _ = rustix::process::kill_process(
                    rustix::process::Pid::from_raw(*pid as i32).unwrap(),
                    rustix::process::Signal::KILL,
                );
            }
            panic!("left behind by workers {pids:?}, still there: {still:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cluster.shutdown().await;
}
