//! A signed soil-moisture sensor for the irrigation example: publishes its
//! readings on `farm/<bed>/moisture` as `{"moisture": 27.5}`, each signed
//! with MQS1, and prints where the broker logged it. The rule
//! `client-examples/rules/irrigate.toml` opens the bed's valve when a
//! reading is below 30 and the valve is not open already.
//!
//! ```sh
//! sealmq device keygen --out moisture-bed3
//! sealmq device add moisture-bed3 --key moisture-bed3.pub --policy signed
//! sealmq rule add client-examples/rules/irrigate.toml
//! cargo run -p client-examples --example moisture_sensor -- \
//!     --id moisture-bed3 --key moisture-bed3.key --state moisture-bed3.state.json \
//!     --bed bed3 --readings 41,33.5,27,24.5
//! ```
//!
//! A real device reads its probe where this one takes the next of
//! `--readings`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Result, bail};
use clap::Parser;
use client_examples::{Connect, CounterState, SignedPublisher, exit_code, load_or_create_device_key, public_identity};
use sealmq_audit::mqs1;

/// A signed soil-moisture sensor (MQTT 5): publishes readings on
/// farm/BED/moisture and prints the log index of each.
#[derive(Parser)]
#[command(version, long_about = None)]
struct Args {
    /// The broker's host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The broker's MQTT port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// The device id, as registered with `sealmq device add … --policy signed`.
    #[arg(long)]
    id: String,
    /// The bed it measures: readings go to farm/BED/moisture.
    #[arg(long, default_value = "bed3")]
    bed: String,
    /// The readings to publish, in percent, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "41,33.5,27,24.5")]
    readings: Vec<f64>,
    /// Milliseconds between readings.
    #[arg(long, default_value_t = 1000)]
    interval_ms: u64,
    /// The device's private key (hex seed, as `sealmq device keygen` writes,
    /// or PEM PKCS#8). Created (mode 0600) if missing.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Where the MQS1 counter is kept between runs (created if missing).
    #[arg(long, value_name = "FILE")]
    state: PathBuf,
    /// MQTT user name, for a device registered with a password.
    #[arg(long)]
    username: Option<String>,
    /// MQTT password; better passed in the environment than on the command line.
    #[arg(long, env = "SEALMQ_MQTT_PASSWORD", hide_env_values = true)]
    password: Option<String>,
}

fn main() -> ExitCode {
    exit_code(run(&Args::parse()))
}

/// A reading as the rule reads it: `json.moisture`, a JSON number.
fn reading_json(percent: f64) -> Vec<u8> {
    format!("{{\"moisture\": {percent:.1}}}").into_bytes()
}

fn run(args: &Args) -> Result<ExitCode> {
    if let Some(bad) = args.readings.iter().find(|r| !r.is_finite()) {
        bail!("--readings: {bad} is not a number JSON can carry");
    }
    let (key, created) = load_or_create_device_key(&args.key)?;
    let (public_hex, kid_hex) = public_identity(&key);
    if created {
        eprintln!("created a new device key in {} (kid {kid_hex})", args.key.display());
        eprintln!("register it with: sealmq device add {} --key {public_hex} --policy signed", args.id);
    }
    let state = CounterState::open(&args.state, mqs1::kid(&key.verifying_key().to_bytes()))?;
    let to = Connect {
        host: &args.host,
        port: args.port,
        id: &args.id,
        username: args.username.as_deref(),
        password: args.password.as_deref(),
    };
    let mut device = SignedPublisher::connect(&to, key, state)?;
    let topic = format!("farm/{}/moisture", args.bed);
    println!("moisture sensor {:?} on {topic} (key {kid_hex})", args.id);
    for (n, &percent) in args.readings.iter().enumerate() {
        if n > 0 {
            device.idle(Duration::from_millis(args.interval_ms))?;
        }
        let (ctr, payload, index) = device.publish(&topic, false, |_, _| reading_json(percent))?;
        println!("ctr {ctr} -> log index {index}  {topic} {}", String::from_utf8_lossy(&payload));
    }
    device.disconnect()?;
    println!("published {} signed reading(s)", args.readings.len());
    Ok(ExitCode::SUCCESS)
}
