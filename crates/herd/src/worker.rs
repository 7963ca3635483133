//! The worker side: find the channel the primary left in the environment, shake hands, then
//! receive messages and requests and send back.
//!
//! A worker started by a herd primary finds `HERD_CHANNEL_FD`, `HERD_CHANNEL_CODEC` and
//! `HERD_WORKER_ID`. A worker forked by a Node.js primary (`child_process.fork` with
//! `serialization: 'json'`, the default) finds `NODE_CHANNEL_FD` and speaks Node's json format.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use herd_wire::{Codec, Frame, Kind, Limits, Receiver};
use tokio::sync::mpsc;

use crate::cache::{Cache, LocalView};
use crate::ids::WorkerId;
use crate::ipc::control::Control;
use crate::ipc::endpoint::{Routed, SEND_TIMEOUT};
use crate::ipc::{handshake, peer_methods, Incoming, Message, Peer};
use crate::node::handle_channel::HandleChannel;
use crate::{env, sys, Error};

/// Options for [`Worker::connect_with`].
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct WorkerOptions {
    /// Channel limits.
    pub limits: Limits,
    /// How long to wait for the primary's hello (binary codec).
    pub handshake_timeout: Duration,
    /// Default deadline for requests to the primary.
    pub request_timeout: Duration,
}

impl Default for WorkerOptions {
    fn default() -> Self {
        WorkerOptions {
            limits: Limits::default(),
            handshake_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// This process as a worker: its channel to the primary, with [`Peer`]'s sending methods.
///
/// A reader task reads the channel all the time: replies to this worker's requests reach their
/// callers even while nobody calls [`Worker::recv`], and messages and requests wait in a bounded
/// queue (when it is full the reader stops reading, and the primary's sends wait).
pub struct Worker {
    id: WorkerId,
    peer: Peer,
    /// On a Node channel (a Node primary): descriptors go in Node's envelope, one at a time.
    handles: Option<HandleChannel>,
    incoming: mpsc::Receiver<Batch>,
    /// The rest of the batch taken last from `incoming`.
    batch: std::vec::IntoIter<Result<Incoming, Error>>,
    view: Arc<LocalView>,
}

/// Messages and requests waiting for [`Worker::recv`], in batches of at most [`RECV_BATCH`]:
/// at most 1,024 of them.
const INCOMING_QUEUE: usize = 1024 / RECV_BATCH;
/// Frames already read from the socket go to [`Worker::recv`] together, up to this many.
const RECV_BATCH: usize = 64;

/// What the reader task hands to [`Worker::recv`] at once.
type Batch = Vec<Result<Incoming, Error>>;

async fn read_loop(
    mut rx: Receiver,
    ep: Peer,
    handles: Option<HandleChannel>,
    out: mpsc::Sender<Batch>,
    view: Arc<LocalView>,
) {
    loop {
        // One frame read from the socket, then whatever else is already buffered, handed over
        // as one batch: a burst of small messages costs one queue operation and one wake-up.
        let mut batch = Vec::new();
        let stop = match rx.recv().await {
            Ok(Some(frame)) => {
                take_burst(frame, &mut rx, (&ep, handles.as_ref()), &view, &mut batch)
            }
            // End-of-stream: the primary is gone.
            Ok(None) => break,
            Err(e) => {
                batch.push(Err(e.into()));
                true
            }
        };
        if !batch.is_empty() && out.send(batch).await.is_err() {
            break;
        }
        if stop {
            break;
        }
    }
    ep.fail_all();
    if let Some(h) = &handles {
        h.close();
    }
}

/// Routes `frame` and the frames already buffered after it (up to a batch) into `batch`;
/// whether the channel is finished (an error, the last item of `batch`).
fn take_burst(
    mut frame: Frame,
    rx: &mut Receiver,
    (ep, handles): (&Peer, Option<&HandleChannel>),
    view: &LocalView,
    batch: &mut Batch,
) -> bool {
    loop {
        match ep.route(frame) {
            Ok(Routed::Incoming(i)) => batch.push(Ok(i)),
            Ok(Routed::Control(Control::CacheInvalidate { keys, seq })) => {
                view.invalidate(&keys, seq)
            }
            Ok(Routed::Control(Control::CacheClear { seq })) => view.clear(seq),
            // Answered here, by the reader task: a worker whose runtime is stuck does not.
            Ok(Routed::Control(Control::Ping { seq })) => {
                ep.control_soon(&Control::Pong { seq });
            }
            Ok(Routed::Control(c)) => {
                tracing::debug!(?c, "control notice from the primary ignored")
            }
            Ok(Routed::Cache(request)) => {
                // Only the primary serves the cache.
                tokio::spawn(async move {
                    let _ = request.reply_error("a worker serves no cache").await;
                });
            }
            // A Node primary's handles and acknowledgements; its cluster messages are ignored
            // (this worker is herd's, not Node's cluster's).
            Ok(Routed::Node(frame)) => {
                match crate::node::session::from_node_primary(frame, ep, handles) {
                    Ok(Some(f)) => batch.push(Ok(Incoming::Message(Message::from_frame(f)))),
                    Ok(None) => {}
                    Err(e) => {
                        batch.push(Err(Error::Protocol(e.to_string())));
                        return true;
                    }
                }
            }
            Ok(Routed::Handled) => {}
            Err(e) => {
                batch.push(Err(e));
                return true;
            }
        }
        if batch.len() >= RECV_BATCH {
            return false;
        }
        frame = match rx.try_recv_buffered() {
            Ok(Some(frame)) => frame,
            // Nothing more already read: hand over what there is.
            Ok(None) => return false,
            Err(e) => {
                batch.push(Err(e.into()));
                return true;
            }
        };
    }
}

peer_methods!(Worker);

impl Worker {
    /// Connects to the primary with default options. Must be called inside a tokio runtime.
    pub async fn connect() -> Result<Worker, Error> {
        Worker::connect_with(WorkerOptions::default()).await
    }

    /// Connects to the primary: takes the inherited channel and, on the binary codec, exchanges
    /// hellos (protocol version, worker id) within the handshake deadline.
    pub async fn connect_with(opts: WorkerOptions) -> Result<Worker, Error> {
        let env = env::channel()?;
        let id = WorkerId(env.id);
        let fd = sys::take_inherited_socket(env.fd).map_err(|e| {
            Error::NotAWorker(format!("cannot take channel descriptor {}: {e}", env.fd))
        })?;
        let (tx, mut rx) = herd_wire::channel(fd, env.codec, opts.limits)?;
        let peer = Peer::new(tx, SEND_TIMEOUT, opts.request_timeout);
        if env.codec == Codec::Binary {
            peer.send_value(Kind::Hello, &handshake::hello(id), Vec::new())
                .await?;
            let first = tokio::time::timeout(opts.handshake_timeout, rx.recv())
                .await
                .map_err(|_| Error::Handshake("the primary sent no hello".into()))??
                .ok_or_else(|| Error::Handshake("the primary closed the channel".into()))?;
            handshake::check(first, id)?;
        }
        let (in_tx, in_rx) = mpsc::channel(INCOMING_QUEUE);
        let view = Arc::new(LocalView::default());
        let handles = (peer.codec() == Codec::NodeJson).then(|| HandleChannel::new(peer.clone()));
        tokio::spawn(read_loop(
            rx,
            peer.clone(),
            handles.clone(),
            in_tx,
            view.clone(),
        ));
        Ok(Worker {
            id,
            peer,
            handles,
            incoming: in_rx,
            batch: Vec::new().into_iter(),
            view,
        })
    }

    /// This worker's id (0 when forked by a Node.js primary).
    pub fn id(&self) -> WorkerId {
        self.id
    }

    /// The listening sockets the primary gave every worker
    /// ([`ClusterBuilder::listener`](crate::ClusterBuilder::listener)), in the order it gave
    /// them: each is checked to be an open socket and made close-on-exec. Empty when there are
    /// none; an error on a second call (they are taken once). Turn one into a server with
    /// `std::net::TcpListener::from(fd)` (then `tokio::net::TcpListener::from_std`, after
    /// `set_nonblocking(true)`).
    pub fn listeners(&self) -> Result<Vec<OwnedFd>, Error> {
        let n = match std::env::var(env::HERD_LISTEN_FDS) {
            Err(_) => return Ok(Vec::new()),
            Ok(v) => v
                .parse::<usize>()
                .ok()
                .filter(|n| *n < 1024)
                .ok_or_else(|| {
                    Error::NotAWorker(format!("{}={v:?} is not a count", env::HERD_LISTEN_FDS))
                })?,
        };
        sys::take_inherited_listeners(sys::CHANNEL_FD, n)
            .map_err(|e| Error::NotAWorker(format!("cannot take the inherited listeners: {e}")))
    }

    /// This worker's handle on the host-shared cache (served by the primary's
    /// [`crate::cache::Hub`]; calls fail if the primary has none).
    pub fn cache(&self) -> Cache {
        Cache::new(self.view.clone(), self.peer.clone())
    }

    /// A sender for other tasks (the worker's receive loop keeps `&mut self`).
    pub fn peer(&self) -> Peer {
        self.peer.clone()
    }

    pub(crate) fn peer_ref(&self) -> &Peer {
        &self.peer
    }

    /// Sends a value with descriptors (a listener, a stream, a file); they arrive
    /// close-on-exec. To a Node primary (the json codec) this is Node's
    /// `subprocess.send(msg, handle)`: one socket, in Node's envelope, one at a time (see
    /// [`crate::WorkerHandle::send_with_fds`]).
    pub async fn send_with_fds<T: serde::Serialize + ?Sized>(
        &self,
        value: &T,
        fds: Vec<std::os::fd::OwnedFd>,
    ) -> Result<(), Error> {
        match &self.handles {
            Some(h) if !fds.is_empty() => h.send_with_fds(value, fds).await,
            _ => self.peer.send_with_fds(value, fds).await,
        }
    }

    /// The next message or request from the primary; `Ok(None)` once the primary disconnected
    /// (the worker should finish and exit). Replies to this worker's requests are routed to
    /// their callers, never returned here. An error (the primary broke the protocol) is final.
    ///
    /// Cancel-safe: a call dropped before it returns loses nothing.
    pub async fn recv(&mut self) -> Result<Option<Incoming>, Error> {
        loop {
            if let Some(next) = self.batch.next() {
                return next.map(Some);
            }
            match self.incoming.recv().await {
                Some(batch) => self.batch = batch.into_iter(),
                None => return Ok(None),
            }
        }
    }

    /// Tells the primary this worker listens on `address` (its [`crate::Event::Listening`]).
    pub async fn notify_listening(&self, address: impl Into<String>) -> Result<(), Error> {
        self.peer
            .control(&Control::Listening {
                address: address.into(),
            })
            .await
    }

    /// Tells the primary this worker is ready for work (its [`crate::Event::Ready`]).
    pub async fn notify_ready(&self) -> Result<(), Error> {
        self.peer.control(&Control::Ready).await
    }

    /// Closes the channel after everything queued is written; the primary sees the disconnect.
    pub async fn disconnect(self) -> Result<(), Error> {
        self.peer.close();
        self.peer.closed().await;
        Ok(())
    }
}
