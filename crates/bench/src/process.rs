//! What a process costs, from Linux's `/proc`: CPU time (`/proc/PID/stat`)
//! and resident memory (`/proc/PID/status`).
//!
//! The parsers are pure functions over the files' text so they can be
//! tested on captured contents; the `read_*` functions only add the file
//! read.

use std::io;

/// CPU time a process has used, in clock ticks (`getconf CLK_TCK`, 100 on
/// Linux).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CpuTicks {
    /// Time in user mode (`utime`, field 14).
    pub user: u64,
    /// Time in kernel mode (`stime`, field 15).
    pub system: u64,
    /// User plus kernel time of children the process has waited for
    /// (`cutime` + `cstime`, fields 16 and 17). For PostgreSQL's postmaster
    /// this is the CPU time of every backend that has exited.
    pub children: u64,
}

impl CpuTicks {
    /// User plus system time of the process itself.
    pub fn total(self) -> u64 {
        self.user.saturating_add(self.system)
    }
}

/// Parses `utime` and `stime` from the text of `/proc/PID/stat`.
///
/// The second field is the command name in parentheses and may itself
/// contain spaces and parentheses, so fields are counted from the last `)`.
pub fn parse_stat(text: &str) -> Option<CpuTicks> {
    let after_name = text.get(text.rfind(')')? + 1..)?;
    // After the name come field 3 (state) onwards; utime is field 14.
    let mut fields = after_name.split_whitespace().skip(11);
    let mut next = || fields.next()?.parse::<u64>().ok();
    let user = next()?;
    let system = next()?;
    let children = next()?.saturating_add(next()?);
    Some(CpuTicks {
        user,
        system,
        children,
    })
}

/// Resident memory of a process, in KiB.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Memory {
    /// Resident set size now (`VmRSS`).
    pub rss_kib: u64,
    /// Peak resident set size over the process's life (`VmHWM`).
    pub hwm_kib: u64,
}

/// Parses `VmRSS` and `VmHWM` from the text of `/proc/PID/status`.
pub fn parse_status(text: &str) -> Option<Memory> {
    let kib = |key: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(key))
            .and_then(|rest| rest.trim().strip_suffix("kB"))
            .and_then(|n| n.trim().parse::<u64>().ok())
    };
    Some(Memory {
        rss_kib: kib("VmRSS:")?,
        hwm_kib: kib("VmHWM:")?,
    })
}

fn unparsable(path: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("{path} has an unexpected layout"),
    )
}

/// Reads the CPU time of process `pid`.
pub fn read_cpu_ticks(pid: u32) -> io::Result<CpuTicks> {
    let path = format!("/proc/{pid}/stat");
    parse_stat(&std::fs::read_to_string(&path)?).ok_or_else(|| unparsable(&path))
}

/// Reads the resident memory of process `pid`.
pub fn read_memory(pid: u32) -> io::Result<Memory> {
    let path = format!("/proc/{pid}/status");
    parse_status(&std::fs::read_to_string(&path)?).ok_or_else(|| unparsable(&path))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A `/proc/PID/stat` line in the kernel's layout, with a command name
    /// containing the spaces and parentheses that break naive splitting.
    const STAT: &str = "4242 (tokio (rt) w) S 1 4242 4242 0 -1 4194560 2210 0 0 0 \
                        1234 567 80 9 20 0 3 0 9911 75431936 4521 18446744073709551615 1 1 0 0 0 0 0 4096 17991 0 0 0 17 1 0 0 0 0 0";

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        assert_eq!(
            parse_stat(STAT),
            Some(CpuTicks {
                user: 1234,
                system: 567,
                children: 89
            })
        );
        assert_eq!(parse_stat(STAT).unwrap().total(), 1801);
        assert_eq!(parse_stat("4242 (x) S 1"), None);
        assert_eq!(parse_stat(""), None);
    }

    #[test]
    fn status_memory_lines_are_read_in_kib() {
        let status = "Name:\tintransit\nVmPeak:\t  80000 kB\nVmHWM:\t   21504 kB\nVmRSS:\t   19872 kB\nThreads:\t3\n";
        assert_eq!(
            parse_status(status),
            Some(Memory {
                rss_kib: 19872,
                hwm_kib: 21504
            })
        );
        assert_eq!(parse_status("Name:\tx\nVmRSS:\t1 kB\n"), None);
    }
}
