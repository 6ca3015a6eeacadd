//! An MQTT 5 device that signs every publish with MQS1, carried in the
//! `mqs1` user property, and prints where the broker logged it.
//!
//! ```sh
//! sealmq device keygen --out sensor-1          # sensor-1.key, sensor-1.pub
//! sealmq device add sensor-1 --key sensor-1.pub --policy signed
//! cargo run -p client-examples --example signed_sensor -- \
//!     --id sensor-1 --key sensor-1.key --state sensor-1.state.json --count 5
//! ```
//!
//! Each message is published at QoS 1; the broker checks the signature and
//! the counter before anyone receives it, logs it, and answers with a PUBACK
//! carrying the record's log index (`sealmq-index`). The counter is written
//! to the state file before each publish, so a restarted (or crashed) device
//! never reuses one: the broker would take a reused counter for a
//! retransmission and drop the message.

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;
use clap::Parser;
use client_examples::{Connect, SensorArgs, SignedPublisher, exit_code, printable, public_identity};

/// A signed MQTT 5 sensor: each publish carries an MQS1 signature in the
/// `mqs1` user property; prints the log index the broker gives each one.
#[derive(Parser)]
#[command(version, long_about = None)]
struct Args {
    #[command(flatten)]
    sensor: SensorArgs,
}

fn main() -> ExitCode {
    exit_code(run(&Args::parse().sensor))
}

fn run(args: &SensorArgs) -> Result<ExitCode> {
    let (key, state) = args.key_and_state()?;
    let (public_hex, kid_hex) = public_identity(&key);
    if args.print_public_key {
        println!("public key {public_hex}");
        println!("kid {kid_hex}");
        return Ok(ExitCode::SUCCESS);
    }
    let topic = args.topic();
    let to = Connect {
        host: &args.host,
        port: args.port,
        id: &args.id,
        username: args.username.as_deref(),
        password: args.password.as_deref(),
    };
    let mut device = SignedPublisher::connect(&to, key, state)?;
    println!(
        "connected to {}:{} as {:?} (MQTT 5); key {kid_hex}; last counter used {}",
        args.host,
        args.port,
        args.id,
        device.last_counter()
    );

    let mut sent = 0u64;
    while args.count == 0 || sent < args.count {
        if sent > 0 {
            device.idle(Duration::from_millis(args.interval_ms))?;
        }
        sent += 1;
        let (ctr, payload, index) = device.publish(&topic, args.retain, |ctr, ts_ms| args.payload(ctr, ts_ms))?;
        println!("ctr {ctr} -> log index {index}  {topic} {}", printable(&payload));
    }
    let last = device.last_counter();
    device.disconnect()?;
    println!("published {sent} signed message(s); last counter {last}");
    Ok(ExitCode::SUCCESS)
}
