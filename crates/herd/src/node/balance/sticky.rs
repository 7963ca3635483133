//! Sticky balancing ([`Balance::Sticky`](super::Balance::Sticky)): every connection from one
//! client goes to one worker, with no code in the app's primary (socket.io's polling
//! transport sends each poll as a request of its own, which only the worker that holds the
//! session can answer). herd accepts as in round-robin, with `TCP_DEFER_ACCEPT` so the first
//! bytes are there, and reads (without taking) the first request line:
//! - a target carrying a socket.io / engine.io session id (`sid=...`) goes to the worker that
//!   holds that session: the one the first connection carrying it went to, remembered in
//!   [`Sessions`] (bounded; a worker's sessions are forgotten when it leaves). That holds
//!   across a reload, when the address's worker changes;
//! - anything else goes by the client's address (not its port): rendezvous hashing over the
//!   workers listening, so a worker leaving moves only its own clients.
//!
//! A connection whose worker has no room waits for it (another worker could not answer it);
//! one its worker refused, or whose worker is gone, goes to another as in round-robin.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::os::fd::AsFd;

use rustix::net::RecvFlags;

use crate::ids::WorkerId;

/// Sessions remembered per pool, at most (oldest forgotten first).
pub(crate) const MAX_SESSIONS: usize = 65_536;

/// The longest session id herd keeps (engine.io's are 20 characters).
const MAX_SID: usize = 64;

/// Bytes of a connection's first request read to find its target.
const PEEK: usize = 2048;

/// Where a sticky connection belongs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Affinity {
    /// The session id its first request names, if any.
    pub(crate) sid: Option<String>,
    /// A hash of the client's address (its IP, not its port; 0 for a Unix socket's).
    pub(crate) addr: u64,
}

/// The session id in an HTTP request's first line (`GET /socket.io/?EIO=4&transport=polling&sid=X
/// HTTP/1.1`): the value of a `sid` query parameter, letters, digits, `-` and `_`, at most
/// [`MAX_SID`].
pub(crate) fn sid_of(head: &[u8]) -> Option<String> {
    let line = head.split(|b| *b == b'\n').next()?;
    let target = line.split(|b| *b == b' ').nth(1)?;
    let query = &target[target.iter().position(|b| *b == b'?')? + 1..];
    query.split(|b| *b == b'&').find_map(|pair| {
        let value = pair.strip_prefix(b"sid=")?;
        let ok = !value.is_empty()
            && value.len() <= MAX_SID
            && value
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_');
        ok.then(|| String::from_utf8_lossy(value).into_owned())
    })
}

pub(crate) fn hash(value: impl Hash) -> u64 {
    // Fixed keys: the same address picks the same worker in every herd of a fleet.
    std::hash::BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
        .hash_one(value)
}

/// Where a connection just accepted belongs: its first bytes (waiting already, as
/// `TCP_DEFER_ACCEPT` makes them) and its client's address.
pub(crate) fn affinity(conn: impl AsFd) -> Affinity {
    let fd = conn.as_fd();
    let addr = match rustix::net::getpeername(fd) {
        Ok(Some(peer)) => match std::net::SocketAddr::try_from(peer) {
            Ok(std::net::SocketAddr::V4(a)) => hash(a.ip()),
            Ok(std::net::SocketAddr::V6(a)) => match a.ip().to_ipv4_mapped() {
                Some(v4) => hash(v4),
                None => hash(a.ip()),
            },
            Err(_) => 0,
        },
        _ => 0,
    };
    let mut head = [0u8; PEEK];
    let sid = match rustix::net::recv(fd, &mut head, RecvFlags::PEEK | RecvFlags::DONTWAIT) {
        Ok((n, _)) if n > 0 => sid_of(&head[..n.min(PEEK)]),
        _ => None,
    };
    Affinity { sid, addr }
}

/// Of `workers`, the one `addr` goes to: the highest hash of (address, worker), so that a
/// worker leaving moves only the addresses that were its own.
pub(crate) fn rendezvous(addr: u64, workers: impl Iterator<Item = WorkerId>) -> Option<WorkerId> {
    workers.max_by_key(|w| hash((addr, w.0)))
}

/// Which worker holds each session seen, per pool, bounded by [`MAX_SESSIONS`].
#[derive(Default)]
pub(crate) struct Sessions {
    owner: HashMap<String, WorkerId>,
    /// Insertion order, for forgetting the oldest.
    order: VecDeque<String>,
}

impl Sessions {
    /// The worker that holds `sid`, if known.
    pub(crate) fn owner(&self, sid: &str) -> Option<WorkerId> {
        self.owner.get(sid).copied()
    }

    /// `sid` is held by `worker` (the first connection carrying it went there).
    pub(crate) fn learn(&mut self, sid: &str, worker: WorkerId) {
        if self.owner.contains_key(sid) {
            return;
        }
        while self.order.len() >= MAX_SESSIONS {
            if let Some(old) = self.order.pop_front() {
                self.owner.remove(&old);
            }
        }
        self.owner.insert(sid.to_string(), worker);
        self.order.push_back(sid.to_string());
    }

    /// `worker` left: its sessions are gone with it.
    pub(crate) fn forget(&mut self, worker: WorkerId) {
        self.owner.retain(|_, w| *w != worker);
        let owner = &self.owner;
        self.order.retain(|s| owner.contains_key(s));
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.owner.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_id_is_read_from_the_request_line_only() {
        let get = b"GET /socket.io/?EIO=4&transport=polling&t=abc&sid=Hk3_-a9ZxQ2LmN0pAAAB HTTP/1.1\r\nHost: x\r\n";
        assert_eq!(sid_of(get).as_deref(), Some("Hk3_-a9ZxQ2LmN0pAAAB"));
        assert_eq!(
            sid_of(b"GET /socket.io/?EIO=4&transport=polling HTTP/1.1\r\n"),
            None
        );
        assert_eq!(
            sid_of(b"GET /?xsid=1 HTTP/1.1\r\n"),
            None,
            "not a sid parameter"
        );
        assert_eq!(
            sid_of(b"GET / HTTP/1.1\r\nCookie: sid=abc\r\n"),
            None,
            "a header is not the target"
        );
        assert_eq!(sid_of(b"GET /?sid=a%20b HTTP/1.1\r\n"), None, "odd bytes");
        let long = format!("GET /?sid={} HTTP/1.1\r\n", "a".repeat(MAX_SID + 1));
        assert_eq!(sid_of(long.as_bytes()), None, "too long");
        assert_eq!(
            sid_of(b"POST /?sid=abc"),
            Some("abc".into()),
            "cut short after it"
        );
        assert_eq!(sid_of(b"\x16\x03\x01 binary"), None);
    }

    #[test]
    fn an_address_keeps_its_worker_and_only_a_leaving_workers_addresses_move() {
        let ws = [WorkerId(1), WorkerId(2), WorkerId(3)];
        let before: Vec<_> = (0..300u64)
            .map(|a| rendezvous(a, ws.iter().copied()).unwrap())
            .collect();
        let again: Vec<_> = (0..300u64)
            .map(|a| rendezvous(a, ws.iter().copied()).unwrap())
            .collect();
        assert_eq!(before, again);
        for w in ws {
            let n = before.iter().filter(|x| **x == w).count();
            assert!((60..=140).contains(&n), "{w}: {n} of 300");
        }
        // Worker 2 leaves: only its addresses move.
        for (a, was) in before.iter().enumerate() {
            let now = rendezvous(a as u64, [WorkerId(1), WorkerId(3)].into_iter()).unwrap();
            if *was != WorkerId(2) {
                assert_eq!(now, *was);
            }
        }
        assert_eq!(rendezvous(7, std::iter::empty()), None);
    }

    #[test]
    fn sessions_are_bounded_and_go_with_their_worker() {
        let mut s = Sessions::default();
        s.learn("a", WorkerId(1));
        s.learn("a", WorkerId(2));
        assert_eq!(s.owner("a"), Some(WorkerId(1)), "the first worker keeps it");
        for i in 0..MAX_SESSIONS + 10 {
            s.learn(&i.to_string(), WorkerId(2));
        }
        assert_eq!(s.len(), MAX_SESSIONS);
        assert_eq!(s.owner("a"), None, "the oldest forgotten");
        s.learn("b", WorkerId(3));
        s.forget(WorkerId(2));
        assert_eq!(s.len(), 1);
        assert_eq!(s.owner("b"), Some(WorkerId(3)));
    }
}
