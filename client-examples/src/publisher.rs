//! A signing MQTT 5 device: connects, publishes each message with an MQS1
//! signature in the `mqs1` user property, and returns the log index the
//! broker gives it (the signed sensor examples share this).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ed25519_dalek::SigningKey;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAck, PubAckReason, PublishProperties};
use rumqttc::v5::{Client, Connection, Event, MqttOptions, RecvTimeoutError};
use sealmq_audit::mqs1;

use crate::*;

/// How long the broker may take to answer a CONNECT or a PUBLISH.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// Where and as whom a device connects.
#[derive(Debug, Clone)]
pub struct Connect<'a> {
    /// The broker's host.
    pub host: &'a str,
    /// The broker's MQTT port.
    pub port: u16,
    /// The device id (MQTT client id).
    pub id: &'a str,
    /// MQTT user name, for a device registered with a password.
    pub username: Option<&'a str>,
    /// Its password.
    pub password: Option<&'a str>,
}

/// A connected device that signs what it publishes (MQTT 5, QoS 1).
pub struct SignedPublisher {
    client: Client,
    connection: Connection,
    key: SigningKey,
    state: CounterState,
    id: String,
}

impl SignedPublisher {
    /// Connects and waits for the CONNACK.
    pub fn connect(to: &Connect<'_>, key: SigningKey, state: CounterState) -> Result<Self> {
        let mut options = MqttOptions::new(to.id, to.host, to.port);
        options.set_keep_alive(Duration::from_secs(30));
        // A sensor only publishes: it needs no session kept for it.
        options.set_clean_start(true);
        if let Some(user) = to.username {
            options.set_credentials(user, to.password.unwrap_or_default());
        }
        let (client, mut connection) = Client::new(options, 10);
        wait_for(&mut connection, "CONNACK", |event| {
            matches!(event, Event::Incoming(Packet::ConnAck(_))).then_some(())
        })?;
        Ok(Self { client, connection, key, state, id: to.id.to_string() })
    }

    /// The last MQS1 counter used.
    pub fn last_counter(&self) -> u64 {
        self.state.last()
    }

    /// Signs and publishes the payload `make(ctr, ts_ms)` gives, with the
    /// next counter (persisted before use, so a crash never reuses one).
    /// Returns the counter, the payload and the log index.
    pub fn publish(
        &mut self,
        topic: &str,
        retain: bool,
        make: impl FnOnce(u64, u64) -> Vec<u8>,
    ) -> Result<(u64, Vec<u8>, u64)> {
        let ctr = self.state.reserve_next()?;
        let ts_ms = now_ms();
        let payload = make(ctr, ts_ms);
        let sb = mqs1::sign(&self.key, &self.id, topic, &payload, retain, ctr, ts_ms)?;
        let properties = PublishProperties {
            user_properties: vec![(mqs1::PROPERTY_NAME.to_string(), sb.to_property_value())],
            ..Default::default()
        };
        self.client
            .publish_with_properties(topic.to_string(), QoS::AtLeastOnce, retain, payload.clone(), properties)
            .context("queueing the publish")?;
        let ack = wait_for_puback(&mut self.connection)?;
        let index = check_puback(&ack, ctr)?;
        Ok((ctr, payload, index))
    }

    /// Keeps the connection serviced (keep-alive pings) for `duration`.
    pub fn idle(&mut self, duration: Duration) -> Result<()> {
        let deadline = Instant::now() + duration;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            match self.connection.recv_timeout(left) {
                Ok(Ok(Event::Incoming(Packet::Disconnect(d)))) => {
                    bail!("the broker disconnected us: {:?}", d.reason_code)
                }
                Ok(Ok(_)) | Err(RecvTimeoutError::Timeout) => {}
                Ok(Err(e)) => bail!("connection to the broker failed: {e}"),
                Err(RecvTimeoutError::Disconnected) => bail!("the MQTT client stopped"),
            }
        }
    }

    /// Sends DISCONNECT and lets it go out.
    pub fn disconnect(mut self) -> Result<()> {
        self.client.disconnect().context("disconnecting")?;
        // An error here changes nothing that was logged.
        let _ = wait_for(&mut self.connection, "DISCONNECT", |event| {
            matches!(event, Event::Outgoing(Outgoing::Disconnect)).then_some(())
        });
        Ok(())
    }
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
