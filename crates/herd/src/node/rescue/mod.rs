//! A retiring Node worker's connections, kept alive past its `server.close()`. Node (19 and
//! later) destroys a server's idle connections when it closes: keep-alive connections between
//! two requests, and connections accepted whose request is not read yet. Their clients then
//! see a reset, or a close just as they send the next request. Node 18 destroys none, and
//! later versions keep those that were busy when the server closed: with busy clients the
//! worker lives to its grace period, and its `SIGKILL` takes the request it was answering. So
//! before herd asks a worker to disconnect, it takes a copy of each client connection the
//! worker holds on the cluster's sockets (`pidfd_getfd`, the worker being herd's child). A
//! socket lives while any process holds it, so one the worker destroys stays open in herd,
//! with no reset and no FIN:
//! - let go while the worker lives (Node destroyed it idle): handed to another worker when
//!   it carries a request (Node's `newconn`), at once or as soon as one arrives, within
//!   [`PARK`]; closed if none does (an idle connection closed, as Node meant to).
//! - still held half the worker's grace period after the disconnect (time for Node's own
//!   disconnect and the program's handlers): herd raises each one's receive low-water mark, so
//!   the worker answers what it has read and its event loop is not woken for a next request,
//!   which waits in the socket. When two reads of its table in a row find each connection it
//!   holds with the start of an HTTP request line waiting (method, space, target), no
//!   connection still on its way to it, and a complete scan finds no connection herd has not
//!   taken and no listening socket, herd stops it (`SIGSTOP`), checks the connections again
//!   (stopped, it cannot read one meanwhile) and ends it (`SIGKILL`, through a pidfd); they go
//!   on as below. Otherwise it goes on (`SIGCONT`, also when anything cuts that short). If
//!   that does not happen within [`plan::PAUSE_LIMIT`], or cannot (a connection whose bytes are no
//!   request line, a Unix socket, an incomplete scan), the marks go down and the worker serves
//!   its connections as before, to its exit or grace period.
//! - still held when the worker exits: handed on if a request line waits on it (its previous
//!   one was answered: clients do not pipeline); else parked as one let go of idle.
//! - closed by the client, or with bytes that are no request line (a WebSocket, the rest of a
//!   body: no other worker could read them): closed.
//!
//! That is [`Rescue::End`], the default; [`Rescue::Hold`] keeps and hands on connections but
//! never ends the worker early, and [`Rescue::Off`] takes nothing. When to pause, end or give
//! up is decided by [`plan::Plan`], pure, within the worker's life (`primary::life::retire`,
//! which owns every timer of it); [`Rescuer`] does the work it asks for.
//!
//! Nothing here is needed for the worker to stop: where `pidfd_getfd` is not allowed (another
//! user, a ptrace policy) the worker retires as before, with a warning.

use std::collections::HashSet;
use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{sockopt, RecvFlags, SocketType};
use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags};
use tokio::io::Interest;

use super::balance::Balancer;
use crate::ids::WorkerId;
use crate::listen::{self, ListenAddr};
use plan::Verdict;

/// Connections taken from one retiring worker, at most.
pub(crate) const MAX_HELD: usize = 4096;

/// How long a connection the worker let go of idle is kept waiting for its next request.
pub(crate) const PARK: Duration = Duration::from_secs(2);

/// Reads in a row that may find a request line cut short before the connection is opaque.
const PARTIAL_TICKS: u8 = 10;

/// The receive low-water mark that keeps a retiring worker from reading a connection's next
/// request (the kernel caps it at half the largest TCP receive buffer: a request bigger than
/// that still reaches the worker, which answers it).
const NO_READING: i32 = i32::MAX;

/// One connection herd holds a copy of.
pub(crate) struct Held {
    fd: OwnedFd,
    ino: u64,
    key: String,
    /// A TCP connection (a Unix socket's readiness ignores the low-water mark).
    tcp: bool,
    /// Its low-water mark is raised: the worker reads nothing more from it.
    paused: bool,
    /// Bytes that are no HTTP request line waited on it (or the start of one that did not
    /// grow): the worker reads it as before, and herd hands it to no other worker.
    opaque: bool,
    /// Reads in a row that found a request line cut short.
    partial: u8,
}

impl Held {
    /// Keeps the worker from reading the next request (TCP only, and not an opaque one).
    fn pause(&mut self) {
        if self.tcp && !self.paused && !self.opaque {
            self.paused = crate::sys::set_rcvlowat(self.fd.as_fd(), NO_READING).is_ok();
        }
    }

    /// Whoever holds it next reads it as usual.
    fn resume(&mut self) {
        if self.paused {
            let _ = crate::sys::set_rcvlowat(self.fd.as_fd(), 1);
            self.paused = false;
        }
    }
}

/// What a held connection has, read without taking it.
#[derive(Debug, PartialEq)]
enum Peek {
    /// The start of an HTTP/1 request waits: a method token and a space.
    Request,
    /// Bytes wait that may still become a request line (a method token, cut short).
    Partial,
    /// Bytes wait that are no HTTP request line.
    Other,
    /// Nothing waits.
    Idle,
    /// The client closed it, or it failed.
    Gone,
}

/// The longest HTTP method herd expects before the space (`OPTIONS`, `CONNECT`).
const METHOD_MAX: usize = 7;

/// What `bytes`, the first to wait on a connection, are: a request line starts with an
/// upper-case method token (3 to 7 letters: `GET`, `OPTIONS`), a space and the start of a
/// request target: `/`, `*` or `h` (of `http://`), or anything printable after `CONNECT`.
fn request_start(bytes: &[u8]) -> Peek {
    let Some(space) = bytes.iter().position(|b| !b.is_ascii_uppercase()) else {
        return if bytes.len() <= METHOD_MAX {
            Peek::Partial
        } else {
            Peek::Other
        };
    };
    if !(3..=METHOD_MAX).contains(&space) || bytes[space] != b' ' {
        return Peek::Other;
    }
    match bytes.get(space + 1) {
        None => Peek::Partial,
        Some(b'/' | b'*' | b'h') => Peek::Request,
        Some(b) if &bytes[..space] == b"CONNECT" && b.is_ascii_graphic() => Peek::Request,
        Some(_) => Peek::Other,
    }
}

fn peek(fd: impl AsFd) -> Peek {
    let mut head = [0u8; METHOD_MAX + 2];
    match rustix::net::recv(fd, &mut head, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((n, _)) if n > 0 => request_start(&head[..n.min(head.len())]),
        Ok(_) => Peek::Gone,
        Err(Errno::AGAIN) => Peek::Idle,
        Err(_) => Peek::Gone,
    }
}

/// Whether a connection accepted on a socket listening at `listener` has local address `conn`.
fn accepted_on(listener: &ListenAddr, conn: &ListenAddr) -> bool {
    match (listener, conn) {
        (ListenAddr::Tcp(l), ListenAddr::Tcp(c)) => {
            l.port() == c.port() && (l.ip().is_unspecified() || l.ip() == c.ip())
        }
        // An unnamed or abstract socket's path is empty, like every unnamed socket's.
        (ListenAddr::Unix(l), ListenAddr::Unix(c)) => !l.as_os_str().is_empty() && l == c,
        _ => false,
    }
}

/// How many more descriptors this process may hold and still have room for the rest of its
/// work: half of what is left under its open-file limit.
fn headroom() -> usize {
    let open = crate::procfs::open_fds();
    let limit = usize::try_from(crate::sys::fd_limit()).unwrap_or(usize::MAX);
    limit.saturating_sub(open) / 2
}

/// What [`grab`] found in a worker's descriptor table.
#[derive(Default)]
pub(crate) struct Grab {
    /// The copies taken.
    pub(crate) held: Vec<Held>,
    /// Every descriptor was looked at: none skipped for a limit or a refusal.
    pub(crate) complete: bool,
    /// The worker still has a listening socket on one of the keys: it may accept more.
    pub(crate) listening: bool,
}

/// Takes a copy of every client connection the worker (`pid`, open as `pidfd`) holds that was
/// accepted on one of `keys`' sockets, but those in `skip` (still herd's to hand out), at most
/// [`MAX_HELD`] and half of this process's descriptor headroom. Incomplete (with a warning)
/// past those limits or where the kernel does not allow it. Each copy comes through the pidfd,
/// so from the worker itself even if its pid was reaped and reused after the table was read
/// (a copy whose inode is not the table's is skipped).
pub(crate) fn grab(
    pid: u32,
    pidfd: &OwnedFd,
    keys: &[(String, ListenAddr)],
    skip: &HashSet<u64>,
) -> Grab {
    let mut grab = Grab::default();
    if keys.is_empty() {
        grab.complete = true;
        return grab;
    }
    let most = MAX_HELD.min(headroom());
    let Ok(table) = crate::procfs::socket_inodes(pid) else {
        return grab;
    };
    let mut seen = HashSet::new();
    for (n, ino) in table {
        if !seen.insert(ino) || skip.contains(&ino) {
            continue;
        }
        if grab.held.len() >= most {
            tracing::warn!(
                pid,
                most,
                "a retiring worker holds more connections than herd can keep alive for it \
                 (MAX_HELD, or half its open-file headroom)"
            );
            return grab;
        }
        let fd = match rustix::process::pidfd_getfd(pidfd, n, PidfdGetfdFlags::empty()) {
            Ok(fd) => fd,
            Err(Errno::BADF) => continue,
            // It exited meanwhile: nothing more to take.
            Err(Errno::SRCH) => return grab,
            Err(e) => {
                tracing::warn!(pid, error = %e, "cannot take the retiring worker's connections (pidfd_getfd); its idle ones may be reset");
                return grab;
            }
        };
        // The number may have been reused since the table was read: the copy's own inode.
        if rustix::fs::fstat(&fd).map(|st| st.st_ino) != Ok(ino)
            || sockopt::socket_type(&fd) != Ok(SocketType::STREAM)
        {
            continue;
        }
        let Ok(local) = listen::local_addr(&fd) else {
            continue;
        };
        let Some((key, _)) = keys.iter().find(|(_, l)| accepted_on(l, &local)) else {
            continue;
        };
        if sockopt::socket_acceptconn(&fd).unwrap_or(true) {
            grab.listening = true;
            continue;
        }
        grab.held.push(Held {
            fd,
            ino,
            key: key.clone(),
            tcp: matches!(local, ListenAddr::Tcp(_)),
            paused: false,
            opaque: false,
            partial: 0,
        });
    }
    grab.complete = true;
    tracing::debug!(
        pid,
        held = grab.held.len(),
        "holding a retiring worker's connections"
    );
    grab
}

/// What a job of the [`Rescuer`] found (the life's `retire::Outcome`).
#[derive(Debug)]
pub(crate) enum Found {
    /// `held` copies taken; `can_end`: herd can signal the worker.
    Grabbed { held: usize, can_end: bool },
    /// Its table read: `held` connections it still holds.
    Looked { held: usize },
    /// Its table could not be read.
    LookFailed,
    /// What an attempt to end it found; `stuck`: a held connection's mark is down.
    Tried { verdict: Verdict, stuck: bool },
}

/// A job of the [`Rescuer`]: blocking work off the runtime's threads, and the connections it
/// took, given back with what it found (cancel-safe: dropped, its connections close, and a
/// stopped worker is continued by [`Stopped`]'s drop).
pub(crate) type Job = Pin<Box<dyn Future<Output = (Vec<Held>, Found)> + Send>>;

/// The shell's side of one retiring worker's rescue: the connections herd holds for it, and
/// the work the worker's life asks for (`primary::life::retire`), one job at a time.
pub(crate) struct Rescuer {
    balancer: Arc<Balancer>,
    worker: WorkerId,
    pid: u32,
    /// The cluster's sockets it listened on.
    keys: Vec<(String, ListenAddr)>,
    held: Vec<Held>,
    /// Taken while it runs (not reaped): a signal through it reaches the worker or nothing.
    pidfd: Option<Arc<OwnedFd>>,
}

impl Rescuer {
    pub(crate) fn new(
        balancer: Arc<Balancer>,
        worker: WorkerId,
        pid: u32,
        keys: Vec<(String, ListenAddr)>,
    ) -> Rescuer {
        Rescuer {
            balancer,
            worker,
            pid,
            keys,
            held: Vec::new(),
            pidfd: None,
        }
    }

    /// Takes a copy of each client connection it holds but those still on their way to it;
    /// `running`: it has not been reaped (its pid is still its own).
    pub(crate) fn grab(&mut self, running: bool) -> Job {
        self.pidfd = Pid::from_raw(self.pid as i32)
            .filter(|_| running)
            .and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()).ok())
            .map(Arc::new);
        let can_end = self.pidfd.is_some();
        let skip = self.balancer.in_flight_inodes(self.worker);
        let (pid, keys, pidfd) = (self.pid, self.keys.clone(), self.pidfd.clone());
        Box::pin(async move {
            let Some(pidfd) = pidfd else {
                return (Vec::new(), Found::Grabbed { held: 0, can_end });
            };
            let held = tokio::task::spawn_blocking(move || grab(pid, &pidfd, &keys, &skip).held)
                .await
                .unwrap_or_default();
            let n = held.len();
            (held, Found::Grabbed { held: n, can_end })
        })
    }

    /// Reads its table: the connections it let go of are handed on, the others kept.
    pub(crate) fn look(&mut self) -> Job {
        let held = std::mem::take(&mut self.held);
        let (balancer, worker, pid) = (self.balancer.clone(), self.worker, self.pid);
        Box::pin(async move {
            let Ok(Ok(table)) =
                tokio::task::spawn_blocking(move || crate::procfs::socket_inodes(pid)).await
            else {
                return (held, Found::LookFailed);
            };
            let open: HashSet<u64> = table.into_iter().map(|(_, ino)| ino).collect();
            let (kept, released): (Vec<Held>, Vec<Held>) =
                held.into_iter().partition(|h| open.contains(&h.ino));
            for h in released {
                hand_on(&balancer, worker, h);
            }
            let n = kept.len();
            (kept, Found::Looked { held: n })
        })
    }

    /// Ends it if it holds nothing more than connections whose next request waits.
    pub(crate) fn try_end(&mut self) -> Job {
        let kept = std::mem::take(&mut self.held);
        let (balancer, worker, pid) = (self.balancer.clone(), self.worker, self.pid);
        let (keys, pidfd) = (self.keys.clone(), self.pidfd.clone());
        Box::pin(async move {
            let (kept, verdict) = match pidfd {
                Some(pidfd) => end_if_done(&balancer, worker, pid, &keys, &pidfd, kept).await,
                None => (kept, Verdict::Never),
            };
            let stuck = kept.iter().any(|h| !h.paused);
            (kept, Found::Tried { verdict, stuck })
        })
    }

    /// The connections a job took, back.
    pub(crate) fn put_back(&mut self, held: Vec<Held>) {
        self.held.extend(held);
    }

    /// Raises the held connections' marks.
    pub(crate) fn pause(&mut self) {
        self.held.iter_mut().for_each(Held::pause);
    }

    /// Lowers them.
    pub(crate) fn resume(&mut self) {
        self.held.iter_mut().for_each(Held::resume);
    }

    /// Whether each held connection has its next request waiting, and whether one's mark is
    /// down (herd cannot tell its requests).
    pub(crate) fn peek(&mut self) -> (bool, bool) {
        let all = all_answered(&mut self.held);
        (all, self.held.iter().any(|h| !h.paused))
    }

    /// Hands on everything held (the worker exited).
    pub(crate) fn hand_on(&mut self) {
        for h in self.held.drain(..) {
            hand_on(&self.balancer, self.worker, h);
        }
    }
}

/// A held connection the worker let go of (or left by exiting): to another worker if a
/// request waits on it, parked if idle (the worker may have let go just as its client sent the
/// next request), closed if the client closed it or herd cannot tell where its next request
/// starts (opaque).
fn hand_on(balancer: &Arc<Balancer>, worker: WorkerId, mut h: Held) {
    h.resume();
    if h.opaque {
        return;
    }
    match peek(&h.fd) {
        Peek::Request => balancer.rehome(&h.key, h.fd, worker),
        Peek::Idle | Peek::Partial => {
            tokio::spawn(park(balancer.clone(), worker, h));
        }
        // Bytes from the middle of a stream (a WebSocket, a body): no other worker can read
        // them; closed, as the worker meant to.
        Peek::Other | Peek::Gone => {}
    }
}

/// Ends the worker if it still has nothing to do but hold `kept`: no connection herd has not
/// taken or is still handing it, no listening socket, and (checked again with it stopped, so
/// that it cannot read one meanwhile) every kept connection with its next request waiting.
/// What is still kept, with any connections taken now, and what was found.
async fn end_if_done(
    balancer: &Arc<Balancer>,
    worker: WorkerId,
    pid: u32,
    keys: &[(String, ListenAddr)],
    pidfd: &Arc<OwnedFd>,
    mut kept: Vec<Held>,
) -> (Vec<Held>, Verdict) {
    if balancer.in_flight(worker) > 0 {
        return (kept, Verdict::Later);
    }
    let skip: HashSet<u64> = kept.iter().map(|h| h.ino).collect();
    let (keys, fd) = (keys.to_vec(), pidfd.clone());
    let Ok(more) = tokio::task::spawn_blocking(move || grab(pid, &fd, &keys, &skip)).await else {
        return (kept, Verdict::Never);
    };
    if !more.complete {
        return (kept, Verdict::Never);
    }
    if more.listening || !more.held.is_empty() {
        // Not done: it may still accept, or holds connections herd had not taken (now taken
        // and paused, for the next look).
        kept.extend(more.held.into_iter().map(|mut h| {
            h.pause();
            h
        }));
        return (kept, Verdict::Later);
    }
    let Some(stopped) = Stopped::stop(pidfd) else {
        return (kept, Verdict::Later);
    };
    let is_stopped = tokio::task::spawn_blocking(move || wait_stopped(pid))
        .await
        .unwrap_or(false);
    if is_stopped && all_answered(&mut kept) {
        tracing::info!(
            pid,
            connections = kept.len(),
            "a retiring worker answered its last requests and holds only connections whose \
             next request waits: ending it (SIGKILL) so that they go to other workers"
        );
        if stopped.kill() {
            return (kept, Verdict::Ended);
        }
    }
    (kept, Verdict::Later)
}

/// A worker herd stopped (`SIGSTOP`): continued (`SIGCONT`) when this is dropped, unless it
/// was killed, so that no path (an error, a cancelled task) leaves it stopped.
struct Stopped<'a> {
    pidfd: &'a OwnedFd,
    killed: bool,
}

impl<'a> Stopped<'a> {
    fn stop(pidfd: &'a OwnedFd) -> Option<Stopped<'a>> {
        rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::STOP).ok()?;
        Some(Stopped {
            pidfd,
            killed: false,
        })
    }

    /// `SIGKILL`; whether it was sent.
    fn kill(mut self) -> bool {
        self.killed =
            rustix::process::pidfd_send_signal(self.pidfd, rustix::process::Signal::KILL).is_ok();
        self.killed
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        if !self.killed {
            let _ = rustix::process::pidfd_send_signal(self.pidfd, rustix::process::Signal::CONT);
        }
    }
}

/// Whether `pid` shows as stopped (`T` in `/proc/PID/stat`) within 100 ms of its `SIGSTOP`.
fn wait_stopped(pid: u32) -> bool {
    let deadline = std::time::Instant::now() + Duration::from_millis(100);
    loop {
        let state = crate::procfs::stat(pid as i32).map(|s| s.state);
        match state {
            Some('T') => return true,
            None => return false,
            Some(_) if std::time::Instant::now() >= deadline => return false,
            Some(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// Whether the worker has answered for every connection it still holds: each has the start of
/// its next request waiting, which the worker cannot read. One whose waiting bytes are no
/// request line, or stay the start of one, gets its low-water mark back (the worker reads it,
/// as before) and is marked opaque.
fn all_answered(kept: &mut [Held]) -> bool {
    let mut all = !kept.is_empty();
    for h in kept.iter_mut() {
        match peek(&h.fd) {
            Peek::Request if h.paused => h.partial = 0,
            Peek::Partial if h.paused && h.partial < PARTIAL_TICKS => {
                h.partial += 1;
                all = false;
            }
            Peek::Other | Peek::Partial if h.paused => {
                h.resume();
                h.opaque = true;
                all = false;
            }
            _ => all = false,
        }
    }
    all
}

/// A connection the worker let go of idle: handed on when its next request arrives, closed
/// if none does within [`PARK`] (or what arrives is no request line).
async fn park(balancer: Arc<Balancer>, worker: WorkerId, h: Held) {
    let Held { fd, key, .. } = h;
    let Ok(watched) = crate::sys::watch(fd, Interest::READABLE) else {
        return;
    };
    let deadline = tokio::time::Instant::now() + PARK;
    loop {
        let Ok(Ok(mut ready)) = tokio::time::timeout_at(deadline, watched.readable()).await else {
            return;
        };
        match peek(watched.get_ref()) {
            Peek::Request => break,
            // More of the line is on its way: wait for it.
            Peek::Partial | Peek::Idle => ready.clear_ready(),
            Peek::Other | Peek::Gone => return,
        }
    }
    balancer.rehome(&key, watched.into_inner(), worker);
}

pub(crate) mod plan;
#[cfg(test)]
mod tests;

/// What herd does with a retiring Node worker's connections (a reload, a scale-down, a stop):
/// [`ClusterBuilder::rescue`](crate::ClusterBuilder::rescue), `herd run --rescue`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Rescue {
    /// Nothing: the worker closes its servers as Node does (since Node 19 that destroys its
    /// idle keep-alive connections: their clients reconnect, and one that sent its next request
    /// just then sees it fail), and serves its busy ones to its exit or grace period.
    Off,
    /// herd keeps a copy of each client connection the worker holds, so that one it lets go
    /// of stays open and goes to another worker with its next request; the worker serves the
    /// rest to its exit or grace period (whose `SIGKILL` may take the request it was answering).
    Hold,
    /// As [`Rescue::Hold`], and once half its grace period has passed, a worker left holding
    /// only connections whose next request waits is ended (`SIGKILL`) so that those go to
    /// other workers: a reload under keep-alive load takes about half the grace period per
    /// worker, with no request lost. The default.
    #[default]
    End,
}
