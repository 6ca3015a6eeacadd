//! End-to-end MQTT tests: a real `sealmq serve` process on loopback, real
//! clients over real sockets (rumqttc for MQTT 3.1.1 and 5, hand-encoded
//! packets where a client must misbehave, mosquitto_pub/mosquitto_sub as a
//! newcomer would use them), then the audit CLI on the same data directory.
//!
//! Every test starts its own broker in its own temporary directory, and
//! every wait has a deadline.

#[path = "../common/mod.rs"]
mod common;

mod checkpoints_and_clients;
mod qos_and_indices;
mod raw;
mod retained_wills_shared;
mod subscription_options;

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt::Debug;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5;
use rumqttc::v5::mqttbytes::QoS as Q5;
use rumqttc::v5::mqttbytes::v5 as p5;
use sealmq_audit::{Checkpoint, ProofBundle, PublishRecord, Record, VerifierKey, sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use common::broker::BrokerProcess;
use common::{sealmq, verify_ok};
use raw::*;

/// How long anything that should happen may take.
const WAIT: Duration = Duration::from_secs(5);
/// How long to watch for something that must not happen.
const QUIET: Duration = Duration::from_millis(700);
/// The user property carrying a record's log index.
const INDEX: &str = "sealmq-index";

// ---------------------------------------------------------------------------
// Harness
// ---------------------------------------------------------------------------

/// Runs an async test body on a multi-threaded runtime, with an overall deadline.
fn run<F: Future<Output = ()>>(body: F) {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    rt.block_on(async {
        tokio::time::timeout(Duration::from_secs(120), body).await.expect("the test did not finish within 120 s");
    });
}

/// Prints the broker's log when a test fails while it is alive.
struct LogsOnPanic(Arc<Mutex<String>>);

impl LogsOnPanic {
    fn of(broker: &BrokerProcess) -> Self {
        Self(Arc::clone(&broker.stderr))
    }
}

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = self.0.lock().map(|l| l.clone()).unwrap_or_default();
            let tail: Vec<&str> = logs.lines().rev().take(80).collect::<Vec<_>>().into_iter().rev().collect();
            eprintln!("---- broker log (last {} lines) ----\n{}\n----", tail.len(), tail.join("\n"));
        }
    }
}

/// A fresh data directory and a broker serving it.
fn start() -> (tempfile::TempDir, BrokerProcess, LogsOnPanic) {
    let tmp = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&tmp.path().join("data"), &[]);
    let logs = LogsOnPanic::of(&broker);
    (tmp, broker, logs)
}

/// Stops with SIGTERM and asserts a clean exit.
fn stop_cleanly(broker: BrokerProcess) {
    let stderr = Arc::clone(&broker.stderr);
    let status = broker.stop();
    assert!(status.success(), "the broker did not exit cleanly ({status:?}); log:\n{}", stderr.lock().unwrap());
}

/// What a connection's event loop reports.
enum Ev<P> {
    In(P),
    Closed(String),
}

/// The incoming side of one client connection: packets are buffered, so a
/// test can wait for one kind without losing the others.
struct Conn<P> {
    id: String,
    rx: mpsc::UnboundedReceiver<Ev<P>>,
    buffered: VecDeque<P>,
    closed: Option<String>,
    task: JoinHandle<()>,
}

impl<P: Debug> Conn<P> {
    async fn recv_until(&mut self, deadline: Instant) -> Option<P> {
        if self.closed.is_some() {
            return None;
        }
        match tokio::time::timeout_at(deadline, self.rx.recv()).await {
            Ok(Some(Ev::In(packet))) => Some(packet),
            Ok(Some(Ev::Closed(why))) => {
                self.closed = Some(why);
                None
            }
            Ok(None) => {
                self.closed = Some("the event loop ended".into());
                None
            }
            Err(_) => None,
        }
    }

    /// The first packet `pick` accepts, buffered or arriving within [`WAIT`].
    async fn expect<T>(&mut self, what: &str, mut pick: impl FnMut(&P) -> Option<T>) -> T {
        for at in 0..self.buffered.len() {
            if let Some(found) = pick(&self.buffered[at]) {
                self.buffered.remove(at);
                return found;
            }
        }
        let deadline = Instant::now() + WAIT;
        loop {
            match self.recv_until(deadline).await {
                Some(packet) => match pick(&packet) {
                    Some(found) => return found,
                    None => self.buffered.push_back(packet),
                },
                None => panic!(
                    "{}: no {what} within {WAIT:?} (closed: {:?}; other packets: {:?})",
                    self.id, self.closed, self.buffered
                ),
            }
        }
    }

    /// Every packet `pick` accepts, buffered or arriving within `window`.
    async fn all_within<T>(&mut self, window: Duration, mut pick: impl FnMut(&P) -> Option<T>) -> Vec<T> {
        let deadline = Instant::now() + window;
        let mut found = Vec::new();
        let mut kept = VecDeque::new();
        for packet in std::mem::take(&mut self.buffered) {
            match pick(&packet) {
                Some(t) => found.push(t),
                None => kept.push_back(packet),
            }
        }
        self.buffered = kept;
        while let Some(packet) = self.recv_until(deadline).await {
            match pick(&packet) {
                Some(t) => found.push(t),
                None => self.buffered.push_back(packet),
            }
        }
        if self.closed.is_some() {
            // Closed early: the deadline was not waited for.
            tokio::time::sleep_until(deadline).await;
        }
        found
    }

    /// Waits until the event loop reports the connection closed.
    async fn wait_closed(&mut self) -> Option<String> {
        let deadline = Instant::now() + WAIT;
        while self.closed.is_none() {
            match self.recv_until(deadline).await {
                Some(packet) => self.buffered.push_back(packet),
                None if Instant::now() >= deadline => break,
                None => {}
            }
        }
        self.closed.clone()
    }

    /// Drops the connection without DISCONNECT: the event loop (and with it
    /// the socket) is dropped mid-session.
    async fn kill(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

// ---- MQTT 5 client -------------------------------------------------------

struct V5 {
    client: v5::AsyncClient,
    conn: Conn<p5::Packet>,
}

/// Options for an MQTT 5 test client that asks for receipts: its
/// deliveries carry the record's `sealmq-index`, which these tests check
/// against the log (without it, properties are forwarded unaltered).
fn v5_options(addr: SocketAddr, id: &str) -> v5::MqttOptions {
    let mut options = v5::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options.set_user_properties(vec![("sealmq-receipts".into(), "1".into())]);
    options
}

fn q5(qos: u8) -> Q5 {
    match qos {
        0 => Q5::AtMostOnce,
        1 => Q5::AtLeastOnce,
        _ => Q5::ExactlyOnce,
    }
}

fn user_properties(properties: Option<&p5::PublishProperties>) -> Vec<(String, String)> {
    properties.map(|p| p.user_properties.clone()).unwrap_or_default()
}

/// The `sealmq-index` values among user properties.
fn indices(properties: &[(String, String)]) -> Vec<u64> {
    properties
        .iter()
        .filter(|(name, _)| name == INDEX)
        .map(|(_, value)| value.parse().unwrap_or_else(|_| panic!("{INDEX} is not a number: {value:?}")))
        .collect()
}

/// The one `sealmq-index` of a delivery or an ack.
#[track_caller]
fn the_index(properties: &[(String, String)]) -> u64 {
    let found = indices(properties);
    assert_eq!(found.len(), 1, "expected exactly one {INDEX} user property, got {properties:?}");
    found[0]
}

impl V5 {
    async fn connect(addr: SocketAddr, id: &str) -> Self {
        Self::connect_with(v5_options(addr, id)).await
    }

    async fn connect_with(options: v5::MqttOptions) -> Self {
        let id = options.client_id();
        let (client, mut eventloop) = v5::AsyncClient::new(options, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(v5::Event::Incoming(packet)) => {
                        if tx.send(Ev::In(packet)).is_err() {
                            break;
                        }
                    }
                    Ok(v5::Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Ev::Closed(e.to_string()));
                        break;
                    }
                }
            }
        });
        let mut conn = Conn { id, rx, buffered: VecDeque::new(), closed: None, task };
        let ack = conn
            .expect("CONNACK", |p| match p {
                p5::Packet::ConnAck(ack) => Some(ack.clone()),
                _ => None,
            })
            .await;
        assert_eq!(ack.code, p5::ConnectReturnCode::Success, "{}: {ack:?}", conn.id);
        Self { client, conn }
    }

    /// Subscribes and waits for the SUBACK; returns its reason codes.
    async fn subscribe_filters(&mut self, filters: Vec<p5::Filter>) -> Vec<p5::SubscribeReasonCode> {
        self.client.subscribe_many(filters).await.unwrap();
        self.conn
            .expect("SUBACK", |p| match p {
                p5::Packet::SubAck(ack) => Some(ack.return_codes.clone()),
                _ => None,
            })
            .await
    }

    /// Subscribes to one filter and asserts it was granted at `qos`.
    async fn subscribe(&mut self, filter: &str, qos: u8) {
        let codes = self.subscribe_filters(vec![p5::Filter::new(filter, q5(qos))]).await;
        assert_eq!(codes, vec![p5::SubscribeReasonCode::Success(q5(qos))], "{}: SUBACK for {filter}", self.conn.id);
    }

    /// Publishes; for QoS 1 and 2 waits for the flow to complete and returns
    /// the PUBACK's (PUBREC's) `sealmq-index`.
    async fn publish(
        &mut self,
        topic: &str,
        qos: u8,
        retain: bool,
        payload: impl Into<Bytes>,
        user: &[(&str, &str)],
    ) -> Option<u64> {
        let properties = p5::PublishProperties {
            user_properties: user.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect(),
            ..Default::default()
        };
        self.client.publish_with_properties(topic, q5(qos), retain, payload.into(), properties).await.unwrap();
        match qos {
            0 => None,
            1 => {
                let ack = self.puback().await;
                assert_eq!(ack.reason, p5::PubAckReason::Success, "{}: PUBACK for {topic}: {ack:?}", self.conn.id);
                Some(the_index(&ack.properties.map(|p| p.user_properties).unwrap_or_default()))
            }
            _ => {
                let rec = self
                    .conn
                    .expect("PUBREC", |p| match p {
                        p5::Packet::PubRec(rec) => Some(rec.clone()),
                        _ => None,
                    })
                    .await;
                assert_eq!(rec.reason, p5::PubRecReason::Success, "{}: PUBREC for {topic}: {rec:?}", self.conn.id);
                let index = the_index(&rec.properties.map(|p| p.user_properties).unwrap_or_default());
                let comp = self
                    .conn
                    .expect("PUBCOMP", |p| match p {
                        p5::Packet::PubComp(comp) => Some(comp.clone()),
                        _ => None,
                    })
                    .await;
                assert_eq!(comp.pkid, rec.pkid);
                Some(index)
            }
        }
    }

    async fn puback(&mut self) -> p5::PubAck {
        self.conn
            .expect("PUBACK", |p| match p {
                p5::Packet::PubAck(ack) => Some(ack.clone()),
                _ => None,
            })
            .await
    }

    async fn recv(&mut self) -> p5::Publish {
        self.conn
            .expect("PUBLISH", |p| match p {
                p5::Packet::Publish(publish) => Some(publish.clone()),
                _ => None,
            })
            .await
    }

    /// Every PUBLISH received within `window`.
    async fn publishes_within(&mut self, window: Duration) -> Vec<p5::Publish> {
        self.conn
            .all_within(window, |p| match p {
                p5::Packet::Publish(publish) => Some(publish.clone()),
                _ => None,
            })
            .await
    }

    /// A normal DISCONNECT, then waits for the broker to close the socket.
    async fn disconnect(mut self) {
        if let Err(e) = self.client.disconnect().await {
            let closed = self.conn.wait_closed().await;
            panic!("{}: cannot DISCONNECT ({e}): the connection is gone: {closed:?}", self.conn.id);
        }
        let closed = self.conn.wait_closed().await;
        assert!(closed.is_some(), "{}: the broker kept the connection open after DISCONNECT", self.conn.id);
        self.conn.kill().await;
    }
}

fn topic5(publish: &p5::Publish) -> String {
    String::from_utf8(publish.topic.to_vec()).expect("topics are UTF-8")
}

// ---- MQTT 3.1.1 client ---------------------------------------------------

struct V4 {
    client: rumqttc::AsyncClient,
    conn: Conn<rumqttc::Packet>,
}

fn v4_options(addr: SocketAddr, id: &str) -> rumqttc::MqttOptions {
    let mut options = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_keep_alive(Duration::from_secs(30));
    options
}

fn q4(qos: u8) -> rumqttc::QoS {
    match qos {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

impl V4 {
    async fn connect(addr: SocketAddr, id: &str) -> Self {
        Self::connect_with(v4_options(addr, id)).await
    }

    async fn connect_with(options: rumqttc::MqttOptions) -> Self {
        let id = options.client_id();
        let (client, mut eventloop) = rumqttc::AsyncClient::new(options, 64);
        let (tx, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(packet)) => {
                        if tx.send(Ev::In(packet)).is_err() {
                            break;
                        }
                    }
                    Ok(rumqttc::Event::Outgoing(_)) => {}
                    Err(e) => {
                        let _ = tx.send(Ev::Closed(e.to_string()));
                        break;
                    }
                }
            }
        });
        let mut conn = Conn { id, rx, buffered: VecDeque::new(), closed: None, task };
        let ack = conn
            .expect("CONNACK", |p| match p {
                rumqttc::Packet::ConnAck(ack) => Some(ack.clone()),
                _ => None,
            })
            .await;
        assert_eq!(ack.code, rumqttc::ConnectReturnCode::Success, "{}: {ack:?}", conn.id);
        Self { client, conn }
    }

    async fn subscribe(&mut self, filter: &str, qos: u8) {
        self.client.subscribe(filter, q4(qos)).await.unwrap();
        let codes = self
            .conn
            .expect("SUBACK", |p| match p {
                rumqttc::Packet::SubAck(ack) => Some(ack.return_codes.clone()),
                _ => None,
            })
            .await;
        assert_eq!(
            codes,
            vec![rumqttc::SubscribeReasonCode::Success(q4(qos))],
            "{}: SUBACK for {filter}",
            self.conn.id
        );
    }

    /// Publishes; for QoS 1 and 2 waits for the flow to complete.
    async fn publish(&mut self, topic: &str, qos: u8, retain: bool, payload: impl Into<Vec<u8>>) {
        self.client.publish(topic, q4(qos), retain, payload).await.unwrap();
        match qos {
            0 => {}
            1 => {
                self.conn
                    .expect("PUBACK", |p| match p {
                        rumqttc::Packet::PubAck(ack) => Some(ack.pkid),
                        _ => None,
                    })
                    .await;
            }
            _ => {
                let rec = self
                    .conn
                    .expect("PUBREC", |p| match p {
                        rumqttc::Packet::PubRec(rec) => Some(rec.pkid),
                        _ => None,
                    })
                    .await;
                let comp = self
                    .conn
                    .expect("PUBCOMP", |p| match p {
                        rumqttc::Packet::PubComp(comp) => Some(comp.pkid),
                        _ => None,
                    })
                    .await;
                assert_eq!(rec, comp);
            }
        }
    }

    async fn recv(&mut self) -> rumqttc::Publish {
        self.conn
            .expect("PUBLISH", |p| match p {
                rumqttc::Packet::Publish(publish) => Some(publish.clone()),
                _ => None,
            })
            .await
    }

    async fn publishes_within(&mut self, window: Duration) -> Vec<rumqttc::Publish> {
        self.conn
            .all_within(window, |p| match p {
                rumqttc::Packet::Publish(publish) => Some(publish.clone()),
                _ => None,
            })
            .await
    }

    async fn disconnect(mut self) {
        if let Err(e) = self.client.disconnect().await {
            let closed = self.conn.wait_closed().await;
            panic!("{}: cannot DISCONNECT ({e}): the connection is gone: {closed:?}", self.conn.id);
        }
        let closed = self.conn.wait_closed().await;
        assert!(closed.is_some(), "{}: the broker kept the connection open after DISCONNECT", self.conn.id);
        self.conn.kill().await;
    }
}

// ---- Hand-encoded packets --------------------------------------------------
