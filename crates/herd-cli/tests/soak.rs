//! A soak: `herd run` serving the demo (Node HTTP workers, the host-shared cache) under steady
//! HTTP load while workers are reloaded and SIGKILLed over and over; herd's descriptors, memory
//! and children must stay flat and requests must keep succeeding.
//!
//! 12 s by default (so it runs with every test); `SOAK_SECS=3600 cargo test --release -p herd-cli
//! --test soak -- --nocapture` for a long one. It prints what it measured.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const HERD: &str = env!("CARGO_BIN_EXE_herd");

fn status(control: &Path) -> Option<serde_json::Value> {
    let out = Command::new(HERD)
        .args(["status", "--json", "--control"])
        .arg(control)
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| serde_json::from_slice(&out.stdout).ok())
        .flatten()
}

fn pids(s: &serde_json::Value) -> Vec<u64> {
    s["status"]["workers"]
        .as_array()
        .map(|w| {
            w.iter()
                .filter(|w| w["state"] == "running")
                .filter_map(|w| w["pid"].as_u64())
                .collect()
        })
        .unwrap_or_default()
}

fn proc_field(pid: u32, file: &str, field: &str) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/{file}"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Fewest descriptors over a few samples (workers being started or reaped hold some briefly).
fn fds(pid: u32) -> usize {
    (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(5));
            std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(usize::MAX, |d| d.count())
        })
        .min()
        .unwrap_or(usize::MAX)
}

fn zombies(pid: u32) -> usize {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let kids = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        for c in kids.split_whitespace() {
            let stat = std::fs::read_to_string(format!("/proc/{c}/stat")).unwrap_or_default();
            if stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
            {
                n += 1;
            }
        }
    }
    n
}

fn get(addr: SocketAddr, path: &str) -> std::io::Result<()> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    if text.starts_with("HTTP/1.1 200") {
        Ok(())
    } else {
        Err(std::io::Error::other(format!("not a 200: {text:.80}")))
    }
}

#[test]
fn soak_under_load_with_reloads_and_kills() {
    let secs: u64 = std::env::var("SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(12);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = std::env::temp_dir().join(format!("herd-soak-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let control = dir.join("control.sock");
    let mut herd = Command::new(HERD)
        .arg("run")
        .arg("--control")
        .arg(&control)
        .args(["-w", "2", "--listen", "127.0.0.1:0", "--ready", "notice"])
        .args(["--backoff-min", "0.05", "--max-restarts", "1000000"])
        .arg("--cache-snapshot")
        .arg(root.join("examples/demo/cache.json"))
        .args(["--warm", "*", "--", "node"])
        .arg(root.join("examples/demo/server.js"))
        .env("HERD_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(herd.stderr.take().unwrap()).lines();
    let addr: SocketAddr = loop {
        let line = stderr.next().expect("herd listens").unwrap();
        if let Some(a) = line.strip_prefix("herd: listening on ") {
            break a.parse().unwrap();
        }
    };
    std::thread::spawn(move || for _ in stderr {});
    let hp = herd.id();
    let deadline = Instant::now() + Duration::from_secs(30);
    while status(&control).is_none_or(|s| pids(&s).len() < 2) {
        assert!(Instant::now() < deadline, "herd did not start");
        std::thread::sleep(Duration::from_millis(50));
    }

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let clients: Vec<_> = (0..2)
        .map(|c| {
            let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
            std::thread::spawn(move || {
                let mut i = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let path = if c == 0 {
                        format!("/cache/product:{:03}", i % 100)
                    } else {
                        "/".to_string()
                    };
                    match get(addr, &path) {
                        Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                    };
                }
            })
        })
        .collect();

    // Warm up, then take the baseline.
    std::thread::sleep(Duration::from_secs(2));
    let (fds0, rss0) = (fds(hp), proc_field(hp, "status", "VmRSS:"));
    let start = Instant::now();
    let (mut reloads, mut kills, mut round) = (0u64, 0u64, 0u64);
    while start.elapsed() < Duration::from_secs(secs) {
        round += 1;
        if round % 2 == 0 {
            let out = Command::new(HERD)
                .args(["reload", "--control"])
                .arg(&control)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            reloads += 1;
        } else if let Some(p) = status(&control)
            .map(|s| pids(&s))
            .and_then(|p| p.first().copied())
        {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(p as i32).unwrap(),
                rustix::process::Signal::KILL,
            );
            kills += 1;
        }
        std::thread::sleep(Duration::from_millis(700));
    }
    // Let the last restart settle before the final reading.
    let settle = Instant::now() + Duration::from_secs(20);
    while status(&control).is_none_or(|s| pids(&s).len() < 2) {
        assert!(Instant::now() < settle, "workers did not come back");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (fds1, rss1) = (fds(hp), proc_field(hp, "status", "VmRSS:"));
    let z = zombies(hp);
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        c.join().unwrap();
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let s = status(&control).unwrap();
    let listing: Vec<_> = std::fs::read_dir(format!("/proc/{hp}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .collect();
    eprintln!(
        "herd's fds at the end: {listing:?}\nworkers: {}",
        s["status"]["workers"]
    );
    eprintln!(
        "soak {secs} s: {reloads} reloads, {kills} SIGKILLs; {ok} requests served, {failed} failed; \
         herd fds {fds0} -> {fds1}, RSS {rss0} -> {rss1} kB, {z} zombies; cache loads {} (of 103 keys)",
        s["cache"]["loads"]
    );
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(hp as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    let code = herd.wait().unwrap().code();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(code, Some(0));
    assert!(ok > 100 * secs / 2, "only {ok} requests in {secs} s");
    // Only a killed worker's accepted requests may fail: a few per kill, none per reload.
    assert!(failed <= 3 * kills, "{failed} failed for {kills} kills");
    assert!(
        fds1 <= fds0,
        "herd's descriptors grew: {fds0} -> {fds1}; workers: {}; fds: {:?}",
        s["status"]["workers"],
        std::fs::read_dir(format!("/proc/{hp}/fd"))
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| std::fs::read_link(e.path()).ok())
            .collect::<Vec<_>>()
    );
    assert!(
        rss1 <= rss0 + 8 * 1024,
        "herd's RSS grew: {rss0} -> {rss1} kB"
    );
    assert_eq!(z, 0);
    // Nothing was loaded twice: the cache stayed warm through every reload and kill.
    assert_eq!(s["cache"]["loads"], 103);
}
