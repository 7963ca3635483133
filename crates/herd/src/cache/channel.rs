//! The cache channel: a second socketpair a Node worker gets beside Node's own IPC channel,
//! speaking herd's binary protocol, so that the `herd-node` addon can use the replica
//! ([`Cache`]: local view, sequence-checked invalidations) and receive large values as sealed
//! memfds. Node's channel cannot carry them: Node treats any descriptor that arrives without
//! its own handle message as a protocol error.
//!
//! The primary ([`serve`]) sends its hello, subscribes the channel to the hub's invalidations at
//! once (so the worker misses none), and waits, for as long as the worker lives, for the
//! worker's hello: a Node program that never loads the addon costs one idle socket. After the
//! hello it serves cache calls only, at most [`MAX_CACHE_CALLS`](super::serve) in flight (past
//! that it stops reading). Anything else, a broken frame or a failed hello closes this channel
//! alone, with a warning; the worker's main channel and supervision are untouched.
//!
//! The worker ([`connect`]) takes the descriptor named by `HERD_CACHE_FD`, but only when its
//! parent is the primary named by `HERD_PRIMARY_PID` (a process the worker started inherits
//! the environment, and perhaps the descriptor, but must not use them), then shakes hands.

use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::time::Duration;

use herd_wire::{Codec, Kind, Limits, Receiver};
use tokio::sync::watch;

use super::replica::{Cache, LocalView};
use super::serve::{forward_pushes, CacheCalls};
use super::Hub;
use crate::ids::{ExitStatus, WorkerId};
use crate::ipc::control::Control;
use crate::ipc::endpoint::{Routed, SEND_TIMEOUT};
use crate::ipc::{handshake, Peer};
use crate::report::chain;
use crate::{env, sys, Error};

/// How long the worker waits for the primary's hello.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The primary's side of worker `worker`'s cache channel `fd`, until the channel closes or the
/// worker exits (`exit`). Spawns its tasks; never blocks the caller.
pub(crate) fn serve(
    hub: &Hub,
    worker: WorkerId,
    fd: OwnedFd,
    limits: Limits,
    request_timeout: Duration,
    mut exit: watch::Receiver<Option<ExitStatus>>,
) -> Result<(), Error> {
    let (tx, mut rx) = herd_wire::channel(fd, Codec::Binary, limits)?;
    let peer = Peer::new(tx, SEND_TIMEOUT, request_timeout);
    let (format, payload) = herd_wire::encode_value(Codec::Binary, &handshake::hello(worker))?;
    peer.send_soon(herd_wire::Frame::new(Kind::Hello, format, payload));
    tokio::spawn(forward_pushes(hub, peer.clone()));
    let hub = hub.clone();
    tokio::spawn(async move {
        let exited = async move {
            let _ = exit.wait_for(|s| s.is_some()).await;
        };
        tokio::select! {
            end = serve_calls(&hub, worker, &peer, &mut rx) => {
                if let Err(e) = end {
                    tracing::warn!(%worker, error = %chain(&e), "closing the worker's cache channel");
                }
            }
            () = exited => {}
        }
        peer.fail_all();
        peer.close();
    });
    Ok(())
}

/// Checks the worker's hello, then serves its cache calls until end-of-stream (`Ok`) or a
/// protocol error.
async fn serve_calls(
    hub: &Hub,
    worker: WorkerId,
    peer: &Peer,
    rx: &mut Receiver,
) -> Result<(), Error> {
    let Some(first) = rx.recv().await? else {
        return Ok(());
    };
    handshake::check(first, worker)?;
    let calls = CacheCalls::default();
    loop {
        // A permit first: while none is free the channel is not read (backpressure).
        let Some(permit) = calls.permit().await else {
            return Ok(());
        };
        let Some(frame) = rx.recv().await? else {
            return Ok(());
        };
        match peer.route(frame)? {
            Routed::Cache(request) => {
                CacheCalls::serve(Some(hub), worker, Codec::Binary, request, permit)
            }
            Routed::Handled | Routed::Control(Control::Unknown) => {}
            Routed::Incoming(_) | Routed::Control(_) | Routed::Node(_) => {
                return Err(Error::Protocol(
                    "the cache channel carries cache calls only".into(),
                ))
            }
        }
    }
}

/// The worker's side: the cache over the channel the primary left at `HERD_CACHE_FD`, with
/// shared values mapped copy-on-write (they are handed to JavaScript, which may write). Must be
/// called inside a tokio runtime; the channel's reader runs as a task on it.
///
/// Errors name the reason: not started by a herd primary with a cache, not the primary's own
/// child, the descriptor already taken, or a failed handshake.
pub async fn connect() -> Result<Cache, Error> {
    let var = |k: &str| std::env::var(k).ok();
    let fd_text = var(env::HERD_CACHE_FD).ok_or_else(|| {
        Error::NotAWorker(format!(
            "{} is not set (not a Node worker of a herd primary with a cache)",
            env::HERD_CACHE_FD
        ))
    })?;
    let number = |k: &str, v: &str| -> Result<i64, Error> {
        v.parse()
            .map_err(|_| Error::NotAWorker(format!("{k}={v:?} is not a number")))
    };
    let fd = number(env::HERD_CACHE_FD, &fd_text)?;
    let primary = number(
        env::HERD_PRIMARY_PID,
        &var(env::HERD_PRIMARY_PID).unwrap_or_default(),
    )?;
    let parent = rustix::process::getppid().map_or(0, |p| i64::from(p.as_raw_nonzero().get()));
    if parent != primary {
        return Err(Error::NotAWorker(format!(
            "this process's parent ({parent}) is not the herd primary ({primary}): the cache \
             channel belongs to the worker the primary started"
        )));
    }
    let id = WorkerId(
        var(env::HERD_WORKER_ID)
            .map(|v| number(env::HERD_WORKER_ID, &v))
            .transpose()?
            .unwrap_or(0) as u64,
    );
    let fd = i32::try_from(fd)
        .map_err(|_| Error::NotAWorker(format!("{}={fd} is out of range", env::HERD_CACHE_FD)))?;
    let fd = sys::take_inherited_cache_socket(fd).map_err(|e| {
        Error::NotAWorker(format!(
            "cannot take the cache channel descriptor {fd}: {e}"
        ))
    })?;
    open(fd, id).await
}

/// Shakes hands over `fd` as worker `id` and starts the reader.
async fn open(fd: OwnedFd, id: WorkerId) -> Result<Cache, Error> {
    let (tx, mut rx) = herd_wire::channel(fd, Codec::Binary, Limits::default())?;
    let peer = Peer::new(tx, SEND_TIMEOUT, Duration::from_secs(30));
    peer.send_value(Kind::Hello, &handshake::hello(id), Vec::new())
        .await?;
    let first = tokio::time::timeout(HANDSHAKE_TIMEOUT, rx.recv())
        .await
        .map_err(|_| Error::Handshake("the primary sent no hello on the cache channel".into()))??
        .ok_or_else(|| Error::Handshake("the primary closed the cache channel".into()))?;
    handshake::check(first, id)?;
    let view = Arc::new(LocalView::default());
    tokio::spawn(read_loop(rx, peer.clone(), view.clone()));
    Ok(Cache::with_private_maps(view, peer))
}

/// Routes the primary's frames: replies to their callers, invalidations to the view. Ends at
/// end-of-stream or an error; then every call waiting fails.
async fn read_loop(mut rx: Receiver, peer: Peer, view: Arc<LocalView>) {
    loop {
        let frame = match rx.recv().await {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => {
                tracing::warn!(error = %chain(&e), "the cache channel failed");
                break;
            }
        };
        match peer.route(frame) {
            Ok(Routed::Control(Control::CacheInvalidate { keys, seq })) => {
                view.invalidate(&keys, seq)
            }
            Ok(Routed::Control(Control::CacheClear { seq })) => view.clear(seq),
            Ok(Routed::Handled) | Ok(Routed::Control(_)) => {}
            Ok(Routed::Cache(request)) => {
                tokio::spawn(async move {
                    let _ = request.reply_error("a worker serves no cache").await;
                });
            }
            Ok(Routed::Incoming(_)) | Ok(Routed::Node(_)) => {
                tracing::debug!("a frame other than the cache's on the cache channel: ignored")
            }
            Err(e) => {
                tracing::warn!(error = %chain(&e), "the cache channel broke the protocol");
                break;
            }
        }
    }
    peer.fail_all();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::{CacheConfig, FileSource};

    /// Both halves over a real socketpair, with a real hub: a small value inline, a large one
    /// as a copy-on-write mapping, an invalidation pushed, a second hello refused.
    #[tokio::test]
    async fn the_worker_side_gets_values_and_invalidations_over_the_channel() {
        let dir = tempfile_dir();
        std::fs::write(dir.join("small"), b"hi").unwrap();
        let big = vec![5u8; 200_000];
        std::fs::write(dir.join("big"), &big).unwrap();
        let hub = Hub::new(
            FileSource::folder(&dir).unwrap(),
            CacheConfig {
                progress: crate::cache::Progress::Off,
                ..CacheConfig::default()
            },
        );
        let (primary, worker) = sys::socketpair().unwrap();
        let (exit_tx, exit_rx) = watch::channel(None);
        serve(
            &hub,
            WorkerId(3),
            primary,
            Limits::default(),
            Duration::from_secs(5),
            exit_rx,
        )
        .unwrap();
        let cache = open(worker, WorkerId(3)).await.unwrap();
        assert_eq!(cache.get("small").await.unwrap().unwrap(), &b"hi"[..]);
        let got = cache.get_versioned("big").await.unwrap();
        assert!(got.shared, "a large value is a mapping");
        assert_eq!(&got.value.unwrap()[..], &big[..]);
        let version = got.version.expect("kept in the view");
        assert_eq!(cache.local_version("big"), Some(version));
        assert_eq!(cache.stats().await.unwrap().mapped_bytes, big.len() as u64);
        let before = cache.changes();
        hub.set("big", vec![6u8; 10], None).await.unwrap();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while cache.local_version("big") == Some(version) {
            assert!(tokio::time::Instant::now() < deadline, "never invalidated");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(cache.changes() > before);
        let fresh = cache.get_versioned("big").await.unwrap();
        assert!(!fresh.shared);
        assert_eq!(fresh.value.unwrap(), &[6u8; 10][..]);
        assert_ne!(fresh.version, Some(version), "a version is never reused");
        // The worker's exit ends the primary's side: calls fail at once.
        exit_tx
            .send(Some(ExitStatus {
                code: Some(0),
                signal: None,
            }))
            .unwrap();
        let err = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match cache.get("missing-key").await {
                    Err(e) => return e,
                    Ok(_) => tokio::time::sleep(Duration::from_millis(5)).await,
                }
            }
        })
        .await
        .expect("the channel closes after the worker exits");
        assert!(matches!(err, crate::cache::CacheError::Channel(_)), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn tempfile_dir() -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "herd-cache-channel-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
