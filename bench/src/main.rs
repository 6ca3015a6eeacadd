//! `sealmq-bench`: load and measure an MQTT broker — sealmq, or any other
//! for comparison (`tests/bench/compare.sh` runs it against rumqttd alone
//! and Mosquitto too).
//!
//! Publishers and subscribers run in this one process, so the payload of
//! every message carries its publisher, its sequence number and the
//! monotonic time it was sent (20 bytes, then filler), and subscribers
//! measure publish-to-delivery latency on the same clock, and find lost and
//! duplicated messages by tracking each publisher's sequence numbers.
//!
//! The parts: [`scenario`] sets a run up and carries it out, with
//! [`publisher`] and [`subscriber`] tasks over [`client`] connections that
//! speak [`wire`]; [`stats`] counts latency, loss and duplicates, and
//! [`process`] reads the broker's memory and CPU; [`keys`] registers signing
//! devices; [`report`] prints and writes the results; [`ceiling`] is
//! `--verify-ceiling`, which needs no broker.

mod ceiling;
mod client;
mod clock;
mod keys;
mod process;
mod publisher;
mod report;
mod scenario;
mod stats;
mod subscriber;
mod wire;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, ValueEnum};
use tracing_subscriber::EnvFilter;

/// Load an MQTT broker (sealmq or another) and measure throughput, latency,
/// loss, duplicates and memory.
#[derive(Debug, Parser)]
#[command(version)]
pub struct BenchArgs {
    /// The broker's MQTT address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    host: String,
    /// The subscribers' broker, when not --host: another gateway in front
    /// of the same cluster, so that every message crosses it (publishers,
    /// idle connections and the checkpoint watcher stay on --host).
    #[arg(long, value_name = "HOST")]
    sub_host: Option<String>,
    /// MQTT version: 5, or 3.1.1 (also accepted as 3 or 4).
    #[arg(long, value_enum, default_value = "5")]
    mqtt: Mqtt,
    /// Publishing clients.
    #[arg(short = 'p', long, default_value_t = 1)]
    publishers: usize,
    /// Subscribing clients.
    #[arg(short = 's', long, default_value_t = 1)]
    subscribers: usize,
    /// Topics per publisher (PREFIX/P/T), published to in turn.
    #[arg(long, default_value_t = 1)]
    topics: usize,
    /// Who receives what. pairs: subscriber S takes the topics of publishers
    /// P with P mod subscribers = S; fanout: every subscriber subscribes to
    /// every topic by name; wildcard: every subscriber subscribes to
    /// PREFIX/#; shared: the subscribers share one $share subscription, so
    /// each message reaches one of them.
    #[arg(long, value_enum, default_value = "pairs")]
    pattern: Pattern,
    /// QoS of publishes and subscriptions.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Application payload bytes per message (at least 20: publisher,
    /// sequence and send time come first).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// MQS1-sign every publish (MQTT 5: the `mqs1` user property; 3.1.1: a
    /// payload envelope). Needs --register-data.
    #[arg(long, requires = "register_data")]
    signed: bool,
    /// The broker's data directory: before the run, every publisher is
    /// registered there as a `signed` device with a fresh key, and the run
    /// starts once the running broker has logged the keys.
    #[arg(long, value_name = "DIR")]
    register_data: Option<PathBuf>,
    /// Messages per second per publisher; 0: as fast as the in-flight
    /// window allows.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// In-flight window per publisher: at QoS 1/2, publishes not yet
    /// acknowledged (also capped by the broker's Receive Maximum); at QoS 0,
    /// which has no acknowledgement, messages not yet delivered to every
    /// subscriber that should get them.
    #[arg(long, default_value_t = 64)]
    inflight: usize,
    /// Seconds of measured traffic, after the warm-up [default: 10; with
    /// --verify-ceiling: 3, per figure].
    #[arg(long)]
    duration: Option<f64>,
    /// Messages per publisher (warm-up included), instead of a duration
    /// (with --verify-ceiling: verifications per thread and figure).
    #[arg(long)]
    count: Option<u64>,
    /// Seconds of traffic before measuring starts (its messages are still
    /// checked for loss and duplicates).
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// At most this many seconds to wait after the last publish for
    /// outstanding acknowledgements and deliveries (a broker working off a
    /// backlog gets them; once nothing at all arrived for 2 s, what is
    /// missing counts as lost).
    #[arg(long, default_value_t = 30.0)]
    drain: f64,
    /// Open this many idle connections first and report the broker's RSS
    /// per connection (needs --broker-pid). They stay open during the run.
    #[arg(long, default_value_t = 0)]
    idle: usize,
    /// The broker's process id: its RSS (VmRSS) and CPU time are read from /proc.
    #[arg(long)]
    broker_pid: Option<u32>,
    /// Measure the time from each PUBACK (its `sealmq-index`) to the first
    /// checkpoint on $SYS/sealmq/checkpoint whose tree covers the record
    /// (sealmq only; MQTT 5).
    #[arg(long)]
    checkpoints: bool,
    /// Prefix of client ids and topics [default: bench-RANDOM].
    #[arg(long)]
    prefix: Option<String>,
    /// A name for this scenario in the report.
    #[arg(long)]
    label: Option<String>,
    /// Also write the results as JSON to FILE.
    #[arg(long, value_name = "FILE")]
    json: Option<PathBuf>,
    /// Connections opened at once while setting up.
    #[arg(long, default_value_t = 64)]
    connect_concurrency: usize,
    /// No broker: measure what the broker's MQS1 check of one signed publish
    /// costs in this process (SHA-256 of a --payload-byte payload, the TBS
    /// rebuilt, `verify_strict`: `mqs1::verify`, as the broker does), on 1
    /// thread and on --threads threads at once — the ceiling for signed
    /// traffic — and, as a reference figure only, ed25519-dalek's
    /// `verify_batch` in batches of 64. The broker never batches: MQS1
    /// requires `verify_strict`, and cofactorless batch verification can
    /// accept a signature that `verify_strict` rejects. Each path is first
    /// checked to accept valid signatures and reject a corrupted one.
    #[arg(long, conflicts_with_all = ["signed", "register_data", "checkpoints", "idle", "broker_pid"])]
    verify_ceiling: bool,
    /// Threads for --verify-ceiling's N-thread figures [default: the cores
    /// this process may run on].
    #[arg(long, requires = "verify_ceiling")]
    threads: Option<usize>,
}

/// `--mqtt`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mqtt {
    /// MQTT 3.1.1.
    #[value(name = "3.1.1", aliases = ["3", "4"])]
    V311,
    /// MQTT 5.
    #[value(name = "5")]
    V5,
}

/// `--pattern`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Pattern {
    Pairs,
    Fanout,
    Wildcard,
    Shared,
}

impl Pattern {
    fn name(self) -> &'static str {
        match self {
            Pattern::Pairs => "pairs",
            Pattern::Fanout => "fanout",
            Pattern::Wildcard => "wildcard",
            Pattern::Shared => "shared",
        }
    }
}

/// Exit code when the run completed and found messages lost, duplicated or
/// misrouted (or `--verify-ceiling`'s self-check failed).
pub const EXIT_FAILED_CHECK: u8 = 1;
/// Exit code when the run could not be carried out (bad input, I/O, a
/// broker that refused or dropped a connection).
pub const EXIT_ERROR: u8 = 2;

fn main() -> ExitCode {
    let args = BenchArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let outcome = if args.verify_ceiling { ceiling::run(&args) } else { runtime.block_on(scenario::run(args)) };
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
