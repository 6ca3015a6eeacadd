//! `sealmq archive --below SIZE DIR`: sealed history to a C2SP tlog-tiles
//! directory, checked, then removed from the log.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use sealmq_audit::store::archive::{ArchiveDir, ArchiveError, archive};

use crate::EXIT_FAILED_CHECK;

#[derive(Debug, Args)]
pub struct ArchiveArgs {
    /// Archive below the largest checkpoint size at most this.
    #[arg(long)]
    below: u64,
    /// The archive directory (created, or extended when it holds this
    /// log's previous archive).
    dir: PathBuf,
}

pub async fn run(data: &Path, args: ArchiveArgs) -> Result<ExitCode> {
    let dir = ArchiveDir::new(&args.dir);
    let outcome = match archive(data, args.below, &dir).await {
        Ok(outcome) => outcome,
        Err(ArchiveError::CheckFailed(failure)) => {
            println!("FAILED: {failure}");
            println!("nothing was removed from the log");
            return Ok(ExitCode::from(EXIT_FAILED_CHECK));
        }
        Err(e) => return Err(e).with_context(|| format!("archiving {} into {}", data.display(), args.dir.display())),
    };
    if outcome.tree_size == outcome.previous && outcome.files == 0 {
        println!("nothing to archive: the log is archived up to {} already", outcome.previous);
        return Ok(ExitCode::SUCCESS);
    }
    let write = outcome.write_time.as_secs_f64();
    let check = outcome.check_time.as_secs_f64();
    let added = outcome.tree_size - outcome.previous;
    println!(
        "archived [{}, {}) into {}: {} files, {} bytes written ({write:.2} s, {:.0} records/s, {:.1} MB/s)",
        outcome.previous,
        outcome.tree_size,
        args.dir.display(),
        outcome.files,
        outcome.bytes_written,
        added as f64 / write.max(1e-9),
        outcome.bytes_written as f64 / 1e6 / write.max(1e-9),
    );
    println!(
        "checked {} records, {} payloads, {} blocks ({check:.2} s, {:.0} records/s, {:.1} MB/s)",
        outcome.check.records,
        outcome.check.payloads,
        outcome.check.blocks,
        outcome.check.records as f64 / check.max(1e-9),
        outcome.check.bytes as f64 / 1e6 / check.max(1e-9),
    );
    println!("removed from the log: {} records, {} bytes", outcome.records, outcome.bytes);
    Ok(ExitCode::SUCCESS)
}
