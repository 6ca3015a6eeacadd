//! An MQTT 3.1.1 device that signs every publish with MQS1, carried in a
//! payload envelope: `"MQS1" || signature block (90 bytes) || payload`.
//!
//! ```sh
//! sealmq device keygen --out boiler-2
//! sealmq device add boiler-2 --key boiler-2.pub --policy signed
//! cargo run -p client-examples --example legacy_sensor -- \
//!     --id boiler-2 --key boiler-2.key --state boiler-2.state.json --count 5
//! ```
//!
//! MQTT 3.1.1 has no user properties, so the signature travels in the
//! payload. The broker checks it, logs the message and delivers only the
//! application payload (MQTT 5 subscribers also get the signature as the
//! `mqs1` property). 3.1.1 has no reason codes either: a refused QoS 1
//! publish makes the broker close the connection, and its PUBACK carries no
//! log index (look the records up with `GET /v1/records?device=ID`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use client_examples::{Refused, SensorArgs, exit_code, now_ms, printable, public_identity};
use rumqttc::{Client, Connection, Event, MqttOptions, Outgoing, Packet, QoS, RecvTimeoutError};
use sealmq_audit::mqs1;

/// A signed MQTT 3.1.1 sensor: each payload is an MQS1 envelope.
#[derive(Parser)]
#[command(version, long_about = None)]
struct Args {
    #[command(flatten)]
    sensor: SensorArgs,
}

/// How long the broker may take to answer a CONNECT or a PUBLISH.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

fn main() -> ExitCode {
    exit_code(run(&Args::parse().sensor))
}

fn run(args: &SensorArgs) -> Result<ExitCode> {
    let (key, mut state) = args.key_and_state()?;
    let (public_hex, kid_hex) = public_identity(&key);
    if args.print_public_key {
        println!("public key {public_hex}");
        println!("kid {kid_hex}");
        return Ok(ExitCode::SUCCESS);
    }
    let topic = args.topic();

    let mut options = MqttOptions::new(&args.id, &args.host, args.port);
    options.set_keep_alive(Duration::from_secs(30));
    options.set_clean_session(true);
    if let Some(user) = &args.username {
        options.set_credentials(user, args.password.clone().unwrap_or_default());
    }
    let (client, mut connection) = Client::new(options, 10);
    wait_for(&mut connection, "CONNACK", None, |event| matches!(event, Event::Incoming(Packet::ConnAck(_))))?;
    println!(
        "connected to {}:{} as {:?} (MQTT 3.1.1); key {kid_hex}; last counter used {}",
        args.host,
        args.port,
        args.id,
        state.last()
    );

    let mut sent = 0u64;
    while args.count == 0 || sent < args.count {
        if sent > 0 {
            idle(&mut connection, Duration::from_millis(args.interval_ms))?;
        }
        sent += 1;
        // Persisted before use: after a crash the next run starts above it.
        let ctr = state.reserve_next()?;
        let ts_ms = now_ms();
        let payload = args.payload(ctr, ts_ms);
        // The signature covers the application payload, not the envelope.
        let sb = mqs1::sign(&key, &args.id, &topic, &payload, args.retain, ctr, ts_ms)?;
        let envelope = sb.wrap_envelope(&payload);
        client.publish(topic.clone(), QoS::AtLeastOnce, args.retain, envelope).context("queueing the publish")?;
        wait_for_puback(&mut connection, ctr)?;
        println!("ctr {ctr} -> accepted (PUBACK)  {topic} {}", printable(&payload));
    }

    client.disconnect().context("disconnecting")?;
    // Let the DISCONNECT go out; an error here changes nothing that was logged.
    let _ =
        wait_for(&mut connection, "DISCONNECT", None, |event| matches!(event, Event::Outgoing(Outgoing::Disconnect)));
    println!("published {sent} signed message(s) as envelopes; last counter {}", state.last());
    Ok(ExitCode::SUCCESS)
}

/// Polls the connection until `pick` accepts an event. `refusing` is the
/// counter of a publish in flight: a connection closed while it waits is
/// how an MQTT 3.1.1 broker refuses it.
fn wait_for(
    connection: &mut Connection,
    what: &str,
    refusing: Option<u64>,
    mut pick: impl FnMut(&Event) -> bool,
) -> Result<()> {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match connection.recv_timeout(left) {
            Ok(Ok(event)) if pick(&event) => return Ok(()),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => match refusing {
                Some(ctr) => {
                    return Err(Refused(format!(
                        "the broker closed the connection instead of acknowledging counter {ctr} ({e}): MQTT \
                         3.1.1 cannot say why; check the key is registered and active (`sealmq device list`), \
                         the ACL, and the broker's log"
                    ))
                    .into());
                }
                None => bail!("connection to the broker failed while waiting for a {what}: {e}"),
            },
            Err(RecvTimeoutError::Timeout) => bail!("no {what} from the broker within {ANSWER_TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => bail!("the MQTT client stopped while waiting for a {what}"),
        }
    }
}

/// Waits for the PUBACK of the one publish in flight.
fn wait_for_puback(connection: &mut Connection, ctr: u64) -> Result<()> {
    let mut pkid = None;
    wait_for(connection, "PUBACK", Some(ctr), |event| match event {
        Event::Outgoing(Outgoing::Publish(id)) => {
            pkid = Some(*id);
            false
        }
        Event::Incoming(Packet::PubAck(ack)) => Some(ack.pkid) == pkid,
        _ => false,
    })
}

/// Keeps the connection serviced (keep-alive pings) for `duration`.
fn idle(connection: &mut Connection, duration: Duration) -> Result<()> {
    let deadline = Instant::now() + duration;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(());
        }
        match connection.recv_timeout(left) {
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => bail!("connection to the broker failed: {e}"),
            Err(RecvTimeoutError::Disconnected) => bail!("the MQTT client stopped"),
        }
    }
}
