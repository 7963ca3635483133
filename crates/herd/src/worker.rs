//! The worker side: find the channel the primary left in the environment, shake hands, then
//! receive messages and requests and send back.
//!
//! A worker started by a herd primary finds `HERD_CHANNEL_FD`, `HERD_CHANNEL_CODEC` and
//! `HERD_WORKER_ID`. A worker forked by a Node.js primary (`child_process.fork` with
//! `serialization: 'json'`, the default) finds `NODE_CHANNEL_FD` and speaks Node's json format.

use std::sync::Arc;

use crate::cache::{Cache, LocalView};
use std::ops::Deref;
use std::time::Duration;

use herd_wire::{Codec, Frame, Hello, Kind, Limits, Receiver};
use tokio::sync::mpsc;

use crate::message::{Control, Endpoint, Incoming, Routed};
use crate::peer::Peer;
use crate::{sys, Error};

/// Options for [`Worker::connect_with`].
#[derive(Clone, Debug)]
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

/// This process as a worker: its channel to the primary. Dereferences to [`Peer`] for sending.
///
/// A reader task reads the channel all the time: replies to this worker's requests reach their
/// callers even while nobody calls [`Worker::recv`], and messages and requests wait in a bounded
/// queue (when it is full the reader stops reading, and the primary's sends wait).
pub struct Worker {
    id: u64,
    peer: Peer,
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
    ep: Arc<Endpoint>,
    out: mpsc::Sender<Batch>,
    view: Arc<LocalView>,
) {
    loop {
        // One frame read from the socket, then whatever else is already buffered, handed over
        // as one batch: a burst of small messages costs one queue operation and one wake-up.
        let mut batch = Vec::new();
        let stop = match rx.recv().await {
            Ok(Some(frame)) => take_burst(frame, &mut rx, &ep, &view, &mut batch),
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
}

/// Routes `frame` and the frames already buffered after it (up to a batch) into `batch`;
/// whether the channel is finished (an error, the last item of `batch`).
fn take_burst(
    mut frame: Frame,
    rx: &mut Receiver,
    ep: &Endpoint,
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
            Ok(Routed::Control(c)) => {
                tracing::debug!(?c, "control notice from the primary ignored")
            }
            Ok(Routed::Cache(request)) => {
                // Only the primary serves the cache.
                tokio::spawn(async move {
                    let _ = request.reply_error("a worker serves no cache").await;
                });
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

impl Deref for Worker {
    type Target = Peer;
    fn deref(&self) -> &Peer {
        &self.peer
    }
}

impl Worker {
    /// Connects to the primary with default options. Must be called inside a tokio runtime.
    pub async fn connect() -> Result<Worker, Error> {
        Worker::connect_with(WorkerOptions::default()).await
    }

    /// Connects to the primary: takes the inherited channel and, on the binary codec, exchanges
    /// hellos (protocol version, worker id) within the handshake deadline.
    pub async fn connect_with(opts: WorkerOptions) -> Result<Worker, Error> {
        let env = crate::env::channel()?;
        let fd = sys::take_inherited_socket(env.fd).map_err(|e| {
            Error::NotAWorker(format!("cannot take channel descriptor {}: {e}", env.fd))
        })?;
        let (tx, mut rx) = herd_wire::channel(fd, env.codec, opts.limits)?;
        let ep = Endpoint::new(tx, 65_536, crate::message::SEND_TIMEOUT);
        if env.codec == Codec::Binary {
            let mine = Hello::new(env.id);
            ep.send_value(Kind::Hello, &mine, Vec::new()).await?;
            let first = tokio::time::timeout(opts.handshake_timeout, rx.recv())
                .await
                .map_err(|_| Error::Handshake("the primary sent no hello".into()))??
                .ok_or_else(|| Error::Handshake("the primary closed the channel".into()))?;
            if first.kind != Kind::Hello {
                return Err(Error::Handshake(format!(
                    "first frame is {:?}, not a hello",
                    first.kind
                )));
            }
            let theirs: Hello = herd_wire::decode_value(first.format, &first.payload)?;
            mine.negotiate(&theirs)
                .map_err(|e| Error::Handshake(e.to_string()))?;
            if theirs.worker_id != env.id {
                return Err(Error::Handshake(format!(
                    "the primary calls this worker {}, the environment says {}",
                    theirs.worker_id, env.id
                )));
            }
        }
        let (in_tx, in_rx) = mpsc::channel(INCOMING_QUEUE);
        let view = Arc::new(LocalView::default());
        tokio::spawn(read_loop(rx, ep.clone(), in_tx, view.clone()));
        Ok(Worker {
            id: env.id,
            peer: Peer::new(ep, opts.request_timeout),
            incoming: in_rx,
            batch: Vec::new().into_iter(),
            view,
        })
    }

    /// This worker's id (0 when forked by a Node.js primary).
    pub fn id(&self) -> u64 {
        self.id
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
        self.peer.endpoint().sender().close()?;
        self.peer.endpoint().sender().closed().await;
        Ok(())
    }
}
