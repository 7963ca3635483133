//! What herd prints of its workers: their output lines (`[wN] line`, stderr's on stderr) and
//! messages (one JSON object per line), or with `--log-format json` everything as JSON lines
//! on stdout with a timestamp.

use herd::{OutputStream, WorkerId};
use serde_json::json;
use tokio::io::AsyncWriteExt;

/// Prints worker output and messages to herd's stdout and stderr.
pub(super) struct Printer {
    json: bool,
    out: tokio::io::Stdout,
    err: tokio::io::Stderr,
}

/// Seconds since the epoch.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Printer {
    /// A printer for text (`json` false) or JSON lines.
    pub(super) fn new(json: bool) -> Printer {
        Printer {
            json,
            out: tokio::io::stdout(),
            err: tokio::io::stderr(),
        }
    }

    /// A line of a worker's output.
    pub(super) async fn line(&mut self, worker: WorkerId, stream: OutputStream, line: &str) {
        if self.json {
            let v =
                json!({"ts": now(), "worker": worker.0, "stream": stream.as_str(), "line": line});
            self.write(format!("{v}\n"), false).await;
        } else {
            self.write(
                format!("[w{worker}] {line}\n"),
                stream == OutputStream::Stderr,
            )
            .await;
        }
    }

    /// A message from a worker.
    pub(super) async fn message(&mut self, worker: WorkerId, message: serde_json::Value) {
        let v = if self.json {
            json!({"ts": now(), "worker": worker.0, "message": message})
        } else {
            json!({"worker": worker.0, "message": message})
        };
        self.write(format!("{v}\n"), false).await;
    }

    /// Makes sure everything printed is written.
    pub(super) async fn flush(&mut self) {
        let _ = self.out.flush().await;
        let _ = self.err.flush().await;
    }

    async fn write(&mut self, text: String, to_err: bool) {
        let r = if to_err {
            self.err.write_all(text.as_bytes()).await
        } else {
            self.out.write_all(text.as_bytes()).await
        };
        // A reader that went away is not a reason to stop the workers.
        let _ = r;
    }
}
