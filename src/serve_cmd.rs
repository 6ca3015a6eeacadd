//! `sealmq serve`: the broker.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Args;
use sealmq_broker::net::transport::Listener;
use sealmq_broker::{Broker, BrokerConfig};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// A TOML configuration file (see broker/sealmq.example.toml); without
    /// one, the embedded defaults are used.
    #[arg(long, env = "SEALMQ_CONFIG")]
    config: Option<PathBuf>,
    /// MQTT listener address (default 0.0.0.0:1883).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// HTTP listener address for auditors (default 127.0.0.1:8080).
    #[arg(long)]
    http: Option<SocketAddr>,
    /// A C2SP tlog-policy file naming the witnesses to ask for
    /// cosignatures and their quorum (overrides witnessing.policy).
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Serve even if the witnesses show this database is an older or
    /// diverging copy of the log (a restored backup). Logged as an error.
    #[arg(long)]
    accept_rollback: bool,
}

pub async fn run(data: Option<PathBuf>, args: ServeArgs) -> Result<ExitCode> {
    let mut config = match &args.config {
        Some(path) => BrokerConfig::from_file(path)?,
        None => BrokerConfig::default(),
    };
    if let Some(data) = data {
        config.data = data;
    }
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(http) = args.http {
        config.http = http;
    }
    if let Some(policy) = args.policy {
        config.witnessing.policy = Some(policy);
    }
    config.accept_rollback = args.accept_rollback;
    config.check()?;
    // Past a file-size limit (ulimit -f, systemd's LimitFSIZE=) the kernel
    // sends SIGXFSZ, whose default action kills the process. With a handler
    // installed the write fails with EFBIG instead: the log refuses the
    // append, the broker stops acknowledging and says why, as when the disk
    // is full. (25 is SIGXFSZ on Linux.)
    #[cfg(target_os = "linux")]
    let _file_size_signal = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(25))
        .context("installing the SIGXFSZ handler")?;
    let data = config.data.clone();
    let stop = StopSignals::install()?;
    let broker =
        Broker::start(config).await.with_context(|| format!("starting the broker (data in {})", data.display()))?;
    // The banner goes to stdout: scripts and tests read the addresses from it.
    println!("sealmq {} serving", env!("CARGO_PKG_VERSION"));
    for (kind, addr) in broker.listeners() {
        match kind {
            Listener::Mqtt | Listener::Mqtts => println!("  {:<9} {addr}", kind.scheme()),
            Listener::Ws | Listener::Wss => println!("  {:<9} {}://{addr}/mqtt", kind.scheme(), kind.scheme()),
        }
    }
    println!("  http      http://{}", broker.http_addr());
    println!("  data      {}", data.display());
    println!("  vkey      {}", broker.verifier_key());
    if let Some(witness) = broker.witness_key() {
        println!("  witness   {witness}");
    }
    tracing::info!(mqtt = %broker.mqtt_addr(), http = %broker.http_addr(), "serving");

    stop.wait().await?;
    tracing::info!("shutting down: finishing in-flight appends, sealing the last block");
    let stats = broker.stats();
    tracing::info!(
        accepted = stats.routed_total(),
        rejected = stats.rejected_total(),
        duplicates = stats.duplicates_total(),
        refused_connections = stats.refused_total(),
        dropped_deliveries = stats.dropped_total(),
        "publishes and connections since start"
    );
    broker.shutdown().await.context("closing the log")?;
    // Whoever started us may have closed our stdout by now; a failed
    // goodbye is no reason to exit with a panic after a clean stop.
    let _ = writeln!(std::io::stdout(), "sealmq stopped cleanly");
    Ok(ExitCode::SUCCESS)
}

/// SIGINT (Ctrl-C) and SIGTERM, caught from the moment this is made: make
/// it before announcing anything, so that a signal sent right after the
/// banner stops the process cleanly rather than killing it.
pub struct StopSignals {
    #[cfg(unix)]
    interrupt: tokio::signal::unix::Signal,
    #[cfg(unix)]
    terminate: tokio::signal::unix::Signal,
}

impl StopSignals {
    /// Installs the handlers.
    pub fn install() -> Result<Self> {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Ok(Self {
                interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
                terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
            })
        }
        #[cfg(not(unix))]
        Ok(Self {})
    }

    /// Waits for either signal.
    pub async fn wait(mut self) -> Result<()> {
        #[cfg(unix)]
        tokio::select! {
            _ = self.interrupt.recv() => {}
            _ = self.terminate.recv() => {}
        }
        #[cfg(not(unix))]
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        Ok(())
    }
}
