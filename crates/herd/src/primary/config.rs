//! The settings every fork uses, fixed when the cluster starts, and the checks on the descriptor
//! numbers workers get.

use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use herd_wire::{Codec, Limits};

use crate::cache::Hub;
use crate::node::session::Shared;
use crate::{sys, Error};

/// What every fork needs, fixed when the cluster starts.
#[derive(Clone, Debug)]
pub(super) struct Config {
    pub(super) program: PathBuf,
    pub(super) args: Vec<OsString>,
    pub(super) env: Vec<(OsString, OsString)>,
    pub(super) codec: Codec,
    pub(super) limits: Limits,
    pub(super) handshake_timeout: Duration,
    pub(super) grace: Duration,
    pub(super) request_timeout: Duration,
    pub(super) cache: Option<Hub>,
    pub(super) channel_fd: i32,
    pub(super) inherit: Vec<(Arc<OwnedFd>, i32)>,
    /// Listening sockets every worker gets at 3, 4, ... ([`crate::Worker::listeners`]).
    pub(super) listeners: Vec<Arc<OwnedFd>>,
    pub(super) capture_output: bool,
    pub(super) send_timeout: Duration,
    /// The listening sockets herd made for Node workers, kept for the cluster's life, and the
    /// balancer handing out their connections.
    pub(super) node: Shared,
    /// How a disconnected worker is told to stop once its channel is closed
    /// ([`crate::ClusterBuilder::stop_by`]).
    pub(super) stop: StopBy,
    /// The `cgroup.procs` of the cgroup every worker moves itself into before it runs
    /// ([`crate::ClusterBuilder::cgroup`]).
    pub(super) cgroup_procs: Option<Arc<OwnedFd>>,
    /// How long an online worker that answers pings may go without answering one
    /// ([`crate::ClusterBuilder::unresponsive`]).
    pub(super) unresponsive: Option<Duration>,
    /// The preload that answers pings from a Node worker's event loop and reports its stop
    /// hooks, when pinged or stopped by a signal.
    pub(super) preload: Option<Arc<crate::node::preload::Preload>>,
    /// How long after a stop a Node worker with a hook for its stop signal gets it
    /// ([`crate::ClusterBuilder::stop_settle`]).
    pub(super) stop_settle: Duration,
}

/// Checks that the descriptor numbers workers get are in range and distinct, and that they fit
/// under this process's open-file limit (see [`check_layout`]).
pub(super) fn check_numbers(cfg: &Config, extra: &[(OwnedFd, i32)]) -> Result<(), Error> {
    let mut numbers: Vec<i32> = cfg.inherit.iter().map(|(_, at)| *at).collect();
    numbers.extend((0..cfg.listeners.len()).map(|i| sys::CHANNEL_FD + i as i32));
    numbers.extend(extra.iter().map(|(_, at)| *at));
    numbers.push(cfg.channel_fd);
    check_layout(numbers, sys::fd_limit())
        .map_err(|why| Error::Spawn(std::io::Error::new(std::io::ErrorKind::InvalidInput, why)))
}

/// Checks the descriptor numbers a worker gets against `limit` (the soft `RLIMIT_NOFILE`): each
/// from 3 up, distinct, and low enough that the child can park a copy of every one just above
/// the highest before moving them into place (`sys::prepare_child`).
fn check_layout(mut numbers: Vec<i32>, limit: i32) -> Result<(), String> {
    numbers.sort_unstable();
    if let Some(bad) = numbers.iter().find(|n| **n < 3) {
        return Err(format!(
            "descriptor number {bad} for workers is below 3 (0, 1 and 2 are stdio)"
        ));
    }
    if numbers.windows(2).any(|w| w[0] == w[1]) {
        return Err("two descriptors for workers share one number".into());
    }
    let (Some(&highest), n) = (numbers.last(), numbers.len() as i64) else {
        return Ok(());
    };
    // The highest number, then a parked copy of each descriptor above it.
    let needed = i64::from(highest) + 1 + n;
    if needed > i64::from(limit) {
        return Err(format!(
            "descriptor number {highest} for workers does not fit under the open-file limit \
             {limit}: starting a worker moves its {n} descriptors through the numbers above it, \
             which needs a limit of at least {needed}; raise it (`ulimit -n {want}`) or use lower \
             numbers",
            want = needed.max(1024)
        ));
    }
    Ok(())
}

/// The lowest descriptor number from 3 up that is neither a listener's (3, 4, ... for
/// `listeners` of them) nor one of `taken`.
pub(super) fn first_free_fd(listeners: usize, taken: impl Iterator<Item = i32>) -> i32 {
    let taken: Vec<i32> = taken.collect();
    (sys::CHANNEL_FD + listeners as i32..)
        .find(|n| !taken.contains(n))
        .unwrap_or(sys::CHANNEL_FD)
}

/// How a worker is told to stop ([`crate::ClusterBuilder::stop_by`]), besides its channel
/// closing: after its channel is closed (or, for a Node cluster worker, after it closed it
/// itself once its servers were done), a worker still alive is told by a signal or a message,
/// and is killed when the grace period ends.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub enum StopBy {
    /// Nothing more: the worker reads end-of-stream and exits by itself (herd's own workers;
    /// the default).
    #[default]
    EndOfStream,
    /// This signal to its process group (`SIGTERM`, as systemd, Docker and Kubernetes send;
    /// `herd run`'s default).
    Signal(crate::Signal),
    /// This message on the channel, before it is closed (PM2's `'shutdown'`, for programs that
    /// listen for it instead of a signal).
    Message(serde_json::Value),
}

#[cfg(test)]
mod tests {
    use super::check_layout;

    #[test]
    fn the_layout_follows_the_open_file_limit() {
        // The channel at 3 and two listeners: fits under a limit of 64, and just under 7.
        assert_eq!(check_layout(vec![3, 4, 5], 64), Ok(()));
        assert_eq!(check_layout(vec![3, 4, 5], 9), Ok(()));
        // Above 255 is fine when the limit allows it (it was refused whatever the limit).
        assert_eq!(check_layout(vec![3, 300], 1024), Ok(()));
        let e = check_layout(vec![3, 4, 5], 8).unwrap_err();
        assert!(e.contains("ulimit -n") && e.contains("limit 8"), "{e}");
        assert_eq!(check_layout(vec![3, 60], 64), Ok(()));
        let e = check_layout(vec![3, 62], 64).unwrap_err();
        assert!(e.contains("number 62") && e.contains("at least 65"), "{e}");
        assert!(check_layout(vec![2], 64).unwrap_err().contains("below 3"));
        assert!(check_layout(vec![3, 3], 64).unwrap_err().contains("share"));
    }
}
