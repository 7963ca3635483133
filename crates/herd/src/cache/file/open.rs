//! Opening a folder source's files so that nothing leaves the folder and nothing blocks: every
//! path is resolved from a descriptor of the folder taken once, with no symbolic link followed
//! anywhere below it (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`, or one `openat`
//! per component with `O_NOFOLLOW` where the kernel has no `openat2`); a value is read only
//! from a regular file (opened `O_NONBLOCK`, so a FIFO cannot hold the open, then checked with
//! `fstat`), never past a size cap taken from `fstat` before any byte is read. A `store` creates
//! its folders and its temporary file the same way and renames within the parent's descriptor.
//!
//! Everything here is blocking and short: the callers run it on tokio's blocking pool.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

/// Why a key's file was refused, or what failed.
#[derive(Debug)]
pub(super) enum OpenError {
    /// Not there (or a folder, or below a file): the key is absent.
    Absent,
    /// Refused: a symbolic link, a special file or too large; says which.
    Refused(String),
    /// Another I/O error.
    Io(io::Error),
}

impl From<Errno> for OpenError {
    fn from(e: Errno) -> OpenError {
        match e {
            Errno::NOENT | Errno::ISDIR | Errno::NOTDIR => OpenError::Absent,
            Errno::LOOP | Errno::XDEV => {
                OpenError::Refused("it is or passes through a symbolic link".into())
            }
            e => OpenError::Io(e.into()),
        }
    }
}

/// The folder, opened once; every file is opened beneath it.
pub(super) struct Folder {
    fd: OwnedFd,
}

impl Folder {
    /// Opens `dir` (itself may be reached through a link: the user named it).
    pub(super) fn open(dir: &Path) -> io::Result<Folder> {
        let fd = rfs::open(
            dir,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        Ok(Folder { fd })
    }

    /// Opens `rel` (a checked key: `/`-separated, no `.`, `..` or empty parts) beneath the
    /// folder, following no link.
    fn open_beneath(&self, rel: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
        let flags = flags | OFlags::CLOEXEC | OFlags::NOFOLLOW;
        match rfs::openat2(
            &self.fd,
            rel,
            flags,
            mode,
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) {
            // No openat2 (before Linux 5.6, or refused by a seccomp filter).
            Err(Errno::NOSYS | Errno::PERM) => self.walk(rel, flags, mode),
            other => other,
        }
    }

    /// The same, one component at a time (kernels before 5.6).
    fn walk(&self, rel: &str, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (self.dir(p, false)?, n),
            None => (None, rel),
        };
        let at = parent.as_ref().map_or(self.fd.as_fd(), |p| p.as_fd());
        rfs::openat(at, name, flags, mode)
    }

    /// The folder `rel` beneath this one (`None`: this one), made if `create`.
    fn dir(&self, rel: &str, create: bool) -> Result<Option<OwnedFd>, Errno> {
        let mut cur: Option<OwnedFd> = None;
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            let at = cur.as_ref().map_or(self.fd.as_fd(), |c| c.as_fd());
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let next = match rfs::openat(at, part, flags, Mode::empty()) {
                Err(Errno::NOENT) if create => {
                    match rfs::mkdirat(at, part, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e),
                    }
                    rfs::openat(at, part, flags, Mode::empty())?
                }
                other => other?,
            };
            cur = Some(next);
        }
        Ok(cur)
    }

    /// The contents of the regular file `rel`, refused past `cap` bytes (checked before any
    /// byte is read, and again while reading, should the file grow).
    pub(super) fn read(&self, rel: &str, cap: u64) -> Result<Vec<u8>, OpenError> {
        let fd = self.open_beneath(rel, OFlags::RDONLY | OFlags::NONBLOCK, Mode::empty())?;
        let st = rfs::fstat(&fd).map_err(|e| OpenError::Io(e.into()))?;
        match FileType::from_raw_mode(st.st_mode) {
            FileType::RegularFile => {}
            FileType::Directory => return Err(OpenError::Absent),
            other => {
                return Err(OpenError::Refused(format!(
                    "it is not a regular file ({other:?})"
                )))
            }
        }
        let len = u64::try_from(st.st_size).unwrap_or(0);
        if len > cap {
            return Err(OpenError::Refused(format!(
                "it holds {len} bytes, more than the {cap} a value may have"
            )));
        }
        let mut v = Vec::with_capacity(usize::try_from(len).unwrap_or(0));
        std::fs::File::from(fd)
            .take(cap + 1)
            .read_to_end(&mut v)
            .map_err(OpenError::Io)?;
        if v.len() as u64 > cap {
            return Err(OpenError::Refused(format!(
                "it grew past the {cap} bytes a value may have while it was read"
            )));
        }
        Ok(v)
    }

    /// Writes `value` to `rel` atomically: a temporary file `tmp` beside it, then a rename,
    /// both within the parent folder's descriptor (made as needed, never through a link).
    pub(super) fn store(&self, rel: &str, tmp: &str, value: &[u8]) -> Result<(), OpenError> {
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (self.dir(p, true)?, n),
            None => (None, rel),
        };
        let at = parent.as_ref().map_or(self.fd.as_fd(), |p| p.as_fd());
        let fd = rfs::openat(
            at,
            tmp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        )?;
        let written = std::fs::File::from(fd).write_all(value);
        let renamed = written
            .map_err(OpenError::Io)
            .and_then(|()| rfs::renameat(at, tmp, at, name).map_err(OpenError::from));
        if renamed.is_err() {
            let _ = rfs::unlinkat(at, tmp, AtFlags::empty());
        }
        renamed
    }

    /// Removes the file `rel` (a link is removed, never followed); false if there is none or it
    /// is a folder.
    pub(super) fn delete(&self, rel: &str) -> Result<bool, OpenError> {
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => match self.dir(p, false) {
                Ok(d) => (d, n),
                Err(e) => {
                    return match OpenError::from(e) {
                        OpenError::Absent => Ok(false),
                        other => Err(other),
                    }
                }
            },
            None => (None, rel),
        };
        let at = parent.as_ref().map_or(self.fd.as_fd(), |p| p.as_fd());
        match rfs::statat(at, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                return Ok(false)
            }
            Ok(_) => {}
            Err(Errno::NOENT | Errno::NOTDIR) => return Ok(false),
            Err(e) => return Err(OpenError::Io(e.into())),
        }
        match rfs::unlinkat(at, name, AtFlags::empty()) {
            Ok(()) => Ok(true),
            Err(Errno::NOENT) => Ok(false),
            Err(e) => Err(OpenError::Io(e.into())),
        }
    }
}
