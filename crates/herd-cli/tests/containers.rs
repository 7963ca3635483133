//! herd as containers run it: the default worker count follows the CPUs herd may use (the
//! affinity, `taskset`; a cgroup CPU quota, `docker --cpus`) and `herd status` says which
//! decided; and herd as PID 1 of a PID namespace (`unshare --pid --fork`, what a container
//! is) reaps every orphan its workers leave and stops gracefully on SIGTERM.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;

use common::*;
use herd_test_support::process::TempDir;

/// `herd run` (no -w) started through `prelude` (a shell line that then execs herd).
fn started_through(name: &str, prelude: &str) -> Herd {
    Herd::start_after(name, prelude, &["--", "sh", "-c", "exec sleep 3600"])
}

#[test]
fn the_default_count_follows_the_cpu_affinity_and_status_says_so() {
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
        herd_test_support::skip(
            "the_default_count_follows_the_cpu_affinity_and_status_says_so",
            "one CPU: an affinity of one changes nothing",
        );
        return;
    }
    let herd = started_through("cpus-affinity", "taskset -p -c 0 $$ >/dev/null");
    let s = herd.status_until("one worker running", |s| running(s) == 1);
    assert_eq!(s.status.wanted, 1);
    assert!(
        s.workers_from.contains("decided by the CPU affinity, 1 of"),
        "{}",
        s.workers_from
    );
    let table = String::from_utf8_lossy(&herd.ctl(&["status"]).stdout).into_owned();
    assert!(table.contains("workers: auto: 1 "), "{table}");
    stop(herd);
}

#[test]
fn the_default_count_follows_a_cgroup_cpu_quota_and_status_says_so() {
    // cgroup v1's cpu controller (this machine's) or v2's cpu.max, whichever is writable.
    let name = format!("herd-test-{}", std::process::id());
    let v1 = std::path::Path::new("/sys/fs/cgroup/cpu").join(&name);
    let v2 = std::path::Path::new("/sys/fs/cgroup").join(&name);
    let made = if std::fs::create_dir(&v1).is_ok() {
        std::fs::write(v1.join("cpu.cfs_period_us"), "100000")
            .and_then(|()| std::fs::write(v1.join("cpu.cfs_quota_us"), "50000"))
            .map(|()| v1.clone())
    } else if std::fs::create_dir(&v2).is_ok() {
        std::fs::write(v2.join("cpu.max"), "50000 100000").map(|()| v2.clone())
    } else {
        Err(std::io::Error::other("no writable cgroup hierarchy"))
    };
    let dir = match made {
        Ok(d) => d,
        Err(e) => {
            herd_test_support::skip(
                "the_default_count_follows_a_cgroup_cpu_quota_and_status_says_so",
                &format!("cannot make a cgroup with a CPU quota: {e}"),
            );
            return;
        }
    };
    let prelude = format!("echo $$ > {}/cgroup.procs", dir.display());
    let herd = started_through("cpus-quota", &prelude);
    let s = herd.status_until("one worker running", |s| running(s) == 1);
    assert_eq!(s.status.wanted, 1, "0.5 CPU gives one worker");
    assert!(
        s.workers_from
            .contains("decided by the cgroup CPU quota, 0.5 CPU"),
        "{}",
        s.workers_from
    );
    stop(herd);
    // Empty now (herd and its workers are gone): removable.
    let deadline = Instant::now() + DEADLINE;
    while std::fs::remove_dir(&dir).is_err() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The pids of `pid`'s children and whether each is a zombie.
fn children(pid: u32) -> Vec<(u32, bool)> {
    let list =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    list.split_whitespace()
        .filter_map(|c| c.parse().ok())
        .map(|c: u32| {
            let stat = std::fs::read_to_string(format!("/proc/{c}/stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, r)| r.trim_start().starts_with('Z'));
            (c, zombie)
        })
        .collect()
}

#[test]
fn as_pid_1_herd_reaps_every_orphan_and_stops_on_sigterm() {
    let probe = Command::new("unshare")
        .args(["--pid", "--fork", "--mount-proc", "true"])
        .output();
    if !probe.is_ok_and(|o| o.status.success()) {
        herd_test_support::skip(
            "as_pid_1_herd_reaps_every_orphan_and_stops_on_sigterm",
            "unshare --pid cannot make a PID namespace here",
        );
        return;
    }
    let dir = TempDir::new("pid1");
    let control = dir.path().join("control.sock");
    // Each worker leaves an orphan 20 times a second, which exits at once: a zombie of PID 1's
    // (herd's) until reaped.
    let script = "while :; do (true &); sleep 0.05; done";
    let mut unshare = Command::new("unshare")
        .args([
            "--pid",
            "--fork",
            "--mount-proc",
            HERD,
            "run",
            "-w",
            "2",
            "--control",
        ])
        .arg(&control)
        .args(["--", "sh", "-c", script])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    let herd = loop {
        if let Some(&(pid, _)) = children(unshare.id()).first() {
            let ok = ctl_at(&control, &["status", "--json"]);
            if ok.status.success() {
                let r: Report = serde_json::from_slice(&ok.stdout).unwrap();
                if running(&r) == 2 {
                    break pid;
                }
            }
        }
        assert!(Instant::now() < deadline, "herd did not start as PID 1");
        std::thread::sleep(Duration::from_millis(20));
    };
    let status: String = std::fs::read_to_string(format!("/proc/{herd}/status")).unwrap();
    let ns_pid = status.lines().find(|l| l.starts_with("NSpid:")).unwrap();
    assert!(
        ns_pid.trim_end().ends_with("\t1"),
        "herd is PID 1 there: {ns_pid}"
    );
    // Over 2 s about 80 orphans exit; herd reaps them in passes at most 200 ms apart, so never
    // more than about two passes' worth (16) wait at once; unreaped, they would pile up to 80.
    let mut most = 0;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let zombies = children(herd).iter().filter(|(_, z)| *z).count();
        most = most.max(zombies);
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(most <= 20, "{most} zombies at once");
    // The workers' cgroup (where Linux lets herd make one), which herd's watchdog removes as
    // herd ends, even though the kernel kills the watchdog with the namespace's PID 1.
    let cgroup = children(herd)
        .iter()
        .filter_map(|&(p, _)| cgroup_dir(p))
        .find(|d| {
            d.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("herd-1-"))
        });
    // SIGTERM from outside the namespace: PID 1 gets it only if it handles it; herd does.
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(herd as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || tx.send(unshare.wait().unwrap()));
    let code = rx.recv_timeout(DEADLINE).expect("herd stopped on SIGTERM");
    assert!(code.success(), "{code}");
    match cgroup {
        Some(d) => assert!(!d.exists(), "{} left behind", d.display()),
        None => eprintln!("no workers' cgroup here: its removal is not checked"),
    }
}

/// The cgroup v2 directory `pid` is in (its `0::` line under the cgroup2 mount).
fn cgroup_dir(pid: u32) -> Option<std::path::PathBuf> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let path = line.lines().find_map(|l| l.strip_prefix("0::"))?.to_owned();
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mount = mounts.lines().find_map(|l| {
        let (before, after) = l.split_once(" - ")?;
        after
            .starts_with("cgroup2 ")
            .then(|| before.split(' ').nth(4))
            .flatten()
    })?;
    Some(std::path::Path::new(mount).join(path.trim_start_matches('/')))
}
