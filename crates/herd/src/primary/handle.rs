//! [`WorkerHandle`]: the primary's handle on one worker — send to it, disconnect it, kill it,
//! wait for it. Sends go straight to the worker's channel queue; lifecycle commands go to the
//! worker's supervisor task, which alone acts on the process.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::ids::{ExitStatus, WorkerId};
use crate::ipc::{peer_methods, Peer};
use crate::node::handle_channel::HandleChannel;
use crate::{Error, Signal};

/// What a handle asks of the worker's supervisor.
pub(super) enum WorkerCmd {
    Disconnect,
    Kill(Signal),
}

/// What every clone of a [`WorkerHandle`] shares.
pub(super) struct WorkerShared {
    pub(super) id: WorkerId,
    pub(super) pid: u32,
    pub(super) peer: Peer,
    /// A Node worker's channel with its handle gate (shared with its cluster session).
    pub(super) handles: Option<HandleChannel>,
    pub(super) cmds: mpsc::Sender<WorkerCmd>,
    pub(super) exit: watch::Receiver<Option<ExitStatus>>,
    pub(super) grace: Duration,
    /// Node's own internal messages (`NODE_*` other than herd's and the cluster messages herd
    /// answers) the worker sent, dropped.
    pub(super) dropped_internal: AtomicU64,
    /// The last error a server of a Node worker got for its `listen` from herd.
    pub(super) listen_error: std::sync::Mutex<Option<String>>,
}

/// A handle on one worker: send to it, disconnect it, kill it. Cheap to clone; dropping it does
/// nothing to the worker.
#[derive(Clone)]
pub struct WorkerHandle {
    pub(super) inner: Arc<WorkerShared>,
}

impl fmt::Debug for WorkerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WorkerHandle")
            .field("id", &self.inner.id)
            .field("pid", &self.inner.pid)
            .finish()
    }
}

peer_methods!(WorkerHandle);

/// How long past the grace period a disconnect or kill waits for the exit: the supervisor has
/// sent `SIGKILL` by then, so this only guards against a process the kernel cannot reap.
const REAP_MARGIN: Duration = Duration::from_secs(10);

impl WorkerHandle {
    /// The worker's id.
    pub fn id(&self) -> WorkerId {
        self.inner.id
    }

    /// The worker's process id.
    pub fn pid(&self) -> u32 {
        self.inner.pid
    }

    /// How the worker ended, if it has.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        *self.inner.exit.borrow()
    }

    /// A sender to the worker, for other tasks.
    pub fn peer(&self) -> Peer {
        self.inner.peer.clone()
    }

    pub(crate) fn peer_ref(&self) -> &Peer {
        &self.inner.peer
    }

    /// Sends a value with descriptors (a listener, a stream, a file: anything as `OwnedFd`).
    /// They arrive close-on-exec.
    ///
    /// To a Node worker (the json codec) this is Node's `process.send(msg, handle)`: exactly one
    /// descriptor, a TCP, Unix stream or UDP socket, which the worker's
    /// `process.on('message', (msg, handle) => ...)` gets as a `net.Server` (a listening
    /// socket), a `net.Socket` or a `dgram.Socket`. Anything else (a file, a memfd, a pipe) is
    /// refused before anything is written ([`crate::NodeHandleError`]): Node would abort on
    /// it. The socket is made non-blocking (libuv expects it; the file description is shared).
    /// As Node does, the next handle waits for the worker's acknowledgement of the previous one
    /// (at most 16 wait, and each at most the send timeout: [`Error::Timeout`], after which it
    /// is dropped unsent unless it was already on its way). Cancel-safe: dropped before its
    /// frame is queued, nothing is sent and the next handle goes.
    pub async fn send_with_fds<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<(), Error> {
        match &self.inner.handles {
            Some(h) if !fds.is_empty() => h.send_with_fds(value, fds).await,
            _ => self.inner.peer.send_with_fds(value, fds).await,
        }
    }

    /// Node's own internal messages the worker sent so far that herd drops (a `cmd` starting
    /// `NODE_` that is neither herd's nor one of Node's cluster messages, which herd answers as
    /// Node's primary; Node json codec only).
    pub fn dropped_internal(&self) -> u64 {
        self.inner.dropped_internal.load(Ordering::Relaxed)
    }

    /// The last error a server of this Node worker got when it tried to listen (herd could
    /// not bind its address: `listen on 127.0.0.1:3000: Address in use`), if any. Programs
    /// may swallow it (Express 5 does); `herd status` shows it.
    pub fn listen_error(&self) -> Option<String> {
        self.inner.listen_error.lock().ok().and_then(|e| e.clone())
    }

    /// Closes the worker's channel after everything already queued to it; the worker reads
    /// end-of-stream, finishes and exits. A Node cluster worker (json codec, it has spoken
    /// Node's cluster protocol) is asked instead as Node's primary asks it
    /// (`{"cmd":"NODE_CLUSTER","act":"disconnect"}`): it closes its servers, lets its open
    /// connections finish, then closes the channel itself. After the grace period it is killed. Returns how it
    /// ended ([`Error::Timeout`] only if the kernel did not reap it within 10 s after that).
    pub async fn disconnect(&self) -> Result<ExitStatus, Error> {
        let _ = self.inner.cmds.send(WorkerCmd::Disconnect).await;
        self.wait_within(self.inner.grace.saturating_add(REAP_MARGIN))
            .await
    }

    /// Sends `signal` to the worker's process group; after the grace period, `SIGKILL`. Returns
    /// how it ended ([`Error::Timeout`] only if the kernel did not reap it within 10 s after
    /// that).
    pub async fn kill(&self, signal: Signal) -> Result<ExitStatus, Error> {
        let _ = self.inner.cmds.send(WorkerCmd::Kill(signal)).await;
        self.wait_within(self.inner.grace.saturating_add(REAP_MARGIN))
            .await
    }

    /// Waits for the worker to exit, however long that takes, without asking it to.
    ///
    /// Cancel-safe.
    pub async fn wait(&self) -> Result<ExitStatus, Error> {
        let mut exit = self.inner.exit.clone();
        let status = exit.wait_for(|s| s.is_some()).await;
        match status {
            Ok(s) => Ok((*s).expect("waited for Some")),
            Err(_) => Err(Error::WorkerGone(self.inner.id)),
        }
    }

    async fn wait_within(&self, limit: Duration) -> Result<ExitStatus, Error> {
        tokio::time::timeout(limit, self.wait())
            .await
            .map_err(|_| Error::Timeout(limit))?
    }
}
