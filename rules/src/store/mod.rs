//! Rules in `log.db` (feature `store`).
//!
//! - [`load`]: the engine at the log's head, for the broker to hand to the
//!   sequencer as its follower.
//! - [`RuleOutbox`]: `sealmq rule add/remove`: each change is checked, then
//!   written as a kind-3 record into `rule_outbox` with `registry_version`
//!   bumped, in one transaction (like the device registry's outbox), for
//!   the sequencer to log.
//! - [`active_rules`], [`history`]: what the log says, for `rule list`,
//!   `rule show` and the HTTP API.
//!
//! Which rules are active is never stored: it is a fold over the kind-3
//! records, found through `record_index` (kind 3, sealed records) plus a
//! scan of the records past the last indexed one (not sealed yet).

mod outbox;

use sealmq_audit::store::{LogReader, StoreError};
use sealmq_audit::{DecodeError, Hash, Record, RuleEvent, RuleRecord, sha256};
use sqlx::SqliteConnection;
use thiserror::Error;

use crate::document::RuleError;
use crate::engine::{ActiveRule, Rules};
use crate::eval::RetainedTexts;

pub use outbox::{RuleChange, RuleOutbox};

/// Most active rules; an install past it is refused.
pub const MAX_ACTIVE_RULES: usize = 10_000;

/// Errors reading or writing rules in the store.
#[derive(Debug, Error)]
pub enum RuleStoreError {
    /// The log store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The registry (which creates the schema) failed.
    #[error(transparent)]
    Registry(#[from] sealmq_audit::store::RegistryError),
    /// SQLite failed.
    #[error("database: {0}")]
    Sql(#[from] sqlx::Error),
    /// A stored record does not decode.
    #[error("record {index} does not decode: {error}")]
    Decode {
        /// Its index.
        index: u64,
        /// Why.
        error: DecodeError,
    },
    /// The document is refused.
    #[error("the rule is refused: {0}")]
    Rule(#[from] RuleError),
    /// `remove` of a name that is not active.
    #[error("no active rule is called {0:?}")]
    UnknownRule(String),
    /// Installing would make more than [`MAX_ACTIVE_RULES`] active.
    #[error("{MAX_ACTIVE_RULES} rules are active already; remove one first")]
    TooManyRules,
    /// A file could not be read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// What failed.
        source: std::io::Error,
    },
}

/// One kind-3 record of the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleHistoryEntry {
    /// Its log index.
    pub index: u64,
    /// The decoded record.
    pub record: RuleRecord,
}

impl RuleHistoryEntry {
    /// The installed document's hash (`None` for a removal).
    pub fn hash(&self) -> Option<Hash> {
        match &self.record.event {
            RuleEvent::Installed { document } => Some(sha256(document)),
            RuleEvent::Removed => None,
        }
    }
}

/// Every kind-3 record of the log, in index order.
pub(crate) async fn rule_records(conn: &mut SqliteConnection) -> Result<Vec<RuleHistoryEntry>, RuleStoreError> {
    // Sealed records through the index; the (few) records past the last
    // indexed one by their kind byte.
    let rows: Vec<(i64, Vec<u8>)> = sqlx::query_as(
        "SELECT r.idx, r.body FROM record_index i JOIN records r ON r.idx = i.idx WHERE i.kind = 3 \
         UNION ALL \
         SELECT idx, body FROM records WHERE idx > (SELECT coalesce(max(idx), -1) FROM record_index) \
           AND substr(body, 2, 1) = x'03' \
         ORDER BY 1",
    )
    .fetch_all(&mut *conn)
    .await?;
    rows.into_iter()
        .map(|(idx, body)| {
            let index = u64::try_from(idx).unwrap_or(0);
            match Record::decode(&body) {
                Ok(Record::Rule(record)) => Ok(RuleHistoryEntry { index, record }),
                Ok(_) => Err(RuleStoreError::Decode { index, error: DecodeError::Invalid { field: "kind", value: 3 } }),
                Err(error) => Err(RuleStoreError::Decode { index, error }),
            }
        })
        .collect()
}

/// The rules engine at the log's head: every kind-3 record folded in, the
/// retained texts from the `retained` table and `payloads` (reconcile the
/// table first — [`sealmq_audit::store::Log::reconcile_retained`] — as the
/// broker does at start), next index = the record count.
pub async fn load(reader: &LogReader) -> Result<Rules, RuleStoreError> {
    let mut conn = reader.pool().acquire().await?;
    // One read transaction: the records, the count and the retained table agree.
    sqlx::query("BEGIN").execute(&mut *conn).await?;
    let loaded = load_in(&mut conn, reader).await;
    sqlx::query("ROLLBACK").execute(&mut *conn).await?;
    loaded
}

async fn load_in(conn: &mut SqliteConnection, reader: &LogReader) -> Result<Rules, RuleStoreError> {
    let head: Option<i64> = sqlx::query_scalar("SELECT max(idx) FROM records").fetch_one(&mut *conn).await?;
    let head = head.map_or(0, |m| u64::try_from(m + 1).unwrap_or(0));
    let mut rules = Rules::new(0);
    for entry in rule_records(conn).await? {
        rules.seek(entry.index);
        rules.apply(entry.index, &Record::Rule(entry.record), None);
    }
    let retained: Vec<(String, i64, Option<Vec<u8>>, bool)> = sqlx::query_as(
        "SELECT t.topic, t.idx, p.data, p.file_len IS NOT NULL FROM retained t LEFT JOIN payloads p ON p.idx = t.idx",
    )
    .fetch_all(&mut *conn)
    .await?;
    // Large payloads are files beside the database; their rows hold no bytes.
    let in_files: Vec<u64> =
        retained.iter().filter(|(.., in_file)| *in_file).filter_map(|(_, idx, ..)| u64::try_from(*idx).ok()).collect();
    let mut files = reader.payloads(&in_files).await?;
    for (topic, idx, data, in_file) in retained {
        let index = u64::try_from(idx).unwrap_or(0);
        let payload = if in_file { files.remove(&index) } else { data };
        rules.set_retained(&topic, RetainedTexts::value_of(index, payload.as_deref()));
    }
    rules.seek(head);
    rules.commit();
    Ok(rules)
}

/// The rules active at the log's head, in rule order.
pub async fn active_rules(reader: &LogReader) -> Result<Vec<ActiveRule>, RuleStoreError> {
    let mut conn = reader.pool().acquire().await?;
    Ok(fold_rules(&rule_records(&mut conn).await?).active())
}

pub use history as rule_history;

/// Every install and removal of rule `name`, in index order.
pub async fn history(reader: &LogReader, name: &str) -> Result<Vec<RuleHistoryEntry>, RuleStoreError> {
    let mut conn = reader.pool().acquire().await?;
    Ok(rule_records(&mut conn).await?.into_iter().filter(|e| e.record.rule_name == name).collect())
}

/// The engine with only `entries` folded in (no retained state).
pub(crate) fn fold_rules(entries: &[RuleHistoryEntry]) -> Rules {
    let mut rules = Rules::new(0);
    for entry in entries {
        rules.seek(entry.index);
        rules.apply(entry.index, &Record::Rule(entry.record.clone()), None);
    }
    rules.commit();
    rules
}
