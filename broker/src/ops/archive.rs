//! The `[archive]` section: a mounted archive the HTTP API answers archived
//! records from, and the automatic policy that archives old history.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use sealmq_audit::store::LogReader;
use sealmq_audit::store::archive::{ArchiveDir, archive, archived_size};
use sealmq_audit::tiles::TILE_WIDTH;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::metrics::Metrics;

/// `[archive]`: where the archive lives and when to extend it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ArchiveConfig {
    /// The archive directory (`sealmq archive … DIR`). When set, `/tile/…`,
    /// `/v1/proof/N` and `/v1/records/N` answer archived records from it;
    /// when not, they answer 410 Gone.
    pub dir: Option<PathBuf>,
    /// Keep at least this many of the newest records in the database and
    /// archive the rest into `dir`, checked every `check_interval_s`. Off
    /// when unset.
    pub keep_records: Option<u64>,
    /// Seconds between checks of the policy.
    pub check_interval_s: u64,
}

impl Default for ArchiveConfig {
    fn default() -> Self {
        Self { dir: None, keep_records: None, check_interval_s: 60 }
    }
}

impl ArchiveConfig {
    /// The section's own rules (called by `BrokerConfig::validate`).
    pub fn validate(&self) -> Result<(), String> {
        if self.keep_records.is_some() && self.dir.is_none() {
            return Err("archive.keep_records needs archive.dir".into());
        }
        if self.check_interval_s == 0 {
            return Err("archive.check_interval_s must be at least 1".into());
        }
        Ok(())
    }

    /// The mounted archive, if any.
    pub fn mounted(&self) -> Option<ArchiveDir> {
        self.dir.as_ref().map(ArchiveDir::new)
    }
}

/// Which size the policy archives below now, if any: the head less
/// `keep`, once that has passed a whole entry bundle beyond the archived
/// size (archiving less would rewrite the same partial tile each time).
pub fn policy_target(head: u64, archived: u64, keep: u64) -> Option<u64> {
    let target = head.checked_sub(keep)?;
    (target / TILE_WIDTH > archived / TILE_WIDTH).then_some(target)
}

/// The automatic policy: every `check_interval_s`, archives below
/// head − `keep_records` when a tile boundary was passed. Each run's
/// (records, bytes) removed are logged and counted in `metrics`. Runs
/// until `shutdown`.
pub async fn run_policy(
    data: PathBuf,
    reader: LogReader,
    config: ArchiveConfig,
    metrics: Arc<Metrics>,
    mut shutdown: watch::Receiver<bool>,
) {
    let (Some(dir), Some(keep)) = (config.mounted(), config.keep_records) else { return };
    let every = Duration::from_secs(config.check_interval_s);
    loop {
        tokio::select! {
            () = tokio::time::sleep(every) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        match policy_once(&data, &reader, &dir, keep).await {
            Ok(Some((records, bytes))) => metrics.archived(records, bytes),
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, dir = %dir.root().display(), "automatic archive failed; nothing was removed");
            }
        }
    }
}

async fn policy_once(
    data: &Path,
    reader: &LogReader,
    dir: &ArchiveDir,
    keep: u64,
) -> Result<Option<(u64, u64)>, Box<dyn std::error::Error + Send + Sync>> {
    let head = reader.latest_block().await?.map_or(0, |b| b.header.tree_size);
    let archived = archived_size(reader.pool()).await?;
    let Some(target) = policy_target(head, archived, keep) else { return Ok(None) };
    // On a blocking thread of its own: a run reads and writes for a while,
    // and its future (sqlx's transactions) is not one tokio can move
    // between worker threads.
    let (data, dir) = (data.to_path_buf(), dir.clone());
    let runtime = tokio::runtime::Handle::current();
    let outcome = tokio::task::spawn_blocking(move || runtime.block_on(archive(&data, target, &dir))).await??;
    tracing::info!(
        from = outcome.previous,
        to = outcome.tree_size,
        records = outcome.records,
        bytes = outcome.bytes,
        "archived sealed history (automatic policy)"
    );
    Ok(Some((outcome.records, outcome.bytes)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_waits_for_a_tile_boundary() {
        assert_eq!(policy_target(1000, 0, 2000), None, "fewer records than kept");
        assert_eq!(policy_target(1000, 0, 800), None, "200 records: not a whole tile yet");
        assert_eq!(policy_target(1000, 0, 700), Some(300));
        assert_eq!(policy_target(1000, 300, 400), Some(600));
        assert_eq!(policy_target(1000, 300, 500), None, "still inside the tile the last run ended in");
    }

    #[test]
    fn keep_records_needs_a_directory() {
        let config = ArchiveConfig { keep_records: Some(10), ..ArchiveConfig::default() };
        assert!(config.validate().is_err());
    }
}
