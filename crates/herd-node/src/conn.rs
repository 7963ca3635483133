//! The cache channel on Node's event loop: the socket, its read and write buffers, the calls in
//! flight with their Promises, all on the JavaScript thread (one per process: the thread that
//! opened it). herd's [`CacheClient`] decides what the bytes mean.
//!
//! - **Calls** are written at once from the calling JavaScript (a non-blocking `send`); what
//!   does not fit waits in a queue of at most [`MAX_QUEUED_BYTES`] while libuv polls for
//!   writability. At most [`MAX_PENDING`] calls wait for replies; past either bound a call is
//!   refused (`HERD_BUSY`).
//! - **Replies and invalidations** are read when libuv says the socket is readable: `recvmsg`
//!   until it would block (descriptors collected, bounded), then whole frames are taken out
//!   (check-then-parse, `herd_wire::frame::decode`). Each reply settles its Promise inside a
//!   callback scope, so Promise reactions run right after, as for any I/O callback.
//! - **Misses' replies** are also read, the same way, by [`Conn::spin`] from the microtask the
//!   package queues after `get`s, for a bounded time (`spin`): their reactions then run in that
//!   same microtask checkpoint, with no turn of the loop.
//! - **Deadlines**: a call unanswered for [`CALL_DEADLINE`] (a `ready`: its own wait besides) is
//!   rejected (`HERD_TIMEOUT`) when next the channel is used; the package also races each call
//!   with its own timeout.
//! - **Loss**: end-of-stream, a read error or a protocol violation closes the channel: every
//!   call waiting is rejected (`HERD_CLOSED`), later ones are refused at once, and the local
//!   view is dropped (no invalidation can reach it any more).
//! - The loop is kept alive only while calls are in flight.

use std::cell::RefCell;
use std::collections::{BTreeMap, VecDeque};
use std::ffi::{c_int, c_void};
use std::io::IoSliceMut;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::ptr;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use herd::cache::{Answer, CacheClient, CacheError, Call, Received};
use herd_wire::frame::{self, FdQueue};
use herd_wire::{Frame, Limits};
use napi::sys;
use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendFlags};

use crate::spin::{Spin, Wait};
use crate::uv::{self, Poll};
use crate::{reject_text, settle_answer};

/// Most calls waiting for a reply.
pub(crate) const MAX_PENDING: usize = 4096;
/// Most bytes of calls waiting to be written.
pub(crate) const MAX_QUEUED_BYTES: usize = 64 << 20;
/// How long a call may wait for its reply.
pub(crate) const CALL_DEADLINE: Duration = Duration::from_secs(30);
/// How long `open` waits for the primary's hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);
/// Descriptors one `recvmsg` can carry.
const SCM_MAX_FD: usize = 64;

/// The client: its view lives for the rest of the process (JavaScript reads its change counter
/// through a Buffer over it).
pub(crate) static CLIENT: OnceLock<CacheClient> = OnceLock::new();

thread_local! {
    /// The channel, on the thread that opened it.
    static CONN: RefCell<Option<Conn>> = const { RefCell::new(None) };
}

/// What one read of the channel gave ([`Conn::recv`]).
enum Recv {
    /// Nothing waiting.
    Empty,
    /// This many bytes, now in the read buffer.
    Got(usize),
    /// End-of-stream or an error: the channel is lost.
    Lost,
}

struct Pending {
    call: Call,
    deferred: sys::napi_deferred,
    at: Instant,
    /// How long it may wait: [`CALL_DEADLINE`], and a `Ready` its own wait besides.
    limit: Duration,
}

pub(crate) struct Conn {
    env: sys::napi_env,
    fd: OwnedFd,
    poll: Option<Poll>,
    /// The events `poll` waits for: changed only when they change (libuv's `uv_poll_start`
    /// takes the descriptor out of epoll and puts it back, two system calls).
    polled: c_int,
    limits: Limits,
    rbuf: BytesMut,
    fds: FdQueue,
    scratch: Box<[u8]>,
    wqueue: VecDeque<Bytes>,
    wbytes: usize,
    pending: BTreeMap<u64, Pending>,
    /// The async context replies are settled in (for `napi_open_callback_scope`).
    context: sys::napi_async_context,
    resource: sys::napi_ref,
    closed: Option<String>,
    /// Answers to settle once the channel is no longer borrowed ([`settle_ready`]): settling
    /// runs JavaScript, which may call in again.
    ready: Vec<(sys::napi_deferred, Result<Answer, CacheError>)>,
    /// When `get`s read their replies in a microtask instead of waiting for the event loop.
    spin: Spin,
    /// The highest call id a wait has covered: a wait waits only for `get`s sent since.
    spun_to: u64,
}

/// The client, once open.
pub(crate) fn client() -> Option<&'static CacheClient> {
    CLIENT.get()
}

/// Opens the channel on this thread: takes the inherited descriptor, shakes hands (blocking,
/// at most [`HELLO_TIMEOUT`]), then hands the socket to Node's event loop.
///
/// # Safety
/// `env` must be this JavaScript thread's environment.
pub(crate) unsafe fn open(env: sys::napi_env) -> Result<(), String> {
    if CONN.with(|c| c.borrow().is_some()) {
        return Ok(());
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let asked = std::env::var_os("HERD_CACHE_SPIN_US").map(|v| v.to_string_lossy().into_owned());
    let (spin, warning) = Spin::from_env(asked.as_deref(), cpus);
    if let Some(warning) = warning {
        // A tuning value is not worth refusing the addon for; the program's stderr says so
        // (if it can: not a panic on a closed stderr).
        use std::io::Write;
        let _ = writeln!(std::io::stderr(), "herd-cluster: {warning}");
    }
    let chain = |e: herd::Error| herd::error::chain(&e);
    let (fd, id) = herd::cache::channel::inherited().map_err(chain)?;
    let client = CacheClient::new(id);
    let limits = Limits::default();
    write_all_blocking(&fd, &encode(&client.hello().map_err(chain)?))?;
    let mut rbuf = BytesMut::new();
    let mut fds = FdQueue::default();
    let mut scratch = vec![0u8; 64 << 10].into_boxed_slice();
    let deadline = Instant::now() + HELLO_TIMEOUT;
    let hello = loop {
        if let Some(f) = frame::decode(&mut rbuf, &mut fds, &limits).map_err(|e| e.to_string())? {
            break f;
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err("the primary sent no hello on the cache channel".into());
        }
        let ms = i32::try_from(left.as_millis()).unwrap_or(i32::MAX).max(1);
        let mut pfd = [rustix::event::PollFd::new(
            &fd,
            rustix::event::PollFlags::IN,
        )];
        let timeout = rustix::event::Timespec {
            tv_sec: i64::from(ms / 1000),
            tv_nsec: i64::from(ms % 1000) * 1_000_000,
        };
        match rustix::event::poll(&mut pfd, Some(&timeout)) {
            Ok(_) | Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.to_string()),
        }
        // Without waiting: the poll may have timed out, and the deadline is checked above.
        match recv_once(&fd, &mut scratch, &mut fds, RecvFlags::DONTWAIT)? {
            Some(0) => return Err("the primary closed the cache channel".into()),
            Some(n) => rbuf.extend_from_slice(&scratch[..n]),
            None => {}
        }
    };
    client.check_hello(hello).map_err(chain)?;
    rustix::fs::fcntl_setfl(&fd, rustix::fs::OFlags::NONBLOCK).map_err(|e| e.to_string())?;
    if CLIENT.set(client).is_err() {
        return Err("the cache channel was opened already".into());
    }
    // SAFETY: `env` is this thread's (the caller's contract).
    let (context, resource) = unsafe { async_context(env)? };
    // SAFETY: as above; the descriptor stays open in `Conn` until after the poll is closed.
    let poll = unsafe { Poll::start(env, fd.as_raw_fd(), uv::READABLE, on_poll)? };
    poll.keep_alive(false);
    // SAFETY: as above.
    unsafe { uv::count_turns(env)? };
    let conn = Conn {
        env,
        fd,
        poll: Some(poll),
        polled: uv::READABLE,
        limits,
        rbuf,
        fds,
        scratch,
        wqueue: VecDeque::new(),
        wbytes: 0,
        pending: BTreeMap::new(),
        context,
        resource,
        closed: None,
        ready: Vec::new(),
        spin,
        spun_to: 0,
    };
    CONN.with(|c| *c.borrow_mut() = Some(conn));
    // Frames that came with the hello (invalidations) are taken now.
    with_conn(|conn| conn.take_frames());
    Ok(())
}

/// An async context for settling Promises outside JavaScript (and the object it hangs on).
unsafe fn async_context(
    env: sys::napi_env,
) -> Result<(sys::napi_async_context, sys::napi_ref), String> {
    let mut resource = ptr::null_mut();
    let mut name = ptr::null_mut();
    let mut context = ptr::null_mut();
    let mut reference = ptr::null_mut();
    let text = b"herd-cache";
    // SAFETY: `env` is valid; the values are kept alive by the strong reference made here.
    let ok = unsafe {
        sys::napi_create_object(env, &mut resource) == sys::Status::napi_ok
            && sys::napi_create_string_utf8(
                env,
                text.as_ptr().cast(),
                text.len() as isize,
                &mut name,
            ) == sys::Status::napi_ok
            && sys::napi_async_init(env, resource, name, &mut context) == sys::Status::napi_ok
            && sys::napi_create_reference(env, resource, 1, &mut reference) == sys::Status::napi_ok
    };
    if !ok {
        return Err("cannot make the cache channel's async context".into());
    }
    Ok((context, reference))
}

/// Runs `f` on this thread's open channel, if any.
pub(crate) fn with_conn<T>(f: impl FnOnce(&mut Conn) -> T) -> Option<T> {
    CONN.with(|c| c.borrow_mut().as_mut().map(f))
}

/// Settles the answers the channel has ready, with the channel no longer borrowed: in a handle
/// scope and a callback scope, so their reactions run once it closes (from a libuv callback) or
/// with the calling JavaScript's (from a call).
pub(crate) fn settle_ready() {
    let Some((env, resource, context, answers)) =
        with_conn(|c| (c.env, c.resource, c.context, std::mem::take(&mut c.ready)))
    else {
        return;
    };
    if answers.is_empty() {
        return;
    }
    let mut handles = ptr::null_mut();
    let mut scope = ptr::null_mut();
    let mut object = ptr::null_mut();
    // SAFETY: on the JavaScript thread; each deferred is settled once; the scopes are closed in
    // reverse order.
    unsafe {
        sys::napi_open_handle_scope(env, &mut handles);
        sys::napi_get_reference_value(env, resource, &mut object);
        let in_scope =
            sys::napi_open_callback_scope(env, object, context, &mut scope) == sys::Status::napi_ok;
        for (deferred, answer) in answers {
            settle_answer(env, deferred, answer);
        }
        if in_scope {
            sys::napi_close_callback_scope(env, scope);
        }
        sys::napi_close_handle_scope(env, handles);
    }
}

/// libuv's callback: the socket is readable or writable (or failed).
unsafe extern "C" fn on_poll(_handle: *mut c_void, status: c_int, events: c_int) {
    poll_event(status, events);
    settle_ready();
}

fn poll_event(status: c_int, events: c_int) {
    with_conn(|conn| {
        if status < 0 {
            conn.lose(format!("polling the cache channel failed ({status})"));
            return;
        }
        if events & uv::WRITABLE != 0 {
            conn.flush();
        }
        if events & uv::READABLE != 0 {
            conn.read();
        }
    });
}

fn encode(frame: &Frame) -> Bytes {
    let mut out = BytesMut::new();
    frame::encode(frame, &mut out);
    out.freeze()
}

fn write_all_blocking(fd: &OwnedFd, mut bytes: &[u8]) -> Result<(), String> {
    while !bytes.is_empty() {
        let n = rustix::net::send(fd, bytes, SendFlags::NOSIGNAL).map_err(|e| e.to_string())?;
        bytes = &bytes[n..];
    }
    Ok(())
}

/// One `recvmsg`: bytes read (0 at end-of-stream), `None` if it would block. Descriptors go to
/// `fds`, close-on-exec.
fn recv_once(
    fd: &OwnedFd,
    buf: &mut [u8],
    fds: &mut FdQueue,
    flags: RecvFlags,
) -> Result<Option<usize>, String> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(SCM_MAX_FD))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut iov = [IoSliceMut::new(buf)];
    let msg = match rustix::net::recvmsg(
        fd.as_fd(),
        &mut iov,
        &mut control,
        flags | RecvFlags::CMSG_CLOEXEC,
    ) {
        Ok(m) => m,
        Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => return Ok(None),
        Err(e) => return Err(format!("reading the cache channel: {e}")),
    };
    let mut received = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(it) = m {
            received.extend(it);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err("descriptors were truncated on the cache channel".into());
    }
    fds.extend(received).map_err(|e| e.to_string())?;
    Ok(Some(msg.bytes))
}

impl Conn {
    /// Sends `call`, settling `deferred` when its reply comes.
    pub(crate) fn call(&mut self, call: Call, deferred: sys::napi_deferred) {
        self.expire();
        if let Some(why) = &self.closed {
            let why = format!("HERD_CLOSED: {why}");
            // SAFETY: on the JavaScript thread, inside the calling function's scope.
            unsafe { reject_text(self.env, deferred, &why) };
            return;
        }
        if self.pending.len() >= MAX_PENDING || self.wbytes >= MAX_QUEUED_BYTES {
            let why = format!(
                "HERD_BUSY: {} calls wait for the primary ({} bytes unsent)",
                self.pending.len(),
                self.wbytes
            );
            // SAFETY: as above.
            unsafe { reject_text(self.env, deferred, &why) };
            return;
        }
        let client = client().expect("open before any call");
        let (id, frame) = match client.call(&call) {
            Ok(c) => c,
            Err(e) => {
                let why = format!("HERD_REMOTE: {}", herd::error::chain(&e));
                // SAFETY: as above.
                unsafe { reject_text(self.env, deferred, &why) };
                return;
            }
        };
        if let Err(e) = frame::validate_outgoing(&frame, &self.limits) {
            let why = format!("HERD_REMOTE: {e}");
            // SAFETY: as above.
            unsafe { reject_text(self.env, deferred, &why) };
            return;
        }
        let limit = match &call {
            Call::Ready(wait) => CALL_DEADLINE + *wait,
            _ => CALL_DEADLINE,
        };
        self.pending.insert(
            id,
            Pending {
                call,
                deferred,
                at: Instant::now(),
                limit,
            },
        );
        self.wbytes += frame.payload.len();
        self.wqueue.push_back(encode(&frame));
        self.flush();
        self.keep_alive();
    }

    /// Takes what has arrived, then reads the replies to the `get`s sent since the last wait
    /// without waiting for the event loop, if the policy allows a wait now and the loop has no
    /// other I/O ready (see `spin`). A `get` still waiting from before (a slow load) is left to
    /// the event loop.
    pub(crate) fn spin(&mut self) {
        let mut gets: Vec<u64> = self
            .pending
            .range(self.spun_to + 1..)
            .filter(|(_, p)| matches!(p.call, Call::Get(_)))
            .map(|(id, _)| *id)
            .collect();
        let Some(&last) = gets.last() else {
            return;
        };
        // Covered now, waited for or not: a later wait is only for later gets.
        self.spun_to = last;
        if self.closed.is_some() || !self.wqueue.is_empty() || self.spin.budget().is_zero() {
            return;
        }
        // A loop with other work takes the replies with it, as many at a time as have come.
        let fd = self.fd.as_fd();
        let Some(wait) = self
            .spin
            .begin(uv::turns(), Instant::now(), || uv::other_io_ready(fd))
        else {
            return;
        };
        // What has come already is taken first.
        self.read();
        gets.retain(|id| self.pending.contains_key(id));
        if gets.is_empty() || self.closed.is_some() {
            self.spin.end(true, Instant::now());
            return;
        }
        // `None`: cut short for the loop's other work (which backs off too).
        match self.await_replies(&mut gets, wait) {
            Some(answered) => self.spin.end(answered, Instant::now()),
            None => self.spin.yielded(Instant::now()),
        }
    }

    /// Reads the channel without blocking until no call of `ids` waits, or the wait's quiet
    /// budget passes with nothing read, or its total, or the loop has other I/O ready: whether
    /// all were answered, `None` in the last case. What arrives is taken as from the event
    /// loop.
    fn await_replies(&mut self, ids: &mut Vec<u64>, wait: Wait) -> Option<bool> {
        let start = Instant::now();
        let end = start + wait.total;
        let mut quiet_until = start + wait.quiet;
        loop {
            match self.recv() {
                // Nothing yet: the loop's other work comes first, if it has any.
                Recv::Empty if uv::other_io_ready(self.fd.as_fd()) => return None,
                Recv::Empty => std::thread::yield_now(),
                Recv::Lost => return Some(false),
                Recv::Got(_) => {
                    self.take_frames();
                    if self.closed.is_some() {
                        return Some(false);
                    }
                    ids.retain(|id| self.pending.contains_key(id));
                    if ids.is_empty() {
                        return Some(true);
                    }
                    quiet_until = Instant::now() + wait.quiet;
                }
            }
            let now = Instant::now();
            if now >= quiet_until || now >= end {
                return Some(false);
            }
        }
    }

    /// Waits begun, those that ended with every `get` answered, the quiet budget in µs, and the
    /// waits not begun or cut short for the loop's other I/O (see `spin`).
    pub(crate) fn spin_counts(&self) -> [f64; 4] {
        [
            self.spin.waits as f64,
            self.spin.answered as f64,
            self.spin.budget().as_micros() as f64,
            self.spin.busy as f64,
        ]
    }

    /// Writes what is queued until the socket would block; polls for writability meanwhile.
    fn flush(&mut self) {
        while let Some(front) = self.wqueue.front_mut() {
            match rustix::net::send(&self.fd, front, SendFlags::NOSIGNAL | SendFlags::DONTWAIT) {
                Ok(n) if n == front.len() => {
                    self.wbytes = self.wbytes.saturating_sub(n);
                    self.wqueue.pop_front();
                }
                Ok(n) => {
                    self.wbytes = self.wbytes.saturating_sub(n);
                    let _ = front.split_to(n);
                }
                Err(rustix::io::Errno::AGAIN) | Err(rustix::io::Errno::INTR) => break,
                Err(e) => {
                    self.lose(format!("writing the cache channel: {e}"));
                    return;
                }
            }
        }
        let events = if self.wqueue.is_empty() {
            uv::READABLE
        } else {
            uv::READABLE | uv::WRITABLE
        };
        if events != self.polled {
            if let Some(p) = &self.poll {
                p.set_events(events, on_poll);
                self.polled = events;
            }
        }
    }

    /// Reads until the socket would block, then takes every whole frame.
    fn read(&mut self) {
        loop {
            match self.recv() {
                Recv::Empty => break,
                Recv::Lost => return,
                // Short: the socket is drained for now (libuv polls level-triggered, so
                // anything left wakes the loop again), without a read that would block.
                Recv::Got(n) if n < self.scratch.len() => break,
                Recv::Got(_) => {}
            }
        }
        self.take_frames();
    }

    /// One non-blocking `recvmsg` into the read buffer. At end-of-stream (after taking the
    /// frames before it) or on an error, the channel is lost.
    fn recv(&mut self) -> Recv {
        match recv_once(
            &self.fd,
            &mut self.scratch,
            &mut self.fds,
            RecvFlags::DONTWAIT,
        ) {
            Ok(None) => Recv::Empty,
            Ok(Some(0)) => {
                self.take_frames();
                self.lose("the primary closed the cache channel".into());
                Recv::Lost
            }
            Ok(Some(n)) => {
                self.rbuf.extend_from_slice(&self.scratch[..n]);
                Recv::Got(n)
            }
            Err(e) => {
                self.lose(e);
                Recv::Lost
            }
        }
    }

    /// Takes every whole frame buffered: invalidations to the view, replies to their Promises.
    fn take_frames(&mut self) {
        let client = client().expect("open before any frame");
        let mut answers = Vec::new();
        loop {
            let frame = match frame::decode(&mut self.rbuf, &mut self.fds, &self.limits) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => {
                    self.lose(format!("the primary broke the protocol: {e}"));
                    break;
                }
            };
            match client.receive(frame) {
                Ok(Received::Reply(id, frame)) => {
                    if let Some(p) = self.pending.remove(&id) {
                        answers.push((p.deferred, client.answer(&p.call, frame)));
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    self.lose(format!(
                        "the primary broke the protocol: {}",
                        herd::error::chain(&e)
                    ));
                    break;
                }
            }
        }
        self.ready.extend(answers);
        self.keep_alive();
    }

    /// Rejects calls that waited past their limit (at least [`CALL_DEADLINE`]; the oldest come
    /// first).
    pub(crate) fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .pending
            .iter()
            .take_while(|(_, p)| now.duration_since(p.at) > CALL_DEADLINE)
            .filter(|(_, p)| now.duration_since(p.at) > p.limit)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            if let Some(p) = self.pending.remove(&id) {
                let why = format!(
                    "HERD_TIMEOUT: no reply from the primary within {:?}",
                    p.limit
                );
                // SAFETY: on the JavaScript thread (called from a JavaScript call).
                unsafe { reject_text(self.env, p.deferred, &why) };
            }
        }
        self.keep_alive();
    }

    /// The channel is lost: every waiting call is rejected, the view dropped, the socket closed.
    fn lose(&mut self, why: String) {
        if self.closed.is_some() {
            return;
        }
        if let Some(client) = client() {
            client.lost();
        }
        if let Some(p) = self.poll.take() {
            p.close();
        }
        let _ = rustix::net::shutdown(&self.fd, rustix::net::Shutdown::Both);
        self.wqueue.clear();
        self.wbytes = 0;
        let waiting = std::mem::take(&mut self.pending);
        self.closed = Some(why);
        if !waiting.is_empty() {
            let closed = || Err(CacheError::Channel(Box::new(herd::Error::ChannelClosed)));
            let answers = waiting.into_values().map(|p| (p.deferred, closed()));
            self.ready.extend(answers);
        }
    }

    fn keep_alive(&self) {
        if let Some(p) = &self.poll {
            p.keep_alive(!self.pending.is_empty());
        }
    }
}
