//! An archive re-read from disk and checked: every entry hashes to its
//! level-0 tile hash, every higher tile hash is rebuilt from the entries,
//! the tiles rebuild the signed checkpoint's root and every block's tree
//! root up to it; and against the log: the checkpoint is the log's, the
//! tile hashes are the log's stored tree hashes, the block headers are the
//! log's, and every record, leaf and payload the log still has equals the
//! archive's.

use std::collections::HashMap;
use std::fmt;

use sqlx::AssertSqlSafe;

use super::layout::{sidecar_path, split_payloads};
use super::{ArchiveDir, ArchiveError, archived_size};
use crate::store::{LogReader, StoreError, to_i64, to_u64};
use crate::tiles::{TILE_HEIGHT, TILE_WIDTH, split_bundle, split_hashes, tile_path, tiles_at};
use crate::{BlockHeader, Frontier, HEADER_LEN, Hash, Record, VerifierKey, leaf_hash, sha256};

/// Where an archive is wrong: the file (relative to the archive) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveFailure {
    /// The file, e.g. `tile/entries/x001/234`.
    pub file: String,
    /// What is wrong, in words.
    pub what: String,
}

impl fmt::Display for ArchiveFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "archive file {}: {}", self.file, self.what)
    }
}

/// The outcome of [`check_archive`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ArchiveCheck {
    /// The archive's size (its checkpoint's).
    pub tree_size: u64,
    /// Entries checked.
    pub records: u64,
    /// Payloads in the archive checked against their records.
    pub payloads: u64,
    /// Block headers checked.
    pub blocks: u64,
    /// Bytes of entries read.
    pub bytes: u64,
    /// The first thing found wrong.
    pub failure: Option<ArchiveFailure>,
}

enum Stop {
    Failed(ArchiveFailure),
    Error(ArchiveError),
}

impl<E: Into<ArchiveError>> From<E> for Stop {
    fn from(e: E) -> Self {
        Stop::Error(e.into())
    }
}

fn failed<T>(file: impl Into<String>, what: impl Into<String>) -> Result<T, Stop> {
    Err(Stop::Failed(ArchiveFailure { file: file.into(), what: what.into() }))
}

/// Checks the archive in `dir` against itself, its checkpoint (signed by
/// `vkey`) and the log `reader` reads. `Err` only when a file or the
/// database cannot be read at all; what is wrong is in the report.
pub async fn check_archive(
    reader: &LogReader,
    dir: &ArchiveDir,
    vkey: &VerifierKey,
    mut progress: impl FnMut(u64) + Send,
) -> Result<ArchiveCheck, ArchiveError> {
    let mut report = ArchiveCheck::default();
    match run(reader, dir, vkey, &mut report, &mut progress).await {
        Ok(()) => Ok(report),
        Err(Stop::Failed(failure)) => {
            report.failure = Some(failure);
            Ok(report)
        }
        Err(Stop::Error(e)) => Err(e),
    }
}

/// For `audit verify`: the archive's check, and what is wrong with it
/// (an archive file that cannot be read at all is wrong too; only the
/// database failing is an error).
pub(crate) async fn verdict(
    reader: &LogReader,
    dir: &ArchiveDir,
    vkey: &VerifierKey,
    archived: u64,
) -> Result<(Option<ArchiveCheck>, Option<String>), StoreError> {
    let check = match check_archive(reader, dir, vkey, |_| {}).await {
        Ok(check) => check,
        Err(ArchiveError::Store(e)) => return Err(e),
        Err(e) => return Ok((None, Some(e.to_string()))),
    };
    let wrong = match &check.failure {
        Some(failure) => Some(failure.to_string()),
        None if check.tree_size < archived => {
            Some(format!("it ends at {}, the log archived up to {archived}", check.tree_size))
        }
        None => None,
    };
    Ok((Some(check), wrong))
}

async fn run(
    reader: &LogReader,
    dir: &ArchiveDir,
    vkey: &VerifierKey,
    report: &mut ArchiveCheck,
    progress: &mut (dyn FnMut(u64) + Send),
) -> Result<(), Stop> {
    let Some(note) = dir.checkpoint()? else { return failed("checkpoint", "missing: no archive here") };
    let checkpoint = match vkey.open(&note) {
        Ok(checkpoint) => checkpoint,
        Err(e) => return failed("checkpoint", format!("not a checkpoint of this log: {e}")),
    };
    let size = checkpoint.size;
    report.tree_size = size;
    let Some(block) = reader.block_with_size(size).await? else {
        return failed("checkpoint", format!("the log has no checkpoint of size {size}"));
    };
    if block.header.tree_root != checkpoint.root {
        return failed("checkpoint", format!("its root differs from the log's checkpoint of size {size}"));
    }
    let archived = archived_size(reader.pool()).await?;
    if archived > size {
        return failed("checkpoint", format!("the archive ends at {size}, but the log archived up to {archived}"));
    }
    let roots = check_blocks(reader, dir, block.header.height, report).await?;
    let mut tree = TreeCheck::new(reader, dir, size, roots);
    for (n, width) in tiles_at(0, size) {
        check_tile(reader, dir, n, width, &mut tree, report).await?;
        if n % 64 == 63 {
            progress(report.records);
        }
    }
    if tree.frontier.size() != size || tree.frontier.root() != checkpoint.root {
        return failed("checkpoint", format!("the archive's entries do not rebuild its root (size {size})"));
    }
    if let Some((tree_size, _)) = tree.roots.get(tree.next_root) {
        return failed("checkpoint", format!("block of tree size {tree_size} is past the archive's entries"));
    }
    progress(report.records);
    Ok(())
}

/// The block header files against the log's headers, and the tree root of
/// every block of heights `[0, last]` (by tree size) to check entries against.
async fn check_blocks(
    reader: &LogReader,
    dir: &ArchiveDir,
    last: u64,
    report: &mut ArchiveCheck,
) -> Result<Vec<(u64, Hash)>, Stop> {
    let mut roots = Vec::new();
    for (n, width) in tiles_at(0, last + 1) {
        let path = sidecar_path("blocks", n, width);
        let Some(file) = dir.read(&path)? else { return failed(path, "missing") };
        let rows: Vec<(Vec<u8>,)> =
            sqlx::query_as("SELECT header FROM blocks WHERE height >= ? AND height < ? ORDER BY height")
                .bind(to_i64(n * TILE_WIDTH))
                .bind(to_i64(n * TILE_WIDTH + width))
                .fetch_all(reader.pool())
                .await?;
        if file.len() != HEADER_LEN * usize::try_from(width).unwrap_or(0) {
            return failed(path, format!("{} bytes, not {width} block headers", file.len()));
        }
        for (k, chunk) in file.chunks_exact(HEADER_LEN).enumerate() {
            let height = n * TILE_WIDTH + k as u64;
            let Some((stored,)) = rows.get(k) else {
                return failed(path, format!("the log has no block {height}"));
            };
            if chunk != stored.as_slice() {
                return failed(path, format!("block {height}'s header differs from the log's"));
            }
            let header = BlockHeader::decode(chunk).map_err(StoreError::from)?;
            roots.push((header.tree_size, header.tree_root));
            report.blocks += 1;
        }
    }
    Ok(roots)
}

/// The tree rebuilt from the entries, checked against the tiles above
/// level 0, the log's tree hashes and the blocks' roots as it grows.
struct TreeCheck<'a> {
    reader: &'a LogReader,
    dir: &'a ArchiveDir,
    size: u64,
    frontier: Frontier,
    /// Per tile level, the tile loaded last: (index, path, hashes).
    tiles: HashMap<u8, (u64, String, Vec<Hash>)>,
    roots: Vec<(u64, Hash)>,
    next_root: usize,
}

impl<'a> TreeCheck<'a> {
    fn new(reader: &'a LogReader, dir: &'a ArchiveDir, size: u64, roots: Vec<(u64, Hash)>) -> Self {
        Self { reader, dir, size, frontier: Frontier::new(), tiles: HashMap::new(), roots, next_root: 0 }
    }

    async fn push(&mut self, leaf: Hash) -> Result<(), Stop> {
        let mut nodes = Vec::new();
        self.frontier.push(leaf, |id, hash| {
            if id.level > 0 && id.level % TILE_HEIGHT == 0 {
                nodes.push((id.level / TILE_HEIGHT, id.index, *hash));
            }
        });
        for (level, index, hash) in nodes {
            let (path, tile_hash) = self.tile_hash(level, index).await?;
            if tile_hash != hash {
                return failed(path, format!("hash {} does not match the entries under it", index % TILE_WIDTH));
            }
        }
        while let Some((tree_size, root)) = self.roots.get(self.next_root) {
            if *tree_size > self.frontier.size() {
                break;
            }
            if *tree_size < self.frontier.size() || self.frontier.root() != *root {
                return failed(
                    sidecar_path("blocks", self.next_root as u64 / TILE_WIDTH, TILE_WIDTH.min(self.roots.len() as u64)),
                    format!("the block of tree size {tree_size}: its tree root does not match the archive's entries"),
                );
            }
            self.next_root += 1;
        }
        Ok(())
    }

    /// Hash `index` of tile level `level`, loading (and checking against
    /// the log's stored hashes) its tile on first use.
    async fn tile_hash(&mut self, level: u8, index: u64) -> Result<(String, Hash), Stop> {
        let n = index / TILE_WIDTH;
        if self.tiles.get(&level).is_none_or(|(loaded, ..)| *loaded != n) {
            let count = self.size >> (u32::from(level) * u32::from(TILE_HEIGHT));
            let width = (count - n * TILE_WIDTH).min(TILE_WIDTH);
            let path = tile_path(Some(level), n, width);
            let Some(body) = self.dir.read(&path)? else { return failed(path, "missing") };
            let hashes = match split_hashes(&body, width) {
                Ok(hashes) => hashes,
                Err(e) => return failed(path, e.to_string()),
            };
            let stored = self.reader.hashes_at(level * TILE_HEIGHT, n * TILE_WIDTH, n * TILE_WIDTH + width).await?;
            if let Some(k) = (0..hashes.len()).find(|k| hashes[*k] != stored[*k]) {
                return failed(path, format!("hash {k} differs from the log's stored tree hash"));
            }
            self.tiles.insert(level, (n, path, hashes));
        }
        let (_, path, hashes) = &self.tiles[&level];
        Ok((path.clone(), hashes[usize::try_from(index % TILE_WIDTH).expect("below 256")]))
    }
}

type Rows = Vec<(i64, Vec<u8>)>;

/// One entry bundle with its level-0 tile and payload file.
async fn check_tile(
    reader: &LogReader,
    dir: &ArchiveDir,
    n: u64,
    width: u64,
    tree: &mut TreeCheck<'_>,
    report: &mut ArchiveCheck,
) -> Result<(), Stop> {
    let (bundle_path, leaves_path) = (tile_path(None, n, width), tile_path(Some(0), n, width));
    let payloads_path = sidecar_path("payloads", n, width);
    let Some(bundle) = dir.read(&bundle_path)? else { return failed(bundle_path, "missing") };
    let Some(leaves) = dir.read(&leaves_path)? else { return failed(leaves_path, "missing") };
    let Some(payloads) = dir.read(&payloads_path)? else { return failed(payloads_path, "missing") };
    let entries = split_bundle(&bundle, width).or_else(|e| failed(&bundle_path, e.to_string()))?;
    let leaves = split_hashes(&leaves, width).or_else(|e| failed(&leaves_path, e.to_string()))?;
    let payloads = split_payloads(&payloads, width).or_else(|e| failed(&payloads_path, e))?;
    let (start, end) = (n * TILE_WIDTH, n * TILE_WIDTH + width);
    let in_log = |table: &str, column: &str| {
        AssertSqlSafe(format!("SELECT idx, {column} FROM {table} WHERE idx >= ? AND idx < ? ORDER BY idx"))
    };
    let fetch = |sql| sqlx::query_as::<_, (i64, Vec<u8>)>(sql).bind(to_i64(start)).bind(to_i64(end));
    let records: Rows = fetch(in_log("records", "body")).fetch_all(reader.pool()).await?;
    let kept: Rows = fetch(in_log("kept_leaves", "leaf")).fetch_all(reader.pool()).await?;
    let by_index = |rows: Rows| -> Result<HashMap<u64, Vec<u8>>, StoreError> {
        rows.into_iter().map(|(idx, bytes)| Ok((to_u64(idx)?, bytes))).collect()
    };
    let (records, kept) = (by_index(records)?, by_index(kept)?);
    let stored_payloads = reader.payloads(&(start..end).collect::<Vec<u64>>()).await?;

    for (k, entry) in entries.iter().enumerate() {
        let index = start + k as u64;
        let leaf = leaf_hash(entry);
        if leaf != leaves[k] {
            return failed(
                &bundle_path,
                format!("entry {k} (record {index}) does not hash to {leaves_path}'s hash {k}"),
            );
        }
        if records.get(&index).is_some_and(|body| body != entry) {
            return failed(&bundle_path, format!("entry {k} (record {index}) differs from the log's record"));
        }
        if kept.get(&index).is_some_and(|kept| kept[..] != leaf) {
            return failed(&leaves_path, format!("hash {k} (record {index}) differs from the leaf hash the log kept"));
        }
        let record = match Record::decode(entry) {
            Ok(record) => record,
            Err(e) => return failed(&bundle_path, format!("entry {k} (record {index}) does not decode: {e}")),
        };
        match (payloads[k], stored_payloads.get(&index)) {
            (Some(payload), stored) => {
                let Record::Publish(publish) = &record else {
                    return failed(&payloads_path, format!("a payload for record {index}, which is not a publish"));
                };
                if payload.len() as u64 != u64::from(publish.payload_len) || sha256(payload) != publish.payload_sha256 {
                    return failed(&payloads_path, format!("payload {k} does not match record {index}'s payload hash"));
                }
                if stored.is_some_and(|stored| stored[..] != *payload) {
                    return failed(&payloads_path, format!("payload {k} differs from the log's for record {index}"));
                }
                report.payloads += 1;
            }
            (None, Some(_)) => {
                return failed(&payloads_path, format!("payload {k} is missing, but the log has record {index}'s"));
            }
            (None, None) => {}
        }
        report.records += 1;
        report.bytes += entry.len() as u64;
        tree.push(leaf).await?;
    }
    Ok(())
}
