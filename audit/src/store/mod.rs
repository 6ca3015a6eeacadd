//! The audit log in SQLite.
//!
//! - [`Log`]: the writable log. Owns the sequencer task, the only writer:
//!   [`Log::append`] group-commits records from many concurrent callers in
//!   one transaction and returns once they are durable; the same task seals
//!   blocks and signs checkpoints ([`LogConfig::block_max_records`],
//!   [`LogConfig::block_interval`]).
//! - [`LogReader`]: read-only access (proofs, checkpoints, records), usable
//!   from another process while a broker writes.
//! - [`verify()`]: re-derives every hash and signature from the records.
//! - [`Registry`]: the device registry (devices, keys, ACLs), written by
//!   `sealmq device …` while a broker may run; each change reaches the log
//!   as kind-2 records through an outbox the sequencer drains
//!   ([`Log::drain_registry_outbox`]). Also the sequencer's side tables the
//!   broker restores state from: MQS1 replay windows and retained topics
//!   (the latter only as checked against the log,
//!   [`Log::reconcile_retained`]).
//!
//! - [`Follower`]: what sees each record as it is appended and may append
//!   records right after it, in the same transaction ([`Derived`]: a
//!   rule's actions).
//! - [`Log::erase`], [`ErasureSpec`], [`ErasureOutbox`]: stored payloads
//!   erased (retention, `sealmq erase`), each erasure logged
//!   ([`ErasureRecord`]).
//! - [`Cosignatures`]: what the log's witnesses cosigned (`log.db`);
//!   [`WitnessStore`]: this broker as a witness of other logs, its key and
//!   state (`witness.db`, `witness.key`).
//!
//! Files in the data directory: `log.db` (with its WAL) and `log.key`, the
//! log's Ed25519 seed (mode 0600, created on first use, never logged); a
//! witness adds `witness.db` and `witness.key`.
//!
//! - [`backup()`] / [`restore()`]: an online copy of `log.db` and its key,
//!   verified, with a manifest; and putting one back (never the witness's
//!   files: see [`backup`]).

pub mod archive;
pub mod backup;
mod backup_payloads;
mod checkpointer;
pub mod cosignatures;
pub mod erasure;
mod follower;
mod index;
mod indexing;
mod keyfile;
mod payload_files;
mod pending;
mod reader;
pub mod registry;
pub mod registry_follow;
mod registry_peers;
pub mod restore;
mod retained;
mod stats;
pub mod synthetic;
mod verify;
pub mod witness;
mod writer;

use std::path::{Path, PathBuf};
use std::time::Duration;

pub use backup::{BackupError, Manifest, backup};
pub use cosignatures::Cosignatures;
pub use erasure::{ERASURE_DEVICE, ERASURE_TOPIC, Erased, ErasureOutbox, ErasureRecord, ErasureSpec, Reason};
pub use follower::{Derived, Follower};
pub use index::{FILTER_TOPICS_MAX, FoundRecord, RecordQuery, SearchPage};
pub use payload_files::{FILE_MIN, PAYLOAD_DIR};
pub use reader::{LogReader, SealedBlock, StoredRecord};
pub use registry::{
    Change, Device, DeviceKey, DeviceSettings, Policy, Registry, RegistryError, RegistrySnapshot, validate_device_id,
    verify_password,
};
pub use restore::{Replace, Restored, restore};
pub use stats::{DatabaseSize, HistogramSnapshot, LogStats};
pub use verify::{Failure, Place, Progress, VerifyReport, verify, verify_with_archive};
pub use witness::{WitnessStore, WitnessedLog};
pub use writer::{Appending, Entry, Log, Resume};

use crate::{DecodeError, NoteError, ProofError};

/// Name of the database file in the data directory.
pub const DB_FILE: &str = "log.db";
/// Name of the log key file in the data directory.
pub const KEY_FILE: &str = "log.key";

/// How the log is opened for writing.
#[derive(Debug, Clone)]
pub struct LogConfig {
    /// The data directory; created if missing.
    pub data_dir: PathBuf,
    /// The log's origin (its name in checkpoints). `None`: the origin the
    /// log was created with, or for a new log `sealmq/<random id>`.
    pub origin: Option<String>,
    /// A block is sealed when this many records are pending…
    pub block_max_records: u32,
    /// …or when this long has passed since the first pending one.
    pub block_interval: Duration,
    /// Appends waiting for the sequencer before callers are held back.
    pub queue_depth: usize,
}

impl LogConfig {
    /// Defaults for a data directory: blocks of at most 4096 records or 250 ms.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            origin: None,
            block_max_records: 4096,
            block_interval: Duration::from_millis(250),
            queue_depth: 16 * 1024,
        }
    }
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// SQLite failed.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// A schema migration failed.
    #[error("schema migration: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Another process has the log open for writing.
    #[error("{0} is in use by another sealmq process (it holds log.lock)")]
    Locked(PathBuf),
    /// The data directory holds no log.
    #[error("no log in {0} (nothing has been written there yet)")]
    NoLog(PathBuf),
    /// The log key file is unusable, or does not match the database.
    #[error("log key: {0}")]
    Key(String),
    /// The configured origin differs from the one the log was created with.
    #[error("the log was created with origin {existing:?}; it cannot be renamed to {configured:?}")]
    OriginChanged {
        /// In the database.
        existing: String,
        /// In the configuration.
        configured: String,
    },
    /// Stored data is not what the log wrote; run `sealmq audit verify`.
    #[error("corrupt log: {0}")]
    Corrupt(String),
    /// A request names something the log does not have.
    #[error("{0}")]
    NotFound(String),
    /// The record was archived: the database keeps records from
    /// `archived` on (and a few below it); the archive has the rest.
    #[error(
        "record {index} is archived (the log keeps records from {archived} on; see the archive written by `sealmq archive`)"
    )]
    Archived {
        /// The record asked for.
        index: u64,
        /// The archived size.
        archived: u64,
    },
    /// A search cannot be answered as asked (a bad or too broad filter).
    #[error("{0}")]
    Query(String),
    /// An append could not be made durable; nothing of it was acknowledged.
    #[error("append failed, nothing was logged: {0}")]
    AppendFailed(String),
    /// The sequencer has stopped.
    #[error("the log is closed")]
    Closed,
    /// A follower was offered that has not seen exactly the log's records.
    #[error("the follower is at index {follower}, the log's next index is {log}")]
    FollowerOutOfStep {
        /// [`Follower::next_index`].
        follower: u64,
        /// The index the log's next record gets.
        log: u64,
    },
    /// The follower derived a record the log cannot take (a bug of the
    /// follower); the group it came with was not logged.
    #[error("the follower's records are wrong: {0}")]
    Follower(String),
    /// A stored record or header does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A proof could not be built.
    #[error(transparent)]
    Proof(#[from] ProofError),
    /// A note or key could not be parsed.
    #[error(transparent)]
    Note(#[from] NoteError),
}

/// Brings the schema in `migrations/` up to date on `conn`.
///
/// Both the broker ([`Log::open`]) and `sealmq device …` ([`Registry::open`])
/// may be first to open a data directory, possibly at the same moment.
/// SQLite gives sqlx's migrator no lock, so two processes could both see a
/// migration as missing and both apply it; running the whole migration
/// inside one `BEGIN IMMEDIATE` transaction (sqlx nests its own per-migration
/// transactions as savepoints) makes the second wait for the first and then
/// find nothing left to do.
async fn migrate(conn: &mut sqlx::SqliteConnection) -> Result<(), StoreError> {
    use sqlx::Connection;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    sqlx::migrate!("../migrations").run(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_path_buf(), source }
}

/// The broker clock: Unix time in milliseconds.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// SQLite stores integers as i64; the log's indices and sizes fit.
fn to_i64(value: u64) -> i64 {
    i64::try_from(value).expect("log positions stay below 2^63")
}

fn to_u64(value: i64) -> Result<u64, StoreError> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative position {value}")))
}

fn to_hash(blob: &[u8], what: &str) -> Result<crate::Hash, StoreError> {
    blob.try_into().map_err(|_| StoreError::Corrupt(format!("{what} is {} bytes, not 32", blob.len())))
}
