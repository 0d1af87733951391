//! What the worker bench reads from `/proc`: a process's CPU time (user and system, from
//! `/proc/<pid>/stat`) and its peak resident set (`VmHWM` in `/proc/<pid>/status`).

/// Clock ticks per second of `/proc/<pid>/stat` (`USER_HZ`): 100 on every Linux ABI the
/// workers run on (the kernel fixes it for user space whatever `CONFIG_HZ` is).
pub const USER_HZ: f64 = 100.0;

/// CPU time a process used so far, in seconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuTimes {
    pub user: f64,
    pub sys: f64,
}

impl CpuTimes {
    pub fn total(&self) -> f64 {
        self.user + self.sys
    }

    /// What was used between `before` and `self`.
    pub fn since(&self, before: &CpuTimes) -> CpuTimes {
        CpuTimes {
            user: self.user - before.user,
            sys: self.sys - before.sys,
        }
    }
}

/// `utime` and `stime` of a `/proc/<pid>/stat` line. The command name (field 2) is in
/// parentheses and may itself hold spaces and parentheses, so fields are counted after the
/// *last* `)`.
pub fn parse_stat(stat: &str) -> Option<CpuTimes> {
    let rest = stat.get(stat.rfind(')')? + 1..)?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the whole line; `rest` starts at field 3 (the state).
    let utime: u64 = f.get(11)?.parse().ok()?;
    let stime: u64 = f.get(12)?.parse().ok()?;
    Some(CpuTimes {
        user: utime as f64 / USER_HZ,
        sys: stime as f64 / USER_HZ,
    })
}

/// A `kB` field of `/proc/<pid>/status` (e.g. `VmHWM`, `VmRSS`), in kB.
pub fn parse_status_kb(status: &str, field: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU times of process `pid` (`self` for this one), or `None` once it is gone.
pub fn cpu(pid: &str) -> Option<CpuTimes> {
    parse_stat(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

/// Peak RSS of process `pid`, in kB.
pub fn peak_rss_kb(pid: &str) -> Option<u64> {
    parse_status_kb(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmHWM",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_fields_are_counted_after_the_last_parenthesis_of_the_name() {
        // A name with a space and a ')' of its own, as `tokio-runtime-w` or a renamed thread
        // could have; utime 1234 ticks, stime 56.
        let line = "4242 (we ird) name) S 1 4242 4242 0 -1 4194560 900 0 0 0 1234 56 0 0 20 0 \
                    9 0 777 123456789 2048 18446744073709551615 1 1 0 0 0 0 0 4096 0 0 0 0 17 1";
        let t = parse_stat(line).expect("parsed");
        assert!((t.user - 12.34).abs() < 1e-9, "{t:?}");
        assert!((t.sys - 0.56).abs() < 1e-9, "{t:?}");
        assert!((t.total() - 12.90).abs() < 1e-9);
        let d = t.since(&CpuTimes {
            user: 2.34,
            sys: 0.06,
        });
        assert!((d.user - 10.0).abs() < 1e-9 && (d.sys - 0.5).abs() < 1e-9);
    }

    #[test]
    fn truncated_stat_lines_are_refused() {
        assert_eq!(parse_stat("1 (x) S 1 2 3"), None);
        assert_eq!(parse_stat("no parenthesis at all"), None);
    }

    #[test]
    fn status_fields_in_kb() {
        let status =
            "Name:\tingest\nVmPeak:\t  900000 kB\nVmHWM:\t   51234 kB\nVmRSS:\t   40000 kB\n";
        assert_eq!(parse_status_kb(status, "VmHWM"), Some(51_234));
        assert_eq!(parse_status_kb(status, "VmRSS"), Some(40_000));
        // A prefix of another field's name is not that field.
        assert_eq!(parse_status_kb(status, "Vm"), None);
        assert_eq!(parse_status_kb(status, "VmSwap"), None);
    }

    #[test]
    fn this_process_can_be_read() {
        assert!(cpu("self").is_some());
        assert!(peak_rss_kb("self").is_some_and(|kb| kb > 0));
    }
}
