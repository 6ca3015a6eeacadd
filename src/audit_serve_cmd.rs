//! `sealmq audit serve`: a log's HTTP API without its broker.
//!
//! When a gateway dies, its clients move to other gateways, but what it
//! logged must stay provable: subscribers hold its indices, auditors its
//! checkpoints. This serves the same read-only API as the broker's HTTP
//! listener from the data directory (or a restored backup of it), with the
//! archive mounted when there is one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use sealmq_audit::store::archive::ArchiveDir;
use sealmq_audit::store::registry::Registry;
use sealmq_audit::store::{Log, LogConfig, LogReader, StoreError};
use sealmq_broker::config::Limits;
use sealmq_broker::http::standalone::serve_log;
use tokio::sync::watch;

#[derive(Debug, Args)]
pub struct AuditServeArgs {
    /// HTTP listener address.
    #[arg(long, default_value = "127.0.0.1:8080")]
    http: SocketAddr,
    /// The log's archive (`sealmq archive`), for the records the database
    /// no longer holds.
    #[arg(long)]
    archive: Option<PathBuf>,
}

pub async fn run(data: &Path, args: AuditServeArgs) -> Result<ExitCode> {
    // There must be a log: opening one for writing would create it.
    LogReader::open(data).await.with_context(|| format!("opening the log in {}", data.display()))?;
    seal_leftovers(data).await?;
    let reader = LogReader::open(data).await?;
    let registry = Registry::open(data).await.context("opening the device registry")?;
    if let Some(dir) = &args.archive
        && !dir.is_dir()
    {
        anyhow::bail!("--archive {}: no such directory", dir.display());
    }
    let archive = args.archive.map(ArchiveDir::new);
    let listener =
        tokio::net::TcpListener::bind(args.http).await.with_context(|| format!("listening on {}", args.http))?;
    let addr = listener.local_addr()?;
    let signals = crate::serve_cmd::StopSignals::install()?;
    let (stop, shutdown) = watch::channel(false);
    let limits = Limits::default();
    let server = tokio::spawn(async move { serve_log(reader, registry, archive, listener, &limits, shutdown).await });
    // Scripts and tests read the address from stdout, as from `sealmq serve`'s banner.
    println!("sealmq audit serve: the log in {} (read-only)", data.display());
    println!("  http      http://{addr}");
    tracing::info!(http = %addr, "serving the log read-only");
    signals.wait().await?;
    let _ = stop.send(true);
    server.await.context("the HTTP server failed")?;
    Ok(ExitCode::SUCCESS)
}

/// Seals what a killed broker committed but had not sealed yet, so every
/// record it acknowledged is under a served checkpoint. Opening the log for
/// writing does exactly that (as a restarted broker would), then it is
/// closed again: no broker is kept out of the directory. A broker running
/// there holds the log, and seals them itself.
async fn seal_leftovers(data: &Path) -> Result<()> {
    match Log::open(LogConfig::new(data)).await {
        Ok(log) => {
            log.close().await.context("closing the log after sealing")?;
            Ok(())
        }
        Err(StoreError::Locked(_)) => {
            tracing::info!("a broker holds the log; serving what it seals");
            Ok(())
        }
        Err(e) => Err(e).context("opening the log to seal records a crash left unsealed"),
    }
}
