//! `herd status` as a table: a [`Report`] in lines a person reads.

use super::proto::Report;

/// `12345678` bytes as `11.8 MB`.
fn size(b: u64) -> String {
    format!("{:.1} MB", b as f64 / (1 << 20) as f64)
}

/// Seconds as `42s`, `3m07s` or `2h05m`.
pub fn uptime(s: f64) -> String {
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// Worker `id`'s CPU use as `12%`, or `-` if it was not measured.
pub fn cpu(report: &Report, id: u64) -> String {
    report
        .cpu
        .iter()
        .find(|(w, _)| *w == id)
        .and_then(|(_, p)| *p)
        .map_or("-".into(), |p| format!("{p:.0}%"))
}

/// A status report as a table.
pub fn format_status(report: &Report) -> String {
    let s = &report.status;
    let mut out = String::new();
    let deaf = s
        .workers
        .iter()
        .filter(|w| w.state == "running" && w.listen_error.is_some())
        .count();
    out.push_str(&format!(
        "herd (pid {}): {} workers wanted, {} running{}{}; {} reloads\n",
        report.pid,
        s.wanted,
        s.workers.iter().filter(|w| w.state == "running").count() - deaf,
        match deaf {
            0 => String::new(),
            n => format!(", {n} running but cannot listen"),
        },
        if s.reloading { ", reloading" } else { "" },
        s.reloads,
    ));
    if !report.workers_from.is_empty() && report.workers_from != "given" {
        out.push_str(&format!("workers: {}\n", report.workers_from));
    }
    let row = |cells: [&str; 11]| {
        let [a, b, c, d, k, e, f, g, h, i, j] = cells;
        format!("{a:<7} {b:>4} {c:>8} {d:<9} {k:>6} {e:>8} {f:>8} {g:>10} {h:>10} {i:>8}  {j}\n")
    };
    out.push_str(&row([
        "WORKER",
        "SLOT",
        "PID",
        "STATE",
        "CPU",
        "UPTIME",
        "RESTARTS",
        "RSS",
        "PSS",
        "MSGS",
        "LAST EXIT",
    ]));
    for w in &s.workers {
        out.push_str(&row([
            &format!("w{}", w.worker),
            &w.slot.map_or("-".into(), |s| s.to_string()),
            &w.pid.to_string(),
            if w.listen_error.is_some() && w.state == "running" {
                "no-listen"
            } else {
                &w.state
            },
            &cpu(report, w.worker.0),
            &uptime(w.uptime_s),
            &match (w.unresponsive, w.memory_replaced) {
                (0, 0) => w.restarts.to_string(),
                (n, 0) => format!("{} ({n} hung)", w.restarts),
                (0, m) => format!("{} ({m} mem)", w.restarts),
                (n, m) => format!("{} ({n} hung, {m} mem)", w.restarts),
            },
            &if w.measured { size(w.rss) } else { "-".into() },
            &if w.measured { size(w.pss) } else { "-".into() },
            &w.messages.to_string(),
            w.last_exit.as_deref().unwrap_or("-"),
        ]));
    }
    for l in &report.listening {
        out.push_str(&format!(
            "listening on {} ({})\n",
            l.address,
            if l.reuseport {
                "a socket per worker, SO_REUSEPORT"
            } else {
                "one socket shared by every worker"
            }
        ));
    }
    for at in &s.serving {
        let workers: Vec<String> = at.workers.iter().map(|w| format!("w{w}")).collect();
        out.push_str(&format!(
            "serving {} for Node workers ({}): {}\n",
            at.address,
            match at.balance {
                herd::Balance::RoundRobin => "rr: herd accepts, round-robin",
                herd::Balance::Sticky => "sticky: herd accepts, by session or client address",
                _ => "shared: every worker accepts",
            },
            if workers.is_empty() {
                "no worker listens".to_string()
            } else {
                workers.join(" ")
            }
        ));
    }
    for w in &s.workers {
        if let Some(why) = &w.listen_error {
            out.push_str(&format!("w{}: cannot listen: {why}\n", w.worker));
        }
    }
    for (slot, wait) in &s.restarting {
        out.push_str(&format!("slot {slot}: restarting in {wait:.1}s\n"));
    }
    for (slot, why) in &s.failed {
        out.push_str(&format!("slot {slot}: {why}\n"));
    }
    let internal: u64 = s.workers.iter().map(|w| w.internal_dropped).sum();
    if internal > 0 {
        out.push_str(&format!(
            "{internal} Node internal messages dropped (a `cmd` starting NODE_ that is not herd's: \
             the program uses Node's cluster or child_process protocol)\n"
        ));
    }
    if s.output_dropped > 0 {
        out.push_str(&format!(
            "{} worker output lines or messages dropped (herd's own output was not read fast enough)\n",
            s.output_dropped
        ));
    }
    if report.logs_dropped > 0 {
        out.push_str(&format!(
            "{} output lines dropped for `herd logs -f` readers too slow to take them\n",
            report.logs_dropped
        ));
    }
    if let Some(c) = &report.cache {
        out.push_str(&format!(
            "cache: {} entries ({} of them misses) in {}, {} evicted, {} hits, {} misses, {} loads \
             ({} coalesced), {} in {} shared memfds, {} source calls, {} invalidations, \
             {} served stale, tracking {}, warm {}\n",
            c.entries,
            c.misses_cached,
            size(c.bytes),
            c.evictions,
            c.hits,
            c.misses,
            c.loads,
            c.coalesced,
            size(c.shared_bytes),
            c.shared_values,
            c.source_calls,
            c.invalidations,
            c.stale_served,
            c.tracking,
            c.warm,
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_uptimes_read_well() {
        assert_eq!(size(12345678), "11.8 MB");
        assert_eq!(uptime(42.9), "42s");
        assert_eq!(uptime(187.0), "3m07s");
        assert_eq!(uptime(7500.0), "2h05m");
    }
}
