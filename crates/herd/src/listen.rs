//! Listening sockets for workers, the way systemd hands them out: bound once by the primary and
//! inherited by every worker at descriptors 3, 4, ... (`LISTEN_FDS`), or bound once per worker
//! with `SO_REUSEPORT` so the kernel spreads connections over the workers' own sockets.

use std::fmt;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::str::FromStr;

use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};

/// Where to listen: a TCP address (`127.0.0.1:8080`, `[::]:80`, `:8080` for every IPv4
/// interface) or a Unix socket path (`unix:/run/app.sock`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix stream socket at this path.
    Unix(PathBuf),
}

/// Why a listen address is not one.
#[derive(Debug, thiserror::Error)]
#[error("bad listen address {0:?}: use HOST:PORT, :PORT or unix:/PATH")]
pub struct BadListenAddr(pub String);

impl FromStr for ListenAddr {
    type Err = BadListenAddr;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(BadListenAddr(s.into()));
            }
            return Ok(ListenAddr::Unix(path.into()));
        }
        let full = match s.strip_prefix(':') {
            Some(port) => format!("0.0.0.0:{port}"),
            None => s.to_string(),
        };
        // Numeric addresses only: a listener bound to whatever a name resolves to today is a
        // surprise tomorrow. `localhost` is the one name allowed.
        let full = full.replacen("localhost:", "127.0.0.1:", 1);
        full.parse::<SocketAddr>()
            .map(ListenAddr::Tcp)
            .map_err(|_| BadListenAddr(s.into()))
    }
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How many connections may wait to be accepted.
const BACKLOG: i32 = 1024;

/// Binds and listens on `addr` (close-on-exec; `SO_REUSEADDR` for TCP; `SO_REUSEPORT` too if
/// `reuseport`). A stale Unix socket file at the path is replaced.
pub fn bind(addr: &ListenAddr, reuseport: bool) -> std::io::Result<OwnedFd> {
    match addr {
        ListenAddr::Tcp(a) => tcp(*a, reuseport, None),
        ListenAddr::Unix(path) => {
            if reuseport {
                return Err(std::io::Error::other(
                    "SO_REUSEPORT is for TCP; share a Unix socket instead",
                ));
            }
            if let Ok(meta) = std::fs::symlink_metadata(path) {
                use std::os::unix::fs::FileTypeExt;
                if meta.file_type().is_socket() {
                    std::fs::remove_file(path)?;
                }
            }
            let l = std::os::unix::net::UnixListener::bind(path)?;
            Ok(l.into())
        }
    }
}

/// A TCP listener on `addr` as Node's primary makes one for its workers (`SO_REUSEADDR`, IPv6
/// only if `v6only`, else dual stack).
pub(crate) fn bind_tcp(addr: SocketAddr, v6only: bool) -> std::io::Result<OwnedFd> {
    tcp(addr, false, Some(v6only))
}

fn tcp(a: SocketAddr, reuseport: bool, v6only: Option<bool>) -> std::io::Result<OwnedFd> {
    let family = if a.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(family, SocketType::STREAM, SocketFlags::CLOEXEC, None)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    if reuseport {
        sockopt::set_socket_reuseport(&fd, true)?;
    }
    if let (Some(only), true) = (v6only, a.is_ipv6()) {
        sockopt::set_ipv6_v6only(&fd, only)?;
    }
    rustix::net::bind(&fd, &a)?;
    rustix::net::listen(&fd, BACKLOG)?;
    Ok(fd)
}

/// The address a listening socket is bound to (the real port when it was asked for port 0).
pub fn local_addr(fd: impl AsFd) -> std::io::Result<ListenAddr> {
    let any = rustix::net::getsockname(fd)?;
    if let Ok(a) = SocketAddr::try_from(any.clone()) {
        return Ok(ListenAddr::Tcp(a));
    }
    let unix = rustix::net::SocketAddrUnix::try_from(any)
        .map_err(|_| std::io::Error::other("not a TCP or Unix socket"))?;
    let path = unix
        .path()
        .map(|p| PathBuf::from(p.to_string_lossy().into_owned()))
        .unwrap_or_default();
    Ok(ListenAddr::Unix(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_parse_or_say_why_not() {
        assert_eq!(
            ":8080".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("0.0.0.0:8080".parse().unwrap())
        );
        assert_eq!(
            "localhost:1".parse::<ListenAddr>().unwrap(),
            ListenAddr::Tcp("127.0.0.1:1".parse().unwrap())
        );
        assert_eq!(
            "[::1]:9".parse::<ListenAddr>().unwrap().to_string(),
            "[::1]:9"
        );
        assert_eq!(
            "unix:/tmp/x.sock".parse::<ListenAddr>().unwrap(),
            ListenAddr::Unix("/tmp/x.sock".into())
        );
        for bad in ["", "8080", "unix:", "example.com:80", "1.2.3.4:99999"] {
            let e = bad.parse::<ListenAddr>().unwrap_err();
            assert!(e.to_string().contains("HOST:PORT"), "{e}");
        }
    }

    #[test]
    fn bind_reports_the_real_port_and_reuseport_shares_it() {
        let any: ListenAddr = "127.0.0.1:0".parse().unwrap();
        let a = bind(&any, true).unwrap();
        let ListenAddr::Tcp(addr) = local_addr(&a).unwrap() else {
            panic!()
        };
        assert_ne!(addr.port(), 0);
        // A second SO_REUSEPORT socket on the same port: one per worker.
        let again = bind(&ListenAddr::Tcp(addr), true).unwrap();
        assert_eq!(local_addr(&again).unwrap(), ListenAddr::Tcp(addr));
        // Without it, the port is taken.
        assert!(bind(&ListenAddr::Tcp(addr), false).is_err());
    }
}
