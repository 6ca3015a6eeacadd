//! `sealmq init` and `sealmq witness …`: the keys a data directory holds,
//! and sealmq as a standalone witness (C2SP tlog-witness).

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use sealmq_audit::VerifierKey;
use sealmq_audit::store::{Log, LogConfig, WitnessStore};
use sealmq_broker::config::Limits;
use sealmq_broker::witness::WitnessService;

#[derive(Debug, Args)]
pub struct InitArgs {
    /// The log's origin, its name in checkpoints (only when the log is new).
    #[arg(long)]
    origin: Option<String>,
    /// The witness key's name (only when the witness key is new).
    #[arg(long)]
    witness_name: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum WitnessCommand {
    /// Witness logs over HTTP (C2SP tlog-witness): POST
    /// /witness/add-checkpoint, GET /witness/v1/logs. State in
    /// DATA/witness.db, key in DATA/witness.key.
    Serve {
        /// HTTP listener address.
        #[arg(long, default_value = "127.0.0.1:8081")]
        listen: SocketAddr,
        /// A log to witness: its verifier key (repeat for more logs).
        #[arg(long = "log", required = true)]
        logs: Vec<String>,
        /// The witness key's name (only when the key is new).
        #[arg(long)]
        name: Option<String>,
    },
    /// Print the witness's verifier key (creating the key if missing).
    Vkey {
        /// The witness key's name (only when the key is new).
        #[arg(long)]
        name: Option<String>,
    },
}

/// Creates the log and the witness key of a data directory when missing,
/// and prints both public keys: what peers put in their policies and
/// witness lists before any broker runs.
pub async fn init(data: &Path, args: InitArgs) -> Result<ExitCode> {
    let mut config = LogConfig::new(data);
    config.origin = args.origin;
    let log = Log::open(config).await.with_context(|| format!("opening the log in {}", data.display()))?;
    let vkey = log.reader().verifier_key().clone();
    log.close().await.context("closing the log")?;
    let witness = WitnessStore::open(data, args.witness_name.as_deref()).await?;
    println!("log      {vkey}");
    println!("witness  {}", witness.key().verifier());
    witness.close().await;
    Ok(ExitCode::SUCCESS)
}

pub async fn run(data: &Path, command: WitnessCommand) -> Result<ExitCode> {
    match command {
        WitnessCommand::Vkey { name } => {
            let witness = WitnessStore::open(data, name.as_deref()).await?;
            println!("{}", witness.key().verifier());
            witness.close().await;
            Ok(ExitCode::SUCCESS)
        }
        WitnessCommand::Serve { listen, logs, name } => {
            let keys = logs
                .iter()
                .map(|k| k.parse::<VerifierKey>().with_context(|| format!("--log {k:?}")))
                .collect::<Result<Vec<_>>>()?;
            let store = WitnessStore::open(data, name.as_deref()).await?;
            let vkey = store.key().verifier();
            let service = Arc::new(WitnessService::new(store, keys));
            let listener =
                tokio::net::TcpListener::bind(listen).await.with_context(|| format!("cannot listen on {listen}"))?;
            let addr = listener.local_addr()?;
            let signals = crate::serve_cmd::StopSignals::install()?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            let app = sealmq_broker::witness::serve::routes(service);
            let server = tokio::spawn(async move {
                sealmq_broker::http::serve::serve(listener, app, &Limits::default(), stopped).await;
            });
            println!("sealmq {} witness serving", env!("CARGO_PKG_VERSION"));
            println!("  http      http://{addr}");
            println!("  witness   {vkey}");
            println!("  data      {}", data.display());
            tracing::info!(%addr, witness = %vkey, logs = logs.len(), "witnessing");
            signals.wait().await?;
            let _ = stop.send(true);
            let _ = server.await;
            // As for `serve`: stdout may be closed by now.
            let _ = writeln!(std::io::stdout(), "sealmq witness stopped cleanly");
            Ok(ExitCode::SUCCESS)
        }
    }
}
