//! The log's own numbers for an operator: appends, group commits, how long
//! records wait to be durable and then to be sealed, the head and the
//! database's size.
//!
//! Plain atomics, written by the sequencer (one writer) and read by anyone
//! ([`Log::stats`](super::Log::stats)): the store knows no metrics library,
//! and a reader never holds the sequencer up. Histograms count into fixed
//! buckets of integers (nanoseconds, records); whoever exports them turns
//! them into its own units and format.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{LogReader, StoreError, to_u64};

const MS: u64 = 1_000_000;

/// Upper bounds of the append latency buckets (submit → durable), in
/// nanoseconds: 100 µs (a group commit on a fast disk) to 10 s (a disk
/// in trouble).
pub const APPEND_LATENCY_NS: &[u64] = &[
    100_000,
    250_000,
    500_000,
    MS,
    2 * MS + MS / 2,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    1_000 * MS,
    2_500 * MS,
    5_000 * MS,
    10_000 * MS,
];

/// Upper bounds of the group size buckets, in records: powers of two up to
/// the most one group commit takes (16 Ki).
pub const GROUP_SIZE: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1_024, 2_048, 4_096, 8_192, 16_384];

/// Upper bounds of the seal lag buckets (durable → under a signed
/// checkpoint), in nanoseconds: a block seals when full or after the block
/// interval (250 ms by default), so most lags fall below a second; the
/// long tail is a seal that failed and is retried.
pub const SEAL_LAG_NS: &[u64] = &[
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    1_000 * MS,
    2_500 * MS,
    5_000 * MS,
    10_000 * MS,
    30_000 * MS,
    60_000 * MS,
];

/// A histogram of integer observations in fixed buckets, without locks.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [u64],
    /// One per bound, then one for everything above the last.
    buckets: Box<[AtomicU64]>,
    sum: AtomicU64,
}

/// A histogram as read at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistogramSnapshot {
    /// Each bucket's upper bound (inclusive) and the observations in it
    /// alone (not cumulative), in increasing order.
    pub buckets: Vec<(u64, u64)>,
    /// Observations above the last bound.
    pub above: u64,
    /// The sum of every observation (saturating).
    pub sum: u64,
}

impl HistogramSnapshot {
    /// How many observations there are: the buckets' total, so that it
    /// always agrees with them even when read during an update.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|(_, n)| n).sum::<u64>() + self.above
    }
}

impl Histogram {
    /// An empty histogram with these bucket bounds (increasing).
    pub fn new(bounds: &'static [u64]) -> Self {
        debug_assert!(bounds.windows(2).all(|w| w[0] < w[1]), "bounds must increase");
        Self { bounds, buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(), sum: AtomicU64::new(0) }
    }

    /// Counts `times` observations of `value`.
    pub fn observe_n(&self, value: u64, times: u64) {
        if times == 0 {
            return;
        }
        let bucket = self.bounds.partition_point(|bound| *bound < value);
        self.buckets[bucket].fetch_add(times, Ordering::Relaxed);
        self.sum.fetch_add(value.saturating_mul(times), Ordering::Relaxed);
    }

    /// Counts one observation of `value`.
    pub fn observe(&self, value: u64) {
        self.observe_n(value, 1);
    }

    /// The counts now.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let count = |n: usize| self.buckets[n].load(Ordering::Relaxed);
        HistogramSnapshot {
            buckets: self.bounds.iter().enumerate().map(|(n, bound)| (*bound, count(n))).collect(),
            above: count(self.bounds.len()),
            sum: self.sum.load(Ordering::Relaxed),
        }
    }
}

fn nanos(duration: Duration) -> u64 {
    u64::try_from(duration.as_nanos()).unwrap_or(u64::MAX)
}

/// What the sequencer counts (see the module's documentation).
#[derive(Debug)]
pub struct LogStats {
    head: AtomicU64,
    sealed_size: AtomicU64,
    appended_records: AtomicU64,
    commits: AtomicU64,
    failed_commits: AtomicU64,
    append_latency: Histogram,
    group_size: Histogram,
    commit_time: Histogram,
    seal_lag: Histogram,
    seal_time: Histogram,
}

impl LogStats {
    /// Numbers for a log whose head is `head` and whose latest checkpoint
    /// covers `sealed_size` records.
    pub(super) fn new(head: u64, sealed_size: u64) -> Self {
        Self {
            head: AtomicU64::new(head),
            sealed_size: AtomicU64::new(sealed_size),
            appended_records: AtomicU64::new(0),
            commits: AtomicU64::new(0),
            failed_commits: AtomicU64::new(0),
            append_latency: Histogram::new(APPEND_LATENCY_NS),
            group_size: Histogram::new(GROUP_SIZE),
            commit_time: Histogram::new(APPEND_LATENCY_NS),
            seal_lag: Histogram::new(SEAL_LAG_NS),
            seal_time: Histogram::new(APPEND_LATENCY_NS),
        }
    }

    /// The log's head: the index its next record gets, so the number of
    /// records in it.
    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Records under the latest signed checkpoint.
    pub fn sealed_size(&self) -> u64 {
        self.sealed_size.load(Ordering::Acquire)
    }

    /// Records this process appended (derived records, registry and rule
    /// changes included).
    pub fn appended_records(&self) -> u64 {
        self.appended_records.load(Ordering::Relaxed)
    }

    /// Group commits that succeeded.
    pub fn commits(&self) -> u64 {
        self.commits.load(Ordering::Relaxed)
    }

    /// Group commits that failed (their callers were told nothing was logged).
    pub fn failed_commits(&self) -> u64 {
        self.failed_commits.load(Ordering::Relaxed)
    }

    /// Each append call's wait from [`Log::submit`](super::Log::submit) to
    /// durable, in nanoseconds.
    pub fn append_latency(&self) -> HistogramSnapshot {
        self.append_latency.snapshot()
    }

    /// Records per group commit.
    pub fn group_size(&self) -> HistogramSnapshot {
        self.group_size.snapshot()
    }

    /// How long each successful group commit took to make its records
    /// durable (payload files, the transaction and its fsync), in
    /// nanoseconds, in the append latency's buckets: the part of an
    /// append's latency that is its own commit rather than the wait for
    /// the one ahead of it.
    pub fn commit_time(&self) -> HistogramSnapshot {
        self.commit_time.snapshot()
    }

    /// Each record's wait from durable (acknowledged) to covered by a
    /// signed checkpoint, in nanoseconds; records committed by an earlier
    /// process are not counted.
    pub fn seal_lag(&self) -> HistogramSnapshot {
        self.seal_lag.snapshot()
    }

    /// How long each seal held the sequencer (its appends wait meanwhile),
    /// in nanoseconds, in the append latency's buckets.
    pub fn seal_time(&self) -> HistogramSnapshot {
        self.seal_time.snapshot()
    }

    /// Records at `range` are durable.
    pub(super) fn committed(&self, range: &Range<u64>) {
        self.appended_records.fetch_add(range.end - range.start, Ordering::Relaxed);
        self.head.store(range.end, Ordering::Release);
    }

    /// A group of `records` committed at `now`, in `took`, submitted at
    /// `submitted` (one instant per append call).
    pub(super) fn group_committed(&self, records: u64, submitted: &[Instant], now: Instant, took: Duration) {
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.group_size.observe(records);
        self.commit_time.observe(nanos(took));
        for at in submitted {
            self.append_latency.observe(nanos(now.saturating_duration_since(*at)));
        }
    }

    /// A group commit failed.
    pub(super) fn group_failed(&self) {
        self.failed_commits.fetch_add(1, Ordering::Relaxed);
    }

    /// A checkpoint now covers `size` records.
    pub(super) fn sealed(&self, size: u64, took: Duration) {
        self.sealed_size.store(size, Ordering::Release);
        self.seal_time.observe(nanos(took));
    }
}

impl Default for LogStats {
    /// The numbers of an empty log.
    fn default() -> Self {
        Self::new(0, 0)
    }
}

/// Records durable but not yet sealed, by when they became durable: for the
/// seal lag. One entry per commit, not per record.
#[derive(Debug)]
pub(super) struct Unsealed {
    /// `(end, at)`: the records up to `end` (exclusive) were durable at `at`.
    commits: VecDeque<(u64, Instant)>,
    /// The first record not yet counted.
    from: u64,
}

impl Unsealed {
    /// Counting starts at `head`: what was committed before (by an earlier
    /// process) has no known commit time.
    pub(super) fn new(head: u64) -> Self {
        Self { commits: VecDeque::new(), from: head }
    }

    /// Records up to `end` were durable at `at`.
    pub(super) fn committed(&mut self, end: u64, at: Instant) {
        match self.commits.back_mut() {
            // The same moment (callers of one group): one entry.
            Some((last, when)) if *when == at => *last = end,
            _ => self.commits.push_back((end, at)),
        }
    }

    /// A checkpoint of `size` was signed at `now`: each record it newly
    /// covers is counted in `lags`.
    pub(super) fn sealed(&mut self, size: u64, now: Instant, lags: &LogStats) {
        while let Some(&(end, at)) = self.commits.front() {
            let covered = end.min(size).saturating_sub(self.from);
            lags.seal_lag.observe_n(nanos(now.saturating_duration_since(at)), covered);
            self.from = self.from.max(end.min(size));
            if end > size {
                break;
            }
            self.commits.pop_front();
        }
        self.from = self.from.max(size);
    }
}

/// How much room the log's database takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatabaseSize {
    /// Pages × page size: the database as SQLite counts it (what a
    /// checkpoint leaves in `log.db`), free pages included.
    pub bytes: u64,
    /// Free pages × page size: room freed (deleted payloads) that new
    /// records reuse before the file grows.
    pub free_bytes: u64,
    /// Payloads stored as files beside the database (64 KiB or more).
    pub payload_files: u64,
    /// Their bytes.
    pub payload_file_bytes: u64,
}

impl LogReader {
    /// The database's size, from its page counts (three PRAGMAs), and the
    /// payload files' count and bytes (from the `payload_files` index, which
    /// holds only their rows).
    pub async fn database_size(&self) -> Result<DatabaseSize, StoreError> {
        let mut conn = self.pool().acquire().await?;
        let mut values = [0u64; 3];
        for (value, pragma) in values.iter_mut().zip(["PRAGMA page_size", "PRAGMA page_count", "PRAGMA freelist_count"])
        {
            *value = to_u64(sqlx::query_scalar::<_, i64>(pragma).fetch_one(&mut *conn).await?)?;
        }
        let [page, pages, free] = values;
        let (files, file_bytes): (i64, i64) =
            sqlx::query_as("SELECT count(*), coalesce(sum(file_len), 0) FROM payloads WHERE file_len IS NOT NULL")
                .fetch_one(&mut *conn)
                .await?;
        Ok(DatabaseSize {
            bytes: pages.saturating_mul(page),
            free_bytes: free.saturating_mul(page),
            payload_files: to_u64(files)?,
            payload_file_bytes: to_u64(file_bytes)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn observations_land_in_the_first_bucket_at_or_above_them() {
        let histogram = Histogram::new(&[10, 20, 40]);
        for value in [0, 10, 11, 20, 40, 41, 1_000] {
            histogram.observe(value);
        }
        histogram.observe_n(15, 3);
        histogram.observe_n(15, 0);
        let snapshot = histogram.snapshot();
        assert_eq!(snapshot.buckets, vec![(10, 2), (20, 5), (40, 1)]);
        assert_eq!(snapshot.above, 2);
        assert_eq!(snapshot.count(), 10);
        assert_eq!(snapshot.sum, 10 + 11 + 20 + 40 + 41 + 1_000 + 45);
    }

    #[test]
    fn seal_lag_counts_each_record_once_when_a_block_ends_inside_a_commit() {
        let stats = LogStats::new(5, 5);
        let mut unsealed = Unsealed::new(5);
        let t0 = Instant::now();
        unsealed.committed(8, t0);
        unsealed.committed(10, t0 + Duration::from_millis(1));
        unsealed.committed(20, t0 + Duration::from_millis(2));
        // The block ends inside the third commit: 3 + 2 + 2 records covered.
        unsealed.sealed(12, t0 + Duration::from_millis(3), &stats);
        let lag = stats.seal_lag();
        assert_eq!(lag.count(), 7);
        assert_eq!(lag.sum, (3 * 3 + 2 * 2 + 2) * MS);
        // The rest of the third commit, later.
        unsealed.sealed(20, t0 + Duration::from_millis(102), &stats);
        let lag = stats.seal_lag();
        assert_eq!(lag.count(), 15);
        assert_eq!(lag.buckets.iter().find(|(bound, _)| *bound == 100 * MS).map(|b| b.1), Some(8));
        // Sealing again changes nothing.
        unsealed.sealed(20, t0 + Duration::from_secs(9), &stats);
        assert_eq!(stats.seal_lag().count(), 15);
    }

    #[test]
    fn records_from_an_earlier_process_have_no_seal_lag() {
        let stats = LogStats::new(10, 4);
        let mut unsealed = Unsealed::new(10);
        let t0 = Instant::now();
        unsealed.sealed(10, t0, &stats);
        assert_eq!(stats.seal_lag().count(), 0);
        unsealed.committed(11, t0);
        unsealed.sealed(11, t0, &stats);
        assert_eq!(stats.seal_lag().count(), 1);
    }
}
