//! The host-shared cache from Node workers through herd's native addon (crates/herd-node), as a
//! user gets it: `herd run --cache-dir` of an ordinary Node program using the herd-cluster
//! package (tests/addon_apps/hold.js), with the addon herd finds beside its binary.
//!
//! What is checked from outside the workers, in /proc: both workers map the *same* memfd for a
//! large value, and each is charged half of its pages (PSS): one physical copy for the host.

use std::path::{Path, PathBuf};

mod common;

use common::*;
use herd_test_support::process::TempDir;

const BIG: usize = 4 << 20;

fn hold_js() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/addon_apps/hold.js")
}

fn js_package() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../js")
        .to_string_lossy()
        .into_owned()
}

/// A value whose bytes vary, and its checksum as hold.js computes it (`s * 31 + b`, mod 2^32).
fn value(seed: u8) -> (Vec<u8>, u32) {
    let v: Vec<u8> = (0..BIG)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect();
    let sum = v
        .iter()
        .fold(0u32, |s, b| s.wrapping_mul(31).wrapping_add(u32::from(*b)));
    (v, sum)
}

/// Writes `data` to `dir/name` as an editor would: a new file renamed over the old one.
fn replace(dir: &Path, name: &str, data: &[u8]) {
    let tmp = dir.join(format!(".{name}.new"));
    std::fs::write(&tmp, data).unwrap();
    std::fs::rename(&tmp, dir.join(name)).unwrap();
}

/// hold.js's lines, by step and slot, read in whatever order the workers print them.
struct Steps(std::collections::HashMap<(String, usize), String>);

impl Steps {
    /// The line of step `word` from `slot` (its text after the slot), reading on until it comes.
    fn get(&mut self, herd: &Herd, word: &str, slot: usize) -> String {
        loop {
            if let Some(l) = self.0.remove(&(word.to_string(), slot)) {
                return l;
            }
            let line = wait_line(
                &herd.out,
                |l| {
                    ["path ", "big ", "changed ", "unmapped ", "failed "]
                        .iter()
                        .any(|w| l.contains(w))
                },
                &format!("hold.js's {word:?} line of slot {slot}"),
            );
            assert!(!line.contains("failed "), "{line}");
            let text = line.split_once("] ").map_or(line.as_str(), |(_, t)| t);
            let mut f = text.splitn(3, ' ');
            let (w, at, rest) = (f.next().unwrap(), f.next().unwrap(), f.next().unwrap_or(""));
            self.0
                .insert((w.to_string(), at.parse().unwrap()), rest.to_string());
        }
    }
}

/// The Rss and Pss (kB) of the mapping of memfd `inode` in process `pid`.
fn mapping_kb(pid: u32, inode: u64) -> Option<(u64, u64)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut lines = smaps.lines();
    while let Some(line) = lines.next() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let is_header = fields.len() >= 5 && fields[0].contains('-');
        if !(is_header && fields[4] == inode.to_string() && line.contains("memfd:herd-cache:big")) {
            continue;
        }
        let (mut rss, mut pss) = (None, None);
        for l in lines.by_ref() {
            let kb = || {
                l.split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
            };
            if l.starts_with("Rss:") {
                rss = kb();
            } else if l.starts_with("Pss:") {
                pss = kb();
            }
            if let (Some(r), Some(p)) = (rss, pss) {
                return Some((r, p));
            }
        }
    }
    None
}

/// Runs hold.js in two workers under `node` (with `env` for the workers), hands what each
/// printed to `check`, in slot order (pid, path, reason, the `big` line's numbers: length,
/// checksum, memfd inode), then edits
/// the value and waits for both to see it and let go of the old mapping.
fn run_two(node: &str, env: &[&str], check: impl Fn(&Herd, &[(u32, String, String, Vec<u64>)])) {
    let dir = TempDir::new("addon");
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    let (first, first_sum) = value(1);
    replace(&cache, "big", &first);
    let cache_arg = cache.to_str().unwrap().to_string();
    let script = hold_js();
    let package = js_package();
    let mut args: Vec<&str> = vec!["-w", "2", "--cache-dir", &cache_arg];
    for e in env {
        args.extend(["--env", e]);
    }
    args.extend([
        "--",
        node,
        "--expose-gc",
        script.to_str().unwrap(),
        &package,
    ]);
    let herd = Herd::start("addon", &args);

    let mut steps = Steps(Default::default());
    let mut workers: Vec<(u32, String, String, Vec<u64>)> = vec![Default::default(); 2];
    for (slot, w) in workers.iter_mut().enumerate() {
        let line = steps.get(&herd, "path", slot);
        let f: Vec<&str> = line.splitn(3, ' ').collect();
        w.0 = f[0].parse().unwrap();
        w.1 = f[1].to_string();
        w.2 = f.get(2).unwrap_or(&"").to_string();
        let line = steps.get(&herd, "big", slot);
        let nums: Vec<u64> = line.split(' ').map(|n| n.parse().unwrap()).collect();
        assert_eq!(nums[0], BIG as u64, "{line}");
        assert_eq!(nums[1], u64::from(first_sum), "the value's bytes: {line}");
        w.3 = nums;
    }
    check(&herd, &workers);

    // An edit in the folder reaches both workers; the old value's mapping goes once its
    // Buffer is collected.
    let (second, second_sum) = value(2);
    replace(&cache, "big", &second);
    for slot in 0..2 {
        let line = steps.get(&herd, "changed", slot);
        assert_eq!(
            line,
            format!("{BIG} {second_sum}"),
            "slot {slot}: the new value"
        );
        steps.get(&herd, "unmapped", slot);
    }
}

#[test]
fn node_workers_map_one_physical_copy_of_a_large_value() {
    run_two("node", &[], |_herd, workers| {
        for (pid, path, reason, _) in workers {
            assert_eq!(path, "addon", "worker {pid} uses the addon ({reason})");
            assert!(
                reason.ends_with("libherd_node.so"),
                "the addon herd named: {reason}"
            );
        }
        let inodes: Vec<u64> = workers.iter().map(|w| w.3[2]).collect();
        assert!(inodes[0] != 0, "the value is a mapping of a memfd");
        assert_eq!(inodes[0], inodes[1], "both workers map the same memfd");
        // Each worker touched every page: each is charged about half of them.
        let size_kb = (BIG / 1024) as u64;
        for (pid, ..) in workers {
            let (rss, pss) = mapping_kb(*pid, inodes[0]).expect("the worker maps the value");
            assert!(
                rss >= size_kb * 95 / 100,
                "worker {pid}: Rss {rss} kB of {size_kb}"
            );
            assert!(
                pss <= size_kb * 55 / 100,
                "worker {pid}: Pss {pss} kB: the pages are shared, not copied"
            );
        }
    });
}

#[test]
fn without_the_addon_the_package_says_so_and_copies() {
    run_two("node", &["HERD_NODE_ADDON=off"], |_herd, workers| {
        for (pid, path, reason, big) in workers {
            assert_eq!(path, "json", "worker {pid}");
            assert_eq!(reason, "HERD_NODE_ADDON=off");
            assert_eq!(big[2], 0, "no mapping: the value is a copy");
        }
    });
}

/// The same on the other Node versions CI installs (`HERD_TEST_NODES`, `:`-separated).
#[test]
fn other_node_versions_map_the_value_too() {
    let Ok(nodes) = std::env::var("HERD_TEST_NODES") else {
        herd_test_support::skip(
            "node_addon::other_node_versions_map_the_value_too",
            "HERD_TEST_NODES is not set: only the machine's node is tested",
        );
        return;
    };
    for node in nodes.split(':').filter(|n| !n.is_empty()) {
        run_two(node, &[], |_herd, workers| {
            for (pid, path, reason, big) in workers {
                assert_eq!(path, "addon", "{node}: worker {pid} ({reason})");
                assert_ne!(big[2], 0, "{node}: a mapping");
            }
            assert_eq!(workers[0].3[2], workers[1].3[2], "{node}: one memfd");
        });
    }
}

/// A worker that writes garbage on its cache channel loses that channel alone: herd warns, the
/// worker stays up and supervised (no restart), and the other worker reads through its own.
#[test]
fn a_worker_lying_on_its_cache_channel_loses_only_that_channel() {
    let dir = TempDir::new("addon-liar");
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    replace(&cache, "big", &value(3).0);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/addon_apps/liar.js");
    let package = js_package();
    let herd = Herd::start(
        "addon-liar",
        &[
            "-w",
            "2",
            "--cache-dir",
            cache.to_str().unwrap(),
            "--",
            "node",
            script.to_str().unwrap(),
            &package,
        ],
    );
    let (mut honest, mut lied) = (None, false);
    while honest.is_none() || !lied {
        let line = herd.stdout_line(|l| {
            ["honest ", "lied ", "failed "]
                .iter()
                .any(|w| l.contains(w))
        });
        assert!(!line.contains("failed "), "{line}");
        lied |= line.contains("lied 0");
        if line.contains("honest ") {
            honest = Some(line);
        }
    }
    let honest = honest.unwrap();
    assert!(
        honest.ends_with(&format!("honest 1 addon {BIG}")),
        "{honest}"
    );
    // herd logs to a pipe without colour codes: the fields read as written.
    let warning = herd.stderr_line(|l| l.contains("closing the worker's cache channel"));
    assert!(
        warning.contains("worker=1") && warning.contains("exceeds the limit"),
        "the liar's channel, and why: {warning}"
    );
    let status = herd.status_until("both workers running", |s| running(s) == 2);
    assert_eq!(workers(&status), 2);
    assert!(
        status.status.workers.iter().all(|w| w.restarts == 0),
        "nobody was restarted: {status:?}"
    );
}

/// `open` waits at most its hello timeout (5 s) for the primary's hello, then throws, so a
/// worker whose primary never answers falls back to the json path instead of hanging in
/// `require`.
#[test]
fn open_gives_up_when_no_hello_comes() {
    use std::os::fd::{AsRawFd, OwnedFd};
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    let addon = node_addon();
    let (ours, theirs): (OwnedFd, OwnedFd) = rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::STREAM,
        rustix::net::SocketFlags::empty(),
        None,
    )
    .unwrap();
    rustix::io::fcntl_setfd(&ours, rustix::io::FdFlags::CLOEXEC).unwrap();
    let script = "const m = { exports: {} }; process.dlopen(m, process.argv[1]); \
                  try { m.exports.open(); console.log('opened'); } \
                  catch (e) { console.log(`refused ${e.message}`); }";
    let mut child = Command::new("node")
        .args(["-e", script, addon.to_str().unwrap()])
        .env("HERD_CACHE_FD", theirs.as_raw_fd().to_string())
        .env("HERD_PRIMARY_PID", std::process::id().to_string())
        .env("HERD_WORKER_ID", "1")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    drop(theirs);
    let start = Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if start.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("open() still waits for the primary's hello after 20 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut out = String::new();
    std::io::Read::read_to_string(&mut child.stdout.take().unwrap(), &mut out).unwrap();
    assert!(status.success(), "{status}: {out}");
    assert!(out.starts_with("refused "), "{out}");
    drop(ours);
}

/// `cache.ready({ timeout })` over 30 s waits its whole timeout on the addon path too, as on
/// the json path: a warm-up that does not finish ends as HERD_NOT_READY, not as a call timed
/// out at 30 s because another call came meanwhile. The Redis here accepts connections and
/// never answers, so warm-up never finishes.
#[test]
fn a_long_ready_is_not_cut_at_the_call_deadline() {
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let redis = format!("redis://{}", silent.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for c in silent.incoming() {
            held.push(c);
        }
    });
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/addon_apps/ready.js");
    let package = js_package();
    let herd = Herd::start(
        "addon-ready",
        &[
            "-w",
            "1",
            "--redis",
            &redis,
            "--warm",
            "k*",
            "--",
            "node",
            script.to_str().unwrap(),
            &package,
        ],
    );
    let line = herd_test_support::process::wait_line(
        &herd.out,
        std::time::Duration::from_secs(60),
        |l| l.contains("ready ") || l.contains("failed "),
        "ready.js's line",
    );
    assert!(line.ends_with("ready HERD_NOT_READY"), "{line}");
}

/// A worker reads its own writes on the addon path, as on the json path: once `set` or
/// `delete` resolves, `get` no longer returns the value it replaced, even when the hub's
/// invalidation reaches the worker after the reply.
#[test]
fn a_worker_reads_its_own_writes() {
    let dir = TempDir::new("addon-ryw");
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    std::fs::write(cache.join("k"), b"start").unwrap();
    let cache_arg = cache.to_str().unwrap().to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/addon_apps/ryw.js");
    let package = js_package();
    let herd = Herd::start(
        "addon-ryw",
        &[
            "-w",
            "1",
            "--cache-dir",
            &cache_arg,
            "--",
            "node",
            script.to_str().unwrap(),
            &package,
        ],
    );
    let line = wait_line(
        &herd.out,
        |l| l.contains("ryw ") || l.contains("failed "),
        "ryw.js's line",
    );
    assert!(line.ends_with("ryw addon 0 500"), "{line}");
}

/// Runs tests/addon_apps/misses.js (`n` misses on a warm hub, then a 4 MiB one) with `env`:
/// its line, and herd.
fn misses(name: &str, n: usize, env: &[&str], extra: &[&str]) -> (String, Herd) {
    node_addon();
    let dir = TempDir::new(name);
    let cache = dir.path().join("cache");
    std::fs::create_dir_all(&cache).unwrap();
    for i in 0..n {
        std::fs::write(cache.join(format!("k{i}")), format!("value {i}")).unwrap();
    }
    let big: Vec<u8> = (0..4usize << 20).map(|j| (j % 251) as u8).collect();
    std::fs::write(cache.join("big"), big).unwrap();
    let cache_arg = cache.to_str().unwrap().to_string();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/addon_apps/misses.js");
    let package = js_package();
    let count = n.to_string();
    let mut args = vec!["-w", "1", "--cache-dir", &cache_arg, "--warm", "*"];
    for e in env {
        args.extend(["--env", e]);
    }
    args.extend(["--", "node", script.to_str().unwrap(), &package, &count]);
    args.extend(extra);
    let herd = Herd::start(name, &args);
    let line = wait_line(
        &herd.out,
        |l| l.contains("misses ") || l.contains("failed "),
        "misses.js's line",
    );
    (line.trim_start_matches("[w1] ").to_string(), herd)
}

/// A miss the primary answers at once is read from the microtask the package queues (the
/// addon reads the channel until `HERD_CACHE_SPIN_US`, default 100 µs, passes with nothing
/// arriving, instead of waiting for the event loop), with the same values as through the event
/// loop, a large one's descriptor included; the loop still turns, and waits give way while
/// it has other I/O ready; `HERD_CACHE_SPIN_US=0` turns that off; an unreadable value is
/// reported and the default used. On one CPU it is always off.
#[test]
fn a_miss_reads_its_reply_in_a_microtask_within_its_budget() {
    let one_cpu = std::thread::available_parallelism().map_or(1, |n| n.get()) < 2;
    // The longest budget: a loaded test machine still answers within it almost always; the
    // test asks only that some wait was answered so and that no value was wrong.
    let (line, _herd) = misses("addon-spin", 300, &["HERD_CACHE_SPIN_US=1000"], &[]);
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[..4], ["misses", "addon", "0", "300"], "{line}");
    let (waits, answered): (u64, u64) = (f[4].parse().unwrap(), f[5].parse().unwrap());
    if one_cpu {
        assert_eq!(f[4..7], ["0", "0", "0"], "{line}");
    } else {
        assert!(answered >= 1 && answered <= waits && waits <= 301, "{line}");
        assert_eq!(f[6], "1000", "{line}");
    }
    let (quiet_waits, quiet_busy): (u64, u64) = (f[4].parse().unwrap(), f[10].parse().unwrap());
    // 300 misses take well over the 1 ms in which a turn of the loop may wait: the loop turned.
    let turns: u64 = f[8].parse().unwrap();
    assert!(turns >= 2, "{line}");
    // So it does when each miss also makes a timer (which moves the loop's clock, not its turn).
    let (line, _timers) = misses(
        "addon-spin-timers",
        300,
        &["HERD_CACHE_SPIN_US=1000"],
        &["timers"],
    );
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[..4], ["misses", "addon", "0", "300"], "{line}");
    assert!(f[8].parse::<u64>().unwrap() >= 2, "{line}");

    // While the loop has other I/O ready (a local TCP stream here), waits give way to it.
    let (line, _io) = misses("addon-spin-io", 300, &["HERD_CACHE_SPIN_US=1000"], &["io"]);
    let f: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(f[..4], ["misses", "addon", "0", "300"], "{line}");
    if !one_cpu {
        // Waits met the stream's data, and backed off: far fewer than without it.
        let (waits, busy): (u64, u64) = (f[4].parse().unwrap(), f[10].parse().unwrap());
        assert!(
            busy >= 1 && busy > quiet_busy && 2 * waits < quiet_waits,
            "{line} (without the stream: {quiet_waits} waits, {quiet_busy} busy)"
        );
    }

    let (line, _herd) = misses("addon-nospin", 100, &["HERD_CACHE_SPIN_US=0"], &[]);
    assert!(
        line.starts_with("misses addon 0 100 0 0 0 turns ") && line.ends_with(" busy 0"),
        "{line}"
    );

    let (line, herd) = misses("addon-badspin", 10, &["HERD_CACHE_SPIN_US=soon"], &[]);
    let budget = if one_cpu { "0" } else { "100" };
    assert!(
        line.starts_with("misses addon 0 10 ") && line.contains(&format!(" {budget} turns ")),
        "{line}"
    );
    let warning = herd.stderr_line(|l| l.contains("HERD_CACHE_SPIN_US"));
    assert!(
        warning.contains("not \"soon\": the default (100 µs) is used"),
        "{warning}"
    );
}
