//! The control socket's server side: binding the socket safely, checking each peer, reading one
//! [`Request`] and writing back the [`Answer`] that whoever runs the herd gives it.
//!
//! A Unix stream socket, mode 0600, in a directory only its owner can enter. Each connection's
//! peer credentials are checked: only the user running herd (or root) is served. Requests are
//! bounded ([`MAX_REQUEST`] bytes, [`IDLE_TIME`] to arrive), and so are connections: at most
//! [`MAX_CONNECTIONS`] at once (beyond that, new ones wait in the socket's backlog). An accept
//! that fails (out of descriptors, say) is retried after a delay that doubles from
//! [`ACCEPT_BACKOFF_MIN`] to [`ACCEPT_BACKOFF_MAX`], never in a tight loop.

use std::collections::VecDeque;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot};

use super::follow::{self, Ask};
use super::proto::{parse_request, Answer, Reply, Request, MAX_REQUEST, REQUEST_TIME};
use crate::exit::{Context, Error, Result};
use crate::logs::{Filter, Logs};

/// Control connections served at once; a newcomer beyond this drops the oldest idle one.
pub const MAX_CONNECTIONS: usize = 64;
/// How long a connection has to send its request line (at most the protocol's
/// [`REQUEST_TIME`]): an idle connection holds a descriptor and a place for no more than this.
pub const IDLE_TIME: Duration = if REQUEST_TIME.as_secs() < 5 {
    REQUEST_TIME
} else {
    Duration::from_secs(5)
};
/// The first delay after a failed accept.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// The longest delay after failed accepts: once descriptors are back, a waiting client is
/// served within this.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// The bound control socket; its file is removed when this is dropped (before its name's lock
/// is released).
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// The name's lock ([`lock_name`]), held for as long as the socket is ours.
    _lock: std::os::fd::OwnedFd,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// The lock file beside a control socket: `NAME.sock.lock`.
fn lock_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".lock");
    PathBuf::from(name)
}

/// Takes the name's lock: an exclusive `flock` on [`lock_path`], never following a link, not
/// inherited by workers. Held by the one herd that owns the name; released by the kernel when
/// that herd ends, however it ends, so a stale socket is never a live herd's. The file itself
/// stays (removing it would let two herds lock two files of one name).
fn lock_name(path: &Path) -> Result<std::os::fd::OwnedFd> {
    use rustix::fs::{flock, open, FlockOperation, Mode, OFlags};
    let lock = lock_path(path);
    let fd = open(
        &lock,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::from_raw_mode(0o600),
    )
    .map_err(std::io::Error::from)
    .or_fail(|| format!("cannot open the lock {}", lock.display()))?;
    match flock(&fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(fd),
        Err(rustix::io::Errno::WOULDBLOCK) => Err(Error::failure(format!(
            "another herd is running with the control socket {} (use --name to run a second one)",
            path.display()
        ))),
        Err(e) => {
            Err(std::io::Error::from(e)).or_fail(|| format!("cannot lock {}", lock.display()))
        }
    }
}

/// Binds the control socket at `path` (refusing if another herd holds its name, or answers
/// there).
pub async fn bind(path: &Path) -> Result<ControlSocket> {
    super::check_dir(path, true)?;
    let lock = lock_name(path)?;
    if std::fs::symlink_metadata(path).is_ok() {
        // Only a herd proved dead gives up its name: a refused connect (or no socket any more).
        // Anything else (a full backlog answers EAGAIN) means the other herd is alive.
        match UnixStream::connect(path).await {
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::ConnectionRefused | std::io::ErrorKind::NotFound
                ) =>
            {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                        return Err(e).or_fail(|| {
                            format!("cannot remove the stale socket {}", path.display())
                        })
                    }
                    _ => {}
                }
            }
            _ => {
                return Err(Error::failure(format!(
                    "another herd is running with the control socket {} (use --name to run a second one)",
                    path.display()
                )))
            }
        }
    }
    let listener =
        UnixListener::bind(path).or_fail(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .or_fail(|| format!("cannot make {} private", path.display()))?;
    Ok(ControlSocket {
        listener,
        path: path.to_path_buf(),
        _lock: lock,
    })
}

/// A request read from a client, for whoever runs the herd to answer through `answer`.
#[derive(Debug)]
pub struct Call {
    /// What the client asks.
    pub request: Request,
    /// Where the answer goes. For [`Request::Stop`], answer [`Reply::Stopping`] before
    /// stopping: the client then waits for the connection to close, when herd exits.
    pub answer: oneshot::Sender<Answer>,
}

/// Serves control connections, handing each request to `calls` (and answering `logs` requests
/// from `logs` itself), until the socket is dropped (or no one takes calls any more).
pub async fn serve(sock: ControlSocket, calls: mpsc::Sender<Call>, logs: Logs) {
    let bounds = Bounds {
        connections: MAX_CONNECTIONS,
        idle: IDLE_TIME,
    };
    serve_within(sock, calls, logs, bounds).await
}

/// How many connections are served at once, and how long each has for its request line.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    connections: usize,
    idle: Duration,
}

/// The connections still waiting for their request line, oldest first: when every place is
/// taken, the oldest is dropped for the newcomer.
#[derive(Default)]
struct Waiting {
    next: u64,
    queue: VecDeque<(u64, oneshot::Sender<()>)>,
}

/// Frees a connection's place (and its spot among the waiting) when it ends.
struct Place {
    id: u64,
    waiting: Arc<Mutex<Waiting>>,
    open: Arc<AtomicUsize>,
}

impl Place {
    /// The request line has arrived: the connection is no longer idle.
    fn busy(&self) {
        let mut w = self.waiting.lock().unwrap_or_else(|e| e.into_inner());
        w.queue.retain(|(id, _)| *id != self.id);
    }
}

impl Drop for Place {
    fn drop(&mut self) {
        self.busy();
        self.open.fetch_sub(1, Ordering::Relaxed);
    }
}

async fn serve_within(sock: ControlSocket, calls: mpsc::Sender<Call>, logs: Logs, bounds: Bounds) {
    let waiting = Arc::new(Mutex::new(Waiting::default()));
    let open = Arc::new(AtomicUsize::new(0));
    let mut delay = ACCEPT_BACKOFF_MIN;
    loop {
        // The loop never waits for a connection: it accepts, hands the connection to a task
        // of its own, and accepts again.
        let stream = match sock.listener.accept().await {
            Ok((stream, _)) => {
                delay = ACCEPT_BACKOFF_MIN;
                stream
            }
            Err(e) => {
                // EMFILE and the like stay until something is closed: retrying at once would
                // spin. The pending connection stays in the backlog meanwhile.
                let retry_in_ms = delay.as_millis() as u64;
                if delay == ACCEPT_BACKOFF_MIN {
                    tracing::warn!(error = %e, retry_in_ms, "cannot accept a control connection");
                } else {
                    tracing::debug!(error = %e, retry_in_ms, "cannot accept a control connection");
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
        };
        if calls.is_closed() {
            return;
        }
        let (cancel_tx, cancel) = oneshot::channel();
        let id = {
            let mut w = waiting.lock().unwrap_or_else(|e| e.into_inner());
            if open.load(Ordering::Relaxed) >= bounds.connections {
                // Full: the oldest idle connection makes way. If none is idle (all are being
                // answered), the newcomer is turned away.
                match w.queue.pop_front() {
                    Some((_, oldest)) => drop(oldest.send(())),
                    None => continue,
                }
            }
            w.next += 1;
            let id = w.next;
            w.queue.push_back((id, cancel_tx));
            id
        };
        open.fetch_add(1, Ordering::Relaxed);
        let place = Place {
            id,
            waiting: waiting.clone(),
            open: open.clone(),
        };
        let calls = calls.clone();
        let logs = logs.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, calls, &logs, bounds.idle, &place, cancel).await {
                tracing::debug!(error = %crate::exit::report(&e), "control connection");
            }
            drop(place);
        });
    }
}

async fn connection(
    stream: UnixStream,
    calls: mpsc::Sender<Call>,
    logs: &Logs,
    idle: Duration,
    place: &Place,
    cancel: oneshot::Receiver<()>,
) -> Result<()> {
    // The peer's pid is not asked for: it is 0 for a peer in another PID namespace.
    let uid = {
        use std::os::fd::AsFd;
        herd::peer_uid(stream.as_fd()).or_fail(|| "peer credentials".into())?
    };
    let me = rustix::process::geteuid().as_raw();
    let (read, mut write) = stream.into_split();
    let answer = if uid != me && uid != 0 {
        tracing::warn!(uid, "control connection refused: another user");
        Answer::err("permission denied: another user's herd")
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new(read.take(MAX_REQUEST));
        tokio::select! {
            read = tokio::time::timeout(idle, reader.read_line(&mut line)) => {
                read.or_fail(|| "no request in time".into())?
                    .or_fail(|| "cannot read the request".into())?;
            }
            _ = cancel => return Err(Error::failure("idle, dropped for a newer connection")),
        }
        place.busy();
        match parse_request(&line) {
            Err(e) => Answer::err(e),
            Ok(Request::Logs {
                lines,
                worker,
                since_ms,
                follow,
            }) => {
                let filter = Filter {
                    worker,
                    since: since_ms.map(|ms| ms as f64 / 1000.0),
                };
                let ask = Ask {
                    lines,
                    filter,
                    follow,
                };
                return follow::serve(reader, &mut write, logs, ask).await;
            }
            Ok(request) => {
                let (tx, rx) = oneshot::channel();
                let call = Call {
                    request,
                    answer: tx,
                };
                match calls.send(call).await {
                    Ok(()) => rx.await.unwrap_or_else(|_| Answer::err("herd is ending")),
                    Err(_) => Answer::err("herd is ending"),
                }
            }
        }
    };
    write
        .write_all(answer.to_line().as_bytes())
        .await
        .or_fail(|| "cannot write the answer".into())?;
    if matches!(answer, Answer::Ok(Reply::Stopping { .. })) {
        // The client waits for the connection to close: herd's exit closes it.
        std::future::pending::<()>().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    /// Reads one line from `c`, waiting at most `limit`: `None` if none came in time, `Some("")`
    /// if the server closed the connection.
    async fn line_within(c: &mut UnixStream, limit: Duration) -> Option<String> {
        let mut line = String::new();
        let mut reader = BufReader::new(c);
        match tokio::time::timeout(limit, reader.read_line(&mut line)).await {
            Ok(r) => {
                r.unwrap();
                Some(line)
            }
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn a_newcomer_beyond_the_cap_drops_the_oldest_idle_connection() {
        let dir = herd_test_support::process::TempDir::new("control-bounds");
        let path = dir.path().join("control.sock");
        let sock = bind(&path).await.unwrap();
        let (calls, _keep) = mpsc::channel(1);
        let bounds = Bounds {
            connections: 2,
            idle: Duration::from_secs(30),
        };
        tokio::spawn(serve_within(sock, calls, Logs::default(), bounds));
        // Two idle connections take both places.
        let mut first = UnixStream::connect(&path).await.unwrap();
        let _second = UnixStream::connect(&path).await.unwrap();
        let start = Instant::now();
        // A third is served at once; the oldest idle one is closed for it.
        let mut third = UnixStream::connect(&path).await.unwrap();
        third.write_all(b"not json\n").await.unwrap();
        let answer = line_within(&mut third, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(answer.contains("bad request"), "{answer}");
        let got = line_within(&mut first, Duration::from_secs(10)).await;
        assert_eq!(got.as_deref(), Some(""), "closed without an answer");
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{:?}",
            start.elapsed()
        );
    }
}
