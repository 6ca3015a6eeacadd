//! `sealmq`: the broker and its auditor tools.

mod audit_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// sealmq: an MQTT broker with a built-in, tamper-evident audit log.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The data directory: the log database and the log key.
    #[arg(long, global = true, default_value = "./sealmq-data", env = "SEALMQ_DATA")]
    data: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Verify the log, prove records, check proofs offline.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
}

/// Exit code when a check was carried out and found the log or a proof wrong.
pub const EXIT_FAILED_CHECK: u8 = 1;
/// Exit code when the command could not be carried out (bad input, I/O).
pub const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let outcome = runtime.block_on(async {
        match cli.command {
            Command::Audit(command) => audit_cmd::run(&cli.data, command).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}
