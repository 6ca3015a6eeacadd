//! The log's side of witnessing: the cosignatures its witnesses returned,
//! by witness and tree size (`cosignatures` table, schema 4).
//!
//! Written by the broker's witnessing tasks, not the sequencer: these rows
//! are not part of what the log proves, and a cosignature can arrive long
//! after its block was sealed.

use std::collections::BTreeMap;
use std::path::Path;

use sqlx::SqlitePool;
use sqlx::sqlite::SqlitePoolOptions;

use super::reader::connect_options;
use super::{DB_FILE, StoreError};

/// Cosignature lines by tree size, then by witness vkey.
pub type CosignedSizes = BTreeMap<u64, BTreeMap<String, String>>;

/// Cosignatures stored beside a log.
#[derive(Debug, Clone)]
pub struct Cosignatures {
    pool: SqlitePool,
}

impl Cosignatures {
    /// Opens the cosignatures of the log in `data_dir` (the log must exist:
    /// opening it applies the schema).
    pub async fn open(data_dir: &Path) -> Result<Self, StoreError> {
        let path = data_dir.join(DB_FILE);
        if !path.exists() {
            return Err(StoreError::NoLog(data_dir.to_path_buf()));
        }
        let pool = SqlitePoolOptions::new().max_connections(2).connect_with(connect_options(&path)).await?;
        Ok(Self { pool })
    }

    /// Keeps `witness`'s signature line on the checkpoint of `tree_size`
    /// (a newer line for the same size replaces the older).
    pub async fn record(&self, witness: &str, tree_size: u64, line: &str, received_ms: u64) -> Result<(), StoreError> {
        sqlx::query("INSERT OR REPLACE INTO cosignatures (witness, tree_size, line, received_ms) VALUES (?, ?, ?, ?)")
            .bind(witness)
            .bind(to_i64(tree_size))
            .bind(line)
            .bind(to_i64(received_ms))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// The largest size `witness` cosigned and when its cosignature arrived (Unix ms).
    pub async fn latest(&self, witness: &str) -> Result<Option<(u64, u64)>, StoreError> {
        let row: Option<(i64, i64)> = sqlx::query_as(
            "SELECT tree_size, received_ms FROM cosignatures WHERE witness = ? ORDER BY tree_size DESC LIMIT 1",
        )
        .bind(witness)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row.map(|(size, at)| (to_u64(size), to_u64(at))))
    }

    /// Every cosignature line on the checkpoint of `tree_size`, by witness.
    pub async fn lines(&self, tree_size: u64) -> Result<BTreeMap<String, String>, StoreError> {
        let rows: Vec<(String, String)> =
            sqlx::query_as("SELECT witness, line FROM cosignatures WHERE tree_size = ? ORDER BY witness")
                .bind(to_i64(tree_size))
                .fetch_all(&self.pool)
                .await?;
        Ok(rows.into_iter().collect())
    }

    /// The `limit` largest cosigned sizes, each with its lines.
    pub async fn recent(&self, limit: u32) -> Result<CosignedSizes, StoreError> {
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT tree_size, witness, line FROM cosignatures WHERE tree_size IN \
             (SELECT DISTINCT tree_size FROM cosignatures ORDER BY tree_size DESC LIMIT ?)",
        )
        .bind(limit)
        .fetch_all(&self.pool)
        .await?;
        let mut sizes = CosignedSizes::new();
        for (size, witness, line) in rows {
            sizes.entry(to_u64(size)).or_default().insert(witness, line);
        }
        Ok(sizes)
    }

    /// Thins the stored history; returns the rows removed. Every line on a
    /// size cosigned in the last `dense_ms` stays, and so does each
    /// witness's largest size per `sparse_ms` before that (all witnesses'
    /// lines on a kept size stay with it, so a quorum kept stays whole). A
    /// witness's latest line is the largest of its period, so it stays.
    ///
    /// Why thin at all: a round follows every seal, so a busy log stores a
    /// line per witness several times a second, forever, though only the
    /// latest witnessed checkpoint is served and a verifier holding an older
    /// note needs a consistency proof, not the old cosignatures. The sparse
    /// history keeps the explorer's and an operator's view of when each
    /// witness kept up.
    pub async fn prune(&self, now_ms: u64, dense_ms: u64, sparse_ms: u64) -> Result<u64, StoreError> {
        let cutoff = now_ms.saturating_sub(dense_ms);
        let removed = sqlx::query(
            "DELETE FROM cosignatures WHERE received_ms < ?1 AND tree_size NOT IN \
             (SELECT max(tree_size) FROM cosignatures GROUP BY witness, received_ms / ?2)",
        )
        .bind(to_i64(cutoff))
        .bind(to_i64(sparse_ms.max(1)))
        .execute(&self.pool)
        .await?
        .rows_affected();
        Ok(removed)
    }

    /// Closes the connections.
    pub async fn close(self) {
        self.pool.close().await;
    }
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn to_u64(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}
