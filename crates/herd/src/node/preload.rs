//! The preload herd adds to a Node worker's `NODE_OPTIONS` (`--require`, after the user's own
//! options): it tells herd which stop signals the program listens for, and it answers herd's
//! liveness pings from the worker's event loop, so a
//! loop blocked in `while (true) {}` is seen, with no change to the program itself (its
//! processes inherit the option: a Node child of the worker has no channel of herd's and does
//! nothing; behind a wrapper such as `npm start` it is npm's own loop that answers, so a hang
//! of the server under it is not seen: run `node` directly). The first answer comes once the
//! program's synchronous start is over and its loop turns, so a long start is no hang; a
//! worker stopped before that is not judged (it is not told from a program that never
//! answers). PM2 wraps apps in
//! its own container script for the same kind of reason; a preload keeps the program's own
//! entry point, arguments and `require.main`.
//!
//! The script (`.cjs`, so a `package.json` with `"type": "module"` above it changes nothing)
//! lives in a directory of this process's own (mode 0700, a fresh name under the temporary
//! directory, refused if it exists), written again before a fork if a temporary-files cleaner
//! removed it, and removed when the cluster is dropped (not after a SIGKILL of herd).

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;

/// The script. It listens to Node's internal messages (the `NODE_` ones Node keeps from the
/// program's `message` listeners), so it adds no `message` listener: a listener of that kind
/// would keep a finished program's channel, and so the program, alive. It also tells herd
/// which of the signals herd may stop the worker with the program listens for (`newListener`
/// and `removeListener` on `process`, reported once per turn of the loop when the set
/// changes): a worker with a hook gets its stop signal a settle time after a stop even while
/// its servers still hold connections (a WebSocket, an SSE stream), so that the hook runs.
/// And it reads the program's entry file (its first MiB) once for code of Node's cluster
/// primary (`cluster.isPrimary`, `setupMaster(`...), which never runs under herd, so that herd
/// can say so at start instead of leaving it silently dead.
const SCRIPT: &str = r#"'use strict';
// herd: answers the primary's liveness pings from the event loop, and tells it which stop
// signals the program listens for (see herd's node/preload.rs).
{
  const signals = ['SIGTERM', 'SIGINT', 'SIGHUP', 'SIGQUIT', 'SIGUSR1', 'SIGUSR2'];
  const send = (data) => {
    if (!process.connected) return;
    try {
      process.send({ cmd: 'NODE_HERD_CTL', data });
    } catch (_) {
      // The channel closed meanwhile: nothing to say.
    }
  };
  let told = '';
  let due = false;
  const tell = () => {
    due = false;
    const now = signals.filter((s) => process.listenerCount(s) > 0);
    if (now.join() === told) return;
    told = now.join();
    send({ type: 'hooks', signals: now });
  };
  const changed = (event) => {
    if (due || !signals.includes(event)) return;
    due = true;
    setImmediate(tell).unref();
  };
  // The entry file's code for Node's cluster primary never runs under herd: say so once.
  setImmediate(() => {
    const file = (require.main && require.main.filename) || process.argv[1];
    if (typeof file !== 'string') return;
    let text = '';
    try {
      // A regular file only: opening a FIFO would block the loop.
      if (!require('fs').statSync(file).isFile()) return;
      const fd = require('fs').openSync(file, 'r');
      try {
        const buf = Buffer.alloc(1 << 20);
        text = buf.toString('utf8', 0, require('fs').readSync(fd, buf, 0, buf.length, 0));
      } finally {
        require('fs').closeSync(fd);
      }
    } catch (_) {
      return;
    }
    const found = text.match(/\bcluster\.(isPrimary|isMaster)\b|\b(setupMaster|setupPrimary)\s*\(/);
    if (found) send({ type: 'primary_code', file, found: found[0] });
  }).unref();
  process.on('newListener', changed);
  process.on('removeListener', changed);
  process.on('internalMessage', (m) => {
    if (m === null || typeof m !== 'object' || m.cmd !== 'NODE_HERD_CTL') return;
    const d = m.data;
    if (d === null || typeof d !== 'object' || d.type !== 'ping') return;
    send({ type: 'pong', seq: d.seq });
  });
}
"#;

/// The preload on disk, for the cluster's life.
#[derive(Debug)]
pub(crate) struct Preload {
    dir: PathBuf,
    script: PathBuf,
}

impl Preload {
    /// Writes the script into a new private directory.
    pub(crate) fn write() -> std::io::Result<Preload> {
        let base = std::env::temp_dir();
        let mut last = None;
        for attempt in 0..16u32 {
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos());
            let dir = base.join(format!(
                "herd-preload-{}-{nanos:x}-{attempt}",
                std::process::id()
            ));
            // A fresh name, made here with mode 0700: never one someone else made first.
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {
                    let script = dir.join("herd-preload.cjs");
                    if let Err(e) = std::fs::write(&script, SCRIPT) {
                        let _ = std::fs::remove_dir_all(&dir);
                        return Err(e);
                    }
                    return Ok(Preload { dir, script });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| std::io::Error::other("no fresh directory for the preload")))
    }

    /// `NODE_OPTIONS` for a worker whose own is `user`: the user's options, then the preload
    /// (written again first if something removed it; the user's alone if it cannot be).
    pub(crate) fn node_options(&self, user: Option<&OsStr>) -> OsString {
        if !self.script.exists() && !self.rewrite() {
            // Without it the worker runs unchecked rather than failing to start.
            return user.map(OsStr::to_os_string).unwrap_or_default();
        }
        let path = self.script.to_string_lossy();
        // NODE_OPTIONS takes double-quoted values with backslash escapes.
        let quoted = path.replace('\\', "\\\\").replace('"', "\\\"");
        let mut out = OsString::new();
        if let Some(user) = user.filter(|u| !u.is_empty()) {
            out.push(user);
            out.push(" ");
        }
        out.push(format!("--require \"{quoted}\""));
        out
    }
}

impl Preload {
    /// Makes the directory and script again, into a directory that is ours alone (a name in
    /// the temporary directory someone else took meanwhile is left alone, with a warning).
    fn rewrite(&self) -> bool {
        use std::os::unix::fs::MetadataExt;
        let _ = std::fs::DirBuilder::new().mode(0o700).create(&self.dir);
        let ours = std::fs::symlink_metadata(&self.dir).is_ok_and(|m| {
            m.is_dir()
                && m.uid() == rustix::process::geteuid().as_raw()
                && m.mode() & 0o777 == 0o700
        });
        let written = ours && std::fs::write(&self.script, SCRIPT).is_ok();
        if !written {
            tracing::warn!(path = %self.script.display(), "cannot write the liveness preload again: new Node workers run without liveness checks");
        }
        written
    }
}

impl Drop for Preload {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_preload_follows_the_users_options_in_a_private_directory() {
        let p = Preload::write().unwrap();
        let mode = std::fs::metadata(&p.dir).unwrap();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
            0o700
        );
        assert_eq!(std::fs::read_to_string(&p.script).unwrap(), SCRIPT);
        let o = p.node_options(Some(OsStr::new("--max-old-space-size=512")));
        let o = o.to_string_lossy();
        assert!(
            o.starts_with("--max-old-space-size=512 --require \""),
            "{o}"
        );
        assert!(o.ends_with("herd-preload.cjs\""), "{o}");
        assert!(p
            .node_options(None)
            .to_string_lossy()
            .starts_with("--require "));
        let dir = p.dir.clone();
        drop(p);
        assert!(!dir.exists(), "removed with the cluster");
    }
}
