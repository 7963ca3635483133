//! Each worker's CPU use now, in percent of one CPU, for `herd status` and `herd list`: the CPU
//! time a worker used between two status reports over the time between them. The last sample
//! of every worker is kept (one per live worker: the map is replaced on every report); a worker
//! with no sample from [`MIN_SPAN`] to [`MAX_SPAN`] ago has no figure in that report (the answer
//! never waits), and `herd status` and `herd list` ask again [`MIN_SPAN`] later
//! (`control::client::status_with_cpu`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herd::service::Status;

/// The shortest span a figure is measured over.
pub(super) const MIN_SPAN: Duration = Duration::from_millis(250);
/// The longest: an older sample says little about now.
pub(super) const MAX_SPAN: Duration = Duration::from_secs(30);

/// The last CPU sample of every worker, by pid (cheap to clone).
#[derive(Clone, Default)]
pub(super) struct Meter {
    last: Arc<Mutex<HashMap<u32, (f64, Instant)>>>,
}

impl Meter {
    /// Percent of one CPU per worker (by worker id) from `now` and the samples kept (`None`
    /// for a worker without a usable one); keeps `now`'s samples.
    pub(super) fn percent(&self, now: &Status, at: Instant) -> Vec<(u64, Option<f64>)> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let out = now
            .workers
            .iter()
            .map(|w| {
                if !w.measured {
                    return (w.worker.0, None);
                }
                let pct = last.get(&w.pid).and_then(|(cpu, then)| {
                    let span = at.saturating_duration_since(*then);
                    (MIN_SPAN..=MAX_SPAN)
                        .contains(&span)
                        .then(|| (w.cpu_s - cpu).max(0.0) / span.as_secs_f64() * 100.0)
                });
                (w.worker.0, pct)
            })
            .collect();
        let keep: HashMap<u32, (f64, Instant)> = now
            .workers
            .iter()
            .filter_map(|w| match last.get(&w.pid) {
                // A sample too recent to measure against is not replaced (so a burst of
                // reports still measures over MIN_SPAN), nor one by a report without figures.
                Some(&(cpu, then))
                    if !w.measured || at.saturating_duration_since(then) < MIN_SPAN =>
                {
                    Some((w.pid, (cpu, then)))
                }
                // Zeros that are no figure are not kept as one.
                _ if !w.measured => None,
                _ => Some((w.pid, (w.cpu_s, at))),
            })
            .collect();
        *last = keep;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use herd::service::WorkerStatus;

    fn status(cpu: &[(u32, f64)]) -> Status {
        let json = serde_json::json!({
            "wanted": cpu.len(), "restarting": [], "failed": [], "reloading": false,
            "reloads": 0, "output_dropped": 0, "events_dropped": 0,
            "workers": cpu.iter().map(|(pid, c)| serde_json::json!({
                "slot": 0, "worker": *pid as u64, "pid": pid, "state": "running",
                "uptime_s": 1.0, "restarts": 0, "rss": 0, "pss": 0, "messages": 0, "cpu_s": c,
            })).collect::<Vec<_>>(),
        });
        let s: Status = serde_json::from_value(json).unwrap();
        let _: &WorkerStatus = &s.workers[0];
        s
    }

    #[test]
    fn percent_is_cpu_time_over_wall_time_between_samples() {
        let m = Meter::default();
        let t0 = Instant::now();
        assert_eq!(m.percent(&status(&[(1, 2.0)]), t0), [(1, None)]);
        // Too soon: no figure, and the first sample stays.
        assert_eq!(
            m.percent(&status(&[(1, 2.1)]), t0 + Duration::from_millis(10)),
            [(1, None)]
        );
        let p = m.percent(&status(&[(1, 2.5), (2, 0.0)]), t0 + Duration::from_secs(1));
        assert_eq!(p[0].0, 1);
        assert!((p[0].1.unwrap() - 50.0).abs() < 1e-9, "{p:?}");
        assert_eq!(p[1], (2, None), "a new worker has no figure yet");
        // A sample too old says nothing.
        let p = m.percent(&status(&[(1, 9.0)]), t0 + Duration::from_secs(100));
        assert_eq!(p, [(1, None)]);
        // A report without figures (the meter did not answer in time) gives none and keeps
        // the last one: the next real figure is measured against it, not against zero.
        let t1 = t0 + Duration::from_secs(100);
        let mut unread = status(&[(1, 0.0)]);
        unread.workers[0].measured = false;
        assert_eq!(m.percent(&unread, t1 + Duration::from_secs(1)), [(1, None)]);
        let p = m.percent(&status(&[(1, 10.0)]), t1 + Duration::from_secs(2));
        assert!((p[0].1.unwrap() - 50.0).abs() < 1e-9, "{p:?}");
        // Dead workers' samples go.
        m.percent(&status(&[(3, 0.0)]), t0 + Duration::from_secs(101));
        assert_eq!(m.last.lock().unwrap().len(), 1);
    }
}
