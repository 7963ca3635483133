//! The cache channel: a second socketpair a Node worker gets beside Node's own IPC channel,
//! speaking herd's binary protocol, so that the `herd-node` addon can use the replica's logic
//! ([`CacheClient`](super::CacheClient): local view, sequence-checked invalidations) and receive
//! large values as sealed memfds. Node's channel cannot carry them: Node treats any descriptor
//! that arrives without its own handle message as a protocol error.
//!
//! The primary (`serve`) sends its hello and waits, for as long as the worker lives, for the
//! worker's hello: a Node program that never loads the addon costs one idle socket. At the
//! hello it subscribes the channel to the hub's invalidations (the worker's view is empty until
//! its first call, which comes after), then serves cache calls only, at most 1,024 in flight
//! (`serve`'s bound; past that it stops reading). A worker that did not take an invalidation
//! within the send timeout is told to drop its whole view once it reads again. Anything else,
//! a broken frame or a failed hello closes this channel
//! alone, with a warning; the worker's main channel and supervision are untouched.
//!
//! The worker ([`inherited`]) takes the descriptor named by `HERD_CACHE_FD`, but only when its
//! parent is the primary named by `HERD_PRIMARY_PID` (a process the worker started inherits
//! the environment, and perhaps the descriptor, but must not use them), and drives it with a
//! [`CacheClient`](super::CacheClient): the Node addon, on Node's event loop.

use std::os::fd::OwnedFd;
use std::time::Duration;

use herd_wire::{Codec, Kind, Limits, Receiver};
use tokio::sync::watch;

use super::serve::{forward_pushes, CacheCalls};
use super::Hub;
use crate::ids::{ExitStatus, WorkerId};
use crate::ipc::control::Control;
use crate::ipc::endpoint::{Routed, SEND_TIMEOUT};
use crate::ipc::{handshake, Peer};
use crate::report::chain;
use crate::{env, sys, Error};

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
    // Invalidations from now on: the worker's view is empty until it asks, and it asks only
    // after its hello, so it misses none that matter; a program that has not loaded the addon
    // yet has nothing piled up for it.
    let pushes = forward_pushes(hub, peer.clone());
    let forwarder = peer.clone();
    tokio::spawn(async move {
        pushes.await;
        // Invalidations no longer reach the worker (the hub is gone): what its view keeps
        // cannot be trusted any more, so the channel ends after what is queued, and the worker
        // drops its view at end-of-stream.
        forwarder.close();
    });
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
                // Room for its bytes too, before the next frame is read.
                let Some(bytes) = calls.bytes(request.message().bytes().len()).await else {
                    return Ok(());
                };
                let admission = CacheCalls::admission(permit, bytes);
                calls.serve(Some(hub), worker, Codec::Binary, request, admission)
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

/// The worker's side: the cache channel this process inherited at `HERD_CACHE_FD`, taken (at
/// most once, close-on-exec), with the worker id to shake hands as. Drive it with a
/// [`CacheClient`](super::CacheClient).
///
/// Errors name the reason: not started by a herd primary with a cache, not the primary's own
/// child, or the descriptor not a socket or already taken.
pub fn inherited() -> Result<(OwnedFd, WorkerId), Error> {
    let env::CacheChannel { fd, primary, id } = env::cache_channel()?;
    let parent = rustix::process::getppid().map_or(0, |p| i64::from(p.as_raw_nonzero().get()));
    if parent != primary {
        return Err(Error::NotAWorker(format!(
            "this process's parent ({parent}) is not the herd primary ({primary}): the cache \
             channel belongs to the worker the primary started"
        )));
    }
    let fd = sys::take_inherited_cache_socket(fd).map_err(|e| {
        Error::NotAWorker(format!(
            "cannot take the cache channel descriptor {fd}: {e}"
        ))
    })?;
    Ok((fd, WorkerId(id)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::client::{Answer, CacheClient, Call, Received};
    use crate::cache::{CacheConfig, FileSource};

    /// A fresh folder for one test (the caller removes it).
    fn folder(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// A hub over the files of `dir`, quiet.
    fn hub_over(dir: &std::path::Path) -> Hub {
        Hub::new(
            FileSource::folder(dir).unwrap(),
            CacheConfig {
                progress: crate::cache::Progress::Off,
                ..CacheConfig::default()
            },
        )
    }

    /// The primary's side of worker `id`'s cache channel over a socketpair: the worker's end,
    /// and the sender of its exit (dropping it ends the channel, as the worker's exit would).
    fn serve_one(
        hub: &Hub,
        id: WorkerId,
        limits: Limits,
    ) -> (OwnedFd, watch::Sender<Option<ExitStatus>>) {
        let (primary, worker) = sys::socketpair().unwrap();
        let (exit_tx, exit_rx) = watch::channel(None);
        serve(hub, id, primary, limits, Duration::from_secs(5), exit_rx).unwrap();
        (worker, exit_tx)
    }

    /// A client for worker `id` on the worker's end, once the hellos are exchanged.
    async fn shake_hands(
        worker: OwnedFd,
        id: WorkerId,
    ) -> (CacheClient, herd_wire::Sender, Receiver) {
        let client = CacheClient::new(id);
        let (tx, mut rx) = herd_wire::channel(worker, Codec::Binary, Limits::default()).unwrap();
        tx.send(client.hello().unwrap()).await.unwrap();
        client
            .check_hello(rx.recv().await.unwrap().unwrap())
            .unwrap();
        (client, tx, rx)
    }

    /// Drives `client` over the worker's end of a channel: sends `call`, applies what comes
    /// first, returns the answer.
    async fn ask(
        client: &CacheClient,
        tx: &herd_wire::Sender,
        rx: &mut Receiver,
        call: Call,
    ) -> Result<Answer, crate::cache::CacheError> {
        let (id, frame) = client.call(&call).unwrap();
        tx.send(frame).await.unwrap();
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("an answer in time")
                .unwrap()
                .expect("the channel is open");
            if let Received::Reply(got, frame) = client.receive(frame).unwrap() {
                assert_eq!(got, id);
                return client.answer(&call, frame);
            }
        }
    }

    /// The primary's side with a real hub, the worker's driven by a [`CacheClient`] over a real
    /// socketpair: a small value inline, a large one as a copy-on-write mapping, an
    /// invalidation pushed and applied, a version never reused, and the channel closed once
    /// the worker exits.
    #[tokio::test]
    async fn a_client_gets_values_and_invalidations_over_the_channel() {
        let dir = folder("herd-cache-channel");
        std::fs::write(dir.join("small"), b"hi").unwrap();
        let big = vec![5u8; 200_000];
        std::fs::write(dir.join("big"), &big).unwrap();
        let hub = hub_over(&dir);
        let (worker, exit_tx) = serve_one(&hub, WorkerId(3), Limits::default());
        let (client, tx, mut rx) = shake_hands(worker, WorkerId(3)).await;

        let Answer::Got(small) = ask(&client, &tx, &mut rx, Call::Get("small".into()))
            .await
            .unwrap()
        else {
            panic!("not a value")
        };
        assert_eq!(small.value.unwrap(), &b"hi"[..]);
        assert!(!small.shared);
        let Answer::Got(got) = ask(&client, &tx, &mut rx, Call::Get("big".into()))
            .await
            .unwrap()
        else {
            panic!("not a value")
        };
        assert!(got.shared, "a large value is a mapping");
        assert_eq!(&got.value.unwrap()[..], &big[..]);
        let version = got.version.expect("kept in the view");
        assert_eq!(client.local_version("big"), Some(version));
        let before = client.changes().load(std::sync::atomic::Ordering::Acquire);

        hub.set("big", bytes::Bytes::from(vec![6u8; 10]), None)
            .await
            .unwrap();
        while client.local_entry("big").is_some() {
            let frame = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("the invalidation in time")
                .unwrap()
                .unwrap();
            client.receive(frame).unwrap();
        }
        assert!(client.changes().load(std::sync::atomic::Ordering::Acquire) > before);
        let Answer::Got(fresh) = ask(&client, &tx, &mut rx, Call::Get("big".into()))
            .await
            .unwrap()
        else {
            panic!("not a value")
        };
        assert_eq!(fresh.value.unwrap(), &[6u8; 10][..]);
        assert_ne!(fresh.version, Some(version), "a version is never reused");
        let Answer::Stats(stats) = ask(&client, &tx, &mut rx, Call::Stats).await.unwrap() else {
            panic!("not stats")
        };
        assert_eq!(stats.mapped_bytes, big.len() as u64);
        assert_eq!(stats.local_misses, 3);

        // Anything but cache calls closes this channel (alone).
        tx.send(herd_wire::Frame::new(
            Kind::Message,
            herd_wire::Format::MsgPack,
            bytes::Bytes::from_static(b"\xc0"),
        ))
        .await
        .unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match rx.recv().await {
                    Ok(Some(_)) => continue,
                    other => return other.map(|_| ()),
                }
            }
        })
        .await
        .expect("the primary closes the channel");
        assert!(end.is_ok(), "{end:?}");
        drop(exit_tx);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A worker that stops reading long enough for an invalidation's send to time out is not
    /// left with a stale view: it is told to drop it once it reads again, and its channel goes
    /// on working. Takes the send timeout (30 s) to run.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_that_stopped_reading_hears_of_later_changes() {
        let dir = folder("herd-cache-channel-slow");
        std::fs::write(dir.join("k"), b"old").unwrap();
        let hub = hub_over(&dir);
        let limits = Limits {
            send_queue_frames: 4,
            ..Limits::default()
        };
        let (worker, _exit) = serve_one(&hub, WorkerId(2), limits);
        let (client, tx, mut rx) = shake_hands(worker, WorkerId(2)).await;
        let Answer::Got(got) = ask(&client, &tx, &mut rx, Call::Get("k".into()))
            .await
            .unwrap()
        else {
            panic!("not a value")
        };
        assert!(got.version.is_some(), "kept in the view");

        // The worker stops reading (a long synchronous stretch of JavaScript) while keys change
        // elsewhere: its socket and send queue fill, and the next push waits past its timeout.
        let long = "x".repeat(200);
        for i in 0..3000 {
            hub.delete(&format!("{long}{i}")).await.unwrap();
        }
        tokio::time::sleep(SEND_TIMEOUT + Duration::from_secs(2)).await;
        hub.set("k", bytes::Bytes::from_static(b"new"), None)
            .await
            .unwrap();

        // The worker reads again.
        loop {
            match tokio::time::timeout(Duration::from_secs(5), rx.recv()).await {
                Ok(Ok(Some(frame))) => {
                    client.receive(frame).unwrap();
                }
                Ok(other) => panic!("the channel ended: {other:?}"),
                Err(_) => panic!(
                    "the channel is open, but no invalidation reaches the worker any more: \
                     it still serves {:?} as k",
                    client.local_entry("k").and_then(|e| e.value)
                ),
            }
            if client.local_entry("k").is_none() {
                break;
            }
        }
        let Answer::Got(fresh) = ask(&client, &tx, &mut rx, Call::Get("k".into()))
            .await
            .unwrap()
        else {
            panic!("not a value")
        };
        assert_eq!(fresh.value.unwrap(), &b"new"[..]);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// Read-your-writes: once a `Set` (or `Delete`) is answered, the view no longer serves the
    /// value it replaced, even when the hub's invalidation of it comes after the reply.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_set_answered_drops_the_old_value_from_the_view() {
        let dir = folder("herd-cache-channel-ryw");
        std::fs::write(dir.join("k"), b"start").unwrap();
        let hub = hub_over(&dir);
        let (worker, _exit) = serve_one(&hub, WorkerId(6), Limits::default());
        let (client, tx, mut rx) = shake_hands(worker, WorkerId(6)).await;
        let mut stale = Vec::new();
        for i in 0..300 {
            ask(&client, &tx, &mut rx, Call::Get("k".into()))
                .await
                .unwrap();
            let value = bytes::Bytes::from(format!("v{i}"));
            let set = Call::Set {
                key: "k".into(),
                value: value.clone(),
                ttl: None,
            };
            ask(&client, &tx, &mut rx, set).await.unwrap();
            if let Some(held) = client.local_entry("k").and_then(|e| e.value) {
                if held != value {
                    stale.push(held);
                }
            }
            ask(&client, &tx, &mut rx, Call::Get("k".into()))
                .await
                .unwrap();
            ask(&client, &tx, &mut rx, Call::Delete("k".into()))
                .await
                .unwrap();
            if let Some(held) = client.local_entry("k") {
                stale.push(held.value.unwrap_or_default());
            }
        }
        assert!(
            stale.is_empty(),
            "{} times the view served the old value after its own set or delete was answered, \
             e.g. {:?}",
            stale.len(),
            stale[0]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A Node program that loads the addon late (long after the worker started, keys changing
    /// meanwhile) gets a working channel: nothing piled up for it before its hello.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_that_says_hello_late_gets_a_working_channel() {
        let dir = folder("herd-cache-channel-late");
        std::fs::write(dir.join("k"), b"old").unwrap();
        let hub = hub_over(&dir);
        let limits = Limits {
            send_queue_frames: 4,
            ..Limits::default()
        };
        let (worker, _exit) = serve_one(&hub, WorkerId(5), limits);
        // Keys change while the program has not loaded the addon yet.
        let long = "x".repeat(200);
        for i in 0..3000 {
            hub.delete(&format!("{long}{i}")).await.unwrap();
        }
        tokio::time::sleep(SEND_TIMEOUT + Duration::from_secs(2)).await;

        let (client, tx, mut rx) = shake_hands(worker, WorkerId(5)).await;
        let got = tokio::time::timeout(
            Duration::from_secs(10),
            ask(&client, &tx, &mut rx, Call::Get("k".into())),
        )
        .await
        .expect("an answer in time");
        let Ok(Answer::Got(got)) = got else {
            panic!("the late worker's call failed: {got:?}")
        };
        assert_eq!(got.value.unwrap(), &b"old"[..]);
        hub.set("k", bytes::Bytes::from_static(b"new"), None)
            .await
            .unwrap();
        while client.local_entry("k").is_some() {
            let frame = tokio::time::timeout(Duration::from_secs(10), rx.recv())
                .await
                .expect("the invalidation in time")
                .unwrap()
                .expect("the channel is open");
            client.receive(frame).unwrap();
        }
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A worker that asks for a large (shared) value many times and never reads its replies
    /// must not make the primary hold a descriptor per unread reply: descriptors are the whole
    /// host's resource (the primary's accepts and spawns, every worker's shared values).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_worker_that_never_reads_its_replies_cannot_hoard_descriptors() {
        let dir = folder("herd-cache-channel-hoard");
        std::fs::write(dir.join("big"), vec![1u8; 200_000]).unwrap();
        let hub = hub_over(&dir);
        let open_fds = || std::fs::read_dir("/proc/self/fd").unwrap().count();
        let (worker, _exit) = serve_one(&hub, WorkerId(4), Limits::default());
        let (client, tx, mut rx) = shake_hands(worker, WorkerId(4)).await;
        // Warm: the value is in the hub's shared memory.
        ask(&client, &tx, &mut rx, Call::Get("big".into()))
            .await
            .unwrap();
        let before = open_fds();
        for _ in 0..6000 {
            let (_, frame) = client.call(&Call::Get("big".into())).unwrap();
            tx.send(frame).await.unwrap();
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let held = open_fds().saturating_sub(before);
        assert!(
            held < 1024,
            "the primary holds {held} more descriptors for one worker that does not read"
        );
        drop(rx);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// The worker's exit ends the primary's side even while the channel stays open (a process
    /// the worker started may hold it).
    #[tokio::test]
    async fn the_workers_exit_closes_the_channel() {
        let hub = hub_over(&std::env::temp_dir());
        let (worker, exit_tx) = serve_one(&hub, WorkerId(1), Limits::default());
        let (_tx, mut rx) = herd_wire::channel(worker, Codec::Binary, Limits::default()).unwrap();
        assert_eq!(rx.recv().await.unwrap().unwrap().kind, Kind::Hello);
        exit_tx
            .send(Some(ExitStatus {
                code: Some(0),
                signal: None,
            }))
            .unwrap();
        let end = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("closed after the exit");
        assert!(matches!(end, Ok(None)), "{end:?}");
    }
}
