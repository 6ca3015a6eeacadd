//! Online backups of a log: a consistent copy of `log.db` taken while the
//! broker appends, the log key beside it, and a manifest naming what was
//! copied; [`restore`](super::restore) puts such a copy back.
//!
//! A backup directory is itself a data directory (`log.db`, `log.key`,
//! the large payloads' files under `payloads/`, plus `manifest.json`), so every `sealmq audit …` command reads it with
//! `--data BACKUP`. It holds the log's private key: it is made mode 0700,
//! its files 0600.
//!
//! Left out on purpose: `witness.db` and `witness.key`, this broker's state
//! as a witness of *other* logs. A witness promises never to cosign a
//! checkpoint inconsistent with one it cosigned before; putting its state
//! back from a copy would make it forget what it cosigned since, and break
//! that promise unseen. A witness that lost its state starts again under a
//! new key, which the logs it witnesses must add to their policies.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::Connection;

use super::backup_payloads::copy_payload_files;
use super::payload_files::PAYLOAD_DIR;
use super::reader::{LogReader, connect_options};
use super::verify::{Failure, Progress, verify};
use super::{DB_FILE, KEY_FILE, StoreError, keyfile, now_ms};
use crate::{LogKey, VerifierKey};

/// The manifest's file name in a backup directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// The manifest's `format`.
pub const BACKUP_FORMAT: &str = "sealmq-backup/v1";
/// The files every backup holds besides its manifest, each in the manifest;
/// with them, the payload files (`payloads/<n>/<index>`) of its database.
pub const BACKUP_FILES: [&str; 2] = [DB_FILE, KEY_FILE];

/// What a backup holds, written last: a directory without it is an
/// unfinished backup, and [`restore`](super::restore) refuses it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`BACKUP_FORMAT`].
    pub format: String,
    /// When the backup was finished, verified (Unix ms); the copy is the
    /// log as committed when it started.
    pub created_ms: u64,
    /// The log's origin.
    pub origin: String,
    /// The log's verifier key.
    pub vkey: String,
    /// Records in the copy, sealed or not.
    pub records: u64,
    /// The tree size of the copy's latest checkpoint (0: none sealed yet).
    pub tree_size: u64,
    /// That checkpoint, as signed.
    pub checkpoint: Option<String>,
    /// Each file of the backup: its SHA-256 (hex) and length.
    pub files: BTreeMap<String, FileDigest>,
}

/// One file's digest in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDigest {
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
    /// Its length in bytes.
    pub bytes: u64,
}

/// Why a backup or restore did not complete.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The store failed (opening, reading or copying the database).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Backups go to a new or empty directory only, so that nothing of an
    /// older backup is mistaken for part of this one.
    #[error("{0} is not empty; back up into a new or empty directory")]
    NotEmpty(PathBuf),
    /// The target already holds a log (restore without `force`).
    #[error("{0} already holds a log; pass --force to replace it (it is moved aside, not deleted)")]
    Exists(PathBuf),
    /// The target holds this same log with more records than the backup:
    /// restoring it would be a rollback (restore without `accept_rollback`).
    #[error(
        "{dir} holds this log with {have} records, the backup only {backup}: restoring it is a rollback \
         (see README, \"Backup and restore\"); pass --accept-rollback as well to do it anyway"
    )]
    Rollback {
        /// The data directory.
        dir: PathBuf,
        /// Records of the log there.
        have: u64,
        /// Records in the backup.
        backup: u64,
    },
    /// The manifest is missing, does not parse, or does not describe the copy.
    #[error("manifest: {0}")]
    Manifest(String),
    /// A file's bytes are not those the manifest names.
    #[error("{file}: SHA-256 {actual} is not the manifest's {expected}: the backup was altered or damaged")]
    HashMismatch {
        /// The file.
        file: String,
        /// From the manifest.
        expected: String,
        /// Computed now.
        actual: String,
    },
    /// The copy did not pass `audit verify`.
    #[error("the copy does not verify: {0}")]
    Verify(Failure),
}

impl From<sqlx::Error> for BackupError {
    fn from(e: sqlx::Error) -> Self {
        BackupError::Store(StoreError::Sql(e))
    }
}

pub(super) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> BackupError + '_ {
    move |source| BackupError::Io { path: path.to_path_buf(), source }
}

/// Copies the log in `data_dir` into `out_dir` (created mode 0700; it must
/// be missing or empty) while a broker may keep appending, verifies the
/// copy as `sealmq audit verify` would (against the source's verifier
/// key), and writes its manifest last. `progress` follows the verification.
pub async fn backup(data_dir: &Path, out_dir: &Path, progress: impl FnMut(Progress)) -> Result<Manifest, BackupError> {
    prepare_out_dir(out_dir)?;
    let taken = take(data_dir, out_dir, progress).await;
    // The directory was empty: what is in it now is this attempt's. A copy
    // that does not verify is kept for a look (it has no manifest, so it
    // cannot be restored); anything else half-written goes.
    if let Err(e) = &taken
        && !matches!(e, BackupError::Verify(_))
    {
        for name in [DB_FILE.to_string(), format!("{DB_FILE}-wal"), format!("{DB_FILE}-shm"), KEY_FILE.to_string()] {
            let _ = std::fs::remove_file(out_dir.join(name));
        }
        let _ = std::fs::remove_dir_all(out_dir.join(PAYLOAD_DIR));
    }
    taken
}

async fn take(data_dir: &Path, out_dir: &Path, progress: impl FnMut(Progress)) -> Result<Manifest, BackupError> {
    let source = LogReader::open(data_dir).await?;
    let vkey = source.verifier_key().clone();
    let copy = out_dir.join(DB_FILE);
    let copy_str = copy.to_str().ok_or_else(|| BackupError::Io {
        path: copy.clone(),
        source: std::io::Error::other("the backup path is not UTF-8, which SQLite needs"),
    })?;
    // `VACUUM INTO` rather than SQLite's backup API: it is one statement
    // and so one read transaction, a snapshot of exactly the committed
    // records (and the derived tables written with them) as of its start;
    // in WAL mode a reader never blocks the sequencer, so the broker keeps
    // acknowledging while it runs. The backup API would need FFI that sqlx
    // does not expose (and this workspace forbids `unsafe`), and copying
    // in steps it restarts whenever the writer commits in between, which
    // under steady load can be forever. The price: the WAL cannot be
    // checkpointed past the snapshot until the copy is done, so it grows by
    // what is appended meanwhile.
    tracing::info!(from = %data_dir.display(), to = %copy.display(), "copying the log");
    sqlx::query("VACUUM INTO ?").bind(copy_str).execute(source.pool()).await?;
    source.pool().close().await;
    // The copy comes out in rollback-journal mode; the store opens logs in
    // WAL mode, which a read-only connection cannot switch to. Switching
    // here, once, makes the copy readable by every `audit` command.
    let mut conn = sqlx::SqliteConnection::connect_with(&connect_options(&copy)).await?;
    let mode: String = sqlx::query_scalar("PRAGMA journal_mode").fetch_one(&mut conn).await?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Corrupt(format!("the copy is in journal mode {mode}, not WAL")).into());
    }
    conn.close().await?;
    set_private(&copy)?;
    // SQLite does not fsync what VACUUM INTO writes.
    sync_file(&copy)?;

    let seed = keyfile::load(&data_dir.join(KEY_FILE))?;
    write_private(&out_dir.join(KEY_FILE), format!("{}\n", hex::encode(seed)).as_bytes())?;

    let payload_files = copy_payload_files(data_dir, out_dir, &copy).await?;
    let (records, block) = check_copy(out_dir, &vkey, &seed, progress).await?;
    remove_reader_files(out_dir)?;
    let mut files = payload_files;
    for name in BACKUP_FILES {
        files.insert(name.to_string(), digest_file(&out_dir.join(name))?);
    }
    let manifest = Manifest {
        format: BACKUP_FORMAT.to_string(),
        created_ms: now_ms(),
        origin: vkey.name().to_string(),
        vkey: vkey.to_string(),
        records,
        tree_size: block.as_ref().map_or(0, |b| b.0),
        checkpoint: block.map(|b| b.1),
        files,
    };
    let text = serde_json::to_string_pretty(&manifest).map_err(|e| BackupError::Manifest(e.to_string()))?;
    write_private(&out_dir.join(MANIFEST_FILE), format!("{text}\n").as_bytes())?;
    sync_dir(out_dir)?;
    tracing::info!(records = manifest.records, tree_size = manifest.tree_size, "backup written and verified");
    Ok(manifest)
}

/// Opens the log copied into `dir` and checks it: its stored verifier key
/// is `vkey`, the key file beside it is that key's, and it passes
/// [`verify`] against `vkey`. Its record count, and the latest
/// checkpoint's tree size and note.
pub(super) async fn check_copy(
    dir: &Path,
    vkey: &VerifierKey,
    seed: &[u8; 32],
    progress: impl FnMut(Progress),
) -> Result<(u64, Option<(u64, String)>), BackupError> {
    let reader = LogReader::open(dir).await?;
    let outcome = async {
        if reader.verifier_key() != vkey {
            return Err(BackupError::Manifest(format!("the copy is the log {}, not {vkey}", reader.verifier_key())));
        }
        let key = LogKey::from_seed(vkey.name(), seed).map_err(StoreError::from)?;
        if &key.verifier() != vkey {
            return Err(StoreError::Key(format!("{KEY_FILE} is not the key of the log {vkey}")).into());
        }
        let report = verify(&reader, vkey, progress).await?;
        if let Some(failure) = report.failure {
            return Err(BackupError::Verify(failure));
        }
        let block = reader.latest_block().await?.map(|b| (b.header.tree_size, b.checkpoint));
        Ok((reader.record_count().await?, block))
    }
    .await;
    reader.pool().close().await;
    outcome
}

/// Creates `dir` mode 0700, or checks that an existing one is empty and
/// narrows it to 0700.
fn prepare_out_dir(dir: &Path) -> Result<(), BackupError> {
    match std::fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                return Err(BackupError::NotEmpty(dir.to_path_buf()));
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        }
        Err(e) => return Err(io_error(dir)(e)),
    }
    set_mode(dir, 0o700)
}

/// The files a read-only SQLite connection may leave beside a WAL-mode
/// database: empty, but not part of the copy. A WAL with frames in it is
/// kept (nothing should have written one; deleting it would lose them).
pub(super) fn remove_reader_files(dir: &Path) -> Result<(), BackupError> {
    let wal = dir.join(format!("{DB_FILE}-wal"));
    match std::fs::metadata(&wal) {
        Ok(meta) if meta.len() == 0 => std::fs::remove_file(&wal).map_err(io_error(&wal))?,
        Ok(_) => {
            return Err(BackupError::Io {
                path: wal,
                source: std::io::Error::other("a write-ahead log appeared beside the copy"),
            });
        }
        Err(_) => {}
    }
    let shm = dir.join(format!("{DB_FILE}-shm"));
    if shm.exists() {
        std::fs::remove_file(&shm).map_err(io_error(&shm))?;
    }
    Ok(())
}

/// SHA-256 and length of the file at `path`.
pub(super) fn digest_file(path: &Path) -> Result<FileDigest, BackupError> {
    let file = File::open(path).map_err(io_error(path))?;
    copy_hashing(file, std::io::sink(), path)
}

/// Copies `from` to `to` while hashing what passes; the digest.
pub(super) fn copy_hashing(mut from: impl Read, mut to: impl Write, path: &Path) -> Result<FileDigest, BackupError> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut bytes = 0u64;
    loop {
        let n = from.read(&mut buf).map_err(io_error(path))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n]).map_err(io_error(path))?;
        bytes += n as u64;
    }
    Ok(FileDigest { sha256: hex::encode(hasher.finalize()), bytes })
}

/// Copies `from` to a new file `to` (mode 0600, fsynced), hashing it as
/// copied rather than before: what is checked against `expected` is what
/// was copied, even if `from` changes meanwhile.
pub(super) fn copy_checked(from: &Path, to: &Path, expected: &FileDigest) -> Result<FileDigest, BackupError> {
    let source = File::open(from).map_err(io_error(from))?;
    let mut target = private_options().open(to).map_err(io_error(to))?;
    let actual = copy_hashing(source, &mut target, from)?;
    target.sync_all().map_err(io_error(to))?;
    if actual.sha256 != expected.sha256 || actual.bytes != expected.bytes {
        return Err(BackupError::HashMismatch {
            file: from.display().to_string(),
            expected: expected.sha256.clone(),
            actual: actual.sha256,
        });
    }
    Ok(actual)
}

/// Writes `bytes` to a new file at `path`, mode 0600, fsynced.
pub(super) fn write_private(path: &Path, bytes: &[u8]) -> Result<(), BackupError> {
    let mut file = private_options().open(path).map_err(io_error(path))?;
    file.write_all(bytes).and_then(|()| file.sync_all()).map_err(io_error(path))
}

/// Options for a new file readable by its owner only.
pub(super) fn private_options() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options
}

pub(super) fn set_private(path: &Path) -> Result<(), BackupError> {
    set_mode(path, 0o600)
}

fn set_mode(path: &Path, mode: u32) -> Result<(), BackupError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io_error(path))?;
    }
    #[cfg(not(unix))]
    let _ = (path, mode);
    Ok(())
}

pub(super) fn sync_file(path: &Path) -> Result<(), BackupError> {
    File::open(path).and_then(|f| f.sync_all()).map_err(io_error(path))
}

/// Makes the directory's entries (new, renamed files) durable.
pub(super) fn sync_dir(dir: &Path) -> Result<(), BackupError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}
