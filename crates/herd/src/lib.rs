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
//! Modules, one concern each:
//!
//! | module | owns |
//! |---|---|
//! | [`primary`] | the [`Cluster`]: its builder, dispatcher, one supervisor per worker, spawning, [`WorkerHandle`], [`Event`]s |
//! | [`worker`] | the worker side: [`Worker`], its reader task, the listeners it inherits |
//! | `ipc` | both sides' channel: [`Peer`] (sending, requests and replies), [`Message`], [`Request`], [`Incoming`], control notices, the handshake |
//! | [`service`] | supervision: a pure state machine (restarts, reloads, scaling, stop) and the task that runs it |
//! | [`cache`] | the host-shared cache: the hub (store, single-flight, warm-up, serving workers), the worker's replica, sources (files, Redis) |
//! | `node` | Node.js interop: what a Node child is told |
//! | [`env`](mod@env) | every environment variable's name, and this process's [`Role`] |
//! | [`ids`], [`error`] | [`WorkerId`], [`ExitStatus`]; [`Error`] |
//! | [`listen`] | binding listening sockets from addresses |
//! | `backoff` | the one exponential backoff |
//! | `report` | [`error::chain`]: an error with its sources on one line (used by [`error`] and [`cache`] alike) |
//! | `sys` | the only `unsafe`: what a child does between fork and exec, taking inherited descriptors, sealed memfds |
//!
//! The wire format lives in the `herd-wire` crate.

#![deny(missing_docs)]
#![deny(unsafe_code)]

mod backoff;
pub mod cache;
mod deadline;
pub mod env;
pub mod error;
pub mod ids;
mod ipc;
pub mod listen;
mod node;
pub mod primary;
mod procfs;
mod report;
pub mod service;
mod signal;
mod sys;
pub mod worker;

pub use env::{is_worker, role, Role};
pub use error::Error;
pub use herd_wire::WireError;
pub use herd_wire::{Codec, Format, Limits};
pub use ids::{ExitStatus, WorkerId};
pub use ipc::{Incoming, Message, Peer, Request};
pub use node::balance::Balance;
pub use node::envelope::NodeHandleError;
pub use node::rescue::Rescue;
pub use primary::config::StopBy;
pub use primary::spawn::ForkOptions;
pub use primary::{
    Cluster, ClusterBuilder, Event, OutputStream, Serving, WorkerHandle, MAX_OUTPUT_LINE,
};
pub use signal::{Signal, UnknownSignal};
pub use sys::peer_uid;
pub use worker::{Worker, WorkerOptions};

/// The README's code, compiled as a doctest so it cannot drift from the API.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;

/// docs/library.md's code, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/library.md")]
struct LibraryDoctests;

/// docs/node.md's code, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/node.md")]
struct NodeDoctests;

/// docs/cli.md's code, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../../docs/cli.md")]
struct CliDoctests;
