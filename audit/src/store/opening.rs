//! What opening the log for writing checks first: the data directory's
//! lock, and the origin and key the log was created with.

use std::fs::File;
use std::path::Path;
use std::str::FromStr;

use sqlx::{Connection, SqliteConnection};

use super::super::{KEY_FILE, LogConfig, StoreError, io_error, now_ms};
use super::LOCK_FILE;
use crate::LogKey;

pub(in crate::store) fn lock_data_dir(dir: &Path) -> Result<File, StoreError> {
    let path = dir.join(LOCK_FILE);
    let file = File::options().create(true).truncate(false).write(true).open(&path).map_err(io_error(&path))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => Err(StoreError::Locked(dir.to_path_buf())),
        Err(std::fs::TryLockError::Error(e)) => Err(io_error(&path)(e)),
    }
}

/// Records the origin and verifier key of a new log, or checks that the key
/// file and configured origin match an existing one.
pub(super) async fn init_meta(
    conn: &mut SqliteConnection,
    config: &LogConfig,
    seed: &[u8; 32],
) -> Result<LogKey, StoreError> {
    let stored: Option<String> =
        sqlx::query_scalar("SELECT value FROM log_meta WHERE name = 'origin'").fetch_optional(&mut *conn).await?;
    if let Some(existing) = stored {
        if let Some(configured) = &config.origin
            && configured != &existing
        {
            return Err(StoreError::OriginChanged { existing, configured: configured.clone() });
        }
        let key = LogKey::from_seed(&existing, seed)?;
        let vkey: String =
            sqlx::query_scalar("SELECT value FROM log_meta WHERE name = 'vkey'").fetch_one(&mut *conn).await?;
        if crate::VerifierKey::from_str(&vkey)? != key.verifier() {
            return Err(StoreError::Key(format!(
                "{KEY_FILE} is not the key this log was created with (the log's verifier key is {vkey})"
            )));
        }
        return Ok(key);
    }
    let origin = match &config.origin {
        Some(origin) => origin.clone(),
        None => {
            let mut id = [0u8; 8];
            getrandom::fill(&mut id).map_err(|e| StoreError::Key(format!("no randomness: {e}")))?;
            format!("sealmq.local/{}", hex::encode(id))
        }
    };
    let key = LogKey::from_seed(&origin, seed)?;
    let mut tx = conn.begin().await?;
    for (name, value) in
        [("origin", origin.clone()), ("vkey", key.verifier().to_string()), ("created_ms", now_ms().to_string())]
    {
        sqlx::query("INSERT INTO log_meta (name, value) VALUES (?, ?)")
            .bind(name)
            .bind(value)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    tracing::info!(origin, vkey = %key.verifier(), "created a new log");
    Ok(key)
}
