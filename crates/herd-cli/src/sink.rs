//! Where everything herd prints goes: workers' output lines, their messages and herd's own log
//! lines. Writers never block: a line is queued in a buffer bounded in bytes ([`BUDGET`]) and one
//! thread of its own, `herd-output`, does the (possibly blocking) writes to stdout and stderr. A
//! stalled reader (a full pipe nobody drains, a terminal paused with Ctrl-S, a stuck log
//! shipper) therefore delays no control call, no signal and no shutdown: once the buffer is
//! full, lines are dropped and counted ([`Sink::dropped`], added to `herd status`'s
//! `output_dropped`), and when the reader comes back herd says how many it lost.
//!
//! Log files ([`crate::logs::files`]) are a second sink of the same kind, with a thread and a
//! budget of their own, so a slow disk and a slow terminal never wait for each other; a
//! [`Dest`] is what a sink's thread writes to, and [`Sink::reopen`] has it open its files
//! again (SIGUSR1).

use std::collections::VecDeque;
use std::io::Write;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// Bytes queued at most before lines are dropped.
pub const BUDGET: usize = 4 << 20;

/// Which of herd's streams a line goes to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    /// Standard output.
    Out,
    /// Standard error.
    Err,
}

#[derive(Default)]
struct State {
    queue: VecDeque<(Stream, Vec<u8>)>,
    bytes: usize,
    /// Lines dropped in all.
    dropped: u64,
    /// Lines dropped since herd last said so.
    unreported: u64,
    /// Whether the writer is writing a line it took (the queue may be empty meanwhile).
    busy: bool,
    /// Whether the destination is to open its files again before the next write.
    reopen: bool,
}

/// What a sink's thread writes to.
pub trait Dest: Send + 'static {
    /// Writes `bytes` (whole lines) of `stream`.
    fn write(&mut self, stream: Stream, bytes: &[u8]) -> std::io::Result<()>;
    /// Opens its files again (after logrotate moved them); nothing by default.
    fn reopen(&mut self) {}
}

/// A writer per stream.
struct Opened {
    out: Box<dyn Write + Send>,
    err: Box<dyn Write + Send>,
}

impl Dest for Opened {
    fn write(&mut self, stream: Stream, bytes: &[u8]) -> std::io::Result<()> {
        let w = match stream {
            Stream::Out => &mut self.out,
            Stream::Err => &mut self.err,
        };
        w.write_all(bytes).and_then(|()| w.flush())
    }
}

struct Inner {
    state: Mutex<State>,
    /// Signalled when a line is queued.
    queued: Condvar,
    /// Signalled when the queue empties and the writer is idle.
    idle: Condvar,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The process-wide output sink (cheap to clone).
#[derive(Clone)]
pub struct Sink {
    inner: Arc<Inner>,
}

/// The process's sink, started on first use.
pub fn global() -> &'static Sink {
    static SINK: OnceLock<Sink> = OnceLock::new();
    SINK.get_or_init(|| {
        Sink::start(|s| -> Box<dyn Write + Send> {
            match s {
                Stream::Out => Box::new(std::io::stdout()),
                Stream::Err => Box::new(std::io::stderr()),
            }
        })
    })
}

impl Sink {
    /// A sink whose thread writes each line to `open(stream)`.
    fn start(open: impl Fn(Stream) -> Box<dyn Write + Send>) -> Sink {
        let dest = Opened {
            out: open(Stream::Out),
            err: open(Stream::Err),
        };
        Sink::to("herd-output", Box::new(dest))
    }

    /// A sink whose thread, named `name`, writes to `dest`.
    pub fn to(name: &str, dest: Box<dyn Dest>) -> Sink {
        let inner = Arc::new(Inner {
            state: Mutex::new(State::default()),
            queued: Condvar::new(),
            idle: Condvar::new(),
        });
        let sink = Sink {
            inner: inner.clone(),
        };
        let started = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || writer(&inner, dest));
        if started.is_err() {
            // No thread: every line is dropped (and counted) rather than written inline,
            // which could block.
            sink.lock().bytes = usize::MAX / 2;
        }
        sink
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.inner.lock()
    }

    /// Queues `line` (which should end with a newline) for `stream`; false if it was dropped
    /// because the buffer is full. Never blocks on the reader.
    pub fn write(&self, stream: Stream, line: Vec<u8>) -> bool {
        let mut s = self.lock();
        if s.bytes.saturating_add(line.len()) > BUDGET {
            s.dropped += 1;
            s.unreported += 1;
            return false;
        }
        s.bytes += line.len();
        s.queue.push_back((stream, line));
        drop(s);
        self.inner.queued.notify_one();
        true
    }

    /// Has the destination open its files again before its next write (SIGUSR1).
    pub fn reopen(&self) {
        self.lock().reopen = true;
        self.inner.queued.notify_one();
    }

    /// Lines dropped so far because the reader was too slow.
    pub fn dropped(&self) -> u64 {
        self.lock().dropped
    }

    /// Waits up to `limit` for every queued line to be written; whether they were. Drops not
    /// yet reported get their note first (at exit no later line would carry it).
    pub fn flush(&self, limit: Duration) -> bool {
        let deadline = Instant::now() + limit.min(Duration::from_secs(3600));
        let mut s = self.lock();
        let lost = std::mem::take(&mut s.unreported);
        if lost > 0 {
            s.queue
                .push_back((Stream::Err, drop_note(lost).into_bytes()));
            s.bytes = s
                .bytes
                .saturating_add(s.queue.back().map_or(0, |l| l.1.len()));
            self.inner.queued.notify_one();
        }
        while !s.queue.is_empty() || s.busy {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            s = self
                .inner
                .idle
                .wait_timeout(s, left)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
        true
    }
}

/// What herd says of `lost` lines it dropped.
fn drop_note(lost: u64) -> String {
    format!("herd: {lost} lines of output dropped: the reader was too slow\n")
}

/// The writer thread: takes what is queued, a batch per stream, and writes it.
fn writer(inner: &Inner, mut dest: Box<dyn Dest>) {
    loop {
        let (stream, batch, lost) = {
            let mut s = inner.lock();
            s.busy = false;
            while s.queue.is_empty() && !s.reopen {
                inner.idle.notify_all();
                s = inner
                    .queued
                    .wait(s)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
            }
            s.busy = true;
            if std::mem::take(&mut s.reopen) {
                drop(s);
                dest.reopen();
                continue;
            }
            let stream = s.queue[0].0;
            let mut batch = Vec::new();
            while let Some((st, _)) = s.queue.front() {
                if *st != stream || batch.len() >= 64 << 10 {
                    break;
                }
                let (_, line) = s.queue.pop_front().expect("a front line");
                s.bytes -= line.len();
                batch.extend_from_slice(&line);
            }
            (stream, batch, std::mem::take(&mut s.unreported))
        };
        if lost > 0 {
            let _ = dest.write(Stream::Err, drop_note(lost).as_bytes());
        }
        // A reader that went away (EPIPE: `herd run ... | head`) is not a reason to stop: the
        // lines are lost, and counted as dropped (`herd status` shows them).
        if dest.write(stream, &batch).is_err() {
            let lines = batch.iter().filter(|&&b| b == b'\n').count().max(1);
            inner.lock().dropped += lines as u64;
        }
    }
}

/// herd's log lines (`tracing`) into the sink, on stderr: each event is buffered and queued
/// whole when its writer is dropped.
#[derive(Clone, Copy, Debug, Default)]
pub struct Logs;

/// One log event on its way to the sink.
pub struct LogLine(Vec<u8>);

impl Write for LogLine {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        // One event is never allowed to take the whole buffer.
        let room = (64usize << 10).saturating_sub(self.0.len());
        self.0.extend_from_slice(&buf[..buf.len().min(room)]);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for LogLine {
    fn drop(&mut self) {
        if !self.0.is_empty() {
            global().write(Stream::Err, std::mem::take(&mut self.0));
        }
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Logs {
    type Writer = LogLine;
    fn make_writer(&'a self) -> LogLine {
        LogLine(Vec::new())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// A writer that blocks until told to go on, and reports what it wrote.
    struct Gate {
        go: Arc<(Mutex<bool>, Condvar)>,
        wrote: mpsc::Sender<Vec<u8>>,
    }
    impl Write for Gate {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let (m, c) = &*self.go;
            let mut open = m.lock().unwrap();
            while !*open {
                open = c.wait(open).unwrap();
            }
            let _ = self.wrote.send(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn a_stalled_reader_drops_lines_without_blocking_and_is_told_later() {
        let go = Arc::new((Mutex::new(false), Condvar::new()));
        let (tx, rx) = mpsc::channel();
        let (g, t) = (go.clone(), tx.clone());
        let sink = Sink::start(move |_| {
            Box::new(Gate {
                go: g.clone(),
                wrote: t.clone(),
            })
        });
        let line = vec![b'x'; 1023];
        let started = Instant::now();
        let mut kept = 0;
        for _ in 0..20_000 {
            kept += usize::from(sink.write(Stream::Out, [&line[..], b"\n"].concat()));
        }
        assert!(started.elapsed() < Duration::from_secs(5), "writes blocked");
        // The budget, plus the batch the writer may hold.
        assert!(kept <= BUDGET / 1024 + 64, "kept {kept}");
        assert_eq!(sink.dropped(), 20_000 - kept as u64);
        assert!(
            !sink.flush(Duration::from_millis(50)),
            "flushed a stalled sink"
        );
        *go.0.lock().unwrap() = true;
        go.1.notify_all();
        assert!(sink.flush(Duration::from_secs(10)));
        let all: Vec<u8> = rx.try_iter().flatten().collect();
        let text = String::from_utf8_lossy(&all);
        assert!(text.contains("lines of output dropped"), "no drop note");
        assert_eq!(text.matches('x').count(), kept * 1023);
    }

    #[test]
    fn a_drop_with_nothing_after_it_is_still_told_at_the_final_flush() {
        let go = Arc::new((Mutex::new(true), Condvar::new()));
        let (tx, rx) = mpsc::channel();
        let sink = Sink::start(move |_| {
            Box::new(Gate {
                go: go.clone(),
                wrote: tx.clone(),
            })
        });
        // Larger than the whole budget: dropped at once, with nothing queued behind it.
        assert!(!sink.write(Stream::Err, vec![b'y'; BUDGET + 1]));
        assert!(sink.flush(Duration::from_secs(10)));
        let all: Vec<u8> = rx.try_iter().flatten().collect();
        let text = String::from_utf8_lossy(&all);
        assert!(text.contains("herd: 1 lines of output dropped"), "{text}");
    }

    /// A reader that is gone (`herd run ... | head -2`: every write fails with EPIPE): the
    /// lines are lost and counted, and the sink goes on.
    #[test]
    fn lines_a_closed_reader_loses_are_counted_as_dropped() {
        struct Closed;
        impl Write for Closed {
            fn write(&mut self, _: &[u8]) -> std::io::Result<usize> {
                Err(std::io::ErrorKind::BrokenPipe.into())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let sink = Sink::start(|_| Box::new(Closed));
        for i in 0..100 {
            assert!(sink.write(Stream::Out, format!("line {i}\n").into_bytes()));
        }
        assert!(sink.flush(Duration::from_secs(10)));
        assert_eq!(sink.dropped(), 100);
    }
}
