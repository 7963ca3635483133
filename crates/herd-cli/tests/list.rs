//! `herd list` with real herds: two running herds of this user (one busy, one idle) and the
//! socket of one killed with -9, each as a line (and as JSON) with its state, workers, CPU and
//! memory; `herd status` shows each worker's CPU.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;
use herd_test_support::process::TempDir;

/// `herd run --name NAME` with herd's default control directory under `runtime`.
fn run(runtime: &std::path::Path, name: &str, workers: &str, script: &str) -> Child {
    Command::new(HERD)
        .args([
            "run", "--name", name, "-w", workers, "--", "sh", "-c", script,
        ])
        .env("XDG_RUNTIME_DIR", runtime)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn herd_at(runtime: &std::path::Path, args: &[&str]) -> std::process::Output {
    Command::new(HERD)
        .args(args)
        .env("XDG_RUNTIME_DIR", runtime)
        .output()
        .unwrap()
}

#[test]
fn list_shows_every_herd_of_this_user() {
    let dir = TempDir::new("list");
    let runtime = dir.path();
    let mut busy = run(runtime, "busy", "1", "while :; do :; done");
    let mut idle = run(runtime, "idle", "2", "exec sleep 3600");
    // A herd killed with -9 leaves its socket behind.
    let mut dead = run(runtime, "dead", "1", "exec sleep 3600");
    let deadline = Instant::now() + DEADLINE;
    let listed = |want: usize| loop {
        let out = herd_at(runtime, &["list", "--json"]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let ready = v
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| {
                h["status"]["status"]["workers"]
                    .as_array()
                    .is_some_and(|w| !w.is_empty() && w.iter().all(|w| w["state"] == "running"))
                    && h["status"]["status"]["workers"].as_array().unwrap().len()
                        == h["status"]["status"]["wanted"].as_u64().unwrap() as usize
            })
            .count();
        if ready == want {
            return v;
        }
        assert!(Instant::now() < deadline, "never {want} ready herds: {v}");
        std::thread::sleep(Duration::from_millis(50));
    };
    listed(3);
    dead.kill().unwrap();
    dead.wait().unwrap();
    let v = listed(2);
    let names: Vec<&str> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["busy", "dead", "idle"]);
    assert!(
        v[1]["error"].is_string() && v[1]["status"].is_null(),
        "{}",
        v[1]
    );

    // The busy worker spins; the idle ones sleep. (Other tests share the CPUs.)
    let cpu = |h: &serde_json::Value| -> f64 {
        h["status"]["cpu"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c[1].as_f64().expect("measured"))
            .sum()
    };
    assert!(cpu(&v[0]) > 20.0, "busy: {}", v[0]["status"]["cpu"]);
    assert!(cpu(&v[2]) < 10.0, "idle: {}", v[2]["status"]["cpu"]);

    let out = herd_at(runtime, &["list"]);
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 4, "{text}");
    assert!(
        lines[0].starts_with("NAME") && lines[0].contains("CPU"),
        "{text}"
    );
    assert!(
        lines[1].starts_with("busy ")
            && lines[1].contains(" online ")
            && lines[1].contains(" 1/1 "),
        "{text}"
    );
    assert!(
        lines[2].starts_with("dead ") && lines[2].contains(" gone "),
        "{text}"
    );
    assert!(
        lines[3].starts_with("idle ") && lines[3].contains(" 2/2 ") && lines[3].contains(" MB "),
        "{text}"
    );

    // herd status has a CPU column.
    let out = herd_at(runtime, &["status", "--name", "busy"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(" CPU ") && text.contains('%'), "{text}");

    for (name, child) in [("busy", &mut busy), ("idle", &mut idle)] {
        assert!(herd_at(runtime, &["stop", "--name", name]).status.success());
        assert!(child.wait().unwrap().success());
    }
}
