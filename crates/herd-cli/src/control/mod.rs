//! The control socket: how `herd status`, `herd reload`, `herd scale` and `herd stop` reach a
//! running `herd run`. The messages ([`proto`]), the server ([`server`]), the client
//! ([`client`]) and the status table ([`format`](mod@format)).
//!
//! The socket lives in a directory only its owner can enter: `$XDG_RUNTIME_DIR/herd/NAME.sock`,
//! else `/tmp/herd-UID/NAME.sock` (see [`default_path`]).

use std::path::PathBuf;

pub mod client;
pub mod format;
pub mod proto;
pub mod server;

pub use format::format_status;
pub use proto::{parse_request, Answer, Listening, Reply, Report, Request, MAX_WORKERS};

/// Where the control socket of the herd named `name` lives by default.
pub fn default_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("herd"),
        None => std::env::temp_dir().join(format!("herd-{}", rustix::process::geteuid().as_raw())),
    };
    dir.join(format!("{name}.sock"))
}
