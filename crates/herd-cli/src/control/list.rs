//! `herd list`: every herd of this user on the host, found by its control socket in herd's
//! own directory ([`default_dir`](super::default_dir)), asked for its status at once (all of
//! them together, each within [`ASK_TIME`]), and shown one line each: name, state, workers
//! ready of wanted, CPU, memory, restarts and uptime. A herd started with `--control`
//! elsewhere is not in that directory, so not listed; a socket nobody answers on (a herd
//! killed with -9) is shown as `gone`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use super::client;
use super::proto::Report;
use crate::exit::{Context, Result};

/// How long each herd has to answer.
pub const ASK_TIME: Duration = Duration::from_secs(3);
/// The most sockets looked at.
pub const MAX_HERDS: usize = 1024;

/// One herd found, and what it answered.
#[derive(Debug, Serialize)]
pub struct Found {
    /// Its name (the socket's, without `.sock`).
    pub name: String,
    /// Its control socket.
    pub control: PathBuf,
    /// Its status, if it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Box<Report>>,
    /// Why it did not, if it did not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Every herd with a socket in `dir`, by name.
pub async fn list(dir: &Path) -> Result<Vec<Found>> {
    match std::fs::symlink_metadata(dir) {
        // No herd has run here yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).or_fail(|| format!("cannot look in {}", dir.display())),
        Ok(_) => {}
    }
    let probe = dir.join("probe.sock");
    super::check_dir(&probe, false)?;
    let mut socks: Vec<(String, PathBuf)> = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).or_fail(|| format!("cannot read {}", dir.display())),
    };
    for e in entries.flatten().take(MAX_HERDS * 2) {
        let path = e.path();
        let Some(name) = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".sock"))
        else {
            continue;
        };
        let is_socket = e.file_type().is_ok_and(|t| {
            use std::os::unix::fs::FileTypeExt;
            t.is_socket()
        });
        if is_socket && socks.len() < MAX_HERDS {
            socks.push((name.to_owned(), path));
        }
    }
    socks.sort();
    let asks: Vec<_> = socks
        .into_iter()
        .map(|(name, control)| {
            tokio::spawn(async move {
                let asked =
                    tokio::time::timeout(ASK_TIME, client::status_with_cpu(&control, ASK_TIME))
                        .await;
                let (status, error) = match asked {
                    Ok(Ok(r)) => (Some(Box::new(r)), None),
                    Ok(Err(e)) => (None, Some(crate::exit::report(&e))),
                    Err(_) => (None, Some("did not answer within 3 s".into())),
                };
                Found {
                    name,
                    control,
                    status,
                    error,
                }
            })
        })
        .collect();
    let mut found = Vec::new();
    for a in asks {
        if let Ok(f) = a.await {
            found.push(f);
        }
    }
    Ok(found)
}

/// The herds as a table.
pub fn format_list(found: &[Found]) -> String {
    let row = |c: [&str; 9]| {
        let [a, b, c2, d, e, f, g, h, i] = c;
        format!("{a:<20} {b:>8} {c2:<10} {d:>8} {e:>6} {f:>10} {g:>10} {h:>8} {i:>8}\n")
    };
    let mut out = row([
        "NAME", "PID", "STATE", "WORKERS", "CPU", "RSS", "PSS", "RESTARTS", "UPTIME",
    ]);
    for f in found {
        let Some(r) = &f.status else {
            out.push_str(&row([&f.name, "-", "gone", "-", "-", "-", "-", "-", "-"]));
            continue;
        };
        let s = &r.status;
        let running = s.workers.iter().filter(|w| w.state == "running").count();
        let state = if s.workers.iter().any(|w| w.state == "stopping") {
            "stopping"
        } else if s.reloading {
            "reloading"
        } else if !s.failed.is_empty() || running < s.wanted {
            "degraded"
        } else {
            "online"
        };
        let cpu: Option<f64> = r.cpu.iter().map(|(_, p)| *p).sum();
        let mb = |b: u64| format!("{:.1} MB", b as f64 / (1 << 20) as f64);
        out.push_str(&row([
            &f.name,
            &r.pid.to_string(),
            state,
            &format!("{running}/{}", s.wanted),
            &cpu.map_or("-".into(), |p| format!("{p:.0}%")),
            // A worker /proc did not answer for in time makes the total unknown, not smaller.
            &if s.workers.iter().all(|w| w.measured) {
                mb(s.workers.iter().map(|w| w.rss).sum())
            } else {
                "-".into()
            },
            &if s.workers.iter().all(|w| w.measured) {
                mb(s.workers.iter().map(|w| w.pss).sum())
            } else {
                "-".into()
            },
            &s.workers
                .iter()
                .map(|w| w.restarts as u64)
                .sum::<u64>()
                .to_string(),
            &super::format::uptime(r.uptime_s),
        ]));
    }
    out
}
