//! Archives of sealed history: a log's records `[0, size)` as a C2SP
//! tlog-tiles static directory, checked against the log and then removed
//! from the database (`sealmq archive`).
//!
//! - [`layout`]: the directory ([`ArchiveDir`]): the C2SP files
//!   (`checkpoint`, `tile/…`) and beside them, under `sealmq/`, the stored
//!   payloads and the block headers; atomic writes, reads for serving.
//! - [`write`]: [`archive()`], the whole run: write, check, prune.
//! - [`check`]: [`check_archive`], an archive re-read from disk against
//!   itself, its signed checkpoint and the log.
//! - [`prune`]: the one transaction that removes archived rows.
//! - [`gap`]: what readers of the log need to step over the archived gap.

mod check;
pub mod gap;
mod layout;
mod prune;
mod write;

use std::path::PathBuf;

pub(crate) use check::verdict;
pub use check::{ArchiveCheck, ArchiveFailure, check_archive};
pub use gap::archived_size;
pub use layout::ArchiveDir;
pub use write::{ArchiveOutcome, archive};

use super::StoreError;
use crate::tiles::TileError;

/// Why an archive could not be written, read or checked at all.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// The log's database failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A file of the archive could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// A file of the archive is not what its path says.
    #[error("{path}: {source}")]
    Tile {
        /// The file, relative to the archive directory.
        path: String,
        /// What is wrong with it.
        source: TileError,
    },
    /// The request cannot be carried out as asked.
    #[error("{0}")]
    Refused(String),
    /// The written archive does not check; nothing was removed.
    #[error("the written archive does not check, nothing was removed from the log: {0}")]
    CheckFailed(ArchiveFailure),
}

impl From<sqlx::Error> for ArchiveError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.into())
    }
}
