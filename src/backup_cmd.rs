//! `sealmq backup` and `sealmq restore`: an online copy of the log, and
//! putting one back.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use sealmq_audit::store::{BackupError, Progress, Replace, backup, restore};

use crate::EXIT_FAILED_CHECK;

#[derive(Debug, Args)]
pub struct BackupArgs {
    /// The directory to write the backup to: new, or empty. It gets the
    /// log (log.db), its private key (log.key) and manifest.json, mode 0700.
    dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// A directory written by `sealmq backup`.
    backup: PathBuf,
    /// The data directory to restore the log into (`--data` is not used:
    /// the target of a restore is always named).
    data_dir: PathBuf,
    /// Replace the log the data directory already holds. Its files are
    /// moved to DATA_DIR/replaced-<unix ms>/, not deleted.
    #[arg(long)]
    force: bool,
    /// With --force, replace the log even when it is this same log with
    /// more records than the backup: a rollback (README, "Backup and
    /// restore"). Witnesses that cosigned more will still make the broker
    /// refuse to serve it.
    #[arg(long, requires = "force")]
    accept_rollback: bool,
}

/// `sealmq backup DIR`: copies the log in `data` while a broker may serve it.
pub async fn run_backup(data: &Path, args: BackupArgs) -> Result<ExitCode> {
    eprintln!("backing up {} to {}", data.display(), args.dir.display());
    let manifest = match backup(data, &args.dir, progress_printer()).await {
        Ok(manifest) => manifest,
        Err(BackupError::Verify(failure)) => {
            println!("FAILED: the copy does not verify: {failure}");
            println!("(the backup in {} is not usable; it has no manifest)", args.dir.display());
            return Ok(ExitCode::from(EXIT_FAILED_CHECK));
        }
        Err(e) => return Err(e).with_context(|| format!("backing up {}", data.display())),
    };
    println!(
        "ok: backed up {} records, tree size {} ({}), verified, to {}",
        manifest.records,
        manifest.tree_size,
        manifest.vkey,
        args.dir.display()
    );
    println!("  the backup holds the log's private key: keep it as secret as the data directory");
    Ok(ExitCode::SUCCESS)
}

/// `sealmq restore BACKUP DATA_DIR [--force]`.
pub async fn run_restore(data: Option<&Path>, args: RestoreArgs) -> Result<ExitCode> {
    if let Some(data) = data
        && data != args.data_dir
    {
        bail!(
            "restore names its target data directory ({}); --data (or SEALMQ_DATA) names another ({})",
            args.data_dir.display(),
            data.display()
        );
    }
    eprintln!("restoring {} into {}", args.backup.display(), args.data_dir.display());
    let replace = Replace { force: args.force, accept_rollback: args.accept_rollback };
    let restored = match restore(&args.backup, &args.data_dir, replace, progress_printer()).await {
        Ok(restored) => restored,
        Err(BackupError::Verify(failure)) => {
            println!("FAILED: the backup does not verify: {failure}");
            println!("(nothing in {} was changed)", args.data_dir.display());
            return Ok(ExitCode::from(EXIT_FAILED_CHECK));
        }
        Err(e) => return Err(e).with_context(|| format!("restoring {}", args.backup.display())),
    };
    let manifest = &restored.manifest;
    println!(
        "ok: restored {} records, tree size {} ({}), verified, into {}",
        manifest.records,
        manifest.tree_size,
        manifest.vkey,
        args.data_dir.display()
    );
    if let Some(replaced) = &restored.replaced {
        let what = match (&replaced.vkey, replaced.records) {
            (Some(vkey), Some(records)) => format!("the log {vkey} with {records} records"),
            _ => "a log that could not be read".to_string(),
        };
        println!("  replaced {what}; its files are in {}", replaced.moved_to.display());
        if replaced.vkey.as_deref() == Some(manifest.vkey.as_str())
            && let Some(lost) = replaced.records.and_then(|r| r.checked_sub(manifest.records)).filter(|&n| n > 0)
        {
            println!(
                "  warning: this rolls the log back by {lost} records (--accept-rollback); witnesses that cosigned \
                 past tree size {} will make the broker refuse to serve it",
                manifest.tree_size
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Prints the verification's progress to stderr, at most once a second.
fn progress_printer() -> impl FnMut(Progress) {
    let started = Instant::now();
    let mut last = Instant::now();
    move |p: Progress| {
        if last.elapsed() >= Duration::from_secs(1) {
            last = Instant::now();
            let rate = p.records as f64 / started.elapsed().as_secs_f64();
            eprintln!("  verifying: {} of {} records ({rate:.0}/s)", p.records, p.total);
        }
    }
}
