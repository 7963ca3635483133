//! herd: Node.js's `cluster` for Rust, and for any program that speaks Node's IPC.
//!
//! One **primary** process forks **workers** by re-executing a program (by default its own
//! binary), each with an `AF_UNIX` channel inherited at a known descriptor. Over it both sides
//! send typed messages (any serde type, or untyped JSON), make requests with replies and
//! deadlines, and pass file descriptors. The primary sees each worker's lifecycle as events like
//! Node's (fork, online, listening, message, disconnect, exit, error) and can disconnect or kill
//! it. Workers never outlive the primary: they read end-of-stream on the channel, and
//! `PR_SET_PDEATHSIG` backs that up.
//!
//! ```no_run
//! use herd::{Cluster, Event, Incoming, Role, Worker};
//!
//! #[tokio::main]
//! async fn main() -> Result<(), herd::Error> {
//!     match herd::role() {
//!         Role::Primary => {
//!             let mut cluster = Cluster::builder().workers(2).start().await?;
//!             while let Some(ev) = cluster.next_event().await {
//!                 match ev {
//!                     Event::Online { worker } => {
//!                         if let Some(w) = cluster.worker(worker).await {
//!                             w.send("hi worker").await?;
//!                         }
//!                     }
//!                     Event::Message { worker, message } => {
//!                         println!("{worker}: {}", message.decode::<String>()?);
//!                     }
//!                     _ => {}
//!                 }
//!             }
//!         }
//!         Role::Worker => {
//!             let mut w = Worker::connect().await?;
//!             while let Some(Incoming::Message(m)) = w.recv().await? {
//!                 w.send(&format!("got {}", m.decode::<String>()?)).await?;
//!             }
//!         }
//!     }
//!     Ok(())
//! }
//! ```
//!
//! Modules: [`primary`] (the cluster, its dispatcher and per-worker supervisors), [`worker`]
//! (the worker side), [`peer`] (sending, shared by both), [`message`] (what is received). The
//! wire format lives in the `herd-wire` crate; the only `unsafe` code is in `sys`.

#![deny(missing_docs)]

mod backoff;
pub mod cache;
pub mod env;
pub mod error;
pub mod ids;
pub mod listen;
pub mod message;
pub mod peer;
pub mod primary;
pub mod service;
mod sys;
pub mod worker;

pub use env::{is_worker, role, Role};
pub use error::Error;
pub use herd_wire::{Codec, Format, Limits};
pub use ids::{ExitStatus, WorkerId};
pub use message::{Incoming, Message, Request};
pub use peer::Peer;
pub use primary::{
    Cluster, ClusterBuilder, Event, ForkOptions, OutputStream, WorkerHandle, MAX_OUTPUT_LINE,
};
pub use rustix::process::Signal;
pub use worker::{Worker, WorkerOptions};

/// The README's code, compiled as a doctest so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
