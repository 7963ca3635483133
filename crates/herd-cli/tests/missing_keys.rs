//! The missing-keys attack against the real `herd` binary (issue 19): a Node worker asks for
//! 300,000 distinct keys that do not exist (a scraper probing URLs), 64 at a time, through the
//! herd-cluster package, on both of its paths (Node's IPC channel, and the addon's cache
//! channel). herd's primary must grow by less than 40 MB: the hub's entries are capped
//! (`CacheConfig::max_entries`) and charged in bytes, and nothing else the primary keeps may
//! grow with the keys. Run with `--nocapture` for the figures.

use std::path::Path;

mod common;

use common::*;
use herd_test_support::process::{rss_kb, TempDir};

/// Distinct missing keys asked.
const KEYS: usize = 300_000;
/// The most herd's primary may grow while they are asked.
const MAX_GROWTH_KB: u64 = 40 * 1024;

/// Runs tests/addon_apps/missing.js with `env`: the primary's growth in kB and the path used.
fn flood(name: &str, env: &str) -> (u64, String) {
    let dir = TempDir::new(name);
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let go = dir.path().join("go");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/addon_apps/missing.js");
    let package = concat!(env!("CARGO_MANIFEST_DIR"), "/../../js");
    let keys = KEYS.to_string();
    let herd = Herd::start(
        name,
        &[
            "-w",
            "1",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--env",
            env,
            "--",
            "node",
            script.to_str().unwrap(),
            package,
            "1000",
            &keys,
            "64",
            go.to_str().unwrap(),
        ],
    );
    let warm = wait_line(
        &herd.out,
        |l| l.contains("warm ") || l.contains("failed "),
        "the worker warmed up",
    );
    assert!(warm.contains("warm "), "{warm}");
    let path = warm.rsplit(' ').next().unwrap().to_string();
    let before = rss_kb(herd.pid());
    std::fs::write(&go, b"").unwrap();
    let mut peak = before;
    let deadline = std::time::Instant::now() + 4 * DEADLINE;
    let done = loop {
        peak = peak.max(rss_kb(herd.pid()));
        match herd.out.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(l) if l.contains("missed ") || l.contains("failed ") => break l,
            _ => {}
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the flood never ended"
        );
    };
    peak = peak.max(rss_kb(herd.pid()));
    assert!(done.ends_with("wrong 0"), "{done}");
    let grown = peak.saturating_sub(before);
    eprintln!("{name}: {KEYS} missing keys ({path} path): herd RSS {before} kB -> peak {peak} kB (+{grown} kB)");
    drop(herd);
    (grown, path)
}

#[test]
fn missing_keys_through_nodes_channel_stay_within_the_budget() {
    let (grown, path) = flood("missing-json", "HERD_NODE_ADDON=off");
    assert_eq!(path, "json");
    assert!(grown < MAX_GROWTH_KB, "herd grew {grown} kB");
}

#[test]
fn missing_keys_through_the_addon_stay_within_the_budget() {
    let (grown, path) = flood("missing-addon", "HERD_TEST_PATH=addon");
    assert_eq!(path, "addon");
    assert!(grown < MAX_GROWTH_KB, "herd grew {grown} kB");
}
