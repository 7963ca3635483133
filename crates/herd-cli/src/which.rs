//! Finding a program as `exec` would (a path with a `/` as it is, anything else on `PATH`), and
//! herd's Node addon beside the `herd` binary.

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

/// The names herd's Node addon (`crates/herd-node`) goes by: as cargo builds it, and as
/// installed.
const ADDON_NAMES: [&str; 2] = ["libherd_node.so", "herd_node.node"];

/// herd's Node addon, if it lies beside this `herd` binary (where `cargo build` puts both) or in
/// `../lib/herd/` from it (an install into `PREFIX/bin` and `PREFIX/lib/herd`).
pub fn node_addon() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let dir = exe.parent()?;
    let places = [dir.to_path_buf(), dir.join("../lib/herd")];
    places
        .iter()
        .flat_map(|d| ADDON_NAMES.iter().map(move |n| d.join(n)))
        .find(|p| p.is_file())
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
