//! The control socket: how `herd status`, `herd reload`, `herd scale` and `herd stop` reach a
//! running `herd run`. The messages ([`proto`]), the server ([`server`]), the client
//! ([`client`]) and the status table ([`format`](mod@format)).
//!
//! The socket lives in a directory only its owner can enter: `$XDG_RUNTIME_DIR/herd/NAME.sock`,
//! else `/run/user/UID/herd/NAME.sock`, else `/tmp/herd-UID/NAME.sock` (see [`default_path`]),
//! checked before use by server and client alike ([`check_dir`]).

use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::exit::{Context, Error, Result};

pub mod client;
mod follow;
pub mod format;
pub mod list;
pub mod logs;
pub mod proto;
pub mod server;

pub use format::format_status;
pub use proto::{parse_request, Answer, Listening, Reply, Report, Request, MAX_WORKERS};

/// The directory herd's control sockets live in by default: `$XDG_RUNTIME_DIR/herd`, else
/// `/run/user/UID/herd` if `/run/user/UID` is ours, else `$TMPDIR/herd-UID` (`/tmp/herd-UID`).
pub fn default_dir() -> PathBuf {
    let me = rustix::process::geteuid().as_raw();
    if let Some(d) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("herd");
    }
    let run = PathBuf::from(format!("/run/user/{me}"));
    if std::fs::symlink_metadata(&run)
        .is_ok_and(|m| m.is_dir() && m.uid() == me && m.mode() & 0o077 == 0)
    {
        return run.join("herd");
    }
    std::env::temp_dir().join(format!("herd-{me}"))
}

/// Where the control socket of the herd named `name` lives by default.
pub fn default_path(name: &str) -> PathBuf {
    default_dir().join(format!("{name}.sock"))
}

/// Checks that the directory of the control socket `path` is safe to use, creating herd's own
/// default directory ([`default_dir`]) if `create`. herd's own directory must be a real
/// directory (not a symlink), owned by this user, mode 0700 (no group or other bits). A
/// directory given with `--control` must belong to this user or root and be closed to others'
/// writes unless it is a sticky directory of root's (`/tmp`).
pub fn check_dir(path: &Path, create: bool) -> Result<()> {
    let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) else {
        return Ok(());
    };
    let me = rustix::process::geteuid().as_raw();
    let own = dir == default_dir();
    if own && create {
        if let Some(parent) = dir.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent)
                .or_fail(|| format!("cannot create {}", parent.display()))?;
        }
        match std::fs::DirBuilder::new().mode(0o700).create(dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e).or_fail(|| format!("cannot create {}", dir.display())),
        }
    }
    let meta =
        std::fs::symlink_metadata(dir).or_fail(|| format!("cannot inspect {}", dir.display()))?;
    // Another user's (in a sticky /tmp only they or root can remove it): another place is the
    // way out.
    let theirs = meta.uid() != me && meta.uid() != 0;
    let refuse = |why: String| {
        let fix = if theirs {
            "another user made it, so only they or root can remove it: choose another place \
             with XDG_RUNTIME_DIR or --control (and tell root)"
        } else {
            "remove it (or fix it: a directory of this user's, mode 0700) or choose another \
             with XDG_RUNTIME_DIR or --control"
        };
        Error::usage(format!(
            "unsafe control directory {}: {why}; {fix}",
            dir.display()
        ))
    };
    if meta.file_type().is_symlink() {
        return Err(refuse("it is a symbolic link".into()));
    }
    if !meta.is_dir() {
        return Err(refuse("it is not a directory".into()));
    }
    let mode = meta.mode() & 0o7777;
    if own {
        if meta.uid() != me {
            return Err(refuse(format!(
                "it belongs to uid {}, not to this user ({me})",
                meta.uid()
            )));
        }
        if mode & 0o077 != 0 {
            return Err(refuse(format!(
                "others may use it (mode {mode:o}, not 700)"
            )));
        }
        return Ok(());
    }
    let sticky = mode & 0o1000 != 0;
    if meta.uid() != me && meta.uid() != 0 {
        return Err(refuse(format!(
            "it belongs to uid {}, not to this user ({me}) or root",
            meta.uid()
        )));
    }
    if mode & 0o022 != 0 && !(sticky && meta.uid() == 0) {
        return Err(refuse(format!("others may write to it (mode {mode:o})")));
    }
    Ok(())
}

/// `text` with every control character but newline and tab shown as `\u{..}`: what a herd (or
/// whoever answers on its socket) says cannot drive the terminal.
pub fn printable(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() && c != '\n' && c != '\t' {
            out.push_str(&format!("\\u{{{:x}}}", c as u32));
        } else {
            out.push(c);
        }
    }
    out
}
