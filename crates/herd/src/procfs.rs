//! The one reader of `/proc` in the library: a process's state, parent and group (`stat`), its
//! socket descriptors (`fd/`), this process's open descriptors and its children. Every read is
//! a blocking file read: callers off the runtime's threads run them on a blocking thread.
//! Nothing here trusts what it reads: a field that does not parse is no answer.

use std::io;

/// What herd reads of a process's `/proc/PID/stat`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stat {
    /// `R`, `S`, `D`, `T` (stopped), `Z` (zombie), ...
    pub(crate) state: char,
    pub(crate) ppid: i32,
    pub(crate) pgrp: i32,
}

/// `pid`'s stat, if it exists (a zombie's too, until it is reaped).
pub(crate) fn stat(pid: i32) -> Option<Stat> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// The fields of a stat line, read after the command name's last `)` (the name, in
/// parentheses, may hold anything, spaces and parentheses included).
fn parse_stat(line: &str) -> Option<Stat> {
    let mut fields = line.rsplit_once(')')?.1.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    Some(Stat { state, ppid, pgrp })
}

/// The CPU time `pid` has used so far (user and system, its own, not its children's), in
/// seconds, from `/proc/PID/stat`.
pub(crate) fn cpu_seconds(pid: u32) -> Option<f64> {
    let line = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu(&line, rustix::param::clock_ticks_per_second())
}

/// utime and stime (fields 14 and 15 of a stat line, counted from 1) over `hz` ticks a second.
fn parse_cpu(line: &str, hz: u64) -> Option<f64> {
    let mut fields = line.rsplit_once(')')?.1.split_whitespace().skip(11);
    let utime: u64 = fields.next()?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime.saturating_add(stime) as f64 / hz.max(1) as f64)
}

/// `pid`'s private resident memory in bytes: resident pages less shared ones (file-backed and
/// shared memory, such as the cache's sealed memfds that every worker maps), from
/// `/proc/PID/statm`'s second and third fields. What a leak grows; not what the host shares.
pub(crate) fn private_rss(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    parse_statm(&text, rustix::param::page_size() as u64)
}

/// `pid`'s resident and proportional set sizes in bytes, from `/proc/PID/smaps_rollup`.
pub(crate) fn rss_pss(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map(|kb| kb.saturating_mul(1024))
    };
    Some((field("Rss:")?, field("Pss:")?))
}

fn parse_statm(text: &str, page: u64) -> Option<u64> {
    let mut f = text.split_whitespace().skip(1);
    let resident: u64 = f.next()?.parse().ok()?;
    let shared: u64 = f.next()?.parse().ok()?;
    Some(resident.saturating_sub(shared).saturating_mul(page))
}

/// The socket inodes in `pid`'s descriptor table, by descriptor number.
pub(crate) fn socket_inodes(pid: u32) -> io::Result<Vec<(i32, u64)>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))? {
        let Ok(entry) = entry else { continue };
        let Some(n) = entry.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        let Ok(link) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let link = link.to_string_lossy();
        if let Some(ino) = link
            .strip_prefix("socket:[")
            .and_then(|r| r.strip_suffix(']'))
            .and_then(|i| i.parse().ok())
        {
            found.push((n, ino));
        }
    }
    Ok(found)
}

/// Descriptors this process holds open now (0 if it cannot tell).
pub(crate) fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// This process's children. From each of its threads' `children` list where the kernel has
/// them (`CONFIG_PROC_CHILDREN`; a child is listed under the thread that forked it, an adopted
/// one under the thread it was given to): a read per thread. Where it has not, every process's
/// stat is read for its parent: a read per process on the host.
pub(crate) fn children() -> Vec<i32> {
    match task_children() {
        Some(found) => found,
        None => scan_children(rustix::process::getpid().as_raw_nonzero().get()),
    }
}

/// From the threads' `children` files; `None` where the kernel has none.
fn task_children() -> Option<Vec<i32>> {
    let mut found = Vec::new();
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        match std::fs::read_to_string(task.path().join("children")) {
            Ok(text) => found.extend(
                text.split_whitespace()
                    .filter_map(|c| c.parse::<i32>().ok()),
            ),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
            // A thread that ended meanwhile.
            Err(_) => {}
        }
    }
    Some(found)
}

/// The processes whose parent is `parent`, from every process's stat.
fn scan_children(parent: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| stat(pid).is_some_and(|s| s.ppid == parent))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_come_after_the_last_parenthesis() {
        let line = "4242 (a) b) (c) Z 17 4240 4240 0 -1 4194564 0";
        let want = Stat {
            state: 'Z',
            ppid: 17,
            pgrp: 4240,
        };
        assert_eq!(parse_stat(line), Some(want));
        assert_eq!(parse_stat("garbage"), None);
        assert_eq!(parse_stat("1 (x) R notanumber 1"), None);
    }

    #[test]
    fn private_memory_is_resident_less_shared() {
        assert_eq!(
            parse_statm("1000 300 100 5 0 200 0", 4096),
            Some(200 * 4096)
        );
        assert_eq!(parse_statm("1000 100 300 5 0 200 0", 4096), Some(0));
        assert_eq!(parse_statm("1000", 4096), None);
        assert!(private_rss(std::process::id()).is_some_and(|b| b > 0));
    }

    #[test]
    fn cpu_time_is_utime_and_stime() {
        // pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
        // utime stime ...
        let line = "7 (a (b) c) S 1 7 7 0 -1 4194560 100 0 0 0 250 50 0 0 20 0";
        assert_eq!(parse_cpu(line, 100), Some(3.0));
        assert_eq!(parse_cpu("7 (x) S 1 7", 100), None);
        let me = cpu_seconds(std::process::id()).unwrap();
        assert!(me >= 0.0 && me.is_finite());
    }

    /// Both ways of finding children find a child this process just started, with its
    /// parent and state readable; the scan is what runs where the kernel lists no children.
    #[test]
    fn a_child_is_found_by_both_readers() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let me = std::process::id() as i32;
        assert!(scan_children(me).contains(&pid), "scan");
        if let Some(listed) = task_children() {
            assert!(listed.contains(&pid), "task lists");
        }
        assert!(children().contains(&pid));
        let st = stat(pid).unwrap();
        assert_eq!(st.ppid, me);
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(stat(pid), None, "reaped: gone");
        assert!(open_fds() > 2);
    }
}
