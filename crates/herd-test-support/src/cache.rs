//! What the cache tests share: a cluster of test workers (or Node workers) with a hub, and
//! asking them to run cache commands (the test worker's `cache_*` commands).

use std::collections::BTreeMap;
use std::path::Path;

use herd::cache::{CacheConfig, Hub, Progress};
use herd::{Cluster, ClusterBuilder, Event, WorkerId};
use serde_json::Value;

use crate::events::next;

/// Starts `n` workers from `builder` with `hub` and waits until they are all online.
async fn start_with(builder: ClusterBuilder, hub: &Hub, n: usize) -> (Cluster, Vec<WorkerId>) {
    let mut cluster = builder.workers(n).cache(hub.clone()).start().await.unwrap();
    let mut ids = Vec::new();
    while ids.len() < n {
        if let Event::Online { worker } = next(&mut cluster).await {
            ids.push(worker);
        }
    }
    ids.sort();
    (cluster, ids)
}

/// `n` herd test workers (Rust, binary codec) serving cache commands.
pub async fn start(hub: &Hub, n: usize) -> (Cluster, Vec<WorkerId>) {
    let builder = Cluster::builder()
        .program(crate::test_worker())
        .args(Vec::<String>::new())
        .env("HERD_TEST_MODE", "echo");
    start_with(builder, hub, n).await
}

/// `n` Node workers running `script` (herd's tests/node/cache_worker.js: js/herd.js's cache).
///
/// The workers use the package's json path (Node's IPC channel): `HERD_NODE_ADDON=off`, so a
/// native addon built into js/ by an earlier install does not change what these tests see. The
/// addon path has its own tests (herd-cli's node_addon.rs).
pub async fn start_node(hub: &Hub, n: usize, script: &Path) -> (Cluster, Vec<WorkerId>) {
    let builder = Cluster::builder()
        .program("node")
        .args([script])
        .codec(herd::Codec::NodeJson)
        .env(herd::env::HERD_NODE_ADDON, "off");
    start_with(builder, hub, n).await
}

/// `n` Node-json workers that are only `sh` (a peer that never reads): each runs `setup`, then
/// writes `calls` cache calls `{"cmd":"NODE_HERD_CACHE","id":N,"data":DATA}` to its channel
/// (ids from 1), reads no reply and sleeps. `data` is a `printf` format, filled from `args`
/// (shell words: `$i` is the call's index from 0); it must not contain `'`.
pub async fn unread_calls(
    hub: &Hub,
    n: usize,
    calls: usize,
    (setup, data, args): (&str, &str, &str),
) -> Cluster {
    let script = format!(
        r#"{setup}
           i=0; while [ $i -lt {calls} ]; do
             printf '{{"cmd":"NODE_HERD_CACHE","id":%d,"data":{data}}}\n' $((i+1)) {args}
             i=$((i+1))
           done >&3
           exec sleep 120"#
    );
    Cluster::builder()
        .workers(n)
        .program("sh")
        .args(["-c", &script])
        .codec(herd::Codec::NodeJson)
        .grace(std::time::Duration::from_millis(200))
        .cache(hub.clone())
        .start()
        .await
        .unwrap()
}

/// Sends `op` to every worker in `ids` at once and collects one answer from each.
pub async fn ask_all(
    cluster: &mut Cluster,
    ids: &[WorkerId],
    op: Value,
) -> BTreeMap<WorkerId, Value> {
    for id in ids {
        cluster.worker(*id).await.unwrap().send(&op).await.unwrap();
    }
    let mut out = BTreeMap::new();
    while out.len() < ids.len() {
        match next(cluster).await {
            Event::Message { worker, message } => {
                out.insert(worker, message.json().unwrap());
            }
            Event::Error { worker, error } => {
                panic!("worker {worker}: {}", herd::error::chain(&error))
            }
            Event::Exit { worker, status } => panic!("worker {worker} exited: {status}"),
            _ => {}
        }
    }
    out
}

/// [`ask_all`], failing on any worker's cache error.
pub async fn ask_all_ok(
    cluster: &mut Cluster,
    ids: &[WorkerId],
    op: Value,
) -> BTreeMap<WorkerId, Value> {
    let out = ask_all(cluster, ids, op).await;
    for (worker, v) in &out {
        assert!(v.get("cache_error").is_none(), "worker {worker}: {v}");
    }
    out
}

/// Sends `op` to worker `id` and returns its answer.
pub async fn ask(cluster: &mut Cluster, id: WorkerId, op: Value) -> Value {
    ask_all(cluster, &[id], op).await.remove(&id).unwrap()
}

/// [`ask`], failing on the worker's cache error.
pub async fn ask_ok(cluster: &mut Cluster, id: WorkerId, op: Value) -> Value {
    ask_all_ok(cluster, &[id], op).await.remove(&id).unwrap()
}

/// Asks `id` until `done` holds for its answer, within the deadline.
pub async fn wait_for(
    cluster: &mut Cluster,
    id: WorkerId,
    op: &Value,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = tokio::time::Instant::now() + crate::events::DEADLINE;
    loop {
        let v = ask_ok(cluster, id, op.clone()).await;
        if done(&v) {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never happened: {v}"
        );
        tokio::task::yield_now().await;
    }
}

/// The test worker's checksum of a value (`sum` in its answers).
pub fn checksum(b: &[u8]) -> u64 {
    b.iter()
        .fold(0u64, |a, &x| a.wrapping_mul(31).wrapping_add(u64::from(x)))
}

/// The default cache config without progress output.
pub fn quiet() -> CacheConfig {
    let mut config = CacheConfig::default();
    config.progress = Progress::Off;
    config
}
