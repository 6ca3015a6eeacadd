//! The payload files of a backup (migration 0011): copied beside the
//! database copy, each named in the manifest with its digest, and put back
//! by a restore after the same check as the database and key.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::Path;

use sqlx::Connection;

use super::backup::{
    BackupError, FileDigest, Manifest, copy_checked, copy_hashing, io_error, private_options, sync_dir,
};
use super::payload_files::{PAYLOAD_DIR, PayloadFiles};
use super::reader::connect_options;
use super::to_u64;

/// Copies into `out_dir` the payload files named by the rows of the
/// database copy `copy`, and returns their manifest entries. A file erased
/// after the copy's snapshot was taken has its row removed from the copy
/// too: the backup then holds that payload as erased.
pub(super) async fn copy_payload_files(
    data_dir: &Path,
    out_dir: &Path,
    copy: &Path,
) -> Result<BTreeMap<String, FileDigest>, BackupError> {
    let mut conn = sqlx::SqliteConnection::connect_with(&connect_options(copy)).await?;
    let indices: Vec<i64> = sqlx::query_scalar("SELECT idx FROM payloads WHERE file_len IS NOT NULL ORDER BY idx")
        .fetch_all(&mut conn)
        .await?;
    let (from, to) = (PayloadFiles::new(data_dir), PayloadFiles::new(out_dir));
    let mut digests = BTreeMap::new();
    let mut gone = Vec::new();
    for idx in indices {
        let index = to_u64(idx)?;
        let source = from.path(index);
        let file = match File::open(&source) {
            Ok(file) => file,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                gone.push(idx);
                continue;
            }
            Err(e) => return Err(io_error(&source)(e)),
        };
        let target = to.path(index);
        let dir = target.parent().expect("a payload file is in a directory");
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        let mut copied = private_options().open(&target).map_err(io_error(&target))?;
        let digest = copy_hashing(file, &mut copied, &source)?;
        copied.sync_all().map_err(io_error(&target))?;
        digests.insert(manifest_name(index), digest);
    }
    if !gone.is_empty() {
        tracing::warn!(payloads = gone.len(), "payload files erased while the backup was taken are left out of it");
        let list = serde_json::to_string(&gone).expect("a list of integers serializes");
        sqlx::query("DELETE FROM payloads WHERE idx IN (SELECT value FROM json_each(?))")
            .bind(list)
            .execute(&mut conn)
            .await?;
    }
    conn.close().await?;
    sync_dirs(out_dir, &digests)?;
    Ok(digests)
}

/// Copies the payload files `manifest` names from `backup_dir` into
/// `staging`, each checked against its digest as it is copied. Only names
/// that are exactly a payload file's (`payloads/<n>/<index>`, checked by
/// `read_manifest`) are copied: the manifest cannot write elsewhere.
pub(super) fn stage_payload_files(backup_dir: &Path, staging: &Path, manifest: &Manifest) -> Result<(), BackupError> {
    let files = PayloadFiles::new(staging);
    let mut staged = BTreeMap::new();
    for (name, expected) in manifest.files.iter().filter(|(name, _)| name.starts_with(PAYLOAD_DIR)) {
        // `read_manifest` refused any other name.
        let Some(index) = payload_index(name) else { continue };
        let (from, to) = (backup_dir.join(name), files.path(index));
        let dir = to.parent().expect("a payload file is in a directory");
        std::fs::create_dir_all(dir).map_err(io_error(dir))?;
        staged.insert(name.clone(), copy_checked(&from, &to, expected)?);
    }
    sync_dirs(staging, &staged)
}

/// The manifest's name of record `index`'s payload file: its path in the
/// data directory, with `/` between the parts on every platform.
fn manifest_name(index: u64) -> String {
    let path = PayloadFiles::new(Path::new("")).path(index);
    path.iter().map(|part| part.to_string_lossy()).collect::<Vec<_>>().join("/")
}

/// The record index of a manifest name, if it is exactly a payload file's.
pub(super) fn payload_index(name: &str) -> Option<u64> {
    let index = name.rsplit('/').next()?.parse::<u64>().ok()?;
    (manifest_name(index) == name).then_some(index)
}

/// Makes the payload directories' entries durable.
fn sync_dirs(root: &Path, files: &BTreeMap<String, FileDigest>) -> Result<(), BackupError> {
    if files.is_empty() {
        return Ok(());
    }
    let dirs: std::collections::BTreeSet<&str> =
        files.keys().filter_map(|name| name.rsplit_once('/').map(|(dir, _)| dir)).collect();
    for dir in dirs {
        sync_dir(&root.join(dir))?;
    }
    sync_dir(&root.join(PAYLOAD_DIR))?;
    sync_dir(root)
}
