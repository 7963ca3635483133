//! libuv handles on Node's own event loop:
//! - a poll handle: the cache channel's socket is watched by the loop that runs JavaScript, so
//!   a reply wakes the JavaScript thread directly, as a `net.Socket` would;
//! - a check handle that counts the loop's turns ([`turns`]), for the bound on waiting for
//!   replies within one turn (`spin`). It does not keep the loop alive.
//!
//! Node exports libuv's symbols to addons; each handle's size and type number are checked
//! against the running libuv (`uv_handle_size`, `uv_handle_type_name`) before use.

use std::cell::Cell;
use std::ffi::{c_char, c_int, c_void, CStr};

use napi::sys;

extern "C" {
    fn uv_handle_size(kind: c_int) -> usize;
    fn uv_handle_type_name(kind: c_int) -> *const c_char;
    fn uv_poll_init(event_loop: *mut c_void, handle: *mut c_void, fd: c_int) -> c_int;
    fn uv_poll_start(
        handle: *mut c_void,
        events: c_int,
        cb: unsafe extern "C" fn(*mut c_void, c_int, c_int),
    ) -> c_int;
    fn uv_poll_stop(handle: *mut c_void) -> c_int;
    fn uv_close(handle: *mut c_void, cb: Option<unsafe extern "C" fn(*mut c_void)>);
    fn uv_ref(handle: *mut c_void);
    fn uv_unref(handle: *mut c_void);
    fn uv_strerror(err: c_int) -> *const c_char;
    fn uv_check_init(event_loop: *mut c_void, handle: *mut c_void) -> c_int;
    fn uv_check_start(handle: *mut c_void, cb: unsafe extern "C" fn(*mut c_void)) -> c_int;
    fn uv_backend_fd(event_loop: *const c_void) -> c_int;
}

/// `UV_CHECK` and `UV_POLL` in libuv's `uv_handle_type` (stable since libuv 1.0).
const UV_CHECK: c_int = 2;
const UV_POLL: c_int = 8;
/// Poll for reading.
pub(crate) const READABLE: c_int = 1;
/// Poll for writing.
pub(crate) const WRITABLE: c_int = 2;

/// The poll callback: `(handle, status, events)`.
pub(crate) type PollCb = unsafe extern "C" fn(*mut c_void, c_int, c_int);

/// A started poll handle. Its memory is freed by libuv's close callback, after [`Poll::close`].
pub(crate) struct Poll {
    handle: *mut c_void,
}

thread_local! {
    /// Turns of this thread's loop so far, once [`count_turns`] started counting.
    static TURNS: Cell<u64> = const { Cell::new(0) };
    /// The loop's own epoll descriptor (-1 until [`count_turns`]).
    static BACKEND: Cell<c_int> = const { Cell::new(-1) };
}

/// The turns of this thread's event loop counted so far: the same number for all JavaScript
/// run within one turn, whatever it does (timers move the loop's clock, not this).
pub(crate) fn turns() -> u64 {
    TURNS.with(Cell::get)
}

/// Starts counting the turns of `env`'s event loop (a check handle, run once per turn after
/// the loop polls for I/O; never closed, and not keeping the loop alive), and notes the loop's
/// epoll descriptor for [`other_io_ready`].
///
/// # Safety
/// `env` must be the current JavaScript thread's environment.
pub(crate) unsafe fn count_turns(env: sys::napi_env) -> Result<(), String> {
    // SAFETY: the caller's contract.
    let ((handle, event_loop), words) = unsafe { alloc(env, UV_CHECK, b"check")? };
    // SAFETY: `handle` is writable memory of the check handle's size; the loop is Node's.
    let rc = unsafe { uv_check_init(event_loop, handle) };
    if rc != 0 {
        // SAFETY: not initialised, so libuv holds no pointer to it: ours to free.
        unsafe { free_words(handle, words) };
        return Err(error("uv_check_init", rc));
    }
    // SAFETY: the loop is Node's and initialised.
    BACKEND.with(|b| b.set(unsafe { uv_backend_fd(event_loop) }));
    // SAFETY: initialised on this loop; `count` runs on this thread.
    let rc = unsafe { uv_check_start(handle, count) };
    // SAFETY: as above.
    unsafe { uv_unref(handle) };
    if rc != 0 {
        return Err(error("uv_check_start", rc));
    }
    Ok(())
}

unsafe extern "C" fn count(_handle: *mut c_void) {
    TURNS.with(|t| t.set(t.get() + 1));
}

/// Whether this thread's event loop has I/O ready other than on `own` (a descriptor it also
/// watches), as it does when a busy server has requests waiting: its epoll descriptor polls
/// readable while `own` does not. Both are polled in one call, the loop's first: data on `own`
/// that made the loop's descriptor readable is still there when `own` is polled. Unknown (no
/// loop noted, or the poll failed) counts as ready: no waiting then. A watcher whose events
/// changed this turn (writability dropped) may count until the loop polls again.
pub(crate) fn other_io_ready(own: std::os::fd::BorrowedFd<'_>) -> bool {
    use rustix::event::{poll, PollFd, PollFlags, Timespec};
    let fd = BACKEND.with(Cell::get);
    if fd < 0 {
        return true;
    }
    // SAFETY: the loop's epoll descriptor, open as long as the loop; every call comes from
    // JavaScript on the loop's thread while its environment runs, and the descriptor is only
    // borrowed for this poll. (An embedder that tears the environment down and keeps the
    // thread would leave a stale number: polling it is then harmless, an error counts as
    // ready, and the channel of that environment is gone too.)
    let fd = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
    let mut pfd = [
        PollFd::new(&fd, PollFlags::IN),
        PollFd::new(&own, PollFlags::IN),
    ];
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    match poll(&mut pfd, Some(&zero)) {
        Ok(_) => {
            let loop_ready = !pfd[0].revents().is_empty();
            let own_ready = !pfd[1].revents().is_empty();
            loop_ready && !own_ready
        }
        Err(_) => true,
    }
}

/// Zeroed, 8-byte aligned memory for a handle of `kind` (whose libuv name must be `name`) on
/// `env`'s loop: `((handle, loop), words)`. Owned by the caller until libuv is given it.
///
/// # Safety
/// `env` must be the current JavaScript thread's environment.
unsafe fn alloc(
    env: sys::napi_env,
    kind: c_int,
    name: &[u8],
) -> Result<((*mut c_void, *mut c_void), usize), String> {
    // SAFETY: libuv's own description of its handle types; any number is accepted.
    let found = unsafe { uv_handle_type_name(kind) };
    // SAFETY: a non-null result is a static C string.
    if found.is_null() || unsafe { CStr::from_ptr(found) }.to_bytes() != name {
        return Err(format!(
            "this Node's libuv has no {} handle where expected",
            String::from_utf8_lossy(name)
        ));
    }
    let mut event_loop = std::ptr::null_mut();
    // SAFETY: `env` is valid (the caller's contract).
    if unsafe { sys::napi_get_uv_event_loop(env, &mut event_loop) } != sys::Status::napi_ok {
        return Err("cannot get Node's event loop".into());
    }
    // SAFETY: as above.
    let size = unsafe { uv_handle_size(kind) };
    let words = size.div_ceil(8).max(1);
    let handle = Box::into_raw(vec![0u64; words].into_boxed_slice()).cast::<c_void>();
    Ok(((handle, event_loop.cast()), words))
}

/// Frees memory from [`alloc`] that libuv does not hold.
///
/// # Safety
/// `handle` came from [`alloc`] with `words`, and libuv holds no pointer to it.
unsafe fn free_words(handle: *mut c_void, words: usize) {
    // SAFETY: the caller's contract: leaked in `alloc` as a boxed slice of `words` words.
    drop(unsafe {
        Box::from_raw(std::ptr::slice_from_raw_parts_mut(
            handle.cast::<u64>(),
            words,
        ))
    });
}

fn error(what: &str, code: c_int) -> String {
    // SAFETY: uv_strerror returns a static string for any code.
    let text = unsafe { CStr::from_ptr(uv_strerror(code)) };
    format!("{what}: {}", text.to_string_lossy())
}

impl Poll {
    /// Starts polling `fd` for `events` on `env`'s event loop, calling `cb`.
    ///
    /// # Safety
    /// `env` must be the current JavaScript thread's environment, `fd` open until after
    /// [`Poll::close`], and `cb` safe to call on this thread whenever the loop runs.
    pub(crate) unsafe fn start(
        env: sys::napi_env,
        fd: c_int,
        events: c_int,
        cb: PollCb,
    ) -> Result<Poll, String> {
        // Owned by libuv once initialised, until its close callback frees it.
        // SAFETY: the caller's contract.
        let ((handle, event_loop), words) = unsafe { alloc(env, UV_POLL, b"poll")? };
        // SAFETY: `handle` is writable memory of the poll handle's size; the loop is Node's.
        let rc = unsafe { uv_poll_init(event_loop, handle, fd) };
        if rc != 0 {
            // SAFETY: not initialised, so libuv holds no pointer to it: ours to free.
            unsafe { free_words(handle, words) };
            return Err(error("uv_poll_init", rc));
        }
        // The handle's first word is its `data` field: the word count, for the close callback.
        // SAFETY: `data` is the first field of every libuv handle, a pointer-sized word.
        unsafe { *handle.cast::<usize>() = words };
        let poll = Poll { handle };
        // SAFETY: the handle is initialised on this loop.
        let rc = unsafe { uv_poll_start(handle, events, cb) };
        if rc != 0 {
            poll.close();
            return Err(error("uv_poll_start", rc));
        }
        Ok(poll)
    }

    /// Changes the events polled for.
    pub(crate) fn set_events(&self, events: c_int, cb: PollCb) {
        // SAFETY: the handle is initialised and not closed (`close` consumes `self`).
        unsafe { uv_poll_start(self.handle, events, cb) };
    }

    /// Whether the loop waits for this handle (`true` while calls are in flight) or may end
    /// without it.
    pub(crate) fn keep_alive(&self, yes: bool) {
        // SAFETY: the handle is initialised and not closed.
        unsafe {
            if yes {
                uv_ref(self.handle)
            } else {
                uv_unref(self.handle)
            }
        }
    }

    /// Stops polling and closes the handle; libuv frees it later, on the loop.
    pub(crate) fn close(self) {
        // SAFETY: the handle is initialised and closed once (this consumes `self`).
        unsafe {
            uv_poll_stop(self.handle);
            uv_close(self.handle, Some(free));
        }
    }
}

/// libuv's close callback: frees the handle's memory (its word count is in `data`).
unsafe extern "C" fn free(handle: *mut c_void) {
    // SAFETY: `data` holds the word count written in `start`; the memory came from `alloc`
    // with that many words, and libuv no longer uses it once this runs.
    unsafe { free_words(handle, *handle.cast::<usize>()) }
}
