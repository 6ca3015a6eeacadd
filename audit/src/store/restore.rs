//! Putting a [`backup`](super::backup()) back as a data directory's log.
//!
//! The restored log is whatever the backup holds: records logged after it
//! was taken are not in it. For an append-only log that is a rollback, and
//! this module cannot make it anything else; it makes sure the copy is the
//! one the manifest describes and verifies, that no broker has the data
//! directory open, and that a log it replaces is moved aside, not deleted.

use std::path::{Path, PathBuf};

use super::backup::{
    BACKUP_FILES, BACKUP_FORMAT, BackupError, MANIFEST_FILE, Manifest, check_copy, copy_checked, io_error,
    remove_reader_files, sync_dir,
};
use super::backup_payloads::{payload_index, stage_payload_files};
use super::payload_files::PAYLOAD_DIR;
use super::reader::LogReader;
use super::verify::Progress;
use super::writer::lock_data_dir;
use super::{DB_FILE, KEY_FILE, keyfile, now_ms};
use crate::VerifierKey;

/// Where the restore's files are put together and verified before they
/// are moved into place, inside the data directory (so the move is a
/// rename on one file system).
const STAGING_DIR: &str = ".restore-staging";

/// What [`restore`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Restored {
    /// The backup's manifest, checked.
    pub manifest: Manifest,
    /// The log it replaced, if the data directory held one.
    pub replaced: Option<Replaced>,
}

/// What a restore may replace.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replace {
    /// Replace a log the data directory already holds (moved aside).
    pub force: bool,
    /// Even when it is the same log with more records than the backup:
    /// a rollback, which only the operator can decide to accept.
    pub accept_rollback: bool,
}

/// A log that a restore moved aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replaced {
    /// Where its files are now.
    pub moved_to: PathBuf,
    /// Its verifier key, if it could still be read.
    pub vkey: Option<String>,
    /// Its record count, if it could still be read.
    pub records: Option<u64>,
}

/// Reads and checks the manifest of the backup in `dir` (not yet the files).
pub fn read_manifest(dir: &Path) -> Result<Manifest, BackupError> {
    let path = dir.join(MANIFEST_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        BackupError::Manifest(format!(
            "{}: {e} (a backup directory without one is incomplete or not a backup)",
            path.display()
        ))
    })?;
    let manifest: Manifest =
        serde_json::from_str(&text).map_err(|e| BackupError::Manifest(format!("{}: {e}", path.display())))?;
    if manifest.format != BACKUP_FORMAT {
        return Err(BackupError::Manifest(format!("format {:?} is not {BACKUP_FORMAT:?}", manifest.format)));
    }
    for name in manifest.files.keys() {
        if !BACKUP_FILES.contains(&name.as_str()) && payload_index(name).is_none() {
            return Err(BackupError::Manifest(format!("names a file {name:?} that no backup holds")));
        }
    }
    for name in BACKUP_FILES {
        if !manifest.files.contains_key(name) {
            return Err(BackupError::Manifest(format!("does not name {name}")));
        }
    }
    Ok(manifest)
}

/// Restores the backup in `backup_dir` as the log of `data_dir`.
///
/// Refuses while a broker (or anything holding `log.lock`) has the data
/// directory open, and when it already holds a log unless `replace.force`
/// (and, if that is the same log with more records than the backup, unless
/// `replace.accept_rollback`); a replaced log's files are moved to
/// `data_dir/replaced-<unix ms>/`. Each
/// file is checked against the manifest's SHA-256 as it is copied, and the
/// copy is verified as `sealmq audit verify` would, against the manifest's
/// verifier key, before anything in `data_dir` changes. `witness.db` and
/// `witness.key` in `data_dir` are left as they are.
pub async fn restore(
    backup_dir: &Path,
    data_dir: &Path,
    replace: Replace,
    progress: impl FnMut(Progress),
) -> Result<Restored, BackupError> {
    let manifest = read_manifest(backup_dir)?;
    let vkey: VerifierKey = manifest.vkey.parse().map_err(|e| BackupError::Manifest(format!("vkey: {e}")))?;
    if !data_dir.exists() {
        std::fs::create_dir_all(data_dir).map_err(io_error(data_dir))?;
        set_dir_private(data_dir)?;
    }
    if same_dir(backup_dir, data_dir) {
        return Err(BackupError::Manifest("the backup and the data directory are the same directory".into()));
    }
    // Held until the new files are in place: no broker may open the log
    // half restored, and none may be serving the log being replaced.
    let _lock = lock_data_dir(data_dir)?;
    // Payload files without a database are still a log's (one whose
    // database was lost): not overwritten, not merged, moved aside.
    let existing = if [DB_FILE, KEY_FILE, PAYLOAD_DIR].iter().any(|name| data_dir.join(name).exists()) {
        if !replace.force {
            return Err(BackupError::Exists(data_dir.to_path_buf()));
        }
        let (vkey, records) = describe(data_dir).await;
        if let Some(have) = records.filter(|&have| have > manifest.records)
            && vkey.as_deref() == Some(manifest.vkey.as_str())
            && !replace.accept_rollback
        {
            return Err(BackupError::Rollback { dir: data_dir.to_path_buf(), have, backup: manifest.records });
        }
        Some((vkey, records))
    } else {
        None
    };

    let staging = data_dir.join(STAGING_DIR);
    if staging.exists() {
        // Left by an interrupted restore (we hold the lock: no other runs).
        std::fs::remove_dir_all(&staging).map_err(io_error(&staging))?;
    }
    std::fs::create_dir(&staging).map_err(io_error(&staging))?;
    set_dir_private(&staging)?;
    let staged = stage(backup_dir, &staging, &manifest, &vkey, progress).await;
    if let Err(e) = staged {
        let _ = std::fs::remove_dir_all(&staging);
        return Err(e);
    }

    let replaced = match existing {
        Some((vkey, records)) => Some(move_aside(data_dir, vkey, records)?),
        None => None,
    };
    // The payload files, then the database: a log.key without its log.db
    // is no log at all, and the broker would make a new one under it.
    for name in [PAYLOAD_DIR, DB_FILE, KEY_FILE] {
        if name == PAYLOAD_DIR && !staging.join(name).exists() {
            continue;
        }
        let (from, to) = (staging.join(name), data_dir.join(name));
        std::fs::rename(&from, &to).map_err(io_error(&to))?;
    }
    std::fs::remove_dir_all(&staging).map_err(io_error(&staging))?;
    sync_dir(data_dir)?;
    tracing::info!(
        records = manifest.records,
        tree_size = manifest.tree_size,
        to = %data_dir.display(),
        "log restored"
    );
    Ok(Restored { manifest, replaced })
}

/// Copies the backup's files into `staging`, each checked against the
/// manifest as it is copied, and verifies the copy there.
async fn stage(
    backup_dir: &Path,
    staging: &Path,
    manifest: &Manifest,
    vkey: &VerifierKey,
    progress: impl FnMut(Progress),
) -> Result<(), BackupError> {
    for name in BACKUP_FILES {
        let (from, to) = (backup_dir.join(name), staging.join(name));
        copy_checked(&from, &to, &manifest.files[name])?;
    }
    stage_payload_files(backup_dir, staging, manifest)?;
    let seed = keyfile::load(&staging.join(KEY_FILE))?;
    let (records, block) = check_copy(staging, vkey, &seed, progress).await?;
    remove_reader_files(staging)?;
    let tree_size = block.as_ref().map_or(0, |b| b.0);
    if records != manifest.records || tree_size != manifest.tree_size || block.map(|b| b.1) != manifest.checkpoint {
        return Err(BackupError::Manifest(format!(
            "describes {} records and tree size {}, the copy holds {records} records and tree size {tree_size}",
            manifest.records, manifest.tree_size
        )));
    }
    Ok(())
}

/// The verifier key and record count of the log in `data_dir`, as far as
/// it can still be read (it may be the damaged log a restore replaces).
async fn describe(data_dir: &Path) -> (Option<String>, Option<u64>) {
    match LogReader::open(data_dir).await {
        Ok(reader) => {
            let records = reader.record_count().await.ok();
            let vkey = reader.verifier_key().to_string();
            reader.pool().close().await;
            (Some(vkey), records)
        }
        Err(_) => (None, None),
    }
}

/// Moves the data directory's log files (the database with its WAL and
/// shared memory, the key and the payload files) to `replaced-<unix ms>/`.
fn move_aside(data_dir: &Path, vkey: Option<String>, records: Option<u64>) -> Result<Replaced, BackupError> {
    let moved_to = data_dir.join(format!("replaced-{}", now_ms()));
    std::fs::create_dir(&moved_to).map_err(io_error(&moved_to))?;
    set_dir_private(&moved_to)?;
    // The WAL before the database: a database left without its WAL by a
    // crash here is the old log short of its last commits, while the new
    // database beside an old WAL would have those pages written into it.
    let names = [format!("{DB_FILE}-wal"), format!("{DB_FILE}-shm"), DB_FILE.to_string(), KEY_FILE.to_string()];
    // The payload files too (no broker can open the directory meanwhile:
    // the restore holds its lock).
    for name in names.into_iter().chain([PAYLOAD_DIR.to_string()]) {
        let from = data_dir.join(&name);
        match std::fs::rename(&from, moved_to.join(&name)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&from)(e)),
        }
    }
    sync_dir(data_dir)?;
    tracing::info!(to = %moved_to.display(), ?vkey, ?records, "moved the data directory's log aside");
    Ok(Replaced { moved_to, vkey, records })
}

fn same_dir(a: &Path, b: &Path) -> bool {
    match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    }
}

fn set_dir_private(dir: &Path) -> Result<(), BackupError> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io_error(dir))?;
    }
    Ok(())
}
