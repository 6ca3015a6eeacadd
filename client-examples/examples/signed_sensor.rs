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
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use clap::Parser;
use client_examples::{INDEX_PROPERTY, Refused, SensorArgs, exit_code, now_ms, printable, public_identity};
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAck, PubAckReason, PublishProperties};
use rumqttc::v5::{Client, Connection, Event, MqttOptions, RecvTimeoutError};
use sealmq_audit::mqs1;

/// A signed MQTT 5 sensor: each publish carries an MQS1 signature in the
/// `mqs1` user property; prints the log index the broker gives each one.
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
    // A sensor only publishes: it needs no session kept for it.
    options.set_clean_start(true);
    if let Some(user) = &args.username {
        options.set_credentials(user, args.password.clone().unwrap_or_default());
    }
    let (client, mut connection) = Client::new(options, 10);
    wait_for(&mut connection, "CONNACK", |event| matches!(event, Event::Incoming(Packet::ConnAck(_))).then_some(()))?;
    println!(
        "connected to {}:{} as {:?} (MQTT 5); key {kid_hex}; last counter used {}",
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
        let sb = mqs1::sign(&key, &args.id, &topic, &payload, args.retain, ctr, ts_ms)?;
        let properties = PublishProperties {
            user_properties: vec![(mqs1::PROPERTY_NAME.to_string(), sb.to_property_value())],
            ..Default::default()
        };
        client
            .publish_with_properties(topic.clone(), QoS::AtLeastOnce, args.retain, payload.clone(), properties)
            .context("queueing the publish")?;
        let ack = wait_for_puback(&mut connection)?;
        let index = check_puback(&ack, ctr)?;
        println!("ctr {ctr} -> log index {index}  {topic} {}", printable(&payload));
    }

    client.disconnect().context("disconnecting")?;
    // Let the DISCONNECT go out; an error here changes nothing that was logged.
    let _ = wait_for(&mut connection, "DISCONNECT", |event| {
        matches!(event, Event::Outgoing(Outgoing::Disconnect)).then_some(())
    });
    println!("published {sent} signed message(s); last counter {}", state.last());
    Ok(ExitCode::SUCCESS)
}

/// The log index in a PUBACK, or why the publish was not logged.
fn check_puback(ack: &PubAck, ctr: u64) -> Result<u64> {
    let properties = ack.properties.as_ref();
    if !matches!(ack.reason, PubAckReason::Success | PubAckReason::NoMatchingSubscribers) {
        let why = properties.and_then(|p| p.reason_string.clone()).unwrap_or_default();
        return Err(
            Refused(format!("the broker refused the message with counter {ctr}: {:?} ({why})", ack.reason)).into()
        );
    }
    let index = properties
        .and_then(|p| p.user_properties.iter().find(|(name, _)| name == INDEX_PROPERTY))
        .map(|(_, value)| value.parse::<u64>())
        .transpose()
        .map_err(|e| anyhow!("the PUBACK's {INDEX_PROPERTY} is not a number: {e}"))?;
    // A success without an index is how the broker answers a counter it has
    // already seen: it takes the message for a retransmission and drops it.
    index.ok_or_else(|| {
        Refused(format!(
            "the broker acknowledged counter {ctr} without logging it: it has seen this counter before. \
             Was the state file deleted, restored from a backup or shared with another device?"
        ))
        .into()
    })
}

/// Polls the connection until `pick` accepts an event, or fails.
fn wait_for<T>(connection: &mut Connection, what: &str, mut pick: impl FnMut(&Event) -> Option<T>) -> Result<T> {
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match connection.recv_timeout(left) {
            Ok(Ok(event)) => {
                if let Event::Incoming(Packet::Disconnect(d)) = &event {
                    let why = d.properties.as_ref().and_then(|p| p.reason_string.clone()).unwrap_or_default();
                    return Err(Refused(format!("the broker disconnected us: {:?} {why}", d.reason_code)).into());
                }
                if let Some(found) = pick(&event) {
                    return Ok(found);
                }
            }
            Ok(Err(e)) => bail!("connection to the broker failed while waiting for a {what}: {e}"),
            Err(RecvTimeoutError::Timeout) => bail!("no {what} from the broker within {ANSWER_TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => bail!("the MQTT client stopped while waiting for a {what}"),
        }
    }
}

/// Waits for the PUBACK of the one publish in flight.
fn wait_for_puback(connection: &mut Connection) -> Result<PubAck> {
    let mut pkid = None;
    wait_for(connection, "PUBACK", |event| match event {
        Event::Outgoing(Outgoing::Publish(id)) => {
            pkid = Some(*id);
            None
        }
        Event::Incoming(Packet::PubAck(ack)) if Some(ack.pkid) == pkid => Some(ack.clone()),
        _ => None,
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
            Ok(Ok(Event::Incoming(Packet::Disconnect(d)))) => bail!("the broker disconnected us: {:?}", d.reason_code),
            Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
            Ok(Err(e)) => bail!("connection to the broker failed: {e}"),
            Err(RecvTimeoutError::Disconnected) => bail!("the MQTT client stopped"),
        }
    }
}
