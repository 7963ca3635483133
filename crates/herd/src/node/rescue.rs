//! A retiring Node worker's connections, kept alive past its `server.close()`. Node (19 and
//! later) destroys a server's idle connections when it closes: keep-alive connections between
//! two requests, and connections accepted whose request is not read yet. Their clients then
//! see a reset, or a close just as they send the next request. Node 18 destroys none: its
//! clients keep their connections busy, the worker lives to its grace period and its `SIGKILL`
//! takes the request it was answering. So before herd asks a worker to disconnect, it takes a
//! copy of each client connection the worker holds on the cluster's sockets (`pidfd_getfd`,
//! the worker being herd's child), and raises each TCP one's receive low-water mark: the
//! worker answers what it has read and reads no next request, which waits in the socket for
//! another worker. A socket lives while any process holds it, so one the worker destroys
//! stays open in herd, with no reset and no FIN:
//! - let go while the worker lives (Node destroyed it idle): handed to another worker when
//!   it carries a request (Node's `newconn`), at once or as soon as one arrives, within
//!   [`PARK`]; closed if none does (an idle connection closed, as Node meant to).
//! - still held by a worker that has answered for all of them (each has the start of its next
//!   HTTP request waiting, for two reads of its table in a row): the worker has nothing left to
//!   do but hold them (Node 18), so it is ended (`SIGKILL`) and they are handed on.
//! - still held when the worker exits: handed on if a request waits on it (its previous one
//!   was answered: clients do not pipeline); else kept as one let go of idle.
//! - closed by the client: closed.
//!
//! A connection whose waiting bytes are not an HTTP request line (a WebSocket, another
//! protocol) gets its low-water mark back and is read by the worker as before; it is not a
//! boundary herd can tell, so the worker then lives to its exit or grace period.
//!
//! Nothing here is needed for the worker to stop: where `pidfd_getfd` is not allowed (another
//! user, a ptrace policy) the worker retires as before, with a warning.

use std::collections::HashSet;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use rustix::io::Errno;
use rustix::net::{sockopt, RecvFlags, SocketType};
use rustix::process::{Pid, PidfdFlags, PidfdGetfdFlags};
use tokio::io::Interest;
use tokio::sync::watch;

use super::balance::Balancer;
use crate::ids::{ExitStatus, WorkerId};
use crate::listen::{self, ListenAddr};

/// Connections taken from one retiring worker, at most.
pub(crate) const MAX_HELD: usize = 4096;

/// How long a connection the worker let go of idle is kept waiting for its next request.
pub(crate) const PARK: Duration = Duration::from_secs(2);

/// How often the worker's descriptor table is read while it retires.
const TICK: Duration = Duration::from_millis(10);

/// Reads of the worker's table in a row that must find every connection it holds with a
/// request waiting before it is ended.
const ANSWERED_TICKS: u32 = 2;

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
    /// Bytes that are no HTTP request line waited on it: the worker reads it as before.
    opaque: bool,
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

impl Peek {
    /// Bytes wait on it.
    fn data(&self) -> bool {
        matches!(self, Peek::Request | Peek::Partial | Peek::Other)
    }
}

/// The longest HTTP method herd expects before the space (`OPTIONS`, `CONNECT`).
const METHOD_MAX: usize = 7;

/// What `bytes`, the first to wait on a connection, are: a request line starts with an
/// upper-case method token (3 to 7 letters: `GET`, `OPTIONS`) and a space.
fn request_start(bytes: &[u8]) -> Peek {
    for (i, b) in bytes.iter().enumerate() {
        match b {
            b'A'..=b'Z' if i < METHOD_MAX => {}
            b' ' if i >= 3 => return Peek::Request,
            _ => return Peek::Other,
        }
    }
    Peek::Partial
}

fn peek(fd: impl AsFd) -> Peek {
    let mut head = [0u8; METHOD_MAX + 1];
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

/// The socket inodes in `pid`'s descriptor table, by descriptor number.
fn sockets(pid: u32) -> std::io::Result<Vec<(i32, u64)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(entry) = entry else { continue };
        let Some(n) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        if let Some(ino) = link
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|i| i.parse().ok())
        {
            found.push((n, ino));
        }
    }
    Ok(found)
}

/// How many more descriptors this process may hold and still have room for the rest of its
/// work: half of what is left under its open-file limit.
fn headroom() -> usize {
    let open = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count());
    let limit = usize::try_from(crate::sys::fd_limit()).unwrap_or(usize::MAX);
    limit.saturating_sub(open) / 2
}

/// Takes a copy of every client connection `pid` holds that was accepted on one of `keys`'
/// sockets, but those in `skip` (still herd's to hand out), at most [`MAX_HELD`] and half of
/// this process's descriptor headroom. Empty (with a warning) where the kernel does not allow
/// it.
pub(crate) fn grab(pid: u32, keys: &[(String, ListenAddr)], skip: &HashSet<u64>) -> Vec<Held> {
    if keys.is_empty() {
        return Vec::new();
    }
    let most = MAX_HELD.min(headroom());
    let Some(pid_) = Pid::from_raw(pid as i32) else {
        return Vec::new();
    };
    let pidfd = match rustix::process::pidfd_open(pid_, PidfdFlags::empty()) {
        Ok(p) => p,
        Err(e) => {
            tracing::debug!(pid, error = %e, "cannot open the retiring worker's pidfd");
            return Vec::new();
        }
    };
    let Ok(table) = sockets(pid) else {
        return Vec::new();
    };
    let mut held = Vec::new();
    let mut seen = HashSet::new();
    for (n, ino) in table {
        if held.len() >= most {
            tracing::warn!(
                pid,
                most,
                "a retiring worker holds more connections than herd can keep alive for it \
                 (MAX_HELD, or half its open-file headroom)"
            );
            break;
        }
        if !seen.insert(ino) || skip.contains(&ino) {
            continue;
        }
        let fd = match rustix::process::pidfd_getfd(&pidfd, n, PidfdGetfdFlags::empty()) {
            Ok(fd) => fd,
            Err(Errno::BADF) => continue,
            Err(e) => {
                tracing::warn!(pid, error = %e, "cannot take the retiring worker's connections (pidfd_getfd); its idle ones may be reset");
                return held;
            }
        };
        if sockopt::socket_type(&fd) != Ok(SocketType::STREAM)
            || sockopt::socket_acceptconn(&fd).unwrap_or(true)
        {
            continue;
        }
        let Ok(local) = listen::local_addr(&fd) else {
            continue;
        };
        if let Some((key, _)) = keys.iter().find(|(_, l)| accepted_on(l, &local)) {
            held.push(Held {
                fd,
                ino,
                key: key.clone(),
                tcp: matches!(local, ListenAddr::Tcp(_)),
                paused: false,
                opaque: false,
            });
        }
    }
    tracing::debug!(
        pid,
        held = held.len(),
        "holding a retiring worker's connections"
    );
    held
}

/// Watches the retiring worker until it exits, and hands on, closes or ends it with each held
/// connection as the module says. `keys` are the cluster's sockets it listened on.
pub(crate) async fn watch(
    balancer: Arc<Balancer>,
    worker: WorkerId,
    pid: u32,
    keys: Vec<(String, ListenAddr)>,
    mut held: Vec<Held>,
    mut exit: watch::Receiver<Option<ExitStatus>>,
) {
    held.iter_mut().for_each(Held::pause);
    // Taken while it still runs (its exit not seen yet): a signal through it can only reach
    // the worker, never a process that reused its pid.
    let pidfd = Pid::from_raw(pid as i32)
        .and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()).ok())
        .filter(|_| exit.borrow().is_none());
    let mut answered = 0;
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !held.is_empty() {
        let exited = tokio::select! {
            _ = tick.tick() => exit.borrow().is_some(),
            changed = exit.changed() => changed.is_err() || exit.borrow().is_some(),
        };
        if exited {
            for mut h in held.drain(..) {
                h.resume();
                let what = peek(&h.fd);
                if what.data() {
                    balancer.rehome(&h.key, h.fd, worker);
                } else if what == Peek::Idle {
                    // The worker may have gone just as its client sends the next request.
                    tokio::spawn(park(balancer.clone(), worker, h));
                }
            }
            return;
        }
        let Ok(Ok(table)) = tokio::task::spawn_blocking(move || sockets(pid)).await else {
            continue;
        };
        let open: HashSet<u64> = table.into_iter().map(|(_, ino)| ino).collect();
        let (mut kept, released): (Vec<Held>, Vec<Held>) =
            held.into_iter().partition(|h| open.contains(&h.ino));
        for mut h in released {
            h.resume();
            match peek(&h.fd) {
                what if what.data() => balancer.rehome(&h.key, h.fd, worker),
                Peek::Idle => {
                    tokio::spawn(park(balancer.clone(), worker, h));
                }
                _ => {}
            }
        }
        answered = if all_answered(&mut kept) {
            answered + 1
        } else {
            0
        };
        if answered >= ANSWERED_TICKS {
            answered = 0;
            // A connection the worker accepted after herd's copy is taken (and paused) first.
            let mut skip = balancer.in_flight_inodes(worker);
            skip.extend(kept.iter().map(|h| h.ino));
            let keys = keys.clone();
            let more = tokio::task::spawn_blocking(move || grab(pid, &keys, &skip))
                .await
                .unwrap_or_default();
            if more.is_empty() {
                end(pidfd.as_ref(), pid, kept.len());
            } else {
                kept.extend(more.into_iter().map(|mut h| {
                    h.pause();
                    h
                }));
            }
        }
        held = kept;
    }
}

/// Whether the worker has answered for every connection it still holds: each has the start of
/// its next request waiting, which the worker cannot read. One whose waiting bytes are no
/// request line gets its low-water mark back (the worker reads it, as before).
fn all_answered(kept: &mut [Held]) -> bool {
    let mut all = !kept.is_empty();
    for h in kept.iter_mut() {
        match peek(&h.fd) {
            Peek::Request if h.paused => {}
            Peek::Other if h.paused => {
                h.resume();
                h.opaque = true;
                all = false;
            }
            _ => all = false,
        }
    }
    all
}

/// Ends a retiring worker that holds `n` connections it can no longer serve: each has its next
/// request waiting, which goes to another worker once it exits.
fn end(pidfd: Option<&OwnedFd>, pid: u32, n: usize) {
    let Some(pidfd) = pidfd else {
        return;
    };
    tracing::info!(
        pid,
        connections = n,
        "a retiring worker answered its last requests and holds only connections whose next \
         request waits: ending it (SIGKILL) so that they go to other workers"
    );
    if let Err(e) = rustix::process::pidfd_send_signal(pidfd, rustix::process::Signal::KILL) {
        tracing::debug!(pid, error = %e, "cannot end the retiring worker");
    }
}

/// A connection the worker let go of idle: handed on when its next request arrives, closed
/// if none does within [`PARK`].
async fn park(balancer: Arc<Balancer>, worker: WorkerId, h: Held) {
    let Held { fd, key, .. } = h;
    let Ok(watched) = crate::sys::watch(fd, Interest::READABLE) else {
        return;
    };
    let ready = tokio::time::timeout(PARK, watched.readable())
        .await
        .map(|r| r.map(|_| ()));
    let fd = watched.into_inner();
    if matches!(ready, Ok(Ok(_))) && peek(&fd).data() {
        balancer.rehome(&key, fd, worker);
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{TcpListener, TcpStream};

    use super::*;

    #[test]
    fn connections_are_matched_to_the_socket_they_were_accepted_on() {
        let any: ListenAddr = ListenAddr::Tcp("0.0.0.0:80".parse().unwrap());
        let local: ListenAddr = ListenAddr::Tcp("127.0.0.1:80".parse().unwrap());
        let conn = ListenAddr::Tcp("127.0.0.1:80".parse().unwrap());
        assert!(accepted_on(&any, &conn));
        assert!(accepted_on(&local, &conn));
        assert!(!accepted_on(
            &ListenAddr::Tcp("127.0.0.2:80".parse().unwrap()),
            &conn
        ));
        assert!(!accepted_on(
            &ListenAddr::Tcp("127.0.0.1:81".parse().unwrap()),
            &conn
        ));
        let unix = ListenAddr::Unix("/tmp/a.sock".into());
        assert!(accepted_on(&unix, &unix));
        assert!(!accepted_on(&unix, &conn));
        let unnamed = ListenAddr::Unix("".into());
        assert!(
            !accepted_on(&unnamed, &unnamed),
            "unnamed sockets match nothing"
        );
    }

    /// This process stands in for the retiring worker: of its descriptors, only the connection
    /// accepted on the listener is taken (not the listener, not the client's end), and a
    /// request waiting on it shows.
    #[test]
    fn the_accepted_connections_a_process_holds_are_taken() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let mut client = TcpStream::connect(addr).unwrap();
        let (accepted, _) = l.accept().unwrap();
        accepted.set_nonblocking(true).unwrap();
        let keys = vec![("k".to_string(), ListenAddr::Tcp(addr))];
        let held = grab(std::process::id(), &keys, &HashSet::new());
        assert_eq!(held.len(), 1, "the accepted connection only");
        let h = &held[0];
        assert_eq!(h.key, "k");
        let peer = rustix::net::getpeername(&h.fd).unwrap().unwrap();
        assert_eq!(
            std::net::SocketAddr::try_from(peer).unwrap(),
            client.local_addr().unwrap()
        );
        assert_eq!(peek(&h.fd), Peek::Idle);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while peek(&h.fd) != Peek::Request {
            assert!(std::time::Instant::now() < deadline, "the request shows");
            std::thread::yield_now();
        }
        drop(client);
        assert!(
            grab(std::process::id(), &[], &HashSet::new()).is_empty(),
            "no keys, nothing taken"
        );
        let ino = rustix::fs::fstat(&h.fd).unwrap().st_ino;
        let skip: HashSet<u64> = [ino].into();
        assert!(
            grab(std::process::id(), &keys, &skip).is_empty(),
            "a connection still herd's to give is not taken"
        );
    }

    #[test]
    fn a_request_line_is_told_from_other_bytes() {
        assert_eq!(request_start(b"GET / HT"), Peek::Request);
        assert_eq!(request_start(b"OPTIONS "), Peek::Request);
        assert_eq!(request_start(b"GE"), Peek::Partial);
        assert_eq!(
            request_start(b"\x81\x85abc"),
            Peek::Other,
            "a WebSocket frame"
        );
        assert_eq!(request_start(b"get / HT"), Peek::Other);
        assert_eq!(
            request_start(b"AB / HTT"),
            Peek::Other,
            "too short a method"
        );
        assert_eq!(request_start(b"ABCDEFGH"), Peek::Other, "too long a method");
    }

    /// What a retiring worker relies on: with the low-water mark raised on its connection, a
    /// request that arrives does not make the socket readable (its event loop never reads
    /// it); lowered, it does at once.
    #[test]
    fn a_raised_low_water_mark_keeps_a_request_from_waking_its_reader() {
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (accepted, _) = l.accept().unwrap();
        let keys = vec![("k".to_string(), ListenAddr::Tcp(l.local_addr().unwrap()))];
        let mut held = grab(std::process::id(), &keys, &HashSet::new());
        assert_eq!(held.len(), 1);
        held[0].pause();
        assert!(held[0].paused);
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let readable = |ms: i64| {
            let mut fds = [PollFd::new(&accepted, PollFlags::IN)];
            let wait = Timespec {
                tv_sec: ms / 1000,
                tv_nsec: (ms % 1000) * 1_000_000,
            };
            poll(&mut fds, Some(&wait)).unwrap() > 0
        };
        // Waiting for nothing to happen: 200 ms in which the request has long arrived.
        assert!(!readable(200), "the request woke the worker's poll");
        assert_eq!(peek(&accepted), Peek::Request, "it waits in the socket");
        held[0].resume();
        assert!(readable(5000), "lowered again, the request is readable");
    }
}
