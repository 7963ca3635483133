//! The primary's table of the listening sockets it made for Node workers (Node's shared
//! handles): one socket per key (`address:port:addressType:fd:index`), bound once and handed to
//! every worker that asks for the key, kept for the cluster's life (across restarts, so a
//! replaced worker gets the same socket, and `listen(0)` the same port), bounded in size.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::Mutex;

use rustix::net::{sockopt, AddressFamily, SocketFlags, SocketType};

use super::cluster::{uv, Target};
use crate::listen::{self, ListenAddr};

/// How many sockets one cluster's Node workers may have herd bind.
pub(crate) const MAX_KEYS: usize = 64;

/// A socket handed to a worker: a duplicate of the table's, and where it listens.
#[derive(Debug)]
pub(crate) struct Lent {
    pub(crate) fd: OwnedFd,
    /// `HOST:PORT` (the real port) or `unix:PATH`.
    pub(crate) local: String,
    /// A UDP socket (Node calls its handle `dgram.Native`).
    pub(crate) udp: bool,
}

#[derive(Debug)]
struct Entry {
    fd: OwnedFd,
    local: String,
    udp: bool,
    /// The socket file herd made, removed when the table goes.
    path: Option<PathBuf>,
}

/// The cluster's sockets for Node workers, by Node's key.
#[derive(Debug)]
pub(crate) struct Handles {
    entries: Mutex<HashMap<String, Entry>>,
    max: usize,
}

impl Default for Handles {
    fn default() -> Self {
        Handles::new(MAX_KEYS)
    }
}

/// A negative libuv code for an I/O error.
fn errno(e: &std::io::Error) -> i64 {
    -i64::from(e.raw_os_error().unwrap_or(22))
}

impl Handles {
    pub(crate) fn new(max: usize) -> Handles {
        Handles {
            entries: Mutex::new(HashMap::new()),
            max,
        }
    }

    /// How many sockets the table holds.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().map_or(0, |e| e.len())
    }

    /// The socket for `key`, bound now if it is new (synchronous: a bind is fast), duplicated
    /// for the worker. Fails with the libuv code Node's primary would answer (a full table is
    /// `EMFILE`). `Target::Fd` is not the table's (see `Session`).
    pub(crate) fn get_or_bind(&self, key: &str, target: &Target) -> Result<Lent, i64> {
        let mut entries = self.entries.lock().map_err(|_| uv::EAGAIN)?;
        if !entries.contains_key(key) {
            if entries.len() >= self.max {
                tracing::warn!(
                    key,
                    max = self.max,
                    "a Node worker asked for more listening sockets than herd keeps; refused with EMFILE"
                );
                return Err(uv::EMFILE);
            }
            let entry = bind(target).map_err(|e| {
                tracing::debug!(key, error = %e, "bind for a Node worker failed");
                errno(&e)
            })?;
            tracing::info!(key, local = %entry.local, "listening for Node workers");
            entries.insert(key.to_string(), entry);
        }
        let entry = &entries[key];
        Ok(Lent {
            fd: entry.fd.try_clone().map_err(|e| errno(&e))?,
            local: entry.local.clone(),
            udp: entry.udp,
        })
    }
}

impl Drop for Handles {
    fn drop(&mut self) {
        if let Ok(entries) = self.entries.get_mut() {
            for path in entries.values().filter_map(|e| e.path.as_ref()) {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}

/// Whether a query for `target` means a socket listening at `have`: the same port (or path),
/// and the same address, or either one unspecified. Port 0 means a new port, never a held one.
pub(crate) fn means(target: &Target, have: &ListenAddr) -> bool {
    match (target, have) {
        (Target::Tcp { ip, port, .. }, ListenAddr::Tcp(have)) => {
            *port != 0
                && have.port() == *port
                && (ip.is_none_or(|ip| ip.is_unspecified() || ip == have.ip())
                    || have.ip().is_unspecified())
        }
        (Target::Unix(path), ListenAddr::Unix(have)) => path == have,
        _ => false,
    }
}

fn local(fd: &OwnedFd) -> String {
    listen::local_addr(fd).map_or_else(|_| "?".into(), |a| a.to_string())
}

/// Binds what a query asks for, as Node's primary does (`net._createServerHandle`, dgram's
/// bind): `SO_REUSEADDR`, Node's default address `::` falling back to `0.0.0.0`, no removal of
/// an existing socket file.
fn bind(target: &Target) -> std::io::Result<Entry> {
    let (fd, udp, path) = match target {
        Target::Tcp {
            ip: Some(ip),
            port,
            v6only,
        } => (
            listen::bind_tcp(SocketAddr::new(*ip, *port), *v6only)?,
            false,
            None,
        ),
        Target::Tcp {
            ip: None,
            port,
            v6only,
        } => {
            let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), *port);
            let fd = listen::bind_tcp(any6, *v6only).or_else(|_| {
                listen::bind_tcp(
                    SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), *port),
                    false,
                )
            })?;
            (fd, false, None)
        }
        Target::Unix(path) => {
            let l = std::os::unix::net::UnixListener::bind(path)?;
            (OwnedFd::from(l), false, Some(path.clone()))
        }
        Target::Udp { addr, v6only } => {
            let family = if addr.is_ipv4() {
                AddressFamily::INET
            } else {
                AddressFamily::INET6
            };
            let fd =
                rustix::net::socket_with(family, SocketType::DGRAM, SocketFlags::CLOEXEC, None)?;
            if addr.is_ipv6() {
                sockopt::set_ipv6_v6only(&fd, *v6only)?;
            }
            rustix::net::bind(&fd, addr)?;
            (fd, true, None)
        }
        Target::Fd(_) => {
            return Err(std::io::Error::other(
                "an inherited descriptor is not bound",
            ))
        }
    };
    // Node's own sockets are non-blocking, and libuv takes a received one as it is: a blocking
    // listener makes the worker that loses a race for a connection block in accept(2).
    rustix::io::ioctl_fionbio(&fd, true)?;
    let local = match target {
        Target::Unix(p) => ListenAddr::Unix(p.clone()).to_string(),
        _ => local(&fd),
    };
    Ok(Entry {
        fd,
        local,
        udp,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tcp(ip: Option<IpAddr>, port: u16) -> Target {
        Target::Tcp {
            ip,
            port,
            v6only: false,
        }
    }

    #[test]
    fn one_socket_per_key_and_port_zero_is_chosen_once() {
        let h = Handles::new(2);
        let t = tcp(Some([127, 0, 0, 1].into()), 0);
        let a = h.get_or_bind("127.0.0.1:0:4:undefined:0", &t).unwrap();
        let b = h.get_or_bind("127.0.0.1:0:4:undefined:0", &t).unwrap();
        assert_eq!(a.local, b.local, "the same port for every worker");
        assert!(!a.local.ends_with(":0"), "{}", a.local);
        assert_eq!(listen::local_addr(&b.fd).unwrap().to_string(), a.local);
        // The port is taken now: a second key on it is refused with EADDRINUSE.
        let port: u16 = a.local.rsplit(':').next().unwrap().parse().unwrap();
        let taken = h.get_or_bind("other", &tcp(Some([127, 0, 0, 1].into()), port));
        assert_eq!(taken.unwrap_err(), -98);
        assert_eq!(h.len(), 1, "failures are not kept");
        // The default address (dual stack, or IPv4 where there is no IPv6).
        let any = h
            .get_or_bind("null:0:4:undefined:0", &tcp(None, 0))
            .unwrap();
        assert!(
            any.local.starts_with("[::]:") || any.local.starts_with("0.0.0.0:"),
            "{}",
            any.local
        );
        // The table is full.
        assert_eq!(
            h.get_or_bind("third", &tcp(Some([127, 0, 0, 1].into()), 0))
                .unwrap_err(),
            uv::EMFILE
        );
        assert!(h
            .get_or_bind("bad", &tcp(Some("192.0.2.1".parse().unwrap()), 0))
            .is_err());
    }

    #[test]
    fn unix_and_udp_sockets() {
        let dir = std::env::temp_dir().join(format!("herd-handles-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let h = Handles::default();
        let u = h.get_or_bind("unix", &Target::Unix(path.clone())).unwrap();
        assert_eq!(u.local, format!("unix:{}", path.display()));
        // An existing socket file is not replaced.
        let again = Handles::default().get_or_bind("unix", &Target::Unix(path.clone()));
        assert_eq!(again.unwrap_err(), -98);
        let d = h
            .get_or_bind(
                "udp",
                &Target::Udp {
                    addr: "127.0.0.1:0".parse().unwrap(),
                    v6only: false,
                },
            )
            .unwrap();
        assert!(d.udp);
        for fd in [&u.fd, &d.fd] {
            let flags = rustix::fs::fcntl_getfl(fd).unwrap();
            assert!(
                flags.contains(rustix::fs::OFlags::NONBLOCK),
                "non-blocking for Node"
            );
        }
        drop(h);
        assert!(!path.exists(), "the socket file goes with the table");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
