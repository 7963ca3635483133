//! [`Event`]: what the primary reports about each worker, in order, mirroring Node's `cluster`
//! events; and [`OutputStream`] for captured output lines.

use crate::ids::{ExitStatus, WorkerId};
use crate::{Error, Message, Request};

/// What happened in the cluster, per worker, in order. Mirrors Node's `cluster` events.
#[derive(Debug)]
#[non_exhaustive]
pub enum Event {
    /// The worker process was started.
    Fork {
        /// Which worker.
        worker: WorkerId,
        /// Its process id.
        pid: u32,
    },
    /// The worker's channel is up (binary: its handshake arrived; Node json: at fork, since a
    /// plain Node program sends nothing until it has something to say).
    Online {
        /// Which worker.
        worker: WorkerId,
    },
    /// The worker reported that it listens on an address.
    Listening {
        /// Which worker.
        worker: WorkerId,
        /// The address it reported.
        address: String,
    },
    /// The worker reported that it is ready for work.
    Ready {
        /// Which worker.
        worker: WorkerId,
    },
    /// A message from the worker.
    Message {
        /// Which worker.
        worker: WorkerId,
        /// The message.
        message: Message,
    },
    /// A request from the worker; answer it with [`Request::reply`].
    Request {
        /// Which worker.
        worker: WorkerId,
        /// The request.
        request: Request,
    },
    /// The worker's channel closed (it disconnected, exited, or was cut off after an error).
    Disconnect {
        /// Which worker.
        worker: WorkerId,
    },
    /// The worker process ended; always the worker's last event.
    Exit {
        /// Which worker.
        worker: WorkerId,
        /// How it ended.
        status: ExitStatus,
    },
    /// A line the worker wrote to its stdout or stderr (with [`ClusterBuilder::capture_output`](crate::ClusterBuilder::capture_output);
    /// without its newline; lines longer than [`MAX_OUTPUT_LINE`] come in pieces).
    Output {
        /// Which worker.
        worker: WorkerId,
        /// Which stream.
        stream: OutputStream,
        /// The line (invalid UTF-8 replaced).
        line: String,
    },
    /// The worker answered no liveness ping for this long
    /// ([`ClusterBuilder::unresponsive`](crate::ClusterBuilder::unresponsive)): it is taken out
    /// of balancing and killed (its `Exit` follows).
    Unresponsive {
        /// Which worker.
        worker: WorkerId,
        /// How long it had not answered.
        silent: std::time::Duration,
    },
    /// Something went wrong with the worker (bad frames, a failed handshake). Its channel is
    /// closed; the primary and the other workers go on.
    Error {
        /// Which worker.
        worker: WorkerId,
        /// What went wrong.
        error: Error,
    },
}

impl Event {
    /// The worker the event is about.
    pub fn worker(&self) -> WorkerId {
        match self {
            Event::Fork { worker, .. }
            | Event::Online { worker }
            | Event::Listening { worker, .. }
            | Event::Ready { worker }
            | Event::Message { worker, .. }
            | Event::Request { worker, .. }
            | Event::Disconnect { worker }
            | Event::Exit { worker, .. }
            | Event::Output { worker, .. }
            | Event::Unresponsive { worker, .. }
            | Event::Error { worker, .. } => *worker,
        }
    }
}

/// A worker's output stream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputStream {
    /// Its standard output.
    Stdout,
    /// Its standard error.
    Stderr,
}

impl OutputStream {
    /// `stdout` or `stderr`.
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// The longest line of captured output delivered as one [`Event::Output`].
pub const MAX_OUTPUT_LINE: usize = 16 << 10;
