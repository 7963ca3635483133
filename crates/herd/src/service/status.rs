//! What `herd status` shows: [`Status`] and [`WorkerStatus`], built from the state machine's
//! slots and members, with each worker's memory read from `/proc` (outside the actor).

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::meter::Meter;
use super::state::{Machine, Role, SlotState};
use crate::WorkerId;

/// One worker, as `herd status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct WorkerStatus {
    /// Its slot (0-based), if it holds one.
    pub slot: Option<usize>,
    /// The worker's id.
    pub worker: WorkerId,
    /// Its process id.
    pub pid: u32,
    /// `starting`, `running`, `retiring` (being replaced or scaled away), `stopping`.
    pub state: String,
    /// Seconds since it started.
    pub uptime_s: f64,
    /// Restarts of its slot so far.
    pub restarts: u32,
    /// Of those, workers of its slot replaced for answering no liveness ping.
    #[serde(default)]
    pub unresponsive: u32,
    /// Workers of its slot replaced for staying over the memory limit (not counted in
    /// `restarts`).
    #[serde(default)]
    pub memory_replaced: u32,
    /// Resident memory (bytes), from /proc.
    pub rss: u64,
    /// Proportional set size (bytes; shared pages split among their users), from /proc.
    pub pss: u64,
    /// CPU time it has used (user and system, seconds), from /proc.
    #[serde(default)]
    pub cpu_s: f64,
    /// Whether `rss`, `pss` and `cpu_s` were read for this report (false: /proc did not answer
    /// in time, and they are zeros, not figures).
    #[serde(default = "yes")]
    pub measured: bool,
    /// Messages received from it.
    pub messages: u64,
    /// Node's own internal messages (`NODE_*` `cmd`s that are not herd's) it sent, which herd
    /// drops (Node json codec only).
    #[serde(default)]
    pub internal_dropped: u64,
    /// How its slot's previous worker ended (`exit code 1`, `signal 9 (KILL)`), if one did.
    #[serde(default)]
    pub last_exit: Option<String>,
    /// The last error one of its servers got trying to listen (a Node worker whose address
    /// herd could not bind), if any: a worker shown running that serves nothing.
    #[serde(default)]
    pub listen_error: Option<String>,
}

/// The whole service, as `herd status` shows it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Status {
    /// Workers wanted.
    pub wanted: usize,
    /// Live workers.
    pub workers: Vec<WorkerStatus>,
    /// Slots waiting to restart: (slot, seconds until it does).
    pub restarting: Vec<(usize, f64)>,
    /// Slots that gave up (crash loop): (slot, why).
    pub failed: Vec<(usize, String)>,
    /// Whether a rolling reload is going on.
    pub reloading: bool,
    /// Rolling reloads completed.
    pub reloads: u64,
    /// Worker output lines, messages and requests dropped because the reader of the service's
    /// events was too slow (requests dropped this way were answered with an error).
    pub output_dropped: u64,
    /// Lifecycle events (forks, exits, restarts, ...) dropped because the reader of the
    /// service's events was far behind (see [`super::ServiceEvent`]).
    #[serde(default)]
    pub events_dropped: u64,
    /// Worker messages relayed to other workers ([`super::Relay::Others`]), and those a
    /// worker missed because its queue was full.
    #[serde(default)]
    pub relayed: (u64, u64),
    /// The addresses herd serves its Node workers' servers on ([`crate::Cluster::serving`]).
    #[serde(default)]
    pub serving: Vec<crate::Serving>,
}

/// Counters the actor keeps besides the machine.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Dropped {
    pub(crate) output: u64,
    pub(crate) events: u64,
    /// Messages relayed, and missed by a worker whose queue was full.
    pub(crate) relayed: (u64, u64),
}

/// The status at `now`, without memory figures; `process` gives a worker's process id and its
/// count of dropped Node internal messages.
pub(crate) fn build(
    m: &Machine,
    now: Instant,
    process: impl Fn(WorkerId) -> (u32, u64, Option<String>),
    dropped: Dropped,
) -> Status {
    let mut workers: Vec<WorkerStatus> = m
        .members
        .iter()
        .map(|(id, w)| {
            let state = match w.role {
                _ if m.stopping() => "stopping",
                Role::Active => "running",
                Role::Candidate => "starting",
                Role::Retiring => "retiring",
            };
            let (pid, internal_dropped, listen_error) = process(*id);
            WorkerStatus {
                slot: w.slot,
                worker: *id,
                pid,
                state: state.into(),
                uptime_s: now.duration_since(w.started).as_secs_f64(),
                restarts: w
                    .slot
                    .and_then(|s| m.slots.get(s))
                    .map_or(0, |s| s.restarts),
                unresponsive: w
                    .slot
                    .and_then(|s| m.slots.get(s))
                    .map_or(0, |s| s.unresponsive),
                memory_replaced: w
                    .slot
                    .and_then(|s| m.slots.get(s))
                    .map_or(0, |s| s.memory_replaced),
                rss: 0,
                pss: 0,
                cpu_s: 0.0,
                measured: false,
                messages: w.messages,
                internal_dropped,
                listen_error,
                last_exit: w
                    .slot
                    .and_then(|s| m.slots.get(s))
                    .and_then(|s| s.last_exit)
                    .map(|e| e.to_string()),
            }
        })
        .collect();
    workers.sort_by_key(|w| (w.slot.unwrap_or(usize::MAX), w.worker));
    let slots = m.slots.iter().enumerate();
    Status {
        wanted: m.wanted(),
        workers,
        restarting: slots
            .clone()
            .filter_map(|(i, s)| match s.state {
                SlotState::Restarting { at } => {
                    Some((i, at.saturating_duration_since(now).as_secs_f64()))
                }
                _ => None,
            })
            .collect(),
        failed: slots
            .filter_map(|(i, s)| match &s.state {
                SlotState::Failed(why) => Some((i, why.clone())),
                _ => None,
            })
            .collect(),
        reloading: m.reloading(),
        reloads: m.reloads,
        output_dropped: dropped.output,
        events_dropped: dropped.events,
        relayed: dropped.relayed,
        serving: Vec::new(),
    }
}

/// Fills in each worker's memory and CPU figures; a worker whose figures could not be read in
/// time has zeros and `measured: false`.
pub(crate) async fn add_memory(status: &mut Status, meter: &Meter) {
    let pids: Vec<u32> = status.workers.iter().map(|w| w.pid).collect();
    let figures = meter.read(&pids).await;
    for w in &mut status.workers {
        // Read in time (a figure the kernel does not give, such as a zombie's memory, stays 0).
        w.measured = figures.contains_key(&w.pid);
        let f = figures.get(&w.pid).copied().unwrap_or_default();
        w.rss = f.rss.unwrap_or(0);
        w.pss = f.pss.unwrap_or(0);
        w.cpu_s = f.cpu_s.unwrap_or(0.0);
    }
}

fn yes() -> bool {
    true
}
