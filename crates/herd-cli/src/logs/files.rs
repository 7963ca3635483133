//! Log files (`--log-file`, `--out-file`, `--err-file`): the workers' lines as herd prints them,
//! written by a [`Sink`] of their own (thread `herd-logfile`, its own byte budget), so a slow
//! disk never holds up herd, its stdout or its workers: past the budget lines are dropped and
//! counted (`herd status`'s output_dropped).
//!
//! Rotation is the `file-rotate` crate's: once a file passes `--log-max-size`, at a batch of
//! whole lines, it becomes `PATH.1` (the older ones move up to `PATH.N`, `--log-keep`, and the
//! oldest goes), so no line is cut, lost or written twice. SIGUSR1 reopens every file (for
//! logrotate's `create` mode, which moves the file away first). Files are opened without
//! following a symbolic link (`O_NOFOLLOW`), mode 0640, close-on-exec; one that cannot be
//! opened is said so (once per failure) and its lines are counted as dropped until it can be,
//! retried at most once a second. The crate panics where the file system surprises it (a
//! rotated file removed behind its back): such a write is caught, counted as dropped, and the
//! file is opened afresh.

use std::fs::OpenOptions;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use file_rotate::compression::Compression;
use file_rotate::suffix::AppendCount;
use file_rotate::{ContentLimit, FileRotate};

use crate::exit::{Context, Error, Result};
use crate::sink::{Dest, Sink, Stream};

/// How often a file that cannot be opened is tried again.
const RETRY: Duration = Duration::from_secs(1);

fn options() -> OpenOptions {
    let mut o = OpenOptions::new();
    // file-rotate needs read, create and append.
    o.read(true)
        .create(true)
        .append(true)
        .mode(0o640)
        .custom_flags(libc_flags());
    o
}

/// No symbolic link followed; a FIFO put in a file's place fails a write (EAGAIN) rather than
/// blocking the writer for good.
fn libc_flags() -> i32 {
    use rustix::fs::OFlags;
    (OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK).bits() as i32
}

/// Opens `path` as a log file would be, to say at once what is wrong with it; and checks that
/// nothing but regular files (or nothing) stands where its rotated copies go (file-rotate
/// panics on a directory there at every rotation).
fn probe(path: &Path, keep: usize) -> std::io::Result<()> {
    let f = options().open(path)?;
    if !f.metadata()?.is_file() {
        return Err(std::io::Error::other("not a regular file"));
    }
    for n in 1..=keep {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{n}"));
        let copy = Path::new(&name);
        match std::fs::symlink_metadata(copy) {
            Ok(m) if !m.is_file() => {
                return Err(std::io::Error::other(format!(
                    "{} is in the way of rotation: not a regular file",
                    copy.display()
                )))
            }
            _ => {}
        }
    }
    Ok(())
}

struct Rotating {
    path: PathBuf,
    max: u64,
    keep: usize,
    file: Option<FileRotate<AppendCount>>,
    /// When it last failed to open, and whether that was said.
    failed: Option<Instant>,
}

impl Rotating {
    fn open(&mut self) {
        self.file = None;
        if let Err(e) = probe(&self.path, self.keep) {
            if self.failed.is_none() {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot open the log file: its lines are dropped until it can be");
            }
            self.failed = Some(Instant::now());
            return;
        }
        let (path, keep, max) = (self.path.clone(), self.keep, self.max as usize);
        let made = std::panic::catch_unwind(move || {
            FileRotate::new(
                path,
                AppendCount::new(keep),
                ContentLimit::BytesSurpassed(max),
                Compression::None,
                Some(options()),
            )
        });
        match made {
            Ok(f) => {
                if self.failed.take().is_some() {
                    tracing::info!(file = %self.path.display(), "log file open again");
                }
                self.file = Some(f);
            }
            Err(_) => self.failed = Some(Instant::now()),
        }
    }

    fn write(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        if self.file.is_none() && self.failed.is_some_and(|t| t.elapsed() >= RETRY) {
            self.open();
        }
        let Some(f) = self.file.as_mut() else {
            return Err(std::io::Error::other("the log file is not open"));
        };
        use std::io::Write;
        let wrote = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            f.write_all(bytes).and_then(|()| f.flush())
        }));
        // file-rotate opens the next file after a rotation and, if that fails, writes nowhere
        // without saying so: the file must be there, a regular file, after each write.
        let there = std::fs::symlink_metadata(&self.path).is_ok_and(|m| m.is_file());
        match wrote {
            Ok(r) if there => r,
            other => {
                if self.failed.is_none() {
                    tracing::warn!(file = %self.path.display(), "log rotation failed: lines are dropped until the file opens again (tried every second)");
                }
                self.file = None;
                self.failed = Some(Instant::now());
                match other {
                    Ok(Err(e)) => Err(e),
                    _ => Err(std::io::Error::other("log rotation failed")),
                }
            }
        }
    }
}

/// The log files and which stream goes to which.
struct Files {
    files: Vec<Rotating>,
    /// Indexes into `files` for each stream.
    out: Vec<usize>,
    err: Vec<usize>,
}

impl Dest for Files {
    fn write(&mut self, stream: Stream, bytes: &[u8]) -> std::io::Result<()> {
        let which = match stream {
            Stream::Out => &self.out,
            Stream::Err => &self.err,
        };
        let mut result = Ok(());
        for &i in which {
            if let Err(e) = self.files[i].write(bytes) {
                result = Err(e);
            }
        }
        result
    }

    fn reopen(&mut self) {
        for f in &mut self.files {
            f.open();
        }
        tracing::info!("SIGUSR1: log files reopened");
    }
}

/// Which log files to write, rotated past `max_size` bytes with `keep` rotated files kept.
#[derive(Clone, Copy, Debug)]
pub struct Plan<'a> {
    /// Both streams' lines.
    pub file: Option<&'a Path>,
    /// Stdout lines.
    pub out_file: Option<&'a Path>,
    /// Stderr lines.
    pub err_file: Option<&'a Path>,
    /// Bytes past which a file is rotated.
    pub max_size: u64,
    /// Rotated files kept.
    pub keep: usize,
}

/// The sink writing the log files `s` names, or none if it names none. Each file is opened
/// first, so a bad path is an error at start.
pub fn start(s: Plan<'_>) -> Result<Option<Sink>> {
    let mut files = Vec::new();
    let (mut out, mut err) = (Vec::new(), Vec::new());
    for (path, to_out, to_err) in [
        (s.file, true, true),
        (s.out_file, true, false),
        (s.err_file, false, true),
    ] {
        let Some(path) = path else { continue };
        let path = &std::path::absolute(path)
            .or_fail(|| format!("cannot find the log file {}", path.display()))?;
        probe(path, s.keep).or_fail(|| format!("cannot open the log file {}", path.display()))?;
        let mut r = Rotating {
            path: path.to_path_buf(),
            max: s.max_size,
            keep: s.keep,
            file: None,
            failed: None,
        };
        r.open();
        if r.file.is_none() {
            return Err(Error::failure(format!(
                "cannot open the log file {}",
                path.display()
            )));
        }
        if to_out {
            out.push(files.len());
        }
        if to_err {
            err.push(files.len());
        }
        files.push(r);
    }
    if files.is_empty() {
        return Ok(None);
    }
    Ok(Some(Sink::to(
        "herd-logfile",
        Box::new(Files { files, out, err }),
    )))
}
