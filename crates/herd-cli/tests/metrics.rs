//! `--metrics` scraped as Prometheus would, and parsed by a real OpenMetrics parser (Python's
//! `prometheus_client`, `HERD_TEST_PY`: `.ci/run` installs it): the workers' figures, the
//! service's and the cache's, while two Node workers read the cache; anything but
//! `/metrics` is a 404; connections that send nothing, beyond the bound, shut no scraper out.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;
use herd_test_support::process::{free_port, TempDir};

/// One HTTP exchange: the status line and the body.
fn get(addr: SocketAddr, path: &str) -> (String, String) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: herd\r\n\r\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    let (head, body) = all.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

/// The families the OpenMetrics parser reads from `text`: `name{labels} value` per sample.
fn parsed(py: &str, text: &str) -> Vec<String> {
    let script = "import sys\n\
        from prometheus_client.openmetrics.parser import text_string_to_metric_families as p\n\
        for f in p(sys.stdin.read()):\n\
        \x20   for s in f.samples:\n\
        \x20       labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))\n\
        \x20       print(f'{s.name}{{{labels}}} {s.value}')\n";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .env("PYTHONPATH", py)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the OpenMetrics parser refused it: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

fn value(samples: &[String], name_and_labels: &str) -> f64 {
    samples
        .iter()
        .find_map(|s| {
            s.strip_prefix(name_and_labels)?
                .strip_prefix(' ')?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {name_and_labels} in {samples:#?}"))
}

#[test]
fn metrics_are_openmetrics_a_real_parser_reads() {
    let Ok(py) = std::env::var("HERD_TEST_PY") else {
        herd_test_support::skip(
            "metrics_are_openmetrics_a_real_parser_reads",
            "HERD_TEST_PY names no prometheus_client (.ci/run installs it)",
        );
        return;
    };
    let dir = TempDir::new("metrics");
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("greeting"), "hello").unwrap();
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let script = "const herd = require(process.env.HERD_JS); \
                  (async () => { for (let i = 0; i < 5; i++) await herd.cache.get('greeting'); \
                  console.log('read'); setInterval(() => {}, 1000); })();";
    let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../js/herd.js");
    let herd = Herd::start(
        "metrics",
        &[
            "-w",
            "2",
            "--metrics",
            &addr.to_string(),
            "--cache-dir",
            cache.to_str().unwrap(),
            "--env",
            &format!("HERD_JS={}", js.display()),
            "--",
            "node",
            "-e",
            script,
        ],
    );
    for _ in 0..2 {
        herd.stdout_line(|l| l.ends_with("] read"));
    }
    let (status, body) = get(addr, "/metrics");
    assert_eq!(status, "HTTP/1.1 200 OK", "{body}");
    let samples = parsed(&py, &body);
    let s = herd.status();
    for w in &s.status.workers {
        let labels = format!("{{slot={},worker={}}}", w.slot.unwrap(), w.worker);
        assert!(value(&samples, &format!("herd_worker_resident_bytes{labels}")) > 1e6);
        assert!(value(&samples, &format!("herd_worker_cpu_seconds_total{labels}")) > 0.0);
        assert_eq!(
            value(
                &samples,
                &format!("herd_slot_restarts_total{{slot={}}}", w.slot.unwrap())
            ),
            0.0
        );
    }
    assert_eq!(value(&samples, "herd_workers{state=running}"), 2.0);
    assert_eq!(value(&samples, "herd_workers_wanted{}"), 2.0);
    assert_eq!(value(&samples, "herd_reloads_total{}"), 0.0);
    // One load for the key however many gets (the rest are hits, coalesced waits or the
    // workers' own copies).
    assert!(value(&samples, "herd_cache_hits_total{}") >= 0.0);
    assert_eq!(value(&samples, "herd_cache_loads_total{}"), 1.0);
    assert_eq!(value(&samples, "herd_cache_entries{}"), 1.0);

    // A reload shows.
    assert!(herd.ctl(&["reload"]).status.success());
    let (_, body) = get(addr, "/metrics");
    assert_eq!(value(&parsed(&py, &body), "herd_reloads_total{}"), 1.0);

    // Only /metrics; HEAD has no body.
    assert_eq!(get(addr, "/").0, "HTTP/1.1 404 Not Found");
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(DEADLINE)).unwrap();
    write!(s, "HEAD /metrics HTTP/1.1\r\nHost: herd\r\n\r\n").unwrap();
    let mut all = String::new();
    s.read_to_string(&mut all).unwrap();
    assert!(all.starts_with("HTTP/1.1 200 OK"), "{all}");
    assert!(
        all.ends_with("\r\n\r\n"),
        "HEAD answered with a body: {all}"
    );

    // Connections that send nothing, far past the bound, shut no scraper out while they
    // stay open; herd's control socket answers meanwhile.
    let idle: Vec<TcpStream> = (0..40).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let t = Instant::now();
    herd.status();
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    for _ in 0..3 {
        let t = Instant::now();
        let (status, body) = get(addr, "/metrics");
        assert_eq!(status, "HTTP/1.1 200 OK");
        assert!(body.ends_with("# EOF\n"));
        assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    }
    drop(idle);
    stop(herd);
}
