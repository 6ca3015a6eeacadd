//! `sealmq audit verify`: re-derives every leaf hash, block root, chain
//! link, stored tree hash, tree root, checkpoint signature and the retained
//! state from the stored records, and names the first place where the log
//! is wrong.

use std::collections::HashMap;
use std::fmt;

use sqlx::SqlitePool;

mod records;

use self::records as records_mod;
use records::{RawRecord, RecordStream};

use super::archive::gap::check_kept_leaves;
use super::archive::{ArchiveCheck, ArchiveDir, archived_size, verdict};
use super::erasure::Erasures;
use super::reader::LogReader;
use super::{StoreError, retained, to_i64, to_u64};
use crate::tree::is_stored_level;
use crate::{BlockHeader, Frontier, Hash, NodeId, RetainedState, VerifierKey, merkle_root};

/// Records read from the database per query.
const RECORD_CHUNK: usize = 8192;
/// Blocks read from the database per query.
const BLOCK_CHUNK: i64 = 1024;
/// Progress is reported every this many records.
const PROGRESS_EVERY: u64 = 1 << 16;

/// Where the log is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The record at this log index.
    Record(u64),
    /// The block at this height.
    Block(u64),
    /// A stored interior hash of the tree.
    TreeNode {
        /// Its level (a multiple of 8).
        level: u8,
        /// Its index at that level.
        index: u64,
    },
    /// The `retained` table (the failure names the topic).
    Retained,
    /// The archive given to check (the failure names the file).
    Archive,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Place::Record(index) => write!(f, "record {index}"),
            Place::Block(height) => write!(f, "block {height}"),
            Place::TreeNode { level, index } => write!(f, "tree hash (level {level}, index {index})"),
            Place::Retained => f.write_str("retained state"),
            Place::Archive => f.write_str("archive"),
        }
    }
}

/// The first thing found wrong.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Where.
    pub place: Place,
    /// What, in words.
    pub what: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.place, self.what)
    }
}

fn failure(place: Place, what: impl Into<String>) -> Failure {
    Failure { place, what: what.into() }
}

fn fail<T>(place: Place, what: impl Into<String>) -> Result<T, Failure> {
    Err(failure(place, what))
}

/// How far a verification has come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Records checked so far.
    pub records: u64,
    /// Records in the log.
    pub total: u64,
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct VerifyReport {
    /// Records checked.
    pub records: u64,
    /// Blocks checked.
    pub blocks: u64,
    /// Size of the latest checkpoint.
    pub tree_size: u64,
    /// Committed records not yet in a block (a running broker seals them shortly).
    pub unsealed: u64,
    /// Stored payloads checked against their records' hashes.
    pub payloads: u64,
    /// Publish records whose (non-empty) payload is no longer stored:
    /// erased by retention or on request (see the erasure records).
    pub erased: u64,
    /// Erasure records (`$sealmq/erasure`) in the log.
    pub erasures: u64,
    /// Erased payloads that no later erasure record covers: deleted
    /// behind the broker's back (or by a sealmq without erasure records).
    /// Not a failure (the proofs hold), but an auditor's question.
    pub unaccounted: u64,
    /// The first of them.
    pub first_unaccounted: Option<u64>,
    /// Topics with a retained message, as the records imply; the
    /// `retained` table was checked against them.
    pub retained: u64,
    /// The archived size: records below it were removed from the log
    /// (all but kind-2 and kind-3 records and current retained messages),
    /// and are checked only when their archive is given.
    pub archived: u64,
    /// The archive's check, when one was given.
    pub archive: Option<ArchiveCheck>,
    /// The first thing wrong, if anything is.
    pub failure: Option<Failure>,
}

impl VerifyReport {
    /// True when everything held.
    pub fn is_ok(&self) -> bool {
        self.failure.is_none()
    }
}

/// Re-derives everything from the stored records and checks it against the
/// stored blocks, tree hashes and checkpoints, which must be signed by
/// `vkey`. Stops at the first failure. `Err` only when the database
/// itself cannot be read.
pub async fn verify(
    reader: &LogReader,
    vkey: &VerifierKey,
    progress: impl FnMut(Progress),
) -> Result<VerifyReport, StoreError> {
    verify_with_archive(reader, vkey, None, progress).await
}

/// [`verify`], and first the archive of the records the log no longer
/// holds ([`check_archive`]), when given. Without it, the archived prefix
/// is checked only as far as the log still can: block headers, their chain
/// and signatures, the stored tree hashes at the archived size against its
/// block's root, and the records kept below it.
pub async fn verify_with_archive(
    reader: &LogReader,
    vkey: &VerifierKey,
    archive: Option<&ArchiveDir>,
    mut progress: impl FnMut(Progress),
) -> Result<VerifyReport, StoreError> {
    let mut report = VerifyReport { archived: archived_size(reader.pool()).await?, ..VerifyReport::default() };
    if let Some(dir) = archive {
        let (check, wrong) = verdict(reader, dir, vkey, report.archived).await?;
        report.archive = check;
        if let Some(what) = wrong {
            report.failure = Some(failure(Place::Archive, what));
            return Ok(report);
        }
    }
    // A broker may be appending and sealing meanwhile: check the blocks
    // sealed now and the records committed now, nothing later.
    let sealed = reader.latest_block().await?.map_or(0, |b| b.header.tree_size);
    let (total, retained_table) = snapshot(reader.pool()).await?;
    let archived = report.archived;
    let frontier = match reader.frontier(archived).await {
        Ok(frontier) => frontier,
        Err(StoreError::Proof(e)) => {
            report.failure = Some(failure(Place::Block(0), format!("the tree at the archived size {archived}: {e}")));
            return Ok(report);
        }
        Err(e) => return Err(e),
    };
    let erasures = Erasures::load(reader, total).await?;
    let mut run = Run {
        records: RecordStream::spawn(reader.pool().clone(), reader.files().clone(), archived, total, erasures.clone()),
        erasures,
        frontier,
        archived,
        covered: 0,
        last: None,
        sealed,
        retained: RetainedState::default(),
        retained_table,
    };
    let kept = run.kept(reader, &mut report).await;
    let outcome = match kept {
        Ok(()) => {
            run.blocks(reader.pool(), vkey, &mut report, &mut |records| progress(Progress { records, total })).await
        }
        Err(e) => Err(e),
    };

    report.failure = match outcome {
        Ok(()) => run.rest(reader.pool(), &mut report).await?.err(),
        Err(Step::Failed(failure)) => Some(failure),
        Err(Step::Db(e)) => return Err(e),
    };
    progress(Progress { records: report.records, total });
    Ok(report)
}

/// How many records are committed, and the `retained` table as it stood
/// with exactly those records. One read transaction: the sequencer changes
/// both in each append's transaction, so a broker may keep appending. A
/// table that cannot be read is a finding about the table, reported once
/// the records are checked, not a reason to check nothing.
async fn snapshot(pool: &SqlitePool) -> Result<(u64, Result<Vec<(String, u64)>, String>), StoreError> {
    let mut tx = pool.begin().await?;
    let max: Option<i64> = sqlx::query_scalar("SELECT max(idx) FROM records").fetch_one(&mut *tx).await?;
    let table = retained::read(&mut *tx).await.map_err(|e| e.to_string());
    tx.commit().await?;
    Ok((max.map_or(Ok(0), |m| to_u64(m).map(|m| m + 1))?, table))
}

/// Why verification stopped early.
enum Step {
    Failed(Failure),
    Db(StoreError),
}

impl From<Failure> for Step {
    fn from(failure: Failure) -> Self {
        Step::Failed(failure)
    }
}

impl<E: Into<StoreError>> From<E> for Step {
    fn from(e: E) -> Self {
        Step::Db(e.into())
    }
}

/// A record kept below the archived size: index, leaf, bytes, payload.
type KeptRow = (i64, Vec<u8>, Vec<u8>, Option<Vec<u8>>, Option<i64>);

/// One row of `blocks`, as stored.
#[derive(sqlx::FromRow)]
struct BlockRow {
    height: i64,
    header: Vec<u8>,
    hash: Vec<u8>,
    tree_size: i64,
    checkpoint: String,
}

struct Run {
    records: RecordStream,
    /// The erasure records, for the records kept below the archived size.
    erasures: Erasures,
    frontier: Frontier,
    /// The archived size: records below it are not streamed.
    archived: u64,
    /// The tree size of the blocks checked so far.
    covered: u64,
    /// Height and hash of the last block checked.
    last: Option<(u64, Hash)>,
    /// Blocks up to this tree size are checked.
    sealed: u64,
    /// What the records checked so far imply.
    retained: RetainedState,
    /// The `retained` table as of the last record checked, or why it
    /// cannot be read.
    retained_table: Result<Vec<(String, u64)>, String>,
}

impl Run {
    /// The records kept below the archived size, each on its own, in order
    /// (they carry the retained state across the archived gap).
    async fn kept(&mut self, reader: &LogReader, report: &mut VerifyReport) -> Result<(), Step> {
        let pool = reader.pool();
        if self.archived == 0 {
            return Ok(());
        }
        if let Some((index, what)) = check_kept_leaves(pool, self.archived).await? {
            fail(Place::Record(index), what)?;
        }
        let rows: Vec<KeptRow> = sqlx::query_as(
            "SELECT r.idx, r.leaf, r.body, p.data, p.file_len FROM records r LEFT JOIN payloads p ON p.idx = r.idx \
             WHERE r.idx < ? ORDER BY r.idx",
        )
        .bind(to_i64(self.archived))
        .fetch_all(pool)
        .await?;
        for (idx, leaf, body, data, file_len) in rows {
            let index = to_u64(idx)?;
            let payload = records_mod::read_payload(reader.files(), idx, data.map(|data| (data, file_len))).await;
            let record = RawRecord::check(index, &leaf, &body, &payload, &self.erasures);
            self.check_record(index, &record, report)?;
        }
        Ok(())
    }

    async fn blocks(
        &mut self,
        pool: &SqlitePool,
        vkey: &VerifierKey,
        report: &mut VerifyReport,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), Step> {
        let mut next_progress = PROGRESS_EVERY;
        loop {
            let from = self.last.map_or(0, |(height, _)| height + 1);
            let rows: Vec<BlockRow> = sqlx::query_as(
                "SELECT height, header, hash, tree_size, checkpoint FROM blocks \
                 WHERE height >= ? AND tree_size <= ? ORDER BY height LIMIT ?",
            )
            .bind(to_i64(from))
            .bind(to_i64(self.sealed))
            .bind(BLOCK_CHUNK)
            .fetch_all(pool)
            .await?;
            if rows.is_empty() {
                return Ok(());
            }
            for row in rows {
                self.block(pool, vkey, report, &row).await?;
                report.blocks += 1;
                if report.records >= next_progress {
                    progress(report.records);
                    next_progress = report.records + PROGRESS_EVERY;
                }
            }
        }
    }

    async fn block(
        &mut self,
        pool: &SqlitePool,
        vkey: &VerifierKey,
        report: &mut VerifyReport,
        row: &BlockRow,
    ) -> Result<(), Step> {
        let (height, stored_size) = (to_u64(row.height)?, to_u64(row.tree_size)?);
        let (raw_header, stored_hash, checkpoint) = (&row.header, &row.hash, &row.checkpoint);
        let at = Place::Block(height);
        let expected_height = self.last.map_or(0, |(h, _)| h + 1);
        if height != expected_height {
            return Err(failure(Place::Block(expected_height), "missing").into());
        }
        let header = BlockHeader::decode(raw_header).or_else(|e| fail(at, format!("header does not decode: {e}")))?;
        if header.height != height {
            fail(at, format!("header says height {}", header.height))?;
        }
        if stored_hash[..] != header.hash() {
            fail(at, "stored block hash does not match its header")?;
        }
        let prev = self.last.map_or([0; 32], |(_, hash)| hash);
        if header.prev_block_hash != prev {
            let what = match height {
                0 => "prev_block_hash of the first block is not zero".to_string(),
                _ => format!("prev_block_hash does not match block {}'s hash", height - 1),
            };
            fail(at, what)?;
        }
        if header.first_index != self.covered {
            fail(at, format!("first_index is {}, but the blocks before end at {}", header.first_index, self.covered))?;
        }
        if stored_size != header.tree_size {
            fail(at, format!("stored tree_size {stored_size} differs from the header's {}", header.tree_size))?;
        }
        self.covered = header.tree_size;
        if header.tree_size <= self.archived {
            // Archived records: what the log still has of them is checked
            // here, the records themselves with their archive.
            if header.tree_size == self.archived && self.frontier.root() != header.tree_root {
                fail(at, "the stored tree hashes at the archived size do not match this block's tree root")?;
            }
            return self.signed(at, vkey, checkpoint, &header, height, report);
        }

        let mut leaves = Vec::with_capacity(header.leaf_count as usize);
        for index in header.first_index..header.tree_size {
            let Some(record) = self.records.next().await? else {
                return Err(failure(Place::Record(index), format!("missing (block {height} covers it)")).into());
            };
            leaves.push(self.check_record(index, &record, report)?);
        }
        let range = format!("[{}, {})", header.first_index, header.tree_size);
        if merkle_root(&leaves) != header.block_root {
            // The leaves match their records, so the records were changed
            // together with their leaf hashes, or the header was.
            fail(at, format!("block root does not match records {range}"))?;
        }

        let mut nodes = Vec::new();
        for leaf in &leaves {
            self.frontier.push(*leaf, |id, hash| {
                if id.level > 0 && is_stored_level(id.level) {
                    nodes.push((id, *hash));
                }
            });
        }
        check_tree_nodes(pool, &nodes).await?;
        if self.frontier.root() != header.tree_root {
            fail(at, format!("tree root does not match records [0, {})", header.tree_size))?;
        }

        self.signed(at, vkey, checkpoint, &header, height, report)
    }

    /// The block's checkpoint is signed and says what its header says.
    fn signed(
        &mut self,
        at: Place,
        vkey: &VerifierKey,
        checkpoint: &str,
        header: &BlockHeader,
        height: u64,
        report: &mut VerifyReport,
    ) -> Result<(), Step> {
        let signed = vkey.open(checkpoint).or_else(|e| fail(at, format!("checkpoint: {e}")))?;
        if signed.size != header.tree_size || signed.root != header.tree_root {
            fail(at, format!("checkpoint is for size {} with another root than the header's", signed.size))?;
        }
        report.tree_size = header.tree_size;
        self.last = Some((height, header.hash()));
        Ok(())
    }

    /// Checks the records after the last block, and that no tree hash is
    /// stored beyond the sealed tree.
    async fn rest(&mut self, pool: &SqlitePool, report: &mut VerifyReport) -> Result<Result<(), Failure>, StoreError> {
        let mut index = self.frontier.size();
        loop {
            let record = match self.records.next().await {
                Ok(Some(record)) => record,
                Ok(None) => break,
                Err(Step::Failed(f)) => return Ok(Err(f)),
                Err(Step::Db(e)) => return Err(e),
            };
            if let Err(f) = self.check_record(index, &record, report) {
                return Ok(Err(f));
            }
            report.unsealed += 1;
            index += 1;
        }
        let counts: Vec<(i64, i64)> =
            sqlx::query_as("SELECT level, count(*) FROM tree_nodes GROUP BY level").fetch_all(pool).await?;
        let size = self.frontier.size();
        for (level, count) in counts {
            let level = u8::try_from(level).unwrap_or(u8::MAX);
            let expected = if level >= 64 { 0 } else { size >> level };
            if to_u64(count)? != expected {
                return Ok(fail(
                    Place::TreeNode { level, index: expected },
                    format!("{count} hashes stored at this level, but the sealed tree has {expected}"),
                ));
            }
        }
        Ok(self.check_retained(report))
    }

    /// Checks one record (see [`RawRecord::check`]) and that it is the next
    /// one, and folds it into the retained state.
    fn check_record(&mut self, index: u64, record: &RawRecord, report: &mut VerifyReport) -> Result<Hash, Failure> {
        if record.index != index && index >= self.archived {
            fail(Place::Record(index), "missing")?;
        }
        let leaf = record.verdict.clone().or_else(|what| fail(Place::Record(index), what))?;
        if let Some(retained) = &record.retained {
            self.retained.apply(index, retained);
        }
        report.payloads += u64::from(record.has_payload);
        report.erased += u64::from(record.erased);
        if record.unaccounted {
            report.unaccounted += 1;
            report.first_unaccounted.get_or_insert(index);
        }
        report.erasures += u64::from(record.erasure);
        report.records += 1;
        Ok(leaf)
    }

    /// Once every record is checked: the `retained` table must hold what
    /// they imply, or the broker would serve another message than the log's.
    fn check_retained(&self, report: &mut VerifyReport) -> Result<(), Failure> {
        let table = self.retained_table.as_ref().or_else(|e| fail(Place::Retained, format!("the table: {e}")))?;
        let wrong = self.retained.differences(table);
        if let Some(first) = wrong.first() {
            let more = match wrong.len() - 1 {
                0 => String::new(),
                n => format!(" ({n} more topics differ)"),
            };
            return fail(Place::Retained, format!("topic {:?}: {first}{more}", first.topic));
        }
        report.retained = self.retained.len() as u64;
        Ok(())
    }
}

/// Compares re-derived tile-level hashes with the stored ones.
async fn check_tree_nodes(pool: &SqlitePool, nodes: &[(NodeId, Hash)]) -> Result<(), Step> {
    let mut by_level: HashMap<u8, Vec<(u64, Hash)>> = HashMap::new();
    for (id, hash) in nodes {
        by_level.entry(id.level).or_default().push((id.index, *hash));
    }
    for (level, expected) in by_level {
        let (first, last) = (expected[0].0, expected[expected.len() - 1].0);
        let stored: HashMap<i64, Vec<u8>> =
            sqlx::query_as("SELECT idx, hash FROM tree_nodes WHERE level = ? AND idx >= ? AND idx <= ?")
                .bind(i64::from(level))
                .bind(to_i64(first))
                .bind(to_i64(last))
                .fetch_all(pool)
                .await?
                .into_iter()
                .collect();
        for (index, hash) in expected {
            let at = Place::TreeNode { level, index };
            match stored.get(&to_i64(index)) {
                None => fail(at, "missing")?,
                Some(found) if found[..] != hash[..] => fail(at, "stored hash does not match the records under it")?,
                Some(_) => {}
            }
        }
    }
    Ok(())
}
