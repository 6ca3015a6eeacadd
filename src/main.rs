//! `sealmq`: the broker and its auditor tools.

mod archive_cmd;
mod audit_cmd;
mod audit_serve_cmd;
mod backup_cmd;
mod check_config_cmd;
mod device_cmd;
mod erase_cmd;
mod rule_cmd;
mod serve_cmd;
mod witness_cmd;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};
use tracing_subscriber::EnvFilter;

/// sealmq: an MQTT broker with a built-in, tamper-evident audit log.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The data directory: the log database and the log key [default: ./sealmq-data].
    #[arg(long, global = true, env = "SEALMQ_DATA")]
    data: Option<PathBuf>,
    /// How log lines are written to stderr: `text` for people, `json` (one
    /// object per line) for log collectors.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "SEALMQ_LOG_FORMAT")]
    log_format: LogFormat,
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
    /// Erase the stored payloads of a device's or a topic's publishes
    /// (records and proofs stay; the erasure is logged).
    Erase(erase_cmd::EraseArgs),
    /// Create the data directory's log and witness keys when missing and
    /// print their verifier keys (for peers' policies and witness lists).
    Init(witness_cmd::InitArgs),
    /// Witness other logs (C2SP tlog-witness) without a broker.
    #[command(subcommand)]
    Witness(witness_cmd::WitnessCommand),
    /// Copy the log (online, while the broker serves) and its key into a new
    /// directory, verify the copy and write its manifest.
    Backup(backup_cmd::BackupArgs),
    /// Put a backup back as a data directory's log, checked against its
    /// manifest and verified (see README, "Backup and restore").
    Restore(backup_cmd::RestoreArgs),
    /// Validate a configuration file and print the effective configuration
    /// (defaults filled in) as TOML; exit 2 naming the offending key.
    CheckConfig(check_config_cmd::CheckConfigArgs),
    /// Write sealed history to a C2SP tlog-tiles directory, check it, and
    /// remove it from the log (see the README's "Archives").
    Archive(archive_cmd::ArchiveArgs),
}

/// See [`Cli::log_format`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum LogFormat {
    Text,
    Json,
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
    let log_format = cli.log_format;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    match log_format {
        LogFormat::Text => tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_writer(std::io::stderr)
            // Colours for people at a terminal, plain text for log files and journald.
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        // The event's fields at the top level beside timestamp, level and
        // target (not nested under "fields"): what log collectors index.
        LogFormat::Json => {
            tracing_subscriber::fmt()
                .json()
                .flatten_event(true)
                .with_env_filter(filter)
                .with_writer(std::io::stderr)
                .init();
        }
    }
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
            Command::Erase(args) => erase_cmd::run(&data, args).await,
            Command::Init(args) => witness_cmd::init(&data, args).await,
            Command::Witness(command) => witness_cmd::run(&data, command).await,
            Command::Backup(args) => backup_cmd::run_backup(&data, args).await,
            Command::Restore(args) => backup_cmd::run_restore(cli.data.as_deref(), args).await,
            Command::CheckConfig(args) => check_config_cmd::run(cli.data.as_deref(), args),
            Command::Archive(args) => archive_cmd::run(&data, args).await,
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            match log_format {
                LogFormat::Text => eprintln!("error: {}", describe(&e)),
                // Every stderr line a JSON object, the last one too.
                LogFormat::Json => tracing::error!(error = %describe(&e), "exiting with an error"),
            }
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
