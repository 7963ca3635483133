//! Workers that break the protocol, played by `sh` writing exact bytes to its channel (or by
//! `sleep`, which says nothing): garbage, unknown frame kinds, oversized frames, a wrong id, a
//! message before the handshake, missing descriptors, half a frame, silence. Each is contained
//! to that worker; the well-behaved `herd-test-worker` beside it is untouched.

use std::ffi::OsStr;
use std::time::Duration;

use bytes::BufMut;
use herd::{Cluster, Error, Event, WorkerId};
use herd_test_support::events::until;
use herd_test_support::test_worker;
use serde_json::{json, Value};

/// `sh -c SCRIPT herd-test-worker`: the script's `$0` is the test worker.
fn sh_args(script: &str) -> [&OsStr; 3] {
    [
        OsStr::new("-c"),
        OsStr::new(script),
        test_worker().as_os_str(),
    ]
}

/// Octal escapes for `printf`, so `sh` can write exact bytes to the channel.
fn printf_escape(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:03o}")).collect()
}

fn frame(kind: u8, flags: u8, nfds: u16, id: u64, payload: &[u8]) -> Vec<u8> {
    let mut b = Vec::new();
    b.put_u32_le(payload.len() as u32);
    b.put_u8(kind);
    b.put_u8(flags);
    b.put_u16_le(nfds);
    b.put_u64_le(id);
    b.extend_from_slice(payload);
    b
}

fn hello(worker_id: u64) -> Vec<u8> {
    let h = herd_wire::Hello::new(worker_id);
    frame(1, 0, 0, 0, &rmp_serde_like(&h))
}

fn rmp_serde_like(h: &herd_wire::Hello) -> Vec<u8> {
    let (_, bytes) = herd_wire::encode_value(herd::Codec::Binary, h).unwrap();
    bytes.to_vec()
}

/// A cluster whose worker 1 is `sh` writing `bytes` to its channel and then sleeping, and whose
/// worker 2 is a well-behaved echo worker.
async fn liar(bytes: &[u8]) -> Cluster {
    let script = r#"if [ "$HERD_WORKER_ID" = 1 ]; then printf "$LIE" >&3; exec sleep 30; else exec "$0"; fi"#;
    Cluster::builder()
        .workers(2)
        .program("sh")
        .args(sh_args(script))
        .env("HERD_TEST_MODE", "echo")
        .env("LIE", printf_escape(bytes))
        .grace(Duration::from_millis(200))
        .handshake_timeout(Duration::from_secs(10))
        .start()
        .await
        .unwrap()
}

async fn contained(bytes: Vec<u8>, expect: &str) {
    let mut cluster = liar(&bytes).await;
    let (ev, _) = until(&mut cluster, |e| matches!(e, Event::Error { .. })).await;
    let Event::Error { worker, error } = ev else {
        unreachable!()
    };
    assert_eq!(worker, WorkerId(1));
    let text = herd::error::chain(&error);
    assert!(text.contains(expect), "expected {expect:?} in {text:?}");
    let (ev, _) = until(
        &mut cluster,
        |e| matches!(e, Event::Exit { worker, .. } if *worker == WorkerId(1)),
    )
    .await;
    let Event::Exit { status, .. } = ev else {
        unreachable!()
    };
    assert_eq!(
        status.signal,
        Some(libc::SIGKILL),
        "the liar is killed after the grace period"
    );
    // The other worker is untouched.
    let w2 = cluster
        .worker(WorkerId(2))
        .await
        .expect("worker 2 is still there");
    let r: Value = w2.request(&"ok?").await.unwrap();
    assert_eq!(r, json!({"echo": "ok?"}));
}

#[tokio::test]
async fn garbage_is_contained() {
    // Text read as a header: its first four bytes make an absurd length.
    contained(b"this is not a frame at all".to_vec(), "exceeds the limit").await;
}

#[tokio::test]
async fn an_unknown_frame_kind_is_contained() {
    contained(frame(99, 0, 0, 0, b"xx"), "unknown frame kind 99").await;
}

#[tokio::test]
async fn oversized_frame_is_contained() {
    // A header announcing a 4 GiB payload: refused on the header, before anything is buffered.
    let mut b = frame(2, 0, 0, 0, b"");
    b[..4].copy_from_slice(&u32::MAX.to_le_bytes());
    contained(b, "exceeds the limit").await;
}

#[tokio::test]
async fn a_worker_claiming_another_id_is_refused() {
    contained(hello(2), "the other side says 2").await;
}

#[tokio::test]
async fn a_message_before_the_handshake_is_refused() {
    let (_, payload) = herd_wire::encode_value(herd::Codec::Binary, &"hi").unwrap();
    contained(frame(2, 0, 0, 0, &payload), "not a hello").await;
}

#[tokio::test]
async fn claimed_but_missing_descriptors_are_refused() {
    let (_, payload) = herd_wire::encode_value(herd::Codec::Binary, &"hi").unwrap();
    let mut b = hello(1);
    b.extend(frame(2, 0, 3, 0, &payload));
    contained(b, "claims 3 file descriptors").await;
}

#[tokio::test]
async fn a_half_frame_then_silence_is_refused_at_end_of_stream() {
    // The liar writes half a frame, then its channel closes when it exits... but `sleep` holds
    // fd 3 open, so close it first: `exec 3>&-` happens in the script below.
    let mut b = hello(1);
    b.extend(&frame(2, 0, 0, 0, b"0123456789")[..20]);
    let script = r#"if [ "$HERD_WORKER_ID" = 1 ]; then printf "$LIE" >&3; exec 3>&-; exec sleep 30; else exec "$0"; fi"#;
    let mut cluster = Cluster::builder()
        .workers(2)
        .program("sh")
        .args(sh_args(script))
        .env("HERD_TEST_MODE", "echo")
        .env("LIE", printf_escape(&b))
        .grace(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let (ev, _) = until(&mut cluster, |e| matches!(e, Event::Error { .. })).await;
    let Event::Error { worker, error } = ev else {
        unreachable!()
    };
    let text = herd::error::chain(&error);
    assert_eq!(worker, WorkerId(1), "{text}");
    assert!(text.contains("middle of a frame"), "{text}");
    let w2 = cluster.worker(WorkerId(2)).await.unwrap();
    let r: Value = w2.request(&1).await.unwrap();
    assert_eq!(r, json!({"echo": 1}));
}

#[tokio::test]
async fn a_silent_worker_fails_its_handshake() {
    let mut cluster = Cluster::builder()
        .workers(1)
        .program("sleep")
        .args(["30"])
        .handshake_timeout(Duration::from_millis(300))
        .grace(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    let (ev, skipped) = until(&mut cluster, |e| matches!(e, Event::Error { .. })).await;
    assert!(skipped.iter().all(|e| matches!(e, Event::Fork { .. })));
    let Event::Error { error, .. } = ev else {
        unreachable!()
    };
    assert!(matches!(error, Error::Handshake(_)), "{error:?}");
    let (ev, _) = until(&mut cluster, |e| matches!(e, Event::Exit { .. })).await;
    let Event::Exit { status, .. } = ev else {
        unreachable!()
    };
    assert_eq!(status.signal, Some(libc::SIGKILL));
}
