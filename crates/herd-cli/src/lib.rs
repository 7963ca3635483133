//! The `herd` command's library: its settings ([`config`]: flags and a TOML file, validated),
//! its control protocol ([`control`]: the socket `herd status`, `reload`, `scale` and `stop`
//! talk over), `herd run` itself ([`run`]), the demo ([`demo`]), and its exit codes and errors
//! ([`exit`]); everything it prints goes through the non-blocking [`sink`]. The binary (`main.rs`) is a thin layer over this: arguments, dispatch, exit codes.

#![deny(missing_docs)]

pub mod config;
pub mod control;
pub mod demo;
pub mod exit;
pub mod logs;
pub mod metrics;
pub mod progress;
pub mod run;
pub mod sink;
pub mod which;

pub use exit::{Error, Exit, Result};
