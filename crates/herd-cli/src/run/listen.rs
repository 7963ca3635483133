//! The sockets herd listens on for its workers, handed over as systemd does it: bound here once
//! (shared) or resolved once for a socket per worker (`--reuseport`), passed from descriptor 3
//! up with `LISTEN_FDS`, and `LISTEN_PID` set by a shim that runs in the worker's own process.

use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::sync::Arc;

use herd::listen::ListenAddr;
use herd::ClusterBuilder;

use crate::config::Settings;
use crate::control::Listening;
use crate::exit::{Context, Result};

/// The hidden first argument of the `LISTEN_PID` shim (see [`listen_exec`]).
pub const LISTEN_EXEC: &str = "__listen-exec";

/// The first descriptor a worker's listening sockets get.
pub(super) const FIRST_FD: i32 = 3;

/// herd's listening sockets.
pub(super) struct Sockets {
    /// Bound here, inherited by every worker.
    shared: Vec<OwnedFd>,
    /// Bound by each worker (reuseport), on these resolved addresses.
    pub(super) reuseport: Vec<ListenAddr>,
    /// All of them, as `herd status` reports them.
    pub(super) listening: Vec<Listening>,
}

/// Binds the `--listen` addresses (resolving port 0 once, so every worker shares a port).
pub(super) fn bind(s: &Settings) -> Result<Sockets> {
    let mut sockets = Sockets {
        shared: Vec::new(),
        reuseport: Vec::new(),
        listening: Vec::new(),
    };
    for addr in &s.listen {
        let fd =
            herd::listen::bind(addr, s.reuseport).or_fail(|| format!("cannot listen on {addr}"))?;
        let real = herd::listen::local_addr(&fd).or_fail(|| format!("cannot listen on {addr}"))?;
        tracing::info!(address = %real, reuseport = s.reuseport, "listening");
        crate::sink::global().write(
            crate::sink::Stream::Err,
            format!("herd: listening on {real}\n").into_bytes(),
        );
        sockets.listening.push(Listening {
            address: real.to_string(),
            reuseport: s.reuseport,
        });
        if s.reuseport {
            sockets.reuseport.push(real);
        } else {
            sockets.shared.push(fd);
        }
    }
    Ok(sockets)
}

/// Sets up `builder` to run the command: directly, or (with sockets to pass) through the shim,
/// the sockets from descriptor 3 up and herd's channel above them.
pub(super) fn program(
    mut builder: ClusterBuilder,
    s: &Settings,
    sockets: Sockets,
) -> Result<ClusterBuilder> {
    if s.listen.is_empty() {
        return Ok(builder.program(&s.command[0]).args(&s.command[1..]));
    }
    let nfds = s.listen.len() as i32;
    let exe = std::env::current_exe().or_fail(|| "cannot find herd's own executable".into())?;
    let mut shim = vec![LISTEN_EXEC.to_string(), "--".into()];
    shim.extend(s.command.iter().cloned());
    builder = builder
        .program(exe)
        .args(shim)
        .channel_fd(FIRST_FD + nfds)
        .env("LISTEN_FDS", nfds.to_string())
        .env(
            "LISTEN_FDNAMES",
            s.listen
                .iter()
                .map(|a| a.to_string().replace(':', "_"))
                .collect::<Vec<_>>()
                .join(":"),
        );
    for (i, fd) in sockets.shared.into_iter().enumerate() {
        builder = builder.inherit_fd(Arc::new(fd), FIRST_FD + i as i32);
    }
    Ok(builder)
}

/// The `LISTEN_PID` shim: herd runs itself as `herd __listen-exec -- CMD ARGS...` so that,
/// in the worker's own process (its pid known at last), it can set `LISTEN_PID` as systemd's
/// convention asks and then become CMD with `exec`. Exits 127 (the shell's "cannot run") if
/// that fails.
pub fn listen_exec(args: Vec<std::ffi::OsString>) -> ! {
    let mut args = args.into_iter();
    let Some(program) = args.next() else {
        eprintln!("herd {LISTEN_EXEC}: no program");
        std::process::exit(127);
    };
    let err = std::process::Command::new(&program)
        .args(args)
        .env("LISTEN_PID", std::process::id().to_string())
        .exec();
    eprintln!("herd: cannot run {}: {err}", program.to_string_lossy());
    std::process::exit(127);
}
