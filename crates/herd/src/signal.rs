//! [`Signal`]: a signal herd sends to a worker's process group, herd's own type (what the
//! system calls take is an implementation detail), named as users write it (`SIGTERM`, `TERM`).

use std::fmt;
use std::str::FromStr;

/// A signal herd can send to a worker ([`crate::StopBy::Signal`],
/// [`crate::WorkerHandle::kill`]): one the system names (`SIGTERM`, `SIGUSR2`, ...).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signal(rustix::process::Signal);

impl std::hash::Hash for Signal {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        self.as_raw().hash(h);
    }
}

impl Signal {
    /// `SIGTERM`: stop (what Node's and most servers' shutdown handlers listen for).
    pub const TERM: Signal = Signal(rustix::process::Signal::TERM);
    /// `SIGINT`: interrupt (Ctrl-C; PM2's default stop signal).
    pub const INT: Signal = Signal(rustix::process::Signal::INT);
    /// `SIGHUP`.
    pub const HUP: Signal = Signal(rustix::process::Signal::HUP);
    /// `SIGQUIT`.
    pub const QUIT: Signal = Signal(rustix::process::Signal::QUIT);
    /// `SIGUSR1`.
    pub const USR1: Signal = Signal(rustix::process::Signal::USR1);
    /// `SIGUSR2`.
    pub const USR2: Signal = Signal(rustix::process::Signal::USR2);
    /// `SIGKILL`: cannot be caught.
    pub const KILL: Signal = Signal(rustix::process::Signal::KILL);

    /// The signal numbered `n`, if the system names one so.
    pub fn from_raw(n: i32) -> Option<Signal> {
        rustix::process::Signal::from_named_raw(n).map(Signal)
    }

    /// Its number.
    pub fn as_raw(self) -> i32 {
        self.0.as_raw()
    }

    /// Its name, as `kill -l` writes it with `SIG` (`SIGTERM`); `SIG` and the number for one
    /// without a name here.
    pub fn name(self) -> String {
        match NAMES.iter().find(|(_, s)| *s == self) {
            Some((n, _)) => format!("SIG{n}"),
            None => format!("SIG{}", self.as_raw()),
        }
    }

    pub(crate) fn to_rustix(self) -> rustix::process::Signal {
        self.0
    }
}

/// The signals [`Signal::from_str`] knows by name.
const NAMES: [(&str, Signal); 7] = [
    ("TERM", Signal::TERM),
    ("INT", Signal::INT),
    ("HUP", Signal::HUP),
    ("QUIT", Signal::QUIT),
    ("USR1", Signal::USR1),
    ("USR2", Signal::USR2),
    ("KILL", Signal::KILL),
];

/// A name [`Signal::from_str`] does not know.
#[derive(Debug, thiserror::Error)]
#[error("unknown signal {0:?} (use TERM, INT, HUP, QUIT, USR1, USR2 or KILL, with or without SIG)")]
pub struct UnknownSignal(String);

impl FromStr for Signal {
    type Err = UnknownSignal;

    /// `SIGTERM`, `TERM` or `term`, and so on for the signals of [`Signal`]'s constants.
    fn from_str(s: &str) -> Result<Signal, UnknownSignal> {
        let upper = s.trim().to_ascii_uppercase();
        let bare = upper.strip_prefix("SIG").unwrap_or(&upper);
        NAMES
            .iter()
            .find(|(n, _)| *n == bare)
            .map(|(_, sig)| *sig)
            .ok_or_else(|| UnknownSignal(s.to_string()))
    }
}

impl fmt::Debug for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_are_read_and_written_by_name() {
        for (text, sig) in [
            ("SIGTERM", Signal::TERM),
            ("term", Signal::TERM),
            (" usr2 ", Signal::USR2),
            ("SIGKILL", Signal::KILL),
        ] {
            assert_eq!(text.parse::<Signal>().unwrap(), sig);
        }
        assert!("SIGFOO".parse::<Signal>().is_err());
        assert!("".parse::<Signal>().is_err());
        assert_eq!(Signal::INT.to_string(), "SIGINT");
        assert_eq!(Signal::from_raw(15), Some(Signal::TERM));
        assert_eq!(Signal::from_raw(0), None);
        assert_eq!(
            Signal::from_raw(28).unwrap().name(),
            "SIG28",
            "SIGWINCH: no name here"
        );
        assert_eq!(Signal::TERM.as_raw(), 15);
    }
}
