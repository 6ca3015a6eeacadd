//! Sealing: the pending records become a block, with its tree hashes and
//! signed checkpoint, in one transaction; a failed seal is retried.

use sqlx::{QueryBuilder, Sqlite, SqliteConnection};
use tokio::time::Instant;

use super::super::indexing::{IndexWrite, Indexing};
use super::super::reader::SealedBlock;
use super::super::{StoreError, now_ms, to_i64};
use super::append::execute_in_one_trip;
use super::{INSERT_CHUNK, SEAL_RETRY, Sequencer};
use crate::tree::NodeId;
use crate::{BlockHeader, Checkpoint, Hash};

impl Sequencer {
    /// Seals blocks while a full block's worth of records is pending.
    pub(super) async fn seal_full_blocks(&mut self) {
        while self.pending.len() >= self.block_max_records {
            if !self.seal_or_retry().await {
                break;
            }
        }
    }

    /// Seals a block; on failure keeps the records pending and retries later.
    pub(super) async fn seal_or_retry(&mut self) -> bool {
        match self.seal_block().await {
            Ok(_) => true,
            Err(e) => {
                tracing::error!(error = %e, pending = self.pending.len(), "sealing a block failed; retrying");
                self.recover_connection().await;
                self.seal_due = Some(Instant::now() + SEAL_RETRY);
                false
            }
        }
    }

    /// Seals up to one block's worth of pending records: block root, chain
    /// link, tree hashes, tree root and signed checkpoint, in one
    /// transaction, with the search index rows still waiting.
    pub(super) async fn seal_block(&mut self) -> Result<SealedBlock, StoreError> {
        let started = Instant::now();
        // Every sealed record is searchable: the index rows waiting go in
        // with the block (see `write_block`).
        self.catch_up_index().await;
        let open = self.pending.next_block().expect("no empty blocks");
        let (height, prev_block_hash) = match self.last_block {
            Some((height, hash)) => (height + 1, hash),
            None => (0, [0; 32]),
        };
        let header = BlockHeader {
            height,
            prev_block_hash,
            first_index: self.pending.sealed().size(),
            leaf_count: u32::try_from(open.count).expect("blocks hold at most u32::MAX records"),
            block_root: open.block.root(),
            tree_size: open.tree.size(),
            tree_root: open.tree.root(),
            sealed_ms: now_ms(),
        };
        let checkpoint = self.key.sign(&Checkpoint {
            origin: self.key.origin().to_string(),
            size: header.tree_size,
            root: header.tree_root,
        });
        let block = SealedBlock { header, hash: header.hash(), checkpoint };
        let count = open.count;

        // On error the caller's `recover_connection` lets the waiting rows
        // go (the COMMIT may have landed with them).
        write_block(&mut self.conn, &self.index, &open.nodes, &block).await?;
        self.index.committed(IndexWrite::waiting_only());
        self.checkpoint_soon();

        self.pending.sealed_next();
        self.unsealed.sealed(header.tree_size, Instant::now(), &self.stats);
        self.stats.sealed(header.tree_size, started.elapsed());
        self.last_block = Some((height, block.hash));
        self.seal_due = (!self.pending.is_empty()).then(|| Instant::now() + self.block_interval);
        tracing::debug!(height, records = count, tree_size = header.tree_size, "sealed a block");
        if let Some(sealed) = &self.sealed {
            sealed.send_replace(Some(block.clone()));
        }
        Ok(block)
    }
}

/// The seal's transaction: the index rows waiting, the block's tree hashes
/// and the block, in one round trip to SQLite's thread (see `append.rs`
/// for why).
async fn write_block(
    conn: &mut SqliteConnection,
    index: &Indexing,
    nodes: &[(NodeId, Hash)],
    block: &SealedBlock,
) -> Result<(), StoreError> {
    let mut sql = QueryBuilder::<Sqlite>::new("BEGIN IMMEDIATE; ");
    index.push_waiting(&mut sql);
    for chunk in nodes.chunks(INSERT_CHUNK) {
        sql.push("INSERT INTO tree_nodes (level, idx, hash) ");
        sql.push_values(chunk, |mut row, (id, hash)| {
            row.push_bind(i64::from(id.level)).push_bind(to_i64(id.index)).push_bind(&hash[..]);
        });
        sql.push("; ");
    }
    let header = &block.header;
    sql.push("INSERT INTO blocks (height, header, hash, tree_size, checkpoint) VALUES (")
        .push_bind(to_i64(header.height))
        .push(", ")
        .push_bind(header.encode().to_vec())
        .push(", ")
        .push_bind(&block.hash[..])
        .push(", ")
        .push_bind(to_i64(header.tree_size))
        .push(", ")
        .push_bind(&block.checkpoint)
        .push("); ");
    execute_in_one_trip(conn, sql).await
}
