//! The real npm packages the real-time tests run (`ws`, `socket.io` and its client,
//! `@socket.io/cluster-adapter`), installed by `.ci/run` into a cache folder named by
//! `HERD_TEST_NPM` (its `node_modules`), and Node client scripts run against a herd.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;

use herd_test_support::process::{lines, wait_line};

use super::DEADLINE;

/// The `node_modules` folder of the test packages, or `None` (the test is reported skipped).
pub fn modules(test: &str) -> Option<String> {
    match std::env::var("HERD_TEST_NPM") {
        Ok(dir) if Path::new(&dir).join("ws").is_dir() => Some(dir),
        _ => {
            herd_test_support::skip(
                test,
                "HERD_TEST_NPM names no node_modules with ws and socket.io (.ci/run installs them)",
            );
            None
        }
    }
}

/// A script of `tests/realtime_apps`.
pub fn app(name: &str) -> String {
    let p: PathBuf = [env!("CARGO_MANIFEST_DIR"), "tests", "realtime_apps", name]
        .iter()
        .collect();
    p.to_str().unwrap().to_owned()
}

/// A Node client script of `tests/realtime_apps`, its stdout read line by line; killed when
/// dropped.
pub struct Client {
    child: Child,
    pub out: mpsc::Receiver<String>,
}

impl Client {
    pub fn start(modules: &str, script: &str, args: &[&str]) -> Client {
        let mut child = Command::new("node")
            .arg(app(script))
            .args(args)
            .env("NODE_PATH", modules)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("node");
        let out = lines(child.stdout.take().unwrap());
        Client { child, out }
    }

    /// Its next line matching `want`.
    pub fn line(&self, want: impl Fn(&str) -> bool) -> String {
        wait_line(&self.out, DEADLINE, want, "client")
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
