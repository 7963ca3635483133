//! Node's cluster protocol as herd's primary speaks it (Node's shared handles, `SCHED_NONE`):
//! reading the `{"cmd":"NODE_CLUSTER",...}` lines a Node worker sends, and writing the answers,
//! byte for byte what Node's own primary (`lib/internal/cluster/primary.js`) would send.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use bytes::Bytes;
use serde_json::{json, Map, Value};

/// The longest `NODE_CLUSTER` line read (Node's own are a few hundred bytes).
pub(crate) const MAX_LINE: usize = 64 * 1024;

/// libuv's error codes (negative errno on Linux), as Node's worker expects them in `errno`.
pub(crate) mod uv {
    /// Bad file descriptor.
    pub(crate) const EBADF: i64 = -9;
    /// Resource temporarily unavailable.
    pub(crate) const EAGAIN: i64 = -11;
    /// Invalid argument.
    pub(crate) const EINVAL: i64 = -22;
    /// Too many open files.
    pub(crate) const EMFILE: i64 = -24;
    /// Socket operation on non-socket.
    pub(crate) const ENOTSOCK: i64 = -88;
}

/// A `NODE_CLUSTER` line herd cannot read: the worker broke Node's protocol.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClusterError {
    /// The line is not a JSON object.
    #[error("NODE_CLUSTER message is not a JSON object")]
    NotAnObject,
    /// The line is longer than [`MAX_LINE`].
    #[error("NODE_CLUSTER message of {0} bytes exceeds {MAX_LINE}")]
    TooLong(usize),
    /// A field is missing or of the wrong type.
    #[error("NODE_CLUSTER message: {0}")]
    Field(&'static str),
    /// A `NODE_HANDLE` the worker sent cannot be opened.
    #[error(transparent)]
    Handle(#[from] super::envelope::EnvelopeError),
}

/// What a Node worker asks its primary, one `Kind::Node` line.
#[derive(Debug, PartialEq)]
pub(crate) enum FromWorker {
    /// `act:"online"`: the worker's cluster code runs.
    Online,
    /// `act:"queryServer"`: a `listen` or `bind`, waiting for its socket.
    Query(Query),
    /// `act:"listening"`: the server listens (`port` is the real port).
    Listening(Query),
    /// `act:"close"`: a server closed its handle (`key`: Node's key for it).
    Close {
        /// The key of the handle closed, when the line names one.
        key: Option<String>,
    },
    /// The answer to a `newconn`: `ack` is our seq, `accepted` false when the worker refused
    /// the connection (its server is closed, or at `maxConnections`).
    Accepted {
        /// The seq of the `newconn` answered.
        ack: u64,
        /// The worker took the connection.
        accepted: bool,
    },
    /// `act:"exitedAfterDisconnect"`: the worker disconnects by itself and waits for the ack.
    ExitedAfterDisconnect {
        /// The seq to acknowledge.
        seq: u64,
    },
    /// `NODE_HANDLE_ACK`: the last handle sent arrived.
    HandleAck,
    /// `NODE_HANDLE_NACK`: the last handle sent was lost on the way.
    HandleNack,
    /// An answer to one of ours, or an act this version does not know.
    Other,
}

/// A `queryServer` (or `listening`) message: what to listen on.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Query {
    /// The worker's `seq`, which the answer acknowledges.
    pub(crate) seq: u64,
    /// The fields Node builds its key from, as JSON values (`None` when absent: `undefined`).
    /// (`address` null, `port` and `addressType` -1: a `listen(handle)`, see
    /// [`Query::is_listen_on_handle`].)
    pub(crate) address: Option<Value>,
    pub(crate) port: Option<Value>,
    pub(crate) address_type: Option<Value>,
    pub(crate) fd: Option<Value>,
    pub(crate) index: Option<Value>,
    /// libuv's flags (bit 0: IPv6 only; for UDP bit 2: reuse address).
    pub(crate) flags: u64,
}

/// What a query asks for, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// A TCP listener; `None` is Node's default: `::` (dual stack) or else `0.0.0.0`.
    Tcp {
        ip: Option<IpAddr>,
        port: u16,
        v6only: bool,
    },
    /// A Unix stream socket at a path.
    Unix(PathBuf),
    /// A UDP socket.
    Udp { addr: SocketAddr, v6only: bool },
    /// A descriptor the worker inherited from herd (`listen({fd})`).
    Fd(i32),
}

/// Node's `String(value)` of a JSON value, as its template strings build keys.
fn js_string(v: &Option<Value>) -> String {
    match v {
        None => "undefined".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

impl Query {
    /// Node's key for the socket: `address:port:addressType:fd:index`.
    pub(crate) fn key(&self) -> String {
        format!(
            "{}:{}:{}:{}:{}",
            js_string(&self.address),
            js_string(&self.port),
            js_string(&self.address_type),
            js_string(&self.fd),
            js_string(&self.index)
        )
    }

    /// The key without the port: the same for a `queryServer` on port 0 and the `listening`
    /// that follows it with the real port.
    pub(crate) fn portless_key(&self) -> String {
        format!(
            "{}:{}:{}:{}",
            js_string(&self.address),
            js_string(&self.address_type),
            js_string(&self.fd),
            js_string(&self.index)
        )
    }

    /// A worker's `server.listen(handle)` on a TCP handle it holds (as Node's `net.Server`
    /// conversion does with a socket it received): Node still asks the primary, with nothing
    /// that says which socket (`address` null, `port` -1, `addressType` -1, no `fd`).
    pub(crate) fn is_listen_on_handle(&self) -> bool {
        let minus_one = |v: &Option<Value>| v.as_ref().and_then(Value::as_i64) == Some(-1);
        matches!(self.address, None | Some(Value::Null))
            && minus_one(&self.port)
            && minus_one(&self.address_type)
            && matches!(self.fd, None | Some(Value::Null))
    }

    /// What the query asks for, or the libuv error Node's primary would answer.
    pub(crate) fn target(&self) -> Result<Target, i64> {
        // As Node's primary: a descriptor when one is given (dgram says -1 for none).
        if let Some(fd) = self.fd.as_ref().filter(|v| !v.is_null()) {
            let fd = fd.as_i64().ok_or(uv::EINVAL)?;
            if fd >= 0 {
                return i32::try_from(fd).map(Target::Fd).map_err(|_| uv::EBADF);
            }
        }
        let address = match &self.address {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if s.is_empty() => None,
            Some(Value::String(s)) => Some(s.as_str()),
            Some(_) => return Err(uv::EINVAL),
        };
        let ip = || -> Result<Option<IpAddr>, i64> {
            address
                .map(|a| a.parse::<IpAddr>().map_err(|_| uv::EINVAL))
                .transpose()
        };
        let port = || -> Result<u16, i64> {
            self.port
                .as_ref()
                .and_then(Value::as_u64)
                .and_then(|p| u16::try_from(p).ok())
                .ok_or(uv::EINVAL)
        };
        let v6only = self.flags & 1 != 0;
        match self.address_type.as_ref() {
            Some(Value::Number(n)) if n.as_i64() == Some(4) || n.as_i64() == Some(6) => {
                Ok(Target::Tcp {
                    ip: ip()?,
                    port: port()?,
                    v6only,
                })
            }
            Some(Value::Number(n)) if n.as_i64() == Some(-1) => {
                let path = address.ok_or(uv::EINVAL)?;
                if path.contains('\0') || path.len() > 107 {
                    return Err(uv::EINVAL);
                }
                Ok(Target::Unix(path.into()))
            }
            Some(Value::String(t)) if t == "udp4" || t == "udp6" => {
                let default: IpAddr = if t == "udp4" {
                    [0, 0, 0, 0].into()
                } else {
                    [0u16; 8].into()
                };
                let addr = SocketAddr::new(ip()?.unwrap_or(default), port()?);
                Ok(Target::Udp { addr, v6only })
            }
            _ => Err(uv::EINVAL),
        }
    }
}

/// Reads one of Node's internal lines (a `Kind::Node` frame's payload).
pub(crate) fn parse(line: &[u8]) -> Result<FromWorker, ClusterError> {
    if line.len() > MAX_LINE {
        return Err(ClusterError::TooLong(line.len()));
    }
    let Ok(Value::Object(mut m)) = serde_json::from_slice::<Value>(line) else {
        return Err(ClusterError::NotAnObject);
    };
    match m.get("cmd").and_then(Value::as_str) {
        Some("NODE_HANDLE_ACK") => return Ok(FromWorker::HandleAck),
        Some("NODE_HANDLE_NACK") => return Ok(FromWorker::HandleNack),
        Some("NODE_CLUSTER") => {}
        _ => return Err(ClusterError::Field("cmd is not NODE_CLUSTER")),
    }
    let seq = |m: &Map<String, Value>| {
        m.get("seq")
            .and_then(Value::as_u64)
            .ok_or(ClusterError::Field("seq is not an unsigned integer"))
    };
    let act = match m.get("act") {
        None => {
            return Ok(
                match (m.get("ack").and_then(Value::as_u64), m.get("accepted")) {
                    (Some(ack), Some(Value::Bool(accepted))) => FromWorker::Accepted {
                        ack,
                        accepted: *accepted,
                    },
                    _ => FromWorker::Other,
                },
            )
        }
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(ClusterError::Field("act is not a string")),
    };
    let query = |m: &mut Map<String, Value>| -> Result<Query, ClusterError> {
        Ok(Query {
            seq: seq(m)?,
            address: m.remove("address"),
            port: m.remove("port"),
            address_type: m.remove("addressType"),
            fd: m.remove("fd"),
            index: m.remove("index"),
            flags: m.get("flags").and_then(Value::as_u64).unwrap_or(0),
        })
    };
    Ok(match act.as_str() {
        "online" => FromWorker::Online,
        "queryServer" => FromWorker::Query(query(&mut m)?),
        "listening" => FromWorker::Listening(query(&mut m)?),
        "close" => FromWorker::Close {
            key: m.get("key").and_then(Value::as_str).map(str::to_string),
        },
        "exitedAfterDisconnect" => FromWorker::ExitedAfterDisconnect { seq: seq(&m)? },
        _ => FromWorker::Other,
    })
}

fn line(v: &Value) -> Bytes {
    // Compact serde_json escapes every control character: one line, no raw newline.
    Bytes::from(v.to_string())
}

/// The answer to a query that carries its socket: Node's `NODE_HANDLE` wrapper around the
/// cluster reply (the descriptor goes with the line's first byte). `udp` names the handle
/// `dgram.Native`, as Node does for a UDP socket.
pub(crate) fn handle_answer(key: &str, ack: u64, seq: u64, udp: bool) -> Bytes {
    let kind = if udp { "dgram.Native" } else { "net.Native" };
    line(&json!({
        "cmd": "NODE_HANDLE",
        "type": kind,
        "msg": {"cmd": "NODE_CLUSTER", "errno": 0, "key": key, "ack": ack, "data": null, "seq": seq},
    }))
}

/// The answer to a query that herd serves by round-robin (Node's `RoundRobinHandle`): no
/// handle; the worker's server believes it listens, and `sockname` is what its `address()`
/// says (`None` for a Unix socket, as Node sends).
pub(crate) fn round_robin_answer(key: &str, ack: u64, seq: u64, sockname: Option<Value>) -> Bytes {
    let mut msg = json!({"cmd": "NODE_CLUSTER", "errno": 0, "key": key, "ack": ack, "data": null, "seq": seq});
    if let Some(sockname) = sockname {
        msg["sockname"] = sockname;
    }
    line(&msg)
}

/// A connection for the worker's round-robin server `key`, Node's `newconn`: the connection's
/// descriptor goes with the line's first byte; the worker answers `{ack: seq, accepted}`.
pub(crate) fn newconn(key: &str, seq: u64) -> Bytes {
    line(&json!({
        "cmd": "NODE_HANDLE",
        "type": "net.Native",
        "msg": {"cmd": "NODE_CLUSTER", "act": "newconn", "key": key, "seq": seq},
    }))
}

/// The `seq` of a [`newconn`] line, or `None` for any other line.
pub(crate) fn newconn_seq(line: &[u8]) -> Option<u64> {
    let v: Value = serde_json::from_slice(line.trim_ascii()).ok()?;
    let ours = v["cmd"] == "NODE_HANDLE"
        && v["type"] == "net.Native"
        && v["msg"]["cmd"] == "NODE_CLUSTER"
        && v["msg"]["act"] == "newconn";
    ours.then(|| v["msg"]["seq"].as_u64())?
}

/// What Node's `getsockname` gives for a TCP address (`sockname` in a round-robin answer).
pub(crate) fn sockname(addr: std::net::SocketAddr) -> Value {
    let family = if addr.is_ipv4() { "IPv4" } else { "IPv6" };
    json!({"address": addr.ip().to_string(), "family": family, "port": addr.port()})
}

/// The answer to a query that failed: a libuv error code and no handle.
pub(crate) fn error_answer(key: &str, ack: u64, seq: u64, errno: i64) -> Bytes {
    line(
        &json!({"cmd": "NODE_CLUSTER", "errno": errno, "key": key, "ack": ack, "data": null, "seq": seq}),
    )
}

/// A bare acknowledgement (of `exitedAfterDisconnect`).
pub(crate) fn ack(ack: u64, seq: u64) -> Bytes {
    line(&json!({"cmd": "NODE_CLUSTER", "ack": ack, "seq": seq}))
}

/// Asks the worker to disconnect: it closes its servers, lets its connections finish, then
/// closes the channel.
pub(crate) fn disconnect(seq: u64) -> Bytes {
    line(&json!({"cmd": "NODE_CLUSTER", "act": "disconnect", "seq": seq}))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(line: &str) -> Query {
        match parse(line.as_bytes()).unwrap() {
            FromWorker::Query(q) => q,
            other => panic!("{other:?}"),
        }
    }

    /// The lines node v20 sends for `listen(8000)`, `listen(0, '127.0.0.1')`,
    /// `listen({fd: 3})`, a Unix path and a UDP bind.
    #[test]
    fn queries_parse_into_node_keys_and_targets() {
        let q = query(
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":8000,"addressType":4,"backlog":511,"seq":1}"#,
        );
        assert_eq!(q.seq, 1);
        assert_eq!(q.key(), "null:8000:4:undefined:0");
        assert_eq!(
            q.target(),
            Ok(Target::Tcp {
                ip: None,
                port: 8000,
                v6only: false
            })
        );
        let q = query(
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","index":1,"data":null,"address":"127.0.0.1","port":0,"addressType":4,"flags":0,"seq":2}"#,
        );
        assert_eq!(q.key(), "127.0.0.1:0:4:undefined:1");
        assert_eq!(q.portless_key(), "127.0.0.1:4:undefined:1");
        assert_eq!(
            q.target(),
            Ok(Target::Tcp {
                ip: Some([127, 0, 0, 1].into()),
                port: 0,
                v6only: false
            })
        );
        let q = query(
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":null,"addressType":null,"fd":3,"seq":3}"#,
        );
        assert_eq!(q.key(), "null:null:null:3:0");
        assert_eq!(q.target(), Ok(Target::Fd(3)));
        let q = query(
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"address":"/tmp/a.sock","port":-1,"addressType":-1,"seq":4}"#,
        );
        assert_eq!(q.target(), Ok(Target::Unix("/tmp/a.sock".into())));
        let q = query(
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"address":"::","port":53,"addressType":"udp6","fd":-1,"flags":1,"seq":5}"#,
        );
        assert_eq!(
            q.target(),
            Ok(Target::Udp {
                addr: "[::]:53".parse().unwrap(),
                v6only: true
            })
        );
    }

    #[test]
    fn absurd_queries_get_errno_and_broken_lines_are_errors() {
        for bad in [
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","address":"example.com","port":80,"addressType":4,"seq":1}"#,
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","port":70000,"addressType":4,"seq":1}"#,
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","port":-5,"addressType":6,"seq":1}"#,
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","port":80,"addressType":"sctp","seq":1}"#,
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","port":80,"address":[1],"addressType":4,"seq":1}"#,
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","address":null,"port":-1,"addressType":-1,"seq":1}"#,
        ] {
            assert_eq!(query(bad).target(), Err(uv::EINVAL), "{bad}");
        }
        let q = query(r#"{"cmd":"NODE_CLUSTER","act":"queryServer","fd":1e12,"seq":1}"#);
        assert_eq!(q.target(), Err(uv::EINVAL), "not an integer");
        let q = query(r#"{"cmd":"NODE_CLUSTER","act":"queryServer","fd":99999999999,"seq":1}"#);
        assert_eq!(q.target(), Err(uv::EBADF));
        for broken in [
            "[1,2]",
            "{\"cmd\":\"NODE_CLUSTER\",\"act\":\"queryServer\"}",
            "{\"cmd\":\"NODE_CLUSTER\",\"act\":\"queryServer\",\"seq\":-1}",
            "{\"cmd\":\"NODE_CLUSTER\",\"act\":7}",
            "{\"cmd\":\"NODE_CLUSTERX\"}",
            "{\"cmd\":\"NODE_CLUSTER\",\"act\":\"exitedAfterDisconnect\",\"seq\":\"x\"}",
            "not json",
        ] {
            assert!(parse(broken.as_bytes()).is_err(), "{broken}");
        }
        let long = format!(
            "{{\"cmd\":\"NODE_CLUSTER\",\"pad\":\"{}\"}}",
            "x".repeat(MAX_LINE)
        );
        assert!(matches!(
            parse(long.as_bytes()),
            Err(ClusterError::TooLong(_))
        ));
        // Unknown acts and answers are tolerated (a newer Node).
        for fine in [
            r#"{"cmd":"NODE_CLUSTER","act":"online","seq":0}"#,
            r#"{"cmd":"NODE_CLUSTER","act":"somethingNew","seq":9}"#,
            r#"{"cmd":"NODE_CLUSTER","ack":3,"accepted":true,"seq":9}"#,
        ] {
            assert!(parse(fine.as_bytes()).is_ok(), "{fine}");
        }
        assert_eq!(
            parse(br#"{"cmd":"NODE_HANDLE_ACK"}"#).unwrap(),
            FromWorker::HandleAck
        );
        assert_eq!(
            parse(br#"{"cmd":"NODE_CLUSTER","ack":3,"accepted":false,"seq":9}"#).unwrap(),
            FromWorker::Accepted {
                ack: 3,
                accepted: false
            }
        );
        assert_eq!(
            parse(br#"{"cmd":"NODE_CLUSTER","act":"close","key":"k:1","seq":4}"#).unwrap(),
            FromWorker::Close {
                key: Some("k:1".into())
            }
        );
    }

    /// node v20's query for `server.listen(handle)` in a cluster worker (what its `net.Server`
    /// handle conversion does with a TCP socket it received).
    #[test]
    fn listen_on_a_handle_is_recognised() {
        let q = query(
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"data":null,"address":null,"port":-1,"addressType":-1,"seq":2}"#,
        );
        assert!(q.is_listen_on_handle());
        assert_eq!(q.target(), Err(uv::EINVAL), "nothing says which socket");
        let q = query(
            r#"{"cmd":"NODE_CLUSTER","act":"queryServer","index":0,"address":"/tmp/a.sock","port":-1,"addressType":-1,"seq":4}"#,
        );
        assert!(!q.is_listen_on_handle());
    }

    proptest::proptest! {
        /// Whatever a worker sends, reading it and answering it never panics.
        #[test]
        fn anything_parses_or_is_refused(
            bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..256),
            fields in proptest::collection::vec(
                (0usize..8, proptest::prelude::any::<i64>(), ".{0,12}"),
                0..8,
            ),
        ) {
            let _ = parse(&bytes);
            let names = ["act", "seq", "address", "port", "addressType", "fd", "index", "flags"];
            let mut m = serde_json::Map::new();
            m.insert("cmd".into(), json!("NODE_CLUSTER"));
            m.insert("act".into(), json!("queryServer"));
            for (i, (name, n, text)) in fields.into_iter().enumerate() {
                let v = if i % 2 == 0 { json!(n) } else { json!(text) };
                m.insert(names[name].into(), v);
            }
            if let Ok(FromWorker::Query(q)) = parse(Value::Object(m).to_string().as_bytes()) {
                let _ = q.target();
                let _ = error_answer(&q.key(), q.seq, 1, uv::EINVAL);
            }
        }
    }

    #[test]
    fn answers_are_what_node_sends() {
        let v: Value = serde_json::from_slice(&handle_answer("k\n:1", 4, 7, false)).unwrap();
        assert_eq!(
            v,
            json!({"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","errno":0,"key":"k\n:1","ack":4,"data":null,"seq":7}})
        );
        assert!(!handle_answer("k\n:1", 4, 7, false).contains(&b'\n'));
        let v: Value = serde_json::from_slice(&handle_answer("k", 1, 2, true)).unwrap();
        assert_eq!(v["type"], "dgram.Native");
        let v: Value = serde_json::from_slice(&error_answer("k", 1, 2, -98)).unwrap();
        assert_eq!(
            v,
            json!({"cmd":"NODE_CLUSTER","errno":-98,"key":"k","ack":1,"data":null,"seq":2})
        );
        let v: Value = serde_json::from_slice(&newconn("k", 8)).unwrap();
        assert_eq!(
            v,
            json!({"cmd":"NODE_HANDLE","type":"net.Native","msg":{"cmd":"NODE_CLUSTER","act":"newconn","key":"k","seq":8}})
        );
        let addr = "127.0.0.1:80".parse().unwrap();
        let v: Value =
            serde_json::from_slice(&round_robin_answer("k", 1, 2, Some(sockname(addr)))).unwrap();
        assert_eq!(
            v,
            json!({"cmd":"NODE_CLUSTER","errno":0,"key":"k","ack":1,"data":null,"seq":2,
                   "sockname":{"address":"127.0.0.1","family":"IPv4","port":80}})
        );
        let v: Value = serde_json::from_slice(&disconnect(5)).unwrap();
        assert_eq!(v, json!({"cmd":"NODE_CLUSTER","act":"disconnect","seq":5}));
        let v: Value = serde_json::from_slice(&ack(3, 6)).unwrap();
        assert_eq!(v, json!({"cmd":"NODE_CLUSTER","ack":3,"seq":6}));
    }

    #[test]
    fn a_newconn_line_gives_its_seq_and_no_other_line_does() {
        assert_eq!(newconn_seq(&newconn("k", 7)), Some(7));
        assert_eq!(newconn_seq(&error_answer("k", 1, 2, -98)), None);
        assert_eq!(
            newconn_seq(b"{\"msg\":{\"act\":\"newconn\"}}\n"),
            None,
            "no seq"
        );
        assert_eq!(newconn_seq(b"not json"), None);
    }
}
