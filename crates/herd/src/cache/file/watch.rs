//! Following a folder source's folder: file system events (inotify, FSEvents, kqueue, through
//! `notify`) become [`Invalidation`]s for the hub, which pushes them to every worker.
//!
//! Events are debounced: a burst (events with less than [`WatchTuning::quiet`] between them,
//! and at most [`WatchTuning::max_delay`] long, so a file written without pause is still reported)
//! becomes one [`Invalidation::Keys`] naming each changed key once. Bounded: a burst touching more
//! than [`WatchTuning::max_keys`] keys becomes one [`Invalidation::All`] instead, as does anything
//! the watcher cannot map to keys (a folder moved or deleted, an event queue overflow, a watch
//! error). Reads (`open`, `close` without writing) are ignored, so the hub's own loads never come
//! back as changes.
//!
//! The debouncing runs on a thread of its own (no runtime needed); it ends, dropping the watch,
//! once the receiver is dropped.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use notify::event::{AccessKind, AccessMode, ModifyKind};
use notify::{Event, EventKind, RecursiveMode, Watcher};
use tokio::sync::mpsc;

use super::key::{path_key, walk, walk_new};
use crate::cache::source::Invalidation;

/// How a folder source coalesces file system events into invalidations.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct WatchTuning {
    /// A burst ends after this long without events (default 50 ms).
    pub(super) quiet: Duration,
    /// A burst ends after this long even if events keep coming (default 500 ms).
    pub(super) max_delay: Duration,
    /// More distinct keys than this in one burst are sent as [`Invalidation::All`] (default 256).
    pub(super) max_keys: usize,
}

impl Default for WatchTuning {
    fn default() -> WatchTuning {
        WatchTuning {
            quiet: Duration::from_millis(50),
            max_delay: Duration::from_millis(500),
            max_keys: 256,
        }
    }
}

/// Invalidations waiting for the hub; past this the debouncer waits (events keep coalescing).
const QUEUE: usize = 64;

/// How often an idle debouncer checks whether its receiver is gone.
const IDLE_CHECK: Duration = Duration::from_secs(1);

/// Starts watching `dir` and every folder under it: the receiver of its invalidations.
pub(super) fn watch(
    dir: &Path,
    tuning: WatchTuning,
) -> notify::Result<mpsc::Receiver<Invalidation>> {
    // Events name canonical paths on some platforms (macOS's /private/var): match them.
    let dir = dir.canonicalize()?;
    let (raw_tx, raw_rx) = channel();
    // Links are not followed: a link in the folder to `/` must not make herd watch (and spend
    // the user's inotify watches on) the whole filesystem. Keys never go through links either.
    // Each folder is watched on its own (not recursively): a recursive watch walks a new folder
    // from its path, and a folder swapped for a link just before that walk took all of the
    // link's tree. The follower adds folders that appear, once `lstat` says they are folders,
    // and walks them without following links. (A folder swapped for a link between that
    // `lstat` and its watch still gets one watch, on the link's target: notify has no
    // IN_DONT_FOLLOW.)
    let mut watcher = notify::RecommendedWatcher::new(
        raw_tx,
        notify::Config::default().with_follow_symlinks(false),
    )?;
    watcher.watch(&dir, RecursiveMode::NonRecursive)?;
    // Folders known now; a later event on one of them, gone, cannot be mapped to its keys.
    let dirs = walk(&dir).map(|(_, d)| d).unwrap_or_default();
    let (tx, rx) = mpsc::channel(QUEUE);
    let mut follower = Follower {
        dir,
        tuning,
        dirs: HashSet::new(),
        watcher,
    };
    // One not watched is warned about; nothing is cached yet, so there is nothing to invalidate.
    let _ = follower.watch_dirs(dirs);
    std::thread::Builder::new()
        .name("herd-file-watch".into())
        .spawn(move || follower.run(raw_rx, tx))
        .map_err(notify::Error::io)?;
    Ok(rx)
}

struct Follower {
    dir: PathBuf,
    tuning: WatchTuning,
    /// Folders under `dir` (they hold keys; one moved or deleted changes all of those), each
    /// watched.
    dirs: HashSet<PathBuf>,
    /// The watch (dropped with the follower).
    watcher: notify::RecommendedWatcher,
}

/// What one burst changed.
#[derive(Default)]
struct Burst {
    keys: BTreeSet<String>,
    all: bool,
}

impl Follower {
    /// Watches each of `dirs` (folders `walk` found, so no links) on its own. A folder that
    /// went away meanwhile is skipped; one swapped for a link since costs one watch, on the
    /// link's target (and its walk does not enter the link), not one per folder under it.
    /// Whether every one is watched: a folder that cannot be (out of inotify watches, say) is
    /// warned about, and its changes can be missed, so the caller invalidates everything.
    fn watch_dirs(&mut self, dirs: Vec<PathBuf>) -> bool {
        let mut all = true;
        for d in dirs {
            if let Err(e) = self.watcher.watch(&d, RecursiveMode::NonRecursive) {
                if matches!(e.kind, notify::ErrorKind::PathNotFound) {
                    continue;
                }
                tracing::warn!(dir = %d.display(), error = %e, "folder not watched: its changes may be missed");
                all = false;
                continue;
            }
            self.dirs.insert(d);
        }
        all
    }

    fn run(mut self, raw: Receiver<notify::Result<Event>>, tx: mpsc::Sender<Invalidation>) {
        loop {
            let first = match raw.recv_timeout(IDLE_CHECK) {
                Ok(e) => e,
                Err(RecvTimeoutError::Timeout) if tx.is_closed() => return,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let started = Instant::now();
            let mut burst = Burst::default();
            self.add(&mut burst, first);
            let mut open = true;
            while open {
                let left = self
                    .tuning
                    .quiet
                    .min(self.tuning.max_delay.saturating_sub(started.elapsed()));
                if left.is_zero() {
                    break;
                }
                match raw.recv_timeout(left) {
                    Ok(e) => self.add(&mut burst, e),
                    Err(RecvTimeoutError::Timeout) => break,
                    Err(RecvTimeoutError::Disconnected) => open = false,
                }
            }
            let inv = if burst.all {
                Invalidation::All
            } else if burst.keys.is_empty() {
                continue;
            } else {
                Invalidation::Keys(burst.keys.into_iter().collect())
            };
            tracing::debug!(dir = %self.dir.display(), ?inv, "folder changed");
            if tx.blocking_send(inv).is_err() || !open {
                return;
            }
        }
    }

    fn add(&mut self, burst: &mut Burst, event: notify::Result<Event>) {
        if burst.all {
            return;
        }
        let event = match event {
            Ok(e) => e,
            Err(e) => {
                tracing::warn!(dir = %self.dir.display(), error = %e, "folder watch error: invalidating everything");
                burst.all = true;
                return;
            }
        };
        if event.need_rescan() {
            burst.all = true;
            return;
        }
        match event.kind {
            // Reads, including the hub's own loads.
            EventKind::Access(AccessKind::Close(AccessMode::Write)) => {}
            EventKind::Access(_) => return,
            // Attributes only (inotify's IN_ATTRIB): the content is the same. A read updates the
            // access time (relatime: the first read after a write), so the hub's own load of a
            // new file would otherwise invalidate what it just loaded.
            EventKind::Modify(ModifyKind::Metadata(_)) => return,
            _ => {}
        }
        for path in &event.paths {
            self.add_path(burst, path);
            if burst.all {
                return;
            }
        }
        if burst.keys.len() > self.tuning.max_keys {
            burst.all = true;
            burst.keys.clear();
        }
    }

    fn add_path(&mut self, burst: &mut Burst, path: &Path) {
        if path == self.dir {
            // The folder itself (deleted, moved, or its own metadata).
            burst.all = !self.dir.is_dir() || burst.all;
            return;
        }
        if !path.starts_with(&self.dir) {
            return;
        }
        match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => {
                // A folder appeared (made, or moved in): whatever it holds is new. Its files may
                // predate the watch on it, so list them.
                if !self.watch_dirs(vec![path.to_path_buf()]) {
                    burst.all = true;
                }
                let (Some(prefix), Ok((keys, dirs))) = (path_key(&self.dir, path), walk_new(path))
                else {
                    return;
                };
                if !self.watch_dirs(dirs) {
                    burst.all = true;
                }
                burst
                    .keys
                    .extend(keys.into_iter().map(|k| format!("{prefix}/{k}")));
            }
            _ if self.dirs.remove(path) => {
                // A folder went away (or became a file): its keys are unknown now.
                let _ = self.watcher.unwatch(path);
                let gone: Vec<PathBuf> = self
                    .dirs
                    .iter()
                    .filter(|d| d.starts_with(path))
                    .cloned()
                    .collect();
                for d in gone {
                    let _ = self.watcher.unwatch(&d);
                    self.dirs.remove(&d);
                }
                burst.all = true;
            }
            _ => {
                if let Some(key) = path_key(&self.dir, path) {
                    burst.keys.insert(key);
                }
            }
        }
    }
}
