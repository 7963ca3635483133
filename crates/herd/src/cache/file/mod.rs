//! A [`Source`] backed by files: a folder (one file per key) or a snapshot (one JSON object
//! mapping keys to string values). It needs no server, so it is the embedded default of herd's
//! demo and a stand-in for Redis in development.
//!
//! A folder source maps key `a/b/c` to the file `<dir>/a/b/c` (see [`key`] for what is refused:
//! nothing escapes the folder). It supports `store` (creating sub-folders as needed; atomic by
//! rename) and `delete`, and follows its folder: files edited, created, moved or deleted by
//! anyone become invalidations (see [`watch`]). Files are opened beneath a descriptor of the
//! folder, never through a symbolic link, and only regular files are read, up to a size cap
//! (see [`open`]). A snapshot is read-only and never changes.

mod glob;
mod key;
mod open;
mod watch;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use super::source::{BoxFuture, Invalidation, Loaded, Source, SourceError};
use glob::glob_match;
use key::{key_path, walk, TMP_PREFIX};
use watch::WatchTuning;

/// Values from files: a folder (one file per key, writable, followed for changes) or a JSON
/// snapshot (read-only, unchanging).
pub struct FileSource {
    kind: Kind,
    calls: AtomicU64,
}

enum Kind {
    Folder {
        dir: PathBuf,
        /// The folder's descriptor, which every file is opened beneath.
        folder: Arc<open::Folder>,
        /// The largest file read as a value.
        cap: u64,
        tuning: WatchTuning,
        /// Whether [`Source::invalidations`] was called (it starts the watch, once).
        watching: AtomicBool,
        /// Names temporary files apart when one key is stored twice at once.
        writes: AtomicU64,
    },
    Snapshot {
        path: PathBuf,
        data: Arc<BTreeMap<String, Bytes>>,
    },
}

impl FileSource {
    /// A folder: each regular file under it is a key (its path below the folder, `/`-separated)
    /// holding its contents.
    pub fn folder(path: impl Into<PathBuf>) -> Result<FileSource, SourceError> {
        let path = path.into();
        if !path.is_dir() {
            return Err(SourceError::Unavailable(format!(
                "{} is not a folder",
                path.display()
            )));
        }
        let folder = open::Folder::open(&path)
            .map_err(|e| SourceError::Unavailable(format!("{}: {e}", path.display())))?;
        Ok(FileSource {
            kind: Kind::Folder {
                folder: Arc::new(folder),
                cap: MAX_FILE,
                dir: path,
                tuning: WatchTuning::default(),
                watching: AtomicBool::new(false),
                writes: AtomicU64::new(0),
            },
            calls: AtomicU64::new(0),
        })
    }

    /// The largest file a folder source reads as a value (default and at most 1 GiB, the
    /// hub's own default limit): a larger one is refused from its size, before it is read.
    pub fn max_value(mut self, bytes: u64) -> Self {
        if let Kind::Folder { cap, .. } = &mut self.kind {
            *cap = bytes.min(MAX_FILE);
        }
        self
    }

    /// How a folder's changes are coalesced, to be set before [`Source::invalidations`] starts
    /// the watch (a snapshot ignores it): a burst of events ends after `quiet` without any (50 ms
    /// by default) or `max_delay` after it began (500 ms), and becomes one invalidation of the
    /// keys it touched, or of everything if they are more than `max_keys` (256).
    pub fn watch_bursts(mut self, quiet: Duration, max_delay: Duration, max_keys: usize) -> Self {
        if let Kind::Folder { tuning, .. } = &mut self.kind {
            *tuning = WatchTuning {
                quiet,
                max_delay,
                max_keys,
            };
        }
        self
    }

    /// A snapshot file: one JSON object whose values are strings, read once now.
    pub fn snapshot(path: impl Into<PathBuf>) -> Result<FileSource, SourceError> {
        let path = path.into();
        let text = std::fs::read(&path)
            .map_err(|e| SourceError::Unavailable(format!("{}: {e}", path.display())))?;
        let map: BTreeMap<String, String> = serde_json::from_slice(&text).map_err(|e| {
            SourceError::Failed(format!(
                "{}: not a JSON object of strings: {e}",
                path.display()
            ))
        })?;
        Ok(FileSource::from_map(
            path,
            map.into_iter().map(|(k, v)| (k, Bytes::from(v))).collect(),
        ))
    }

    /// An in-memory snapshot (what [`FileSource::snapshot`] reads), named `path` in logs.
    pub fn from_map(path: impl Into<PathBuf>, data: BTreeMap<String, Bytes>) -> FileSource {
        FileSource {
            kind: Kind::Snapshot {
                path: path.into(),
                data: Arc::new(data),
            },
            calls: AtomicU64::new(0),
        }
    }
}

/// The largest file a folder source reads (1 GiB).
pub const MAX_FILE: u64 = 1 << 30;

/// How long a folder source waits for one file operation before it reports a failure.
const FILE_DEADLINE: Duration = Duration::from_secs(30);

/// Runs the blocking file operation `f` for `key` on tokio's blocking pool, within
/// [`FILE_DEADLINE`]; its refusals and failures as [`SourceError::Failed`] naming `key`.
async fn blocking<T: Send + 'static>(
    key: &str,
    f: impl FnOnce() -> Result<T, open::OpenError> + Send + 'static,
) -> Result<Option<T>, SourceError> {
    let failed = |why: String| SourceError::Failed(format!("key {key:?}: {why}"));
    match tokio::time::timeout(FILE_DEADLINE, tokio::task::spawn_blocking(f)).await {
        Err(_) => Err(failed(format!(
            "its file did not answer within {} s",
            FILE_DEADLINE.as_secs()
        ))),
        Ok(Err(e)) => Err(failed(e.to_string())),
        Ok(Ok(Ok(v))) => Ok(Some(v)),
        Ok(Ok(Err(open::OpenError::Absent))) => Ok(None),
        Ok(Ok(Err(open::OpenError::Refused(why)))) => Err(failed(format!("refused: {why}"))),
        Ok(Ok(Err(open::OpenError::Io(e)))) => Err(failed(e.to_string())),
    }
}

impl Source for FileSource {
    fn describe(&self) -> String {
        match &self.kind {
            Kind::Folder { dir, .. } => format!("folder:{}", dir.display()),
            Kind::Snapshot { path, .. } => format!("snapshot:{}", path.display()),
        }
    }

    fn load<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Loaded>, SourceError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            match &self.kind {
                Kind::Snapshot { data, .. } => Ok(data.get(key).map(|v| Loaded {
                    value: v.clone(),
                    ttl: None,
                })),
                Kind::Folder {
                    dir, folder, cap, ..
                } => {
                    key_path(dir, key)?;
                    let (folder, rel, cap) = (folder.clone(), key.to_owned(), *cap);
                    let v = blocking(key, move || folder.read(&rel, cap)).await?;
                    Ok(v.map(|v| Loaded {
                        value: Bytes::from(v),
                        ttl: None,
                    }))
                }
            }
        })
    }

    fn scan<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<String>, SourceError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let keys: Vec<String> = match &self.kind {
                Kind::Snapshot { data, .. } => data.keys().cloned().collect(),
                Kind::Folder { dir, .. } => {
                    let d = dir.clone();
                    tokio::task::spawn_blocking(move || walk(&d))
                        .await
                        .map_err(|e| SourceError::Failed(format!("{}: {e}", dir.display())))?
                        .map_err(|e| SourceError::Unavailable(format!("{}: {e}", dir.display())))?
                        .0
                }
            };
            Ok(keys
                .into_iter()
                .filter(|k| glob_match(pattern, k))
                .collect())
        })
    }

    fn store<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        _ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<(), SourceError>> {
        Box::pin(async move {
            let Kind::Folder {
                dir,
                folder,
                writes,
                ..
            } = &self.kind
            else {
                return Err(SourceError::Unsupported("store into a snapshot file"));
            };
            self.calls.fetch_add(1, Ordering::Relaxed);
            key_path(dir, key)?;
            let n = writes.fetch_add(1, Ordering::Relaxed);
            let tmp = format!("{TMP_PREFIX}{}-{n}", std::process::id());
            let (folder, rel) = (folder.clone(), key.to_owned());
            match blocking(key, move || folder.store(&rel, &tmp, &value)).await? {
                Some(()) => Ok(()),
                None => Err(SourceError::Failed(format!(
                    "key {key:?}: a folder on its path is not a folder (a file, or a symbolic link, which is not followed)"
                ))),
            }
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, SourceError>> {
        Box::pin(async move {
            let Kind::Folder { dir, folder, .. } = &self.kind else {
                return Err(SourceError::Unsupported("delete from a snapshot file"));
            };
            self.calls.fetch_add(1, Ordering::Relaxed);
            key_path(dir, key)?;
            let (folder, rel) = (folder.clone(), key.to_owned());
            Ok(blocking(key, move || folder.delete(&rel))
                .await?
                .unwrap_or(false))
        })
    }

    /// A folder's changes, debounced and bounded (see [`FileSource::watch_bursts`]); `None` for a snapshot,
    /// on a second call, or if the folder cannot be watched (then changes go unnoticed, as
    /// logged).
    fn invalidations(&self) -> Option<mpsc::Receiver<Invalidation>> {
        let Kind::Folder {
            dir,
            tuning,
            watching,
            ..
        } = &self.kind
        else {
            return None;
        };
        if watching.swap(true, Ordering::AcqRel) {
            return None;
        }
        match watch::watch(dir, *tuning) {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot watch the cache folder: changes made to it will not be seen");
                None
            }
        }
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn folder_round_trip_and_refuses_paths() {
        let dir = std::env::temp_dir().join(format!("herd-file-src-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let src = FileSource::folder(&dir).unwrap();
        src.store("a:1", Bytes::from_static(b"one"), None)
            .await
            .unwrap();
        src.store("a:2", Bytes::from_static(b"two"), None)
            .await
            .unwrap();
        src.store("b:1", Bytes::from_static(b"x"), None)
            .await
            .unwrap();
        assert_eq!(
            src.load("a:1").await.unwrap().unwrap().value,
            Bytes::from_static(b"one")
        );
        assert_eq!(src.load("nope").await.unwrap(), None);
        assert_eq!(src.scan("a:*").await.unwrap(), vec!["a:1", "a:2"]);
        assert!(src.delete("a:1").await.unwrap());
        assert!(!src.delete("a:1").await.unwrap());
        assert!(src.load("../etc/passwd").await.is_err());
        assert!(src.load("..").await.is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn snapshot_is_read_only() {
        let path = std::env::temp_dir().join(format!("herd-snap-{}.json", std::process::id()));
        std::fs::write(&path, r#"{"k1": "v1", "k2": "v2"}"#).unwrap();
        let src = FileSource::snapshot(&path).unwrap();
        assert_eq!(
            src.load("k2").await.unwrap().unwrap().value,
            Bytes::from_static(b"v2")
        );
        assert!(matches!(
            src.store("k3", Bytes::new(), None).await,
            Err(SourceError::Unsupported(_))
        ));
        std::fs::write(&path, "[1,2]").unwrap();
        assert!(FileSource::snapshot(&path).is_err());
        std::fs::remove_file(&path).unwrap();
    }
}
