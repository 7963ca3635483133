//! Node.js interop, the one home of what herd does differently for Node children: the variables
//! Node's `child_process` and `cluster` read, and herd as the cluster primary Node workers
//! expect (`cluster`: the protocol's messages; `handles`: the primary's listening sockets;
//! `session`: one worker's side; `balance`: connections handed out by round-robin; `rescue`:
//! a retiring worker's connections kept alive; `envelope`: Node's `NODE_HANDLE` around a
//! message that carries a descriptor, both ways; `gate` and `handle_channel`: one handle in
//! flight, Node's rule, for every sender of handles to a worker: the user's, the cluster's
//! answers, round-robin's `newconn`). It sits on the channel (`ipc`, transport only), never
//! the other way round (`.ci/module-cycles`). The json codec's envelopes (`NODE_HERD_*`) are
//! the `herd-wire` crate's `json` module; the worker-side client is `js/herd.js`.

pub(crate) mod balance;
pub(crate) mod cluster;
pub(crate) mod envelope;
pub(crate) mod gate;
pub(crate) mod handle_channel;
pub(crate) mod handles;
pub(crate) mod preload;
pub(crate) mod rescue;
pub(crate) mod session;

use herd_wire::Codec;
use tokio::process::Command;

use crate::env;
use crate::ids::WorkerId;

/// Sets what a child on `codec` reads about its channel at `channel_fd`: Node's variables for a
/// json channel (Node then opens its IPC channel there, and `process.send` works), with
/// `NODE_UNIQUE_ID` = the worker's id, so Node runs it as a cluster worker of herd's
/// (`cluster.isWorker`, `cluster.worker.id`; its servers ask herd for their sockets). For a
/// binary channel they are removed, so a herd primary that is itself a Node child does not
/// make its workers think they are.
pub(crate) fn child_env(cmd: &mut Command, codec: Codec, channel_fd: i32, worker: WorkerId) {
    if codec == Codec::NodeJson {
        cmd.env(env::NODE_CHANNEL_FD, channel_fd.to_string())
            .env(env::NODE_CHANNEL_SERIALIZATION_MODE, "json")
            .env(env::NODE_UNIQUE_ID, worker.0.to_string());
    } else {
        cmd.env_remove(env::NODE_UNIQUE_ID)
            .env_remove(env::NODE_CHANNEL_FD)
            .env_remove(env::NODE_CHANNEL_SERIALIZATION_MODE);
    }
}
