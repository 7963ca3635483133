//! Node's envelope for a message that carries a handle, both ways:
//! `{"cmd":"NODE_HANDLE","type":T,"msg":VALUE}` with one descriptor on the line's first byte
//! (Node's `lib/internal/child_process.js`: `handleConversion`, `NODE_HANDLE`). Sending, the
//! `type` is read from the socket itself, as libuv will see it (`uv__handle_type`): a
//! descriptor libuv cannot wrap aborts the Node process, so it is refused before anything is
//! written. Receiving, the envelope is opened and the user gets `msg` and the descriptor.

use std::os::fd::AsFd;

use bytes::{BufMut, Bytes, BytesMut};
use rustix::net::{sockopt, AddressFamily, SocketType};
use serde::Deserialize;
use serde_json::value::RawValue;

/// The line that acknowledges a received handle (Node's sender waits for it).
pub(crate) const ACK: &[u8] = b"{\"cmd\":\"NODE_HANDLE_ACK\"}";

/// Why a descriptor cannot be sent to a Node worker. Nothing was written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NodeHandleError {
    /// Node takes exactly one handle per message.
    #[error("a Node worker takes exactly one descriptor per message, not {0}")]
    Count(usize),
    /// Too many handles already wait for the worker's acknowledgement.
    #[error("{0} handles already wait for the Node worker's acknowledgement")]
    Busy(usize),
    /// Not a socket libuv can wrap (a file, a memfd, a pipe, a Unix datagram socket...): Node
    /// would abort (`UV_UNKNOWN_HANDLE`).
    #[error("a Node worker can only take a TCP, Unix stream or UDP socket, not this descriptor ({0}); Node would abort on it")]
    NotASocket(&'static str),
}

/// Which of Node's `handleConversion` entries a socket arrives as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HandleType {
    /// A listening TCP or Unix stream socket: Node's `net.Server` (it listens on it).
    Server,
    /// Any other TCP or Unix stream socket: Node's `net.Socket`.
    Socket,
    /// A UDP socket: Node's `dgram.Socket`, which needs `dgramType`.
    Dgram {
        /// IPv6 (`udp6`) rather than IPv4 (`udp4`).
        v6: bool,
    },
}

impl HandleType {
    /// The socket's type as libuv will guess it on the other side, or why Node cannot take it.
    pub(crate) fn of(fd: impl AsFd) -> Result<HandleType, NodeHandleError> {
        let fd = fd.as_fd();
        let ty =
            sockopt::socket_type(fd).map_err(|_| NodeHandleError::NotASocket("not a socket"))?;
        let family = sockopt::socket_domain(fd)
            .map_err(|_| NodeHandleError::NotASocket("no address family"))?;
        let inet = family == AddressFamily::INET || family == AddressFamily::INET6;
        match ty {
            SocketType::STREAM if inet || family == AddressFamily::UNIX => {
                if sockopt::socket_acceptconn(fd).unwrap_or(false) {
                    Ok(HandleType::Server)
                } else {
                    Ok(HandleType::Socket)
                }
            }
            SocketType::DGRAM if inet => Ok(HandleType::Dgram {
                v6: family == AddressFamily::INET6,
            }),
            SocketType::DGRAM => Err(NodeHandleError::NotASocket("a non-IP datagram socket")),
            _ => Err(NodeHandleError::NotASocket("an unsupported socket type")),
        }
    }

    /// Node's name for it.
    pub(crate) fn name(self) -> &'static str {
        match self {
            HandleType::Server => "net.Server",
            HandleType::Socket => "net.Socket",
            HandleType::Dgram { .. } => "dgram.Socket",
        }
    }
}

/// The envelope around a user's JSON value `msg`, as Node's `process.send(msg, handle)` writes
/// it (`dgramType` is the field Node's `dgram.Socket` conversion adds). `msg` is one line of
/// JSON already (the json codec's encoding), so the envelope is one too.
pub(crate) fn wrap(msg: &[u8], ty: HandleType) -> Bytes {
    let mut line = BytesMut::with_capacity(msg.len() + 64);
    line.put_slice(b"{\"cmd\":\"NODE_HANDLE\",\"type\":\"");
    line.put_slice(ty.name().as_bytes());
    line.put_slice(b"\",");
    if let HandleType::Dgram { v6 } = ty {
        let t: &[u8] = if v6 { b"udp6" } else { b"udp4" };
        line.put_slice(b"\"dgramType\":\"");
        line.put_slice(t);
        line.put_slice(b"\",");
    }
    line.put_slice(b"\"msg\":");
    line.put_slice(msg);
    line.put_slice(b"}");
    line.freeze()
}

/// A `NODE_HANDLE` line herd cannot open.
#[derive(Debug, thiserror::Error)]
pub(crate) enum EnvelopeError {
    /// Not a JSON object with `cmd:"NODE_HANDLE"`, a string `type` and a `msg`.
    #[error("NODE_HANDLE message is malformed: {0}")]
    Malformed(String),
    /// Node sends exactly one handle per message.
    #[error("NODE_HANDLE message came with {0} descriptors, not 1")]
    Fds(usize),
}

/// An opened envelope.
#[derive(Debug)]
pub(crate) struct Opened {
    /// Node's type name (`net.Socket`, `net.Server`, `net.Native`, `dgram.Socket`...).
    pub(crate) ty: String,
    /// The inner message, a slice of the line.
    pub(crate) msg: Bytes,
    /// The inner message is one of Node's own (`cmd` starting `NODE_`), not for user code.
    pub(crate) internal: bool,
}

/// Opens a received `NODE_HANDLE` line that came with `nfds` descriptors.
pub(crate) fn open(line: &Bytes, nfds: usize) -> Result<Opened, EnvelopeError> {
    #[derive(Deserialize)]
    struct Envelope<'a> {
        cmd: String,
        #[serde(rename = "type")]
        ty: String,
        #[serde(borrow)]
        msg: &'a RawValue,
    }
    #[derive(Deserialize)]
    struct Inner {
        cmd: Option<serde_json::Value>,
    }
    if nfds != 1 {
        return Err(EnvelopeError::Fds(nfds));
    }
    let env: Envelope<'_> =
        serde_json::from_slice(line).map_err(|e| EnvelopeError::Malformed(e.to_string()))?;
    if env.cmd != "NODE_HANDLE" {
        return Err(EnvelopeError::Malformed("cmd is not NODE_HANDLE".into()));
    }
    let internal = serde_json::from_str::<Inner>(env.msg.get())
        .ok()
        .and_then(|i| i.cmd)
        .and_then(|c| c.as_str().map(|c| c.len() > 5 && c.starts_with("NODE_")))
        .unwrap_or(false);
    Ok(Opened {
        ty: env.ty,
        msg: line.slice_ref(env.msg.get().as_bytes()),
        internal,
    })
}

#[cfg(test)]
mod tests {
    use std::os::fd::OwnedFd;

    use rustix::net::{socket, socketpair, SocketFlags};
    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn envelopes_are_what_node_writes() {
        let v: Value = serde_json::from_slice(&wrap(b"{\"a\":1}", HandleType::Socket)).unwrap();
        assert_eq!(
            v,
            json!({"cmd":"NODE_HANDLE","type":"net.Socket","msg":{"a":1}})
        );
        let v: Value = serde_json::from_slice(&wrap(b"null", HandleType::Server)).unwrap();
        assert_eq!(
            v,
            json!({"cmd":"NODE_HANDLE","type":"net.Server","msg":null})
        );
        let v: Value =
            serde_json::from_slice(&wrap(b"\"x\"", HandleType::Dgram { v6: true })).unwrap();
        assert_eq!(
            v,
            json!({"cmd":"NODE_HANDLE","type":"dgram.Socket","dgramType":"udp6","msg":"x"})
        );
    }

    #[test]
    fn received_envelopes_open_to_their_message() {
        let line = Bytes::from_static(
            br#"{"cmd":"NODE_HANDLE","type":"net.Socket","msg":{"hi":1},"key":"x"}"#,
        );
        let o = open(&line, 1).unwrap();
        assert_eq!(
            (o.ty.as_str(), &o.msg[..], o.internal),
            ("net.Socket", &br#"{"hi":1}"#[..], false)
        );
        let line = Bytes::from_static(
            br#"{"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER"}}"#,
        );
        assert!(open(&line, 1).unwrap().internal);
        assert!(matches!(open(&line, 0), Err(EnvelopeError::Fds(0))));
        assert!(matches!(open(&line, 2), Err(EnvelopeError::Fds(2))));
        for bad in [
            &br#"{"cmd":"NODE_HANDLE","type":"net.Socket"}"#[..],
            br#"{"cmd":"NODE_HANDLE","msg":1}"#,
            br#"{"cmd":"NODE_HANDLE","type":7,"msg":1}"#,
            br#"{"cmd":"NODE_CLUSTER","type":"net.Socket","msg":1}"#,
            br#"[1]"#,
            b"\xff",
        ] {
            assert!(open(&Bytes::copy_from_slice(bad), 1).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn sockets_are_typed_as_libuv_sees_them() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        assert_eq!(HandleType::of(&listener).unwrap(), HandleType::Server);
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert_eq!(HandleType::of(&stream).unwrap(), HandleType::Socket);
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(
            HandleType::of(&udp).unwrap(),
            HandleType::Dgram { v6: false }
        );
        let (a, _b) = socketpair(
            AddressFamily::UNIX,
            SocketType::STREAM,
            SocketFlags::CLOEXEC,
            None,
        )
        .unwrap();
        assert_eq!(HandleType::of(&a).unwrap(), HandleType::Socket);
        let unix_dgram: OwnedFd = socket(AddressFamily::UNIX, SocketType::DGRAM, None).unwrap();
        assert!(HandleType::of(&unix_dgram).is_err());
        let memfd = rustix::fs::memfd_create("herd-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        assert!(matches!(
            HandleType::of(&memfd),
            Err(NodeHandleError::NotASocket(_))
        ));
        let (r, _w) = rustix::pipe::pipe().unwrap();
        assert!(HandleType::of(&r).is_err());
    }
}
