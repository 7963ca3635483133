//! How `herd` ends: its documented exit codes, and the error type that says which one an error
//! gives.
//!
//! | code | meaning |
//! |------|---------|
//! | 0 | stopped on request, or every worker exited 0 and none is restarted |
//! | 1 | a worker failed (crash loop, or a failure not restarted) or herd hit an error |
//! | 2 | bad usage or a bad config file |

use std::fmt;

/// An exit code of the `herd` command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// 0: stopped on request, or every worker exited 0 and none is restarted.
    Success,
    /// 1: a worker failed (crash loop, or a failure not restarted) or herd hit an error.
    Failure,
    /// 2: bad usage or a bad config file.
    Usage,
}

impl Exit {
    /// The process exit code.
    pub fn code(self) -> i32 {
        match self {
            Exit::Success => 0,
            Exit::Failure => 1,
            Exit::Usage => 2,
        }
    }
}

/// The cause an [`Error`] carries.
type Source = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What went wrong, with the exit code it gives ([`Exit::Failure`] or [`Exit::Usage`]).
#[derive(Debug)]
pub struct Error {
    exit: Exit,
    message: String,
    source: Option<Source>,
}

/// herd-cli's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error herd hit (exit code 1).
    pub fn failure(message: impl fmt::Display) -> Error {
        Error {
            exit: Exit::Failure,
            message: message.to_string(),
            source: None,
        }
    }

    /// Bad usage or a bad config file (exit code 2).
    pub fn usage(message: impl fmt::Display) -> Error {
        Error {
            exit: Exit::Usage,
            ..Error::failure(message)
        }
    }

    /// The exit code this error gives.
    pub fn exit(&self) -> Exit {
        self.exit
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source.as_deref().map(|e| e as _)
    }
}

/// Wraps an error with what was being done, as [`Exit::Failure`] or [`Exit::Usage`].
pub(crate) trait Context<T> {
    /// A failure (exit 1): `what` was being done.
    fn or_fail(self, what: impl FnOnce() -> String) -> Result<T>;
    /// Bad usage (exit 2): `what` was wrong.
    fn or_usage(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn or_fail(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error {
            source: Some(Box::new(e)),
            ..Error::failure(what())
        })
    }

    fn or_usage(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| Error {
            source: Some(Box::new(e)),
            ..Error::usage(what())
        })
    }
}

/// The error and its causes, `: `-separated (`cannot listen on X: address in use`).
pub fn report(e: &(dyn std::error::Error + 'static)) -> String {
    herd::error::chain(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_ones_and_causes_are_reported() {
        assert_eq!(
            [Exit::Success, Exit::Failure, Exit::Usage].map(Exit::code),
            [0, 1, 2]
        );
        let io = std::io::Error::other("address in use");
        let e = Err::<(), _>(io)
            .or_fail(|| "cannot listen".into())
            .unwrap_err();
        assert_eq!(e.exit(), Exit::Failure);
        let e = Err::<(), _>(e).or_usage(|| "bad".into()).unwrap_err();
        assert_eq!(e.exit(), Exit::Usage);
        assert_eq!(report(&e), "bad: cannot listen: address in use");
    }
}
