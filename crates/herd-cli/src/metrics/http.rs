//! The `/metrics` endpoint: a small HTTP/1.1 server on the `--metrics` address that answers
//! `GET /metrics` with [`render`](super::render)'s text (`Connection: close`) and anything else
//! with 404. Each scrape asks for a status report through the same calls the control socket
//! makes, so it sees what `herd status` sees and never touches the service itself.
//!
//! Bounded like every peer of herd: at most [`MAX_SCRAPES`] connections at once (more are
//! closed at once), a request head of at most [`MAX_HEAD`] bytes that must arrive within
//! [`HEAD_TIME`], and [`ANSWER_TIME`] for the report and for the write.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::control::proto::{Answer, Reply, Request};
use crate::control::server::Call;

/// Scrapes served at once.
pub const MAX_SCRAPES: usize = 16;
/// The longest request head read.
pub const MAX_HEAD: usize = 8 << 10;
/// How long a scraper has to send its request.
pub const HEAD_TIME: Duration = Duration::from_secs(5);
/// How long the report, and then the write, may take.
pub const ANSWER_TIME: Duration = Duration::from_secs(10);

/// Serves scrapes on `listener` until herd ends, asking `calls` for each report.
pub async fn serve(listener: TcpListener, calls: mpsc::Sender<Call>) {
    let places = Arc::new(Semaphore::new(MAX_SCRAPES));
    loop {
        let stream = match listener.accept().await {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::debug!(error = %e, "cannot accept a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            continue; // Dropped: closed at once.
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let _ = scrape(stream, calls).await;
            drop(place);
        });
    }
}

/// What the request head asks for: whether it is `GET /metrics`; `None` if it is not HTTP.
fn wants_metrics(head: &[u8]) -> Option<bool> {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or("");
    Some((method == "GET" || method == "HEAD") && path == "/metrics")
}

async fn scrape(mut stream: TcpStream, calls: mpsc::Sender<Call>) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n.min(MAX_HEAD - head.len())]);
        }
        Ok::<_, std::io::Error>(())
    };
    if tokio::time::timeout(HEAD_TIME, read).await.is_err() {
        return Ok(());
    }
    let (status, body) = match wants_metrics(&head) {
        None => ("400 Bad Request", "not an HTTP/1 request\n".to_string()),
        Some(false) => ("404 Not Found", "herd serves /metrics only\n".to_string()),
        Some(true) => match report(&calls).await {
            Some(text) => ("200 OK", text),
            None => (
                "503 Service Unavailable",
                "herd did not answer\n".to_string(),
            ),
        },
    };
    let kind = if status.starts_with("200") {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = tokio::time::timeout(ANSWER_TIME, stream.write_all(reply.as_bytes())).await;
    Ok(())
}

/// A fresh status report, rendered; `None` if herd did not answer in time.
async fn report(calls: &mpsc::Sender<Call>) -> Option<String> {
    let (tx, rx) = oneshot::channel();
    let call = Call {
        request: Request::Status,
        answer: tx,
    };
    let asked = async {
        calls.send(call).await.ok()?;
        match rx.await.ok()? {
            Answer::Ok(Reply::Status(r)) => Some(super::render(&r)),
            _ => None,
        }
    };
    tokio::time::timeout(ANSWER_TIME, asked)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(
            wants_metrics(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(true)
        );
        assert_eq!(
            wants_metrics(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(true)
        );
        assert_eq!(wants_metrics(b"GET / HTTP/1.1\r\n\r\n"), Some(false));
        assert_eq!(
            wants_metrics(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(false)
        );
        assert_eq!(wants_metrics(b"hello\r\n"), None);
        assert_eq!(wants_metrics(b"\xff\xfe"), None);
        assert_eq!(wants_metrics(b""), None);
    }
}
