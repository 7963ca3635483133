//! A [`Source`] backed by files: a folder (one file per key, the file name is the key) or a
//! snapshot (one JSON object mapping keys to string values). It needs no server, so it is the
//! embedded default of herd's demo and a stand-in for Redis in development.
//!
//! A folder source supports `store` and `delete` (it writes and removes files, atomically by
//! rename); a snapshot is read-only. Neither reports changes made by others.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::source::{BoxFuture, Loaded, Source, SourceError};

/// Longest key a folder source accepts (file names are limited to 255 bytes).
const MAX_KEY: usize = 255;

/// Values from files: a folder (one file per key, writable) or a JSON snapshot (read-only).
/// Neither reports changes made by others.
pub struct FileSource {
    kind: Kind,
    calls: AtomicU64,
}

enum Kind {
    Folder(PathBuf),
    Snapshot {
        path: PathBuf,
        data: Arc<BTreeMap<String, Bytes>>,
    },
}

impl FileSource {
    /// A folder: each regular file is a key (its name) holding its contents.
    pub fn folder(path: impl Into<PathBuf>) -> Result<FileSource, SourceError> {
        let path = path.into();
        if !path.is_dir() {
            return Err(SourceError::Unavailable(format!(
                "{} is not a folder",
                path.display()
            )));
        }
        Ok(FileSource {
            kind: Kind::Folder(path),
            calls: AtomicU64::new(0),
        })
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

    fn key_path(dir: &Path, key: &str) -> Result<PathBuf, SourceError> {
        if key.is_empty()
            || key.len() > MAX_KEY
            || key == "."
            || key == ".."
            || key.contains('/')
            || key.contains('\0')
        {
            return Err(SourceError::Failed(format!(
                "{key:?} cannot be a file name in a folder source"
            )));
        }
        Ok(dir.join(key))
    }
}

impl Source for FileSource {
    fn describe(&self) -> String {
        match &self.kind {
            Kind::Folder(p) => format!("folder:{}", p.display()),
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
                Kind::Folder(dir) => {
                    let path = Self::key_path(dir, key)?;
                    match tokio::fs::read(&path).await {
                        Ok(v) => Ok(Some(Loaded {
                            value: Bytes::from(v),
                            ttl: None,
                        })),
                        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                        Err(e) => Err(SourceError::Failed(format!("{}: {e}", path.display()))),
                    }
                }
            }
        })
    }

    fn scan<'a>(&'a self, pattern: &'a str) -> BoxFuture<'a, Result<Vec<String>, SourceError>> {
        Box::pin(async move {
            self.calls.fetch_add(1, Ordering::Relaxed);
            let keys: Vec<String> = match &self.kind {
                Kind::Snapshot { data, .. } => data.keys().cloned().collect(),
                Kind::Folder(dir) => {
                    let mut out = Vec::new();
                    let mut rd = tokio::fs::read_dir(dir)
                        .await
                        .map_err(|e| SourceError::Unavailable(format!("{}: {e}", dir.display())))?;
                    while let Some(entry) = rd
                        .next_entry()
                        .await
                        .map_err(|e| SourceError::Failed(format!("{}: {e}", dir.display())))?
                    {
                        let is_file = entry.file_type().await.map(|t| t.is_file());
                        if let (Ok(true), Some(name)) = (is_file, entry.file_name().to_str()) {
                            if !name.starts_with(".herd-tmp-") {
                                out.push(name.to_string());
                            }
                        }
                    }
                    out.sort();
                    out
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
            let Kind::Folder(dir) = &self.kind else {
                return Err(SourceError::Unsupported("store into a snapshot file"));
            };
            self.calls.fetch_add(1, Ordering::Relaxed);
            let path = Self::key_path(dir, key)?;
            let tmp = dir.join(format!(".herd-tmp-{}-{key}", std::process::id()));
            let fail = |e: std::io::Error| SourceError::Failed(format!("{}: {e}", path.display()));
            tokio::fs::write(&tmp, &value).await.map_err(fail)?;
            tokio::fs::rename(&tmp, &path).await.map_err(fail)
        })
    }

    fn delete<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool, SourceError>> {
        Box::pin(async move {
            let Kind::Folder(dir) = &self.kind else {
                return Err(SourceError::Unsupported("delete from a snapshot file"));
            };
            self.calls.fetch_add(1, Ordering::Relaxed);
            let path = Self::key_path(dir, key)?;
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
                Err(e) => Err(SourceError::Failed(format!("{}: {e}", path.display()))),
            }
        })
    }

    fn calls(&self) -> u64 {
        self.calls.load(Ordering::Relaxed)
    }
}

/// Redis's glob matching (`*`, `?`, `[abc]`, `[^a]`, `[a-z]`, `\x`), on bytes.
fn glob_match(pattern: &str, text: &str) -> bool {
    glob(pattern.as_bytes(), text.as_bytes())
}

fn glob(p: &[u8], t: &[u8]) -> bool {
    // Iterative with one backtrack point for the last `*`: linear in practice, never recursive.
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some((pi, ti));
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = class(p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == b'[' {
                        // An unterminated class matches a literal `[`.
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                b'\\' if pi + 1 < p.len() => {
                    if p[pi + 1] == t[ti] {
                        pi += 2;
                        ti += 1;
                        continue;
                    }
                }
                c => {
                    if c == t[ti] {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
            }
        }
        match star {
            Some((sp, st)) => {
                pi = sp + 1;
                ti = st + 1;
                star = Some((sp, st + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the class starting at `p[start] == b'['`: (matched, index after `]`), or
/// `None` if the class is not terminated.
fn class(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = p.get(i) == Some(&b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() {
        if p[i] == b']' && !first {
            return Some((matched != negate, i + 1));
        }
        first = false;
        if p[i] == b'\\' && i + 1 < p.len() {
            matched |= p[i + 1] == c;
            i += 2;
        } else if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            let (lo, hi) = (p[i].min(p[i + 2]), p[i].max(p[i + 2]));
            matched |= (lo..=hi).contains(&c);
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_like_redis() {
        for (p, t, want) in [
            ("*", "", true),
            ("*", "abc", true),
            ("user:*", "user:1", true),
            ("user:*", "users:1", false),
            ("h?llo", "hello", true),
            ("h?llo", "hllo", false),
            ("h[ae]llo", "hallo", true),
            ("h[ae]llo", "hillo", false),
            ("h[^e]llo", "hallo", true),
            ("h[^e]llo", "hello", false),
            ("h[a-b]llo", "hbllo", true),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            ("a\\*", "a*", true),
            ("a\\*", "ab", false),
            ("[", "[", true),
        ] {
            assert_eq!(glob_match(p, t), want, "{p:?} vs {t:?}");
        }
    }

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
