//! The control socket's client side: what `herd status`, `reload`, `scale` and `stop` (and the
//! demo) send, and the typed replies they get. The socket's directory is checked before
//! connecting ([`check_dir`](super::check_dir)); what the answer says is untrusted, so its
//! text reaches the terminal only through [`printable`](super::printable).

use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

use super::proto::{Answer, Reply, Report, Request, MAX_ANSWER};
use crate::exit::{Context, Error, Result};

/// Sends `request` to the herd at `path` and returns its reply (waiting up to `limit`; for
/// [`Request::Stop`], up to `limit` more for herd to exit).
pub async fn request(path: &Path, request: Request, limit: Duration) -> Result<Reply> {
    // Talk to no one's socket but ours: the directory is checked first (a missing one means
    // no herd, which the connect reports).
    if path
        .parent()
        .is_none_or(|d| d.as_os_str().is_empty() || std::fs::symlink_metadata(d).is_ok())
    {
        super::check_dir(path, false)?;
    }
    let stream = UnixStream::connect(path).await.or_fail(|| {
        format!(
            "no herd answers at {} (is it running? --name or --control choose which)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    // A refusal may arrive (and the connection close) before the request is written: the
    // answer says why, so a failed write is not the error to report.
    let _ = write.write_all(request.to_line().as_bytes()).await;
    let mut reader = BufReader::new(read.take(MAX_ANSWER));
    let mut line = String::new();
    tokio::time::timeout(limit, reader.read_line(&mut line))
        .await
        .or_fail(|| "herd did not answer in time".into())?
        .or_fail(|| "cannot read herd's answer".into())?;
    if line.is_empty() {
        return Err(Error::failure(
            "herd closed the connection without an answer",
        ));
    }
    let answer: Answer =
        serde_json::from_str(&line).or_fail(|| "herd's answer is not understood".into())?;
    let reply = answer
        .into_result()
        .map_err(|e| Error::failure(super::printable(&e)))?;
    if let Reply::Stopping { .. } = reply {
        // Wait for herd to finish stopping: it closes the connection when it exits.
        let mut rest = String::new();
        let _ = tokio::time::timeout(limit, reader.read_line(&mut rest)).await;
    }
    Ok(reply)
}

fn unexpected(request: Request, reply: Reply) -> Error {
    Error::failure(format!("herd answered {request:?} with {reply:?}"))
}

/// The status of the herd at `path`.
pub async fn status(path: &Path, limit: Duration) -> Result<Report> {
    match request(path, Request::Status, limit).await? {
        Reply::Status(report) => Ok(*report),
        other => Err(unexpected(Request::Status, other)),
    }
}

/// Reloads the herd at `path`; how many workers were replaced.
pub async fn reload(path: &Path, limit: Duration) -> Result<usize> {
    match request(path, Request::Reload, limit).await? {
        Reply::Reloaded { replaced } => Ok(replaced),
        other => Err(unexpected(Request::Reload, other)),
    }
}

/// Scales the herd at `path` to `workers` workers.
pub async fn scale(path: &Path, workers: usize, limit: Duration) -> Result<()> {
    match request(path, Request::Scale { workers }, limit).await? {
        Reply::Scaled { .. } => Ok(()),
        other => Err(unexpected(Request::Scale { workers }, other)),
    }
}

/// Stops the herd at `path`; returns once it has exited (or `limit` passed).
pub async fn stop(path: &Path, limit: Duration) -> Result<()> {
    match request(path, Request::Stop, limit).await? {
        Reply::Stopping { .. } => Ok(()),
        other => Err(unexpected(Request::Stop, other)),
    }
}
