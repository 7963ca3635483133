//! The balancer with real channels and sockets: turns, refusals, deaths, room, retiring.
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;

use herd_wire::{Codec, Limits, Receiver};
use serde_json::Value;

use super::*;

const W1: WorkerId = WorkerId(1);
const W2: WorkerId = WorkerId(2);

/// A worker's channel: herd's side (with its handle gate) on one end, the worker's receiver on
/// the other (the two unused halves are kept open).
struct Fake {
    chan: HandleChannel,
    rx: Receiver,
    _unused: (Receiver, herd_wire::Sender),
}

fn fake() -> Fake {
    let (ours, theirs) = UnixStream::pair().unwrap();
    let (tx, our_rx) = herd_wire::channel(ours.into(), Codec::NodeJson, Limits::default()).unwrap();
    let (their_tx, rx) =
        herd_wire::channel(theirs.into(), Codec::NodeJson, Limits::default()).unwrap();
    Fake {
        chan: HandleChannel::new(crate::ipc::Peer::new(
            tx,
            Duration::from_secs(5),
            Duration::from_secs(5),
        )),
        rx,
        _unused: (our_rx, their_tx),
    }
}

/// The next `newconn` the worker gets: its seq, and the connection's peer port.
async fn newconn(w: &mut Fake) -> (u64, u16) {
    let frame = tokio::time::timeout(Duration::from_secs(5), w.rx.recv())
        .await
        .expect("a newconn in time")
        .unwrap()
        .unwrap();
    let line: Value = serde_json::from_slice(&frame.payload).unwrap();
    assert_eq!(line["msg"]["act"], "newconn", "{line}");
    assert!(line["msg"]["key"].is_string(), "{line}");
    let fd = frame.fds.into_iter().next().expect("the connection");
    let port = match listen::local_addr(&fd).unwrap() {
        ListenAddr::Tcp(_) => {
            let peer = rustix::net::getpeername(&fd).unwrap().unwrap();
            std::net::SocketAddr::try_from(peer).unwrap().port()
        }
        other => panic!("{other:?}"),
    };
    (line["msg"]["seq"].as_u64().unwrap(), port)
}

/// Nothing reaches the worker within a moment.
async fn nothing(w: &mut Fake) {
    let got = tokio::time::timeout(Duration::from_millis(200), w.rx.recv()).await;
    assert!(got.is_err(), "unexpected frame: {got:?}");
}

fn listener() -> (OwnedFd, std::net::SocketAddr) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.set_nonblocking(true).unwrap();
    let addr = l.local_addr().unwrap();
    (OwnedFd::from(l), addr)
}

fn client(addr: std::net::SocketAddr) -> (TcpStream, u16) {
    let c = TcpStream::connect(addr).unwrap();
    let port = c.local_addr().unwrap().port();
    (c, port)
}

#[tokio::test]
async fn turns_refusals_and_deaths() {
    let b = Balancer::new(Balance::RoundRobin);
    let (l, addr) = listener();
    let (mut w1, mut w2) = (fake(), fake());
    b.join("k", &l, W1, &w1.chan).unwrap();
    b.join("k", &l, W2, &w2.chan).unwrap();
    // In turn.
    let (_c1, p1) = client(addr);
    let (s1, got) = newconn(&mut w1).await;
    assert_eq!(got, p1);
    w1.chan.acked();
    b.answered(W1, s1, true);
    let (_c2, p2) = client(addr);
    let (s2, got) = newconn(&mut w2).await;
    assert_eq!(got, p2);
    // Worker 2 refuses it (at maxConnections): the same connection goes to worker 1.
    w2.chan.acked();
    b.answered(W2, s2, false);
    let (s3, got) = newconn(&mut w1).await;
    assert_eq!(got, p2, "the refused connection, handed on");
    assert!(s3 > s2, "a new seq");
    w1.chan.acked();
    // Worker 1 dies before answering: back to worker 2, which refused it once; it is
    // offered again a moment later (every worker refused it).
    b.gone(W1);
    let (s4, got) = newconn(&mut w2).await;
    assert_eq!(got, p2);
    assert_eq!(b.in_flight(W2), 1);
    w2.chan.acked();
    b.answered(W2, s4, true);
    assert_eq!(b.in_flight(W2), 0);
}

/// A worker's answer names only the seq: with servers on two keys, each connection has a
/// seq of its own, and answering one never touches the other.
#[tokio::test]
async fn seqs_are_unique_across_a_workers_servers() {
    let b = Balancer::new(Balance::RoundRobin);
    let ((la, addr_a), (lb, addr_b)) = (listener(), listener());
    let mut w1 = fake();
    b.join("a", &la, W1, &w1.chan).unwrap();
    b.join("b", &lb, W1, &w1.chan).unwrap();
    let (_ca, pa) = client(addr_a);
    let (sa, got) = newconn(&mut w1).await;
    assert_eq!(got, pa);
    w1.chan.acked();
    let (_cb, pb) = client(addr_b);
    let (sb, got) = newconn(&mut w1).await;
    assert_eq!(got, pb);
    w1.chan.acked();
    assert_ne!(sa, sb);
    b.answered(W1, sa, true);
    assert_eq!(b.in_flight(W1), 1, "b's connection is still in flight");
    // The refused one (b's) is offered again, and it is b's connection, not a's.
    b.answered(W1, sb, false);
    let (again, got) = newconn(&mut w1).await;
    assert_eq!(got, pb);
    assert!(again > sb);
}

#[tokio::test]
async fn a_worker_without_room_gets_nothing_until_it_answers() {
    let b = Balancer::new(Balance::RoundRobin);
    let (l, addr) = listener();
    let mut w1 = fake();
    b.join("k", &l, W1, &w1.chan).unwrap();
    let clients: Vec<_> = (0..WINDOW + 2).map(|_| client(addr)).collect();
    let mut seqs = Vec::new();
    for _ in 0..WINDOW {
        let (seq, _) = newconn(&mut w1).await;
        w1.chan.acked();
        seqs.push(seq);
    }
    nothing(&mut w1).await;
    assert_eq!(b.in_flight(W1), WINDOW);
    b.answered(W1, seqs[0], true);
    let (_, port) = newconn(&mut w1).await;
    assert_eq!(port, clients[WINDOW].1, "in order");
}

#[tokio::test]
async fn a_retiring_worker_gets_no_connection_and_its_answers_are_awaited() {
    let b = Balancer::new(Balance::RoundRobin);
    let (l, addr) = listener();
    let (mut w1, mut w2) = (fake(), fake());
    b.join("k", &l, W1, &w1.chan).unwrap();
    b.join("k", &l, W2, &w2.chan).unwrap();
    let _c = client(addr);
    let (s1, _) = newconn(&mut w1).await;
    let keys = b.retire(W1);
    assert_eq!(keys.len(), 1);
    assert_eq!(keys[0].1, ListenAddr::Tcp(addr));
    for _ in 0..3 {
        let _c = client(addr);
        let (s, _) = newconn(&mut w2).await;
        w2.chan.acked();
        b.answered(W2, s, true);
    }
    nothing(&mut w1).await;
    // Waiting for worker 1's answer ends when it comes.
    let waiting = {
        let b = Arc::new(b);
        let b2 = b.clone();
        let t = tokio::spawn(async move { b2.answered_all(W1, Duration::from_secs(10)).await });
        tokio::task::yield_now().await;
        assert!(!t.is_finished());
        b.answered(W1, s1, true);
        t
    };
    tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("answered_all returns once answered")
        .unwrap();
}

/// A client of `addr` from the loopback address `from` (any of 127/8), its request sent.
fn client_from(from: std::net::Ipv4Addr, addr: std::net::SocketAddr, request: &[u8]) -> TcpStream {
    use std::io::Write;
    let s = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::STREAM,
        None,
    )
    .unwrap();
    rustix::net::bind(&s, &std::net::SocketAddr::from((from, 0))).unwrap();
    rustix::net::connect(&s, &addr).unwrap();
    let mut c = TcpStream::from(s);
    c.write_all(request).unwrap();
    c
}

#[tokio::test]
async fn sticky_keeps_a_client_on_its_worker_and_a_full_one_holds_up_no_other() {
    let b = Balancer::new(Balance::Sticky);
    let (l, addr) = listener();
    let (mut w1, mut w2) = (fake(), fake());
    b.join("k", &l, W1, &w1.chan).unwrap();
    b.join("k", &l, W2, &w2.chan).unwrap();
    // Two client addresses, one of each worker's.
    let ip = |n: u8| std::net::Ipv4Addr::new(127, 0, 0, n);
    let of = |w: WorkerId| {
        (2..250)
            .map(ip)
            .find(|a| sticky::rendezvous(sticky::hash(*a), [W1, W2].into_iter()) == Some(w))
            .unwrap()
    };
    let (a, c) = (of(W1), of(W2));
    let get = b"GET / HTTP/1.1\r\n\r\n";
    // W1's window fills with its client's connections, and one more waits for it.
    let mut keep = Vec::new();
    for _ in 0..=WINDOW {
        keep.push(client_from(a, addr, get));
    }
    let mut seqs = Vec::new();
    for _ in 0..WINDOW {
        seqs.push(newconn(&mut w1).await.0);
        w1.chan.acked();
    }
    nothing(&mut w2).await;
    // The other address's client is not held up behind it.
    keep.push(client_from(c, addr, get));
    newconn(&mut w2).await;
    w2.chan.acked();
    // W1 answers one: the waiting one goes to it, not to W2.
    b.answered(W1, seqs[0], true);
    newconn(&mut w1).await;
    w1.chan.acked();
    // A session's connections follow its first, whatever the address.
    keep.push(client_from(
        c,
        addr,
        b"GET /socket.io/?EIO=4&sid=abcdefghij HTTP/1.1\r\n\r\n",
    ));
    newconn(&mut w2).await;
    w2.chan.acked();
    keep.push(client_from(
        a,
        addr,
        b"GET /socket.io/?EIO=4&sid=abcdefghij HTTP/1.1\r\n\r\n",
    ));
    newconn(&mut w2).await;
    nothing(&mut w1).await;
}
