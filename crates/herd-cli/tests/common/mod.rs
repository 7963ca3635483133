//! What the `herd run` tests share: a harness that runs the real `herd` binary and reads its
//! output line by line, the control commands, and HTTP against the demo server. The generic
//! process harness (temporary directories, output lines, /proc) is herd-test-support's.

#![allow(dead_code)] // each test file uses a different part

pub mod http;
pub mod npm;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

#[allow(unused_imports)] // each test file uses a different part
pub use herd_cli::control::{Listening, Report};
use herd_test_support::process::{lines, TempDir};

pub const HERD: &str = env!("CARGO_BIN_EXE_herd");
pub const DEADLINE: Duration = Duration::from_secs(30);

/// `--listen` and `--env PORT=` for the demo server on one free port: herd binds it, and the
/// server's own `listen(PORT)` is handed herd's socket.
pub fn demo_port() -> (String, String) {
    let port = herd_test_support::process::free_port();
    (format!("127.0.0.1:{port}"), format!("PORT={port}"))
}

pub fn demo_server() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/demo/server.js")
}

/// A running `herd run` with its output collected line by line.
pub struct Herd {
    child: Option<Child>,
    pub control: PathBuf,
    pub out: mpsc::Receiver<String>,
    pub err: mpsc::Receiver<String>,
    _dir: TempDir,
}

impl Herd {
    pub fn start(name: &str, args: &[&str]) -> Herd {
        Herd::start_after(name, ":", args)
    }

    /// Like [`Herd::start`], with the shell running `prelude` first (`ulimit -n 64`, say).
    pub fn start_after(name: &str, prelude: &str, args: &[&str]) -> Herd {
        // What a user who built herd has: the Node addon beside the binary.
        node_addon();
        let dir = TempDir::new(name);
        let control = dir.0.join("control.sock");
        // Started through a shell that leaves descriptor 7 open without close-on-exec, as a
        // careless parent might: herd must not hand it on to its workers.
        let script = format!("{prelude}; exec 7</dev/null; exec \"$0\" \"$@\"");
        let mut child = Command::new("sh")
            .args(["-c", &script, HERD])
            .arg("run")
            .arg("--control")
            .arg(&control)
            .args(args)
            .env("HERD_LOG", "herd=info,herd_cli=info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let out = lines(child.stdout.take().unwrap());
        let err = lines(child.stderr.take().unwrap());
        Herd {
            child: Some(child),
            control,
            out,
            err,
            _dir: dir,
        }
    }

    /// `herd run` of the demo's Node HTTP server, listening on one port of 127.0.0.1 (see
    /// [`Herd::listening`]), with `args` before the command.
    pub fn serve_demo(name: &str, args: &[&str]) -> Herd {
        let server = demo_server();
        let (listen, port) = demo_port();
        let mut all = vec!["--listen", &listen, "--env", &port];
        all.extend(args);
        all.extend(["--", "node", server.to_str().unwrap()]);
        Herd::start(name, &all)
    }

    /// The next stdout line matching `want`, within the deadline.
    pub fn stdout_line(&self, want: impl Fn(&str) -> bool) -> String {
        wait_line(&self.out, want, "stdout")
    }

    pub fn stderr_line(&self, want: impl Fn(&str) -> bool) -> String {
        wait_line(&self.err, want, "stderr")
    }

    /// The address herd reports it listens on.
    pub fn listening(&self) -> SocketAddr {
        let line = self.stderr_line(|l| l.starts_with("herd: listening on "));
        line["herd: listening on ".len()..].parse().unwrap()
    }

    /// Runs `herd CMD --control ...`.
    pub fn ctl(&self, args: &[&str]) -> Output {
        ctl_at(&self.control, args)
    }

    pub fn status(&self) -> Report {
        self.try_status()
            .unwrap_or_else(|e| panic!("herd status: {e}"))
    }

    /// `herd status --json`, read as the control protocol's typed report.
    pub fn try_status(&self) -> Result<Report, String> {
        let out = self.ctl(&["status", "--json"]);
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned());
        }
        serde_json::from_slice(&out.stdout).map_err(|e| e.to_string())
    }

    /// Polls the status until `want` holds (herd may still be starting: its control socket
    /// appears once it runs).
    pub fn status_until(&self, what: &str, want: impl Fn(&Report) -> bool) -> Report {
        let deadline = Instant::now() + DEADLINE;
        loop {
            let last = match self.try_status() {
                Ok(s) if want(&s) => return s,
                Ok(s) => format!("last status {s:?}"),
                Err(e) => format!("herd status: {e}"),
            };
            assert!(Instant::now() < deadline, "never: {what}; {last}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// herd's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("herd is running").id()
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        let pid = self.child.as_ref().unwrap().id() as i32;
        rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), sig).unwrap();
    }

    /// Waits for herd to exit; its exit code.
    pub fn wait(&mut self) -> Option<i32> {
        let mut child = self.child.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || tx.send(child.wait().unwrap()));
        rx.recv_timeout(DEADLINE).expect("herd exits").code()
    }
}

impl Drop for Herd {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// herd's Node addon (crates/herd-node), built beside the `herd` binary the tests run, where
/// `herd run` finds it and names it to its Node workers (a plain `cargo test` builds no cdylib).
/// Built once per test process; cargo makes it a no-op when it is up to date.
pub fn node_addon() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let bin_dir = Path::new(HERD).parent().unwrap();
            let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
            cmd.args(["build", "--locked", "-p", "herd-node"])
                .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."));
            if bin_dir.ends_with("release") {
                cmd.arg("--release");
            }
            let out = cmd.output().expect("cargo runs");
            assert!(
                out.status.success(),
                "cargo build -p herd-node failed:\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let addon = bin_dir.join("libherd_node.so");
            assert!(addon.is_file(), "{} was built", addon.display());
            addon
        })
        .clone()
}

/// The next line from `rx` matching `want` within [`DEADLINE`].
pub fn wait_line(rx: &mpsc::Receiver<String>, want: impl Fn(&str) -> bool, what: &str) -> String {
    herd_test_support::process::wait_line(rx, DEADLINE, want, what)
}

/// One HTTP/1.1 request with `Connection: close`; the status code and the body.
pub fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let code = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("not HTTP: {text:?}")))?;
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("").to_string();
    Ok((code, body))
}

/// How many workers in a status report are running (not starting or retiring).
pub fn running(s: &Report) -> usize {
    s.status
        .workers
        .iter()
        .filter(|w| w.state == "running")
        .count()
}

/// How many workers a status report lists.
pub fn workers(s: &Report) -> usize {
    s.status.workers.len()
}

/// The workers' process ids.
pub fn pids(s: &Report) -> Vec<u64> {
    s.status.workers.iter().map(|w| u64::from(w.pid)).collect()
}

/// `GET /` from the demo server: the pid of the worker that answered.
pub fn get_pid(addr: SocketAddr) -> std::io::Result<u64> {
    let (code, body) = http_get(addr, "/")?;
    if code != 200 {
        return Err(std::io::Error::other(format!("HTTP {code}: {body}")));
    }
    let v: serde_json::Value = serde_json::from_str(&body).map_err(std::io::Error::other)?;
    Ok(v["pid"].as_u64().unwrap_or(0))
}

/// Client threads making requests in a loop until stopped, counting what succeeded and what
/// failed.
pub struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    clients: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    /// Starts `clients` threads; each calls `request(client, round)` (client from 0, round
    /// from 1) until [`Load::stop`]: true if the request succeeded.
    pub fn start(
        clients: usize,
        request: impl Fn(usize, u64) -> bool + Send + Sync + 'static,
    ) -> Load {
        let request = Arc::new(request);
        let stop = Arc::new(AtomicBool::new(false));
        let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let clients = (0..clients)
            .map(|c| {
                let (stop, ok, failed, request) =
                    (stop.clone(), ok.clone(), failed.clone(), request.clone());
                std::thread::spawn(move || {
                    let mut round = 0;
                    while !stop.load(Ordering::Relaxed) {
                        round += 1;
                        let counter = if request(c, round) { &ok } else { &failed };
                        counter.fetch_add(1, Ordering::Relaxed);
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            clients,
        }
    }

    /// Requests that succeeded so far.
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the clients and waits for them; (succeeded, failed).
    pub fn stop(self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for c in self.clients {
            c.join().unwrap();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// Runs `herd CMD --control CONTROL` (from another thread than the herd's owner).
pub fn ctl_at(control: &Path, args: &[&str]) -> Output {
    Command::new(HERD)
        .args(args)
        .arg("--control")
        .arg(control)
        .output()
        .unwrap()
}

/// Every line left on `rx` until it closes (herd has exited), within the deadline.
pub fn rest(rx: &mpsc::Receiver<String>) -> Vec<String> {
    let mut lines = Vec::new();
    while let Ok(line) = rx.recv_timeout(DEADLINE) {
        lines.push(line);
    }
    lines
}

/// `herd stop`: it succeeds and herd exits 0 (how the workers ended is not checked; see
/// [`stop_gracefully`]).
pub fn stop(mut herd: Herd) {
    let out = herd.ctl(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(herd.wait(), Some(0));
}

/// `herd stop`, and checks it was graceful: herd exits 0, every worker exited 0 (retired with
/// exit code 0), nothing was killed.
pub fn stop_gracefully(herd: Herd, workers: usize) {
    let out = herd.ctl(&["stop"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stop_gracefully_after(herd, workers);
}

/// After a `herd stop`: herd exits 0, every worker exited 0 (retired with exit code 0), nothing
/// was killed.
pub fn stop_gracefully_after(mut herd: Herd, workers: usize) {
    assert_eq!(herd.wait(), Some(0));
    let log = rest(&herd.err);
    let killed: Vec<_> = log.iter().filter(|l| l.contains("SIGKILL")).collect();
    assert!(killed.is_empty(), "{killed:?}");
    let retired: Vec<_> = log
        .iter()
        .filter(|l| l.contains("worker retired"))
        .collect();
    assert_eq!(retired.len(), workers, "{log:?}");
    assert!(
        retired.iter().all(|l| l.contains("exit code 0")),
        "{retired:?}"
    );
}
