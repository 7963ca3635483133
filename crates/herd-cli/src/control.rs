//! The control socket: how `herd status`, `herd reload`, `herd scale` and `herd stop` reach a
//! running `herd run`.
//!
//! A Unix stream socket, mode 0600, in a directory only its owner can enter
//! (`$XDG_RUNTIME_DIR/herd/NAME.sock`, else `/tmp/herd-UID/NAME.sock`). Each connection's peer
//! credentials are checked: only the user running herd (or root) is served. One JSON request
//! per line (`{"cmd": "status"}`, `{"cmd": "reload"}`, `{"cmd": "scale", "workers": N}`,
//! `{"cmd": "stop"}`), one JSON answer per line (`{"ok": true, ...}` or
//! `{"ok": false, "error": "..."}`). Requests are bounded (64 KiB, 10 s to arrive).

use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use herd::cache::Hub;
use herd::service::ServiceHandle;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

const MAX_REQUEST: u64 = 64 << 10;
const REQUEST_TIME: Duration = Duration::from_secs(10);

/// Where the control socket of the herd named `name` lives by default.
pub fn default_path(name: &str) -> PathBuf {
    let dir = match std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        Some(d) => PathBuf::from(d).join("herd"),
        None => std::env::temp_dir().join(format!("herd-{}", rustix::process::geteuid().as_raw())),
    };
    dir.join(format!("{name}.sock"))
}

/// Makes sure `dir` exists, belongs to us and no one else can write to it.
fn private_dir(dir: &Path) -> Result<()> {
    match std::fs::DirBuilder::new()
        .mode(0o700)
        .recursive(true)
        .create(dir)
    {
        Ok(()) => {}
        Err(e) => return Err(e).with_context(|| format!("cannot create {}", dir.display())),
    }
    let meta = std::fs::metadata(dir)?;
    let me = rustix::process::geteuid().as_raw();
    let sticky = meta.mode() & 0o1000 != 0;
    // A shared sticky directory (/tmp) is fine: no one else can replace our socket there, and
    // the socket itself is 0600 with its peers checked. Otherwise the directory must be ours
    // and closed to others' writes.
    if !sticky && meta.uid() != me {
        bail!(
            "{} belongs to uid {}, not to this user ({me}): refusing to put the control socket there",
            dir.display(),
            meta.uid()
        );
    }
    if !sticky && meta.mode() & 0o022 != 0 {
        bail!(
            "{} is writable by others (mode {:o}): refusing to put the control socket there",
            dir.display(),
            meta.mode() & 0o777
        );
    }
    Ok(())
}

/// The bound control socket; its file is removed when this is dropped.
pub struct ControlSocket {
    listener: Option<UnixListener>,
    path: PathBuf,
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Binds the control socket at `path` (refusing if another herd answers there).
pub async fn bind(path: &Path) -> Result<ControlSocket> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        private_dir(dir)?;
    }
    if path.exists() {
        if UnixStream::connect(path).await.is_ok() {
            bail!(
                "another herd is running with the control socket {} (use --name to run a second one)",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("cannot remove the stale socket {}", path.display()))?;
    }
    let listener =
        UnixListener::bind(path).with_context(|| format!("cannot bind {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    Ok(ControlSocket {
        listener: Some(listener),
        path: path.to_path_buf(),
    })
}

/// A socket herd listens on for its workers, as `herd status` reports it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Listening {
    /// The address, with the port the kernel chose for `:0`.
    pub address: String,
    /// Whether each worker has a socket of its own on it (`--reuseport`) rather than sharing
    /// the primary's.
    pub reuseport: bool,
}

/// Serves control connections until the process ends.
pub async fn serve(
    sock: &mut ControlSocket,
    service: ServiceHandle,
    hub: Option<Hub>,
    listening: Vec<Listening>,
) {
    let Some(listener) = sock.listener.take() else {
        return;
    };
    let listening: std::sync::Arc<[Listening]> = listening.into();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let (service, hub, listening) = (service.clone(), hub.clone(), listening.clone());
        tokio::spawn(async move {
            if let Err(e) = connection(stream, service, hub, &listening).await {
                tracing::debug!(error = %format!("{e:#}"), "control connection");
            }
        });
    }
}

async fn connection(
    stream: UnixStream,
    service: ServiceHandle,
    hub: Option<Hub>,
    listening: &[Listening],
) -> Result<()> {
    let cred = rustix::net::sockopt::socket_peercred(&stream)?;
    let me = rustix::process::geteuid();
    let (read, mut write) = stream.into_split();
    if cred.uid != me && !cred.uid.is_root() {
        tracing::warn!(
            uid = cred.uid.as_raw(),
            pid = cred.pid.as_raw_nonzero().get(),
            "control connection refused: another user"
        );
        let answer = json!({"ok": false, "error": "permission denied: another user's herd"});
        write.write_all(format!("{answer}\n").as_bytes()).await?;
        return Ok(());
    }
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    tokio::time::timeout(REQUEST_TIME, reader.read_line(&mut line))
        .await
        .context("no request in time")??;
    let answer = match parse_request(&line) {
        Err(e) => json!({"ok": false, "error": e}),
        Ok(Request::Status) => match service.status().await {
            Ok(s) => json!({
                "ok": true,
                "status": s,
                "cache": hub.as_ref().map(|h| h.stats()),
                "listening": listening,
                "pid": std::process::id(),
            }),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        },
        Ok(Request::Reload) => match service.reload().await {
            Ok(n) => json!({"ok": true, "replaced": n}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        },
        Ok(Request::Scale(n)) => match service.scale(n).await {
            Ok(()) => json!({"ok": true, "workers": n}),
            Err(e) => json!({"ok": false, "error": e.to_string()}),
        },
        Ok(Request::Stop) => {
            // Answer first: the process ends once the workers have; the client then sees the
            // connection close.
            let answer = json!({"ok": true, "stopping": true});
            write.write_all(format!("{answer}\n").as_bytes()).await?;
            let _ = service.stop(false).await;
            return std::future::pending().await;
        }
    };
    write.write_all(format!("{answer}\n").as_bytes()).await?;
    Ok(())
}

/// A control request.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// `{"cmd": "status"}`
    Status,
    /// `{"cmd": "reload"}`
    Reload,
    /// `{"cmd": "scale", "workers": N}` (1 to 4096)
    Scale(usize),
    /// `{"cmd": "stop"}`
    Stop,
}

/// The most workers `scale` accepts.
pub const MAX_WORKERS: usize = 4096;

/// Parses one request line; the error says what is wrong with it.
pub fn parse_request(line: &str) -> Result<Request, String> {
    let req: Value = serde_json::from_str(line).map_err(|e| format!("bad request: {e}"))?;
    match req.get("cmd").and_then(Value::as_str) {
        Some("status") => Ok(Request::Status),
        Some("reload") => Ok(Request::Reload),
        Some("stop") => Ok(Request::Stop),
        Some("scale") => req
            .get("workers")
            .and_then(Value::as_u64)
            .filter(|n| (1..=MAX_WORKERS as u64).contains(n))
            .map(|n| Request::Scale(n as usize))
            .ok_or_else(|| format!("scale needs workers: 1 to {MAX_WORKERS}")),
        Some(other) => Err(format!("unknown command {other:?}")),
        None => Err("a request needs a string \"cmd\"".into()),
    }
}

/// Sends one request to the herd at `path` and returns its answer (waiting up to `limit`).
pub async fn request(path: &Path, req: Value, limit: Duration) -> Result<Value> {
    let stream = UnixStream::connect(path).await.with_context(|| {
        format!(
            "no herd answers at {} (is it running? --name or --control choose which)",
            path.display()
        )
    })?;
    let (read, mut write) = stream.into_split();
    // A refusal may arrive (and the connection close) before the request is written: the
    // answer says why, so a failed write is not the error to report.
    let _ = write.write_all(format!("{req}\n").as_bytes()).await;
    let mut reader = BufReader::new(read.take(16 << 20));
    let mut line = String::new();
    tokio::time::timeout(limit, reader.read_line(&mut line))
        .await
        .context("herd did not answer in time")??;
    if line.is_empty() {
        bail!("herd closed the connection without an answer");
    }
    let answer: Value = serde_json::from_str(&line).context("herd's answer is not JSON")?;
    if answer["ok"] != json!(true) {
        bail!(
            "{}",
            answer["error"]
                .as_str()
                .unwrap_or("herd refused the request")
        );
    }
    if answer["stopping"] == json!(true) {
        // Wait for herd to finish stopping: it closes the connection when it exits.
        let mut rest = String::new();
        let _ = tokio::time::timeout(limit, reader.read_line(&mut rest)).await;
    }
    Ok(answer)
}

/// `12345678` bytes as `11.8 MB`.
fn size(b: u64) -> String {
    format!("{:.1} MB", b as f64 / (1 << 20) as f64)
}

fn uptime(s: f64) -> String {
    let s = s as u64;
    match s {
        0..=59 => format!("{s}s"),
        60..=3599 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
    }
}

/// A status answer as a table.
pub fn format_status(answer: &Value) -> String {
    let s = &answer["status"];
    let mut out = String::new();
    let workers = s["workers"].as_array().cloned().unwrap_or_default();
    out.push_str(&format!(
        "herd (pid {}): {} workers wanted, {} running{}; {} reloads\n",
        answer["pid"],
        s["wanted"],
        workers.iter().filter(|w| w["state"] == "running").count(),
        if s["reloading"] == json!(true) {
            ", reloading"
        } else {
            ""
        },
        s["reloads"],
    ));
    out.push_str(&format!(
        "{:<7} {:>4} {:>8} {:<9} {:>8} {:>8} {:>10} {:>10} {:>8}\n",
        "WORKER", "SLOT", "PID", "STATE", "UPTIME", "RESTARTS", "RSS", "PSS", "MSGS"
    ));
    for w in &workers {
        out.push_str(&format!(
            "{:<7} {:>4} {:>8} {:<9} {:>8} {:>8} {:>10} {:>10} {:>8}\n",
            format!("w{}", w["worker"]),
            w["slot"].as_u64().map_or("-".into(), |s| s.to_string()),
            w["pid"].to_string(),
            w["state"].as_str().unwrap_or("?"),
            uptime(w["uptime_s"].as_f64().unwrap_or(0.0)),
            w["restarts"].to_string(),
            size(w["rss"].as_u64().unwrap_or(0)),
            size(w["pss"].as_u64().unwrap_or(0)),
            w["messages"].to_string(),
        ));
    }
    for l in answer["listening"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "listening on {} ({})\n",
            l["address"].as_str().unwrap_or("?"),
            if l["reuseport"] == json!(true) {
                "a socket per worker, SO_REUSEPORT"
            } else {
                "one socket shared by every worker"
            }
        ));
    }
    for r in s["restarting"].as_array().into_iter().flatten() {
        out.push_str(&format!(
            "slot {}: restarting in {:.1}s\n",
            r[0],
            r[1].as_f64().unwrap_or(0.0)
        ));
    }
    for f in s["failed"].as_array().into_iter().flatten() {
        out.push_str(&format!("slot {}: {}\n", f[0], f[1].as_str().unwrap_or("")));
    }
    if let Some(n) = s["output_dropped"].as_u64().filter(|n| *n > 0) {
        out.push_str(&format!(
            "{n} worker output lines or messages dropped (herd's own output was not read fast enough)\n"
        ));
    }
    let c = &answer["cache"];
    if c.is_object() {
        out.push_str(&format!(
            "cache: {} entries, {} hits, {} misses, {} loads ({} coalesced), {} in {} shared memfds, \
             {} source calls, {} invalidations, {} served stale, tracking {}, warm {}\n",
            c["entries"],
            c["hits"],
            c["misses"],
            c["loads"],
            c["coalesced"],
            size(c["shared_bytes"].as_u64().unwrap_or(0)),
            c["shared_values"],
            c["source_calls"],
            c["invalidations"],
            c["stale_served"],
            c["tracking"],
            c["warm"],
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// Any line parses or is refused with a reason; scale is always within bounds.
        #[test]
        fn any_line_parses_or_is_refused(line in ".{0,80}", n in proptest::num::u64::ANY) {
            match parse_request(&line) {
                Ok(Request::Scale(k)) => proptest::prop_assert!((1..=MAX_WORKERS).contains(&k)),
                Ok(_) => {}
                Err(e) => proptest::prop_assert!(!e.is_empty()),
            }
            let scale = format!("{{\"cmd\":\"scale\",\"workers\":{n}}}");
            let ok = (1..=MAX_WORKERS as u64).contains(&n);
            proptest::prop_assert_eq!(parse_request(&scale).is_ok(), ok);
        }
    }

    #[test]
    fn requests_parse_or_say_why_not() {
        assert_eq!(parse_request(r#"{"cmd":"status"}"#), Ok(Request::Status));
        assert_eq!(
            parse_request(r#"{"cmd":"scale","workers":3}"#),
            Ok(Request::Scale(3))
        );
        for bad in [
            "",
            "[]",
            r#"{"cmd":5}"#,
            r#"{"cmd":"scale"}"#,
            r#"{"cmd":"scale","workers":0}"#,
            r#"{"cmd":"scale","workers":100000}"#,
            r#"{"cmd":"rm -rf"}"#,
        ] {
            assert!(parse_request(bad).is_err(), "{bad}");
        }
    }
}
