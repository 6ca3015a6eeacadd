//! The write connection's thread, raised above the rest of the process.
//!
//! sqlx runs each SQLite connection on a thread of its own. Every append
//! waits for the write connection's thread twice per group commit: woken
//! with the group's statements, and again when its fsync returns. On a
//! busy core the kernel let that thread wait behind the connection tasks
//! that were running. On the 2-core VMs the benchmarks run on, with the
//! broker pinned to one core and this thread 10 nice levels up, publish →
//! delivery at half the 1 → 1 rate went from p50 / p99 0.51–0.55 /
//! 2.15–2.44 ms to 0.39–0.43 / 1.97–2.05 ms, and 1 → 1 throughput rose
//! from 73,248–79,784 to 81,016–85,824 messages/s (runs alternated;
//! BENCHMARKS.md).
//!
//! Raising a priority needs `CAP_SYS_NICE` or an `RLIMIT_NICE` that
//! allows it (systemd: `LimitNICE=`, `AmbientCapabilities=CAP_SYS_NICE`);
//! without either, the thread keeps the process's priority and the log
//! says so once. The thread is found by its name in `/proc/self/task`
//! (sqlx names it but gives no handle to it): Linux only.

use sqlx::sqlite::SqliteConnectOptions;

/// The write connection's thread name (`comm` holds at most 15 bytes).
pub(super) const WRITER_THREAD: &str = "sealmq-writer";

/// Names the write connection's thread, so [`raise`] finds it.
pub(super) fn named(options: SqliteConnectOptions) -> SqliteConnectOptions {
    options.thread_name(|_| WRITER_THREAD.to_owned())
}

/// Gives every thread named [`WRITER_THREAD`] in this process a nice value
/// `boost` below the calling thread's (at most -20); `0` leaves them.
/// Logs what it did, or why it could not.
pub(super) fn raise(boost: u8) {
    if boost == 0 {
        return;
    }
    match raise_named(WRITER_THREAD, boost) {
        Ok(Some(nice)) => tracing::debug!(nice, "the log's write connection thread runs above the others"),
        Ok(None) => tracing::debug!("no write connection thread found to raise"),
        Err(e) => tracing::info!(
            error = %e,
            "the log's write connection thread keeps the broker's priority (raising it needs CAP_SYS_NICE or \
             RLIMIT_NICE); under load, appends may wait behind connection work"
        ),
    }
}

#[cfg(target_os = "linux")]
fn raise_named(name: &str, boost: u8) -> std::io::Result<Option<i32>> {
    use rustix::process::{Pid, getpriority_process, setpriority_process};
    // rustix's own errors print as "Perm"; the OS's text says more.
    let os = |e: rustix::io::Errno| std::io::Error::from_raw_os_error(e.raw_os_error());
    let nice = (getpriority_process(None).map_err(os)? - i32::from(boost)).max(-20);
    let mut raised = None;
    for task in std::fs::read_dir("/proc/self/task")? {
        let task = task?;
        let Ok(comm) = std::fs::read_to_string(task.path().join("comm")) else { continue };
        if comm.trim_end() != name {
            continue;
        }
        let Some(tid) = task.file_name().to_str().and_then(|tid| tid.parse().ok()).and_then(Pid::from_raw) else {
            continue;
        };
        if getpriority_process(Some(tid)).map_err(os)? > nice {
            setpriority_process(Some(tid), nice).map_err(os)?;
        }
        raised = Some(nice);
    }
    Ok(raised)
}

#[cfg(not(target_os = "linux"))]
fn raise_named(_name: &str, _boost: u8) -> std::io::Result<Option<i32>> {
    Ok(None)
}
