//! Hardening (issue 19, item 4): a folder source never leaves its folder and never blocks.
//! Symbolic links (to a secret file, to a folder outside, to `/dev/zero`) and special files
//! (FIFOs) are refused with an error naming the key; a worker's `set` through a linked folder
//! writes nothing outside; hundreds of FIFOs hold no thread, and a plain key still loads at once.

use std::os::unix::fs::symlink;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herd::cache::{FileSource, Source, SourceError};

fn folder(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("herd-file-hostile-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn refused(r: Result<Option<herd::cache::Loaded>, SourceError>, key: &str) -> String {
    match r {
        Err(e) => {
            let text = e.to_string();
            assert!(text.contains(key), "the error names {key:?}: {text}");
            text
        }
        Ok(v) => panic!("{key} was served: {:?}", v.map(|l| l.value.len())),
    }
}

#[tokio::test]
async fn links_out_of_the_folder_are_refused_and_never_written_through() {
    let dir = folder("links");
    let outside = folder("links-outside");
    let secret = outside.join("shadow");
    std::fs::write(&secret, "root:secret-hash").unwrap();
    symlink(&secret, dir.join("shadow")).unwrap();
    symlink(&outside, dir.join("out")).unwrap();
    symlink("/dev/zero", dir.join("zero")).unwrap();
    // A link inside the folder is refused too: which file a key names must not depend on links.
    std::fs::write(dir.join("real"), "inside").unwrap();
    symlink(dir.join("real"), dir.join("alias")).unwrap();
    let src = FileSource::folder(&dir).unwrap();
    let text = refused(src.load("shadow").await, "shadow");
    assert!(text.contains("symbolic link"), "{text}");
    assert!(!text.contains("secret-hash"));
    refused(src.load("out/shadow").await, "out/shadow");
    refused(src.load("alias").await, "alias");
    let started = Instant::now();
    refused(src.load("zero").await, "zero");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "/dev/zero was read"
    );
    // A set through the linked folder writes nothing outside.
    let r = src
        .store("out/planted", Bytes::from_static(b"x"), None)
        .await;
    assert!(r.is_err(), "stored through a link");
    assert!(
        !outside.join("planted").exists(),
        "a set wrote outside the folder"
    );
    // A delete through it removes nothing outside; a delete of a link removes only the link.
    assert!(src.delete("out/shadow").await.is_err() || secret.exists());
    assert!(
        secret.exists(),
        "a delete removed a file outside the folder"
    );
    assert!(src.delete("shadow").await.unwrap());
    assert!(secret.exists());
    // Plain files and nested keys still work.
    assert_eq!(
        src.load("real").await.unwrap().unwrap().value,
        Bytes::from_static(b"inside")
    );
    src.store("a/b/c", Bytes::from_static(b"nested"), None)
        .await
        .unwrap();
    assert_eq!(std::fs::read(dir.join("a/b/c")).unwrap(), b"nested");
    assert_eq!(src.load("missing").await.unwrap(), None);
    assert_eq!(src.load("a/b").await.unwrap(), None, "a folder is no key");
    assert!(src.delete("a/b/c").await.unwrap());
    std::fs::remove_dir_all(&dir).unwrap();
    std::fs::remove_dir_all(&outside).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_fifos_hold_no_thread_and_a_plain_key_still_loads() {
    let dir = folder("fifos");
    let n = 600; // more than tokio's 512 blocking threads
    for i in 0..n {
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join(format!("fifo{i}")),
            rustix::fs::FileType::Fifo,
            rustix::fs::Mode::from_raw_mode(0o644),
            0,
        )
        .unwrap();
    }
    std::fs::write(dir.join("plain"), "ok").unwrap();
    let src = std::sync::Arc::new(FileSource::folder(&dir).unwrap());
    let mut all = tokio::task::JoinSet::new();
    for i in 0..n {
        let src = src.clone();
        all.spawn(async move {
            let key = format!("fifo{i}");
            let text = refused(src.load(&key).await, &key);
            assert!(text.contains("not a regular file"), "{text}");
        });
    }
    let done = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(r) = all.join_next().await {
            r.unwrap();
        }
    })
    .await;
    assert!(done.is_ok(), "gets of FIFOs blocked");
    let plain = tokio::time::timeout(Duration::from_secs(5), src.load("plain"))
        .await
        .expect("a plain key loads at once");
    assert_eq!(plain.unwrap().unwrap().value, Bytes::from_static(b"ok"));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn a_file_over_the_cap_is_refused_from_its_size() {
    let dir = folder("cap");
    let f = std::fs::File::create(dir.join("big")).unwrap();
    f.set_len(10 << 30).unwrap(); // sparse: 10 GiB that take no disk
    std::fs::write(dir.join("small"), vec![b'v'; 1000]).unwrap();
    let src = FileSource::folder(&dir).unwrap().max_value(1 << 20);
    let started = Instant::now();
    let text = refused(src.load("big").await, "big");
    assert!(text.contains("more than"), "{text}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "the file was read"
    );
    assert_eq!(src.load("small").await.unwrap().unwrap().value.len(), 1000);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// inotify watches this process holds (every `inotify wd:` line of its inotify descriptors).
fn inotify_watches() -> usize {
    let mut n = 0;
    for fd in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let is_inotify =
            std::fs::read_link(fd.path()).is_ok_and(|t| t.to_string_lossy().contains("inotify"));
        if is_inotify {
            let info =
                std::fs::read_to_string(PathBuf::from("/proc/self/fdinfo").join(fd.file_name()))
                    .unwrap_or_default();
            n += info
                .lines()
                .filter(|l| l.starts_with("inotify wd:"))
                .count();
        }
    }
    n
}

/// A link to a big tree (`/usr`) in the folder is not watched: the folder's watcher holds a
/// watch per folder of its own, not one per folder of the tree the link names (which would
/// spend the user's inotify watches, a limit shared by every program of that user).
#[tokio::test]
async fn the_folder_watcher_does_not_follow_links() {
    let dir = folder("watch-links");
    std::fs::create_dir_all(dir.join("a/b")).unwrap();
    symlink("/usr", dir.join("usr")).unwrap();
    let before = inotify_watches();
    let src = FileSource::folder(&dir).unwrap();
    let _rx = src.invalidations().expect("the folder is watched");
    let watches = inotify_watches() - before;
    assert!(
        watches <= 3,
        "{watches} inotify watches for a folder of 3 (the link to /usr followed?)"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// The same when the link is swapped in for a folder just made: folders that appear and are
/// replaced by links to `/usr` before the watcher looks at them (a local user racing the
/// watcher, 200 times) cost at most a watch or two each, never a watch per folder of `/usr`.
#[tokio::test]
async fn a_folder_swapped_for_a_link_while_it_is_watched_is_not_followed() {
    let dir = folder("watch-race");
    let before = inotify_watches();
    let src = FileSource::folder(&dir).unwrap();
    let _rx = src.invalidations().expect("the folder is watched");
    let rounds = 200;
    for i in 0..rounds {
        let d = dir.join(format!("d{i}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::remove_dir(&d).unwrap();
        symlink("/usr", &d).unwrap();
    }
    // The watcher catches up with the events (watching, for the old code, all of /usr).
    let mut peak = 0;
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && peak <= 2 * rounds {
        peak = peak.max(inotify_watches() - before);
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        peak <= 2 * rounds,
        "{peak} inotify watches after {rounds} folders swapped for links to /usr"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
