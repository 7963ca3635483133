//! The folder source follows its folder: files edited, created and deleted on disk become
//! invalidations (debounced and bounded), which a hub pushes to every worker. Nested keys map to
//! sub-folders, and no key escapes the folder. Real files in a temporary folder; every wait is on
//! a receiver or an answer, with a deadline.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use herd::cache::{FileSource, Hub, Invalidation, Source, SourceError};
use herd_test_support::cache::*;
use herd_test_support::events::DEADLINE;
use serde_json::json;
use tokio::sync::mpsc::Receiver;

fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herd-file-source-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The next invalidation, within the deadline.
async fn next_inv(rx: &mut Receiver<Invalidation>) -> Invalidation {
    tokio::time::timeout(DEADLINE, rx.recv())
        .await
        .expect("no invalidation within the deadline")
        .expect("the invalidation stream ended")
}

/// Invalidations until one names `key` (none may be `All`); all of them, in order.
async fn until_key(rx: &mut Receiver<Invalidation>, key: &str) -> Vec<Vec<String>> {
    let mut seen = Vec::new();
    loop {
        match next_inv(rx).await {
            Invalidation::Keys(keys) => {
                let done = keys.iter().any(|k| k == key);
                seen.push(keys);
                if done {
                    return seen;
                }
            }
            other => panic!("expected keys up to {key:?}, got {other:?} after {seen:?}"),
        }
    }
}

#[tokio::test]
async fn edits_creations_and_deletions_on_disk_are_invalidations() {
    let dir = folder("events");
    std::fs::write(dir.join("k"), "v1").unwrap();
    std::fs::write(dir.join("gone"), "x").unwrap();
    std::fs::create_dir_all(dir.join("deep/er")).unwrap();
    let src = FileSource::folder(&dir).unwrap();
    let mut rx = src.invalidations().expect("a folder source is watched");
    assert!(src.invalidations().is_none(), "the watch starts once");

    std::fs::write(dir.join("k"), "v2").unwrap();
    until_key(&mut rx, "k").await;

    std::fs::write(dir.join("new"), "n").unwrap();
    until_key(&mut rx, "new").await;

    std::fs::remove_file(dir.join("gone")).unwrap();
    until_key(&mut rx, "gone").await;

    // In a sub-folder that existed, and in one made now.
    std::fs::write(dir.join("deep/er/x"), "x").unwrap();
    until_key(&mut rx, "deep/er/x").await;
    std::fs::create_dir_all(dir.join("fresh/sub")).unwrap();
    std::fs::write(dir.join("fresh/sub/y"), "y").unwrap();
    until_key(&mut rx, "fresh/sub/y").await;

    // Moved in by rename (how editors and `store` save).
    std::fs::write(dir.join(".herd-tmp-editor"), "v3").unwrap();
    std::fs::rename(dir.join(".herd-tmp-editor"), dir.join("k")).unwrap();
    let seen = until_key(&mut rx, "k").await;
    assert!(
        seen.iter().flatten().all(|k| !k.contains(".herd-tmp-")),
        "temporary files are not keys: {seen:?}"
    );

    // Reading is not a change: the loads come back as no invalidation of `k`.
    for _ in 0..5 {
        assert_eq!(
            src.load("k").await.unwrap().unwrap().value,
            Bytes::from_static(b"v3")
        );
    }
    std::fs::write(dir.join("end"), "").unwrap();
    let seen = until_key(&mut rx, "end").await;
    assert!(
        seen.iter().flatten().all(|k| k != "k"),
        "reads were reported as changes: {seen:?}"
    );

    drop(rx);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_burst_of_writes_to_one_file_is_one_or_few_invalidations() {
    let dir = folder("burst");
    std::fs::write(dir.join("hot"), "0").unwrap();
    let src = FileSource::folder(&dir).unwrap();
    let mut rx = src.invalidations().unwrap();
    const WRITES: usize = 200;
    for i in 0..WRITES {
        std::fs::write(dir.join("hot"), i.to_string()).unwrap();
    }
    std::fs::write(dir.join("end"), "").unwrap();
    let seen = until_key(&mut rx, "end").await;
    let hot = seen
        .iter()
        .filter(|ks| ks.iter().any(|k| k == "hot"))
        .count();
    assert!(
        (1..=5).contains(&hot),
        "{WRITES} writes gave {hot} invalidations of the key: {seen:?}"
    );
    for keys in &seen {
        let mut unique = keys.clone();
        unique.dedup();
        assert_eq!(&unique, keys, "each key once per invalidation");
    }
    drop(rx);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn too_many_keys_in_one_burst_invalidate_everything() {
    let dir = folder("bound");
    let src = FileSource::folder(&dir).unwrap().watch_bursts(
        Duration::from_millis(100),
        Duration::from_secs(2),
        8,
    );
    let mut rx = src.invalidations().unwrap();
    for i in 0..50 {
        std::fs::write(dir.join(format!("many:{i}")), "x").unwrap();
    }
    loop {
        match next_inv(&mut rx).await {
            Invalidation::All => break,
            Invalidation::Keys(keys) => assert!(keys.len() <= 8, "past the bound: {keys:?}"),
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(rx);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn nested_keys_are_sub_folders_and_scans_see_them() {
    let dir = folder("nested");
    let src = FileSource::folder(&dir).unwrap();
    for (k, v) in [
        ("a/b/c", "abc"),
        ("a/d", "ad"),
        ("top", "t"),
        ("a:1", "flat"),
    ] {
        src.store(k, Bytes::from(v), None).await.unwrap();
    }
    assert_eq!(std::fs::read(dir.join("a/b/c")).unwrap(), b"abc");
    assert_eq!(
        src.load("a/b/c").await.unwrap().unwrap().value,
        Bytes::from_static(b"abc")
    );
    std::fs::write(dir.join("a/b/e"), "made by hand").unwrap();
    assert_eq!(
        src.load("a/b/e").await.unwrap().unwrap().value,
        Bytes::from_static(b"made by hand")
    );
    assert_eq!(src.scan("a/*").await.unwrap(), ["a/b/c", "a/b/e", "a/d"]);
    assert_eq!(src.scan("a/b/?").await.unwrap(), ["a/b/c", "a/b/e"]);
    assert_eq!(
        src.scan("*").await.unwrap(),
        ["a/b/c", "a/b/e", "a/d", "a:1", "top"]
    );
    // A folder is not a key, nor is a path through a file.
    assert_eq!(src.load("a").await.unwrap(), None);
    assert_eq!(src.load("a/b").await.unwrap(), None);
    assert_eq!(src.load("top/x").await.unwrap(), None);
    assert!(!src.delete("a/b").await.unwrap());
    assert!(src.delete("a/b/c").await.unwrap());
    assert!(!src.delete("a/b/c").await.unwrap());
    assert_eq!(src.load("a/b/c").await.unwrap(), None);
    assert_eq!(src.scan("a/*").await.unwrap(), ["a/b/e", "a/d"]);
    // Overwrites replace the file whole; no temporary file is left behind.
    src.store("a/d", Bytes::from_static(b"ad2"), None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(dir.join("a/d")).unwrap(), b"ad2");
    let names: Vec<_> = std::fs::read_dir(dir.join("a"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert!(
        names.iter().all(|n| !n.starts_with(".herd-tmp-")),
        "{names:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn keys_that_would_escape_the_folder_are_refused() {
    let base = folder("escape");
    let dir = base.join("inner");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(base.join("outside"), "secret").unwrap();
    let src = FileSource::folder(&dir).unwrap();
    let outside = base.join("outside").display().to_string();
    for (key, why) in [
        ("../outside", "`..`"),
        ("a/../../outside", "`..`"),
        ("..", "`..`"),
        (outside.as_str(), "absolute"),
        ("/etc/passwd", "absolute"),
        ("", "empty"),
        ("a//b", "empty path component"),
        ("a/", "empty path component"),
        ("./a", "`.`"),
        ("a\0b", "NUL"),
    ] {
        let check = |what: &str, r: Result<(), SourceError>| match r {
            Err(SourceError::Failed(msg)) => {
                assert!(msg.contains(&format!("{key:?}")), "{what} {key:?}: {msg}");
                assert!(msg.contains(why), "{what} {key:?}: {msg}");
            }
            other => panic!("{what} {key:?} was not refused: {other:?}"),
        };
        check("load", src.load(key).await.map(drop));
        check(
            "store",
            src.store(key, Bytes::from_static(b"x"), None).await,
        );
        check("delete", src.delete(key).await.map(drop));
    }
    assert_eq!(std::fs::read(base.join("outside")).unwrap(), b"secret");
    assert_eq!(
        std::fs::read_dir(&dir).unwrap().count(),
        0,
        "nothing written"
    );
    std::fs::remove_dir_all(&base).unwrap();
}

#[tokio::test]
async fn a_snapshot_stays_read_only_and_unwatched() {
    let dir = folder("snapshot");
    let path = dir.join("snap.json");
    std::fs::write(&path, r#"{"k": "v1"}"#).unwrap();
    let src = FileSource::snapshot(&path).unwrap();
    assert!(src.invalidations().is_none());
    assert!(matches!(
        src.store("k", Bytes::new(), None).await,
        Err(SourceError::Unsupported(_))
    ));
    assert!(matches!(
        src.delete("k").await,
        Err(SourceError::Unsupported(_))
    ));
    std::fs::write(&path, r#"{"k": "v2"}"#).unwrap();
    assert_eq!(
        src.load("k").await.unwrap().unwrap().value,
        Bytes::from_static(b"v1"),
        "read once, at start"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Replaces `path`'s contents at once, as an editor saving would.
fn save(path: &Path, text: &str) {
    let tmp = path.with_file_name(".editor-save");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn a_value_edited_on_disk_is_read_fresh_through_the_hub_and_every_worker() {
    let dir = folder("hub");
    std::fs::create_dir_all(dir.join("cfg")).unwrap();
    std::fs::write(dir.join("cfg/k"), "v1").unwrap();
    let hub = Hub::new(FileSource::folder(&dir).unwrap(), quiet());
    let (mut cluster, ids) = start(&hub, 2).await;
    let get = json!({"op": "cache_get", "key": "cfg/k"});

    // Both workers hold the value in their local views, and the hub in its store.
    ask_all_ok(&mut cluster, &ids, get.clone()).await;
    for &id in &ids {
        let v = ask_ok(&mut cluster, id, get.clone()).await;
        assert_eq!(v["value"]["text"], json!("v1"));
        assert_eq!(v["value"]["local"], json!(true), "{id}");
    }
    assert_eq!(hub.get("cfg/k").await.unwrap().unwrap(), "v1");
    let before = hub.stats();

    // Edited on disk, by nobody herd knows of.
    save(&dir.join("cfg/k"), "v2");
    for &id in &ids {
        wait_for(&mut cluster, id, &get, |v| {
            v["value"]["text"] == json!("v2")
        })
        .await;
    }
    assert_eq!(hub.get("cfg/k").await.unwrap().unwrap(), "v2");
    let after = hub.stats();
    assert!(after.invalidations > before.invalidations, "{after:?}");
    assert!(
        after.loads > before.loads,
        "read again from the file: {after:?}"
    );

    // Deleted on disk.
    std::fs::remove_file(dir.join("cfg/k")).unwrap();
    for &id in &ids {
        wait_for(&mut cluster, id, &get, |v| {
            v["value"]["found"] == json!(false)
        })
        .await;
    }
    assert_eq!(hub.get("cfg/k").await.unwrap(), None);

    cluster.disconnect_all().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Reading a file (the hub's own load) changes only its access time: no invalidation. It was
/// one: with relatime the first read after a write updates the access time, inotify reports
/// IN_ATTRIB, and a value just loaded was dropped again from the hub and every worker.
#[tokio::test]
async fn a_read_or_a_change_of_times_is_not_an_invalidation() {
    let dir = folder("attrib");
    std::fs::write(dir.join("read"), "v").unwrap();
    let src = FileSource::folder(&dir).unwrap();
    let mut rx = src.invalidations().unwrap();
    // Opened to read, as the hub does; its times changed through it (as a read's access time).
    let file = std::fs::File::open(dir.join("read")).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(60);
    file.set_times(
        std::fs::FileTimes::new()
            .set_accessed(later)
            .set_modified(later),
    )
    .unwrap();
    drop(file);
    // A real change after it: the first invalidation must name it alone.
    std::fs::write(dir.join("changed"), "v").unwrap();
    let seen = until_key(&mut rx, "changed").await;
    assert!(
        seen.iter().flatten().all(|k| k == "changed"),
        "only the written file: {seen:?}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
