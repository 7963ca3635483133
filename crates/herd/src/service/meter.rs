//! Reading workers' figures from `/proc` without letting a stuck read pile up: [`Meter`].
//!
//! A `/proc/PID/smaps_rollup` read takes the process's memory-map lock, so a worker stuck in
//! the kernel (a page fault on a hung network or FUSE file) can hold it for ever. Before, each
//! `herd status` (and each `/metrics` scrape, which asks for one) started its own blocking read;
//! one stuck worker made each of them a thread lost for good, until tokio's blocking pool was
//! spent and every `spawn_blocking` in herd (file reads, rescue steps) waited.
//!
//! Now one thread of its own does every read, one job at a time. A caller names the pids it
//! wants and waits at most [`WAIT`] for a job that started after it asked (jobs asked for while
//! one runs are merged into the next); a figure read less than [`FRESH`] ago is used as it is.
//! If the thread is stuck, callers get no figures at their deadline (never stale ones, which
//! would skew CPU % and memory samples): at most one thread is lost, and `herd status` still
//! answers. `--max-memory`'s samples (statm, which takes no lock of the process's) have a meter
//! of their own, so a stuck full read does not stop the memory limit.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long a caller waits for its reading.
pub(crate) const WAIT: Duration = Duration::from_secs(1);

/// A figure read this recently serves a caller as it is (callers at one moment share a job);
/// short, since `herd status` takes two reports 300 ms apart to work out CPU %.
pub(crate) const FRESH: Duration = Duration::from_millis(20);

/// Figures older than this are forgotten (pids of workers gone).
const FORGET: Duration = Duration::from_secs(10);

/// Pids waiting for the next job at most.
const MAX_PENDING: usize = 16_384;

/// One process's figures; `None` where they could not be read or were not asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub(crate) struct Figures {
    /// Resident set size, bytes (smaps_rollup).
    pub(crate) rss: Option<u64>,
    /// Proportional set size, bytes (smaps_rollup).
    pub(crate) pss: Option<u64>,
    /// User and system CPU time, seconds (stat).
    pub(crate) cpu_s: Option<f64>,
    /// Resident memory less shared pages, bytes (statm).
    pub(crate) private: Option<u64>,
}

/// What a meter reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Depth {
    /// `statm` only: what `--max-memory` samples each second. It takes no lock of the
    /// process's, so a meter of its own goes on where a full read is stuck.
    Private,
    /// Everything, for `herd status`.
    Full,
}

/// Reads one process.
pub(crate) type Reader = dyn Fn(u32, Depth) -> Figures + Send + Sync;

#[derive(Default)]
struct Queue {
    /// Pids of the next job.
    next: BTreeSet<u32>,
    /// The number the next job will have.
    next_job: u64,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
    /// Each pid's last figures, and when the job that read them started.
    seen: Mutex<HashMap<u32, (Instant, Figures)>>,
}

/// The reading thread's handle; the thread ends when this is dropped (once out of a read).
pub(crate) struct Meter {
    shared: Arc<Shared>,
    /// The number of the last job done.
    done: watch::Receiver<u64>,
    /// How recent a figure serves as it is ([`FRESH`]).
    fresh: Duration,
    /// Callers answered at their deadline (logged at powers of two).
    late: std::sync::atomic::AtomicU64,
}

impl Meter {
    /// A meter reading `/proc` at `depth`.
    pub(crate) fn new(depth: Depth) -> Meter {
        Meter::with_reader(depth, FRESH, Arc::new(read_proc))
    }

    /// A meter reading with `reader` (tests give one that blocks), reusing figures `fresh`.
    pub(crate) fn with_reader(depth: Depth, fresh: Duration, reader: Arc<Reader>) -> Meter {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                next_job: 1,
                ..Queue::default()
            }),
            wake: Condvar::new(),
            seen: Mutex::new(HashMap::new()),
        });
        let (tx, done) = watch::channel(0);
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("herd-meter".into())
            .spawn(move || run(&s, depth, &*reader, &tx));
        if let Err(e) = spawned {
            // Every caller then gets no figures at its deadline.
            tracing::warn!(error = %e, "cannot start the thread that reads workers' figures");
        }
        Meter {
            shared,
            done,
            fresh,
            late: Default::default(),
        }
    }

    /// Figures for `pids` read by a job that started at most [`FRESH`] before this call,
    /// waiting at most [`WAIT`]; a pid with none by then is left out (never stale figures).
    /// Cancel-safe: dropping the future leaves at most a merged job behind.
    pub(crate) async fn read(&self, pids: &[u32]) -> HashMap<u32, Figures> {
        let asked = Instant::now();
        // Pid 0 is no process (a worker not forked yet): never read.
        let pids: Vec<u32> = pids.iter().copied().filter(|p| *p != 0).collect();
        let pids = &pids[..];
        let fresh = |seen: &HashMap<u32, (Instant, Figures)>| -> HashMap<u32, Figures> {
            pids.iter()
                .filter_map(|p| {
                    let (at, f) = seen.get(p)?;
                    (*at + self.fresh >= asked).then_some((*p, *f))
                })
                .collect()
        };
        let got = self
            .shared
            .seen
            .lock()
            .map(|s| fresh(&s))
            .unwrap_or_default();
        if pids.iter().all(|p| got.contains_key(p)) {
            return got;
        }
        let want = {
            let Ok(mut q) = self.shared.queue.lock() else {
                return got;
            };
            // A stuck thread takes nothing: a bound, so that replaced workers' pids do not
            // pile up behind it.
            if q.next.len() < MAX_PENDING {
                q.next
                    .extend(pids.iter().copied().filter(|p| !got.contains_key(p)));
            }
            self.shared.wake.notify_one();
            q.next_job
        };
        let mut done = self.done.clone();
        let waited = tokio::time::timeout(WAIT, done.wait_for(|j| *j >= want)).await;
        if !matches!(waited, Ok(Ok(_))) {
            let late = self.late.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            if late.is_power_of_two() {
                tracing::warn!(
                    late,
                    "reading workers' figures from /proc took over {WAIT:?} (a worker stuck in \
                     the kernel?): answering without them"
                );
            }
        }
        drop(waited);
        self.shared
            .seen
            .lock()
            .map(|s| fresh(&s))
            .unwrap_or_default()
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.closed = true;
        }
        self.shared.wake.notify_one();
    }
}

/// The thread: one job at a time, each reading what was asked for while the last one ran.
fn run(shared: &Shared, depth: Depth, reader: &Reader, out: &watch::Sender<u64>) {
    loop {
        let (job, pids) = {
            let Ok(mut q) = shared.queue.lock() else {
                return;
            };
            loop {
                if q.closed {
                    return;
                }
                if !q.next.is_empty() {
                    let job = q.next_job;
                    q.next_job += 1;
                    break (job, std::mem::take(&mut q.next));
                }
                q = match shared.wake.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
        };
        let started = Instant::now();
        let figures: Vec<(u32, Figures)> =
            pids.into_iter().map(|p| (p, reader(p, depth))).collect();
        if let Ok(mut seen) = shared.seen.lock() {
            seen.retain(|_, (at, _)| at.elapsed() < FORGET);
            seen.extend(figures.into_iter().map(|(p, f)| (p, (started, f))));
        }
        if out.send(job).is_err() {
            return;
        }
    }
}

/// One process's figures from `/proc`.
fn read_proc(pid: u32, depth: Depth) -> Figures {
    let private = crate::procfs::private_rss(pid);
    if depth == Depth::Private {
        return Figures {
            private,
            ..Figures::default()
        };
    }
    let (rss, pss) = crate::procfs::rss_pss(pid).unzip();
    Figures {
        rss,
        pss,
        cpu_s: crate::procfs::cpu_seconds(pid),
        private,
    }
}

#[cfg(test)]
mod tests;
