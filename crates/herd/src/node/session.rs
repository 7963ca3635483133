//! One Node cluster worker as its primary (herd) sees it: answers its `queryServer`s with shared
//! handles from the cluster's table (or the descriptors it inherited, for `listen({fd})`), one
//! handle in flight at a time (Node's rule: the next waits for `NODE_HANDLE_ACK`, in the
//! channel's bounded gate, `ipc::gate`), turns its `listening` into herd's address, opens the
//! handles it sends (`NODE_HANDLE`: acknowledged, and handed on as a message with its
//! descriptor), and asks it to disconnect. Never awaits the worker: every answer is queued at
//! once, or by a task with the send deadline.

use std::collections::VecDeque;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use bytes::Bytes;
use herd_wire::{Format, Frame, Kind};
use rustix::net::{sockopt, SocketType};
use serde_json::Value;

use super::balance::{Balance, Balancer};
use super::cluster::{self, uv, ClusterError, FromWorker, Query, Target};
use super::envelope;
use super::handle_channel::HandleChannel;
use super::handles::{Handles, Lent, MAX_KEYS};
use super::rescue::{Rescue, Rescuer};
use crate::ids::WorkerId;
use crate::ipc::Peer;
use crate::listen::{self, ListenAddr};

/// The cluster's side of every Node worker's session: its sockets and its balancer.
#[derive(Clone)]
pub(crate) struct Shared {
    pub(crate) table: Arc<Handles>,
    pub(crate) balancer: Arc<Balancer>,
    /// What is done with a retiring worker's connections.
    pub(crate) rescue: Rescue,
    /// The program's own cluster-primary code was reported (warned about once).
    pub(crate) primary_code_seen: Arc<std::sync::atomic::AtomicBool>,
}

impl Shared {
    pub(crate) fn new(balance: Balance, rescue: Rescue) -> Shared {
        Shared {
            table: Arc::default(),
            balancer: Arc::new(Balancer::new(balance)),
            rescue,
            primary_code_seen: Arc::default(),
        }
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("node::Shared")
            .field("balance", &self.balancer.mode())
            .field("rescue", &self.rescue)
            .finish_non_exhaustive()
    }
}

/// What [`Session::disconnect`] did.
pub(crate) enum Asked {
    /// Not the way to stop this worker: close its channel.
    Declined,
    /// Asked.
    Sent,
    /// To be asked once its connections are rescued: the rescue's shell.
    Retiring(Rescuer),
}

/// What a Node internal line means for the worker's events.
#[derive(Debug)]
pub(crate) enum NodeEvent {
    /// A server of the worker's listens at this address.
    Listening(String),
    /// A message the worker sent with a handle (`process.send(msg, handle)`): `msg` as a
    /// json [`Kind::Message`] frame holding the descriptor.
    Message(Frame),
    /// A server of the worker's could not listen (herd answered its `queryServer` with this
    /// error, which the program may swallow).
    ListenFailed(String),
}

/// One Node worker's side of the cluster protocol.
pub(crate) struct Session {
    /// The worker's channel with its handle gate (shared with its `WorkerHandle`).
    chan: HandleChannel,
    table: Arc<Handles>,
    balancer: Arc<Balancer>,
    worker: WorkerId,
    pid: u32,
    /// What the worker inherited from herd, by descriptor number (for `listen({fd})`).
    inherited: Vec<(i32, Arc<OwnedFd>)>,
    /// It has spoken Node's cluster protocol (it is a cluster worker).
    cluster: bool,
    /// Our own `seq`, counted per worker.
    seq: u64,
    /// The last listening socket sent to the worker (`send_with_fds`) and acknowledged: what
    /// its `listen(handle)` queries are answered with.
    lent_server: Option<OwnedFd>,
    /// Where each query was served (key without the port → `HOST:PORT`), for `listening`.
    served: VecDeque<(String, String)>,
    /// A disconnect was asked for (by us or by the worker).
    disconnecting: bool,
    /// Our disconnect, kept until the worker's connections are rescued.
    disconnect_line: Option<Bytes>,
    /// A lost handle was reported already (later ones are logged at debug level).
    nack_seen: bool,
}

impl Session {
    pub(crate) fn new(
        shared: &Shared,
        worker: WorkerId,
        pid: u32,
        inherited: Vec<(i32, Arc<OwnedFd>)>,
        chan: HandleChannel,
    ) -> Session {
        Session {
            chan,
            table: shared.table.clone(),
            balancer: shared.balancer.clone(),
            worker,
            pid,
            inherited,
            cluster: false,
            seq: 0,
            lent_server: None,
            served: VecDeque::new(),
            disconnecting: false,
            disconnect_line: None,
            nack_seen: false,
        }
    }

    fn next_seq(&mut self) -> u64 {
        self.seq += 1;
        self.seq
    }

    /// Handles one of Node's internal lines (a [`Kind::Node`] frame). A line that breaks
    /// Node's protocol is an error (the caller closes the channel).
    pub(crate) fn on_frame(
        &mut self,
        frame: Frame,
        peer: &Peer,
    ) -> Result<Option<NodeEvent>, ClusterError> {
        if !frame.fds.is_empty() {
            return self.handle_from_worker(frame, peer);
        }
        let msg = cluster::parse(&frame.payload)?;
        self.cluster = true;
        match msg {
            FromWorker::Online | FromWorker::Other => {}
            FromWorker::Close { key } => {
                if let Some(key) = key {
                    self.balancer.close_key(self.worker, &key);
                }
            }
            FromWorker::Accepted { ack, accepted } => {
                self.balancer.answered(self.worker, ack, accepted)
            }
            FromWorker::Query(q) => return Ok(self.answer(&q, peer).map(NodeEvent::ListenFailed)),
            FromWorker::Listening(q) => return Ok(Some(NodeEvent::Listening(self.listening(&q)))),
            FromWorker::ExitedAfterDisconnect { seq } => {
                self.disconnecting = true;
                let seq_ours = self.next_seq();
                send(peer, cluster::ack(seq, seq_ours));
            }
            FromWorker::HandleAck => {
                if let Some(server) = self.chan.acked() {
                    self.lent_server = Some(server);
                }
            }
            // The descriptor did not arrive (the worker is out of descriptors: the kernel cut
            // it from the message). A connection herd handed it goes to another worker, as if
            // refused; the worker's next handle goes on.
            FromWorker::HandleNack => {
                let lost = self.chan.nacked();
                let seq = lost.as_deref().and_then(cluster::newconn_seq);
                let first = !std::mem::replace(&mut self.nack_seen, true);
                if first {
                    tracing::warn!(
                        worker = %self.worker,
                        connection = seq.is_some(),
                        "a Node worker lost a handle on the way (NODE_HANDLE_NACK: out of \
                         descriptors?); a connection goes to another worker (later ones are \
                         logged at debug level)"
                    );
                } else {
                    tracing::debug!(worker = %self.worker, "NODE_HANDLE_NACK");
                }
                if let Some(seq) = seq {
                    self.balancer.answered(self.worker, seq, false);
                }
            }
        }
        Ok(None)
    }

    /// `process.send(msg, handle)` from the worker: acknowledged at once (the worker's next
    /// handle waits for it), and `msg` handed on with the descriptor. A `msg` of Node's own
    /// (`NODE_*`) is not for user code: its descriptor is closed.
    fn handle_from_worker(
        &mut self,
        frame: Frame,
        peer: &Peer,
    ) -> Result<Option<NodeEvent>, ClusterError> {
        let opened = envelope::open(&frame.payload, frame.fds.len())?;
        send(peer, Bytes::from_static(envelope::ACK));
        if opened.internal {
            tracing::debug!(
                ty = opened.ty,
                "Node internal message with a handle dropped"
            );
            return Ok(None);
        }
        let message = Frame::new(Kind::Message, Format::Json, opened.msg).with_fds(frame.fds);
        Ok(Some(NodeEvent::Message(message)))
    }

    /// Asks a cluster worker to disconnect (it closes its servers, finishes its connections and
    /// closes the channel). No new connection goes to it from now on. Where it shares sockets
    /// with the cluster, the disconnect waits ([`Session::send_disconnect`]) for its
    /// connections to be answered for and rescued first ([`Asked::Retiring`]: the worker's life
    /// runs the rescue). [`Asked::Declined`] when that is not the way: not a cluster worker,
    /// or asked already (the caller then closes the channel).
    pub(crate) fn disconnect(&mut self, peer: &Peer) -> Asked {
        if !self.cluster || self.disconnecting {
            tracing::debug!(cluster = self.cluster, "Node worker: closing its channel");
            return Asked::Declined;
        }
        tracing::debug!("Node cluster worker: asking it to disconnect");
        self.disconnecting = true;
        let seq = self.next_seq();
        let line = cluster::disconnect(seq);
        let keys = self.balancer.retire(self.worker);
        if keys.is_empty() {
            send(peer, line);
            return Asked::Sent;
        }
        self.disconnect_line = Some(line);
        Asked::Retiring(Rescuer::new(
            self.balancer.clone(),
            self.worker,
            self.pid,
            keys,
        ))
    }

    /// Sends the disconnect [`Session::disconnect`] kept (once).
    pub(crate) fn send_disconnect(&mut self, peer: &Peer) {
        if let Some(line) = self.disconnect_line.take() {
            send(peer, line);
        }
    }

    /// Whether every connection sent to the worker is answered for (cancel-safe; no timer:
    /// the worker's life bounds the wait).
    pub(crate) fn answered_all(&self) -> impl std::future::Future<Output = ()> + 'static {
        let (balancer, worker) = (self.balancer.clone(), self.worker);
        async move { balancer.answered_all(worker, crate::deadline::FAR).await }
    }

    /// The worker's channel is gone: it leaves the balancer, and connections it had not
    /// answered for go to the other workers.
    pub(crate) fn channel_lost(&self) {
        self.balancer.gone(self.worker);
        self.chan.close();
    }

    /// Answers a `queryServer`; what went wrong, if its answer is an error.
    fn answer(&mut self, q: &Query, peer: &Peer) -> Option<String> {
        let key = q.key();
        let lent = match q.target() {
            // `listen(handle)` on a socket herd sent: it is that one (a Unix socket's asks by
            // the worker's own descriptor number).
            _ if q.is_listen_on_handle() && self.lent_server.is_some() => self.lent_server(),
            Ok(Target::Fd(n)) => self.inherited(n).or_else(|e| {
                if self.lent_server.is_some() {
                    self.lent_server()
                } else {
                    Err(e)
                }
            }),
            // A socket it inherited at that address (the cluster's listeners, `herd run
            // --listen`, or its own `--reuseport` one): a bind would be `EADDRINUSE`. Else the
            // cluster's table binds one.
            Ok(target) => match self.inherited_at(&target) {
                Some(n) => self.inherited(n),
                None => self.table.get_or_bind(&key, &target),
            },
            Err(errno) => Err(errno),
        };
        let seq = self.next_seq();
        let lent = match lent {
            Ok(lent) => lent,
            Err(errno) => {
                send(peer, cluster::error_answer(&key, q.seq, seq, errno));
                return Some(listen_error(q, errno));
            }
        };
        let portless = q.portless_key();
        if !self.served.iter().any(|(k, _)| *k == portless) {
            if self.served.len() >= MAX_KEYS {
                self.served.pop_front();
            }
            self.served.push_back((portless, lent.local.clone()));
        }
        // A stream socket herd holds: the balancer knows the worker listens on it (for
        // round-robin, and for a retiring worker's connections).
        if !lent.udp && !q.is_listen_on_handle() {
            if let Err(errno) = self.balancer.join(&key, &lent.fd, self.worker, &self.chan) {
                send(peer, cluster::error_answer(&key, q.seq, seq, errno));
                return Some(listen_error(q, errno));
            }
            if self.balancer.mode().herd_accepts() {
                let sockname = match listen::local_addr(&lent.fd) {
                    Ok(ListenAddr::Tcp(addr)) => Some(cluster::sockname(addr)),
                    _ => None,
                };
                send(
                    peer,
                    cluster::round_robin_answer(&key, q.seq, seq, sockname),
                );
                return None;
            }
        }
        let line = cluster::handle_answer(&key, q.seq, seq, lent.udp);
        let frame = Frame::new(Kind::Node, Format::Json, line).with_fds(vec![lent.fd]);
        if self.chan.send_handle_soon(frame).is_err() {
            tracing::warn!(
                key,
                "a Node worker asked for too many sockets at once; refused with EAGAIN"
            );
            send(peer, cluster::error_answer(&key, q.seq, seq, uv::EAGAIN));
            return Some(listen_error(q, uv::EAGAIN));
        }
        None
    }

    /// A copy of the listening socket last sent to the worker.
    fn lent_server(&self) -> Result<Lent, i64> {
        let fd = self.lent_server.as_ref().ok_or(uv::EBADF)?;
        Ok(Lent {
            fd: fd.try_clone().map_err(|_| uv::EMFILE)?,
            local: listen::local_addr(fd).map_or_else(|_| "sent socket".into(), |a| a.to_string()),
            udp: false,
        })
    }

    /// The number of a socket the worker inherited that listens where `target` asks.
    fn inherited_at(&self, target: &Target) -> Option<i32> {
        self.inherited.iter().find_map(|(n, fd)| {
            let have = listen::local_addr(&**fd).ok()?;
            super::handles::means(target, &have).then_some(*n)
        })
    }

    /// The socket the worker inherited at `n`, if it is one.
    fn inherited(&self, n: i32) -> Result<Lent, i64> {
        let (_, fd) = self
            .inherited
            .iter()
            .find(|(at, _)| *at == n)
            .ok_or(uv::EBADF)?;
        let udp = match sockopt::socket_type(&**fd) {
            Ok(SocketType::STREAM) => false,
            Ok(SocketType::DGRAM) => true,
            // Node aborts on a descriptor that is not a socket: never send one.
            _ => return Err(uv::ENOTSOCK),
        };
        // The worker shares the socket's file description: non-blocking, as libuv expects.
        rustix::io::ioctl_fionbio(&**fd, true).map_err(|_| uv::ENOTSOCK)?;
        Ok(Lent {
            fd: fd.try_clone().map_err(|_| uv::EMFILE)?,
            local: listen::local_addr(&**fd).map_or_else(|_| format!("fd:{n}"), |a| a.to_string()),
            udp,
        })
    }

    /// `HOST:PORT` of a server that listens: where herd bound it, else what the worker says.
    fn listening(&self, q: &Query) -> String {
        let portless = q.portless_key();
        if let Some((_, local)) = self.served.iter().find(|(k, _)| *k == portless) {
            return local.clone();
        }
        let host = match &q.address {
            Some(Value::String(s)) if s.contains(':') => format!("[{s}]"),
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => "0.0.0.0".into(),
        };
        let port = q.port.as_ref().and_then(Value::as_i64).unwrap_or(0);
        format!("{host}:{port}")
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.balancer.gone(self.worker);
    }
}

/// A Node primary's internal line to a herd worker (the json codec; the worker is herd's, not
/// Node's cluster's): a handle (`subprocess.send(msg, handle)`) is acknowledged and its `msg`
/// returned as a json [`Kind::Message`] frame holding the descriptor; an acknowledgement of
/// ours lets our next handle go; anything else is ignored. A `NODE_HANDLE` that cannot be
/// opened is an error.
pub(crate) fn from_node_primary(
    frame: Frame,
    peer: &Peer,
    handles: Option<&HandleChannel>,
) -> Result<Option<Frame>, ClusterError> {
    if !frame.fds.is_empty() {
        let opened = envelope::open(&frame.payload, frame.fds.len())?;
        send(peer, Bytes::from_static(envelope::ACK));
        if opened.internal {
            return Ok(None);
        }
        return Ok(Some(
            Frame::new(Kind::Message, Format::Json, opened.msg).with_fds(frame.fds),
        ));
    }
    match cluster::parse(&frame.payload) {
        Ok(FromWorker::HandleAck | FromWorker::HandleNack) => {
            if let Some(h) = handles {
                h.acked();
            }
        }
        _ => tracing::debug!("Node cluster message from the primary ignored"),
    }
    Ok(None)
}

fn send(peer: &Peer, line: Bytes) {
    peer.send_soon(Frame::new(Kind::Node, Format::Json, line));
}

/// What a failed `queryServer` was for and why: `listen on 127.0.0.1:3000: Address in use`.
fn listen_error(q: &Query, errno: i64) -> String {
    // The worker's own words: printable and short (they reach logs and terminals).
    let show = |v: &Option<serde_json::Value>| {
        let text = match v {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(v) => v.to_string(),
        };
        text.chars()
            .take(128)
            .flat_map(char::escape_default)
            .collect::<String>()
    };
    let why = i32::try_from(-errno).map_or_else(
        |_| format!("error {errno}"),
        |e| std::io::Error::from_raw_os_error(e).to_string(),
    );
    format!("listen on {}:{}: {why}", show(&q.address), show(&q.port))
}
