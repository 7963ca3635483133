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
//! one runs are merged into the next); a reading started less than [`FRESH`] ago is used as it
//! is. If the thread is stuck, callers get what the last reading had for each pid (or nothing)
//! at their deadline: at most one thread is ever lost, and `herd status` still answers.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::watch;

/// How long a caller waits for its reading.
pub(crate) const WAIT: Duration = Duration::from_secs(1);

/// A reading this recent serves a new caller as it is. Short, since `herd status` takes two
/// reports 300 ms apart to work out CPU %.
pub(crate) const FRESH: Duration = Duration::from_millis(100);

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

/// What a job reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Depth {
    /// `statm` only: what `--max-memory` samples each second.
    Private,
    /// Everything, for `herd status`.
    Full,
}

/// Reads one process.
pub(crate) type Reader = dyn Fn(u32, Depth) -> Figures + Send + Sync;

/// A job's result.
struct Reading {
    /// The job's number (1 for the first).
    job: u64,
    started: Instant,
    depth: Depth,
    figures: HashMap<u32, Figures>,
}

#[derive(Default)]
struct Queue {
    /// Pids of the next job, and how deep it reads.
    next: BTreeSet<u32>,
    depth: Option<Depth>,
    /// The number the next job will have.
    next_job: u64,
    closed: bool,
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// The reading thread's handle; the thread ends when this is dropped (once out of a read).
pub(crate) struct Meter {
    shared: Arc<Shared>,
    latest: watch::Receiver<Arc<Reading>>,
    /// Callers answered at their deadline (logged at powers of two).
    late: std::sync::atomic::AtomicU64,
}

impl Meter {
    /// A meter reading `/proc`.
    pub(crate) fn new() -> Meter {
        Meter::with_reader(Arc::new(read_proc))
    }

    /// A meter reading with `reader` (tests give one that blocks).
    pub(crate) fn with_reader(reader: Arc<Reader>) -> Meter {
        let shared = Arc::new(Shared {
            queue: Mutex::new(Queue {
                next_job: 1,
                ..Queue::default()
            }),
            wake: Condvar::new(),
        });
        let empty = Reading {
            job: 0,
            started: Instant::now(),
            depth: Depth::Private,
            figures: HashMap::new(),
        };
        let (tx, latest) = watch::channel(Arc::new(empty));
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("herd-meter".into())
            .spawn(move || run(&s, &*reader, &tx));
        if let Err(e) = spawned {
            // Every caller then gets empty figures at its deadline.
            tracing::warn!(error = %e, "cannot start the thread that reads workers' figures");
        }
        Meter {
            shared,
            latest,
            late: Default::default(),
        }
    }

    /// Figures for `pids`, read at `depth` or deeper by a job that started at most [`FRESH`]
    /// before this call, waiting at most [`WAIT`]; past it, whatever the last reading had.
    /// Cancel-safe: dropping the future leaves at most a merged job behind.
    pub(crate) async fn read(&self, pids: &[u32], depth: Depth) -> HashMap<u32, Figures> {
        let asked = Instant::now();
        let covers = |r: &Reading| {
            r.depth >= depth
                && r.started + FRESH >= asked
                && pids.iter().all(|p| r.figures.contains_key(p))
        };
        let mut latest = self.latest.clone();
        let want = {
            let r = latest.borrow_and_update();
            if covers(&r) {
                return pick(&r, pids);
            }
            let Ok(mut q) = self.shared.queue.lock() else {
                return pick(&r, pids);
            };
            // A stuck thread takes nothing: a bound, so that replaced workers' pids do not
            // pile up behind it.
            if q.next.len() < MAX_PENDING {
                q.next.extend(pids.iter().copied());
            }
            q.depth = q.depth.max(Some(depth));
            self.shared.wake.notify_one();
            q.next_job
        };
        let waited = tokio::time::timeout(WAIT, latest.wait_for(|r| r.job >= want)).await;
        if let Ok(Ok(r)) = waited {
            return pick(&r, pids);
        }
        drop(waited);
        let late = self.late.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        if late.is_power_of_two() {
            tracing::warn!(
                late,
                "reading workers' figures from /proc took over {WAIT:?} (a worker stuck in the \
             kernel?): answering with the last figures read"
            );
        }
        let r = latest.borrow();
        pick(&r, pids)
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

fn pick(r: &Reading, pids: &[u32]) -> HashMap<u32, Figures> {
    pids.iter()
        .filter_map(|p| Some((*p, *r.figures.get(p)?)))
        .collect()
}

/// The thread: one job at a time, each reading what was asked for while the last one ran.
fn run(shared: &Shared, reader: &Reader, out: &watch::Sender<Arc<Reading>>) {
    loop {
        let (job, pids, depth) = {
            let Ok(mut q) = shared.queue.lock() else {
                return;
            };
            loop {
                if q.closed {
                    return;
                }
                if let Some(depth) = q.depth.take() {
                    let job = q.next_job;
                    q.next_job += 1;
                    break (job, std::mem::take(&mut q.next), depth);
                }
                q = match shared.wake.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
        };
        let started = Instant::now();
        let figures = pids.into_iter().map(|p| (p, reader(p, depth))).collect();
        let reading = Reading {
            job,
            started,
            depth,
            figures,
        };
        if out.send(Arc::new(reading)).is_err() {
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
