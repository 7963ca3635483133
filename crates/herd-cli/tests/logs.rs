//! `herd logs` against a running `herd run` with real workers: the recent lines, filtered by
//! worker and time, as text and JSON; `-f` following lines as workers print them; and a follower
//! that stops reading, which loses lines (counted, and told) without slowing herd.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;

/// Workers that each print `out N` 0..count on stdout and `err` once on stderr, then idle.
fn printing(count: usize) -> String {
    format!(
        "i=0; while [ $i -lt {count} ]; do echo \"out $i\"; i=$((i+1)); done; echo err >&2; exec sleep 3600"
    )
}

fn logs(herd: &Herd, args: &[&str]) -> Vec<String> {
    let mut all = vec!["logs"];
    all.extend(args);
    let out = herd.ctl(&all);
    assert!(
        out.status.success(),
        "herd logs {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

#[test]
fn recent_lines_by_worker_and_as_json() {
    let script = printing(50);
    let herd = Herd::start("logs-recent", &["-w", "2", "--", "sh", "-c", &script]);
    for _ in 0..2 {
        herd.stderr_line(|l| l.ends_with("] err"));
    }
    let ids: Vec<u64> = herd
        .status()
        .status
        .workers
        .iter()
        .map(|w| w.worker.0)
        .collect();
    assert_eq!(ids.len(), 2);
    // Every line is in: 51 of each worker's.
    let deadline = Instant::now() + DEADLINE;
    while logs(&herd, &["-n", "1000", "--json"]).len() < 102 {
        assert!(Instant::now() < deadline, "not every line arrived");
    }

    // The last 15 lines by default, in the order herd read them; stderr's on stderr.
    let json = logs(&herd, &["--json"]);
    assert_eq!(json.len(), 15, "{json:?}");
    let entries: Vec<serde_json::Value> = json
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(entries
        .windows(2)
        .all(|p| p[0]["seq"].as_u64() < p[1]["seq"].as_u64()));
    let text = logs(&herd, &[]);
    let want: Vec<String> = entries
        .iter()
        .filter(|e| e["stream"] == "stdout")
        .map(|e| format!("[w{}] {}", e["worker"], e["line"].as_str().unwrap()))
        .collect();
    assert_eq!(text, want);

    // One worker's lines: all 51, its stdout in the order printed, with the fields.
    let w = ids[0];
    let json = logs(&herd, &["-n", "1000", "--worker", &w.to_string(), "--json"]);
    assert_eq!(json.len(), 51);
    let entries: Vec<serde_json::Value> = json
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let out: Vec<&str> = entries
        .iter()
        .filter(|e| e["stream"] == "stdout")
        .map(|e| e["line"].as_str().unwrap())
        .collect();
    let printed: Vec<String> = (0..50).map(|i| format!("out {i}")).collect();
    assert_eq!(out, printed);
    assert!(entries.iter().all(|e| e["worker"] == w));
    let err: Vec<&serde_json::Value> = entries.iter().filter(|e| e["stream"] == "stderr").collect();
    assert_eq!(err.len(), 1);
    assert_eq!(err[0]["line"], "err");
    let ts = entries[0]["ts"].as_f64().unwrap();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(ts <= now && ts > now - 60.0, "{ts} {now}");
    // The last 3 of its lines, as text: those on stdout.
    let last3: Vec<String> = entries[48..]
        .iter()
        .filter(|e| e["stream"] == "stdout")
        .map(|e| format!("[w{w}] {}", e["line"].as_str().unwrap()))
        .collect();
    assert_eq!(logs(&herd, &["-n", "3", "--worker", &w.to_string()]), last3);

    // --since a time after every line: nothing; -n 0: nothing; --time prefixes an RFC 3339 time.
    assert!(logs(&herd, &["--since", &format!("{}", now + 1.0)]).is_empty());
    assert!(logs(&herd, &["-n", "0"]).is_empty());
    let timed = logs(&herd, &["-n", "3", "--time", "--worker", &w.to_string()]);
    assert!(!timed.is_empty());
    for (l, plain) in timed.iter().zip(&last3) {
        assert!(
            l.starts_with("20") && l.ends_with(&format!("Z {plain}")),
            "{l:?}"
        );
    }
    // Bad input is refused with a reason.
    let bad = herd.ctl(&["logs", "--since", "yesterday"]);
    assert_eq!(bad.status.code(), Some(2));
    stop(herd);
}

#[test]
fn follow_prints_new_lines_as_workers_print_them() {
    let script = "i=0; while :; do echo \"tick $i\"; i=$((i+1)); sleep 0.02; done";
    let herd = Herd::start("logs-follow", &["-w", "1", "--", "sh", "-c", script]);
    herd.stdout_line(|l| l.ends_with("tick 3"));
    let mut follower = Command::new(HERD)
        .args(["logs", "-f", "-n", "0", "--control"])
        .arg(&herd.control)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = herd_test_support::process::lines(follower.stdout.take().unwrap());
    // Lines printed after the follow began, in order, with none missing.
    let first = wait_line(&lines, |l| l.contains("tick "), "herd logs -f");
    let n0: u64 = first.rsplit(' ').next().unwrap().parse().unwrap();
    for k in 1..50 {
        let l = wait_line(&lines, |l| l.contains("tick "), "herd logs -f");
        assert!(
            l.ends_with(&format!("tick {}", n0 + k)),
            "{l} after tick {n0}"
        );
    }
    // herd going away ends the follow.
    stop(herd);
    let deadline = Instant::now() + DEADLINE;
    loop {
        if let Some(status) = follower.try_wait().unwrap() {
            assert!(status.success(), "{status}");
            break;
        }
        assert!(Instant::now() < deadline, "herd logs -f outlived herd");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_follower_that_stops_reading_loses_lines_not_herds_time() {
    // 20,000 lines of 1 KB: far more than a socket buffer and a follower's queue hold.
    let script = "sleep 0.5; i=0; line=$(printf '%1000s' x); \
                  while [ $i -lt 20000 ]; do echo \"$i $line\"; i=$((i+1)); done; \
                  echo done; exec sleep 3600";
    let herd = Herd::start("logs-stalled", &["-w", "1", "--", "sh", "-c", script]);
    herd.status_until("running", |s| running(s) == 1);
    // A follower that never reads.
    let mut stalled = UnixStream::connect(&herd.control).unwrap();
    stalled
        .write_all(b"{\"cmd\":\"logs\",\"follow\":true}\n")
        .unwrap();
    let started = Instant::now();
    herd.stdout_line(|l| l.ends_with("] done"));
    // herd went on printing its own stdout and answers at once.
    let t = Instant::now();
    let s = herd.status();
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "status took {:?}",
        t.elapsed()
    );
    assert!(s.logs_dropped > 10_000, "{} dropped", s.logs_dropped);
    assert!(
        started.elapsed() < Duration::from_secs(25),
        "20,000 lines took {:?}",
        started.elapsed()
    );
    // Others still read the logs.
    assert_eq!(logs(&herd, &["-n", "1"]).len(), 1);
    // The stalled follower, reading at last: the lines its queue held, then how many it lost.
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stalled.try_clone().unwrap());
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), r#"{"ok":true,"logs":0}"#);
    let mut lost = None;
    let mut got = 0u64;
    while lost.is_none() {
        line.clear();
        assert!(reader.read_line(&mut line).unwrap() > 0, "closed");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        match v["lost"].as_u64() {
            Some(n) => lost = Some(n),
            None => got += 1,
        }
    }
    let lost = lost.unwrap();
    assert!(got > 0 && got < 2_000, "{got} lines came through");
    assert!(
        lost >= s.logs_dropped,
        "told {lost}, counted {}",
        s.logs_dropped
    );
    let mut rest = Vec::new();
    stalled.set_nonblocking(true).unwrap();
    let _ = stalled.read_to_end(&mut rest);
    stop(herd);
}
