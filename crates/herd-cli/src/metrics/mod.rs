//! `herd run --metrics ADDR`: the status report as OpenMetrics text (what Prometheus scrapes),
//! through the `prometheus-client` crate. Each scrape asks the service for a fresh report, the
//! same one `herd status` gets ([`http`] serves it), and [`render`] turns it into metrics:
//!
//! - per worker (labels `worker`, `slot`): CPU seconds, resident and proportional memory,
//!   uptime, messages; and by state, how many workers are in it;
//! - per slot: restarts, and of the replacements those for a missed liveness ping (`hang`) and
//!   for the memory limit (`memory`);
//! - the service: workers wanted, slots given up (crash loops), reloads, whether one runs, and
//!   what was dropped (output lines, `herd logs -f` lines, lifecycle events, relayed messages);
//! - the cache, when there is one: hits, misses, loads, coalesced waits, evictions, source
//!   calls and errors, stale answers, invalidations, entries and bytes.

pub mod http;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use std::sync::atomic::AtomicU64;

use crate::control::proto::Report;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct WorkerLabels {
    worker: String,
    slot: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SlotLabels {
    slot: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReasonLabels {
    slot: String,
    reason: String,
}

type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

fn counter(r: &mut Registry, name: &str, help: &str, v: u64) {
    let c: Counter = Counter::default();
    c.inc_by(v);
    r.register(name, help, c);
}

fn gauge(r: &mut Registry, name: &str, help: &str, unit: Option<Unit>, v: i64) {
    let g: Gauge = Gauge::default();
    g.set(v);
    match unit {
        Some(u) => r.register_with_unit(name, help, u, g),
        None => r.register(name, help, g),
    }
}

/// The report as OpenMetrics text (ending with `# EOF`).
pub fn render(report: &Report) -> String {
    let mut r = Registry::with_prefix("herd");
    let s = &report.status;
    let labels = |w: &herd::service::WorkerStatus| WorkerLabels {
        worker: w.worker.0.to_string(),
        slot: w.slot.map_or("none".into(), |s| s.to_string()),
    };
    let cpu = Family::<WorkerLabels, FloatCounter>::default();
    let rss = Family::<WorkerLabels, Gauge>::default();
    let pss = Family::<WorkerLabels, Gauge>::default();
    let uptime = Family::<WorkerLabels, FloatGauge>::default();
    let messages = Family::<WorkerLabels, Counter>::default();
    let states = Family::<StateLabels, Gauge>::default();
    let restarts = Family::<SlotLabels, Counter>::default();
    let replaced = Family::<ReasonLabels, Counter>::default();
    for w in &s.workers {
        let l = labels(w);
        // Figures /proc did not give in time are left out, not zeros (a counter at zero
        // would read as a reset).
        if w.measured {
            cpu.get_or_create(&l).inc_by(w.cpu_s.max(0.0));
            rss.get_or_create(&l)
                .set(i64::try_from(w.rss).unwrap_or(i64::MAX));
            pss.get_or_create(&l)
                .set(i64::try_from(w.pss).unwrap_or(i64::MAX));
        }
        uptime.get_or_create(&l).set(w.uptime_s);
        messages.get_or_create(&l).inc_by(w.messages);
        let state = if w.state == "running" && w.listen_error.is_some() {
            "no-listen"
        } else {
            &w.state
        };
        states
            .get_or_create(&StateLabels {
                state: state.into(),
            })
            .inc();
    }
    // A slot's counters, once per slot: while a reload or a memory replacement runs, the new
    // worker and the old one share a slot, and each reports the slot's counts.
    let mut slots: std::collections::BTreeMap<usize, (u32, u32, u32)> = Default::default();
    for w in &s.workers {
        if let Some(slot) = w.slot {
            let c = slots.entry(slot).or_default();
            *c = (
                c.0.max(w.restarts),
                c.1.max(w.unresponsive),
                c.2.max(w.memory_replaced),
            );
        }
    }
    for (slot, (restarted, hang, memory)) in slots {
        let slot = slot.to_string();
        restarts
            .get_or_create(&SlotLabels { slot: slot.clone() })
            .inc_by(restarted.into());
        for (reason, n) in [("hang", hang), ("memory", memory)] {
            replaced
                .get_or_create(&ReasonLabels {
                    slot: slot.clone(),
                    reason: reason.into(),
                })
                .inc_by(n.into());
        }
    }
    r.register_with_unit("worker_cpu", "CPU time a worker used", Unit::Seconds, cpu);
    r.register_with_unit(
        "worker_resident",
        "A worker's resident memory (RSS)",
        Unit::Bytes,
        rss,
    );
    r.register_with_unit(
        "worker_proportional",
        "A worker's proportional set size (PSS: shared pages split among their users)",
        Unit::Bytes,
        pss,
    );
    r.register_with_unit(
        "worker_uptime",
        "Since a worker started",
        Unit::Seconds,
        uptime,
    );
    r.register(
        "worker_messages",
        "Messages a worker sent the primary",
        messages,
    );
    r.register("workers", "Live workers by state", states);
    r.register("slot_restarts", "Restarts of a slot's worker", restarts);
    r.register(
        "slot_replaced",
        "Workers of a slot replaced: for a missed liveness ping (hang) or the memory limit",
        replaced,
    );
    gauge(
        &mut r,
        "workers_wanted",
        "Workers wanted",
        None,
        s.wanted as i64,
    );
    gauge(
        &mut r,
        "slots_failed",
        "Slots that gave up (crash loop)",
        None,
        s.failed.len() as i64,
    );
    gauge(
        &mut r,
        "slots_restarting",
        "Slots waiting to restart",
        None,
        s.restarting.len() as i64,
    );
    gauge(
        &mut r,
        "reloading",
        "Whether a rolling reload runs",
        None,
        i64::from(s.reloading),
    );
    gauge(
        &mut r,
        "uptime_seconds",
        "Since herd started",
        None,
        report.uptime_s as i64,
    );
    counter(&mut r, "reloads", "Rolling reloads completed", s.reloads);
    counter(
        &mut r,
        "output_dropped",
        "Worker lines and messages herd's output dropped",
        s.output_dropped,
    );
    counter(
        &mut r,
        "logs_dropped",
        "Lines herd logs -f readers lost for reading too slowly",
        report.logs_dropped,
    );
    counter(
        &mut r,
        "events_dropped",
        "Lifecycle events dropped for a slow reader",
        s.events_dropped,
    );
    counter(
        &mut r,
        "messages_relayed",
        "Worker messages relayed to the other workers",
        s.relayed.0,
    );
    counter(
        &mut r,
        "messages_relay_missed",
        "Relayed messages a worker missed (its queue full)",
        s.relayed.1,
    );
    if let Some(c) = &report.cache {
        let cr = r.sub_registry_with_prefix("cache");
        for (name, help, v) in [
            ("hits", "Answers from memory", c.hits),
            ("misses", "Keys not held when asked", c.misses),
            ("loads", "Loads from the source", c.loads),
            (
                "coalesced",
                "Asks that waited for a load already running",
                c.coalesced,
            ),
            (
                "stale_served",
                "Stale values served while the source failed",
                c.stale_served,
            ),
            ("errors", "Source errors", c.errors),
            ("invalidations", "Keys invalidated", c.invalidations),
            ("evictions", "Entries evicted for room", c.evictions),
            ("source_calls", "Calls to the source", c.source_calls),
        ] {
            counter(cr, name, help, v);
        }
        gauge(cr, "entries", "Entries held", None, c.entries as i64);
        gauge(
            cr,
            "held",
            "Bytes of values held",
            Some(Unit::Bytes),
            c.bytes as i64,
        );
        gauge(
            cr,
            "shared",
            "Bytes of values in shared memory",
            Some(Unit::Bytes),
            c.shared_bytes as i64,
        );
        gauge(
            cr,
            "tracking",
            "Whether the source's invalidations are tracked",
            None,
            i64::from(c.tracking),
        );
        gauge(
            cr,
            "warm",
            "Whether warming finished",
            None,
            i64::from(c.warm),
        );
    }
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &r).expect("writing to a String");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_renders_as_openmetrics() {
        let json = serde_json::json!({
            "status": {
                "wanted": 2, "restarting": [], "failed": [[1, "crash loop"]], "reloading": false,
                "reloads": 3, "output_dropped": 4, "events_dropped": 0,
                "workers": [{
                    "slot": 0, "worker": 7, "pid": 70, "state": "running", "uptime_s": 1.5,
                    "restarts": 2, "unresponsive": 1, "memory_replaced": 1, "rss": 1048576,
                    "pss": 524288, "messages": 9, "cpu_s": 0.25,
                }],
            },
            "cache": null, "listening": [], "pid": 1, "logs_dropped": 5,
        });
        let report: Report = serde_json::from_value(json).unwrap();
        let text = render(&report);
        for want in [
            "herd_worker_cpu_seconds_total{worker=\"7\",slot=\"0\"} 0.25",
            "herd_worker_resident_bytes{worker=\"7\",slot=\"0\"} 1048576",
            "herd_slot_replaced_total{slot=\"0\",reason=\"memory\"} 1",
            "herd_slot_replaced_total{slot=\"0\",reason=\"hang\"} 1",
            "herd_workers{state=\"running\"} 1",
            "herd_slots_failed 1",
            "herd_reloads_total 3",
            "herd_logs_dropped_total 5",
            "# EOF",
        ] {
            assert!(text.contains(want), "{want} not in:\n{text}");
        }
        assert!(!text.contains("herd_cache"), "no cache, no cache metrics");
    }

    /// During a reload the old worker and its replacement share a slot: its counters are
    /// emitted once, not summed (a scraper would see a jump, then a reset).
    #[test]
    fn a_slot_two_workers_share_is_counted_once() {
        let worker = |id: u64, state: &str| {
            serde_json::json!({
                "slot": 0, "worker": id, "pid": id * 10, "state": state, "uptime_s": 1.0,
                "restarts": 2, "unresponsive": 1, "memory_replaced": 3, "rss": 1, "pss": 1,
                "messages": 0, "cpu_s": 0.0,
            })
        };
        let json = serde_json::json!({
            "status": {
                "wanted": 1, "restarting": [], "failed": [], "reloading": true,
                "reloads": 0, "output_dropped": 0, "events_dropped": 0,
                "workers": [worker(7, "retiring"), worker(8, "starting")],
            },
            "cache": null, "listening": [], "pid": 1, "logs_dropped": 0,
        });
        let text = render(&serde_json::from_value(json).unwrap());
        for want in [
            "herd_slot_restarts_total{slot=\"0\"} 2\n",
            "herd_slot_replaced_total{slot=\"0\",reason=\"hang\"} 1\n",
            "herd_slot_replaced_total{slot=\"0\",reason=\"memory\"} 3\n",
        ] {
            assert!(text.contains(want), "{want} not in:\n{text}");
        }
    }
}
