//! A retiring Node worker's connections, kept alive past its `server.close()`. Node (19 and
//! later) destroys a server's idle connections when it closes: keep-alive connections between
//! two requests, and connections accepted whose request is not read yet. Their clients then
//! see a reset, or a close just as they send the next request. So before herd asks a worker to
//! disconnect, it takes a copy of each client connection the worker holds on the cluster's
//! sockets (`pidfd_getfd`, the worker being herd's child). A socket lives while any process
//! holds it, so one the worker destroys stays open in herd, with no reset and no FIN:
//! - let go while the worker lives (Node destroyed it idle): handed to another worker when
//!   it carries a request (Node's `newconn`), at once or as soon as one arrives, within
//!   [`PARK`]; closed if none does (an idle connection closed, as Node meant to).
//! - still held when the worker exits: handed on if a request waits on it (its previous one
//!   was answered: clients do not pipeline); closed otherwise, as the worker's exit would have.
//! - closed by the client: closed.
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

/// One connection herd holds a copy of.
pub(crate) struct Held {
    fd: OwnedFd,
    ino: u64,
    key: String,
}

/// What a held connection has, read without taking it.
enum Peek {
    /// Bytes of a request wait.
    Data,
    /// Nothing waits.
    Idle,
    /// The client closed it, or it failed.
    Gone,
}

fn peek(fd: impl AsFd) -> Peek {
    let mut byte = [0u8; 1];
    match rustix::net::recv(fd, &mut byte, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((n, _)) if n > 0 => Peek::Data,
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

/// Watches the retiring worker's descriptor table until it exits, and hands on or closes each
/// held connection as the module says.
pub(crate) async fn watch(
    balancer: Arc<Balancer>,
    worker: WorkerId,
    pid: u32,
    mut held: Vec<Held>,
    mut exit: watch::Receiver<Option<ExitStatus>>,
) {
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !held.is_empty() {
        let exited = tokio::select! {
            _ = tick.tick() => exit.borrow().is_some(),
            changed = exit.changed() => changed.is_err() || exit.borrow().is_some(),
        };
        if exited {
            for h in held.drain(..) {
                match peek(&h.fd) {
                    Peek::Data => balancer.rehome(&h.key, h.fd, worker),
                    // Idle, or in the middle of a request the worker took with it: closed,
                    // as its exit would have.
                    Peek::Idle | Peek::Gone => {}
                }
            }
            return;
        }
        let Ok(Ok(table)) = tokio::task::spawn_blocking(move || sockets(pid)).await else {
            continue;
        };
        let open: HashSet<u64> = table.into_iter().map(|(_, ino)| ino).collect();
        let (kept, released): (Vec<Held>, Vec<Held>) =
            held.into_iter().partition(|h| open.contains(&h.ino));
        held = kept;
        for h in released {
            match peek(&h.fd) {
                Peek::Data => balancer.rehome(&h.key, h.fd, worker),
                Peek::Idle => {
                    tokio::spawn(park(balancer.clone(), worker, h));
                }
                Peek::Gone => {}
            }
        }
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
    if matches!(ready, Ok(Ok(_))) && matches!(peek(&fd), Peek::Data) {
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
        assert!(matches!(peek(&h.fd), Peek::Idle));
        client.write_all(b"GET / HTTP/1.1\r\n\r\n").unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while !matches!(peek(&h.fd), Peek::Data) {
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
}
