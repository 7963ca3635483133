//! Integration tests of the cluster core with real worker processes (the `herd-test-worker`
//! binary, and `sh` playing a worker that stops reading; workers that lie are in `hostile.rs`).
//! Every wait has a deadline; nothing sleeps to synchronise.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Seek};
use std::os::fd::{AsFd, OwnedFd};
use std::time::Duration;

use herd::{Cluster, ClusterBuilder, Error, Event, Signal, WorkerId};
use herd_test_support::events::{next, until, DEADLINE};
use herd_test_support::process::pid_alive;
use herd_test_support::test_worker;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

fn builder(n: usize) -> ClusterBuilder {
    herd_test_support::echo_cluster(n)
}

async fn all_online(cluster: &mut Cluster, n: usize) {
    let mut online = 0;
    while online < n {
        if let (Event::Online { .. }, _) =
            until(cluster, |e| matches!(e, Event::Online { .. })).await
        {
            online += 1;
        }
    }
}

async fn message(cluster: &mut Cluster, from: WorkerId) -> Value {
    let (ev, _) = until(
        cluster,
        |e| matches!(e, Event::Message { worker, .. } if *worker == from),
    )
    .await;
    match ev {
        Event::Message { message, .. } => message.json().unwrap(),
        _ => unreachable!(),
    }
}

/// Whether `pid` has exited (a zombie has: only its parent, not us, can reap it).
fn is_gone(pid: u32) -> bool {
    !pid_alive(pid.into())
}

#[tokio::test]
async fn hello_with_lifecycle_events_in_order() {
    let mut cluster = builder(3).start().await.unwrap();
    let mut log: HashMap<WorkerId, Vec<String>> = HashMap::new();
    let mut pids = HashMap::new();
    let mut answered = 0;
    let mut exited = 0;
    while exited < 3 {
        let ev = next(&mut cluster).await;
        let w = ev.worker();
        let entry = log.entry(w).or_default();
        match ev {
            Event::Fork { pid, .. } => {
                entry.push("fork".into());
                pids.insert(w, pid);
            }
            Event::Online { worker } => {
                entry.push("online".into());
                cluster
                    .worker(worker)
                    .await
                    .unwrap()
                    .send("hi worker")
                    .await
                    .unwrap();
            }
            Event::Message { message, .. } => {
                let v = message.json().unwrap();
                assert_eq!(v["echo"], "hi worker");
                assert_eq!(
                    v["pid"], pids[&w],
                    "the reply comes from the forked process"
                );
                assert_eq!(v["id"], w.0);
                entry.push("message".into());
                answered += 1;
                if answered == 3 {
                    for (_, status) in cluster.disconnect_all().await {
                        assert!(status.unwrap().success());
                    }
                }
            }
            Event::Disconnect { .. } => entry.push("disconnect".into()),
            Event::Exit { status, .. } => {
                assert!(status.success(), "{status}");
                assert!(is_gone(pids[&w]), "the worker was reaped");
                entry.push("exit".into());
                exited += 1;
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(log.len(), 3);
    for (w, events) in log {
        assert_eq!(
            events,
            ["fork", "online", "message", "disconnect", "exit"],
            "worker {w}"
        );
    }
    assert!(cluster.workers().await.is_empty());
}

#[derive(Debug, PartialEq, Serialize, Deserialize)]
struct Order {
    id: u64,
    items: Vec<String>,
    total: f64,
    note: Option<String>,
}

#[tokio::test]
async fn typed_and_untyped_values_both_ways() {
    let mut cluster = builder(1).start().await.unwrap();
    all_online(&mut cluster, 1).await;
    let w = cluster.workers().await.remove(0);
    let order = Order {
        id: 7,
        items: vec!["tea".into(), "üñí\ncode".into()],
        total: 12.5,
        note: None,
    };
    w.send(&order).await.unwrap();
    let back = message(&mut cluster, w.id()).await;
    let echoed: Order = serde_json::from_value(back["echo"].clone()).unwrap();
    assert_eq!(echoed, order);

    let untyped = json!({"nested": {"list": [1, -2, 3.25, null, true]}, "s": "x"});
    w.send(&untyped).await.unwrap();
    assert_eq!(message(&mut cluster, w.id()).await["echo"], untyped);

    // Raw bytes are not a serde value; the worker's `json()` fails and it reports nothing, but
    // the channel stays usable. (Raw bytes are for bulk between Rust peers.)
    let answer: Value = w.request(&"still there?").await.unwrap();
    assert_eq!(answer, json!({"echo": "still there?"}));
}

#[tokio::test]
async fn broadcast_reaches_every_worker() {
    let mut cluster = builder(3).start().await.unwrap();
    all_online(&mut cluster, 3).await;
    assert_eq!(cluster.broadcast(&json!({"to": "all"})).await, 3);
    let mut from = Vec::new();
    while from.len() < 3 {
        if let (Event::Message { worker, message }, _) =
            until(&mut cluster, |e| matches!(e, Event::Message { .. })).await
        {
            assert_eq!(message.json().unwrap()["echo"], json!({"to": "all"}));
            from.push(worker);
        }
    }
    from.sort();
    from.dedup();
    assert_eq!(from.len(), 3);
}

#[tokio::test]
async fn requests_both_ways_with_errors_and_deadlines() {
    let mut cluster = builder(1).start().await.unwrap();
    all_online(&mut cluster, 1).await;
    let w = cluster.workers().await.remove(0);

    let r: Value = w.request(&"ping").await.unwrap();
    assert_eq!(r, json!({"echo": "ping"}));

    match w.request::<_, Value>(&"fail").await {
        Err(Error::Remote(text)) => assert_eq!(text, "asked to fail"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    match w.request::<_, Value>(&"drop").await {
        Err(Error::Remote(text)) => assert!(text.contains("dropped"), "{text}"),
        other => panic!("expected a remote error, got {other:?}"),
    }
    let started = std::time::Instant::now();
    match w
        .request_message(&"hang", Vec::new(), Duration::from_millis(300))
        .await
    {
        Err(Error::Timeout(_)) => {}
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(5));

    // Concurrent requests are matched to their own replies.
    let calls = (0..50).map(|i| {
        let w = w.clone();
        tokio::spawn(async move { (i, w.request::<_, Value>(&i).await.unwrap()) })
    });
    for c in calls {
        let (i, r) = c.await.unwrap();
        assert_eq!(r, json!({"echo": i}));
    }

    // Worker -> primary.
    w.send(&json!({"op": "ask", "value": 41})).await.unwrap();
    let (ev, _) = until(&mut cluster, |e| matches!(e, Event::Request { .. })).await;
    let Event::Request { request, .. } = ev else {
        unreachable!()
    };
    let n: i64 = request.decode().unwrap();
    request.reply(&(n + 1)).await.unwrap();
    assert_eq!(
        message(&mut cluster, w.id()).await,
        json!({"primary_said": 42})
    );

    // A request the primary drops answers itself.
    w.send(&json!({"op": "ask", "value": 1})).await.unwrap();
    let (ev, _) = until(&mut cluster, |e| matches!(e, Event::Request { .. })).await;
    drop(ev);
    let report = message(&mut cluster, w.id()).await;
    assert!(
        report["primary_failed"]
            .as_str()
            .unwrap()
            .contains("dropped"),
        "{report}"
    );
}

fn memfd(content: &str) -> OwnedFd {
    let fd = rustix::fs::memfd_create("herd-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
    rustix::io::write(&fd, content.as_bytes()).unwrap();
    fd
}

#[tokio::test]
async fn descriptors_travel_both_ways_and_arrive_cloexec() {
    let mut cluster = builder(1).start().await.unwrap();
    all_online(&mut cluster, 1).await;
    let w = cluster.workers().await.remove(0);

    // Primary -> worker: a listening socket; the worker accepts on it.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    w.send_with_fds(&json!({"op": "accept"}), vec![OwnedFd::from(listener)])
        .await
        .unwrap();
    let greeting = tokio::task::spawn_blocking(move || {
        let s = std::net::TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(DEADLINE)).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        line
    })
    .await
    .unwrap();
    assert_eq!(greeting, format!("hello from worker {}\n", w.id()));
    assert_eq!(
        message(&mut cluster, w.id()).await,
        json!({"accepted": true})
    );

    // Received descriptors are close-on-exec in the worker.
    w.send_with_fds(&json!({"op": "check_fd"}), vec![memfd("a"), memfd("b")])
        .await
        .unwrap();
    assert_eq!(
        message(&mut cluster, w.id()).await,
        json!({"cloexec": [true, true]})
    );

    // Worker -> primary: a memfd.
    w.send(&json!({"op": "send_fd"})).await.unwrap();
    let (ev, _) = until(&mut cluster, |e| matches!(e, Event::Message { .. })).await;
    let Event::Message { mut message, .. } = ev else {
        unreachable!()
    };
    assert_eq!(message.json().unwrap(), json!({"here": true}));
    let fds = message.take_fds();
    assert_eq!(fds.len(), 1);
    let flags = rustix::io::fcntl_getfd(fds[0].as_fd()).unwrap();
    assert!(flags.contains(rustix::io::FdFlags::CLOEXEC));
    let mut f = std::fs::File::from(fds.into_iter().next().unwrap());
    f.rewind().unwrap();
    let mut s = String::new();
    f.read_to_string(&mut s).unwrap();
    assert_eq!(s, format!("from worker {}", w.id()));

    // Too many descriptors for one message: refused before anything is sent.
    let many: Vec<OwnedFd> = (0..65).map(|_| memfd("x")).collect();
    match w.send_with_fds(&json!({"op": "check_fd"}), many).await {
        Err(Error::Wire(herd_wire::WireError::TooManyFds { count: 65, max: 64 })) => {}
        other => panic!("expected too many fds, got {other:?}"),
    }
    let r: Value = w.request(&"after").await.unwrap();
    assert_eq!(r, json!({"echo": "after"}));
}

#[tokio::test]
async fn kill_exit_codes_and_the_grace_period() {
    let mut cluster = builder(2).start().await.unwrap();
    all_online(&mut cluster, 2).await;
    let ws = cluster.workers().await;
    let status = ws[0].kill(Signal::TERM).await.unwrap();
    assert_eq!(status.signal, Some(libc::SIGTERM), "{status}");
    ws[1].send(&json!({"op": "exit", "code": 7})).await.unwrap();
    let (ev, _) = until(
        &mut cluster,
        |e| matches!(e, Event::Exit { worker, .. } if *worker == ws[1].id()),
    )
    .await;
    let Event::Exit { status, .. } = ev else {
        unreachable!()
    };
    assert_eq!(status.code, Some(7));

    // A worker that ignores the disconnect is killed once the grace period is over.
    let mut stubborn = Cluster::builder()
        .workers(1)
        .program(test_worker())
        .args(Vec::<String>::new())
        .env("HERD_TEST_MODE", "ignore-eof")
        .grace(Duration::from_millis(300))
        .start()
        .await
        .unwrap();
    all_online(&mut stubborn, 1).await;
    let w = stubborn.workers().await.remove(0);
    let started = std::time::Instant::now();
    let status = tokio::time::timeout(DEADLINE, w.disconnect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(status.signal, Some(libc::SIGKILL), "{status}");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(is_gone(w.pid()));
}

#[tokio::test]
async fn sending_to_an_exited_worker_fails_fast() {
    let mut cluster = builder(1).start().await.unwrap();
    all_online(&mut cluster, 1).await;
    let w = cluster.workers().await.remove(0);
    w.send(&json!({"op": "exit", "code": 0})).await.unwrap();
    until(&mut cluster, |e| matches!(e, Event::Exit { .. })).await;
    let r = tokio::time::timeout(Duration::from_secs(2), w.request::<_, Value>(&"x"))
        .await
        .expect("a request to a gone worker must not wait for its deadline");
    assert!(r.is_err());
    assert!(cluster.workers().await.is_empty());
}

#[tokio::test]
async fn workers_die_with_their_primary() {
    // A primary process whose workers ignore end-of-stream: only PR_SET_PDEATHSIG can stop them.
    let mut primary = std::process::Command::new(test_worker())
        .env_remove("HERD_CHANNEL_FD")
        .env_remove("NODE_CHANNEL_FD")
        .env("HERD_TEST_WORKERS", "2")
        .env("HERD_TEST_CHILD_MODE", "ignore-eof")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = primary.stdout.take().unwrap();
    let pids = tokio::task::spawn_blocking(move || {
        let mut pids = Vec::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            if let Some(pid) = line.strip_prefix("worker ") {
                pids.push(pid.parse::<u32>().unwrap());
                if pids.len() == 2 {
                    break;
                }
            }
        }
        pids
    });
    let pids = tokio::time::timeout(DEADLINE, pids).await.unwrap().unwrap();
    assert_eq!(pids.len(), 2);
    assert!(pids.iter().all(|p| !is_gone(*p)));
    // A pidfd becomes readable when its process terminates: wait on that, with a deadline.
    let pidfds: Vec<OwnedFd> = pids
        .iter()
        .map(|p| {
            let pid = rustix::process::Pid::from_raw(*p as i32).unwrap();
            rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty())
                .expect("worker is alive before the primary is killed")
        })
        .collect();
    primary.kill().unwrap();
    primary.wait().unwrap();
    let waited = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(1);
        for fd in &pidfds {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            let left = rustix::time::Timespec::try_from(left).unwrap();
            let mut set = [rustix::event::PollFd::new(fd, rustix::event::PollFlags::IN)];
            if rustix::event::poll(&mut set, Some(&left)).unwrap() == 0 {
                return false;
            }
        }
        true
    })
    .await
    .unwrap();
    assert!(waited, "a worker outlived its primary by a second");
    assert!(pids.iter().all(|p| is_gone(*p)));
}

#[tokio::test]
async fn output_is_captured_by_line_and_inherited_fds_arrive_at_their_numbers() {
    use std::os::fd::AsRawFd;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let fd: OwnedFd = listener.into();
    let ours = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap();
    let script = "readlink /proc/$$/fd/3; \
                  [ -S /proc/$$/fd/7 ] && echo channel-at-7; \
                  echo to-stderr >&2; \
                  head -c 20000 /dev/zero | tr '\\0' x; echo; \
                  printf 'crlf\\r\\n'; printf 'no newline at the end'";
    let mut cluster = Cluster::builder()
        .workers(1)
        .program("sh")
        .args(["-c", script])
        .codec(herd::Codec::NodeJson)
        .channel_fd(7)
        .inherit_fd(fd, 3)
        .capture_output(true)
        .start()
        .await
        .unwrap();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    loop {
        match next(&mut cluster).await {
            Event::Output { stream, line, .. } => match stream {
                herd::OutputStream::Stdout => out.push(line),
                herd::OutputStream::Stderr => err.push(line),
            },
            Event::Exit { status, .. } => {
                assert!(status.success(), "{status}");
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        out[0],
        ours.to_string_lossy(),
        "the listener is fd 3 in the worker"
    );
    assert_eq!(out[1], "channel-at-7");
    assert_eq!(
        out[2],
        "x".repeat(herd::MAX_OUTPUT_LINE),
        "long lines come in pieces"
    );
    assert_eq!(out[3], "x".repeat(20000 - herd::MAX_OUTPUT_LINE));
    assert_eq!(out[4], "crlf");
    assert_eq!(out[5], "no newline at the end");
    assert_eq!(out.len(), 6, "{out:?}");
    assert_eq!(err, ["to-stderr"]);
    // Exit was the last event: nothing follows it.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), cluster.next_event())
            .await
            .is_err()
    );
}

#[tokio::test]
async fn descriptor_numbers_for_workers_are_checked() {
    let fd = || -> OwnedFd { std::net::TcpListener::bind("127.0.0.1:0").unwrap().into() };
    for b in [
        Cluster::builder().workers(0).channel_fd(2),
        Cluster::builder()
            .workers(0)
            .channel_fd(3)
            .inherit_fd(fd(), 3),
        Cluster::builder()
            .workers(0)
            .channel_fd(4)
            .inherit_fd(fd(), 4),
        // Beyond any open-file limit (numbers must leave room to park them all above).
        Cluster::builder()
            .workers(0)
            .channel_fd(4)
            .inherit_fd(fd(), i32::MAX - 1),
    ] {
        assert!(b.start().await.is_err());
    }
    // Above 255 is fine when the open-file limit has room (the limit, not 256, is the bound).
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current;
    if limit.is_none_or(|n| n > 400) {
        let b = Cluster::builder()
            .workers(0)
            .channel_fd(4)
            .inherit_fd(fd(), 300);
        b.start().await.unwrap().shutdown().await;
    }
}

#[tokio::test]
async fn a_worker_that_stops_reading_holds_up_no_one_else() {
    // Worker 1 never reads its channel; worker 2 echoes every line straight back.
    let script = "if [ \"$HERD_WORKER_ID\" = 1 ]; then exec sleep 600; \
                  else exec cat <&$NODE_CHANNEL_FD >&$NODE_CHANNEL_FD; fi";
    let limits = herd_wire::Limits {
        send_queue_bytes: 1 << 20,
        ..herd_wire::Limits::default()
    };
    let mut cluster = Cluster::builder()
        .workers(2)
        .program("sh")
        .args(["-c", script])
        .codec(herd::Codec::NodeJson)
        .limits(limits)
        .send_timeout(Duration::from_millis(300))
        .grace(Duration::from_millis(200))
        .start()
        .await
        .unwrap();
    all_online(&mut cluster, 2).await;
    let stuck = cluster.worker(WorkerId(1)).await.unwrap();
    let fine = cluster.worker(WorkerId(2)).await.unwrap();

    // Sends to the stuck worker fill its bounded queue (and the socket), then fail: nothing
    // piles up without bound.
    let big = "x".repeat(1 << 20);
    let mut sent = 0;
    let err = loop {
        match stuck.send(&big).await {
            Ok(()) => sent += 1,
            Err(e) => break e,
        }
        assert!(sent < 64, "64 MB went into a worker that reads nothing");
    };
    assert!(matches!(err, Error::Stalled(_)), "{err}");

    // A broadcast reaches the worker that reads, and returns within the send timeout.
    let t = std::time::Instant::now();
    assert_eq!(cluster.broadcast(&json!({"to": "all"})).await, 1);
    assert!(t.elapsed() < Duration::from_secs(2), "{:?}", t.elapsed());
    assert_eq!(
        message(&mut cluster, WorkerId(2)).await,
        json!({"to": "all"})
    );
    for i in 0..100 {
        fine.send(&json!({"n": i})).await.unwrap();
        assert_eq!(message(&mut cluster, WorkerId(2)).await, json!({"n": i}));
    }
    // The stuck worker is stopped like any other: disconnect, grace, SIGKILL.
    let status = stuck.disconnect().await.unwrap();
    assert_eq!(status.signal, Some(9), "{status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_under_message_load_costs_the_others_nothing() {
    const N: u64 = 2000;
    let mut cluster = builder(4).start().await.unwrap();
    all_online(&mut cluster, 4).await;
    let mut senders = Vec::new();
    for id in 1..=4 {
        let w = cluster.worker(WorkerId(id)).await.unwrap();
        senders.push(tokio::spawn(async move {
            for i in 0..N {
                if w.send(&json!({"n": i})).await.is_err() {
                    return i;
                }
                if id == 1 && i == 200 {
                    w.kill(Signal::KILL).await.unwrap();
                }
            }
            N
        }));
    }
    // Every echo from a live worker arrives, in order, none missing.
    let mut next_seq: HashMap<u64, u64> = HashMap::new();
    let mut victim_exit = None;
    while (2..=4).any(|id| next_seq.get(&id).copied().unwrap_or(0) < N) || victim_exit.is_none() {
        match next(&mut cluster).await {
            Event::Message { worker, message } => {
                let v: Value = message.json().unwrap();
                let want = next_seq.entry(worker.0).or_insert(0);
                assert_eq!(v["echo"]["n"], json!(*want), "worker {worker}");
                *want += 1;
            }
            Event::Exit { worker, status } => {
                assert_eq!(worker, WorkerId(1), "only the victim exits: {status}");
                assert_eq!(status.signal, Some(9));
                victim_exit = Some(status);
            }
            Event::Error { worker, error } => {
                assert_eq!(worker, WorkerId(1), "{}", herd::error::chain(&error));
            }
            _ => {}
        }
    }
    let sent: Vec<u64> = futures_results(senders).await;
    // Sends queued before the death was noticed may have "succeeded" (they were queued, not
    // delivered); once its exit is known, a send to it fails.
    let victim = cluster.worker(WorkerId(1)).await;
    assert!(
        victim.is_none(),
        "the killed worker left the cluster's table"
    );
    assert_eq!(&sent[1..], [N, N, N]);
    cluster.disconnect_all().await;
}

async fn futures_results(handles: Vec<tokio::task::JoinHandle<u64>>) -> Vec<u64> {
    let mut out = Vec::new();
    for h in handles {
        out.push(h.await.unwrap());
    }
    out
}
