//! A process harness for tests: free ports, private temporary directories, a child's output read
//! line by line and waited on with a deadline, and what `/proc` says about a process (alive,
//! children and zombies, descriptors, resident memory).

use std::io::{BufRead, BufReader, Read};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (free when asked: bind it soon, and retry if it was taken).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// A number unlikely to repeat, for names of temporary things.
pub fn unique() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    std::collections::hash_map::RandomState::new()
        .build_hasher()
        .finish()
}

/// A private temporary directory, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// Creates `herd-<name>-<pid>-<unique>` in the system's temporary directory.
    pub fn new(name: &str) -> TempDir {
        let p =
            std::env::temp_dir().join(format!("herd-{name}-{}-{:x}", std::process::id(), unique()));
        std::fs::create_dir_all(&p).expect("a temporary directory");
        TempDir(p)
    }

    /// The directory.
    pub fn path(&self) -> &std::path::Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The lines of `r` (a child's stdout or stderr), read on a thread of their own.
pub fn lines(r: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(r).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// The next line from `rx` matching `want` within `deadline`; panics naming `what` otherwise.
pub fn wait_line(
    rx: &mpsc::Receiver<String>,
    deadline: Duration,
    want: impl Fn(&str) -> bool,
    what: &str,
) -> String {
    let deadline = Instant::now() + deadline;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if want(&l) => return l,
            Ok(_) => {}
            Err(e) => panic!("no matching {what} line: {e}"),
        }
    }
}

/// The state letter of process `pid` (`R`, `S`, `Z`...), if it exists.
fn state(pid: impl std::fmt::Display) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit(')').next()?.trim_start().chars().next()
}

/// Whether process `pid` runs: a zombie has exited (only its parent can reap it), so it does not.
pub fn pid_alive(pid: u64) -> bool {
    state(pid).is_some_and(|s| s != 'Z')
}

/// The children of `pid`, and how many of them are zombies, from every process's parent in
/// /proc (kernels without `CONFIG_PROC_CHILDREN` have no `task/*/children`). `herd run`'s
/// watchdog (`herd __watchdog`, a child of herd's for its whole life) is not counted.
pub fn children(pid: u32) -> (usize, usize) {
    let mut kids = 0;
    let mut zombies = 0;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    for entry in dir.flatten() {
        let Some(child) = entry.file_name().to_str().map(str::to_owned) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{child}/stat")) else {
            continue;
        };
        let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let state = fields.next().and_then(|s| s.chars().next());
        if fields.next().and_then(|p| p.parse::<u32>().ok()) != Some(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{child}/cmdline")).unwrap_or_default();
        if cmdline.split(|b| *b == 0).nth(1) == Some(b"__watchdog".as_slice()) {
            continue;
        }
        kids += 1;
        if state == Some('Z') {
            zombies += 1;
        }
    }
    (kids, zombies)
}

/// The descriptors `pid` holds: the fewest seen over a few samples (a process starting or
/// reaping a child holds a few for a moment: what matters is what stays).
pub fn fd_count(pid: u32) -> usize {
    (0..20)
        .map(|_| {
            std::thread::sleep(Duration::from_millis(5));
            std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(usize::MAX, |d| d.count())
        })
        .min()
        .unwrap_or(usize::MAX)
}

/// The resident set size of `pid`, in kB (0 if it cannot be read).
pub fn rss_kb(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// This test process's own resident set size, in bytes.
pub fn own_rss() -> u64 {
    rss_kb(std::process::id()) * 1024
}
