//! The control socket's server side: binding the socket safely, checking each peer, reading one
//! [`Request`] and writing back the [`Answer`] that whoever runs the herd gives it.
//!
//! A Unix stream socket, mode 0600, in a directory only its owner can enter. Each connection's
//! peer credentials are checked: only the user running herd (or root) is served. Requests are
//! bounded ([`MAX_REQUEST`] bytes, [`IDLE_TIME`] to arrive), and so are connections: at most
//! [`MAX_CONNECTIONS`] at once (beyond that, new ones wait in the socket's backlog). An accept
//! that fails (out of descriptors, say) is retried after a delay that doubles from
//! [`ACCEPT_BACKOFF_MIN`] to [`ACCEPT_BACKOFF_MAX`], never in a tight loop.

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use super::proto::{parse_request, Answer, Reply, Request, MAX_REQUEST, REQUEST_TIME};
use crate::exit::{Context, Error, Result};

/// Control connections served at once; more wait in the listen backlog until one ends.
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

/// Makes sure `dir` exists, belongs to us and no one else can write to it.
fn private_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
        .or_fail(|| format!("cannot create {}", dir.display()))?;
    let meta = std::fs::metadata(dir).or_fail(|| format!("cannot inspect {}", dir.display()))?;
    let me = rustix::process::geteuid().as_raw();
    let sticky = meta.mode() & 0o1000 != 0;
    // A shared sticky directory (/tmp) is fine: no one else can replace our socket there, and
    // the socket itself is 0600 with its peers checked. Otherwise the directory must be ours
    // and closed to others' writes.
    if !sticky && meta.uid() != me {
        return Err(Error::failure(format!(
            "{} belongs to uid {}, not to this user ({me}): refusing to put the control socket there",
            dir.display(),
            meta.uid()
        )));
    }
    if !sticky && meta.mode() & 0o022 != 0 {
        return Err(Error::failure(format!(
            "{} is writable by others (mode {:o}): refusing to put the control socket there",
            dir.display(),
            meta.mode() & 0o777
        )));
    }
    Ok(())
}

/// The bound control socket; its file is removed when this is dropped.
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket at `path` (refusing if another herd answers there).
pub async fn bind(path: &Path) -> Result<ControlSocket> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_dir(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            return Err(Error::failure(format!(
                "another herd is running with the control socket {} (use --name to run a second one)",
                path.display()
            )));
        }
        std::fs::remove_file(path)
            .or_fail(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).or_fail(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .or_fail(|| format!("cannot make {} private", path.display()))?;
    Ok(ControlSocket {
        listener,
        path: path.to_path_buf(),
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

/// Serves control connections, handing each request to `calls`, until the socket is dropped
/// (or no one takes calls any more).
pub async fn serve(sock: ControlSocket, calls: mpsc::Sender<Call>) {
    let bounds = Bounds {
        connections: MAX_CONNECTIONS,
        idle: IDLE_TIME,
    };
    serve_within(sock, calls, bounds).await
}

/// How many connections are served at once, and how long each has for its request line.
#[derive(Clone, Copy, Debug)]
struct Bounds {
    connections: usize,
    idle: Duration,
}

async fn serve_within(sock: ControlSocket, calls: mpsc::Sender<Call>, bounds: Bounds) {
    let places = Arc::new(Semaphore::new(bounds.connections));
    let mut delay = ACCEPT_BACKOFF_MIN;
    loop {
        // Wait for a free place before accepting: beyond the cap, clients wait in the backlog.
        let Ok(place) = places.clone().acquire_owned().await else {
            return;
        };
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
        let calls = calls.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(stream, calls, bounds.idle).await {
                tracing::debug!(error = %crate::exit::report(&e), "control connection");
            }
            drop(place);
        });
    }
}

async fn connection(stream: UnixStream, calls: mpsc::Sender<Call>, idle: Duration) -> Result<()> {
    let cred =
        rustix::net::sockopt::socket_peercred(&stream).or_fail(|| "peer credentials".into())?;
    let me = rustix::process::geteuid();
    let (read, mut write) = stream.into_split();
    let answer = if cred.uid != me && !cred.uid.is_root() {
        tracing::warn!(
            uid = cred.uid.as_raw(),
            pid = cred.pid.as_raw_nonzero().get(),
            "control connection refused: another user"
        );
        Answer::err("permission denied: another user's herd")
    } else {
        let mut line = String::new();
        let mut reader = BufReader::new(read.take(MAX_REQUEST));
        tokio::time::timeout(idle, reader.read_line(&mut line))
            .await
            .or_fail(|| "no request in time".into())?
            .or_fail(|| "cannot read the request".into())?;
        match parse_request(&line) {
            Err(e) => Answer::err(e),
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
    async fn connections_are_capped_and_idle_ones_closed() {
        let dir = herd_test_support::process::TempDir::new("control-bounds");
        let path = dir.path().join("control.sock");
        let sock = bind(&path).await.unwrap();
        let (calls, _keep) = mpsc::channel(1);
        let bounds = Bounds {
            connections: 2,
            idle: Duration::from_millis(300),
        };
        tokio::spawn(serve_within(sock, calls, bounds));
        // Two idle connections take both places.
        let mut idle = vec![
            UnixStream::connect(&path).await.unwrap(),
            UnixStream::connect(&path).await.unwrap(),
        ];
        let start = Instant::now();
        // A third waits in the backlog: its request is not read while both places are taken.
        let mut third = UnixStream::connect(&path).await.unwrap();
        third.write_all(b"not json\n").await.unwrap();
        assert_eq!(
            line_within(&mut third, Duration::from_millis(150)).await,
            None
        );
        // The idle ones are closed at their deadline; then the third is served.
        for c in &mut idle {
            let got = line_within(c, Duration::from_secs(10)).await;
            assert_eq!(got.as_deref(), Some(""), "closed without an answer");
        }
        let answer = line_within(&mut third, Duration::from_secs(10))
            .await
            .unwrap();
        assert!(answer.contains("bad request"), "{answer}");
        assert!(
            start.elapsed() >= Duration::from_millis(250),
            "{:?}",
            start.elapsed()
        );
    }
}
