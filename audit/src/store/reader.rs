//! Read-only access to a log: blocks, records, proofs. Safe to use from
//! another process while the broker appends (SQLite WAL readers).

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::Row;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow};

use super::{DB_FILE, StoreError, to_hash, to_i64, to_u64};
use crate::tree::{Range, consistency_plan, inclusion_plan, resolve, subtree_root};
use crate::{BlockHeader, ConsistencyBundle, Frontier, Hash, NodeId, ProofBundle, ProofError, VerifierKey};

/// A sealed block as stored: header, hash and signed checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SealedBlock {
    /// The decoded header.
    pub header: BlockHeader,
    /// `SHA-256(0x02 || header)`.
    pub hash: Hash,
    /// The checkpoint as a signed note.
    pub checkpoint: String,
}

/// One stored record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredRecord {
    /// Its log index.
    pub index: u64,
    /// The record's bytes.
    pub body: Vec<u8>,
    /// Its stored leaf hash.
    pub leaf: Hash,
    /// The application payload, unless it was deleted or never stored.
    pub payload: Option<Vec<u8>>,
}

/// Read-only handle on a log.
#[derive(Debug, Clone)]
pub struct LogReader {
    pool: SqlitePool,
    vkey: VerifierKey,
}

pub(crate) fn connect_options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .journal_mode(SqliteJournalMode::Wal)
        .busy_timeout(Duration::from_secs(10))
        .foreign_keys(true)
}

impl LogReader {
    /// Opens the log in `data_dir` read-only.
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::NoLog(data_dir.to_path_buf()));
        }
        let pool =
            SqlitePoolOptions::new().max_connections(4).connect_with(connect_options(&path).read_only(true)).await?;
        Self::from_pool(pool).await
    }

    pub(crate) async fn from_pool(pool: SqlitePool) -> Result<Self, StoreError> {
        let vkey: Option<String> = sqlx::query_scalar("SELECT value FROM log_meta WHERE name = 'vkey'")
            .fetch_optional(&pool)
            .await
            .map_err(|e| StoreError::Corrupt(format!("cannot read the log's metadata: {e}")))?;
        let vkey = vkey.ok_or_else(|| StoreError::Corrupt("the log has no verifier key recorded".into()))?;
        Ok(Self { pool, vkey: VerifierKey::from_str(&vkey)? })
    }

    pub(crate) fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The log's verifier key.
    pub fn verifier_key(&self) -> &VerifierKey {
        &self.vkey
    }

    /// Number of records committed, sealed or not.
    pub async fn record_count(&self) -> Result<u64, StoreError> {
        let max: Option<i64> = sqlx::query_scalar("SELECT max(idx) FROM records").fetch_one(&self.pool).await?;
        max.map_or(Ok(0), |m| to_u64(m).map(|m| m + 1))
    }

    /// The latest sealed block, if any.
    pub async fn latest_block(&self) -> Result<Option<SealedBlock>, StoreError> {
        let row = sqlx::query("SELECT header, hash, checkpoint FROM blocks ORDER BY height DESC LIMIT 1")
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| sealed_block(&r)).transpose()
    }

    /// The block at `height`.
    pub async fn block(&self, height: u64) -> Result<Option<SealedBlock>, StoreError> {
        let row = sqlx::query("SELECT header, hash, checkpoint FROM blocks WHERE height = ?")
            .bind(to_i64(height))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| sealed_block(&r)).transpose()
    }

    /// The block whose checkpoint has `tree_size` records.
    pub async fn block_with_size(&self, tree_size: u64) -> Result<Option<SealedBlock>, StoreError> {
        let row = sqlx::query("SELECT header, hash, checkpoint FROM blocks WHERE tree_size = ?")
            .bind(to_i64(tree_size))
            .fetch_optional(&self.pool)
            .await?;
        row.map(|r| sealed_block(&r)).transpose()
    }

    /// The record at `index`, with its payload if stored.
    pub async fn record(&self, index: u64) -> Result<Option<StoredRecord>, StoreError> {
        let row = sqlx::query(
            "SELECT r.body, r.leaf, p.data FROM records r LEFT JOIN payloads p ON p.idx = r.idx WHERE r.idx = ?",
        )
        .bind(to_i64(index))
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(StoredRecord {
                index,
                body: row.try_get(0)?,
                leaf: to_hash(row.try_get::<&[u8], _>(1)?, "leaf hash")?,
                payload: row.try_get(2)?,
            })
        })
        .transpose()
    }

    /// The latest block, or the block of the given size; an error naming
    /// what is missing otherwise.
    async fn checkpoint_block(&self, size: Option<u64>) -> Result<SealedBlock, StoreError> {
        match size {
            None => {
                self.latest_block().await?.ok_or_else(|| StoreError::NotFound("no block has been sealed yet".into()))
            }
            Some(size) => self
                .block_with_size(size)
                .await?
                .ok_or_else(|| StoreError::NotFound(format!("no checkpoint has tree size {size}"))),
        }
    }

    /// The `sealmq-proof/v1` bundle for record `index`, against the latest
    /// checkpoint or the one of tree size `size`.
    pub async fn prove(&self, index: u64, size: Option<u64>) -> Result<ProofBundle, StoreError> {
        let block = self.checkpoint_block(size).await?;
        let tree_size = block.header.tree_size;
        let plan = inclusion_plan(index, tree_size)?;
        let record =
            self.record(index).await?.ok_or_else(|| StoreError::Corrupt(format!("record {index} is missing")))?;
        let path = self.resolve(&plan).await?;
        Ok(ProofBundle::new(index, &record.body, tree_size, &path, &block.checkpoint))
    }

    /// The consistency proof between two checkpoints: `old_size` and
    /// `new_size` (default: the latest) must both be checkpoint sizes.
    pub async fn consistency(&self, old_size: u64, new_size: Option<u64>) -> Result<ConsistencyBundle, StoreError> {
        let new = self.checkpoint_block(new_size).await?;
        let new_size = new.header.tree_size;
        let old = self.checkpoint_block(Some(old_size)).await?;
        let plan = consistency_plan(old_size, new_size)?;
        let mut bundle = ConsistencyBundle::new(old_size, new_size, &self.resolve(&plan).await?);
        bundle.old_checkpoint = Some(old.checkpoint);
        bundle.new_checkpoint = Some(new.checkpoint);
        Ok(bundle)
    }

    /// The right edge of the tree of `size` records.
    pub async fn frontier(&self, size: u64) -> Result<Frontier, StoreError> {
        let ids = Frontier::ids(size);
        let found = self.nodes(&ids).await?;
        let hashes = ids.iter().map(|id| lookup(&found, *id)).collect::<Result<Vec<_>, _>>()?;
        Ok(Frontier::from_parts(size, hashes)?)
    }

    async fn resolve(&self, plan: &[Range]) -> Result<Vec<Hash>, StoreError> {
        let ids: Vec<NodeId> = plan.iter().flat_map(Range::parts).collect();
        let found = self.nodes(&ids).await?;
        Ok(resolve(plan, |id| lookup(&found, id))?)
    }

    /// Fetches the hashes of complete subtrees. Only tile levels (multiples
    /// of 8) are stored, so each node is rehashed from the at most 128
    /// stored hashes below it; the nodes one proof needs share a few tiles,
    /// which are read with one range query each.
    pub(crate) async fn nodes(&self, ids: &[NodeId]) -> Result<HashMap<NodeId, Hash>, StoreError> {
        // (tile level, tile index) -> the span of stored hashes needed in it.
        let mut spans: BTreeMap<(u8, u64), (u64, u64)> = BTreeMap::new();
        for id in ids {
            let (start, end) = base_span(*id);
            let span = spans.entry((tile_level(id.level), start / TILE_WIDTH)).or_insert((start, end));
            span.0 = span.0.min(start);
            span.1 = span.1.max(end);
        }
        let mut tiles = HashMap::with_capacity(spans.len());
        for (&(level, tile), &(start, end)) in &spans {
            tiles.insert((level, tile), (start, self.hashes_at(level, start, end).await?));
        }
        let mut found = HashMap::with_capacity(ids.len());
        for id in ids {
            let (start, end) = base_span(*id);
            let level = tile_level(id.level);
            let (tile_start, hashes) = &tiles[&(level, start / TILE_WIDTH)];
            let from = usize::try_from(start - tile_start).expect("inside one tile");
            let to = usize::try_from(end - tile_start).expect("inside one tile");
            let Some(base) = hashes.get(from..to) else {
                return Err(ProofError::MissingNode { level: id.level, index: id.index }.into());
            };
            found.insert(*id, subtree_root(base));
        }
        Ok(found)
    }

    /// The stored hashes at a tile level (0: leaves; 8, 16, …: `tree_nodes`)
    /// with indices in `[start, end)`, in order; an error if any is missing.
    pub async fn hashes_at(&self, level: u8, start: u64, end: u64) -> Result<Vec<Hash>, StoreError> {
        let rows = if level == 0 {
            sqlx::query("SELECT idx, leaf FROM records WHERE idx >= ? AND idx < ? ORDER BY idx")
                .bind(to_i64(start))
                .bind(to_i64(end))
                .fetch_all(&self.pool)
                .await?
        } else {
            sqlx::query("SELECT idx, hash FROM tree_nodes WHERE level = ? AND idx >= ? AND idx < ? ORDER BY idx")
                .bind(i64::from(level))
                .bind(to_i64(start))
                .bind(to_i64(end))
                .fetch_all(&self.pool)
                .await?
        };
        let mut hashes = Vec::with_capacity(rows.len());
        for (expected, row) in (start..end).zip(&rows) {
            if to_u64(row.try_get(0)?)? != expected {
                return Err(ProofError::MissingNode { level, index: expected }.into());
            }
            hashes.push(to_hash(row.try_get::<&[u8], _>(1)?, "tree hash")?);
        }
        if hashes.len() as u64 != end - start {
            return Err(ProofError::MissingNode { level, index: start + hashes.len() as u64 }.into());
        }
        Ok(hashes)
    }
}

/// Width of a tile: how many hashes of one tile level a tile holds.
pub const TILE_WIDTH: u64 = 256;

/// The stored level a node is rehashed from: the highest multiple of 8 not above it.
fn tile_level(level: u8) -> u8 {
    level & !7
}

/// The indices, at [`tile_level`], of the stored hashes under a node.
fn base_span(id: NodeId) -> (u64, u64) {
    let shift = id.level - tile_level(id.level);
    (id.index << shift, (id.index + 1) << shift)
}

fn lookup(found: &HashMap<NodeId, Hash>, id: NodeId) -> Result<Hash, ProofError> {
    found.get(&id).copied().ok_or(ProofError::MissingNode { level: id.level, index: id.index })
}

pub(crate) fn sealed_block(row: &SqliteRow) -> Result<SealedBlock, StoreError> {
    Ok(SealedBlock {
        header: BlockHeader::decode(row.try_get::<&[u8], _>("header")?)?,
        hash: to_hash(row.try_get::<&[u8], _>("hash")?, "block hash")?,
        checkpoint: row.try_get("checkpoint")?,
    })
}
