//! `sealmq archive --below SIZE DIR`: write, check, and only then prune.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sqlx::{Connection, SqliteConnection};

use super::layout::{push_payload, sidecar_path, split_payloads};
use super::{ArchiveCheck, ArchiveDir, ArchiveError, archived_size, check_archive, prune};
use crate::HEADER_LEN;
use crate::store::reader::connect_options;
use crate::store::{DB_FILE, LogReader, StoreError, to_i64, to_u64};
use crate::tiles::{TILE_HEIGHT, TILE_WIDTH, push_entry, split_bundle, split_hashes, tile_levels, tile_path};

/// A record as read for the archive: index, bytes, leaf hash, payload.
type StoredRow = (i64, Vec<u8>, Vec<u8>, Option<Vec<u8>>, Option<i64>);
/// The same without its index (the rows are checked contiguous).
type Row = (Vec<u8>, Vec<u8>, Option<Vec<u8>>);

/// Files written (each fsynced, on several threads) at a time.
const WRITE_BATCH: usize = 96;

/// Tiles read from the database per query while writing.
const READ_TILES: u64 = 16;

/// What one archive run did (the counts are what a metrics counter wants).
#[derive(Debug, Clone, Default)]
pub struct ArchiveOutcome {
    /// The archived size before this run.
    pub previous: u64,
    /// The archived size now (a checkpoint's tree size).
    pub tree_size: u64,
    /// Records rows removed from the database.
    pub records: u64,
    /// Bytes removed from the database: record bodies and payloads.
    pub bytes: u64,
    /// Files written to the archive.
    pub files: u64,
    /// Bytes written to the archive.
    pub bytes_written: u64,
    /// Time spent writing.
    pub write_time: Duration,
    /// The check of the written archive.
    pub check: ArchiveCheck,
    /// Time spent checking.
    pub check_time: Duration,
}

/// Archives the log in `data_dir` below the largest checkpoint size at most
/// `below` into `dir` (creating or extending it), checks what was written
/// by reading it back, and only then removes the archived rows from the
/// database in one transaction. Safe while a broker serves the log: the
/// archived records are sealed and never change, and the removal is a
/// transaction of its own that the sequencer waits for like any writer.
pub async fn archive(data_dir: &Path, below: u64, dir: &ArchiveDir) -> Result<ArchiveOutcome, ArchiveError> {
    let reader = LogReader::open(data_dir).await?;
    let options = connect_options(&data_dir.join(DB_FILE)).busy_timeout(Duration::from_secs(60));
    let mut conn = SqliteConnection::connect_with(&options).await?;
    crate::store::migrate(&mut conn).await?;
    let previous = archived_size(&mut conn).await?;
    let target: Option<(i64, i64, String)> = sqlx::query_as(
        "SELECT tree_size, height, checkpoint FROM blocks WHERE tree_size <= ? ORDER BY tree_size DESC LIMIT 1",
    )
    .bind(i64::try_from(below).unwrap_or(i64::MAX))
    .fetch_optional(&mut conn)
    .await?;
    let Some((size, height, note)) = target else {
        return Err(ArchiveError::Refused(format!("no checkpoint has a tree size of at most {below}")));
    };
    let (size, height) = (to_u64(size)?, to_u64(height)?);
    let mut outcome = ArchiveOutcome { previous, tree_size: previous, ..ArchiveOutcome::default() };
    if size <= previous {
        tracing::info!(previous, below, "nothing to archive: the log is archived up to a larger size already");
        return Ok(outcome);
    }
    existing_archive(&reader, dir, previous)?;

    let started = Instant::now();
    let mut writer = Writer { reader: &reader, dir, dirs: BTreeSet::new(), files: 0, bytes: 0, pending: Vec::new() };
    writer.entries(previous, size).await?;
    writer.hash_tiles(previous, size).await?;
    let previous_height = match previous {
        0 => None,
        _ => reader.block_with_size(previous).await?.map(|b| b.header.height),
    };
    writer.blocks(previous_height.map_or(0, |h| h + 1), height).await?;
    writer.flush()?;
    // Last: a reader who finds this checkpoint finds every tile it names.
    writer.dir.write("checkpoint", note.as_bytes(), &mut writer.dirs)?;
    writer.files += 1;
    dir.sync_dirs(&writer.dirs)?;
    outcome.files = writer.files;
    outcome.bytes_written = writer.bytes;
    outcome.write_time = started.elapsed();
    tracing::info!(previous, size, files = writer.files, bytes = writer.bytes, "archive written; checking it");

    let started = Instant::now();
    let check = check_archive(&reader, dir, reader.verifier_key(), |_| {}).await?;
    outcome.check_time = started.elapsed();
    if let Some(failure) = check.failure.clone() {
        return Err(ArchiveError::CheckFailed(failure));
    }
    if check.tree_size != size {
        return Err(ArchiveError::Refused(format!("the archive checked is of size {}, not {size}", check.tree_size)));
    }
    outcome.check = check;
    let (records, bytes, files) = prune::prune(&mut conn, previous, size, &note).await?;
    conn.close().await?;
    // After the commit: a crash before these unlinks leaves files no row
    // names, which the broker's next open removes.
    let payload_files = reader.files().clone();
    let _ = tokio::task::spawn_blocking(move || payload_files.remove(files)).await;
    outcome.records = records;
    outcome.bytes = bytes;
    outcome.tree_size = size;
    tracing::info!(previous, size, records, bytes, "archived records removed from the log");
    Ok(outcome)
}

/// A log archived before must be extended in the directory that holds its
/// archive: the records below `previous` are only there now.
fn existing_archive(reader: &LogReader, dir: &ArchiveDir, previous: u64) -> Result<(), ArchiveError> {
    match dir.checkpoint()? {
        None if previous > 0 => Err(ArchiveError::Refused(format!(
            "{} holds no archive, but this log is archived up to {previous}: give the directory of that archive",
            dir.root().display()
        ))),
        None => Ok(()),
        Some(note) => {
            let checkpoint = reader.verifier_key().open(&note).map_err(|e| {
                ArchiveError::Refused(format!("{} holds an archive of another log ({e})", dir.root().display()))
            })?;
            if checkpoint.size < previous {
                return Err(ArchiveError::Refused(format!(
                    "{} holds an archive of size {}, but this log is archived up to {previous}",
                    dir.root().display(),
                    checkpoint.size
                )));
            }
            Ok(())
        }
    }
}

struct Writer<'a> {
    reader: &'a LogReader,
    dir: &'a ArchiveDir,
    dirs: BTreeSet<PathBuf>,
    files: u64,
    bytes: u64,
    /// Files not written yet: written (and fsynced) a batch at a time.
    pending: Vec<(String, Vec<u8>)>,
}

impl Writer<'_> {
    fn put(&mut self, rel: &str, bytes: &[u8]) -> Result<(), ArchiveError> {
        self.pending.push((rel.to_string(), bytes.to_vec()));
        self.files += 1;
        self.bytes += bytes.len() as u64;
        if self.pending.len() >= WRITE_BATCH {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), ArchiveError> {
        let files = std::mem::take(&mut self.pending);
        self.dir.write_many(&files, &mut self.dirs)
    }

    /// Entry bundles, level-0 tiles and payload files for `[previous, size)`.
    /// The tile the previous archive ended in is rewritten whole: its
    /// first part from that archive's partial files (the log no longer
    /// has those records), the rest from the log.
    async fn entries(&mut self, previous: u64, size: u64) -> Result<(), ArchiveError> {
        let first = previous / TILE_WIDTH;
        let end = size.div_ceil(TILE_WIDTH);
        let mut tile = first;
        while tile < end {
            let upto = (tile + READ_TILES).min(end);
            let from = (tile * TILE_WIDTH).max(previous);
            let rows = self.rows(from, (upto * TILE_WIDTH).min(size)).await?;
            let mut rows = rows.into_iter().peekable();
            for n in tile..upto {
                let start = n * TILE_WIDTH;
                let stop = (start + TILE_WIDTH).min(size);
                let width = stop - start;
                let (mut bundle, mut leaves, mut payloads) = (Vec::new(), Vec::new(), Vec::new());
                if start < previous {
                    self.carry_over(n, previous - start, &mut bundle, &mut leaves, &mut payloads)?;
                }
                for index in start.max(previous)..stop {
                    let (body, leaf, payload) = rows.next().expect("rows checked contiguous");
                    push_entry(&mut bundle, index, &body)
                        .map_err(|source| ArchiveError::Tile { path: tile_path(None, n, width), source })?;
                    leaves.extend_from_slice(&leaf);
                    push_payload(&mut payloads, payload.as_deref());
                }
                self.put(&tile_path(None, n, width), &bundle)?;
                self.put(&tile_path(Some(0), n, width), &leaves)?;
                self.put(&sidecar_path("payloads", n, width), &payloads)?;
            }
            tile = upto;
        }
        Ok(())
    }

    /// Records `[from, to)` with leaf and payload; all must be there.
    async fn rows(&self, from: u64, to: u64) -> Result<Vec<Row>, ArchiveError> {
        let rows: Vec<StoredRow> = sqlx::query_as(
            "SELECT r.idx, r.body, r.leaf, p.data, p.file_len FROM records r LEFT JOIN payloads p ON p.idx = r.idx \
             WHERE r.idx >= ? AND r.idx < ? ORDER BY r.idx",
        )
        .bind(to_i64(from))
        .bind(to_i64(to))
        .fetch_all(self.reader.pool())
        .await?;
        for (expected, (idx, ..)) in (from..).zip(&rows) {
            if to_u64(*idx)? != expected {
                return Err(StoreError::Corrupt(format!("record {expected} is missing")).into());
            }
        }
        if rows.len() as u64 != to - from {
            return Err(StoreError::Corrupt(format!("records {from}..{to} are not all stored")).into());
        }
        let mut read = Vec::with_capacity(rows.len());
        for (idx, body, leaf, data, file_len) in rows {
            read.push((body, leaf, self.reader.files().resolve(idx, data, file_len).await?));
        }
        Ok(read)
    }

    /// The first `width` entries of tile `n`, from the previous archive's partial files.
    fn carry_over(
        &self,
        n: u64,
        width: u64,
        bundle: &mut Vec<u8>,
        leaves: &mut Vec<u8>,
        payloads: &mut Vec<u8>,
    ) -> Result<(), ArchiveError> {
        let bundle_path = tile_path(None, n, width);
        let old = self.dir.read_required(&bundle_path)?;
        split_bundle(&old, width).map_err(|source| ArchiveError::Tile { path: bundle_path, source })?;
        bundle.extend_from_slice(&old);
        let leaves_path = tile_path(Some(0), n, width);
        let old = self.dir.read_required(&leaves_path)?;
        split_hashes(&old, width).map_err(|source| ArchiveError::Tile { path: leaves_path, source })?;
        leaves.extend_from_slice(&old);
        let payloads_path = sidecar_path("payloads", n, width);
        let old = self.dir.read_required(&payloads_path)?;
        split_payloads(&old, width).map_err(|what| ArchiveError::Refused(format!("{payloads_path}: {what}")))?;
        payloads.extend_from_slice(&old);
        Ok(())
    }

    /// Hash tiles of levels 1 and up, from the log's stored tree hashes
    /// (never removed): those not complete in the previous archive.
    async fn hash_tiles(&mut self, previous: u64, size: u64) -> Result<(), ArchiveError> {
        for level in tile_levels(size).skip(1) {
            let shift = u32::from(level) * u32::from(TILE_HEIGHT);
            let (count, before) = (size >> shift, previous >> shift);
            for n in (before / TILE_WIDTH)..count.div_ceil(TILE_WIDTH) {
                let start = n * TILE_WIDTH;
                let stop = (start + TILE_WIDTH).min(count);
                let tree_level = u8::try_from(shift).expect("below 64");
                let hashes = self.reader.hashes_at(tree_level, start, stop).await?;
                self.put(&tile_path(Some(level), n, stop - start), &hashes.concat())?;
            }
        }
        Ok(())
    }

    /// Block headers of heights `[from_height, last]`, in files of 256 by height.
    async fn blocks(&mut self, from_height: u64, last: u64) -> Result<(), ArchiveError> {
        let count = last + 1;
        for n in (from_height / TILE_WIDTH)..count.div_ceil(TILE_WIDTH) {
            let start = n * TILE_WIDTH;
            let stop = (start + TILE_WIDTH).min(count);
            let headers: Vec<(Vec<u8>,)> =
                sqlx::query_as("SELECT header FROM blocks WHERE height >= ? AND height < ? ORDER BY height")
                    .bind(to_i64(start))
                    .bind(to_i64(stop))
                    .fetch_all(self.reader.pool())
                    .await?;
            if headers.len() as u64 != stop - start || headers.iter().any(|(h,)| h.len() != HEADER_LEN) {
                return Err(StoreError::Corrupt(format!("block headers {start}..{stop} are not all stored")).into());
            }
            let bytes: Vec<u8> = headers.into_iter().flat_map(|(h,)| h).collect();
            self.put(&sidecar_path("blocks", n, stop - start), &bytes)?;
        }
        Ok(())
    }
}
