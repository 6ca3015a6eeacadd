//! The broker process (and this one), from /proc: memory and CPU time.

use crate::clock::now_ns;

/// VmRSS of `pid`, in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of a process, in seconds. /proc counts in
/// USER_HZ ticks, which Linux fixes at 100 for this interface.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[derive(Clone, Copy, Default)]
pub struct CpuMark {
    at: u64,
    pub broker: Option<f64>,
    pub tool: Option<f64>,
}

pub fn cpu_mark(broker_pid: Option<u32>) -> CpuMark {
    CpuMark { at: now_ns(), broker: broker_pid.and_then(|pid| cpu_secs(&pid.to_string())), tool: cpu_secs("self") }
}

/// Percent of one core used between two marks.
pub fn cpu_percent(from: CpuMark, to: CpuMark, pick: impl Fn(&CpuMark) -> Option<f64>) -> Option<f64> {
    let secs = to.at.saturating_sub(from.at) as f64 / 1e9;
    Some((pick(&to)? - pick(&from)?) / secs * 100.0).filter(|_| secs > 0.0)
}

/// CPU seconds used between two marks.
pub fn cpu_secs_between(from: CpuMark, to: CpuMark, pick: impl Fn(&CpuMark) -> Option<f64>) -> Option<f64> {
    Some(pick(&to)? - pick(&from)?)
}

/// This process's soft limit on open files (`ulimit -n`), from /proc.
pub fn open_files_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line["Max open files".len()..].split_whitespace().next()?.parse().ok()
}
