//! The only module with `unsafe`: what happens in a child between `fork` and `exec`, and taking
//! ownership of an inherited descriptor number.
//!
//! Everything here is a thin, documented step around a system call; the rest of herd uses the
//! safe wrappers of `rustix` and `std`.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::FileType;
use rustix::io::FdFlags;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::Signal;

/// The descriptor number at which a worker finds its channel (the same as Node's default).
pub const CHANNEL_FD: RawFd = 3;
/// Descriptors are parked at or above this number while being moved to their final numbers.
const PARK_AT: RawFd = 256;

/// A connected pair of `AF_UNIX` stream sockets, both close-on-exec.
pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(rustix::net::socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )?)
}

/// Arranges for a child to be started with `fds` moved to the given numbers (without
/// close-on-exec, so they survive `exec`), to receive `SIGKILL` when this process dies, and to
/// give up if this process is already gone by the time it runs.
///
/// Every other descriptor of this process is close-on-exec (std, tokio and herd open them so),
/// so the child inherits nothing else.
pub fn prepare_child(cmd: &mut tokio::process::Command, fds: &[(&OwnedFd, RawFd)]) {
    let parent = rustix::process::getpid();
    // Allocated before fork: the closure below must not allocate.
    let mut moves: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, to)| (f.as_raw_fd(), *to)).collect();
    let closure = move || -> io::Result<()> {
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
        if rustix::process::getppid() != Some(parent) {
            // The primary died before we got here: PDEATHSIG will never fire.
            return Err(io::Error::other("primary exited during spawn"));
        }
        // First park every source above the targets, so moving one cannot clobber another.
        for (src, _) in moves.iter_mut() {
            // SAFETY: `src` is an open descriptor owned by the parent's `OwnedFd`, which outlives
            // the spawn; in the child we only duplicate it. The duplicate is close-on-exec.
            let parked = unsafe { libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, PARK_AT) };
            if parked < 0 {
                return Err(io::Error::last_os_error());
            }
            *src = parked;
        }
        for (src, to) in moves.iter() {
            // SAFETY: `src` is the parked duplicate made above and `to` a plain number; dup2
            // replaces whatever `to` was in this (child) process only, and the result has
            // close-on-exec cleared, which is what we want for an inherited descriptor.
            if unsafe { libc::dup2(*src, *to) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        Ok(())
    };
    // SAFETY: the closure runs in the child after fork and before exec. It only makes
    // async-signal-safe system calls (prctl, getppid, fcntl, dup2), takes no locks and does not
    // allocate: `moves` was allocated before fork and is only written in place.
    unsafe {
        cmd.pre_exec(closure);
    }
}

static TAKEN: AtomicBool = AtomicBool::new(false);

/// Takes ownership of the channel descriptor a worker inherited at number `fd`.
///
/// Checks that it is open and is a socket, takes it at most once per process, and marks it
/// close-on-exec so the worker's own children do not inherit it.
pub fn take_inherited_socket(fd: RawFd) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::other(format!("invalid channel descriptor {fd}")));
    }
    // SAFETY: only used for the duration of these checks; fcntl and fstat on a number that is
    // not open fail with EBADF rather than touching anything.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed)
        .map_err(|e| io::Error::other(format!("channel descriptor {fd} is not open: {e}")))?;
    let stat = rustix::fs::fstat(borrowed)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Socket {
        return Err(io::Error::other(format!(
            "channel descriptor {fd} is not a socket"
        )));
    }
    if TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other("the channel descriptor was already taken"));
    }
    rustix::io::fcntl_setfd(borrowed, FdFlags::CLOEXEC)?;
    // SAFETY: the descriptor is open (checked above), was handed to this process for herd's
    // channel by its parent, and the TAKEN flag guarantees one owner in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}
