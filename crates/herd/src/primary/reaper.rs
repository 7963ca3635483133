//! herd as a child subreaper (opt-in: [`crate::ClusterBuilder::subreaper`]): processes a
//! worker started and left behind re-parent to this process instead of pid 1, and a reaper task
//! reaps them, without ever reaping a worker whose exit status its supervisor waits for.
//!
//! Which zombies are reaped: a child of this process that is a zombie, was not forked by
//! herd's spawner (or was, and its supervisor is done with it), and is not in this process's
//! own process group (so the host's own children, which normally are, are left to the code
//! that waits for them). Forks and reaping passes take one lock, so a worker that exits at
//! once is registered before any pass can see its zombie.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use rustix::process::{Pid, WaitOptions};

/// The processes forked by herd's spawner whose supervisor has not finished with them: never
/// reaped here, since tokio's `Child::wait` reaps them.
static OWN: Mutex<Option<HashSet<u32>>> = Mutex::new(None);

/// Whether the reaper task runs.
static STARTED: AtomicBool = AtomicBool::new(false);

/// How often a reaping pass runs besides on `SIGCHLD` (signals coalesce; a pass is cheap).
const PASS_EVERY: Duration = Duration::from_secs(2);

/// The least time between two passes: a pass reads a file per child, and a storm of `SIGCHLD`
/// (workers restarting in a loop) is answered by one pass per period, not one per signal.
const PASS_AT_MOST_EVERY: Duration = Duration::from_millis(200);

/// The spawner's lock over the registry of herd's own children.
pub(super) struct Own(MutexGuard<'static, Option<HashSet<u32>>>);

impl Own {
    /// Registers a child the spawner has just forked.
    pub(super) fn insert(&mut self, pid: u32) {
        self.0.get_or_insert_with(HashSet::new).insert(pid);
    }
}

/// Locks the registry; the spawner holds it across a fork and the registration.
pub(super) fn own() -> Own {
    Own(OWN.lock().unwrap_or_else(|e| e.into_inner()))
}

/// Takes a child out of the registry: its supervisor reaped it (or gave up on it, leaving it to
/// tokio's own reaping of dropped children).
pub(super) fn release(pid: u32) {
    if let Some(set) = own().0.as_mut() {
        set.remove(&pid);
    }
}

/// Releases a child (see [`release`]) when dropped, unless [`Registered::keep`] hands it on to
/// its supervisor first: a fork that fails after the spawn leaves nothing registered.
#[derive(Debug)]
pub(super) struct Registered(pub(super) u32);

impl Registered {
    /// Its supervisor takes over, and releases it once it reaped it.
    pub(super) fn keep(self) {
        std::mem::forget(self);
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        release(self.0);
    }
}

/// Makes this process a child subreaper and starts the reaper task on the current tokio
/// runtime (once per process). Must be called inside a tokio runtime.
pub(crate) fn enable() -> std::io::Result<()> {
    if STARTED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    if let Err(e) = rustix::process::set_child_subreaper(Some(rustix::process::getpid())) {
        STARTED.store(false, Ordering::SeqCst);
        return Err(e.into());
    }
    let mut sigchld = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::child()) {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::debug!(error = %e, "no SIGCHLD stream; reaping on a timer only");
            None
        }
    };
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(PASS_EVERY);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                Some(()) = async { match sigchld.as_mut() { Some(s) => s.recv().await, None => None } } => {}
            }
            let reaped = tokio::task::spawn_blocking(reap_adopted).await.unwrap_or(0);
            if reaped > 0 {
                tracing::debug!(reaped, "reaped processes left behind by workers");
            }
            // Rate limit (signals that come meanwhile are kept by the stream, and answered by
            // the next pass).
            tokio::time::sleep(PASS_AT_MOST_EVERY).await;
        }
    });
    Ok(())
}

/// One reaping pass: reaps every zombie child that is neither herd's own worker nor in this
/// process's group; how many.
pub(crate) fn reap_adopted() -> usize {
    let me = rustix::process::getpid().as_raw_nonzero().get();
    // From /proc, not getpgrp(): as PID 1 of a PID namespace herd's group lies outside it, and
    // is 0 there (which is also what /proc says of its children in that group).
    // Unread, it is unknown: no pass then (a guess could reap an embedding host's children).
    let Some(my_group) = crate::procfs::stat(me).map(|s| s.pgrp) else {
        return 0;
    };
    let kids = crate::procfs::children();
    let guard = own();
    let mut reaped = 0;
    for pid in kids {
        let Some(crate::procfs::Stat { state, ppid, pgrp }) = crate::procfs::stat(pid) else {
            continue;
        };
        let ours = guard.0.as_ref().is_some_and(|s| s.contains(&(pid as u32)));
        if state != 'Z' || ppid != me || pgrp == my_group || ours {
            continue;
        }
        let Some(pid) = Pid::from_raw(pid) else {
            continue;
        };
        if let Ok(Some(_)) = rustix::process::waitpid(Some(pid), WaitOptions::NOHANG) {
            reaped += 1;
        }
    }
    reaped
}
