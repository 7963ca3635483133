//! Starting a worker process: the process-wide spawner thread (see [`spawner`] for why every
//! fork happens on it), the checks on descriptor numbers, and what a worker inherits — its
//! environment, its channel at a known number, the cluster's listeners and descriptors.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, OnceLock};

use herd_wire::{Codec, Kind};
use tokio::process::{Child, Command};
use tokio::sync::{mpsc, oneshot, watch};

use super::config::Config;
use super::event::{Event, OutputStream};
use super::handle::{WorkerHandle, WorkerShared};
use super::output::read_lines;
use super::reaper;
use super::supervisor::Supervisor;
use crate::cache::serve::forward_pushes;
use crate::ids::WorkerId;
use crate::ipc::{handshake, Peer};
use crate::{env, node, sys, Error};

/// One fork for the spawner thread.
struct SpawnJob {
    cmd: Command,
    runtime: tokio::runtime::Handle,
    reply: oneshot::Sender<std::io::Result<Child>>,
}

/// The process-wide spawner thread. `PR_SET_PDEATHSIG` fires when the *thread* that forked the
/// child exits, not the process; tokio's blocking threads come and go, so every fork happens on
/// this one thread, which never exits.
fn spawner() -> &'static Mutex<std::sync::mpsc::Sender<SpawnJob>> {
    static SPAWNER: OnceLock<Mutex<std::sync::mpsc::Sender<SpawnJob>>> = OnceLock::new();
    SPAWNER.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel::<SpawnJob>();
        std::thread::Builder::new()
            .name("herd-spawner".into())
            .spawn(move || {
                for mut job in rx {
                    let _guard = job.runtime.enter();
                    // Registered before any reaping pass can see it exit (see `reaper`).
                    let mut own = reaper::own();
                    let child = job.cmd.spawn();
                    if let Some(pid) = child.as_ref().ok().and_then(|c| c.id()) {
                        own.insert(pid);
                    }
                    drop(own);
                    let _ = job.reply.send(child);
                }
            })
            .expect("cannot start the herd-spawner thread");
        Mutex::new(tx)
    })
}

/// Spawns `cmd` on the spawner thread.
async fn spawn(cmd: Command) -> std::io::Result<Child> {
    let (tx, rx) = oneshot::channel();
    let job = SpawnJob {
        cmd,
        runtime: tokio::runtime::Handle::current(),
        reply: tx,
    };
    spawner()
        .lock()
        .map_err(|_| std::io::Error::other("spawner lock poisoned"))?
        .send(job)
        .map_err(|_| std::io::Error::other("spawner thread is gone"))?;
    rx.await
        .map_err(|_| std::io::Error::other("spawner dropped the job"))?
}

/// What one fork gets besides the cluster's own settings.
#[derive(Debug, Default)]
#[non_exhaustive]
pub struct ForkOptions {
    /// Descriptors this worker alone inherits, each at its number (a `SO_REUSEPORT` socket of
    /// its own, say).
    pub fds: Vec<(OwnedFd, i32)>,
    /// Environment variables for this worker alone (after the cluster's).
    pub env: Vec<(OsString, OsString)>,
}

/// Forks worker `id`: its channel, environment and descriptors; returns its handle and its
/// supervisor, for the caller to run. The hello (binary codec) is queued before the supervisor
/// runs, and the cache's pushes are subscribed before the worker can ask anything, so it misses
/// no invalidation.
pub(super) async fn fork(
    cfg: &Arc<Config>,
    id: WorkerId,
    opts: ForkOptions,
    events: mpsc::Sender<Event>,
) -> Result<(WorkerHandle, Supervisor), Error> {
    let (ours, theirs) = sys::socketpair().map_err(Error::Spawn)?;
    let mut cmd = Command::new(&cfg.program);
    cmd.args(&cfg.args)
        .envs(cfg.env.iter().map(|(k, v)| (k, v)))
        .envs(opts.env.iter().map(|(k, v)| (k, v)))
        .env(env::HERD_CHANNEL_FD, cfg.channel_fd.to_string())
        .env(env::HERD_CHANNEL_CODEC, cfg.codec.as_str())
        .env(env::HERD_WORKER_ID, id.0.to_string())
        .env(env::HERD_PRIMARY_PID, std::process::id().to_string())
        .process_group(0)
        .kill_on_drop(true);
    if cfg.listeners.is_empty() {
        cmd.env_remove(env::HERD_LISTEN_FDS);
    } else {
        cmd.env(env::HERD_LISTEN_FDS, cfg.listeners.len().to_string());
    }
    node::child_env(&mut cmd, cfg.codec, cfg.channel_fd, id);
    if let Some(preload) = &cfg.preload {
        // After the user's own options: the fork's, the cluster's, or this process's.
        let name = std::ffi::OsStr::new("NODE_OPTIONS");
        let user = (opts.env.iter().rev())
            .chain(cfg.env.iter().rev())
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .or_else(|| std::env::var_os(name));
        cmd.env(name, preload.node_options(user.as_deref()));
    }
    if cfg.capture_output {
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
    }
    // What the worker inherits besides its channel, by number: a Node worker's
    // `listen({fd})` asks herd for the same socket (Node's cluster protocol).
    let mut inherited: Vec<(i32, Arc<OwnedFd>)> = cfg
        .listeners
        .iter()
        .enumerate()
        .map(|(i, fd)| (sys::CHANNEL_FD + i as i32, fd.clone()))
        .collect();
    inherited.extend(cfg.inherit.iter().map(|(fd, at)| (*at, fd.clone())));
    inherited.extend(opts.fds.into_iter().map(|(fd, at)| (at, Arc::new(fd))));
    let mut fds: Vec<(&OwnedFd, i32)> = vec![(&theirs, cfg.channel_fd)];
    fds.extend(inherited.iter().map(|(at, fd)| (&**fd, *at)));
    // A Node worker of a cluster with a cache gets a second channel for the `herd-node` addon
    // (see `cache::channel`), at the first number above every other it inherits.
    let cache_channel = match (&cfg.cache, cfg.codec) {
        (Some(_), Codec::NodeJson) => Some(sys::socketpair().map_err(Error::Spawn)?),
        _ => None,
    };
    if let Some((_, theirs)) = &cache_channel {
        let at = fds.iter().map(|(_, at)| *at).max().unwrap_or(2) + 1;
        cmd.env(env::HERD_CACHE_FD, at.to_string());
        fds.push((theirs, at));
    } else {
        cmd.env_remove(env::HERD_CACHE_FD);
    }
    sys::prepare_child(&mut cmd, &fds, cfg.cgroup_procs.as_deref());
    let mut child = spawn(cmd).await.map_err(Error::Spawn)?;
    let output = cfg.capture_output.then(|| {
        let (tx, rx) = mpsc::channel(256);
        if let Some(out) = child.stdout.take() {
            tokio::spawn(read_lines(out, OutputStream::Stdout, tx.clone()));
        }
        if let Some(err) = child.stderr.take() {
            tokio::spawn(read_lines(err, OutputStream::Stderr, tx));
        }
        rx
    });
    drop(theirs);
    let cache_channel = cache_channel.map(|(ours, theirs)| {
        drop(theirs);
        ours
    });
    let pid = child.id().unwrap_or(0);
    let registered = reaper::Registered(pid);
    let (tx, rx) = herd_wire::channel(ours, cfg.codec, cfg.limits)?;
    let peer = Peer::new(tx, cfg.send_timeout, cfg.request_timeout);
    if cfg.codec == Codec::Binary {
        peer.send_value(Kind::Hello, &handshake::hello(id), Vec::new())
            .await?;
    }
    if let Some(hub) = &cfg.cache {
        tokio::spawn(forward_pushes(hub, peer.clone()));
    }
    let (cmd_tx, cmd_rx) = mpsc::channel(8);
    let (exit_tx, exit_rx) = watch::channel(None);
    if let (Some(hub), Some(fd)) = (&cfg.cache, cache_channel) {
        crate::cache::channel::serve(
            hub,
            id,
            fd,
            cfg.limits,
            cfg.request_timeout,
            exit_rx.clone(),
        )?;
    }
    // A Node worker's handles (the user's, the cluster's) share one gate.
    let handles = (cfg.codec == Codec::NodeJson)
        .then(|| node::handle_channel::HandleChannel::new(peer.clone()));
    let shared = Arc::new(WorkerShared {
        id,
        pid,
        peer: peer.clone(),
        handles: handles.clone(),
        cmds: cmd_tx,
        exit: exit_rx.clone(),
        grace: cfg.grace,
        dropped_internal: AtomicU64::new(0),
        listen_error: std::sync::Mutex::new(None),
    });
    let node = handles
        .clone()
        .map(|chan| node::session::Session::new(&cfg.node, id, pid, inherited, chan));
    let sup = Supervisor::new(
        shared.clone(),
        child,
        rx,
        cmd_rx,
        events,
        exit_tx,
        cfg.clone(),
        output,
        node,
    );
    registered.keep();
    Ok((WorkerHandle { inner: shared }, sup))
}
