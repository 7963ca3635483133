//! A service's settings: [`ServiceConfig`], when a new worker counts as ready ([`Readiness`]),
//! which exits are restarted and how fast ([`Restart`], [`RestartPolicy`]), and their text forms
//! (`FromStr`, as `herd run`'s flags and config file spell them).

use std::net::SocketAddr;
use std::time::Duration;

/// When a new worker counts as ready to take over (rolling reloads).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Readiness {
    /// As soon as its channel is up.
    Online,
    /// Once it listens (Node's cluster `listening`, or a listening notice) on every address its
    /// slot's previous workers listened on; at once when online if they never listened. The
    /// default: right for servers, whatever they are.
    Listening,
    /// When it says so: a ready or listening notice (`herd.ready()`, `herd.listening()`,
    /// [`crate::Worker::notify_ready`]).
    Notice,
    /// When it sends the message `'ready'` (PM2's `process.send('ready')`, its `wait_ready`).
    Message,
    /// When a TCP connection to this address succeeds (for workers that bind their own port).
    Port(SocketAddr),
    /// This long after it started (for programs that say nothing).
    Delay(Duration),
}

/// The longest `delay:SECS` readiness (an hour).
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

impl std::str::FromStr for Readiness {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "online" => Ok(Readiness::Online),
            "listening" | "auto" => Ok(Readiness::Listening),
            "notice" | "ready" => Ok(Readiness::Notice),
            "message" => Ok(Readiness::Message),
            _ => {
                if let Some(a) = s.strip_prefix("port:") {
                    a.parse()
                        .map(Readiness::Port)
                        .map_err(|_| format!("bad address in {s:?}"))
                } else if let Some(d) = s.strip_prefix("delay:") {
                    d.trim_end_matches('s')
                        .parse::<f64>()
                        .ok()
                        .filter(|d| (0.0..=MAX_DELAY.as_secs_f64()).contains(d))
                        .map(|d| Readiness::Delay(Duration::from_secs_f64(d)))
                        .ok_or_else(|| {
                            format!("bad seconds in {s:?} (0 to {})", MAX_DELAY.as_secs())
                        })
                } else {
                    Err(format!(
                        "unknown readiness {s:?} (use listening, online, notice, message, port:HOST:PORT or delay:SECS)"
                    ))
                }
            }
        }
    }
}

/// Which exits are restarted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Restart {
    /// Every exit the service did not ask for.
    Always,
    /// Exits with a non-zero code or a signal (a worker that exits 0 is done).
    OnFailure,
    /// None: the service ends when every worker has exited.
    Never,
}

impl std::str::FromStr for Restart {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "always" => Ok(Restart::Always),
            "on-failure" => Ok(Restart::OnFailure),
            "never" => Ok(Restart::Never),
            _ => Err(format!(
                "unknown restart mode {s:?} (use always, on-failure or never)"
            )),
        }
    }
}

/// How crashed workers are restarted.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct RestartPolicy {
    /// Which exits are restarted (default [`Restart::Always`], as PM2: a server that exits on its
    /// own, even with code 0, is not serving).
    pub mode: Restart,
    /// The first restart delay (default 100 ms); it doubles with each crash in the window.
    pub backoff_min: Duration,
    /// The longest restart delay (default 30 s).
    pub backoff_max: Duration,
    /// Crashes allowed within `window` before the slot gives up (default 5).
    pub max_restarts: u32,
    /// The window crashes are counted in (default 60 s).
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            mode: Restart::Always,
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(30),
            max_restarts: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// A service's settings. Build it with `..ServiceConfig::default()` so that new fields do not
/// break your code.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct ServiceConfig {
    /// Workers to keep running, one per slot (default: one per CPU). The service forks every
    /// worker: a [`crate::ClusterBuilder::workers`] count given too must be the same.
    pub workers: usize,
    /// Restarts after crashes.
    pub restart: RestartPolicy,
    /// When a new worker is ready.
    pub readiness: Readiness,
    /// How long a new worker has to become ready (default 30 s).
    pub ready_timeout: Duration,
    /// Workers replaced at once in a rolling reload (default 1).
    pub reload_batch: usize,
    /// Addresses each worker gets a socket of its own for (`SO_REUSEPORT`), at descriptor
    /// numbers `reuseport_fd`, `reuseport_fd + 1`, ...
    pub reuseport: Vec<crate::listen::ListenAddr>,
    /// The first descriptor number for `reuseport` sockets.
    pub reuseport_fd: i32,
    /// Capacity of the service's event queue (default 1024; see [`super::ServiceEvent`] for
    /// what happens when it is full).
    pub event_capacity: usize,
    /// What is done with a message a worker sends the primary (Node's `process.send`) besides
    /// reporting it (default: nothing more).
    pub relay: Relay,
    /// A serving worker whose private resident memory (bytes: resident pages less shared ones,
    /// so the host-shared cache's pages do not count) stays above this for `memory_window` is
    /// replaced as a reload replaces it, the new one ready first (default: no limit). Each
    /// replacement of a slot within 10 minutes doubles the window for its next worker (up to
    /// 5 minutes), so a limit below what the program needs does not replace it in a loop.
    pub max_memory: Option<u64>,
    /// How long a worker must stay over `max_memory`, in every sample, to be replaced
    /// (default 3 s).
    pub memory_window: Duration,
    /// How often workers' memory is sampled under `max_memory` (default 1 s; at least 100 ms).
    pub memory_interval: Duration,
}

/// What the service does with a worker's messages besides reporting them
/// ([`ServiceConfig::relay`], `herd run --relay`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Relay {
    /// Nothing more.
    #[default]
    Off,
    /// Each message goes on to every other running worker as it came (Node's `message` event
    /// there), as an app's primary that forwards its workers' messages does: what
    /// `@socket.io/cluster-adapter`'s `setupPrimary` does, so that its broadcasts reach every
    /// worker with no primary code (responses meant for one worker reach the others too, which
    /// ignore them). A message with descriptors or over 1 MiB is not relayed; a worker whose
    /// queue is full misses it (never waited for); both are counted (`Status::relayed`).
    Others,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        ServiceConfig {
            workers: std::thread::available_parallelism().map_or(1, |n| n.get()),
            restart: RestartPolicy::default(),
            readiness: Readiness::Listening,
            ready_timeout: Duration::from_secs(30),
            reload_batch: 1,
            reuseport: Vec::new(),
            reuseport_fd: 3,
            event_capacity: 1024,
            relay: Relay::Off,
            max_memory: None,
            memory_window: Duration::from_secs(3),
            memory_interval: Duration::from_secs(1),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_parses() {
        assert_eq!("online".parse::<Readiness>().unwrap(), Readiness::Online);
        assert_eq!("notice".parse::<Readiness>().unwrap(), Readiness::Notice);
        assert_eq!(
            "port:127.0.0.1:80".parse::<Readiness>().unwrap(),
            Readiness::Port("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(
            "delay:1.5".parse::<Readiness>().unwrap(),
            Readiness::Delay(Duration::from_millis(1500))
        );
        for bad in ["", "port:x", "delay:-1", "soon"] {
            assert!(bad.parse::<Readiness>().is_err(), "{bad}");
        }
    }

    #[test]
    fn restart_parses() {
        assert_eq!("always".parse::<Restart>().unwrap(), Restart::Always);
        assert_eq!("on-failure".parse::<Restart>().unwrap(), Restart::OnFailure);
        assert_eq!("never".parse::<Restart>().unwrap(), Restart::Never);
        assert!("sometimes".parse::<Restart>().is_err());
    }
}
