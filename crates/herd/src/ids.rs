//! Worker ids and exit statuses: the small types both sides of the crate name (the primary, the
//! service, the cache hub, errors), kept apart so none of those modules imports another for them.

use std::fmt;
use std::os::unix::process::ExitStatusExt;

use rustix::process::Signal;
use serde::{Deserialize, Serialize};

/// A worker's id: 1 for the first worker forked, counting up, never reused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WorkerId(pub u64);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// How a worker process ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExitStatus {
    /// The exit code, if it exited.
    pub code: Option<i32>,
    /// The signal that killed it, if one did.
    pub signal: Option<i32>,
}

impl ExitStatus {
    /// Whether it exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

impl From<std::process::ExitStatus> for ExitStatus {
    fn from(s: std::process::ExitStatus) -> Self {
        ExitStatus {
            code: s.code(),
            signal: s.signal(),
        }
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.code, self.signal) {
            (Some(c), _) => write!(f, "exit code {c}"),
            (None, Some(s)) => {
                let name = Signal::from_named_raw(s).map(|s| format!("{s:?}"));
                write!(
                    f,
                    "signal {s}{}",
                    name.map(|n| format!(" ({n})")).unwrap_or_default()
                )
            }
            (None, None) => write!(f, "unknown status"),
        }
    }
}
