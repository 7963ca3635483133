//! Finding a program as `exec` would: a path with a `/` as it is, anything else on `PATH`.

use std::path::{Path, PathBuf};

/// Where `program` is, if it can be run: an existing file (for a path with a `/`), or the first
/// `PATH` directory that holds it.
pub fn which(program: &str) -> Option<PathBuf> {
    if program.contains('/') {
        return Some(PathBuf::from(program)).filter(|p| p.is_file());
    }
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(program))
        .find(|p| Path::is_file(p))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_and_path_searches() {
        assert!(which("sh").is_some_and(|p| p.is_absolute() && p.ends_with("sh")));
        assert_eq!(which("/bin/sh"), Some(PathBuf::from("/bin/sh")));
        assert_eq!(which("/nonexistent/program"), None);
        assert_eq!(which("herd-no-such-program-anywhere"), None);
    }
}
