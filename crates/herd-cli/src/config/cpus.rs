//! Where `herd run`'s default worker count comes from, said in words for `herd status`: Rust's
//! `available_parallelism` (one worker per CPU herd may use) is the smallest of the CPUs
//! online, the CPUs this process's affinity allows (`taskset`, a container's cpuset) and the
//! cgroup CPU quota of herd's cgroup and its ancestors (`docker --cpus`, a systemd unit's
//! `CPUQuota=`): v2's `cpu.max` under `/sys/fs/cgroup` (or its `unified/` mount), v1's
//! `cpu.cfs_quota_us` over `cpu.cfs_period_us` under `/sys/fs/cgroup/cpu` (as Rust reads them).
//! This module reads the three itself, to say which one decided.

use std::path::{Path, PathBuf};

/// The three figures and the count they give.
#[derive(Debug, Clone, PartialEq)]
pub struct Cpus {
    /// CPUs online.
    pub online: Option<usize>,
    /// CPUs this process may run on.
    pub affinity: Option<usize>,
    /// The tightest cgroup quota, in CPUs (quota / period), if one is set.
    pub quota: Option<f64>,
    /// The worker count `available_parallelism` gives.
    pub count: usize,
}

impl Cpus {
    /// The figures for this process now.
    pub fn read() -> Cpus {
        Cpus {
            online: std::fs::read_to_string("/sys/devices/system/cpu/online")
                .ok()
                .and_then(|t| cpu_list(&t)),
            affinity: rustix::thread::sched_getaffinity(None)
                .ok()
                .map(|s| s.count() as usize),
            quota: cgroup_quota(),
            count: std::thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }

    /// `auto: 1 worker per CPU herd may use (cgroup quota 0.5 CPU; 2 online, affinity 2)`.
    pub fn explain(&self) -> String {
        let n = |v: Option<usize>| v.map_or("?".into(), |v| v.to_string());
        let by = match (self.quota, self.affinity, self.online) {
            (Some(q), _, _) if (q.floor().max(1.0) as usize) == self.count => {
                format!("the cgroup CPU quota, {q} CPU")
            }
            (_, Some(a), Some(o)) if a == self.count && a < o => {
                format!("the CPU affinity, {a} of {o} CPUs")
            }
            _ => format!("{} CPUs online", n(self.online)),
        };
        format!(
            "auto: {} (one per CPU herd may use; decided by {by}; online {}, affinity {}, \
             cgroup quota {})",
            self.count,
            n(self.online),
            n(self.affinity),
            self.quota.map_or("none".into(), |q| format!("{q} CPU")),
        )
    }
}

/// The number of CPUs in a list such as `0-3,5,7-8`.
fn cpu_list(text: &str) -> Option<usize> {
    let mut n = 0usize;
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        n += match part.split_once('-') {
            Some((a, b)) => {
                let (a, b): (usize, usize) = (a.parse().ok()?, b.parse().ok()?);
                b.checked_sub(a)? + 1
            }
            None => {
                part.parse::<usize>().ok()?;
                1
            }
        };
    }
    Some(n)
}

/// The tightest CPU quota of this process's cgroups (v2 and v1), in CPUs.
fn cgroup_quota() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    let mut best: Option<f64> = None;
    for line in text.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let path = PathBuf::from(path.trim_start_matches('/'));
        let found = if id == "0" && controllers.is_empty() {
            let root = Path::new("/sys/fs/cgroup");
            let root = if root.join("cgroup.controllers").exists() {
                root.to_path_buf()
            } else {
                root.join("unified")
            };
            quota(&root, &path, Version::V2)
        } else if controllers.split(',').any(|c| c == "cpu") {
            quota(
                &Path::new("/sys/fs/cgroup").join(controllers),
                &path,
                Version::V1,
            )
        } else {
            None
        };
        if let Some(q) = found {
            best = Some(best.map_or(q, |b: f64| b.min(q)));
        }
    }
    best
}

#[derive(Clone, Copy)]
enum Version {
    V1,
    V2,
}

/// One cgroup's quota in CPUs, if it sets one.
fn one(dir: &Path, v: Version) -> Option<f64> {
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    let (q, p) = match v {
        Version::V2 => {
            let text = read("cpu.max")?;
            let mut f = text.split_whitespace();
            (
                f.next()?.parse::<f64>().ok()?,
                f.next()?.parse::<f64>().ok()?,
            )
        }
        Version::V1 => (
            read("cpu.cfs_quota_us")?.trim().parse::<f64>().ok()?,
            read("cpu.cfs_period_us")?.trim().parse::<f64>().ok()?,
        ),
    };
    // "max" (v2) does not parse; -1 (v1) is no quota.
    (q > 0.0 && p > 0.0).then(|| q / p)
}

/// The tightest quota from `cgroup` up to the root of the hierarchy at `root`, in CPUs.
fn quota(root: &Path, cgroup: &Path, v: Version) -> Option<f64> {
    let mut best: Option<f64> = None;
    let mut at = Some(cgroup);
    while let Some(dir) = at {
        if let Some(cpus) = one(&root.join(dir), v) {
            best = Some(best.map_or(cpus, |b: f64| b.min(cpus)));
        }
        at = dir.parent();
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_lists_count() {
        assert_eq!(cpu_list("0-3\n"), Some(4));
        assert_eq!(cpu_list("0-1,4,6-7"), Some(5));
        assert_eq!(cpu_list("0"), Some(1));
        assert_eq!(cpu_list("3-1"), None);
        assert_eq!(cpu_list("x"), None);
    }

    #[test]
    fn the_tightest_quota_up_the_tree_wins() {
        let dir = herd_test_support::process::TempDir::new("cpus");
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/cpu.max"), "150000 100000\n").unwrap();
        std::fs::write(root.join("a/b/cpu.max"), "max 100000\n").unwrap();
        assert_eq!(quota(root, Path::new("a/b"), Version::V2), Some(1.5));
        std::fs::write(root.join("cpu.max"), "50000 100000\n").unwrap();
        assert_eq!(quota(root, Path::new("a/b"), Version::V2), Some(0.5));
        assert_eq!(quota(root, Path::new("none/here"), Version::V2), Some(0.5));
        std::fs::write(root.join("a/cpu.cfs_quota_us"), "-1\n").unwrap();
        std::fs::write(root.join("a/cpu.cfs_period_us"), "100000\n").unwrap();
        std::fs::write(root.join("a/b/cpu.cfs_quota_us"), "250000\n").unwrap();
        std::fs::write(root.join("a/b/cpu.cfs_period_us"), "100000\n").unwrap();
        assert_eq!(quota(root, Path::new("a/b"), Version::V1), Some(2.5));
        let c = Cpus {
            online: Some(2),
            affinity: Some(2),
            quota: Some(0.5),
            count: 1,
        };
        assert!(
            c.explain()
                .contains("decided by the cgroup CPU quota, 0.5 CPU"),
            "{}",
            c.explain()
        );
        let c = Cpus {
            online: Some(2),
            affinity: Some(1),
            quota: None,
            count: 1,
        };
        assert!(
            c.explain()
                .contains("decided by the CPU affinity, 1 of 2 CPUs"),
            "{}",
            c.explain()
        );
    }
}
