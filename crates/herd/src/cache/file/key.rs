//! How keys of a folder source map to files: `a/b/c` is `<dir>/a/b/c`, each `/`-separated
//! component a folder (or, last, the file). A key never escapes the folder: absolute keys, empty,
//! `.` and `..` components and NUL bytes are refused, as are names reserved for the source's
//! temporary files. The reverse mapping (a path under the folder back to its key) serves scans
//! and the watcher.

use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::cache::source::SourceError;

/// Longest component of a key (file names are limited to 255 bytes).
pub(super) const MAX_COMPONENT: usize = 255;

/// Longest key (well below `PATH_MAX`, leaving room for the folder's own path).
pub(super) const MAX_KEY: usize = 1024;

/// File names starting with this are a `store` in progress, never keys.
pub(super) const TMP_PREFIX: &str = ".herd-tmp-";

/// Why `key` cannot name a file under the folder, if it cannot.
pub(super) fn refusal(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("it is empty");
    }
    if key.len() > MAX_KEY {
        return Some("it is longer than 1024 bytes");
    }
    if key.contains('\0') {
        return Some("it contains a NUL byte");
    }
    if key.starts_with('/') {
        return Some("it is an absolute path");
    }
    for part in key.split('/') {
        match part {
            "" => return Some("it has an empty path component (`//` or a trailing `/`)"),
            "." => return Some("it has a `.` path component"),
            ".." => return Some("it has a `..` path component, which would leave the folder"),
            p if p.len() > MAX_COMPONENT => {
                return Some("a path component is longer than 255 bytes")
            }
            p if p.starts_with(TMP_PREFIX) => {
                return Some("a path component starts with `.herd-tmp-`, reserved for writes")
            }
            _ => {}
        }
    }
    None
}

/// The file holding `key` under `dir`, or the error naming the key and why it is refused.
pub(super) fn key_path(dir: &Path, key: &str) -> Result<PathBuf, SourceError> {
    match refusal(key) {
        Some(why) => Err(SourceError::Failed(format!(
            "key {key:?} refused by the folder source {}: {why}",
            dir.display()
        ))),
        None => Ok(dir.join(key)),
    }
}

/// The key of `path` (under `dir`), if it can be one: `None` outside the folder, for the folder
/// itself, for non-UTF-8 names and for temporary files.
pub(super) fn path_key(dir: &Path, path: &Path) -> Option<String> {
    let rel = path.strip_prefix(dir).ok()?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(name) => parts.push(name.to_str()?),
            _ => return None,
        }
    }
    let key = parts.join("/");
    refusal(&key).is_none().then_some(key)
}

/// Every key (regular file) under `dir`, sorted, and every folder (as paths). Symbolic links
/// under `dir` are not followed (a link to a folder could loop, or lead out): each folder is
/// opened from its parent's descriptor with `O_NOFOLLOW`, so one swapped for a link while it is
/// walked is not entered. Unreadable sub-folders are skipped; an unreadable `dir` is an error.
pub(super) fn walk(dir: &Path) -> std::io::Result<(Vec<String>, Vec<PathBuf>)> {
    walk_from(dir, true)
}

/// [`walk`] of a folder that just appeared under the source's folder: `dir` itself must not be
/// a link either (it was one a moment ago, or is one now).
pub(super) fn walk_new(dir: &Path) -> std::io::Result<(Vec<String>, Vec<PathBuf>)> {
    walk_from(dir, false)
}

fn walk_from(dir: &Path, follow_top: bool) -> std::io::Result<(Vec<String>, Vec<PathBuf>)> {
    use rustix::fs::{FileType, Mode, OFlags};
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let top_flags = if follow_top {
        flags - OFlags::NOFOLLOW
    } else {
        flags
    };
    let top = rustix::fs::open(dir, top_flags, Mode::empty())?;
    let mut keys = Vec::new();
    let mut dirs = Vec::new();
    let mut todo = vec![(top, dir.to_path_buf())];
    while let Some((fd, d)) = todo.pop() {
        let Ok(entries) = rustix::fs::Dir::read_from(&fd) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_bytes();
            if name == b"." || name == b".." {
                continue;
            }
            let path = d.join(std::ffi::OsStr::from_bytes(name));
            match entry.file_type() {
                FileType::Directory => {
                    if let Ok(sub) =
                        rustix::fs::openat(&fd, entry.file_name(), flags, Mode::empty())
                    {
                        dirs.push(path.clone());
                        todo.push((sub, path));
                    }
                }
                FileType::RegularFile => {
                    if let Some(key) = path_key(dir, &path) {
                        keys.push(key);
                    }
                }
                _ => {}
            }
        }
    }
    keys.sort();
    Ok((keys, dirs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_map_to_paths_and_back() {
        let dir = Path::new("/srv/data");
        for key in [
            "a",
            "a:1",
            "a/b/c",
            "user:1/profile",
            ".hidden",
            "a..b",
            "x/..y",
        ] {
            let path = key_path(dir, key).unwrap();
            assert!(path.starts_with(dir), "{key}");
            assert_eq!(path_key(dir, &path).as_deref(), Some(key));
        }
    }

    #[test]
    fn escaping_keys_are_refused_with_a_reason() {
        let dir = Path::new("/srv/data");
        for (key, why) in [
            ("", "empty"),
            ("..", "`..`"),
            ("../etc/passwd", "`..`"),
            ("a/../../b", "`..`"),
            ("/etc/passwd", "absolute"),
            ("a//b", "empty path component"),
            ("a/", "empty path component"),
            ("./a", "`.`"),
            ("a\0b", "NUL"),
            (".herd-tmp-1-x", "reserved"),
        ] {
            let err = key_path(dir, key).unwrap_err().to_string();
            assert!(err.contains(why), "{key:?}: {err}");
            assert!(err.contains(&format!("{key:?}")), "{key:?}: {err}");
        }
        assert!(key_path(dir, &"x".repeat(256)).is_err());
        assert!(key_path(dir, &format!("{}/{}", "x".repeat(255), "y".repeat(255))).is_ok());
        assert!(key_path(dir, &"x/".repeat(600)).is_err());
        assert_eq!(path_key(dir, Path::new("/srv/data")), None);
        assert_eq!(path_key(dir, Path::new("/srv/other/a")), None);
        assert_eq!(
            path_key(dir, Path::new("/srv/data/a/.herd-tmp-1-2-b")),
            None
        );
    }
}
