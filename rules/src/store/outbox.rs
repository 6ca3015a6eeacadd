//! `sealmq rule add/remove`: changes queued for the log.

use std::path::Path;
use std::time::Duration;

use sealmq_audit::store::{DB_FILE, Registry, StoreError, now_ms};
use sealmq_audit::{Record, RuleEvent, RuleRecord};
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection, SqliteConnection};

use super::{MAX_ACTIVE_RULES, RuleHistoryEntry, RuleStoreError, fold_rules, rule_records};
use crate::document::RuleDocument;

/// What a queued change is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleChange {
    /// The kind-3 record queued for the log.
    pub record: RuleRecord,
    /// For an install: an active (or queued) rule of that name is replaced.
    pub replaces: bool,
    /// `registry_version` after the change (the broker polls it).
    pub version: u64,
}

/// Writes rule changes into `rule_outbox` for the sequencer to log.
///
/// Safe while a broker runs: each change is one short `BEGIN IMMEDIATE`
/// transaction. It never appends to the log itself.
#[derive(Debug, Clone)]
pub struct RuleOutbox {
    pool: SqlitePool,
}

impl RuleOutbox {
    /// Opens the outbox of `data_dir`'s `log.db`, creating the database
    /// (schema only) when missing, like the device registry does.
    pub async fn open(data_dir: &Path) -> Result<Self, RuleStoreError> {
        // The registry creates the directory and brings the schema up to date.
        Registry::open(data_dir).await?.close().await;
        let options = SqliteConnectOptions::new()
            .filename(data_dir.join(DB_FILE))
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(1).connect_with(options).await?;
        Ok(Self { pool })
    }

    /// Closes the handle.
    pub async fn close(self) {
        self.pool.close().await;
    }

    /// Queues the install of the rule document in `path`.
    pub async fn install_file(&self, path: &Path) -> Result<RuleChange, RuleStoreError> {
        let bytes = std::fs::read(path).map_err(|source| RuleStoreError::Io { path: path.to_path_buf(), source })?;
        self.install(&bytes).await
    }

    /// Queues the install of `document`, byte for byte, after checking it
    /// ([`RuleDocument::parse`]) and that at most [`MAX_ACTIVE_RULES`]
    /// would be active. A rule of the same name is replaced.
    pub async fn install(&self, document: &[u8]) -> Result<RuleChange, RuleStoreError> {
        let rule = RuleDocument::parse(document)?;
        let record = RuleRecord {
            at_ms: now_ms(),
            rule_name: rule.name().to_string(),
            event: RuleEvent::Installed { document: document.to_vec() },
        };
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let active = pending_rules(&mut tx).await?;
        let replaces = active.rule(rule.name()).is_some();
        if !replaces && active.len() >= MAX_ACTIVE_RULES {
            return Err(RuleStoreError::TooManyRules);
        }
        let version = queue(&mut tx, &record).await?;
        tx.commit().await?;
        Ok(RuleChange { record, replaces, version })
    }

    /// Queues the removal of rule `name`; refused when no rule of that name
    /// is active (or queued to be).
    pub async fn remove(&self, name: &str) -> Result<RuleChange, RuleStoreError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        if pending_rules(&mut tx).await?.rule(name).is_none() {
            return Err(RuleStoreError::UnknownRule(name.chars().take(80).collect()));
        }
        let record = RuleRecord { at_ms: now_ms(), rule_name: name.to_string(), event: RuleEvent::Removed };
        let version = queue(&mut tx, &record).await?;
        tx.commit().await?;
        Ok(RuleChange { record, replaces: false, version })
    }
}

/// The rules active once the log and then the queued changes are folded in.
async fn pending_rules(conn: &mut SqliteConnection) -> Result<crate::Rules, RuleStoreError> {
    let mut entries = rule_records(&mut *conn).await?;
    let mut next = entries.last().map_or(0, |e| e.index + 1);
    let queued: Vec<Vec<u8>> =
        sqlx::query_scalar("SELECT record FROM rule_outbox ORDER BY seq").fetch_all(&mut *conn).await?;
    for bytes in queued {
        match Record::decode(&bytes) {
            Ok(Record::Rule(record)) => {
                entries.push(RuleHistoryEntry { index: next, record });
                next += 1;
            }
            _ => tracing::warn!("rule_outbox holds a row that is no rule record; the sequencer will refuse it"),
        }
    }
    Ok(fold_rules(&entries))
}

/// Queues `record` and bumps `registry_version`; the new version.
async fn queue(conn: &mut SqliteConnection, record: &RuleRecord) -> Result<u64, RuleStoreError> {
    let bytes = Record::Rule(record.clone())
        .encode()
        .map_err(|e| StoreError::Corrupt(format!("cannot encode a rule record: {e}")))?;
    sqlx::query("INSERT INTO rule_outbox (record) VALUES (?)").bind(bytes).execute(&mut *conn).await?;
    let version: i64 =
        sqlx::query_scalar("UPDATE registry_version SET version = version + 1 WHERE id = 1 RETURNING version")
            .fetch_one(&mut *conn)
            .await?;
    Ok(u64::try_from(version).unwrap_or(0))
}
