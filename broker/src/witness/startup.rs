//! The check on start: before the broker accepts anyone, its witnesses say
//! whether this database is behind what they cosigned (an older copy put
//! back) or diverges from it (a copy that grew apart). Either refuses the
//! start, unless the operator overrides it explicitly: serving from a
//! rolled-back log would let replayed signed messages through again, since
//! their replay windows went back with it.

use futures_util::future::join_all;
use sealmq_audit::store::StoreError;

use super::cosigning::Witnessing;
use super::exchange::{Outcome, exchange};

/// What the witnesses showed about this log on start.
#[derive(Debug, thiserror::Error)]
pub enum RollbackError {
    /// At least one witness holds a larger or different tree of this log.
    #[error(
        "refusing to serve: {0}. The database is an older or diverging copy of this log (a rollback or fork); \
         restore the latest copy, or start with --accept-rollback to serve it anyway (logged)"
    )]
    Refused(String),
    /// The log could not be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Asks every witness with a URL about the latest sealed checkpoint.
/// Witnesses that cannot be reached or refuse for other reasons are warned
/// about, not waited for: a witness outage must not stop the broker.
pub async fn check(witnessing: &Witnessing, accept_rollback: bool) -> Result<(), RollbackError> {
    let (client, reader, store) = witnessing.parts();
    let Some(block) = reader.latest_block().await? else {
        return Ok(());
    };
    let size = block.header.tree_size;
    let answers = join_all(witnessing.targets().map(|(_, target)| {
        let block = &block;
        async move { (target.name.to_string(), exchange(client, reader, store, &target, block).await) }
    }))
    .await;
    let mut evidence = Vec::new();
    let mut confirmed = 0;
    for (name, outcome) in answers {
        match outcome? {
            Outcome::Cosigned => confirmed += 1,
            Outcome::Behind { witness_size } => evidence.push(format!(
                "witness {name} cosigned size {witness_size} of this log, but this database holds only {size} records (rollback)"
            )),
            Outcome::Fork { why } => evidence.push(format!("witness {name}: {why} (fork)")),
            Outcome::Refused { status, why } => {
                tracing::warn!(witness = name, status, "could not confirm the log with this witness on start: {why}");
            }
        }
    }
    if evidence.is_empty() {
        tracing::info!(size, confirmed, "witnesses confirmed the log on start");
        return Ok(());
    }
    let evidence = evidence.join("; ");
    if accept_rollback {
        tracing::error!(
            "--accept-rollback: serving a log its witnesses contradict: {evidence}. Replay protection is only as recent as this database"
        );
        return Ok(());
    }
    Err(RollbackError::Refused(evidence))
}
