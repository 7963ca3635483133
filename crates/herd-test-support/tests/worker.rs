//! The run-time lookup of the test worker finds (or builds) the very binary Cargo built for this
//! package, and it runs.

use std::path::Path;
use std::process::{Command, Stdio};

use herd_test_support::events::DEADLINE;
use herd_test_support::process::{lines, pid_alive, wait_line};

#[test]
fn test_worker_is_the_binary_cargo_built() {
    let found = herd_test_support::test_worker();
    let built = Path::new(env!("CARGO_BIN_EXE_herd-test-worker"));
    assert_eq!(
        found.canonicalize().unwrap(),
        built.canonicalize().unwrap(),
        "test_worker() found {}",
        found.display()
    );
}

#[test]
fn the_test_worker_runs_and_forks_its_own_workers() {
    // Without a channel it is a primary: it forks one worker and prints its pid once it is online.
    let mut child = Command::new(herd_test_support::test_worker())
        .env_remove("HERD_CHANNEL_FD")
        .env_remove("NODE_CHANNEL_FD")
        .env("HERD_TEST_WORKERS", "1")
        .stdout(Stdio::piped())
        .spawn()
        .expect("the test worker starts");
    let out = lines(child.stdout.take().unwrap());
    let line = wait_line(&out, DEADLINE, |l| l.starts_with("worker "), "stdout");
    let pid: u64 = line["worker ".len()..].parse().unwrap();
    assert!(pid_alive(pid), "its worker {pid} runs");
    child.kill().unwrap();
    child.wait().unwrap();
}
