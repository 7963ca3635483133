//! Connections for Node workers' servers, handed out by the primary (Node's
//! `RoundRobinHandle`, in Rust): one pool per Node key (`address:port:addressType:fd:index`)
//! with the workers whose servers listen on it. In round-robin mode a task per pool accepts on
//! the cluster's socket and sends each connection to the next worker that can take it, as
//! Node's `newconn` (the descriptor on the line); the worker answers `accepted`, and a refusal
//! (its server closed, or at `maxConnections`) sends the connection to another worker. A worker
//! has at most [`WINDOW`] connections unanswered; when none has room, herd stops accepting and
//! connections wait in the kernel's backlog, not in herd. In either mode the pools also say
//! where a retiring worker's connections can go (`node::rescue`).
//!
//! Never awaits a worker: every send is queued at once (the channel's handle gate, one in
//! flight), and herd keeps its copy of a connection until the worker's answer, so a worker
//! that dies or refuses loses nothing that is still herd's to give.

use std::collections::HashSet;
use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use herd_wire::{Format, Frame, Kind};
use rustix::io::Errno;
use rustix::net::SocketFlags;
use tokio::io::unix::AsyncFd;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::cluster::{self, uv};
use super::handle_channel::HandleChannel;
use super::handles::MAX_KEYS;
use crate::ids::WorkerId;
use crate::listen::{self, ListenAddr};
use sticky::{Affinity, Sessions};

/// How the primary spreads connections over Node workers that listen on the same address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum Balance {
    /// herd accepts each connection and hands it to the next worker that can take it (Node's
    /// `SCHED_RR`, its default on Linux): one connection per worker in turn, and a connection a
    /// worker refuses (at `maxConnections`) goes to another; costs a primary on the path of
    /// every new connection (docs/benchmarks.md: about Node's own round-robin rate).
    RoundRobin,
    /// Every worker gets the listening socket and accepts by itself (Node's `SCHED_NONE`): no
    /// primary on the path, the kernel decides who gets each connection. The default: it met
    /// every target of docs/benchmarks.md's balancing table (new connections 2.5x Node's
    /// round-robin, the busier of 2 workers 51%), and a retiring worker's connections are
    /// handed on in either mode.
    #[default]
    Shared,
    /// As [`Balance::RoundRobin`], but every connection from one client goes to one worker:
    /// by the socket.io / engine.io session its first request names (`sid=`), else by the
    /// client's address (`node/balance/sticky.rs`). socket.io's polling transport then works
    /// with no code in the app's primary (`@socket.io/sticky`'s `setupMaster`, which herd
    /// does not run).
    Sticky,
}

impl Balance {
    /// herd accepts the connections and hands them out (round-robin or sticky).
    pub(crate) fn herd_accepts(self) -> bool {
        matches!(self, Balance::RoundRobin | Balance::Sticky)
    }
}

/// Connections a worker may have been sent and not yet answered.
pub(crate) const WINDOW: usize = 4;

/// Connections accepted that no worker can take yet (all of them gone a moment), per pool.
const MAX_WAITING: usize = 256;

/// Connections accepted per wake-up of a pool's accept task.
const ACCEPT_BATCH: usize = 64;

/// How long a connection every worker refused (all at `maxConnections`) is offered again,
/// every [`RETRY_EVERY`], before herd closes it.
const REFUSED_FOR: Duration = Duration::from_secs(1);

/// How often a connection every worker refused is offered again.
const RETRY_EVERY: Duration = Duration::from_millis(10);

/// How long a connection may wait in herd for a worker at all (none listens, every gate is
/// full) before it is closed.
const WAIT_LIMIT: Duration = Duration::from_secs(5);

/// How long accepting pauses after an error such as `EMFILE`.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// A connection herd holds until a worker takes it.
struct Conn {
    fd: OwnedFd,
    /// Workers that refused it (or died with it): not asked again in this round.
    tried: Vec<WorkerId>,
    /// When every worker first refused it.
    refused_since: Option<Instant>,
    /// When herd took it.
    since: Instant,
    /// Where it belongs (sticky balancing).
    affinity: Option<Affinity>,
}

impl Conn {
    fn new(fd: OwnedFd, tried: Vec<WorkerId>, sticky: bool) -> Conn {
        Conn {
            affinity: sticky.then(|| sticky::affinity(&fd)),
            fd,
            tried,
            refused_since: None,
            since: Instant::now(),
        }
    }
}

struct Member {
    worker: WorkerId,
    chan: HandleChannel,
    /// Sent, not yet answered, by seq.
    in_flight: HashMap<u64, Conn>,
    /// Its server listens: not closed, not retiring.
    open: bool,
    /// It is retiring: a new `queryServer` does not reopen it.
    retiring: bool,
}

impl Member {
    fn has_room(&self) -> bool {
        self.open && self.in_flight.len() < WINDOW
    }
}

#[derive(Default)]
struct PoolState {
    members: Vec<Member>,
    next: usize,
    /// Accepted connections no worker could take yet.
    waiting: VecDeque<Conn>,
    /// A task offers the waiting connections again shortly.
    retry_planned: bool,
    /// Which worker holds each session seen (sticky balancing).
    sessions: Sessions,
}

/// The workers listening on one key.
struct Pool {
    key: String,
    /// Where the pool's socket listens (what a retiring worker's connections are matched to).
    local: Option<ListenAddr>,
    /// Connections go by [`Affinity`] ([`Balance::Sticky`]).
    sticky: bool,
    state: Mutex<PoolState>,
    /// A worker got room, or joined.
    room: Notify,
    closed: AtomicBool,
    /// Wakes the accept task when the pool closes.
    shut: Notify,
    /// The cluster's `newconn` seq, shared by every pool: a worker's answer names only the seq,
    /// so one seq must mean one connection across all of a worker's servers (Node's primary
    /// has one counter too).
    seq: Arc<AtomicU64>,
}

/// The cluster's pools.
pub(crate) struct Balancer {
    mode: Balance,
    pools: Mutex<HashMap<String, Arc<Pool>>>,
    /// Told whenever a connection in flight is answered or given back.
    answers: Notify,
    /// The `newconn` seq, for every pool.
    seq: Arc<AtomicU64>,
}

impl Balancer {
    pub(crate) fn new(mode: Balance) -> Balancer {
        Balancer {
            mode,
            pools: Mutex::new(HashMap::new()),
            answers: Notify::new(),
            seq: Arc::new(AtomicU64::new(0)),
        }
    }

    pub(crate) fn mode(&self) -> Balance {
        self.mode
    }

    /// Every address herd listens on for Node workers' servers, and the workers whose servers
    /// listen there now, in address order.
    pub(crate) fn serving(&self) -> Vec<(String, Vec<WorkerId>)> {
        let mut out: Vec<(String, Vec<WorkerId>)> = self
            .pools()
            .iter()
            .filter_map(|p| {
                let st = p.state.lock().ok()?;
                let mut ws: Vec<WorkerId> = st
                    .members
                    .iter()
                    .filter(|m| m.open)
                    .map(|m| m.worker)
                    .collect();
                ws.sort_unstable();
                let at = p
                    .local
                    .as_ref()
                    .map_or_else(|| p.key.clone(), |l| l.to_string());
                Some((at, ws))
            })
            .collect();
        out.sort();
        out
    }

    /// `worker` listens on `key`, whose socket is `listener`. In round-robin mode the first
    /// worker on a key starts the pool's accept task (on a copy of `listener`). Fails with a
    /// libuv code: too many keys, or a socket tokio cannot watch.
    pub(crate) fn join(
        &self,
        key: &str,
        listener: &OwnedFd,
        worker: WorkerId,
        chan: &HandleChannel,
    ) -> Result<(), i64> {
        let pool = {
            let mut pools = self.pools.lock().map_err(|_| uv::EAGAIN)?;
            match pools.get(key) {
                Some(pool) => pool.clone(),
                None => {
                    if pools.len() >= MAX_KEYS {
                        return Err(uv::EMFILE);
                    }
                    let pool = Arc::new(Pool {
                        key: key.to_string(),
                        local: listen::local_addr(listener).ok(),
                        sticky: self.mode == Balance::Sticky,
                        state: Mutex::default(),
                        room: Notify::new(),
                        closed: AtomicBool::new(false),
                        shut: Notify::new(),
                        seq: self.seq.clone(),
                    });
                    if self.mode.herd_accepts() {
                        if self.mode == Balance::Sticky {
                            // The first request is there when herd accepts (TCP only).
                            let _ = crate::sys::set_defer_accept(listener.as_fd(), 1);
                        }
                        let copy = listener.try_clone().map_err(|_| uv::EMFILE)?;
                        let fd = crate::sys::watch(copy, tokio::io::Interest::READABLE)
                            .map_err(|_| uv::EINVAL)?;
                        tokio::spawn(accept_loop(pool.clone(), fd));
                    }
                    pools.insert(key.to_string(), pool.clone());
                    pool
                }
            }
        };
        let mut st = pool.state.lock().map_err(|_| uv::EAGAIN)?;
        match st.members.iter_mut().find(|m| m.worker == worker) {
            Some(m) => m.open = !m.retiring,
            None => st.members.push(Member {
                worker,
                chan: chan.clone(),
                in_flight: HashMap::new(),
                open: true,
                retiring: false,
            }),
        }
        pool.drain_waiting(&mut st);
        drop(st);
        pool.room.notify_waiters();
        Ok(())
    }

    fn pools(&self) -> Vec<Arc<Pool>> {
        self.pools
            .lock()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default()
    }

    /// The worker answered our `newconn` `seq`: a connection taken is the worker's alone now; a
    /// refused one goes to another worker.
    pub(crate) fn answered(&self, worker: WorkerId, seq: u64, accepted: bool) {
        for pool in self.pools() {
            let Ok(mut st) = pool.state.lock() else {
                continue;
            };
            let Some(m) = st.members.iter_mut().find(|m| m.worker == worker) else {
                continue;
            };
            let Some(mut conn) = m.in_flight.remove(&seq) else {
                continue;
            };
            if !accepted {
                tracing::debug!(worker = %worker, key = pool.key, "a Node worker refused a connection; handing it to another");
                conn.tried.push(worker);
                pool.place_or_queue(&mut st, conn);
            }
            pool.drain_waiting(&mut st);
            drop(st);
            pool.room.notify_waiters();
            self.answers.notify_waiters();
            return;
        }
        tracing::debug!(worker = %worker, seq, "answer to no connection of ours ignored");
    }

    /// The worker's server on `key` closed: it gets no more connections there (those in flight
    /// come back refused).
    pub(crate) fn close_key(&self, worker: WorkerId, key: &str) {
        let pool = self.pools.lock().ok().and_then(|p| p.get(key).cloned());
        if let Some(pool) = pool {
            if let Ok(mut st) = pool.state.lock() {
                if let Some(m) = st.members.iter_mut().find(|m| m.worker == worker) {
                    m.open = false;
                }
            }
        }
    }

    /// The worker is retiring: no new connection goes to it. The keys it listens on and where
    /// their sockets listen (for `node::rescue`).
    pub(crate) fn retire(&self, worker: WorkerId) -> Vec<(String, ListenAddr)> {
        let mut keys = Vec::new();
        for pool in self.pools() {
            let Ok(mut st) = pool.state.lock() else {
                continue;
            };
            if let Some(m) = st.members.iter_mut().find(|m| m.worker == worker) {
                m.open = false;
                m.retiring = true;
                if let Some(local) = &pool.local {
                    keys.push((pool.key.clone(), local.clone()));
                }
            }
        }
        keys
    }

    /// The socket inodes of the connections sent to `worker` and not answered yet: still
    /// herd's to give, so a rescue must not take them as well.
    pub(crate) fn in_flight_inodes(&self, worker: WorkerId) -> HashSet<u64> {
        let mut inodes = HashSet::new();
        for pool in self.pools() {
            let Ok(st) = pool.state.lock() else {
                continue;
            };
            for m in st.members.iter().filter(|m| m.worker == worker) {
                inodes.extend(
                    m.in_flight
                        .values()
                        .filter_map(|c| rustix::fs::fstat(&c.fd).ok().map(|s| s.st_ino)),
                );
            }
        }
        inodes
    }

    /// Connections sent to `worker` and not answered yet.
    pub(crate) fn in_flight(&self, worker: WorkerId) -> usize {
        self.pools()
            .iter()
            .filter_map(|p| {
                let st = p.state.lock().ok()?;
                let m = st.members.iter().find(|m| m.worker == worker)?;
                Some(m.in_flight.len())
            })
            .sum()
    }

    /// Waits until every connection sent to `worker` is answered, or `limit` passes.
    pub(crate) async fn answered_all(&self, worker: WorkerId, limit: Duration) {
        let deadline = crate::deadline::from_now(limit);
        loop {
            let notified = self.answers.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.in_flight(worker) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                tracing::debug!(worker = %worker, "a retiring Node worker did not answer for its connections in time");
                return;
            }
        }
    }

    /// The worker is gone (its channel closed): it leaves every pool, and the connections it
    /// had not answered for go to the others.
    pub(crate) fn gone(&self, worker: WorkerId) {
        for pool in self.pools() {
            let Ok(mut st) = pool.state.lock() else {
                continue;
            };
            let Some(at) = st.members.iter().position(|m| m.worker == worker) else {
                continue;
            };
            let m = st.members.remove(at);
            st.sessions.forget(worker);
            if st.next > at {
                st.next -= 1;
            }
            for (_, mut conn) in m.in_flight {
                conn.tried.push(worker);
                pool.place_or_queue(&mut st, conn);
            }
            drop(st);
            pool.room.notify_waiters();
        }
        self.answers.notify_waiters();
    }

    /// A connection `from` let go of while it still had a client (`node::rescue`): to
    /// another worker listening on `key`.
    pub(crate) fn rehome(&self, key: &str, fd: OwnedFd, from: WorkerId) {
        let pool = self.pools.lock().ok().and_then(|p| p.get(key).cloned());
        let Some(pool) = pool else {
            return;
        };
        let Ok(mut st) = pool.state.lock() else {
            return;
        };
        let sticky = pool.sticky;
        pool.place_or_queue(&mut st, Conn::new(fd, vec![from], sticky));
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        for pool in self.pools() {
            pool.closed.store(true, Ordering::Release);
            pool.shut.notify_waiters();
            pool.room.notify_waiters();
        }
    }
}

impl Pool {
    /// Sends `conn` to the next worker with room that has not refused it; hands it back when
    /// none can take it now.
    fn place(&self, st: &mut PoolState, conn: Conn) -> Option<Conn> {
        if conn.affinity.is_some() {
            return self.place_sticky(st, conn);
        }
        let n = st.members.len();
        let mut conn = conn;
        for i in 0..n {
            let at = (st.next + i) % n;
            let m = &mut st.members[at];
            if !m.has_room() || conn.tried.contains(&m.worker) {
                continue;
            }
            match self.send(m, conn) {
                Sent::Yes => {
                    st.next = at + 1;
                    return None;
                }
                Sent::NoDescriptor(c) => return Some(c),
                Sent::Refused(c) => conn = c,
            }
        }
        Some(conn)
    }

    /// A sticky connection to its session's worker, else its address's, of those listening
    /// that have not refused it; it waits while that worker has no room.
    fn place_sticky(&self, st: &mut PoolState, conn: Conn) -> Option<Conn> {
        let Some(aff) = &conn.affinity else {
            return Some(conn);
        };
        let takes = |m: &Member| m.open && !conn.tried.contains(&m.worker);
        let session = aff
            .sid
            .as_deref()
            .and_then(|sid| st.sessions.owner(sid))
            .filter(|w| st.members.iter().any(|m| m.worker == *w && takes(m)));
        let by_addr = || {
            let listening = st.members.iter().filter(|m| takes(m));
            sticky::rendezvous(aff.addr, listening.map(|m| m.worker))
        };
        let Some(target) = session.or_else(by_addr) else {
            return Some(conn);
        };
        let sid = aff.sid.clone();
        let Some(m) = st.members.iter_mut().find(|m| m.worker == target) else {
            return Some(conn);
        };
        if !m.has_room() {
            return Some(conn);
        }
        match self.send(m, conn) {
            Sent::Yes => {
                if let Some(sid) = sid {
                    st.sessions.learn(&sid, target);
                }
                None
            }
            Sent::NoDescriptor(c) | Sent::Refused(c) => Some(c),
        }
    }

    /// Sends `conn` to `m` (Node's `newconn`, a copy of the descriptor on the line).
    fn send(&self, m: &mut Member, conn: Conn) -> Sent {
        let Ok(copy) = conn.fd.try_clone() else {
            // Out of descriptors for a moment: it waits, and is offered again.
            tracing::warn!("cannot duplicate a connection for a Node worker (EMFILE?)");
            return Sent::NoDescriptor(conn);
        };
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) + 1;
        let line = cluster::newconn(&self.key, seq);
        let frame = Frame::new(Kind::Node, Format::Json, line).with_fds(vec![copy]);
        if m.chan.send_handle_soon(frame).is_err() {
            return Sent::Refused(conn);
        }
        m.in_flight.insert(seq, conn);
        Sent::Yes
    }

    /// [`Pool::place`], else the connection waits. One that every listening worker refused
    /// (all at `maxConnections`; Node's primary would keep offering it) is offered again every
    /// [`RETRY_EVERY`] for [`REFUSED_FOR`], then closed, as a lone server at `maxConnections`
    /// closes it; one that waited [`WAIT_LIMIT`] (no worker listens, every gate is full) or
    /// past [`MAX_WAITING`] is closed.
    fn place_or_queue(self: &Arc<Self>, st: &mut PoolState, conn: Conn) {
        let Some(mut conn) = self.place(st, conn) else {
            return;
        };
        let someone = st
            .members
            .iter()
            .any(|m| m.open && !conn.tried.contains(&m.worker));
        let nobody_listens = !st.members.iter().any(|m| m.open);
        if !someone && !nobody_listens {
            let since = *conn.refused_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= REFUSED_FOR {
                tracing::debug!(
                    key = self.key,
                    "every Node worker refused this connection: closed"
                );
                return;
            }
        }
        if st.waiting.len() >= MAX_WAITING {
            tracing::debug!(
                key = self.key,
                "too many connections wait for a Node worker: closed"
            );
            return;
        }
        st.waiting.push_back(conn);
        self.plan_retry(st);
    }

    /// Makes sure a task offers the waiting connections again in [`RETRY_EVERY`] (one such
    /// task per pool): refused ones get a new round, ones past [`WAIT_LIMIT`] are closed, and
    /// the accept task is woken if room appeared.
    fn plan_retry(self: &Arc<Self>, st: &mut PoolState) {
        if st.retry_planned || self.closed.load(Ordering::Acquire) {
            return;
        }
        st.retry_planned = true;
        let pool = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(RETRY_EVERY).await;
            let Ok(mut st) = pool.state.lock() else {
                return;
            };
            st.retry_planned = false;
            let before = st.waiting.len();
            st.waiting.retain(|c| c.since.elapsed() < WAIT_LIMIT);
            if st.waiting.len() < before {
                tracing::debug!(
                    key = pool.key,
                    closed = before - st.waiting.len(),
                    "connections no Node worker took in time: closed"
                );
            }
            for c in st.waiting.iter_mut().filter(|c| c.refused_since.is_some()) {
                c.tried.clear();
            }
            pool.drain_waiting(&mut st);
            if !st.waiting.is_empty() {
                pool.plan_retry(&mut st);
            }
            drop(st);
            pool.room.notify_waiters();
        });
    }

    /// Connections that waited go to workers with room, in order.
    fn drain_waiting(self: &Arc<Self>, st: &mut PoolState) {
        for _ in 0..st.waiting.len() {
            let Some(conn) = st.waiting.pop_front() else {
                break;
            };
            if let Some(conn) = self.place(st, conn) {
                st.waiting.push_back(conn);
            }
        }
    }

    /// Whether to accept now: a worker has room and nothing waits (sticky: whatever waits,
    /// which waits for its own worker and must not hold up the others' clients).
    fn can_accept(&self) -> bool {
        self.state.lock().map(|st| self.more(&st)).unwrap_or(false)
    }

    fn more(&self, st: &PoolState) -> bool {
        (self.sticky || st.waiting.is_empty()) && st.members.iter().any(Member::has_room)
    }

    /// A connection just accepted; whether more can be taken now.
    fn dispatch(self: &Arc<Self>, fd: OwnedFd) -> bool {
        let Ok(mut st) = self.state.lock() else {
            return false;
        };
        let sticky = self.sticky;
        self.place_or_queue(&mut st, Conn::new(fd, Vec::new(), sticky));
        self.more(&st)
    }
}

/// A round-robin pool's accept task: accepts while a worker has room, in batches, and ends
/// when the cluster's pools close.
async fn accept_loop(pool: Arc<Pool>, listener: AsyncFd<OwnedFd>) {
    loop {
        // Wait for room (connections meanwhile wait in the kernel's backlog).
        loop {
            let room = pool.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            if pool.closed.load(Ordering::Acquire) {
                return;
            }
            if pool.can_accept() {
                break;
            }
            room.await;
        }
        let shut = pool.shut.notified();
        tokio::pin!(shut);
        shut.as_mut().enable();
        if pool.closed.load(Ordering::Acquire) {
            return;
        }
        let mut ready = tokio::select! {
            r = listener.readable() => match r {
                Ok(r) => r,
                Err(e) => {
                    tracing::warn!(key = pool.key, error = %e, "cannot watch a listening socket; round-robin stops on it");
                    return;
                }
            },
            _ = &mut shut => return,
        };
        for _ in 0..ACCEPT_BATCH {
            match rustix::net::accept_with(
                listener.get_ref().as_fd(),
                SocketFlags::NONBLOCK | SocketFlags::CLOEXEC,
            ) {
                Ok(conn) => {
                    if !pool.dispatch(conn) {
                        break;
                    }
                }
                Err(Errno::AGAIN) => {
                    ready.clear_ready();
                    break;
                }
                Err(Errno::CONNABORTED | Errno::INTR | Errno::PROTO) => {}
                Err(e) => {
                    tracing::warn!(key = pool.key, error = %e, "accept failed; pausing");
                    drop(ready);
                    tokio::time::sleep(ACCEPT_PAUSE).await;
                    break;
                }
            }
        }
    }
}

/// What [`Pool::send`] did with a connection.
enum Sent {
    Yes,
    /// No descriptor to copy it into: it waits.
    NoDescriptor(Conn),
    /// The worker's channel would not take it.
    Refused(Conn),
}

mod sticky;
#[cfg(test)]
mod tests;
