//! `herd-cluster` (js/) under another manager than herd: Node's own cluster gives its workers a
//! channel too, so the package must tell herd's primary from another before it waits for an
//! answer, and fail at once, so that one build runs under herd and under Node's cluster or PM2
//! (a migration, a rollback).

use std::path::Path;
use std::process::Command;

#[test]
fn herd_cluster_fails_at_once_in_a_worker_of_nodes_own_cluster() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = Command::new("node")
        .arg(dir.join("tests/npm_apps/under_node_cluster.js"))
        .env("HERD_JS", dir.join("../../js/herd.js"))
        .output()
        .expect("node");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let line = text.lines().next().unwrap_or_default();
    assert!(line.starts_with("HERD_NO_CHANNEL after "), "{line}");
    let ms: f64 = line["HERD_NO_CHANNEL after ".len()..]
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(ms < 100.0, "{line}");
    assert!(line.contains("not herd"), "says why: {line}");
}
