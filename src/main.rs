//! `sealmq`: the broker and its auditor tools.

mod archive_cmd;
mod audit_cmd;
mod device_cmd;
mod rule_cmd;
mod serve_cmd;
mod witness_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use tracing_subscriber::EnvFilter;

/// sealmq: an MQTT broker with a built-in, tamper-evident audit log.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The data directory: the log database and the log key [default: ./sealmq-data].
    #[arg(long, global = true, env = "SEALMQ_DATA")]
    data: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker: MQTT on 0.0.0.0:1883, HTTP on 127.0.0.1:8080, data
    /// in ./sealmq-data, unless configured otherwise.
    Serve(serve_cmd::ServeArgs),
    /// Verify the log, prove records, check proofs offline.
    #[command(subcommand)]
    Audit(audit_cmd::AuditCommand),
    /// Register devices and their keys, policy, password and ACL.
    #[command(subcommand)]
    Device(device_cmd::DeviceCommand),
    /// Rules: install, list, show, remove, and test one without installing.
    #[command(subcommand)]
    Rule(rule_cmd::RuleCommand),
    /// Create the data directory's log and witness keys when missing and
    /// print their verifier keys (for peers' policies and witness lists).
    Init(witness_cmd::InitArgs),
    /// Witness other logs (C2SP tlog-witness) without a broker.
    #[command(subcommand)]
    Witness(witness_cmd::WitnessCommand),
    /// Write sealed history to a C2SP tlog-tiles directory, check it, and
    /// remove it from the log (see the README's "Archives").
    Archive(archive_cmd::ArchiveArgs),
}

/// Where the data lives unless `--data` or the configuration says otherwise.
const DEFAULT_DATA: &str = "./sealmq-data";

/// Exit code when a check was carried out and found the log or a proof wrong.
pub const EXIT_FAILED_CHECK: u8 = 1;
/// Exit code when the command could not be carried out (bad input, I/O).
pub const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    // rumqttd reports every routine disconnect as an error; the gateway
    // logs what matters about each connection itself.
    let default_filter = match cli.command {
        Command::Serve(_) | Command::Witness(witness_cmd::WitnessCommand::Serve { .. }) => "info,rumqttd=off",
        _ => "warn,rumqttd=off",
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter)))
        .with_writer(std::io::stderr)
        // Colours for people at a terminal, plain text for log files and journald.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let data = cli.data.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_DATA));
    let outcome = runtime.block_on(async {
        match cli.command {
            // The data directory may also come from the configuration file.
            Command::Serve(args) => serve_cmd::run(cli.data, args).await,
            Command::Audit(command) => audit_cmd::run(&data, command).await,
            Command::Device(command) => device_cmd::run(&data, command).await,
            Command::Rule(command) => rule_cmd::run(&data, command).await,
            Command::Init(args) => witness_cmd::init(&data, args).await,
            Command::Witness(command) => witness_cmd::run(&data, command).await,
            Command::Archive(args) => archive_cmd::run(&data, args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {}", describe(&e));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// The error and its causes, each cause once: many errors already name
/// their source in their own message, which `{:#}` would repeat.
fn describe(error: &anyhow::Error) -> String {
    let mut text = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    text
}
