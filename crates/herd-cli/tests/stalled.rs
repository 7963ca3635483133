//! Hardening (issue 19, items 1 and 7): a reader that stops reading herd's output freezes
//! nothing; SIGQUIT, SIGUSR1 and SIGUSR2 never kill herd ungracefully; a client whose stdout is
//! closed ends quietly; a client prints no control bytes a socket sent it.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::{Herd, DEADLINE, HERD};
use herd_test_support::process::TempDir;
use rustix::process::Signal;

/// Runs `cmd`, failing the test if it takes longer than `limit`.
fn within(limit: Duration, mut cmd: Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(child.wait_with_output().unwrap()));
    match rx.recv_timeout(limit) {
        Ok(out) => out,
        Err(_) => {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(pid).unwrap(),
                Signal::KILL,
            );
            panic!("{cmd:?} took longer than {limit:?}");
        }
    }
}

/// SIGKILLs a process when dropped (unless forgotten once it was reaped).
struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.0 as i32) {
            let _ = rustix::process::kill_process(pid, Signal::KILL);
        }
    }
}

fn status(control: &std::path::Path) -> Output {
    let mut c = Command::new(HERD);
    c.args(["status", "--json", "--control"]).arg(control);
    within(Duration::from_secs(5), c)
}

#[test]
fn a_stalled_reader_of_herds_output_delays_no_control_call_and_no_signal() {
    common::node_addon();
    let dir = TempDir::new("stalled-output");
    let control = dir.0.join("control.sock");
    // Both pipes are held and not read: the worst log shipper.
    let mut herd = Command::new(HERD)
        .arg("run")
        .arg("--control")
        .arg(&control)
        .args(["-w", "2", "--", "sh", "-c"])
        .arg("while :; do echo xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx; echo yyyy >&2; done")
        .env("HERD_LOG", "herd=info,herd_cli=info")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A failed assertion must not leave a herd spinning behind the test.
    let guard = KillOnDrop(herd.id());
    let deadline = Instant::now() + DEADLINE;
    while !control.exists() {
        assert!(Instant::now() < deadline, "no control socket");
        std::thread::sleep(Duration::from_millis(20));
    }
    // Long enough for both 64 KiB pipes and herd's own buffer to fill many times over.
    let start = Instant::now();
    let mut answers = 0;
    let mut dropped = 0;
    while start.elapsed() < Duration::from_secs(4) || dropped == 0 {
        assert!(Instant::now() < deadline, "nothing was ever dropped");
        let out = status(&control);
        assert!(out.status.success(), "herd status failed: {out:?}");
        let report: common::Report = serde_json::from_slice(&out.stdout).unwrap();
        dropped = report.status.output_dropped;
        answers += 1;
    }
    assert!(answers >= 2);
    // The reader comes back: output flows again, and herd says what was lost.
    // One writer serves both streams, so both are read again.
    let out = BufReader::new(herd.stdout.take().unwrap());
    let err = herd.stderr.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if line.contains("lines of output dropped") {
                let _ = tx.send(line);
            }
        }
    });
    // stdout is read until 10,000 lines came, then held unread again.
    let (held_tx, held) = mpsc::channel();
    std::thread::spawn(move || {
        let mut out = out;
        let mut line = String::new();
        let mut seen = 0;
        while seen < 10_000 && out.read_line(&mut line).unwrap_or(0) > 0 {
            assert!(line.starts_with("[w"), "{line}");
            line.clear();
            seen += 1;
        }
        let _ = held_tx.send(out);
    });
    let note = rx
        .recv_timeout(DEADLINE)
        .expect("a note of the dropped lines");
    assert!(note.starts_with("herd: "), "{note}");
    let out = held.recv_timeout(DEADLINE).expect("output flows again");
    // Stalled again (nobody reads stdout from here on): SIGTERM still stops herd promptly.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(herd.id() as i32).unwrap(),
        Signal::TERM,
    )
    .unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || tx.send(herd.wait().unwrap()));
    let code = rx
        .recv_timeout(Duration::from_secs(20))
        .expect("herd exits");
    std::mem::forget(guard);
    assert_eq!(code.code(), Some(0), "{code:?}");
    assert!(!control.exists(), "the control socket is left behind");
    drop(out);
}

#[test]
fn sigusr1_and_sigusr2_are_logged_and_sigquit_stops_at_once() {
    let mut herd = Herd::start("signals", &["-w", "1", "--", "sleep", "1000"]);
    herd.status_until("one worker", |s| common::running(s) == 1);
    herd.signal(Signal::USR2);
    common::wait_line(
        &herd.err,
        |l| l.contains("SIGUSR2: status"),
        "SIGUSR2's line",
    );
    herd.signal(Signal::USR1);
    common::wait_line(&herd.err, |l| l.contains("SIGUSR1"), "SIGUSR1's line");
    assert_eq!(common::running(&herd.status()), 1, "herd survives both");
    let control = herd.control.clone();
    let started = Instant::now();
    herd.signal(Signal::QUIT);
    assert_eq!(herd.wait(), Some(0));
    // `sleep` ignores nothing, but a fast stop must not wait out the grace period either.
    assert!(started.elapsed() < Duration::from_secs(10));
    assert!(!control.exists(), "the control socket is left behind");
}

#[test]
fn a_client_whose_stdout_is_closed_ends_quietly() {
    let herd = Herd::start("closed-stdout", &["-w", "1", "--", "sleep", "1000"]);
    herd.status_until("one worker", |s| common::running(s) == 1);
    // `herd status | head -0`: the read end is closed before herd writes.
    let (read, write) = rustix::pipe::pipe().unwrap();
    drop(read);
    let out = Command::new(HERD)
        .args(["status", "--control"])
        .arg(&herd.control)
        .stdout(std::process::Stdio::from(write))
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(out.status.code(), Some(0), "{err}");
}

#[test]
fn a_client_prints_no_control_bytes_from_the_socket() {
    let dir = TempDir::new("escape-codes");
    let path = dir.0.join("control.sock");
    let listener = UnixListener::bind(&path).unwrap();
    std::thread::spawn(move || {
        for mut conn in listener.incoming().map_while(Result::ok) {
            let mut line = [0u8; 256];
            let _ = conn.read(&mut line);
            let evil =
                "{\"ok\":false,\"error\":\"\\u001b]0;owned\\u0007\\u001b[2J\\u001b[31mred\"}\n";
            let _ = conn.write_all(evil.as_bytes());
        }
    });
    for cmd in ["status", "stop", "reload"] {
        let mut c = Command::new(HERD);
        c.args([cmd, "--control"]).arg(&path);
        let out = within(Duration::from_secs(10), c);
        let all = [&out.stdout[..], &out.stderr[..]].concat();
        assert!(
            !all.contains(&0x1b),
            "{cmd}: {:?}",
            String::from_utf8_lossy(&all)
        );
        assert!(!all.contains(&0x07), "{cmd}");
        assert!(
            String::from_utf8_lossy(&all).contains("red"),
            "{cmd}: the text is kept"
        );
        assert_ne!(out.status.code(), Some(0), "{cmd}");
    }
}
