//! What herd prints of its workers: their output lines (`[wN] line`, stderr's on stderr) and
//! messages (one JSON object per line), or with `--log-format json` everything as JSON lines
//! on stdout with a timestamp. Everything goes through the [`crate::sink`], so printing never
//! waits for the reader. Output lines are also kept for `herd logs` ([`crate::logs`]).

use herd::{OutputStream, WorkerId};
use serde_json::json;

use crate::logs::Logs;
use crate::sink::{self, Sink, Stream};

/// Prints worker output and messages to herd's stdout and stderr.
pub(super) struct Printer {
    json: bool,
    /// A timestamp on each worker line (`--log-time`).
    time: bool,
    sink: &'static Sink,
    /// The log files' sink, if any.
    files: Option<Sink>,
    logs: Logs,
}

/// Seconds since the epoch.
fn now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

impl Printer {
    /// A printer for text (`json` false) or JSON lines, with a timestamp on each worker line if
    /// `time`, keeping output lines in `logs` and writing them to `files` too.
    pub(super) fn new(json: bool, time: bool, logs: Logs, files: Option<Sink>) -> Printer {
        Printer {
            json,
            time,
            sink: sink::global(),
            files,
            logs,
        }
    }

    /// A line of a worker's output.
    pub(super) fn line(&mut self, worker: WorkerId, stream: OutputStream, line: &str) {
        self.logs.push(worker.0, stream.as_str(), line, now());
        if self.json {
            let v =
                json!({"ts": now(), "worker": worker.0, "stream": stream.as_str(), "line": line});
            self.write(format!("{v}\n"), false);
        } else if self.time {
            let at = humantime::format_rfc3339_millis(std::time::SystemTime::now());
            self.write(
                format!("{at} [w{worker}] {line}\n"),
                stream == OutputStream::Stderr,
            );
        } else {
            self.write(
                format!("[w{worker}] {line}\n"),
                stream == OutputStream::Stderr,
            );
        }
    }

    /// A message from a worker.
    pub(super) fn message(&mut self, worker: WorkerId, message: serde_json::Value) {
        let v = if self.json {
            json!({"ts": now(), "worker": worker.0, "message": message})
        } else {
            json!({"worker": worker.0, "message": message})
        };
        self.write(format!("{v}\n"), false);
    }

    /// Queues `text`; dropped (and counted) if the reader is too far behind.
    fn write(&mut self, text: String, to_err: bool) {
        let stream = if to_err { Stream::Err } else { Stream::Out };
        if let Some(files) = &self.files {
            files.write(stream, text.clone().into_bytes());
        }
        self.sink.write(stream, text.into_bytes());
    }
}
