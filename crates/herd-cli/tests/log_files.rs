//! `--log-file`, `--out-file` and `--err-file` with real workers: a file rotated many times
//! under a burst of output with no line lost, cut or written twice; stdout and stderr lines
//! split; SIGUSR1 reopening a file logrotate moved away; `--log-time`; and a symbolic link
//! where a log file should be refused at start.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;

use common::*;
use herd_test_support::process::TempDir;

/// The file `base` and its rotated copies (`base.N` oldest first, then `base`), concatenated.
fn all_lines(base: &Path) -> Vec<String> {
    let mut rotated: Vec<(u32, PathBuf)> = std::fs::read_dir(base.parent().unwrap())
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let name = p.file_name()?.to_str()?.to_owned();
            let base_name = base.file_name()?.to_str()?;
            let n = name.strip_prefix(&format!("{base_name}."))?.parse().ok()?;
            Some((n, p))
        })
        .collect();
    rotated.sort_by_key(|r| std::cmp::Reverse(r.0));
    let mut lines = Vec::new();
    for (_, p) in rotated.iter().chain([(0, base.to_path_buf())].iter()) {
        let text = std::fs::read_to_string(p).unwrap_or_default();
        assert!(
            text.is_empty() || text.ends_with('\n'),
            "{} ends mid-line",
            p.display()
        );
        lines.extend(text.lines().map(str::to_owned));
    }
    lines
}

#[test]
fn rotation_under_load_loses_or_repeats_no_line() {
    let dir = TempDir::new("logfile-rotate");
    let log = dir.path().join("app.log");
    let out = dir.path().join("out.log");
    let err = dir.path().join("err.log");
    // Each worker: 20,000 numbered lines of about 100 bytes, an error line every 1,000, in
    // runs of 100 lines 10 ms apart (a busy server's logging, not an unbounded burst: past
    // what herd's output path takes, lines are dropped and counted by design).
    let script = "pad=$(printf '%90s' p); i=0; while [ $i -lt 20000 ]; do echo \"n $i $pad\"; \
                  [ $((i % 1000)) -eq 0 ] && echo \"e $i\" >&2; \
                  [ $((i % 100)) -eq 0 ] && sleep 0.01; i=$((i+1)); done; echo end; \
                  exec sleep 3600";
    let herd = Herd::start(
        "logfile-rotate",
        &[
            "-w",
            "2",
            "--log-file",
            log.to_str().unwrap(),
            "--out-file",
            out.to_str().unwrap(),
            "--err-file",
            err.to_str().unwrap(),
            "--log-max-size",
            "256K",
            "--log-keep",
            "100",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    for _ in 0..2 {
        herd.stdout_line(|l| l.ends_with("] end"));
    }
    let ids: Vec<u64> = herd
        .status()
        .status
        .workers
        .iter()
        .map(|w| w.worker.0)
        .collect();
    let s = herd.status();
    assert_eq!(s.status.output_dropped, 0, "nothing dropped");
    stop(herd);

    let all = all_lines(&log);
    let outs = all_lines(&out);
    let errs = all_lines(&err);
    let rotations = std::fs::read_dir(dir.path()).unwrap().count();
    assert!(
        rotations > 25,
        "{rotations} files: 4 MB and 2 MB rotated at 256K"
    );
    for w in ids {
        let prefix = format!("[w{w}] ");
        let numbered = |lines: &[String], tag: &str| -> Vec<u32> {
            lines
                .iter()
                .filter_map(|l| l.strip_prefix(&prefix))
                .filter_map(|l| l.strip_prefix(tag))
                .map(|l| l.split(' ').next().unwrap().parse().unwrap())
                .collect()
        };
        let every: Vec<u32> = (0..20_000).collect();
        let errors: Vec<u32> = (0..20).map(|k| k * 1000).collect();
        assert_eq!(
            numbered(&all, "n "),
            every,
            "worker {w}'s stdout in the log file"
        );
        assert_eq!(numbered(&outs, "n "), every, "worker {w} in the out file");
        assert_eq!(
            numbered(&all, "e "),
            errors,
            "worker {w}'s stderr in the log file"
        );
        assert_eq!(numbered(&errs, "e "), errors, "worker {w} in the err file");
        assert!(numbered(&outs, "e ").is_empty() && numbered(&errs, "n ").is_empty());
    }
    // Each file stays near its bound: rotated at the first batch past 256 KiB.
    for e in std::fs::read_dir(dir.path()).unwrap() {
        let len = e.unwrap().metadata().unwrap().len();
        assert!(len < (256 << 10) + (128 << 10), "{len} bytes");
    }
}

#[test]
fn sigusr1_reopens_a_file_logrotate_moved() {
    let dir = TempDir::new("logfile-reopen");
    let log = dir.path().join("app.log");
    let moved = dir.path().join("app.log.moved");
    let script = "i=0; while :; do echo \"tick $i\"; i=$((i+1)); sleep 0.01; done";
    let herd = Herd::start(
        "logfile-reopen",
        &[
            "-w",
            "1",
            "--log-file",
            log.to_str().unwrap(),
            "--log-time",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    let count = |p: &Path| std::fs::read_to_string(p).map_or(0, |t| t.lines().count());
    let deadline = Instant::now() + DEADLINE;
    while count(&log) < 5 {
        assert!(Instant::now() < deadline, "no lines in the log file");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::rename(&log, &moved).unwrap();
    herd.signal(rustix::process::Signal::USR1);
    herd.stderr_line(|l| l.contains("log files reopened"));
    while count(&log) < 5 {
        assert!(Instant::now() < deadline, "the reopened file gets no lines");
        std::thread::sleep(Duration::from_millis(10));
    }
    stop(herd);
    let ticks = |p: &Path| -> Vec<u64> {
        std::fs::read_to_string(p)
            .unwrap()
            .lines()
            .map(|l| {
                // 2026-12-07T20:00:00.123Z [w1] tick 5
                let (time, rest) = l.split_once(' ').unwrap();
                assert!(time.ends_with('Z') && time.len() == 24, "{l}");
                rest.rsplit(' ').next().unwrap().parse().unwrap()
            })
            .collect()
    };
    let mut both = ticks(&moved);
    let before = both.len();
    both.extend(ticks(&log));
    let first = both[0];
    let want: Vec<u64> = (first..first + both.len() as u64).collect();
    assert_eq!(both, want, "the two files hold every tick once, in order");
    assert!(before >= 5 && both.len() - before >= 5);
}

#[test]
fn a_symlink_where_the_log_file_goes_is_refused() {
    let dir = TempDir::new("logfile-link");
    let target = dir.path().join("secret");
    std::fs::write(&target, "keep\n").unwrap();
    let link = dir.path().join("app.log");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let mut herd = Herd::start(
        "logfile-link",
        &[
            "--log-file",
            link.to_str().unwrap(),
            "--",
            "sh",
            "-c",
            "echo hi",
        ],
    );
    assert_eq!(herd.wait(), Some(1));
    let err = rest(&herd.err).join("\n");
    assert!(
        err.contains("cannot open the log file") && err.contains("app.log"),
        "{err}"
    );
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "keep\n");
}

#[test]
fn a_directory_where_a_rotated_copy_goes_is_refused() {
    let dir = TempDir::new("logfile-dir");
    let log = dir.path().join("app.log");
    std::fs::create_dir(dir.path().join("app.log.2")).unwrap();
    let mut herd = Herd::start(
        "logfile-dir",
        &[
            "--log-file",
            log.to_str().unwrap(),
            "--log-max-size",
            "4K",
            "--",
            "sh",
            "-c",
            "echo hi",
        ],
    );
    assert_eq!(herd.wait(), Some(1));
    let err = rest(&herd.err).join("\n");
    assert!(
        err.contains("app.log.2 is in the way of rotation") && !err.contains("panicked"),
        "{err}"
    );
}
