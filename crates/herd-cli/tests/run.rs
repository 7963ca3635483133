//! `herd run` end to end, with the real `node` as the workers.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const HERD: &str = env!("CARGO_BIN_EXE_herd");

/// Writes a Node script to a temp file, removed when the guard drops.
struct Script(std::path::PathBuf);

impl Script {
    fn new(name: &str, body: &str) -> Script {
        let path = std::env::temp_dir().join(format!("herd-cli-{}-{name}.js", std::process::id()));
        std::fs::write(&path, body).unwrap();
        Script(path)
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[test]
fn run_relays_messages_and_stops_gracefully_on_sigint() {
    let script = Script::new(
        "relay",
        "process.on('message', () => {});\nprocess.send({hello: process.pid});\n",
    );
    let mut herd = Command::new(HERD)
        .args(["run", "-w", "2", "--"])
        .arg("node")
        .arg(&script.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = herd.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    let mut workers = Vec::new();
    for _ in 0..2 {
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("a message line");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v["message"]["hello"].as_u64().is_some(), "{line}");
        workers.push(v["worker"].as_u64().unwrap());
    }
    workers.sort();
    assert_eq!(workers, [1, 2]);
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(herd.id() as i32).unwrap(),
        rustix::process::Signal::INT,
    )
    .unwrap();
    let (done_tx, done_rx) = mpsc::channel();
    std::thread::spawn(move || done_tx.send(herd.wait().unwrap()));
    let status = done_rx
        .recv_timeout(Duration::from_secs(20))
        .expect("herd exits after SIGINT");
    assert_eq!(status.code(), Some(0), "every Node worker exited 0");
}

#[test]
fn exit_codes_follow_the_documented_contract() {
    // A worker that fails: exit code 1.
    let status = Command::new(HERD)
        .args(["run", "-w", "1", "--", "sh", "-c", "exit 3"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(1));
    // A program that cannot be started: exit code 1 and a message naming it.
    let out = Command::new(HERD)
        .args(["run", "-w", "1", "--", "/nonexistent/program"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/program"));
    // Bad usage: exit code 2.
    let status = Command::new(HERD)
        .args(["run", "--codec", "xml", "--", "true"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(2));
    // Every worker exits 0: exit code 0.
    let status = Command::new(HERD)
        .args(["run", "-w", "2", "--", "true"])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
}
