//! The writable log: one sequencer task owns the write connection, appends
//! records in group commits and seals blocks.

use std::fs::File;
use std::ops::Range;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnection, SqliteSynchronous};
use sqlx::{Connection, QueryBuilder, Sqlite};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;

use super::keyfile;
use super::reader::{LogReader, SealedBlock, connect_options};
use super::{DB_FILE, KEY_FILE, LogConfig, StoreError, io_error, now_ms, to_i64, to_u64};
use crate::tree::is_stored_level;
use crate::{BlockHeader, Checkpoint, DecodeError, Frontier, Hash, LogKey, NodeId, Record, leaf_hash, merkle_root};

/// Rows per multi-row INSERT. Each row binds 3 values; this stays far below
/// SQLite's variable limit and lets the statement cache reuse one plan.
const INSERT_CHUNK: usize = 256;
/// Records one group commit takes at most, so one transaction stays short.
const GROUP_MAX_RECORDS: usize = 16 * 1024;
/// After a failed seal, wait this long before trying again.
const SEAL_RETRY: Duration = Duration::from_secs(1);
/// Name of the lock file that keeps a second writer out of the data directory.
const LOCK_FILE: &str = "log.lock";

/// A record ready to append: its canonical bytes, leaf hash and, optionally,
/// the application payload to store beside it.
///
/// Built by the caller, so hashing happens on the callers' threads rather
/// than in the sequencer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    body: Vec<u8>,
    leaf: Hash,
    payload: Option<Vec<u8>>,
}

impl Entry {
    /// Encodes `record`; `payload` is stored (deletable later) when given.
    pub fn new(record: &Record, payload: Option<Vec<u8>>) -> Result<Self, DecodeError> {
        let body = record.encode()?;
        Ok(Self { leaf: leaf_hash(&body), body, payload })
    }

    /// The record's canonical bytes.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The record's leaf hash.
    pub fn leaf(&self) -> &Hash {
        &self.leaf
    }
}

enum Command {
    Append { entries: Vec<Entry>, reply: Reply },
    Seal { reply: oneshot::Sender<Result<Option<SealedBlock>, StoreError>> },
}

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
    _lock: File,
}

impl Log {
    /// Opens (creating if needed) the log in `config.data_dir`, seals any
    /// records a crash left unsealed, and starts the sequencer.
    pub async fn open(config: LogConfig) -> Result<Self, StoreError> {
        let dir = &config.data_dir;
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let lock = lock_data_dir(dir)?;
        let seed = keyfile::load_or_create(&dir.join(KEY_FILE))?;

        let options = connect_options(&dir.join(DB_FILE)).create_if_missing(true).synchronous(SqliteSynchronous::Full);
        let mut conn = SqliteConnection::connect_with(&options).await?;
        sqlx::migrate!("../migrations").run(&mut conn).await?;
        let key = init_meta(&mut conn, &config, &seed).await?;

        let pool = sqlx::sqlite::SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(connect_options(&dir.join(DB_FILE)).read_only(true))
            .await?;
        let reader = LogReader::from_pool(pool).await?;

        let mut sequencer = Sequencer::resume(conn, key, &reader, &config).await?;
        // A crash may have left committed records unsealed: seal them now,
        // so every acknowledged record is covered by a checkpoint again.
        while !sequencer.pending.is_empty() {
            sequencer.seal_block().await?;
        }
        let (sealed_tx, sealed) = watch::channel(reader.latest_block().await?);
        sequencer.sealed = Some(sealed_tx);
        let (commands, rx) = mpsc::channel(config.queue_depth.max(1));
        let task = tokio::spawn(sequencer.run(rx));
        Ok(Self { commands, reader, sealed, task, _lock: lock })
    }

    /// Appends records and returns their log indices once they are durable.
    ///
    /// Waits while the sequencer's queue is full (back-pressure); never
    /// drops. On error nothing of this call was logged.
    pub async fn append(&self, entries: Vec<Entry>) -> Result<Range<u64>, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.commands.send(Command::Append { entries, reply }).await.map_err(|_| StoreError::Closed)?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends one record; returns its log index once it is durable.
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
        let Self { commands, task, reader, .. } = self;
        drop(commands);
        task.await.map_err(|e| StoreError::AppendFailed(format!("the sequencer failed: {e}")))?;
        reader.pool().close().await;
        Ok(())
    }
}

fn lock_data_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io_error(&path)(e)),
    }
}

/// Records the origin and verifier key of a new log, or checks that the key
/// file and configured origin match an existing one.
async fn init_meta(conn: &mut SqliteConnection, config: &LogConfig, seed: &[u8; 32]) -> Result<LogKey, StoreError> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT value FROM log_meta WHERE name = 'origin'").fetch_optional(&mut *conn).await?;
    if let Some(existing) = stored {
        if let Some(configured) = &config.origin
            && configured != &existing
        {
            return Err(StoreError::OriginChanged { existing, configured: configured.clone() });
        }
        let key = LogKey::from_seed(&existing, seed)?;
        let vkey: String =
            sqlx::query_scalar("SELECT value FROM log_meta WHERE name = 'vkey'").fetch_one(&mut *conn).await?;
        if crate::VerifierKey::from_str(&vkey)? != key.verifier() {
            return Err(StoreError::Key(format!(
                "{KEY_FILE} is not the key this log was created with (the log's verifier key is {vkey})"
            )));
        }
        return Ok(key);
    }
    let origin = match &config.origin {
        Some(origin) => origin.clone(),
        None => {
            let mut id = [0u8; 8];
            getrandom::fill(&mut id).map_err(|e| StoreError::Key(format!("no randomness: {e}")))?;
            format!("sealmq.local/{}", hex::encode(id))
        }
    };
    let key = LogKey::from_seed(&origin, seed)?;
    let mut tx = conn.begin().await?;
    for (name, value) in
        [("origin", origin.clone()), ("vkey", key.verifier().to_string()), ("created_ms", now_ms().to_string())]
    {
        sqlx::query("INSERT INTO log_meta (name, value) VALUES (?, ?)")
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(origin, vkey = %key.verifier(), "created a new log");
    Ok(key)
}

/// The state the sequencer task owns.
struct Sequencer {
    conn: SqliteConnection,
    key: LogKey,
    /// The index the next appended record gets.
    next_index: u64,
    /// The right edge of the sealed tree.
    frontier: Frontier,
    /// Height and hash of the latest block.
    last_block: Option<(u64, Hash)>,
    /// Leaf hashes of committed records not yet in a block, from `frontier.size()`.
    pending: Vec<Hash>,
    /// When the oldest pending record was committed (or a failed seal may be retried).
    seal_due: Option<Instant>,
    block_max_records: usize,
    block_interval: Duration,
    sealed: Option<watch::Sender<Option<SealedBlock>>>,
}

impl Sequencer {
    async fn resume(
        mut conn: SqliteConnection,
        key: LogKey,
        reader: &LogReader,
        config: &LogConfig,
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
        let mut pending = Vec::with_capacity(rows.len());
        for (expected, (idx, leaf)) in (sealed_size..).zip(rows) {
            if to_u64(idx)? != expected {
                return Err(StoreError::Corrupt(format!("record {expected} is missing")));
            }
            pending.push(super::to_hash(&leaf, "leaf hash")?);
        }
        if !pending.is_empty() {
            tracing::warn!(records = pending.len(), "found unsealed records from an earlier run; sealing them");
        }
        Ok(Self {
            conn,
            key,
            next_index: sealed_size + pending.len() as u64,
            frontier,
            last_block: last.map(|b| (b.header.height, b.hash)),
            pending,
            seal_due: None,
            block_max_records: usize::try_from(config.block_max_records.max(1)).unwrap_or(usize::MAX),
            block_interval: config.block_interval,
            sealed: None,
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
                    let _ = reply.send(result);
                }
                Some(Command::Append { entries, reply }) => {
                    let mut group = vec![(entries, reply)];
                    let mut count = group[0].0.len();
                    // Group commit: take every append already queued.
                    while count < GROUP_MAX_RECORDS {
                        match commands.try_recv() {
                            Ok(Command::Append { entries, reply }) => {
                                count += entries.len();
                                group.push((entries, reply));
                            }
                            Ok(other) => {
                                stash = Some(other);
                                break;
                            }
                            Err(_) => break,
                        }
                    }
                    self.commit_group(group).await;
                    while self.pending.len() >= self.block_max_records {
                        if !self.seal_or_retry().await {
                            break;
                        }
                    }
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

    async fn commit_group(&mut self, group: Vec<(Vec<Entry>, Reply)>) {
        match self.insert(&group).await {
            Ok(()) => {
                for (entries, reply) in group {
                    let range = self.next_index..self.next_index + entries.len() as u64;
                    self.next_index = range.end;
                    self.pending.extend(entries.iter().map(|e| e.leaf));
                    // A caller that went away still had its records logged.
                    let _ = reply.send(Ok(range));
                }
                if self.seal_due.is_none() && !self.pending.is_empty() {
                    self.seal_due = Some(Instant::now() + self.block_interval);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "append failed; its callers are told nothing was logged");
                let why = e.to_string();
                for (_, reply) in group {
                    let _ = reply.send(Err(StoreError::AppendFailed(why.clone())));
                }
                if let Err(e) = self.resync().await {
                    tracing::error!(error = %e, "cannot re-read the log's head after a failed append");
                }
            }
        }
    }

    /// Inserts one group's records and payloads in one transaction.
    async fn insert(&mut self, group: &[(Vec<Entry>, Reply)]) -> Result<(), StoreError> {
        let rows: Vec<(i64, &Entry)> =
            (self.next_index..).map(to_i64).zip(group.iter().flat_map(|(entries, _)| entries)).collect();
        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO records (idx, leaf, body) ");
            insert.push_values(chunk, |mut row, (idx, entry)| {
                row.push_bind(*idx).push_bind(&entry.leaf[..]).push_bind(&entry.body[..]);
            });
            insert.build().execute(&mut *tx).await?;
        }
        let payloads: Vec<(i64, &[u8])> =
            rows.iter().filter_map(|(idx, entry)| Some((*idx, entry.payload.as_deref()?))).collect();
        for chunk in payloads.chunks(INSERT_CHUNK) {
            let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO payloads (idx, data) ");
            insert.push_values(chunk, |mut row, (idx, data)| {
                row.push_bind(*idx).push_bind(*data);
            });
            insert.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// After a failed transaction, takes the log's head from the database:
    /// a commit that reported failure may still have landed, and the next
    /// append must neither collide with nor skip those records.
    async fn resync(&mut self) -> Result<(), StoreError> {
        let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as("SELECT idx, leaf FROM records WHERE idx >= ? ORDER BY idx")
            .bind(to_i64(self.next_index))
            .fetch_all(&mut self.conn)
            .await?;
        for (idx, leaf) in rows {
            if to_u64(idx)? != self.next_index {
                return Err(StoreError::Corrupt(format!("record {} is missing", self.next_index)));
            }
            self.pending.push(super::to_hash(&leaf, "leaf hash")?);
            self.next_index += 1;
            self.seal_due.get_or_insert_with(Instant::now);
        }
        Ok(())
    }

    /// Seals a block; on failure keeps the records pending and retries later.
    async fn seal_or_retry(&mut self) -> bool {
        match self.seal_block().await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, pending = self.pending.len(), "sealing a block failed; retrying");
                self.seal_due = Some(Instant::now() + SEAL_RETRY);
                false
            }
        }
    }

    /// Seals up to one block's worth of pending records: block root, chain
    /// link, tree hashes, tree root and signed checkpoint, in one transaction.
    async fn seal_block(&mut self) -> Result<SealedBlock, StoreError> {
        let count = self.pending.len().min(self.block_max_records);
        debug_assert!(count > 0, "no empty blocks");
        let leaves = &self.pending[..count];
        let mut frontier = self.frontier.clone();
        let mut nodes: Vec<(NodeId, Hash)> = Vec::new();
        for leaf in leaves {
            frontier.push(*leaf, |id, hash| {
                if id.level > 0 && is_stored_level(id.level) {
                    nodes.push((id, *hash));
                }
            });
        }
        let (height, prev_block_hash) = match self.last_block {
            Some((height, hash)) => (height + 1, hash),
            None => (0, [0; 32]),
        };
        let header = BlockHeader {
            height,
            prev_block_hash,
            first_index: self.frontier.size(),
            leaf_count: u32::try_from(count).expect("blocks hold at most u32::MAX records"),
            block_root: merkle_root(leaves),
            tree_size: frontier.size(),
            tree_root: frontier.root(),
            sealed_ms: now_ms(),
        };
        let checkpoint = self.key.sign(&Checkpoint {
            origin: self.key.origin().to_string(),
            size: header.tree_size,
            root: header.tree_root,
        });
        let block = SealedBlock { header, hash: header.hash(), checkpoint };

        let mut tx = self.conn.begin_with("BEGIN IMMEDIATE").await?;
        for chunk in nodes.chunks(INSERT_CHUNK) {
            let mut insert = QueryBuilder::<Sqlite>::new("INSERT INTO tree_nodes (level, idx, hash) ");
            insert.push_values(chunk, |mut row, (id, hash)| {
                row.push_bind(i64::from(id.level)).push_bind(to_i64(id.index)).push_bind(&hash[..]);
            });
            insert.build().execute(&mut *tx).await?;
        }
        sqlx::query("INSERT INTO blocks (height, header, hash, tree_size, checkpoint) VALUES (?, ?, ?, ?, ?)")
            .bind(to_i64(height))
            .bind(&header.encode()[..])
            .bind(&block.hash[..])
            .bind(to_i64(header.tree_size))
            .bind(&block.checkpoint)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;

        self.frontier = frontier;
        self.pending.drain(..count);
        self.last_block = Some((height, block.hash));
        self.seal_due = (!self.pending.is_empty()).then(|| Instant::now() + self.block_interval);
        tracing::debug!(height, records = count, tree_size = header.tree_size, "sealed a block");
        if let Some(sealed) = &self.sealed {
            sealed.send_replace(Some(block.clone()));
        }
        Ok(block)
    }
}

type Reply = oneshot::Sender<Result<Range<u64>, StoreError>>;
