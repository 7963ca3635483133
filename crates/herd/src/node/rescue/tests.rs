//! The rescue's system calls on this process's own sockets.

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
    let grabbed = grab(std::process::id(), &me(), &keys, &HashSet::new());
    assert!(grabbed.complete, "every descriptor looked at");
    assert!(
        grabbed.listening,
        "the listener on the key shows, and is not taken"
    );
    let held = grabbed.held;
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
        grab(std::process::id(), &me(), &[], &HashSet::new())
            .held
            .is_empty(),
        "no keys, nothing taken"
    );
    let ino = rustix::fs::fstat(&h.fd).unwrap().st_ino;
    let skip: HashSet<u64> = [ino].into();
    let again = grab(std::process::id(), &me(), &keys, &skip);
    assert!(
        again.held.is_empty(),
        "a connection still herd's to give is not taken"
    );
}

#[test]
fn a_request_line_is_told_from_other_bytes() {
    assert_eq!(request_start(b"GET / HT"), Peek::Request);
    assert_eq!(request_start(b"OPTIONS *"), Peek::Request);
    assert_eq!(request_start(b"GET http:"), Peek::Request, "absolute form");
    assert_eq!(request_start(b"CONNECT a"), Peek::Request);
    assert_eq!(request_start(b"GE"), Peek::Partial);
    assert_eq!(request_start(b"GET "), Peek::Partial);
    assert_eq!(
        request_start(b"INFO star"),
        Peek::Other,
        "text, not a target"
    );
    assert_eq!(
        request_start(b"OK"),
        Peek::Partial,
        "decided by its next read"
    );
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
    let mut held = grab(std::process::id(), &me(), &keys, &HashSet::new()).held;
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

/// A pidfd of this process, which stands in for the worker.
fn me() -> OwnedFd {
    let pid = rustix::process::getpid();
    rustix::process::pidfd_open(pid, PidfdFlags::empty()).unwrap()
}
