//! Node.js interop, the one home of what herd does differently for Node children: the variables
//! Node's `child_process` and `cluster` read. The json codec's envelopes (`NODE_HERD_*`) are the
//! `herd-wire` crate's `json` module; the worker-side client is `js/herd.js`.

use herd_wire::Codec;
use tokio::process::Command;

use crate::env;

/// Sets what a child on `codec` reads about its channel at `channel_fd`: Node's variables for a
/// json channel (Node then opens its IPC channel there, and `process.send` works); for a binary
/// channel they are removed, so a herd primary that is itself a Node child does not make its
/// workers think they are.
pub(crate) fn child_env(cmd: &mut Command, codec: Codec, channel_fd: i32) {
    cmd.env_remove(env::NODE_UNIQUE_ID);
    if codec == Codec::NodeJson {
        cmd.env(env::NODE_CHANNEL_FD, channel_fd.to_string())
            .env(env::NODE_CHANNEL_SERIALIZATION_MODE, "json");
    } else {
        cmd.env_remove(env::NODE_CHANNEL_FD)
            .env_remove(env::NODE_CHANNEL_SERIALIZATION_MODE);
    }
}
