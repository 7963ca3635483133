//! The only module with `unsafe`: what happens in a child between `fork` and `exec`, and taking
//! ownership of an inherited descriptor number.
//!
//! Everything here is a thin, documented step around a system call; the rest of herd uses the
//! safe wrappers of `rustix` and `std`.

#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::FileType;
use rustix::io::FdFlags;
use rustix::net::{AddressFamily, SocketFlags, SocketType};
use rustix::process::Signal;

/// The descriptor number at which a worker finds its channel (the same as Node's default).
pub const CHANNEL_FD: RawFd = 3;

/// The soft limit on open descriptors (`ulimit -n`, `RLIMIT_NOFILE`): every descriptor number
/// of this process, and of a child before it raises its own, is below it. Unlimited or beyond
/// `RawFd` reads as `RawFd::MAX`.
pub fn fd_limit() -> RawFd {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    limit
        .current
        .map_or(RawFd::MAX, |n| RawFd::try_from(n).unwrap_or(RawFd::MAX))
}

/// Where a child parks `moves` (source, target) before moving them to their targets: just
/// above every target and every source, so that parking one can clobber nothing and moving one
/// can clobber no parked one. `None` when the parked copies cannot fit below `limit`.
fn park_base(moves: &[(RawFd, RawFd)], limit: RawFd) -> Option<RawFd> {
    let highest = moves.iter().map(|(src, to)| *src.max(to)).max()?;
    let base = highest.checked_add(1)?;
    let end = base.checked_add(RawFd::try_from(moves.len()).ok()?)?;
    (end <= limit).then_some(base)
}

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
/// Everything else above stderr is made close-on-exec in the child first, so the child inherits
/// nothing else: not even a descriptor this process itself inherited without close-on-exec from
/// whoever started it (std, tokio and herd open their own close-on-exec).
///
/// The descriptors are parked just above the highest target and source number, below the soft
/// open-file limit (read here, before fork), so a low `ulimit -n` works; if this process's own
/// descriptors leave no room there, the spawn fails with `EMFILE`, a shortage to retry.
///
/// With `cgroup_procs` (a cgroup v2 directory's `cgroup.procs`, open for writing), the child
/// moves itself into that cgroup first, so that it and everything it starts are in it.
pub fn prepare_child(
    cmd: &mut tokio::process::Command,
    fds: &[(&OwnedFd, RawFd)],
    cgroup_procs: Option<&OwnedFd>,
) {
    let cgroup_procs = cgroup_procs.map(|fd| fd.as_raw_fd());
    let parent = rustix::process::getpid();
    // Allocated and computed before fork: the closure below must not allocate.
    let mut moves: Vec<(RawFd, RawFd)> = fds.iter().map(|(f, to)| (f.as_raw_fd(), *to)).collect();
    let limit = fd_limit();
    let park_at = park_base(&moves, limit);
    let closure = move || -> io::Result<()> {
        if let Some(procs) = cgroup_procs {
            // SAFETY: `procs` is open, owned by the parent's `OwnedFd`, which outlives the
            // spawn; writing "0" to a cgroup.procs file moves the writing process (this child)
            // into that cgroup. No memory is touched but the static two bytes.
            if unsafe { libc::write(procs, b"0".as_ptr().cast(), 1) } < 0 {
                return Err(io::Error::last_os_error());
            }
        }
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
        if rustix::process::getppid() != Some(parent) {
            // The primary died before we got here: PDEATHSIG will never fire. A raw errno, not
            // `io::Error::other` (which allocates, and the allocator's lock may be held by a
            // thread that does not exist in this child); std hands only the errno to the parent
            // anyway.
            return Err(io::Error::from_raw_os_error(libc::ESRCH));
        }
        // Whatever this process inherited without close-on-exec stays behind at exec. The
        // targets are made afresh by dup2 below, which clears the flag on them alone.
        cloexec_from(3, limit)?;
        // The layout's targets were checked against the limit (`check_numbers`); what does
        // not fit now is this process's own descriptors running high: a shortage (EMFILE),
        // retried by the caller like any other.
        let park_at = match park_at {
            Some(at) => at,
            None if moves.is_empty() => return Ok(()),
            None => return Err(io::Error::from_raw_os_error(libc::EMFILE)),
        };
        // First park every source above the targets and the sources, so moving one cannot
        // clobber another.
        for (src, _) in moves.iter_mut() {
            // SAFETY: `src` is an open descriptor owned by the parent's `OwnedFd`, which outlives
            // the spawn; in the child we only duplicate it. The duplicate is close-on-exec.
            // `park_at` is below the soft limit (checked before fork), so this fails only with
            // EMFILE when the numbers from it up are taken.
            let parked = unsafe { libc::fcntl(*src, libc::F_DUPFD_CLOEXEC, park_at) };
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
    // async-signal-safe system calls (write, prctl, getppid, close_range, fcntl, dup2), takes no locks
    // and does not allocate: `moves`, `limit` and `park_at` were made before fork; `moves` is
    // only written in place; every error is a raw errno (`io::Error::from_raw_os_error`, or
    // rustix's `Errno` converted the same way), never a boxed one.
    unsafe {
        cmd.pre_exec(closure);
    }
}

/// Marks every descriptor from `first` up close-on-exec. Called between fork and exec: one
/// `close_range` system call, or (kernels before 5.11) `fcntl` over the descriptor table up to
/// `limit` (the soft limit, read before fork).
fn cloexec_from(first: RawFd, limit: RawFd) -> io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC closes nothing and touches no memory; it
    // sets a flag on the descriptors of this (child) process.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC as libc::c_uint,
        )
    };
    if r == 0 {
        return Ok(());
    }
    for fd in first..limit.min(65_536) {
        // SAFETY: F_GETFD/F_SETFD on a number that is not open fail with EBADF; on an open one
        // they only set its close-on-exec flag.
        unsafe {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 {
                libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC);
            }
        }
    }
    Ok(())
}

static TAKEN: AtomicBool = AtomicBool::new(false);
static CACHE_TAKEN: AtomicBool = AtomicBool::new(false);
static LISTENERS_TAKEN: AtomicBool = AtomicBool::new(false);

/// Checks that `fd` is open and a socket; `what` names it in errors.
fn inherited_socket(fd: RawFd, what: &str) -> io::Result<BorrowedFd<'static>> {
    if fd < 0 {
        return Err(io::Error::other(format!("invalid {what} descriptor {fd}")));
    }
    // SAFETY: only used for checks and fcntl by the callers, before any ownership is taken;
    // fcntl and fstat on a number that is not open fail with EBADF rather than touching anything.
    let borrowed = unsafe { BorrowedFd::borrow_raw(fd) };
    rustix::io::fcntl_getfd(borrowed)
        .map_err(|e| io::Error::other(format!("{what} descriptor {fd} is not open: {e}")))?;
    let stat = rustix::fs::fstat(borrowed)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::Socket {
        return Err(io::Error::other(format!(
            "{what} descriptor {fd} is not a socket"
        )));
    }
    Ok(borrowed)
}

/// Takes ownership of the channel descriptor a worker inherited at number `fd`.
///
/// Checks that it is open and is a socket, takes it at most once per process, and marks it
/// close-on-exec so the worker's own children do not inherit it.
pub fn take_inherited_socket(fd: RawFd) -> io::Result<OwnedFd> {
    take_once(fd, "channel", &TAKEN)
}

/// Takes ownership of the cache channel a Node worker inherited at number `fd`
/// (`HERD_CACHE_FD`), as [`take_inherited_socket`] does the main channel: checked, at most
/// once per process, close-on-exec.
pub fn take_inherited_cache_socket(fd: RawFd) -> io::Result<OwnedFd> {
    take_once(fd, "cache channel", &CACHE_TAKEN)
}

fn take_once(fd: RawFd, what: &str, taken: &AtomicBool) -> io::Result<OwnedFd> {
    let borrowed = inherited_socket(fd, what)?;
    if taken.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other(format!(
            "the {what} descriptor was already taken"
        )));
    }
    rustix::io::fcntl_setfd(borrowed, FdFlags::CLOEXEC)?;
    // SAFETY: the descriptor is open (checked above), was handed to this process for this use
    // by its parent, and the `taken` flag guarantees one owner in this process.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Takes ownership of the `n` listening sockets a worker inherited at `first`, `first + 1`, ...
/// (all checked before any is taken), at most once per process, close-on-exec.
pub fn take_inherited_listeners(first: RawFd, n: usize) -> io::Result<Vec<OwnedFd>> {
    let numbers: Vec<RawFd> = (0..n).map(|i| first + i as RawFd).collect();
    for &fd in &numbers {
        inherited_socket(fd, "listener")?;
    }
    if LISTENERS_TAKEN.swap(true, Ordering::SeqCst) {
        return Err(io::Error::other("the listening sockets were already taken"));
    }
    numbers
        .into_iter()
        .map(|fd| {
            // SAFETY: checked open and a socket above; handed to this process as its listeners
            // by its parent (HERD_LISTEN_FDS); LISTENERS_TAKEN guarantees one owner per process.
            let owned = unsafe { OwnedFd::from_raw_fd(fd) };
            rustix::io::fcntl_setfd(&owned, FdFlags::CLOEXEC)?;
            Ok(owned)
        })
        .collect()
}

/// The seals every shared cache value carries: its bytes can never change, shrink or grow, and
/// the seals themselves can no longer change.
fn cache_seals() -> rustix::fs::SealFlags {
    use rustix::fs::SealFlags;
    SealFlags::WRITE | SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL
}

/// A memfd holding `data`, sealed against any change (see [`cache_seals`]). Close-on-exec: it
/// reaches workers only when passed explicitly.
pub fn sealed_memfd(name: &str, data: &[u8]) -> io::Result<OwnedFd> {
    use rustix::fs::MemfdFlags;
    use std::io::Write;
    let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
    let mut file = std::fs::File::from(fd);
    file.write_all(data)?;
    let fd = OwnedFd::from(file);
    rustix::fs::fcntl_add_seals(&fd, cache_seals())?;
    Ok(fd)
}

/// Maps a sealed memfd of `len` bytes read-only, after checking that it is what it claims: a
/// memfd sealed by [`sealed_memfd`] (so nobody can write, shrink or grow it) of exactly `len`
/// bytes. Anything else (a plain file, an unsealed memfd, a wrong size) is refused.
pub fn map_sealed(fd: &OwnedFd, len: usize) -> io::Result<memmap2::Mmap> {
    check_sealed(fd, len)?;
    // SAFETY: memmap2 requires that the mapped file is not modified or truncated while mapped
    // (or the mapping would change under Rust's feet or fault with SIGBUS). The seals checked
    // by `check_sealed` (F_SEAL_WRITE, F_SEAL_SHRINK, F_SEAL_GROW, and F_SEAL_SEAL so they
    // cannot be removed) make the kernel refuse every write and resize from any process, for
    // the life of the memfd; and its size was checked to be `len`.
    unsafe { memmap2::MmapOptions::new().len(len).map(fd) }
}

/// Maps a sealed memfd like [`map_sealed`], but private and writable: copy-on-write. Every
/// page is the memfd's shared page until this process writes to it, and a write changes only
/// this process's copy (the kernel allows private writable mappings of a write-sealed memfd).
/// For values handed to code that may write into them (a Node `Buffer`): a stray write must
/// not kill the process, as it would in a read-only mapping.
pub fn map_sealed_private(fd: &OwnedFd, len: usize) -> io::Result<memmap2::MmapMut> {
    check_sealed(fd, len)?;
    // SAFETY: as in `map_sealed`: the seals forbid any change to the file for its life and the
    // size is `len`. The mapping is private, so writes through it never reach the file.
    unsafe { memmap2::MmapOptions::new().len(len).map_copy(fd) }
}

/// Checks that `fd` is a memfd sealed by [`sealed_memfd`] holding exactly `len` (> 0) bytes.
fn check_sealed(fd: &OwnedFd, len: usize) -> io::Result<()> {
    let seals = rustix::fs::fcntl_get_seals(fd).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a sealable memfd: {e}"),
        )
    })?;
    if !seals.contains(cache_seals()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("memfd is not sealed against writes and resizing (seals {seals:?})"),
        ));
    }
    let size = rustix::fs::fstat(fd)?.st_size;
    if u64::try_from(size).ok() != Some(len as u64) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("memfd holds {size} bytes, {len} claimed"),
        ));
    }
    if len == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "an empty value is never shared",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod memfd_tests {
    use super::*;

    #[test]
    fn sealed_memfd_maps_read_only_and_refuses_writes() {
        let data = vec![7u8; 100_000];
        let fd = sealed_memfd("herd-test", &data).unwrap();
        let map = map_sealed(&fd, data.len()).unwrap();
        assert_eq!(&map[..], &data[..]);
        // The kernel refuses writes and resizing, through any descriptor.
        let dup = fd.try_clone().unwrap();
        assert!(rustix::io::write(&dup, b"x").is_err());
        assert!(rustix::fs::ftruncate(&dup, 1).is_err());
        assert!(memmap2::MmapOptions::new()
            .len(data.len())
            .map_raw(&dup)
            .is_err());
        // Wrong size or an unsealed memfd: refused.
        assert!(map_sealed(&fd, 5).is_err());
        let plain = rustix::fs::memfd_create("plain", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::io::write(&plain, b"abc").unwrap();
        assert!(map_sealed(&plain, 3).is_err());
    }

    #[test]
    fn a_private_mapping_is_copy_on_write_and_leaves_the_value_alone() {
        let data = vec![7u8; 10_000];
        let fd = sealed_memfd("herd-test", &data).unwrap();
        let mut mine = map_sealed_private(&fd, data.len()).unwrap();
        let theirs = map_sealed(&fd, data.len()).unwrap();
        mine[0] = 9;
        assert_eq!(mine[0], 9, "this process sees its own write");
        assert_eq!(theirs[0], 7, "the shared value is unchanged");
        assert_eq!(map_sealed_private(&fd, data.len()).unwrap()[0], 7);
        assert!(map_sealed_private(&fd, 5).is_err());
    }
}

#[cfg(test)]
mod park_tests {
    use super::park_base;

    #[test]
    fn descriptors_park_just_above_every_source_and_target_below_the_limit() {
        // Channel from 7 to 3, a listener from 5 to 4: parked from 8, two of them.
        assert_eq!(park_base(&[(7, 3), (5, 4)], 64), Some(8));
        // A target above its source.
        assert_eq!(park_base(&[(4, 20)], 64), Some(21));
        // The last parked copy must be below the limit.
        assert_eq!(park_base(&[(7, 3), (5, 4)], 10), Some(8));
        assert_eq!(park_base(&[(7, 3), (5, 4)], 9), None);
        assert_eq!(park_base(&[], 64), None);
        assert_eq!(park_base(&[(i32::MAX, 3)], i32::MAX), None, "no overflow");
    }
}

/// Registers an owned descriptor with tokio's reactor for `interest` (the accept task's
/// listening socket, a held connection waiting for its next request).
pub(crate) fn watch(
    fd: OwnedFd,
    interest: tokio::io::Interest,
) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid open descriptor that it alone closes, and its
    // `as_raw_fd` never changes: it stays open and the same file description until the
    // `AsyncFd` is dropped or gives it back with `into_inner`, as `register` requires.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, interest) }
        .map_err(io::Error::from)
}

/// Sets a socket's receive low-water mark (`SO_RCVLOWAT`): the bytes that must wait before
/// `poll`/`epoll` call it readable, so a raised one keeps every holder's event loop from
/// reading what arrives (`node::rescue`). For TCP the kernel caps it at half the largest
/// receive buffer (`tcp_rmem`); Unix sockets' `poll` ignores it.
pub(crate) fn set_rcvlowat(fd: BorrowedFd<'_>, bytes: i32) -> io::Result<()> {
    // SAFETY: `fd` is a valid open descriptor for the call (a `BorrowedFd`); the option value
    // points to an `i32` that lives across the call, with its exact size as the length.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVLOWAT,
            (&bytes as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets `TCP_DEFER_ACCEPT` on a listening TCP socket: the kernel hands over a connection once
/// its first bytes have arrived (or about `secs` later without them), so that whoever accepts
/// it can read where the client's first request goes at once (sticky balancing).
pub(crate) fn set_defer_accept(fd: BorrowedFd<'_>, secs: i32) -> io::Result<()> {
    // SAFETY: as in `set_rcvlowat`: a valid descriptor, an `i32` option value that outlives
    // the call, its exact size as the length.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_DEFER_ACCEPT,
            (&secs as *const i32).cast(),
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The user id of the process at the other end of a Unix socket (`SO_PEERCRED`). Read here,
/// not through rustix's `UCred`, because its pid is 0 when the peer is in another PID
/// namespace (a `herd status` from the host to a herd that is PID 1 of a container), which
/// rustix's non-zero `Pid` refuses.
pub fn peer_uid(fd: BorrowedFd<'_>) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: a valid descriptor; `cred` and `len` outlive the call and `len` is `cred`'s
    // exact size, so the kernel writes within it.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}
