//! Waiting on a [`Cluster`]'s events in tests: every wait has a deadline, nothing sleeps.

use std::time::Duration;

use herd::{Cluster, Event};

/// How long a test waits for any one event.
pub const DEADLINE: Duration = Duration::from_secs(20);

/// The cluster's next event; panics if none comes within [`DEADLINE`] or the stream ends.
pub async fn next(cluster: &mut Cluster) -> Event {
    tokio::time::timeout(DEADLINE, cluster.next_event())
        .await
        .expect("an event within the deadline")
        .expect("the cluster is running")
}

/// Waits for an event matching `want`, returning it and the events skipped on the way.
pub async fn until(cluster: &mut Cluster, want: impl Fn(&Event) -> bool) -> (Event, Vec<Event>) {
    let mut skipped = Vec::new();
    loop {
        let ev = next(cluster).await;
        if want(&ev) {
            return (ev, skipped);
        }
        skipped.push(ev);
    }
}
