//! What covers a SIGKILL of herd itself: where herd may make a cgroup v2 of its own (a child of
//! the cgroup it runs in: as root, or under a delegated systemd unit), every worker moves into
//! it before it runs, and a watchdog process (herd re-executed as `herd __watchdog DIR`, in a
//! session of its own) waits for end-of-file on a pipe only herd holds. When herd is gone, for
//! whatever reason, the watchdog writes `1` to the cgroup's `cgroup.kill`, so the kernel kills
//! every process in it, whatever it did (a new session, a double fork), then removes it.
//!
//! Where no cgroup can be made (not writable, cgroup v1 only, a kernel without `cgroup.kill`),
//! or `HERD_CGROUP=off` is in its environment, herd runs without one: workers still die with herd (`PR_SET_PDEATHSIG`), what they started
//! does not (see docs/reliability.md).

use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

/// The first argument that makes herd the watchdog.
pub const WATCHDOG: &str = "__watchdog";

/// How long the watchdog waits for the cgroup to empty before it removes it.
const EMPTY_WITHIN: Duration = Duration::from_secs(5);

/// A running watchdog over the workers' cgroup; dropping it (or herd's death) ends it.
pub struct Watchdog {
    dir: PathBuf,
    /// Its standard input: the watchdog acts at end-of-file.
    pipe: Option<ChildStdin>,
    child: Child,
}

/// How long herd waits for its watchdog to clear the cgroup as herd ends: a little longer
/// than the watchdog waits for it to empty.
const CLEARED_WITHIN: Duration = Duration::from_secs(6);

impl Drop for Watchdog {
    /// Closes the watchdog's input and waits (at most 6 s) for it to kill and
    /// remove the cgroup: where herd is PID 1 of a namespace, the kernel kills the watchdog
    /// with herd, and the cgroup would be left behind.
    fn drop(&mut self) {
        drop(self.pipe.take());
        let deadline = Instant::now() + CLEARED_WITHIN;
        while Instant::now() < deadline {
            match self.child.try_wait() {
                Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                _ => return,
            }
        }
    }
}

impl Watchdog {
    /// The cgroup the workers go into.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The cgroup v2 directory this process is in: the cgroup2 mount point and the path in
/// `/proc/self/cgroup`'s `0::` line.
fn own_cgroup() -> Option<PathBuf> {
    let line = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = line.lines().find_map(|l| l.strip_prefix("0::"))?;
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    // "... MOUNT_POINT OPTIONS ... - FSTYPE SOURCE ...": the fifth field, when the type is cgroup2.
    let mount = mounts.lines().find_map(|l| {
        let (before, after) = l.split_once(" - ")?;
        after
            .starts_with("cgroup2 ")
            .then(|| before.split(' ').nth(4))
            .flatten()
    })?;
    Some(Path::new(mount).join(path.trim_start_matches('/')))
}

/// Makes herd's cgroup for its workers and starts its watchdog; `None` (and why, in the debug
/// log) where Linux does not let herd.
pub fn start() -> Option<Watchdog> {
    let why = match try_start() {
        Ok(w) => {
            tracing::info!(cgroup = %w.dir.display(), "workers run in a cgroup of herd's own: a kill -9 of herd takes whatever they started with them");
            return Some(w);
        }
        Err(why) => why,
    };
    tracing::info!("no cgroup of herd's own ({why}): a kill -9 of herd kills its workers, not what they started");
    None
}

fn try_start() -> Result<Watchdog, String> {
    if std::env::var_os("HERD_CGROUP").is_some_and(|v| v == "off") {
        return Err("HERD_CGROUP=off".into());
    }
    let parent = own_cgroup().ok_or("no cgroup v2 mounted")?;
    // The pid alone is not unique on the host: herd as PID 1 of two containers is 1 in both.
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let dir = parent.join(format!("herd-{}-{nanos:08x}", std::process::id()));
    std::fs::create_dir(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !dir.join("cgroup.kill").exists() {
        let _ = std::fs::remove_dir(&dir);
        return Err("the kernel has no cgroup.kill".into());
    }
    let exe = std::env::current_exe().map_err(|e| format!("herd's own executable: {e}"));
    let child = exe.and_then(|exe| {
        Command::new(exe)
            .arg(WATCHDOG)
            .arg(&dir)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start the watchdog: {e}"))
    });
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            let _ = std::fs::remove_dir(&dir);
            return Err(e);
        }
    };
    let pipe = child.stdin.take().expect("piped");
    Ok(Watchdog {
        dir,
        pipe: Some(pipe),
        child,
    })
}

/// The watchdog (`herd __watchdog DIR`): in a session of its own (no terminal's signals reach
/// it), and deaf to SIGTERM, SIGINT and SIGHUP, it reads its standard input until end-of-file
/// (herd is gone), then kills everything in the cgroup `DIR`, waits for it to empty (at most
/// 5 s) and removes it.
pub fn watchdog(args: Vec<std::ffi::OsString>) -> ! {
    let Some(dir) = args.into_iter().next().map(PathBuf::from) else {
        std::process::exit(2);
    };
    let _ = rustix::process::setsid();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build();
    if let Ok(runtime) = runtime {
        runtime.block_on(async {
            use tokio::io::AsyncReadExt;
            use tokio::signal::unix::{signal, SignalKind};
            // Handled, and so ignored: only end-of-file ends the wait.
            let _deaf: Vec<_> = [
                SignalKind::terminate(),
                SignalKind::interrupt(),
                SignalKind::hangup(),
            ]
            .into_iter()
            .filter_map(|k| signal(k).ok())
            .collect();
            let mut stdin = tokio::io::stdin();
            let mut buf = [0u8; 64];
            while stdin.read(&mut buf).await.is_ok_and(|n| n > 0) {}
        });
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    let deadline = Instant::now() + EMPTY_WITHIN;
    while Instant::now() < deadline {
        let events = std::fs::read_to_string(dir.join("cgroup.events")).unwrap_or_default();
        if !events.lines().any(|l| l == "populated 1") {
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = std::fs::remove_dir(&dir);
    std::process::exit(0);
}
