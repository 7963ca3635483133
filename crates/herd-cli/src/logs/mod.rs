//! The workers' output beyond herd's own stdout and stderr: a bounded ring of recent lines per
//! worker that `herd logs` reads and follows over the control socket ([`ring`]), and the
//! `herd logs` client that prints them ([`client`]).

pub mod client;
pub mod ring;

pub use ring::{Entry, Filter, Follower, Logs, Next};
