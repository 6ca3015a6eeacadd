//! Across a gateway's restart (the external router, [`super`]): the
//! lowest log index the gateway had not had acknowledged by the broker,
//! written to a file each second, and read back from there at start, so
//! that a gateway killed with messages logged and acknowledged to their
//! publishers but not yet routed routes them when it comes back.
//!
//! The watermark is the lowest index held by any connection and not yet
//! acknowledged (in memory, in flight, to send again, or still to read back
//! from the log), and never above the log's head of a second before: what
//! was committed then has reached the router since. Written atomically
//! (a new file renamed over the old); an older watermark than the truth
//! only costs records sent twice, which receiving gateways drop.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::Shared;
use super::refill::LogSource;

/// How often the watermark is written.
const EVERY: Duration = Duration::from_secs(1);

/// The watermark a previous run left in `path`, if any.
pub(super) fn read(path: &Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    match text.trim().parse() {
        Ok(index) => Some(index),
        Err(_) => {
            tracing::warn!(path = %path.display(), "external router: unreadable watermark, ignored");
            None
        }
    }
}

/// Writes the watermark to `path` each second, for as long as the router runs.
pub(super) async fn keep(shared: Arc<Shared>, log: LogSource, path: PathBuf) {
    let mut before = log.stats.head();
    let mut written = None;
    let temporary = path.with_extension("tmp");
    loop {
        tokio::time::sleep(EVERY).await;
        let head = log.stats.head();
        let watermark = shared.links.iter().map(|l| l.unacknowledged()).fold(before, u64::min);
        before = head;
        if written == Some(watermark) {
            continue;
        }
        let write = async {
            tokio::fs::write(&temporary, format!("{watermark}\n")).await?;
            tokio::fs::rename(&temporary, &path).await
        };
        match write.await {
            Ok(()) => written = Some(watermark),
            Err(e) => tracing::warn!(path = %path.display(), error = %e, "external router: cannot write the watermark"),
        }
    }
}
