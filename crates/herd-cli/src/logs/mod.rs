//! The workers' output beyond herd's own stdout and stderr: a bounded ring of recent lines per
//! worker that `herd logs` reads and follows over the control socket ([`ring`]; the client is
//! `control::logs`), and log files with rotation ([`files`]).

pub mod files;
pub mod ring;

pub use ring::{Entry, Filter, Follower, Logs, Next};
