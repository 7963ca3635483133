//! Every environment variable herd reads or sets, by name, and what a process's environment says
//! about its role: the one place these names are spelled.

use herd_wire::Codec;

use crate::Error;

/// The descriptor number of a herd worker's channel (herd sets it; default 3).
pub const HERD_CHANNEL_FD: &str = "HERD_CHANNEL_FD";
/// The codec on a herd worker's channel: `binary` or `json`.
pub const HERD_CHANNEL_CODEC: &str = "HERD_CHANNEL_CODEC";
/// The worker's id, as the primary counts them (1, 2, ...).
pub const HERD_WORKER_ID: &str = "HERD_WORKER_ID";
/// The primary's process id.
pub const HERD_PRIMARY_PID: &str = "HERD_PRIMARY_PID";
/// The descriptor number of a Node worker's cache channel: a second socketpair beside Node's IPC
/// channel, speaking herd's binary protocol, for the `herd-node` addon (large values arrive as
/// sealed memfds, which Node's own channel cannot carry).
pub const HERD_CACHE_FD: &str = "HERD_CACHE_FD";
/// Where a Node worker finds the `herd-node` addon (set by `herd run` when the addon lies beside
/// its binary; `off` makes the package use its json path).
pub const HERD_NODE_ADDON: &str = "HERD_NODE_ADDON";
/// The worker's slot in a supervised service (0..N-1), stable across restarts and reloads.
pub const HERD_WORKER_SLOT: &str = "HERD_WORKER_SLOT";
/// How many listening sockets a worker got from [`crate::ClusterBuilder::listener`], at 3, 4, ...
/// ([`crate::Worker::listeners`] takes them).
pub const HERD_LISTEN_FDS: &str = "HERD_LISTEN_FDS";
/// PM2's name for the slot index (0..N-1), which apps read to run a job in one instance only.
pub const NODE_APP_INSTANCE: &str = "NODE_APP_INSTANCE";
/// herd's log filter (tracing's `EnvFilter` syntax).
pub const HERD_LOG: &str = "HERD_LOG";
/// Node's: the descriptor of the IPC channel a Node child inherits.
pub const NODE_CHANNEL_FD: &str = "NODE_CHANNEL_FD";
/// Node's: the channel's serialization (`json` or `advanced`).
pub const NODE_CHANNEL_SERIALIZATION_MODE: &str = "NODE_CHANNEL_SERIALIZATION_MODE";
/// Node's: set by a cluster primary on its workers (`cluster.isWorker`).
pub const NODE_UNIQUE_ID: &str = "NODE_UNIQUE_ID";
/// systemd's socket activation: how many listening sockets start at descriptor 3.
pub const LISTEN_FDS: &str = "LISTEN_FDS";
/// systemd's socket activation: the process the sockets are meant for.
pub const LISTEN_PID: &str = "LISTEN_PID";
/// systemd's socket activation: the sockets' names, `:`-separated.
pub const LISTEN_FDNAMES: &str = "LISTEN_FDNAMES";

/// Which role this process was started in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// Not started by a primary: start a [`Cluster`](crate::Cluster).
    Primary,
    /// Started by a primary (herd's or Node's): connect with
    /// [`Worker::connect`](crate::Worker::connect).
    Worker,
}

/// This process's role, from its environment ([`HERD_CHANNEL_FD`], or Node's
/// [`NODE_CHANNEL_FD`]).
pub fn role() -> Role {
    if std::env::var_os(HERD_CHANNEL_FD).is_some() || std::env::var_os(NODE_CHANNEL_FD).is_some() {
        Role::Worker
    } else {
        Role::Primary
    }
}

/// Whether this process is a worker.
pub fn is_worker() -> bool {
    role() == Role::Worker
}

/// The channel a worker inherited, as its environment names it.
#[derive(Debug)]
pub(crate) struct Channel {
    pub(crate) fd: i32,
    pub(crate) codec: Codec,
    /// The id the primary gave this worker (0 when unknown: a Node primary).
    pub(crate) id: u64,
}

/// The number variable `k` holds (`v`), or an error naming both.
fn number(k: &str, v: &str) -> Result<i64, Error> {
    v.parse()
        .map_err(|_| Error::NotAWorker(format!("{k}={v:?} is not a number")))
}

/// The cache channel a Node worker inherited (see [`HERD_CACHE_FD`]), as its environment names
/// it.
#[derive(Debug)]
pub(crate) struct CacheChannel {
    pub(crate) fd: i32,
    /// The primary it belongs to ([`HERD_PRIMARY_PID`]; 0 if not set).
    pub(crate) primary: i64,
    /// The id the primary gave this worker (0 when not set).
    pub(crate) id: u64,
}

/// Reads the inherited cache channel's descriptor, primary and worker id from the environment.
pub(crate) fn cache_channel() -> Result<CacheChannel, Error> {
    let var = |k: &str| std::env::var(k).ok();
    let fd = var(HERD_CACHE_FD).ok_or_else(|| {
        Error::NotAWorker(format!(
            "{HERD_CACHE_FD} is not set (not a Node worker of a herd primary with a cache)"
        ))
    })?;
    let fd = number(HERD_CACHE_FD, &fd)?;
    let fd = i32::try_from(fd)
        .map_err(|_| Error::NotAWorker(format!("{HERD_CACHE_FD}={fd} is out of range")))?;
    let primary = number(HERD_PRIMARY_PID, &var(HERD_PRIMARY_PID).unwrap_or_default())?;
    let id = match var(HERD_WORKER_ID) {
        Some(v) => number(HERD_WORKER_ID, &v)? as u64,
        None => 0,
    };
    Ok(CacheChannel { fd, primary, id })
}

/// Reads the inherited channel's descriptor, codec and worker id from the environment.
pub(crate) fn channel() -> Result<Channel, Error> {
    let var = |k: &str| std::env::var(k).ok();
    let num = |k: &str, v: String| number(k, &v);
    if let Some(fd) = var(HERD_CHANNEL_FD) {
        let fd = num(HERD_CHANNEL_FD, fd)? as i32;
        let codec = match var(HERD_CHANNEL_CODEC) {
            None => Codec::Binary,
            Some(c) => Codec::parse(&c)
                .ok_or_else(|| Error::NotAWorker(format!("unknown {HERD_CHANNEL_CODEC} {c:?}")))?,
        };
        let id = match var(HERD_WORKER_ID) {
            Some(v) => num(HERD_WORKER_ID, v)? as u64,
            None => 0,
        };
        return Ok(Channel { fd, codec, id });
    }
    if let Some(fd) = var(NODE_CHANNEL_FD) {
        let fd = num(NODE_CHANNEL_FD, fd)? as i32;
        match var(NODE_CHANNEL_SERIALIZATION_MODE).as_deref() {
            None | Some("json") => {}
            Some(other) => {
                return Err(Error::NotAWorker(format!(
                "Node's {other:?} serialization is not supported: fork with serialization: 'json'"
            )))
            }
        }
        return Ok(Channel {
            fd,
            codec: Codec::NodeJson,
            id: 0,
        });
    }
    Err(Error::NotAWorker(format!(
        "neither {HERD_CHANNEL_FD} nor {NODE_CHANNEL_FD} is set"
    )))
}
