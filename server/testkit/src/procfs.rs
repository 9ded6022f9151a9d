//! What `/proc` says about a process: resident memory, open descriptors, threads, the
//! open-file limits, and whether it still runs. `None` when the process is gone (or the
//! field is missing), so a caller decides whether that is a failure.

/// Which process to ask about: `Some(pid)`, or `None` for this one.
fn dir(pid: Option<u32>) -> String {
    match pid {
        Some(pid) => format!("/proc/{pid}"),
        None => "/proc/self".to_owned(),
    }
}

/// Resident memory in KiB (`VmRSS`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("{}/status", dir(Some(pid)))).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Open file descriptors.
pub fn open_fds(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("{}/fd", dir(Some(pid))))
        .ok()
        .map(Iterator::count)
}

/// Threads.
pub fn threads(pid: u32) -> Option<usize> {
    std::fs::read_dir(format!("{}/task", dir(Some(pid))))
        .ok()
        .map(Iterator::count)
}

/// Whether the process exists and is not a zombie (exited, not yet reaped).
pub fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("{}/stat", dir(Some(pid))))
        .ok()
        // The state follows the parenthesised name, which may itself contain ") ".
        .and_then(|stat| {
            let (_, after) = stat.rsplit_once(')')?;
            after.split_whitespace().next().map(|s| s != "Z")
        })
        .unwrap_or(false)
}

/// The soft and hard `RLIMIT_NOFILE` of `pid` (`None`: this process), from
/// `/proc/PID/limits`; `u64::MAX` stands for unlimited.
pub fn nofile_limits(pid: Option<u32>) -> Option<(u64, u64)> {
    let limits = std::fs::read_to_string(format!("{}/limits", dir(pid))).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let mut fields = line.split_whitespace().skip(3);
    let value = |v: Option<&str>| match v? {
        "unlimited" => Some(u64::MAX),
        n => n.parse().ok(),
    };
    Some((value(fields.next())?, value(fields.next())?))
}

/// User plus system CPU time of process `pid` so far, in seconds (`/proc/PID/stat`, fields 14
/// and 15, in clock ticks of 1/100 s, which Linux fixes at 100 for user space).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("{}/stat", dir(Some(pid)))).ok()?;
    // The command name (field 2) may hold spaces; the fields after it follow its last ')'.
    // There, field 3 (the state) is index 0, so utime (14) is index 11 and stime index 12.
    let (_, rest) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    Some(ticks as f64 / 100.0)
}

/// On-CPU time of every thread of process `pid` so far, in seconds, from
/// `/proc/PID/task/*/schedstat` (nanoseconds): the same time as [`cpu_seconds`] without its
/// 10 ms granularity. Threads that ended are not counted.
pub fn cpu_seconds_precise(pid: u32) -> Option<f64> {
    let mut ns = 0u64;
    for task in std::fs::read_dir(format!("{}/task", dir(Some(pid))))
        .ok()?
        .flatten()
    {
        if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
            ns += text.split_whitespace().next()?.parse::<u64>().ok()?;
        }
    }
    Some(ns as f64 / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_alive_and_has_memory_descriptors_threads_and_limits() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(rss_kib(me).is_some_and(|k| k > 0));
        assert!(open_fds(me).is_some_and(|n| n >= 3));
        assert!(threads(me).is_some_and(|n| n >= 1));
        let (soft, hard) = nofile_limits(None).unwrap_or((0, 0));
        assert!(soft >= 1 && soft <= hard, "{soft} {hard}");
        assert_eq!(nofile_limits(Some(me)), Some((soft, hard)));
    }

    #[test]
    fn a_process_that_does_not_exist_has_nothing() {
        // Above the kernel's largest pid_max (2^22).
        let none = 1 << 23;
        assert!(!alive(none));
        assert_eq!(rss_kib(none), None);
        assert_eq!(open_fds(none), None);
        assert_eq!(nofile_limits(Some(none)), None);
    }
}
