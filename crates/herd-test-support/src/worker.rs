//! Finding the `herd-test-worker` binary, and building it first when that is needed.
//!
//! Cargo hands `CARGO_BIN_EXE_<name>` only to the integration tests of the package that owns the
//! binary, and builds no binaries of a test's dependencies. So the lookup is done at run time,
//! once per test process:
//!
//! 1. `HERD_TEST_WORKER`, when set, names the binary (nothing is built);
//! 2. under Cargo (`CARGO` is set, as for every `cargo test`), `cargo build -p herd-test-support
//!    --bin herd-test-worker` runs once, in the profile the test was built in (`--release` for
//!    `target/release`, `--profile NAME` for a custom one), and the path is the one Cargo reports.
//!    An up-to-date binary costs a no-op build; a stale one (herd changed since) is rebuilt, as a
//!    binary of the tested package would be;
//! 3. otherwise (a test executable run by hand), the binary beside the test executable's
//!    directory: `target/<profile>/herd-test-worker` for `target/<profile>/deps/<test>`, built
//!    with the `cargo` on the `PATH` if it is missing.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

const PACKAGE: &str = "herd-test-support";
const BIN: &str = "herd-test-worker";

/// The path of the `herd-test-worker` binary, built first if needed (see the module docs).
///
/// Panics, with Cargo's output, if it cannot be built.
pub fn test_worker() -> &'static Path {
    static WORKER: OnceLock<PathBuf> = OnceLock::new();
    WORKER.get_or_init(locate)
}

fn locate() -> PathBuf {
    if let Some(path) = std::env::var_os("HERD_TEST_WORKER") {
        return PathBuf::from(path);
    }
    match std::env::var_os("CARGO") {
        Some(cargo) => build(Path::new(&cargo)),
        None => match profile_dir().map(|d| d.join(BIN)) {
            Some(path) if path.is_file() => path,
            _ => build(Path::new("cargo")),
        },
    }
}

/// `target/<profile>` for a test executable at `target/<profile>/deps/<test>`.
fn profile_dir() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    let deps = exe.parent()?;
    let dir = if deps.file_name()? == "deps" {
        deps.parent()?
    } else {
        deps
    };
    Some(dir.to_path_buf())
}

/// The profile flags that build into the same `target/<profile>` as the running test.
fn profile_args() -> Vec<String> {
    let name = profile_dir().and_then(|d| Some(d.file_name()?.to_str()?.to_string()));
    match name.as_deref() {
        None | Some("debug") => Vec::new(),
        Some("release") => vec!["--release".into()],
        Some(other) => vec!["--profile".into(), other.into()],
    }
}

/// Builds the binary with `cargo` and returns the executable Cargo reports.
fn build(cargo: &Path) -> PathBuf {
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let out = Command::new(cargo)
        .args([
            "build",
            "--manifest-path",
            manifest,
            "-p",
            PACKAGE,
            "--bin",
            BIN,
        ])
        .args(profile_args())
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {} to build {BIN}: {e}", cargo.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "building {BIN} failed:\n{stderr}");
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == BIN)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .unwrap_or_else(|| panic!("cargo built no {BIN} executable:\n{stderr}"))
}

/// A cluster of `n` test workers in `echo` mode (see the binary's docs), with a 2 s grace period.
pub fn echo_cluster(n: usize) -> herd::ClusterBuilder {
    herd::Cluster::builder()
        .workers(n)
        .program(test_worker())
        .args(Vec::<String>::new())
        .env("HERD_TEST_MODE", "echo")
        .grace(std::time::Duration::from_secs(2))
}
