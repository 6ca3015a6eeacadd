//! The witness's side: the latest checkpoint it cosigned for each log it
//! follows, in `witness.db`, and its key, `witness.key` (C2SP tlog-witness).
//!
//! A file of its own, not `log.db`: a log restored from an old copy must
//! not take the witness's memory of other logs back with it. Checking a
//! request against the stored state and storing the new state happen in one
//! `BEGIN IMMEDIATE` transaction, as the spec requires (two requests racing
//! must not roll the state back).

use std::path::Path;

use sqlx::sqlite::SqlitePoolOptions;
use sqlx::{Connection, SqlitePool};

use super::reader::connect_options;
use super::{StoreError, io_error, keyfile, now_ms};
use crate::witness::{AddCheckpoint, Cosigned, Refusal, judge, origin_of};
use crate::{Hash, VerifierKey, WitnessKey, sha256};

/// The witness's database in a data directory.
pub const WITNESS_DB: &str = "witness.db";
/// The witness's Ed25519 seed in a data directory (mode 0600).
pub const WITNESS_KEY: &str = "witness.key";

// The schema lives here, not in `migrations/`: that directory is the log
// database's, and this file holds one table that has never changed.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS witness_meta (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS witnessed (
    origin     TEXT PRIMARY KEY,
    tree_size  INTEGER NOT NULL,
    root       BLOB    NOT NULL,
    note       TEXT    NOT NULL, -- the checkpoint as received, with this witness's cosignature
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
";

/// The latest checkpoint cosigned for one log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WitnessedLog {
    /// The log's origin.
    pub origin: String,
    /// The size cosigned.
    pub size: u64,
    /// The note, with the log's signature and this witness's cosignature.
    pub note: String,
    /// When it was cosigned (Unix ms).
    pub updated_ms: u64,
}

/// A witness's key and state.
#[derive(Debug)]
pub struct WitnessStore {
    pool: SqlitePool,
    key: WitnessKey,
}

impl WitnessStore {
    /// Opens (creating when missing) the witness of `data_dir`. Its name is
    /// fixed when its key is made (the key id depends on it): `name`, or
    /// `sealmq-witness/<8 hex digits of the key>`; naming an existing
    /// witness differently is an error.
    pub async fn open(data_dir: &Path, name: Option<&str>) -> Result<Self, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(io_error(data_dir))?;
        let seed = keyfile::load_or_create(&data_dir.join(WITNESS_KEY))?;
        let options = connect_options(&data_dir.join(WITNESS_DB)).create_if_missing(true);
        let pool = SqlitePoolOptions::new().max_connections(2).connect_with(options).await?;
        sqlx::raw_sql(SCHEMA).execute(&pool).await?;
        let default_name = || {
            let public = ed25519_dalek::SigningKey::from_bytes(&seed).verifying_key();
            format!("sealmq-witness/{}", hex::encode(&sha256(public.as_bytes())[..4]))
        };
        sqlx::query("INSERT OR IGNORE INTO witness_meta (name, value) VALUES ('name', ?)")
            .bind(name.map_or_else(default_name, str::to_string))
            .execute(&pool)
            .await?;
        let stored: String =
            sqlx::query_scalar("SELECT value FROM witness_meta WHERE name = 'name'").fetch_one(&pool).await?;
        if let Some(name) = name
            && name != stored
        {
            return Err(StoreError::Key(format!(
                "the witness in {} is named {stored:?}; it cannot be renamed to {name:?} (its key id depends on the name)",
                data_dir.display()
            )));
        }
        let key = WitnessKey::from_seed(&stored, &seed)?;
        Ok(Self { pool, key })
    }

    /// The witness's key.
    pub fn key(&self) -> &WitnessKey {
        &self.key
    }

    /// Applies the C2SP tlog-witness rules to a request, `keys` being the
    /// keys this witness trusts for the request's origin (none: not
    /// followed). On success the new state is stored before the
    /// cosignature line is returned. The outer error is the store's; the
    /// inner one the refusal to answer with.
    pub async fn add_checkpoint(
        &self,
        keys: &[VerifierKey],
        request: &AddCheckpoint,
    ) -> Result<Result<String, Refusal>, StoreError> {
        let origin = match origin_of(request) {
            Ok(origin) => origin,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let row: Option<(i64, Vec<u8>)> = sqlx::query_as("SELECT tree_size, root FROM witnessed WHERE origin = ?")
            .bind(&origin)
            .fetch_optional(&mut *tx)
            .await?;
        let latest = row
            .map(|(size, root)| -> Result<Cosigned, StoreError> {
                let root: Hash =
                    root.try_into().map_err(|_| StoreError::Corrupt("a witnessed root is not 32 bytes".into()))?;
                Ok(Cosigned { size: u64::try_from(size).unwrap_or(0), root })
            })
            .transpose()?;
        let checkpoint = match judge(keys, latest.as_ref(), request) {
            Ok(checkpoint) => checkpoint,
            Err(refusal) => return Ok(Err(refusal)),
        };
        let now = now_ms();
        let text = &request.note[..request.note.rfind("\n\n").map_or(0, |at| at + 1)];
        let line = self.key.cosign(text, now / 1000);
        // The stored note keeps only the log's own signature (other
        // witnesses' lines are theirs to vouch for) and this cosignature.
        let log_line = request
            .note
            .split_inclusive('\n')
            .skip_while(|l| !l.starts_with('\u{2014}'))
            .find(|l| keys.iter().any(|k| k.open(&format!("{text}\n{l}")).is_ok()))
            .unwrap_or_default();
        let note = format!("{text}\n{log_line}{line}");
        sqlx::query(
            "INSERT INTO witnessed (origin, tree_size, root, note, updated_ms) VALUES (?, ?, ?, ?, ?) \
             ON CONFLICT (origin) DO UPDATE SET tree_size = excluded.tree_size, root = excluded.root, \
             note = excluded.note, updated_ms = excluded.updated_ms",
        )
        .bind(&origin)
        .bind(i64::try_from(checkpoint.size).unwrap_or(i64::MAX))
        .bind(checkpoint.root.to_vec())
        .bind(&note)
        .bind(i64::try_from(now).unwrap_or(i64::MAX))
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        tracing::debug!(origin, size = checkpoint.size, "cosigned");
        Ok(Ok(line))
    }

    /// The latest cosigned checkpoint of every log this witness has cosigned.
    pub async fn logs(&self) -> Result<Vec<WitnessedLog>, StoreError> {
        let rows: Vec<(String, i64, String, i64)> =
            sqlx::query_as("SELECT origin, tree_size, note, updated_ms FROM witnessed ORDER BY origin")
                .fetch_all(&self.pool)
                .await?;
        Ok(rows
            .into_iter()
            .map(|(origin, size, note, updated_ms)| WitnessedLog {
                origin,
                size: u64::try_from(size).unwrap_or(0),
                note,
                updated_ms: u64::try_from(updated_ms).unwrap_or(0),
            })
            .collect())
    }

    /// Closes the connections.
    pub async fn close(self) {
        self.pool.close().await;
    }
}
