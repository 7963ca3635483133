//! The `/metrics` endpoint: a small HTTP/1.1 server on the `--metrics` address that answers
//! `GET /metrics` with [`render`](super::render)'s text (`Connection: close`) and anything else
//! with 404. Each scrape asks for a status report through the same calls the control socket
//! makes, so it sees what `herd status` sees and never touches the service itself.
//!
//! Bounded like every peer of herd: at most [`MAX_SCRAPES`] connections at once and
//! [`MAX_PER_PEER`] from one address, a request head of at most
//! [`MAX_HEAD`] bytes that must arrive within [`HEAD_TIME`], [`ANSWER_TIME`] for the report
//! and [`WRITE_TIME`] for the write. An IPv6 peer's share is its /64's. Connections that send nothing cannot shut scrapers out: when every place
//! is taken (or its address's share), a newcomer takes the place of the oldest connection
//! (of that address) still waiting for its head; a scraper sends its head at once, so that is
//! never a scraper in practice. With no such connection, the newcomer is closed at once.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use crate::control::proto::{Answer, Reply, Request};
use crate::control::server::Call;

/// Scrapes served at once.
pub const MAX_SCRAPES: usize = 16;
/// Connections from one address at once.
pub const MAX_PER_PEER: usize = 4;
/// The longest request head read.
pub const MAX_HEAD: usize = 8 << 10;
/// How long a scraper has to send its request.
pub const HEAD_TIME: Duration = Duration::from_secs(2);
/// How long the report may take.
pub const ANSWER_TIME: Duration = Duration::from_secs(5);
/// How long the write of an answer may take (a scraper that does not read loses it).
pub const WRITE_TIME: Duration = Duration::from_secs(2);

/// One connection's place.
struct Place {
    peer: IpAddr,
    /// Fired to give the place to a newcomer; taken once the head has arrived.
    evict: Option<oneshot::Sender<()>>,
}

/// The connections being served, in arrival order.
#[derive(Default)]
struct Places {
    next: u64,
    taken: Vec<(u64, Place)>,
}

impl Places {
    /// A place for a connection from `peer` (evicting the oldest head-waiter if all are
    /// taken), with what evicts it; `None` if it gets none.
    fn take(&mut self, peer: IpAddr) -> Option<(u64, oneshot::Receiver<()>)> {
        let mine = self.taken.iter().filter(|(_, p)| p.peer == peer).count();
        let waiting = |p: &Place| p.evict.is_some();
        let oldest = if mine >= MAX_PER_PEER {
            // Its own share is full: its own oldest silent one goes.
            Some(
                self.taken
                    .iter()
                    .position(|(_, p)| p.peer == peer && waiting(p))?,
            )
        } else if self.taken.len() >= MAX_SCRAPES {
            Some(self.taken.iter().position(|(_, p)| waiting(p))?)
        } else {
            None
        };
        if let Some(i) = oldest {
            let (_, mut gone) = self.taken.remove(i);
            if let Some(evict) = gone.evict.take() {
                let _ = evict.send(());
            }
        }
        let (tx, rx) = oneshot::channel();
        self.next += 1;
        let place = Place {
            peer,
            evict: Some(tx),
        };
        self.taken.push((self.next, place));
        Some((self.next, rx))
    }

    /// The head of `id` arrived: it can no longer be evicted. False if it already was (its
    /// place went to a newcomer just as its head came).
    fn answering(&mut self, id: u64) -> bool {
        match self.taken.iter_mut().find(|(i, _)| *i == id) {
            Some((_, p)) => {
                p.evict = None;
                true
            }
            None => false,
        }
    }

    fn leave(&mut self, id: u64) {
        self.taken.retain(|(i, _)| *i != id);
    }
}

/// A place, left when dropped.
struct Held {
    places: Arc<Mutex<Places>>,
    id: u64,
}

impl Drop for Held {
    fn drop(&mut self) {
        if let Ok(mut p) = self.places.lock() {
            p.leave(self.id);
        }
    }
}

/// Serves scrapes on `listener` until herd ends, asking `calls` for each report.
pub async fn serve(listener: TcpListener, calls: mpsc::Sender<Call>) {
    let places = Arc::new(Mutex::new(Places::default()));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // Out of descriptors and the like: wait a little rather than spin.
                tracing::debug!(error = %e, "cannot accept a metrics connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let taken = places
            .lock()
            .ok()
            .and_then(|mut p| p.take(share(peer.ip())));
        let Some((id, evicted)) = taken else {
            continue; // Dropped: closed at once.
        };
        let held = Held {
            places: places.clone(),
            id,
        };
        let calls = calls.clone();
        tokio::spawn(async move {
            let _ = scrape(stream, calls, held, evicted).await;
        });
    }
}

/// The address a connection's share is counted by: an IPv4 address, or an IPv6 address's /64
/// (one host commonly holds a whole /64).
fn share(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let s = v6.segments();
                IpAddr::from([s[0], s[1], s[2], s[3], 0, 0, 0, 0])
            }
        },
        v4 => v4,
    }
}

/// What the request head asks for: whether it is `GET /metrics`; `None` if it is not HTTP.
fn wants_metrics(head: &[u8]) -> Option<bool> {
    let line = head.split(|&b| b == b'\r' || b == b'\n').next()?;
    let line = std::str::from_utf8(line).ok()?;
    let mut parts = line.split(' ');
    let (method, target, version) = (parts.next()?, parts.next()?, parts.next()?);
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    let path = target.split('?').next().unwrap_or("");
    Some((method == "GET" || method == "HEAD") && path == "/metrics")
}

async fn scrape(
    mut stream: TcpStream,
    calls: mpsc::Sender<Call>,
    held: Held,
    evicted: oneshot::Receiver<()>,
) -> std::io::Result<()> {
    let mut head = Vec::with_capacity(1024);
    let read = async {
        let mut buf = [0u8; 1024];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            let n = stream.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            head.extend_from_slice(&buf[..n.min(MAX_HEAD - head.len())]);
        }
        Ok::<_, std::io::Error>(())
    };
    tokio::select! {
        // A head that came in time wins over an eviction at the same moment.
        biased;
        r = tokio::time::timeout(HEAD_TIME, read) => if r.is_err() {
            return Ok(());
        },
        // Its place went to a newcomer.
        _ = evicted => return Ok(()),
    }
    if !held.places.lock().is_ok_and(|mut p| p.answering(held.id)) {
        return Ok(());
    }
    let head_only = head.starts_with(b"HEAD ");
    let (status, body) = match wants_metrics(&head) {
        None => ("400 Bad Request", "not an HTTP/1 request\n".to_string()),
        Some(false) => ("404 Not Found", "herd serves /metrics only\n".to_string()),
        Some(true) => match report(&calls).await {
            Some(text) => ("200 OK", text),
            None => (
                "503 Service Unavailable",
                "herd did not answer\n".to_string(),
            ),
        },
    };
    let kind = if status.starts_with("200") {
        "application/openmetrics-text; version=1.0.0; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let mut reply = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    // HEAD: the head a GET would have, without its body.
    if !head_only {
        reply.push_str(&body);
    }
    let _ = tokio::time::timeout(WRITE_TIME, stream.write_all(reply.as_bytes())).await;
    Ok(())
}

/// A fresh status report, rendered; `None` if herd did not answer in time.
async fn report(calls: &mpsc::Sender<Call>) -> Option<String> {
    let (tx, rx) = oneshot::channel();
    let call = Call {
        request: Request::Status,
        answer: tx,
    };
    let asked = async {
        calls.send(call).await.ok()?;
        match rx.await.ok()? {
            Answer::Ok(Reply::Status(r)) => Some(super::render(&r)),
            _ => None,
        }
    };
    tokio::time::timeout(ANSWER_TIME, asked)
        .await
        .ok()
        .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(
            wants_metrics(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(true)
        );
        assert_eq!(
            wants_metrics(b"GET /metrics?x=1 HTTP/1.0\r\n\r\n"),
            Some(true)
        );
        assert_eq!(wants_metrics(b"GET / HTTP/1.1\r\n\r\n"), Some(false));
        assert_eq!(
            wants_metrics(b"POST /metrics HTTP/1.1\r\n\r\n"),
            Some(false)
        );
        assert_eq!(wants_metrics(b"hello\r\n"), None);
        assert_eq!(wants_metrics(b"\xff\xfe"), None);
        assert_eq!(wants_metrics(b""), None);
    }

    #[test]
    fn an_ipv6_host_shares_its_64() {
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        assert_eq!(share(a), share(b));
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(share(mapped), ip(1));
    }

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([10, 0, 0, n])
    }

    /// Silent connections give their places to newcomers, oldest first; one answering keeps
    /// its place; one address gets at most MAX_PER_PEER.
    #[test]
    fn places_go_to_newcomers_and_one_address_takes_only_its_share() {
        let mut p = Places::default();
        let mut first = Vec::new();
        for n in 0..MAX_SCRAPES {
            first.push(p.take(ip(n as u8)).expect("room"));
        }
        assert!(p.answering(first[0].0));
        let (_, newcomer) = p.take(ip(100)).expect("a place taken from a silent one");
        // The oldest silent one (the second; the first is answering) was told to go.
        assert!(first[1].1.try_recv().is_ok());
        assert!(first[0].1.try_recv().is_err());
        assert!(!p.answering(first[1].0), "evicted: no longer answering");
        assert!(first[2].1.try_recv().is_err());
        assert_eq!(p.taken.len(), MAX_SCRAPES);
        let mut mine = vec![(0, newcomer)];
        for _ in 1..MAX_PER_PEER {
            mine.push(p.take(ip(100)).expect("within the share"));
        }
        // Past its share, an address's own oldest silent one goes, not another's.
        let before: Vec<u64> = p.taken.iter().map(|(i, _)| *i).collect();
        p.take(ip(100)).expect("in place of its own");
        assert!(mine[0].1.try_recv().is_ok());
        assert!(mine[1].1.try_recv().is_err());
        assert_eq!(p.taken.len(), before.len());
        // Every place answering: nobody to evict, the newcomer is turned away.
        let ids: Vec<u64> = p.taken.iter().map(|(i, _)| *i).collect();
        ids.into_iter().for_each(|i| assert!(p.answering(i)));
        assert!(p.take(ip(200)).is_none());
    }
}
