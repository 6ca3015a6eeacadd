//! Large payloads as files beside the database (migration 0011).
//!
//! In SQLite a 1 MiB payload was written three times, to the WAL, by the
//! checkpoint into the database and by sqlx's copy of the bound blob: 60 %
//! of the broker's CPU for 1 MiB publishes. A payload of [`FILE_MIN`] bytes
//! or more is instead written once to its own file, fsynced before the
//! transaction that logs its record commits; its `payloads` row keeps an
//! empty `data` and the file's length in `file_len`. The row remains the
//! payload's only claim to be in the log: a file without one is left over
//! (an erasure that stopped between its commit and the unlink, a group
//! that never committed) and [`PayloadFiles::sweep`] removes it once the
//! log's head has passed its index.

use std::collections::{BTreeSet, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use sqlx::SqliteConnection;

use super::{StoreError, io_error, to_u64};

/// Payloads of at least this many bytes are stored as files. SQLite's own
/// measurements put blobs above about 100 KB faster in files, and in WAL
/// mode every blob is written twice; 64 KiB keeps MQTT's small messages,
/// the great majority, in the database and in its backups as they were.
pub const FILE_MIN: usize = 64 * 1024;
/// The payload files' directory, in the data directory.
pub const PAYLOAD_DIR: &str = "payloads";
/// Files per subdirectory, so that no directory grows without bound.
const PER_DIR: u64 = 4096;

/// A record read with its `payloads` row: index, body, `data`, `file_len`
/// (see [`PayloadFiles::resolve`]).
pub(crate) type RecordRow = (i64, Vec<u8>, Option<Vec<u8>>, Option<i64>);

/// The payload files of one data directory.
#[derive(Debug, Clone)]
pub(crate) struct PayloadFiles {
    root: PathBuf,
}

impl PayloadFiles {
    pub(crate) fn new(data_dir: &Path) -> Self {
        Self { root: data_dir.join(PAYLOAD_DIR) }
    }

    /// `payloads/<index / 4096>/<index>`.
    pub(crate) fn path(&self, index: u64) -> PathBuf {
        self.root.join((index / PER_DIR).to_string()).join(index.to_string())
    }

    /// Writes each payload to its file, then makes the files and their
    /// directory entries durable. Blocking: call it off the async workers.
    /// A file left by a group that failed before committing is overwritten.
    pub(crate) fn write(&self, payloads: &[(i64, Bytes)]) -> Result<(), StoreError> {
        let mut dirs = BTreeSet::new();
        let mut files = Vec::with_capacity(payloads.len());
        let mut scratch = Vec::new();
        for (idx, data) in payloads {
            let path = self.path(to_u64(*idx)?);
            let dir = path.parent().expect("a payload file is in a directory").to_path_buf();
            if !dirs.contains(&dir) && !dir.exists() {
                std::fs::create_dir_all(&dir).map_err(io_error(&dir))?;
                sync_dir(&self.root)?;
                sync_dir(self.root.parent().unwrap_or(&self.root))?;
            }
            let file = write_file(&path, data, &mut scratch).map_err(io_error(&path))?;
            files.push((file, path));
            dirs.insert(dir);
        }
        // Written first, synced after: the kernel writes all of them back
        // while the first sync waits.
        for (file, path) in &files {
            file.sync_data().map_err(io_error(path))?;
        }
        for dir in &dirs {
            sync_dir(dir)?;
        }
        Ok(())
    }

    /// The bytes of the payload file of record `index`, checked against the
    /// length its row records.
    pub(crate) async fn read(&self, index: u64, len: i64) -> Result<Vec<u8>, StoreError> {
        let path = self.path(index);
        let data = tokio::fs::read(&path).await.map_err(io_error(&path))?;
        if i64::try_from(data.len()) != Ok(len) {
            return Err(StoreError::Corrupt(format!(
                "{}: {} bytes, but the log stored {len}",
                path.display(),
                data.len()
            )));
        }
        Ok(data)
    }

    /// The payload a `payloads` row (`data`, `file_len`) stands for: its
    /// bytes in the row, or in its file. `None` when there is no row.
    pub(crate) async fn resolve(
        &self,
        idx: i64,
        data: Option<Vec<u8>>,
        file_len: Option<i64>,
    ) -> Result<Option<Vec<u8>>, StoreError> {
        match file_len {
            Some(len) => self.read(to_u64(idx)?, len).await.map(Some),
            None => Ok(data),
        }
    }

    /// Removes the files of records `indices`, whose rows are gone
    /// (erased, archived). A file already missing is no error; one that
    /// cannot be removed is logged and left to the next [`Self::sweep`].
    pub(crate) fn remove(&self, indices: impl IntoIterator<Item = u64>) {
        for index in indices {
            let path = self.path(index);
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => tracing::warn!(path = %path.display(), "cannot remove an erased payload file: {e}"),
            }
        }
    }

    /// Removes the payload files below the log's head that no `payloads`
    /// row names, and returns how many: what an erasure or an archive run
    /// left when it stopped between its commit and its unlinks, or a group
    /// that never committed left at indices the log has used since. Run
    /// when the log is opened for writing, before anything is appended; it
    /// reads only the rows of the files found.
    ///
    /// A file at or past the head is kept: one a group that never
    /// committed left is overwritten by the next payload file at its index,
    /// and one that a longer copy of this log names (a database rolled back
    /// by hand) is not this process's to delete.
    ///
    /// `head` is the log's next index as the sequencer resumed it (not the
    /// highest record in the table: archiving may have left none there).
    pub(crate) async fn sweep(&self, conn: &mut SqliteConnection, head: u64) -> Result<usize, StoreError> {
        let this = self.clone();
        let found = tokio::task::spawn_blocking(move || this.list())
            .await
            .map_err(|e| StoreError::Io { path: self.root.clone(), source: std::io::Error::other(e) })??;
        let found: Vec<(Option<u64>, PathBuf)> =
            found.into_iter().filter(|(index, _)| index.is_none_or(|index| index < head)).collect();
        let mut stored = HashSet::new();
        let indices: Vec<u64> = found.iter().filter_map(|(index, _)| *index).collect();
        for chunk in indices.chunks(256) {
            let list = serde_json::to_string(chunk).expect("a list of integers serializes");
            let rows: Vec<i64> = sqlx::query_scalar(
                "SELECT idx FROM payloads WHERE idx IN (SELECT value FROM json_each(?)) AND file_len IS NOT NULL",
            )
            .bind(list)
            .fetch_all(&mut *conn)
            .await?;
            stored.extend(rows.into_iter().filter_map(|idx| u64::try_from(idx).ok()));
        }
        let doomed: Vec<PathBuf> = found
            .into_iter()
            .filter(|(index, path)| !index.is_some_and(|index| stored.contains(&index) && self.path(index) == *path))
            .map(|(_, path)| path)
            .collect();
        let count = doomed.len();
        for path in &doomed {
            tracing::info!(path = %path.display(), "removing a payload file no record's row names (left by a crash)");
        }
        tokio::task::spawn_blocking(move || {
            doomed.iter().try_for_each(|path| std::fs::remove_file(path).map_err(io_error(path)))
        })
        .await
        .map_err(|e| StoreError::Io { path: self.root.clone(), source: std::io::Error::other(e) })??;
        Ok(count)
    }

    /// Every file under `payloads/`, with the index its name gives.
    fn list(&self) -> Result<Vec<(Option<u64>, PathBuf)>, StoreError> {
        let mut found = Vec::new();
        let Ok(dirs) = std::fs::read_dir(&self.root) else { return Ok(found) };
        for dir in dirs {
            let dir = dir.map_err(io_error(&self.root))?.path();
            if !dir.is_dir() {
                continue;
            }
            for file in std::fs::read_dir(&dir).map_err(io_error(&dir))? {
                let path = file.map_err(io_error(&dir))?.path();
                let index = path.file_name().and_then(|name| name.to_str()).and_then(|name| name.parse::<u64>().ok());
                found.push((index, path));
            }
        }
        Ok(found)
    }
}

/// The alignment `O_DIRECT` asks of buffers, lengths and offsets: the
/// logical block size of any disk in use is at most this.
const DIRECT_ALIGN: usize = 4096;

/// Creates (or truncates) the file at `path` and writes `data` into it,
/// without the page cache where the file system allows (`O_DIRECT`).
///
/// Why not a plain write: filling fresh page-cache pages was most of a
/// 1 MiB publish's cost on the 2-core VMs the benchmarks run on (4.2–4.6
/// ms of broker CPU per message, against 1.5–2.2 ms with `O_DIRECT`, where
/// the disk takes the bytes by DMA from the process's own buffer).
/// `O_DIRECT` wants an aligned buffer and length: `data` is copied into
/// `scratch` at an aligned offset (safe code cannot allocate an aligned
/// buffer), padded with zeros to a whole block, written, and the file cut
/// back to its length. Where the file system refuses `O_DIRECT` (tmpfs, some network
/// and overlay file systems), or a direct write fails, the file is
/// written again through the page cache.
fn write_file(path: &Path, data: &[u8], scratch: &mut Vec<u8>) -> std::io::Result<File> {
    #[cfg(target_os = "linux")]
    if let Ok(file) = write_direct(path, data, scratch) {
        return Ok(file);
    }
    let _ = scratch;
    write_buffered(path, data)
}

fn write_buffered(path: &Path, data: &[u8]) -> std::io::Result<File> {
    let mut file = File::create(path)?;
    file.write_all(data)?;
    Ok(file)
}

#[cfg(target_os = "linux")]
fn write_direct(path: &Path, data: &[u8], scratch: &mut Vec<u8>) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = File::options().write(true).create(true).truncate(true).custom_flags(libc::O_DIRECT).open(path)?;
    let padded = data.len().next_multiple_of(DIRECT_ALIGN);
    if scratch.len() < padded + DIRECT_ALIGN {
        scratch.resize(padded + DIRECT_ALIGN, 0);
    }
    let start = scratch.as_ptr().align_offset(DIRECT_ALIGN);
    let block = &mut scratch[start..start + padded];
    block[..data.len()].copy_from_slice(data);
    block[data.len()..].fill(0);
    file.write_all(block)?;
    file.set_len(data.len() as u64)?;
    Ok(file)
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_error(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Lengths around the 4 KiB blocks `O_DIRECT` writes in.
    const LENGTHS: [usize; 6] = [1, 4095, 4096, 4097, FILE_MIN, FILE_MIN + 4099];

    fn bytes(len: usize) -> Vec<u8> {
        (0..len).map(|i| (i % 251) as u8 + 1).collect()
    }

    #[test]
    fn a_payload_file_holds_exactly_the_payload_whichever_way_it_was_written() {
        let dir = tempfile::tempdir().unwrap();
        let mut scratch = Vec::new();
        for len in LENGTHS {
            let data = bytes(len);
            let (through, direct) = (dir.path().join(format!("b{len}")), dir.path().join(format!("d{len}")));
            write_file(&direct, &data, &mut scratch).unwrap().sync_data().unwrap();
            write_buffered(&through, &data).unwrap().sync_data().unwrap();
            assert_eq!(std::fs::read(&direct).unwrap(), data, "{len} bytes, O_DIRECT where allowed");
            assert_eq!(std::fs::read(&through).unwrap(), data, "{len} bytes, through the page cache");
        }
        // A shorter payload over a longer leftover: the leftover's tail goes.
        let path = dir.path().join("again");
        write_file(&path, &bytes(FILE_MIN + 4099), &mut scratch).unwrap();
        write_file(&path, &bytes(4097), &mut scratch).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), bytes(4097));
    }
}
