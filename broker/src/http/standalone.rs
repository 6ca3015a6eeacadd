//! The HTTP API of a log that no broker serves here (`sealmq audit
//! serve`): a gateway that died, or a copy of its data directory, keeps
//! its checkpoints, tiles, proofs and records reachable for auditors and
//! for subscribers proving deliveries.
//!
//! The log is only read. Blocks that another process seals later (a
//! restarted gateway on the same directory) are picked up by polling, so
//! `/checkpoint` and live block updates follow it.

use std::time::Duration;

use sealmq_audit::store::archive::ArchiveDir;
use sealmq_audit::store::registry::Registry;
use sealmq_audit::store::{LogReader, SealedBlock};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Limits;
use crate::http::{ApiState, router, serve::serve};

/// How often the latest sealed block is read again.
pub const POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Serves the API of the log `reader` reads (with `registry` for
/// `/v1/devices`, and `archive` mounted for archived records) on
/// `listener` within `limits`, until `shutdown` turns true.
pub async fn serve_log(
    reader: LogReader,
    registry: Registry,
    archive: Option<ArchiveDir>,
    listener: TcpListener,
    limits: &Limits,
    shutdown: watch::Receiver<bool>,
) {
    let latest = match reader.latest_block().await {
        Ok(block) => block,
        Err(e) => {
            tracing::warn!(error = %e, "cannot read the latest block; serving what later reads find");
            None
        }
    };
    let (sealed_tx, sealed) = watch::channel(latest);
    let polling = tokio::spawn(follow_blocks(reader.clone(), sealed_tx, shutdown.clone()));
    let mut api = ApiState::new(reader, registry, sealed, shutdown.clone());
    if let Some(dir) = archive {
        api = api.with_archive(dir);
    }
    serve(listener, router(api), limits, shutdown).await;
    polling.abort();
}

/// Publishes each newer sealed block the log shows, every [`POLL_INTERVAL`].
async fn follow_blocks(
    reader: LogReader,
    sealed: watch::Sender<Option<SealedBlock>>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(POLL_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        match reader.latest_block().await {
            Ok(Some(block)) => {
                let newer = sealed.borrow().as_ref().is_none_or(|seen| seen.header.height < block.header.height);
                if newer {
                    sealed.send_replace(Some(block));
                }
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(error = %e, "reading the latest block"),
        }
    }
}
