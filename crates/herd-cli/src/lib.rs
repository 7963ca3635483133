//! The `herd` command's library: its settings (flags and a TOML file, validated), its control
//! protocol (the socket `herd status`, `reload`, `scale` and `stop` talk over), and the demo.
//! The binary (`main.rs`) is a thin layer over this and the `herd` library.

#![deny(missing_docs)]

pub mod config;
pub mod control;
pub mod demo;
pub mod progress;
