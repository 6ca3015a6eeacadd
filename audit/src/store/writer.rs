//! The writable log: one sequencer task owns the write connection, appends
//! records in group commits and seals blocks.

use std::fs::File;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::Connection;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection, SqliteSynchronous};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::checkpointer::{self, Checkpointer};
use super::follower::{Derived, Follower};
use super::indexing::Indexing;
use super::keyfile;
use super::payload_files::PayloadFiles;
use super::pending::Pending;
use super::reader::{LogReader, SealedBlock, connect_options};
use super::retained;
use super::stats::{LogStats, Unsealed};
use super::{DB_FILE, KEY_FILE, LogConfig, StoreError, io_error, to_i64, to_u64};
use crate::{Hash, LogKey, RetainedState};

#[path = "append.rs"]
mod append;
#[path = "entry.rs"]
mod entry;
#[path = "erasing.rs"]
mod erasing;
#[path = "following.rs"]
mod following;
#[path = "grouping.rs"]
mod grouping;
#[path = "opening.rs"]
mod opening;
#[path = "outbox.rs"]
mod outbox;
#[path = "recovery.rs"]
mod recovery;
#[path = "sealing.rs"]
mod sealing;

pub use entry::Entry;
pub use erasing::Resume;
// Restoring a backup takes the same lock as the writer.
pub(super) use opening::lock_data_dir;

/// Rows per multi-row INSERT. Each row binds 3 values; this stays far below
/// SQLite's variable limit and lets the statement cache reuse one plan.
const INSERT_CHUNK: usize = 256;
/// Records one group commit takes at most, so one transaction stays short.
const GROUP_MAX_RECORDS: usize = 16 * 1024;
/// After a failed seal, wait this long before trying again.
const SEAL_RETRY: Duration = Duration::from_secs(1);
/// Name of the lock file that keeps a second writer out of the data directory.
const LOCK_FILE: &str = "log.lock";

enum Command {
    // `more`: see `Log::submit_more`.
    Append { entries: Vec<Entry>, reply: Reply, submitted: Instant, more: usize },
    Seal { reply: oneshot::Sender<Result<Option<SealedBlock>, StoreError>> },
    DrainOutbox { reply: oneshot::Sender<Result<Vec<u64>, StoreError>> },
    ReconcileRetained { reply: oneshot::Sender<Result<RetainedState, StoreError>> },
    SetFollower { follower: Box<dyn Follower>, reply: oneshot::Sender<Result<(), StoreError>> },
    Erase { batch: erasing::Batch, reply: oneshot::Sender<Result<erasing::BatchDone, StoreError>> },
}

/// What [`Log::take_derived`] hands out: each commit's derived records.
type DerivedReceiver = mpsc::UnboundedReceiver<Vec<Derived>>;

/// The writable audit log.
///
/// [`Log::append`] hands records to the sequencer task, the log's only
/// writer, which commits the records of many concurrent callers in one
/// SQLite transaction (WAL, `synchronous = FULL`) and answers each caller
/// once its records are durable. The same task seals blocks: when
/// [`LogConfig::block_max_records`] records are pending, or
/// [`LogConfig::block_interval`] after the first pending one.
///
/// A lock file keeps other writers out of the data directory while the log
/// is open; readers ([`LogReader`]) may come and go.
#[derive(Debug)]
pub struct Log {
    commands: mpsc::Sender<Command>,
    reader: LogReader,
    sealed: watch::Receiver<Option<SealedBlock>>,
    task: tokio::task::JoinHandle<()>,
    /// The WAL checkpointer; it ends when the sequencer does.
    checkpointing: tokio::task::JoinHandle<()>,
    /// Until [`Log::take_derived`] takes it.
    derived: Mutex<Option<DerivedReceiver>>,
    stats: Arc<LogStats>,
    _lock: File,
}

/// Records queued by [`Log::submit`]: resolves to their indices once they
/// are durable (or to the error that kept all of them out of the log).
#[derive(Debug)]
#[must_use = "the records are durable only once this resolves"]
pub struct Appending(oneshot::Receiver<Result<Range<u64>, StoreError>>);

impl std::future::Future for Appending {
    type Output = Result<Range<u64>, StoreError>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0).poll(cx).map(|answer| answer.map_err(|_| StoreError::Closed)?)
    }
}

impl Log {
    /// Opens (creating if needed) the log in `config.data_dir`, seals any
    /// records a crash left unsealed, and starts the sequencer.
    pub async fn open(config: LogConfig) -> Result<Self, StoreError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock = opening::lock_data_dir(dir)?;
        let seed = keyfile::load_or_create(&dir.join(KEY_FILE))?;

        let base = connect_options(&dir.join(DB_FILE)).create_if_missing(true).synchronous(SqliteSynchronous::Full);
        let options = checkpointer::writer_options(base.clone());
        let mut conn = SqliteConnection::connect_with(&options).await?;
        super::migrate(&mut conn).await?;
        let key = opening::init_meta(&mut conn, &config, &seed).await?;
        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(connect_options(&dir.join(DB_FILE)).read_only(true))
            .await?;
        let reader = LogReader::from_pool(pool, dir).await?;

        let (derived_tx, derived) = mpsc::unbounded_channel();
        let mut sequencer = Sequencer::resume(conn, options, key, &reader, &config, derived_tx).await?;
        let swept = sequencer.files.sweep(&mut sequencer.conn, sequencer.next_index).await?;
        if swept > 0 {
            tracing::warn!(files = swept, "removed payload files of records that were never committed or were erased");
        }
        // Before anything is appended: the catch-up starts after the
        // highest indexed record (rows a crash left unwritten included), and
        // the appends' rows continue from there.
        sequencer.index.catch_up(&mut sequencer.conn, sequencer.next_index).await?;
        // Registry and rule changes made while no broker ran are logged
        // before the broker serves anyone with them (and before any
        // follower is set: one starts from the log as it is then).
        let drained = sequencer.drain_outbox().await?;
        if !drained.is_empty() {
            tracing::info!(records = drained.len(), "logged registry and rule changes made while the log was closed");
        }
        // A crash may have left committed records unsealed: seal them now
        // (with the registry records just logged), so every acknowledged
        // record is covered by a checkpoint again.
        while !sequencer.pending.is_empty() {
            sequencer.seal_block().await?;
        }
        let (sealed_tx, sealed) = watch::channel(reader.latest_block().await?);
        sequencer.sealed = Some(sealed_tx);
        let (checkpoints, checkpointing) = Checkpointer::start(&base).await?;
        sequencer.checkpoints = Some(checkpoints);
        let (commands, rx) = mpsc::channel(config.queue_depth.max(1));
        let stats = Arc::clone(&sequencer.stats);
        let task = tokio::spawn(sequencer.run(rx));
        let derived = Mutex::new(Some(derived));
        Ok(Self { commands, reader, sealed, task, checkpointing, derived, stats, _lock: lock })
    }

    /// Appends records and returns their log indices once they are durable.
    ///
    /// Waits while the sequencer's queue is full (back-pressure); never
    /// drops. On error nothing of this call was logged.
    ///
    /// The range is the span the call's records occupy: from its first
    /// record's index to one past the last record the [`Follower`] derived
    /// from its last record (see [`Log::set_follower`]); derived records
    /// sit right after their cause, so `range.start` is always the first
    /// record's index, and without a follower (or when it derives nothing)
    /// the range holds exactly the call's records.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<Range<u64>, StoreError> {
        self.submit(entries).await?.await
    }

    /// Queues records for the sequencer and returns once they are queued:
    /// their place in the log is then fixed relative to every later
    /// [`Log::submit`], [`Log::append`] and
    /// [`Log::drain_registry_outbox`]; the returned [`Appending`] resolves
    /// to their indices once they are durable. A caller that decides under
    /// some state (the registry) submits while that state holds, and waits
    /// for durability afterwards.
    pub async fn submit(&self, entries: Vec<Entry>) -> Result<Appending, StoreError> {
        self.submit_more(entries, 0).await
    }

    /// [`Log::submit`], saying that the caller will submit again at once:
    /// it has the next record's input at hand and only some work to do
    /// first, such as a signature check. The group commit that takes these
    /// records then waits for the next (up to 3 ms after the group's first
    /// submission) while the group holds fewer than `more` records, rather
    /// than committing without it: one commit, and one fsync, for both.
    /// `0`: no wait, as [`Log::submit`]. A small `more` lets a commit start
    /// while the caller still works on the rest, a large one saves commits.
    pub async fn submit_more(&self, entries: Vec<Entry>, more: usize) -> Result<Appending, StoreError> {
        let (reply, answer) = oneshot::channel();
        // From here: a wait for room in the queue is part of the latency.
        let submitted = Instant::now();
        let command = Command::Append { entries, reply, submitted, more };
        self.commands.send(command).await.map_err(|_| StoreError::Closed)?;
        Ok(Appending(answer))
    }

    /// Appends one record; returns its log index once it is durable (the
    /// records a follower derives from it come right after).
    pub async fn append_one(&self, entry: Entry) -> Result<u64, StoreError> {
        Ok(self.append(vec![entry]).await?.start)
    }

    /// Seals the pending records now (at most one block's worth), without
    /// waiting for the interval. `None` when nothing was pending.
    pub async fn seal_now(&self) -> Result<Option<SealedBlock>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Seal { reply }).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends the registry changes waiting in the outbox (written by
    /// [`Registry`](super::Registry), e.g. `sealmq device …`) as kind-2
    /// records, in the order they were made, then the rule changes waiting
    /// in `rule_outbox` (`sealmq rule …`) as kind-3 records, and deletes
    /// those outbox rows in the same transaction: each change is logged
    /// exactly once, even across a crash. The records are shown to the
    /// [`Follower`] like any others. Returns the new records' indices
    /// (derived ones included; empty when nothing was waiting; that check
    /// is one cheap read per outbox).
    ///
    /// [`Log::open`] does this too. A running broker calls it when
    /// [`Registry::version`](super::Registry::version) changes, before it
    /// uses what changed (see [`Registry::snapshot`](super::Registry::snapshot)).
    ///
    /// An outbox row that is not a canonical record of its outbox's kind
    /// (2 in `registry_outbox`, 3 in `rule_outbox`) is an error
    /// ([`StoreError::Corrupt`], naming the row's seq) and neither it nor
    /// any row after it is drained: logging it would put a forged record in
    /// the log, skipping it would hide a change. (Rows are drained in
    /// transactions of up to 16 Ki rows; batches before the bad one stay
    /// logged.) At [`Log::open`] this refuses to start the log.
    pub async fn drain_registry_outbox(&self) -> Result<Vec<u64>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::DrainOutbox { reply }).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// The retained state the log implies — per topic, the index of its
    /// retained message — derived from every record in index order, not
    /// taken from the `retained` table. Where the table disagrees, each
    /// topic is reported at error level and the table is repaired.
    ///
    /// Runs on the sequencer: appends wait until it is done (a scan of all
    /// records), so call it at start, before serving.
    pub async fn reconcile_retained(&self) -> Result<RetainedState, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::ReconcileRetained { reply }).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Has the sequencer show every record it appends from now on to
    /// `follower`, in index order, and append what it derives right after
    /// each, in the same transaction (see [`Follower`]). Replaces any
    /// follower set before.
    ///
    /// Refused ([`StoreError::FollowerOutOfStep`]) unless
    /// `follower.next_index()` is the log's next index: a follower built
    /// from the log must not miss a record logged meanwhile. Take
    /// [`Log::take_derived`] first if the derived records are to be acted on.
    pub async fn set_follower(&self, follower: Box<dyn Follower>) -> Result<(), StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::SetFollower { follower, reply }).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// The records the follower derives, sent once they are durable: one
    /// message per commit, in index order (each with its index). `None`
    /// after the first call. Unbounded: the sequencer never waits for the
    /// receiver, so whoever takes it must keep up (or drop it).
    pub fn take_derived(&self) -> Option<mpsc::UnboundedReceiver<Vec<Derived>>> {
        self.derived.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }

    /// The sequencer's numbers (appends, latencies, the head), for metrics.
    pub fn stats(&self) -> &Arc<LogStats> {
        &self.stats
    }

    /// Read access to the same log.
    pub fn reader(&self) -> &LogReader {
        &self.reader
    }

    /// The latest sealed block; changes each time a block is sealed.
    pub fn sealed_blocks(&self) -> watch::Receiver<Option<SealedBlock>> {
        self.sealed.clone()
    }

    /// Stops the sequencer after it has committed every queued append and
    /// sealed every pending record.
    pub async fn close(self) -> Result<(), StoreError> {
        let Self { commands, task, reader, checkpointing, .. } = self;
        drop(commands);
        task.await.map_err(|e| StoreError::AppendFailed(format!("the sequencer failed: {e}")))?;
        if let Err(e) = checkpointing.await {
            tracing::warn!(error = %e, "the WAL checkpointer failed");
        }
        reader.pool().close().await;
        Ok(())
    }
}

/// The state the sequencer task owns.
struct Sequencer {
    conn: SqliteConnection,
    /// How `conn` was opened, to open it again (see [`Sequencer::recover_connection`]).
    options: SqliteConnectOptions,
    key: LogKey,
    /// The index the next appended record gets.
    next_index: u64,
    /// Height and hash of the latest block.
    last_block: Option<(u64, Hash)>,
    /// Committed records not yet in a block, from the sealed tree's size.
    pending: Pending,
    /// When the oldest pending record was committed (or a failed seal may be retried).
    seal_due: Option<Instant>,
    block_max_records: usize,
    block_interval: Duration,
    sealed: Option<watch::Sender<Option<SealedBlock>>>,
    /// The search index's names and the rows not written yet.
    index: Indexing,
    /// Where payloads of `FILE_MIN` bytes or more are written.
    files: PayloadFiles,
    /// Told after each commit; `None` until the log serves appends.
    checkpoints: Option<Checkpointer>,
    /// Sees each record as it is appended (see `following.rs`).
    follower: Option<Box<dyn Follower>>,
    /// Where the follower's records go once durable ([`Log::take_derived`]).
    derived: mpsc::UnboundedSender<Vec<Derived>>,
    /// What it counts ([`Log::stats`]), and when unsealed records became durable.
    stats: Arc<LogStats>,
    unsealed: Unsealed,
}

impl Sequencer {
    async fn resume(
        mut conn: SqliteConnection,
        options: SqliteConnectOptions,
        key: LogKey,
        reader: &LogReader,
        config: &LogConfig,
        derived: mpsc::UnboundedSender<Vec<Derived>>,
    ) -> Result<Self, StoreError> {
        let last = reader.latest_block().await?;
        let sealed_size = last.as_ref().map_or(0, |b| b.header.tree_size);
        let frontier = reader.frontier(sealed_size).await?;
        if let Some(block) = &last
            && frontier.root() != block.header.tree_root
        {
            return Err(StoreError::Corrupt(format!(
                "the stored tree does not match block {}'s tree root; run `sealmq audit verify`",
                block.header.height
            )));
        }
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT idx, leaf FROM records WHERE idx >= ? ORDER BY idx")
            .bind(to_i64(sealed_size))
            .fetch_all(&mut conn)
            .await?;
        let block_max_records = usize::try_from(config.block_max_records.max(1)).unwrap_or(usize::MAX);
        let mut pending = Pending::new(frontier, block_max_records);
        for (expected, (idx, leaf)) in (sealed_size..).zip(rows) {
            if to_u64(idx)? != expected {
                return Err(StoreError::Corrupt(format!("record {expected} is missing")));
            }
            pending.push(super::to_hash(&leaf, "leaf hash")?);
        }
        if !pending.is_empty() {
            tracing::warn!(records = pending.len(), "found unsealed records from an earlier run; sealing them");
        }
        let next_index = sealed_size + pending.len() as u64;
        Ok(Self {
            conn,
            options,
            key,
            next_index,
            last_block: last.map(|b| (b.header.height, b.hash)),
            pending,
            seal_due: None,
            block_max_records,
            block_interval: config.block_interval,
            sealed: None,
            index: Indexing::new(),
            files: PayloadFiles::new(&config.data_dir),
            checkpoints: None,
            follower: None,
            derived,
            stats: Arc::new(LogStats::new(next_index, sealed_size)),
            unsealed: Unsealed::new(next_index),
        })
    }

    async fn run(mut self, mut commands: mpsc::Receiver<Command>) {
        let mut stash = None;
        loop {
            let command = match stash.take() {
                Some(command) => Some(command),
                None => match self.seal_due {
                    Some(due) => tokio::select! {
                        command = commands.recv() => command,
                        () = tokio::time::sleep_until(due) => {
                            self.seal_or_retry().await;
                            continue;
                        }
                    },
                    None => commands.recv().await,
                },
            };
            match command {
                None => break,
                Some(Command::Seal { reply }) => {
                    let result = if self.pending.is_empty() { Ok(None) } else { self.seal_block().await.map(Some) };
                    if result.is_err() {
                        self.recover_connection().await;
                    }
                    let _ = reply.send(result);
                }
                Some(Command::ReconcileRetained { reply }) => {
                    let result = retained::reconcile(&mut self.conn).await;
                    if result.is_err() {
                        self.recover_connection().await;
                    }
                    let _ = reply.send(result);
                }
                Some(Command::SetFollower { follower, reply }) => {
                    let _ = reply.send(self.set_follower(follower));
                }
                Some(Command::Erase { batch, reply }) => {
                    let _ = reply.send(self.erase_batch(batch).await);
                    self.seal_full_blocks().await;
                }
                Some(Command::DrainOutbox { reply }) => {
                    let result = self.drain_outbox().await;
                    if let Err(e) = &result {
                        tracing::error!(error = %e, "logging registry or rule changes failed");
                    }
                    let _ = reply.send(result);
                    self.seal_full_blocks().await;
                }
                Some(Command::Append { entries, reply, submitted, more }) => {
                    let (group, times) =
                        grouping::gather((entries, reply), submitted, more, &mut commands, &mut stash).await;
                    self.commit_group(group, &times).await;
                    self.seal_full_blocks().await;
                    self.restart_wal_if_due().await;
                }
            }
        }
        // Closing: everything queued was committed above; seal the rest.
        while !self.pending.is_empty() {
            if let Err(e) = self.seal_block().await {
                tracing::error!(error = %e, "could not seal the final block; it is sealed on the next start");
                break;
            }
        }
        if let Err(e) = self.conn.close().await {
            tracing::warn!(error = %e, "closing the log database");
        }
    }

    /// Lets the checkpointer copy what was just committed into the database.
    fn checkpoint_soon(&self) {
        if let Some(checkpoints) = &self.checkpoints {
            checkpoints.kick();
        }
    }

    /// Finishes the checkpointer's work on this connection when the WAL
    /// should start over (see [`Checkpointer::restart_due`]).
    async fn restart_wal_if_due(&mut self) {
        if !self.checkpoints.as_ref().is_some_and(Checkpointer::restart_due) {
            return;
        }
        match checkpointer::checkpoint(&mut self.conn).await {
            Ok((frames, copied)) => tracing::debug!(frames, copied, "checkpointed for a WAL restart"),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint failed"),
        }
    }

    /// Takes entries committed `at` into the head: their indices, from `next_index`.
    fn committed<'a>(&mut self, entries: impl IntoIterator<Item = &'a Entry>, at: Instant) -> Range<u64> {
        let start = self.next_index;
        for entry in entries {
            self.pending.push(entry.leaf);
            self.next_index += 1;
        }
        if self.seal_due.is_none() && !self.pending.is_empty() {
            self.seal_due = Some(at + self.block_interval);
        }
        let range = start..self.next_index;
        self.stats.committed(&range);
        self.unsealed.committed(range.end, at);
        range
    }

    /// Commits one group: each caller's entries, with what the follower
    /// derives spliced in after each (their indices are final only here).
    /// `submitted`: when each caller submitted (for the latency figures).
    async fn commit_group(&mut self, mut group: Vec<(Vec<Entry>, Reply)>, submitted: &[Instant]) {
        let followed = self.follow_group(&mut group);
        // The commit's own time, as `LogStats::commit_time` says: not the
        // follower's derivations above.
        let started = Instant::now();
        let written = match followed {
            Ok(derived) => self.insert(&mut group).await.map(|()| derived),
            Err(e) => Err(e),
        };
        match written {
            Ok(derived) => {
                let (now, start) = (Instant::now(), self.next_index);
                for (entries, reply) in group {
                    let range = self.committed(&entries, now);
                    // A caller that went away still had its records logged.
                    let _ = reply.send(Ok(range));
                }
                self.followed(derived);
                self.stats.group_committed(self.next_index - start, submitted, now, now - started);
            }
            Err(e) => {
                self.stats.group_failed();
                tracing::error!(error = %e, "append failed; its callers are told nothing was logged");
                let why = e.to_string();
                for (_, reply) in group {
                    let _ = reply.send(Err(StoreError::AppendFailed(why.clone())));
                }
                self.follow_failed();
                self.recover_connection().await;
                if let Err(e) = self.resync().await {
                    tracing::error!(error = %e, "cannot re-read the log's head after a failed append");
                }
                self.refollow().await;
            }
        }
    }

    /// Inserts one group's records, payloads and side effects in one
    /// transaction. May take the payloads out of the entries (they are
    /// handed to SQLite rather than copied).
    async fn insert(&mut self, group: &mut [(Vec<Entry>, Reply)]) -> Result<(), StoreError> {
        self.catch_up_index().await;
        let mut rows: Vec<(i64, &mut Entry)> =
            (self.next_index..).map(to_i64).zip(group.iter_mut().flat_map(|(entries, _)| entries)).collect();
        let mut payloads = append::take_payloads(&mut rows, &self.files).await?;
        let rows: Vec<(i64, &Entry)> = rows.into_iter().map(|(idx, entry)| (idx, &*entry)).collect();
        if !append::commit_in_one_trip(&mut self.conn, &rows, &mut payloads, &mut self.index).await? {
            let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
            let indexed = append::write_entries(&mut tx, &rows, payloads, &self.index).await?;
            tx.commit().await?;
            self.index.committed(indexed);
        }
        self.checkpoint_soon();
        Ok(())
    }
}

type Reply = oneshot::Sender<Result<Range<u64>, StoreError>>;
