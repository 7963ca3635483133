//! `herd run` end to end: the real binary, real workers (`node`, `sh`), real sockets, and the
//! control commands (`herd status`, `reload`, `scale`, `stop`) against it.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::mpsc;
use std::time::{Duration, Instant};

mod common;

use common::*;
use herd_test_support::process::{pid_alive, TempDir};

#[test]
fn run_relays_messages_and_stops_gracefully_on_sigint() {
    let dir = TempDir::new("relay-script");
    let script = dir.0.join("relay.js");
    std::fs::write(
        &script,
        "process.on('message', () => {});\nprocess.send({hello: process.pid});\n",
    )
    .unwrap();
    let mut herd = Herd::start(
        "relay",
        &[
            "-w",
            "2",
            "--log-messages",
            "--",
            "node",
            script.to_str().unwrap(),
        ],
    );
    let mut workers = Vec::new();
    for _ in 0..2 {
        let line = herd.stdout_line(|l| l.contains("\"message\""));
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert!(v["message"]["hello"].as_u64().is_some(), "{line}");
        workers.push(v["worker"].as_u64().unwrap());
    }
    workers.sort();
    assert_eq!(workers, [1, 2]);
    herd.signal(rustix::process::Signal::INT);
    assert_eq!(herd.wait(), Some(0), "stopped on request");
}

#[test]
fn exit_codes_follow_the_documented_contract() {
    // A worker that keeps failing: restarted with backoff, then a crash loop; exit code 1.
    let mut herd = Herd::start(
        "crashloop",
        &[
            "-w",
            "1",
            "--max-restarts",
            "2",
            "--backoff-min",
            "0.01",
            "--",
            "sh",
            "-c",
            "exit 3",
        ],
    );
    let line = herd.stderr_line(|l| l.contains("gave up"));
    assert!(
        line.contains("crash loop") && line.contains("exit code 3"),
        "{line}"
    );
    assert_eq!(herd.wait(), Some(1));
    // A program that cannot be started: exit code 1 and a message naming it.
    let out = Command::new(HERD)
        .args(["run", "-w", "1", "--", "/nonexistent/program"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/program"));
    // Bad usage: exit code 2.
    for bad in [
        &["run", "--codec", "xml", "--", "true"][..],
        &["run", "--listen", "nowhere", "--", "true"],
        &["run", "--ready", "soon", "--", "true"],
        &["run", "--nope"],
    ] {
        let out = Command::new(HERD).args(bad).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
    // Under --restart on-failure, every worker exits 0 (done, not restarted): exit code 0.
    let mut herd = Herd::start(
        "done",
        &["-w", "2", "--restart", "on-failure", "--", "true"],
    );
    assert_eq!(herd.wait(), Some(0));
    // With --restart never, a failure ends herd with exit code 1.
    let mut herd = Herd::start(
        "never",
        &["-w", "1", "--restart", "never", "--", "sh", "-c", "exit 4"],
    );
    assert_eq!(herd.wait(), Some(1));
}

#[test]
fn a_crashed_worker_is_restarted_and_status_shows_it() {
    let dir = TempDir::new("crash-once");
    let mark = dir.0.join("crashed-once");
    // Crashes the first time, then runs until it is disconnected (its channel closes: stdin
    // of `read` is not the channel, so wait on the channel fd with a read that ends at EOF).
    let script = format!(
        "if [ -e {m} ]; then echo up; exec cat <&$NODE_CHANNEL_FD >/dev/null; else touch {m}; echo crashing >&2; exit 7; fi",
        m = mark.display()
    );
    let herd = Herd::start(
        "restart",
        &[
            "-w",
            "1",
            "--backoff-min",
            "0.05",
            "--",
            "sh",
            "-c",
            &script,
        ],
    );
    herd.stderr_line(|l| l == "[w1] crashing");
    herd.stdout_line(|l| l == "[w2] up");
    let s = herd.status_until("one running worker", |s| running(s) == 1);
    let w = &s.status.workers[0];
    assert_eq!(w.worker, herd::WorkerId(2));
    assert_eq!(w.restarts, 1);
    assert!(w.rss > 0 && w.pss > 0, "{w:?}");
    let pid = u64::from(w.pid);
    assert!(pid_alive(pid));
    // The text table too.
    let table = String::from_utf8(herd.ctl(&["status"]).stdout).unwrap();
    assert!(
        table.contains("WORKER") && table.contains(&pid.to_string()),
        "{table}"
    );
    // `herd stop` returns once herd is done; nothing is left running.
    stop(herd);
    assert!(!pid_alive(pid), "the worker is gone");
}

#[test]
fn a_rolling_reload_under_http_load_fails_no_request() {
    let mut herd = Herd::serve_demo("reload", &["-w", "2", "--ready", "notice", "--grace", "10"]);
    let addr = herd.listening();
    let before = herd.status_until("two workers running", |s| {
        workers(s) == 2 && running(s) == 2
    });
    assert_status_lists(&herd, &before, addr, false);
    let old = pids(&before);
    // Both workers answer on the one port.
    let deadline = Instant::now() + DEADLINE;
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "both workers answer");
        let (code, body) = http_get(addr, "/").unwrap();
        assert_eq!(code, 200);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        seen.insert(v["pid"].as_u64().unwrap());
    }

    // Load from two client threads for the whole reload.
    let (pids_tx, pids_rx) = mpsc::channel::<u64>();
    let load = Load::start(2, move |_, _| match http_get(addr, "/") {
        Ok((200, body)) => {
            if let Ok(v) = serde_json::from_str::<serde_json::Value>(&body) {
                let _ = pids_tx.send(v["pid"].as_u64().unwrap_or(0));
            }
            true
        }
        Ok((code, body)) => {
            eprintln!("HTTP {code}: {body}");
            false
        }
        Err(e) => {
            eprintln!("request failed: {e}");
            false
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let out = herd.ctl(&["reload"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("2 workers replaced"));
    // And a second reload, by SIGHUP this time.
    herd.signal(rustix::process::Signal::HUP);
    herd.stderr_line(|l| l.contains("SIGHUP reload done"));
    std::thread::sleep(Duration::from_millis(300));
    let (ok, failed) = load.stop();
    eprintln!("reload under load: {ok} requests succeeded, {failed} failed");
    assert_eq!(failed, 0, "{ok} requests succeeded, {failed} failed");
    assert!(ok > 50, "only {ok} requests were made");
    let after = herd.status();
    let new = pids(&after);
    assert_eq!(new.len(), 2);
    assert!(
        new.iter().all(|p| !old.contains(p)),
        "every worker was replaced"
    );
    assert_eq!(after.status.reloads, 2);
    // Requests were served by the old workers and then by the new ones.
    let served: std::collections::HashSet<u64> = pids_rx.try_iter().collect();
    assert!(old.iter().any(|p| served.contains(p)), "old workers served");
    assert!(new.iter().any(|p| served.contains(p)), "new workers served");
    for p in &old {
        assert!(!pid_alive(*p), "old worker {p} exited");
    }
    herd.signal(rustix::process::Signal::TERM);
    assert_eq!(herd.wait(), Some(0));
}

#[test]
fn listen_fds_follow_systemds_convention() {
    let mut herd = Herd::start(
        "listenfds",
        &[
            "-w", "1", "--restart", "never", "--listen", "127.0.0.1:0", "--listen", ":0",
            "--", "sh", "-c", "echo \"$LISTEN_PID $$ $LISTEN_FDS $LISTEN_FDNAMES $NODE_CHANNEL_FD\"; [ -S /proc/$$/fd/3 ] && [ -S /proc/$$/fd/4 ] && echo sockets-at-3-and-4",
        ],
    );
    let line = herd.stdout_line(|l| l.starts_with("[w1] ") && !l.contains("sockets"));
    let f: Vec<&str> = line["[w1] ".len()..].split(' ').collect();
    assert_eq!(f[0], f[1], "LISTEN_PID is the worker's own pid: {line}");
    assert_eq!(f[2], "2");
    assert!(
        f[3].starts_with("127.0.0.1_") && f[3].contains(":0.0.0.0_"),
        "{line}"
    );
    assert_eq!(f[4], "5", "the channel comes after the sockets");
    herd.stdout_line(|l| l == "[w1] sockets-at-3-and-4");
    assert_eq!(herd.wait(), Some(0));
}

/// `herd status` lists `addr` as the one listening socket, shared or one per worker, in its
/// JSON (`status`) and in its table.
fn assert_status_lists(herd: &Herd, status: &Report, addr: SocketAddr, reuseport: bool) {
    let address = addr.to_string();
    assert_eq!(status.listening, [Listening { address, reuseport }]);
    let how = if reuseport {
        "a socket per worker, SO_REUSEPORT"
    } else {
        "one socket shared by every worker"
    };
    let table = String::from_utf8(herd.ctl(&["status"]).stdout).unwrap();
    assert!(
        table.contains(&format!("listening on {addr} ({how})")),
        "{table}"
    );
}

#[test]
fn reuseport_gives_each_worker_its_own_socket_on_one_port() {
    let herd = Herd::serve_demo(
        "reuseport",
        &["-w", "2", "--reuseport", "--ready", "notice"],
    );
    let addr = herd.listening();
    let status = herd.status_until("two workers", |s| workers(s) == 2);
    assert_status_lists(&herd, &status, addr, true);
    let deadline = Instant::now() + DEADLINE;
    let mut seen = std::collections::HashSet::new();
    // The kernel spreads new connections over the two sockets by hash: both get some.
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "both workers answer: {seen:?}");
        if let Ok((200, body)) = http_get(addr, "/") {
            let v: serde_json::Value = serde_json::from_str(&body).unwrap();
            seen.insert(v["pid"].as_u64().unwrap());
        }
    }
}

#[test]
fn output_is_prefixed_or_json_and_scale_changes_the_count() {
    let script = "echo \"hello from $HERD_WORKER_ID\"; echo oops >&2; exec cat <&$NODE_CHANNEL_FD >/dev/null";
    let herd = Herd::start("output", &["-w", "1", "--", "sh", "-c", script]);
    // herd's own log, written to a pipe: plain text, no terminal colour codes.
    let log = herd.stderr_line(|l| l.contains("herd running"));
    assert!(
        !log.contains('\x1b'),
        "colour codes in a piped log: {log:?}"
    );
    herd.stdout_line(|l| l == "[w1] hello from 1");
    herd.stderr_line(|l| l == "[w1] oops");
    let out = herd.ctl(&["scale", "3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    herd.stdout_line(|l| l == "[w3] hello from 3");
    herd.status_until("three workers", |s| workers(s) == 3);
    assert!(herd.ctl(&["scale", "1"]).status.success());
    herd.status_until("one worker", |s| workers(s) == 1 && s.status.wanted == 1);
    drop(herd);

    let json = Herd::start(
        "json",
        &["-w", "1", "--log-format", "json", "--", "sh", "-c", script],
    );
    let line = json.stdout_line(|l| l.contains("hello from"));
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["worker"], 1);
    assert_eq!(v["stream"], "stdout");
    assert_eq!(v["line"], "hello from 1");
    assert!(v["ts"].as_f64().is_some());
    // herd's own log lines are JSON too.
    let log = json.stderr_line(|l| l.contains("worker started"));
    assert!(
        serde_json::from_str::<serde_json::Value>(&log).is_ok(),
        "{log}"
    );
}

#[test]
fn a_config_file_is_equivalent_to_flags_and_its_errors_name_the_field() {
    let dir = TempDir::new("config");
    let good = dir.0.join("good.toml");
    std::fs::write(
        &good,
        "command = ['sh', '-c', 'echo configured $GREETING; exec cat <&$NODE_CHANNEL_FD >/dev/null']\nworkers = 1\nenv = { GREETING = 'hi' }\n",
    )
    .unwrap();
    let mut herd = Herd::start("config", &["--config", good.to_str().unwrap()]);
    herd.stdout_line(|l| l == "[w1] configured hi");
    herd.signal(rustix::process::Signal::TERM);
    assert_eq!(herd.wait(), Some(0));

    let bad = dir.0.join("bad.toml");
    std::fs::write(&bad, "command = ['true']\n[reload]\nready_timeot = 3.0\n").unwrap();
    let out = Command::new(HERD)
        .args(["run", "--config", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("ready_timeot") && err.contains("bad.toml"),
        "{err}"
    );
}

#[test]
fn the_control_socket_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let herd = Herd::start(
        "private",
        &[
            "-w",
            "1",
            "--",
            "sh",
            "-c",
            "exec cat <&$NODE_CHANNEL_FD >/dev/null",
        ],
    );
    herd.status_until("running", |s| workers(s) == 1);
    let mode = std::fs::metadata(&herd.control)
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second herd with the same control socket refuses to start.
    let out = Command::new(HERD)
        .args(["run", "--control"])
        .arg(&herd.control)
        .args(["--", "true"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("another herd"));
    // Another user is refused (when this test can act as one).
    if rustix::process::geteuid().is_root() {
        use std::os::unix::process::CommandExt;
        // Let the other user reach the socket file, so the peer check itself is what refuses.
        std::fs::set_permissions(&herd.control, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(
            herd.control.parent().unwrap(),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let out = Command::new(HERD)
            .args(["status", "--control"])
            .arg(&herd.control)
            .uid(65534)
            .gid(65534)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("permission denied"), "{err}");
    }
}

#[test]
fn a_reload_whose_new_workers_never_get_ready_keeps_the_old_ones() {
    // Readiness needs a notice this program never sends.
    let herd = Herd::start(
        "stuck-reload",
        &[
            "-w",
            "2",
            "--ready",
            "notice",
            "--ready-timeout",
            "0.5",
            "--",
            "sh",
            "-c",
            "exec cat <&$NODE_CHANNEL_FD >/dev/null",
        ],
    );
    let before = herd.status_until("two workers", |s| workers(s) == 2);
    let out = herd.ctl(&["reload"]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("reload stopped after 0 of 2") && err.contains("not ready within"),
        "{err}"
    );
    // The old workers still serve; the stuck new one is gone.
    let after = herd.status_until("back to the two old workers", |s| workers(s) == 2);
    assert_eq!(pids(&before), pids(&after));
    assert_eq!(running(&after), 2);
}

#[test]
fn the_demo_runs_end_to_end() {
    let out = Command::new(HERD).arg("demo").output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("103 loads for 103 keys"), "{text}");
    assert!(
        text.contains("(0 failed)") && text.contains("; 0 failed"),
        "{text}"
    );
}
