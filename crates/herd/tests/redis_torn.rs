//! Hardening (issue 19, item 3): a value read from Redis in chunks is never a mix of two
//! versions. A writer rewrites a multi-chunk key with a same-length value (all `a`, then all
//! `b`) while herd reads it; every value herd returns is one version whole. A key deleted
//! meanwhile is missing, not torn; a value over the size limit is refused from its `STRLEN`,
//! before any chunk is read. A real `redis-server` on a free port.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use herd::cache::{RedisConfig, RedisSource, Source};
use herd_test_support::redis_server::RedisServer;

const LEN: usize = 1 << 20;
const CHUNK: usize = 64 << 10;

fn source(server: &RedisServer, config: RedisConfig) -> RedisSource {
    RedisSource::with_config(&server.url(), config).unwrap()
}

/// Rewrites `key` (all `a`, all `b`, and with `delete` removed now and then) until stopped,
/// pausing between writes so that some reads can finish.
fn writer(
    server: &RedisServer,
    key: &'static str,
    delete: bool,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<u64> {
    let mut c = server.connection().unwrap();
    std::thread::spawn(move || {
        let (a, b) = (vec![b'a'; LEN], vec![b'b'; LEN]);
        let mut n = 0u64;
        while !stop.load(Ordering::Relaxed) {
            let v = if n.is_multiple_of(2) { &a } else { &b };
            if delete && n % 3 == 2 {
                let _: () = redis::cmd("DEL").arg(key).query(&mut c).unwrap();
            } else {
                let _: () = redis::cmd("SET").arg(key).arg(v).query(&mut c).unwrap();
            }
            n += 1;
            // Pacing, not synchronisation: a read of 16 chunks must be able to fit between
            // writes now and then.
            std::thread::sleep(Duration::from_millis(25));
        }
        n
    })
}

/// Loads `key` for `run`; (whole values, missing, errors). Fails at the first torn value.
async fn read_while_written(src: &RedisSource, key: &str, run: Duration) -> (u64, u64, u64) {
    let (mut whole, mut missing, mut errors) = (0, 0, 0);
    let started = Instant::now();
    while started.elapsed() < run {
        match src.load(key).await {
            Ok(Some(l)) => {
                let v = &l.value;
                assert_eq!(v.len(), LEN);
                let first = v[0];
                let torn = v.iter().filter(|b| **b != first).count();
                assert_eq!(
                    torn, 0,
                    "a torn value: {torn} of {LEN} bytes differ from the first"
                );
                whole += 1;
            }
            Ok(None) => missing += 1,
            Err(e) => {
                assert!(e.to_string().contains("changed during each"), "{e}");
                errors += 1;
            }
        }
    }
    (whole, missing, errors)
}

/// Reads `big` for `run` while [`writer`] rewrites it (and with `delete` removes it now and
/// then); the writer's count of writes and [`read_while_written`]'s counts.
async fn contended(server: &RedisServer, delete: bool, run: Duration) -> (u64, (u64, u64, u64)) {
    let mut config = RedisConfig::default();
    config.chunk_size = CHUNK;
    let src = source(server, config);
    let stop = Arc::new(AtomicBool::new(false));
    let w = writer(server, "big", delete, stop.clone());
    let counts = read_while_written(&src, "big", run).await;
    stop.store(true, Ordering::Relaxed);
    (w.join().unwrap(), counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_rewritten_during_a_chunked_read_is_never_served_torn() {
    let server = RedisServer::start();
    server.cmd::<()>(&[b"SET", b"big", &vec![b'a'; LEN]]);
    let (writes, (whole, _, errors)) = contended(&server, false, Duration::from_secs(4)).await;
    eprintln!("{writes} writes; {whole} whole reads, {errors} gave up");
    assert!(writes > 50, "the writer hardly wrote");
    assert!(whole > 0, "no read ever finished");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_deleted_during_a_chunked_read_is_missing_not_torn() {
    let server = RedisServer::start();
    let (_, (whole, missing, errors)) = contended(&server, true, Duration::from_secs(3)).await;
    eprintln!("{whole} whole, {missing} missing, {errors} gave up");
    assert!(whole + missing > 0);
}

#[tokio::test]
async fn a_value_over_the_limit_is_refused_before_its_chunks_are_read() {
    let server = RedisServer::start();
    server.cmd::<()>(&[b"SET", b"huge", &vec![b'h'; 8 << 20]]);
    let mut config = RedisConfig::default();
    config.chunk_size = CHUNK;
    config.max_value = 1 << 20;
    let src = source(&server, config);
    let before = server.command_calls("getrange");
    let e = src.load("huge").await.expect_err("refused");
    assert!(e.to_string().contains("more than"), "{e}");
    // The head only (one GETRANGE), not 128 chunks.
    assert_eq!(server.command_calls("getrange") - before, 1);
}

/// Many big keys loading at once share one assembling budget: with room for less than one
/// value, eight 1 MiB values loaded together each wait their turn (one at a time, the longer
/// than the budget taking all of it) and all arrive whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn big_values_loading_together_wait_for_room_and_arrive_whole() {
    let server = RedisServer::start();
    for i in 0..8u8 {
        server.cmd::<()>(&[b"SET", format!("big{i}").as_bytes(), &vec![b'0' + i; LEN]]);
    }
    let mut config = RedisConfig::default();
    config.chunk_size = CHUNK;
    config.max_assembling = LEN / 4;
    let src = Arc::new(source(&server, config));
    let loads = (0..8u8).map(|i| {
        let src = src.clone();
        tokio::spawn(async move { (i, src.load(&format!("big{i}")).await) })
    });
    for load in loads {
        let (i, got) = tokio::time::timeout(Duration::from_secs(30), load)
            .await
            .expect("every load ends")
            .unwrap();
        let v = got.unwrap().expect("present").value;
        assert_eq!(v.len(), LEN);
        assert!(v.iter().all(|b| *b == b'0' + i), "big{i} is not whole");
    }
}

/// A write that lands after a value's head was read but before its chunks start (here while
/// the read waits for assembling room behind another read of the same key) is seen too: a
/// key that grows from 1 MiB of `a` to 2 MiB of `b` is never served as 1 MiB of `b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_that_grows_between_its_head_and_its_chunks_is_never_served_cut() {
    let server = RedisServer::start();
    server.cmd::<()>(&[b"SET", b"grow", &vec![b'a'; LEN]]);
    let mut config = RedisConfig::default();
    config.chunk_size = CHUNK;
    config.max_assembling = LEN;
    let src = Arc::new(source(&server, config));
    let stop = Arc::new(AtomicBool::new(false));
    let mut c = server.connection().unwrap();
    let w = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let (a, b) = (vec![b'a'; LEN], vec![b'b'; 2 * LEN]);
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let v = if n.is_multiple_of(2) { &a } else { &b };
                let _: () = redis::cmd("SET").arg("grow").arg(v).query(&mut c).unwrap();
                n += 1;
                // Pacing, not synchronisation (as in `writer`).
                std::thread::sleep(Duration::from_millis(15));
            }
            n
        })
    };
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let src = src.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let mut whole = 0u64;
                while started.elapsed() < Duration::from_secs(4) {
                    if let Ok(Some(l)) = src.load("grow").await {
                        let v = &l.value;
                        let ok = (v.len() == LEN && v.iter().all(|b| *b == b'a'))
                            || (v.len() == 2 * LEN && v.iter().all(|b| *b == b'b'));
                        assert!(ok, "served {} bytes starting {:?}", v.len(), v[0] as char);
                        whole += 1;
                    }
                }
                whole
            })
        })
        .collect();
    let mut whole = 0;
    for r in readers {
        whole += r.await.unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    let writes = w.join().unwrap();
    eprintln!("{writes} writes; {whole} whole reads");
    assert!(whole > 0, "no read ever finished");
}
