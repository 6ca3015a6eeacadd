//! End-to-end MQTT tests: a real `sealmq serve` process on loopback, real
//! clients over real sockets (rumqttc for MQTT 3.1.1 and 5, hand-encoded
//! packets where a client must misbehave, mosquitto_pub/mosquitto_sub as a
//! newcomer would use them), then the audit CLI on the same data directory.
//!
//! Every test starts its own broker in its own temporary directory, and
//! every wait has a deadline.

mod common;

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

fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u16::try_from(s.len()).unwrap().to_be_bytes());
    out.extend_from_slice(s);
}

/// A packet: first byte, remaining length (variable byte integer), body.
fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = u8::try_from(len % 128).unwrap();
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A clean-session CONNECT (protocol level 4 or 5) with a will, not retained.
fn connect_with_will(level: u8, client_id: &str, will_topic: &str, will_payload: &[u8], will_qos: u8) -> Vec<u8> {
    connect_with_will_keep_alive(level, client_id, will_topic, will_payload, will_qos, 30)
}

/// As [`connect_with_will`], with a keep-alive in seconds.
fn connect_with_will_keep_alive(
    level: u8,
    client_id: &str,
    will_topic: &str,
    will_payload: &[u8],
    will_qos: u8,
    keep_alive: u16,
) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(level);
    body.push(0x02 | 0x04 | (will_qos << 3)); // clean session, will flag, will QoS
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0); // no CONNECT properties
    }
    put_str(&mut body, client_id.as_bytes());
    if level == 5 {
        body.push(0); // no will properties
    }
    put_str(&mut body, will_topic.as_bytes());
    put_str(&mut body, will_payload);
    frame(0x10, &body)
}

/// Connects a raw socket, sends `connect` and checks the CONNACK is a success.
async fn raw_connect(addr: SocketAddr, connect: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(connect).await.unwrap();
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, stream.read_exact(&mut head)).await.expect("CONNACK in time").unwrap();
    assert_eq!(head[0], 0x20, "expected CONNACK, got {head:?}");
    assert!(head[1] < 0x80, "CONNACK longer than expected");
    let mut rest = vec![0u8; usize::from(head[1])];
    tokio::time::timeout(WAIT, stream.read_exact(&mut rest)).await.expect("CONNACK in time").unwrap();
    assert_eq!(rest[1], 0, "CONNACK refused: {rest:?}");
    stream
}

// ---- HTTP -----------------------------------------------------------------

/// A plain HTTP/1.1 GET; status and body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.expect("an HTTP response in time").unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP header");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut body = raw[split + 4..].to_vec();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("an HTTP status");
    if head.contains("transfer-encoding: chunked") {
        let mut decoded = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
            let size_text = String::from_utf8_lossy(&rest[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            decoded.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = decoded;
    }
    (status, String::from_utf8(body).expect("a UTF-8 body"))
}

// ---- The log, from outside ---------------------------------------------------

/// `audit prove INDEX`, checked by `audit check-proof` with `vkey` and by
/// [`ProofBundle::check`]; the proved publish record.
fn prove(data: &Path, scratch: &Path, vkey: &str, index: u64) -> PublishRecord {
    let json = sealmq(data, &["audit", "prove", &index.to_string()]).ok();
    let file = scratch.join(format!("proof-{index}.json"));
    std::fs::write(&file, &json).unwrap();
    let ok = sealmq(scratch, &["audit", "check-proof", file.to_str().unwrap(), "--vkey", vkey]).ok();
    assert!(ok.starts_with(&format!("ok: record {index} ")), "check-proof: {ok}");
    let bundle = ProofBundle::from_json(&json).unwrap();
    assert_eq!(bundle.index, index);
    let proven = bundle.check(&vkey.parse::<VerifierKey>().unwrap()).unwrap();
    match proven.record {
        Record::Publish(record) => record,
        other => panic!("record {index} is not a publish: {other:?}"),
    }
}

/// Asserts what an unsigned (legacy) publish record says.
#[track_caller]
fn assert_record(record: &PublishRecord, device: &str, topic: &str, payload: &[u8], qos: u8, retain: bool) {
    assert_eq!(record.device_id, device, "{record:?}");
    assert_eq!(record.topic, topic, "{record:?}");
    assert_eq!(record.payload_sha256, sha256(payload), "payload hash of {record:?}");
    assert_eq!(record.payload_len as usize, payload.len(), "{record:?}");
    assert_eq!(record.qos, qos, "{record:?}");
    assert_eq!(record.retain, retain, "{record:?}");
    assert!(record.signature.is_none(), "a legacy publish is logged unsigned: {record:?}");
}

/// A payload that is not text and not trivially short.
fn payload(tag: u8) -> Vec<u8> {
    (0..3000u32).map(|i| u8::try_from((i * 7 + u32::from(tag)) % 256).unwrap()).collect()
}

// ---------------------------------------------------------------------------
// 1. QoS
// ---------------------------------------------------------------------------

#[test]
fn qos_0_1_2_are_delivered_at_the_lower_of_published_and_granted_over_mqtt_3_1_1() {
    run(async {
        let (_tmp, broker, _logs) = start();
        let mut subs = Vec::new();
        for granted in 0..3u8 {
            let mut sub = V4::connect(broker.mqtt, &format!("q4-sub-{granted}")).await;
            sub.subscribe("q4/#", granted).await;
            subs.push(sub);
        }
        let mut publisher = V4::connect(broker.mqtt, "q4-pub").await;
        for published in 0..3u8 {
            publisher.publish(&format!("q4/p{published}/é"), published, false, payload(published)).await;
        }
        for (granted, sub) in (0u8..).zip(subs.iter_mut()) {
            let mut got = BTreeMap::new();
            for _ in 0..3 {
                let m = sub.recv().await;
                assert!(!m.retain, "live message delivered with the retain flag: {m:?}");
                assert!(got.insert(m.topic.clone(), (m.qos as u8, m.payload.to_vec())).is_none(), "twice: {m:?}");
            }
            for published in 0..3u8 {
                let topic = format!("q4/p{published}/é");
                let (qos, body) = got.get(&topic).unwrap_or_else(|| panic!("{topic} missing: {:?}", got.keys()));
                assert_eq!(*qos, published.min(granted), "{topic} to a QoS {granted} subscriber");
                assert!(*body == payload(published), "{topic}: payload changed");
            }
        }
        for sub in &mut subs {
            let extra = sub.publishes_within(QUIET).await;
            assert!(extra.is_empty(), "duplicates: {extra:?}");
        }
        publisher.disconnect().await;
        stop_cleanly(broker);
    });
}

#[test]
fn qos_0_1_2_are_delivered_at_the_lower_of_published_and_granted_over_mqtt_5() {
    run(async {
        let (_tmp, broker, _logs) = start();
        let mut subs = Vec::new();
        for granted in 0..3u8 {
            let mut sub = V5::connect(broker.mqtt, &format!("q5-sub-{granted}")).await;
            sub.subscribe("q5/#", granted).await;
            subs.push(sub);
        }
        let mut publisher = V5::connect(broker.mqtt, "q5-pub").await;
        let mut index_of = BTreeMap::new();
        for published in 0..3u8 {
            let topic = format!("q5/p{published}/é");
            let index = publisher.publish(&topic, published, false, payload(published), &[]).await;
            index_of.insert(topic, index);
        }
        // Acknowledged publishes carry their index; records are numbered from 0 in order.
        assert_eq!(index_of["q5/p1/é"], Some(1));
        assert_eq!(index_of["q5/p2/é"], Some(2));
        for (granted, sub) in (0u8..).zip(subs.iter_mut()) {
            let mut got = BTreeMap::new();
            for _ in 0..3 {
                let m = sub.recv().await;
                assert!(!m.retain, "live message delivered with the retain flag: {m:?}");
                let index = the_index(&user_properties(m.properties.as_ref()));
                assert!(got.insert(topic5(&m), (m.qos as u8, m.payload.to_vec(), index)).is_none(), "twice: {m:?}");
            }
            for published in 0..3u8 {
                let topic = format!("q5/p{published}/é");
                let (qos, body, index) = got.get(&topic).unwrap_or_else(|| panic!("{topic} missing: {:?}", got.keys()));
                assert_eq!(*qos, published.min(granted), "{topic} to a QoS {granted} subscriber");
                assert!(*body == payload(published), "{topic}: payload changed");
                assert_eq!(*index, u64::from(published), "{topic}: {INDEX}");
            }
        }
        for sub in &mut subs {
            let extra = sub.publishes_within(QUIET).await;
            assert!(extra.is_empty(), "duplicates: {extra:?}");
        }
        publisher.disconnect().await;
        stop_cleanly(broker);
    });
}

/// The router delivers at the subscription's QoS (2) and requires its
/// PUBCOMPs in PUBREC order; the gateway downgrades some deliveries and
/// completes those itself. Completing a QoS 1 delivery before an earlier
/// QoS 2 one the client has not completed yet made rumqttd drop the link.
#[test]
fn mixed_qos_deliveries_to_a_qos_2_subscription_complete_in_order() {
    run(async {
        let (_tmp, broker, _logs) = start();
        let mut options = v5_options(broker.mqtt, "mix-sub");
        options.set_manual_acks(true);
        let mut sub = V5::connect_with(options).await;
        sub.subscribe("mix/#", 2).await;
        let mut sub4 = V4::connect(broker.mqtt, "mix-sub4").await;
        sub4.subscribe("mix/#", 2).await;
        let mut publisher = V5::connect(broker.mqtt, "mix-pub").await;
        for round in 0..4 {
            let (a, b) = (format!("mix/{round}/two"), format!("mix/{round}/one"));
            publisher.publish(&a, 2, false, "a", &[]).await;
            publisher.publish(&b, 1, false, "b", &[]).await;
            publisher.publish(&format!("mix/{round}/zero"), 0, false, "c", &[]).await;
            // Both held unacknowledged, then acknowledged together.
            let (first, second, third) = (sub.recv().await, sub.recv().await, sub.recv().await);
            let got: Vec<(String, u8)> = [&first, &second, &third].iter().map(|m| (topic5(m), m.qos as u8)).collect();
            assert_eq!(got, [(a.clone(), 2), (b.clone(), 1), (format!("mix/{round}/zero"), 0)], "round {round}");
            sub.client.ack(&first).await.unwrap();
            sub.client.ack(&second).await.unwrap();
            for _ in 0..3 {
                let m = sub4.recv().await;
                assert!(m.topic.starts_with(&format!("mix/{round}/")), "3.1.1 subscriber, round {round}: {m:?}");
            }
        }
        // Both subscribers are still connected and still get messages.
        publisher.publish("mix/after", 1, false, "still here", &[]).await;
        let m = sub.recv().await;
        assert_eq!(topic5(&m), "mix/after", "the manual-ack subscriber lost its link");
        sub.client.ack(&m).await.unwrap();
        assert_eq!(sub4.recv().await.topic, "mix/after");
        assert!(sub.conn.closed.is_none(), "{:?}", sub.conn.closed);
        assert!(sub4.publishes_within(QUIET).await.is_empty());
        assert!(sub4.conn.closed.is_none(), "{:?}", sub4.conn.closed);
        sub.disconnect().await;
        sub4.disconnect().await;
        publisher.disconnect().await;
        stop_cleanly(broker);
    });
}

// ---------------------------------------------------------------------------
// 2. Log indices, across protocol versions
// ---------------------------------------------------------------------------

#[test]
fn acks_and_v5_deliveries_carry_the_log_index_and_versions_interoperate() {
    run(async {
        let (tmp, broker, _logs) = start();
        let mut sub5 = V5::connect(broker.mqtt, "idx-sub5").await;
        sub5.subscribe("idx/#", 2).await;
        let mut sub4 = V4::connect(broker.mqtt, "idx-sub4").await;
        sub4.subscribe("idx/#", 2).await;
        let mut pub5 = V5::connect(broker.mqtt, "idx-pub5").await;
        let mut pub4 = V4::connect(broker.mqtt, "idx-pub4").await;

        // A client cannot forge the index: its own `sealmq-*` properties are
        // dropped. Each message is received before the next is published, so
        // the log order (and so the indices) is known.
        let spoof = [(INDEX, "999999"), ("sealmq-from", "someone-else"), ("app", "kept")];
        let expected = [
            ("idx/a", "one", 1u8, 0u64),
            ("idx/b", "two", 2, 1),
            ("idx/c", "three", 0, 2),
            ("idx/d", "from 3.1.1", 1, 3),
        ];
        for (topic, body, qos, index) in expected {
            match topic {
                "idx/a" => assert_eq!(pub5.publish(topic, qos, false, body, &spoof).await, Some(index), "PUBACK"),
                "idx/b" => assert_eq!(pub5.publish(topic, qos, false, body, &[]).await, Some(index), "PUBREC"),
                "idx/c" => assert_eq!(pub5.publish(topic, qos, false, body, &[]).await, None),
                _ => pub4.publish(topic, qos, false, body).await,
            }
            let m = sub5.recv().await;
            assert_eq!(
                (topic5(&m).as_str(), &m.payload[..], m.qos as u8),
                (topic, body.as_bytes(), qos),
                "v5 subscriber"
            );
            let properties = user_properties(m.properties.as_ref());
            assert_eq!(the_index(&properties), index, "{topic}: {properties:?}");
            assert!(
                !properties.iter().any(|(n, _)| n.starts_with("sealmq-") && n != INDEX),
                "the gateway's internal properties leaked: {properties:?}"
            );
            if topic == "idx/a" {
                assert!(
                    properties.contains(&("app".into(), "kept".into())),
                    "application property lost: {properties:?}"
                );
            }

            let m = sub4.recv().await;
            assert_eq!(
                (m.topic.as_str(), &m.payload[..], m.qos as u8),
                (topic, body.as_bytes(), qos),
                "3.1.1 subscriber"
            );
        }
        assert!(sub5.publishes_within(QUIET).await.is_empty());
        assert!(sub4.publishes_within(Duration::ZERO).await.is_empty());

        pub5.disconnect().await;
        pub4.disconnect().await;
        stop_cleanly(broker);

        // The indices are the records' in the log.
        let scratch = tmp.path();
        let data = tmp.path().join("data");
        let vkey = common::vkey(&data);
        assert_record(&prove(&data, scratch, &vkey, 0), "idx-pub5", "idx/a", b"one", 1, false);
        assert_record(&prove(&data, scratch, &vkey, 1), "idx-pub5", "idx/b", b"two", 2, false);
        assert_record(&prove(&data, scratch, &vkey, 2), "idx-pub5", "idx/c", b"three", 0, false);
        assert_record(&prove(&data, scratch, &vkey, 3), "idx-pub4", "idx/d", b"from 3.1.1", 1, false);
    });
}

// ---------------------------------------------------------------------------
// 3. Retained messages, across restarts
// ---------------------------------------------------------------------------

#[test]
fn retained_messages_and_their_clearing_survive_restarts() {
    run(async {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("data");
        let broker = BrokerProcess::start(&data, &[]);
        let logs = LogsOnPanic::of(&broker);

        let mut live = V4::connect(broker.mqtt, "ret-live").await;
        live.subscribe("ret/#", 2).await;
        let mut publisher = V4::connect(broker.mqtt, "ret-pub").await;
        publisher.publish("ret/keep", 1, true, "kept").await; // index 0
        publisher.publish("ret/gone", 1, true, "to be cleared").await; // 1
        publisher.publish("ret/gone", 1, true, "").await; // 2: clears it
        publisher.publish("ret/q0", 0, true, "retained at QoS 0").await; // 3
        publisher.publish("ret/plain", 1, false, "not retained").await; // 4

        // An established subscription gets live messages without the retain flag (MQTT-3.3.1-9).
        let got = live.publishes_within(Duration::from_millis(1500)).await;
        let topics: Vec<&str> = got.iter().map(|m| m.topic.as_str()).collect();
        assert!(
            topics.contains(&"ret/keep") && topics.contains(&"ret/plain") && topics.contains(&"ret/q0"),
            "{topics:?}"
        );
        for m in &got {
            assert!(!m.retain, "live delivery to an established subscription with retain set: {m:?}");
        }

        // A new subscription gets exactly the retained messages, flagged retained.
        let mut late = V5::connect(broker.mqtt, "ret-late").await;
        late.subscribe("ret/#", 2).await;
        let retained = late.publishes_within(QUIET).await;
        let summary = |ms: &[p5::Publish]| -> BTreeMap<String, (Vec<u8>, u8, bool, u64)> {
            ms.iter()
                .map(|m| {
                    let index = the_index(&user_properties(m.properties.as_ref()));
                    (topic5(m), (m.payload.to_vec(), m.qos as u8, m.retain, index))
                })
                .collect()
        };
        let expected = BTreeMap::from([
            ("ret/keep".to_string(), (b"kept".to_vec(), 1u8, true, 0u64)),
            ("ret/q0".to_string(), (b"retained at QoS 0".to_vec(), 0, true, 3)),
        ]);
        assert_eq!(retained.len(), 2, "retained messages: {retained:?}");
        assert_eq!(summary(&retained), expected, "before restart");
        late.disconnect().await;
        live.disconnect().await;
        publisher.disconnect().await;
        stop_cleanly(broker);
        drop(logs);

        // Restart: the retained messages are rebuilt from the log.
        let broker = BrokerProcess::start(&data, &[]);
        let logs = LogsOnPanic::of(&broker);
        let mut after = V5::connect(broker.mqtt, "ret-after").await;
        after.subscribe("ret/#", 2).await;
        let retained = after.publishes_within(QUIET).await;
        assert_eq!(retained.len(), 2, "retained messages after restart: {retained:?}");
        assert_eq!(summary(&retained), expected, "after restart");
        let mut after4 = V4::connect(broker.mqtt, "ret-after4").await;
        after4.subscribe("ret/keep", 1).await;
        let m = after4.recv().await;
        assert_eq!((m.topic.as_str(), &m.payload[..], m.qos as u8, m.retain), ("ret/keep", &b"kept"[..], 1, true));

        // Clear one and replace the other, then restart again.
        let mut publisher = V5::connect(broker.mqtt, "ret-pub").await;
        assert_eq!(publisher.publish("ret/keep", 1, true, Bytes::new(), &[]).await, Some(5));
        assert_eq!(publisher.publish("ret/q0", 2, true, "replaced", &[]).await, Some(6));
        publisher.disconnect().await;
        after.disconnect().await;
        after4.disconnect().await;
        stop_cleanly(broker);
        drop(logs);

        let broker = BrokerProcess::start(&data, &[]);
        let _logs = LogsOnPanic::of(&broker);
        let mut last = V5::connect(broker.mqtt, "ret-last").await;
        last.subscribe("ret/#", 1).await;
        let retained = last.publishes_within(QUIET).await;
        let expected = BTreeMap::from([("ret/q0".to_string(), (b"replaced".to_vec(), 1u8, true, 6u64))]);
        assert_eq!(retained.len(), 1, "retained messages after the second restart: {retained:?}");
        assert_eq!(summary(&retained), expected, "after the second restart");
        last.disconnect().await;
        stop_cleanly(broker);
        assert_eq!(verify_ok(&data).records, 7);
    });
}

// ---------------------------------------------------------------------------
// 4. Wills
// ---------------------------------------------------------------------------

#[test]
fn wills_are_published_and_logged_when_connections_drop_but_not_after_disconnect() {
    run(async {
        let (tmp, broker, _logs) = start();
        let mut sub = V5::connect(broker.mqtt, "will-watcher").await;
        sub.subscribe("will/#", 2).await;

        // Normal DISCONNECTs: no will.
        let mut options = v5_options(broker.mqtt, "will-normal5");
        options.set_last_will(p5::LastWill::new("will/normal5", "must not appear", Q5::AtLeastOnce, false, None));
        V5::connect_with(options).await.disconnect().await;
        let mut options = v4_options(broker.mqtt, "will-normal4");
        options.set_last_will(rumqttc::LastWill::new("will/normal4", "must not appear", q4(1), false));
        V4::connect_with(options).await.disconnect().await;
        let mut raw =
            raw_connect(broker.mqtt, &connect_with_will(4, "will-normal-raw", "will/normal-raw", b"no", 0)).await;
        raw.write_all(&[0xE0, 0x00]).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest)).await.expect("closed after DISCONNECT");
        drop(raw);

        // Keep-alive 0 ("no keep-alive", which rumqttd alone refuses) is accepted.
        let zero = connect_with_will_keep_alive(5, "will-zero", "will/zero", b"no", 1, 0);
        let mut raw = raw_connect(broker.mqtt, &zero).await;
        raw.write_all(&[0xE0, 0x00]).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest)).await.expect("closed after DISCONNECT");
        drop(raw);

        // Dropped connections: the will goes out.
        let mut options = v5_options(broker.mqtt, "will-drop5");
        options.set_last_will(p5::LastWill::new("will/v5", "v5 gone", Q5::AtLeastOnce, true, None));
        V5::connect_with(options).await.conn.kill().await;
        let mut options = v4_options(broker.mqtt, "will-drop4");
        options.set_last_will(rumqttc::LastWill::new("will/v4", "3.1.1 gone", q4(2), false));
        V4::connect_with(options).await.conn.kill().await;
        let raw = raw_connect(broker.mqtt, &connect_with_will(4, "will-raw4", "will/raw4", b"raw 3.1.1 gone", 1)).await;
        drop(raw);
        // MQTT 5 DISCONNECT with reason 0x04, "disconnect with will message".
        let mut raw = raw_connect(broker.mqtt, &connect_with_will(5, "will-raw5", "will/raw5", b"asked for", 0)).await;
        raw.write_all(&[0xE0, 0x01, 0x04]).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, raw.read_to_end(&mut rest)).await.expect("closed after DISCONNECT");
        drop(raw);
        // Silent past its keep-alive (1 s; the broker allows 1.5 s): closed, will out.
        let idle = connect_with_will_keep_alive(4, "will-idle", "will/idle", b"went quiet", 1, 1);
        let mut idle = raw_connect(broker.mqtt, &idle).await;
        let silent = Instant::now();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(WAIT, idle.read_to_end(&mut rest)).await.expect("closed after keep-alive");
        assert!(silent.elapsed() >= Duration::from_millis(1400), "closed too early: {:?}", silent.elapsed());
        drop(idle);

        // topic → (device, payload, QoS, retain)
        let expected = BTreeMap::from([
            ("will/v5".to_string(), ("will-drop5", &b"v5 gone"[..], 1u8, true)),
            ("will/v4".to_string(), ("will-drop4", &b"3.1.1 gone"[..], 2, false)),
            ("will/raw4".to_string(), ("will-raw4", &b"raw 3.1.1 gone"[..], 1, false)),
            ("will/raw5".to_string(), ("will-raw5", &b"asked for"[..], 0, false)),
            ("will/idle".to_string(), ("will-idle", &b"went quiet"[..], 1, false)),
        ]);
        let mut got = BTreeMap::new();
        let deadline = Instant::now() + WAIT;
        while got.len() < expected.len() && Instant::now() < deadline {
            let m = sub.recv().await;
            let index = the_index(&user_properties(m.properties.as_ref()));
            assert!(got.insert(topic5(&m), (m.payload.to_vec(), m.qos as u8, index)).is_none(), "twice: {m:?}");
        }
        let extra = sub.publishes_within(QUIET).await;
        assert!(extra.is_empty(), "unexpected: {extra:?}");
        assert_eq!(got.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "wills received");
        for (topic, (_, body, qos, _)) in &expected {
            assert_eq!((&got[topic].0[..], got[topic].1), (*body, *qos), "{topic}");
        }
        // A retained will stays for later subscribers.
        let mut late = V4::connect(broker.mqtt, "will-late").await;
        late.subscribe("will/#", 1).await;
        let retained = late.publishes_within(QUIET).await;
        let summary: Vec<(&str, &[u8], bool)> =
            retained.iter().map(|m| (m.topic.as_str(), &m.payload[..], m.retain)).collect();
        assert_eq!(summary, [("will/v5", &b"v5 gone"[..], true)], "retained wills");
        late.disconnect().await;
        sub.disconnect().await;
        stop_cleanly(broker);

        // Each will is a record of its device, provable.
        let data = tmp.path().join("data");
        let vkey = common::vkey(&data);
        assert_eq!(verify_ok(&data).records, expected.len() as u64, "exactly the wills are logged");
        for (topic, (device, body, qos, retain)) in &expected {
            let record = prove(&data, tmp.path(), &vkey, got[topic].2);
            assert_record(&record, device, topic, body, *qos, *retain);
        }
    });
}

// ---------------------------------------------------------------------------
// 5. Shared subscriptions
// ---------------------------------------------------------------------------

#[test]
fn a_shared_subscription_delivers_each_message_to_exactly_one_member() {
    run(async {
        let (_tmp, broker, _logs) = start();
        let mut a = V5::connect(broker.mqtt, "share-a").await;
        a.subscribe("$share/g/shared/+", 1).await;
        let mut b = V5::connect(broker.mqtt, "share-b").await;
        b.subscribe("$share/g/shared/+", 1).await;
        let mut all = V5::connect(broker.mqtt, "share-all").await;
        all.subscribe("shared/+", 1).await;

        let mut publisher = V5::connect(broker.mqtt, "share-pub").await;
        let sent: BTreeSet<String> = (0..20).map(|n| format!("m{n:02}")).collect();
        for body in &sent {
            publisher.publish("shared/t", 1, false, body.clone(), &[]).await;
        }

        let mut to_a = Vec::new();
        let mut to_b = Vec::new();
        let deadline = Instant::now() + WAIT;
        while to_a.len() + to_b.len() < sent.len() && Instant::now() < deadline {
            for m in a.publishes_within(Duration::from_millis(100)).await {
                assert_eq!(topic5(&m), "shared/t", "the group prefix is not part of the topic");
                to_a.push(String::from_utf8(m.payload.to_vec()).unwrap());
            }
            for m in b.publishes_within(Duration::from_millis(100)).await {
                to_b.push(String::from_utf8(m.payload.to_vec()).unwrap());
            }
        }
        to_a.extend(a.publishes_within(QUIET).await.iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()));
        to_b.extend(
            b.publishes_within(Duration::ZERO).await.iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()),
        );

        let mut union: Vec<String> = to_a.iter().chain(&to_b).cloned().collect();
        union.sort();
        assert_eq!(
            union,
            sent.iter().cloned().collect::<Vec<_>>(),
            "each message exactly once across the group (a: {to_a:?}, b: {to_b:?})"
        );
        assert!(!to_a.is_empty() && !to_b.is_empty(), "the group's members share the load: a {to_a:?}, b {to_b:?}");

        let everything: Vec<String> =
            all.publishes_within(QUIET).await.iter().map(|m| String::from_utf8(m.payload.to_vec()).unwrap()).collect();
        assert_eq!(everything, sent.iter().cloned().collect::<Vec<_>>(), "a plain subscriber gets all, in order");
        publisher.disconnect().await;
        stop_cleanly(broker);
    });
}

// ---------------------------------------------------------------------------
// 6. $SYS checkpoints
// ---------------------------------------------------------------------------

/// Opens a checkpoint note with the broker's verifier key.
#[track_caller]
fn open_note(vkey: &str, note: &[u8]) -> Checkpoint {
    let vkey: VerifierKey = vkey.parse().unwrap();
    let text = std::str::from_utf8(note).expect("a note is text");
    assert!(text.starts_with(&format!("{}\n", vkey.name())), "a note starts with the origin line: {text:?}");
    assert!(text.contains("\n\n— "), "a note has a signature line: {text:?}");
    vkey.open(text).unwrap_or_else(|e| panic!("the note does not verify ({e}): {text:?}"))
}

#[test]
fn checkpoints_are_published_on_sys_and_hash_does_not_match_sys_topics() {
    run(async {
        let (_tmp, broker, _logs) = start();
        let mut hash = V4::connect(broker.mqtt, "sys-hash").await;
        hash.subscribe("#", 1).await;
        let mut publisher = V5::connect(broker.mqtt, "sys-pub").await;
        publisher.publish("sys/one", 1, false, "1", &[]).await;

        let mut sys = V4::connect(broker.mqtt, "sys-watch").await;
        sys.subscribe("$SYS/#", 1).await;
        let m = sys.recv().await;
        assert_eq!(m.topic, "$SYS/sealmq/checkpoint");
        let first = open_note(&broker.vkey, &m.payload);
        assert_eq!(first.size, 1, "the first block holds the first record");

        // More records: a newer checkpoint follows within the block interval.
        let started = Instant::now();
        for n in 2..=4 {
            publisher.publish(&format!("sys/{n}"), 1, false, n.to_string(), &[]).await;
        }
        let newer = loop {
            let m = sys.recv().await;
            assert_eq!(m.topic, "$SYS/sealmq/checkpoint");
            let note = open_note(&broker.vkey, &m.payload);
            assert!(note.size >= first.size, "checkpoints only grow");
            if note.size == 4 {
                break note;
            }
        };
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert_ne!(newer.root, first.root);

        // A broker topic cannot be published to by clients.
        publisher.client.publish("$SYS/sealmq/checkpoint", Q5::AtLeastOnce, true, "forged").await.unwrap();
        let ack = publisher.puback().await;
        assert_eq!(ack.reason, p5::PubAckReason::NotAuthorized, "{ack:?}");

        // `#` never matched a `$` topic; a new `$SYS` subscriber gets the latest, retained.
        let to_hash = hash.publishes_within(QUIET).await;
        let topics: Vec<&str> = to_hash.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["sys/one", "sys/2", "sys/3", "sys/4"]);
        assert!(sys.publishes_within(Duration::ZERO).await.is_empty(), "the forged publish was delivered");
        let mut late = V5::connect(broker.mqtt, "sys-late").await;
        late.subscribe("$SYS/sealmq/checkpoint", 0).await;
        let m = late.recv().await;
        assert!(m.retain, "the checkpoint is retained");
        assert_eq!(open_note(&broker.vkey, &m.payload), newer);
        publisher.disconnect().await;
        stop_cleanly(broker);
    });
}

// ---------------------------------------------------------------------------
// 7. mosquitto clients
// ---------------------------------------------------------------------------

/// Runs a command with a deadline.
fn run_with_timeout(command: &mut Command, limit: Duration) -> Output {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{command:?} did not finish within {limit:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn mosquitto_pub_and_sub_work_as_with_any_broker() {
    run(async {
        let (_tmp, broker, _logs) = start();
        let port = broker.mqtt_port();
        let mut messages = Vec::new();
        for version in ["mqttv311", "mqttv5"] {
            for qos in 0..3u8 {
                // Lengths differ, so each debug line can be paired with its message.
                let message = format!("hello {version} q{qos}{}", "!".repeat(usize::from(qos) * 3));
                messages.push(("some/topic".to_string(), message, version, qos));
            }
            messages.push(("é/x".to_string(), format!("bonjour {version}"), version, 1));
        }
        let count = messages.len().to_string();

        // Two subscribers, one per version; `-d` shows the SUBACK and each PUBLISH's QoS.
        let mut subs = Vec::new();
        for version in ["mqttv311", "mqttv5"] {
            // Line-buffered, so the SUBACK line shows up while it runs.
            let mut child = Command::new("stdbuf")
                .args([
                    "-oL",
                    "mosquitto_sub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    version,
                    "-q",
                    "2",
                    "-t",
                    "#",
                    "-v",
                    "-d",
                ])
                .args(["-C", &count, "-W", "20"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("mosquitto_sub runs");
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            let mut seen = Vec::new();
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("{version}: no SUBACK: {seen:?}"));
                let subscribed = line.contains("received SUBACK");
                seen.push(line);
                if subscribed {
                    break;
                }
            }
            subs.push((version, child, rx, seen));
        }

        for (topic, message, version, qos) in &messages {
            let out = run_with_timeout(
                Command::new("mosquitto_pub").args(["-h", "127.0.0.1", "-p", &port, "-V", version]).args([
                    "-q",
                    &qos.to_string(),
                    "-t",
                    topic,
                    "-m",
                    message,
                ]),
                Duration::from_secs(10),
            );
            assert!(out.status.success(), "mosquitto_pub {version} q{qos}: {}", String::from_utf8_lossy(&out.stderr));
        }

        for (version, mut child, rx, mut lines) in subs {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    lines.extend(rx.try_iter());
                    panic!("mosquitto_sub {version} did not get {count} messages: {lines:#?}");
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            std::thread::sleep(Duration::from_millis(50));
            lines.extend(rx.try_iter());
            assert!(status.success(), "mosquitto_sub {version}: {status:?}: {lines:#?}");
            // Pair each "received PUBLISH (d0, qN, …, 'topic', … (L bytes))" debug
            // line with its message line, which for QoS 2 comes only after PUBREL.
            let mut received = Vec::new();
            let mut pending: Vec<(String, usize, u8)> = Vec::new();
            for line in &lines {
                if line.starts_with("Client ") {
                    if line.contains("received PUBLISH") {
                        let at = line.find(", q").expect("a QoS in the debug line") + 3;
                        let qos = line[at..at + 1].parse::<u8>().unwrap();
                        let topic = line.split('\'').nth(1).expect("a topic in the debug line").to_string();
                        let len = line.rsplit('(').next().unwrap().split(' ').next().unwrap().parse().unwrap();
                        pending.push((topic, len, qos));
                    }
                } else if let Some(at) = pending.iter().position(|(topic, len, _)| {
                    line.strip_prefix(topic.as_str())
                        .and_then(|rest| rest.strip_prefix(' '))
                        .is_some_and(|m| m.len() == *len)
                }) {
                    received.push((line.clone(), pending.remove(at).2));
                }
            }
            assert!(pending.is_empty(), "PUBLISHes without a printed message: {pending:?}: {lines:#?}");
            let mut expected: Vec<(String, u8)> =
                messages.iter().map(|(topic, message, _, qos)| (format!("{topic} {message}"), *qos)).collect();
            expected.sort();
            received.sort();
            assert_eq!(received, expected, "mosquitto_sub {version}");
        }
        stop_cleanly(broker);
    });
}

// ---------------------------------------------------------------------------
// 8. Clean shutdown and the audit trail
// ---------------------------------------------------------------------------

#[test]
fn after_a_clean_stop_the_log_verifies_and_every_delivery_is_provable() {
    run(async {
        let (tmp, broker, _logs) = start();
        let banner_vkey = broker.vkey.clone();
        let mut sub = V5::connect(broker.mqtt, "audit-sub").await;
        sub.subscribe("audit/#", 2).await;
        let mut pub5 = V5::connect(broker.mqtt, "audit-pub5").await;
        let mut pub4 = V4::connect(broker.mqtt, "audit-pub4").await;
        let mut sent = Vec::new();
        for n in 0..6u8 {
            let qos = n % 3;
            let topic = format!("audit/{n}/é");
            let body = payload(n);
            if n % 2 == 0 {
                pub5.publish(&topic, qos, n == 4, body.clone(), &[]).await;
                sent.push((topic, body, qos, n == 4, "audit-pub5"));
            } else {
                pub4.publish(&topic, qos, false, body.clone()).await;
                sent.push((topic, body, qos, false, "audit-pub4"));
            }
        }
        let mut delivered = BTreeMap::new();
        for _ in 0..sent.len() {
            let m = sub.recv().await;
            let index = the_index(&user_properties(m.properties.as_ref()));
            assert!(delivered.insert(topic5(&m), (index, m.payload.to_vec())).is_none(), "twice: {m:?}");
        }
        pub5.disconnect().await;
        pub4.disconnect().await;
        // Deliberately still connected at shutdown.
        let _still_connected = sub;
        stop_cleanly(broker);

        let data = tmp.path().join("data");
        assert_eq!(common::vkey(&data), banner_vkey);
        let verified = verify_ok(&data);
        assert_eq!(verified.records, sent.len() as u64, "one record per publish: {verified:?}");
        assert_eq!(verified.unsealed, 0, "a clean stop seals the last block: {verified:?}");
        assert_eq!(verified.tree_size, sent.len() as u64);
        let indices: BTreeSet<u64> = delivered.values().map(|(i, _)| *i).collect();
        assert_eq!(indices, (0..sent.len() as u64).collect(), "every record was delivered once with its index");
        for (topic, body, qos, retain, device) in &sent {
            let (index, got) = &delivered[topic];
            assert!(got == body, "{topic}: payload changed");
            let record = prove(&data, tmp.path(), &banner_vkey, *index);
            assert_record(&record, device, topic, body, *qos, *retain);
        }
        // Nothing past the last record.
        let past = sealmq(&data, &["audit", "prove", &sent.len().to_string()]);
        assert_ne!(past.code, 0, "a proof past the end: {}", past.stdout);
    });
}

// ---------------------------------------------------------------------------
// 9. HTTP
// ---------------------------------------------------------------------------

#[test]
fn http_serves_the_same_checkpoint_as_the_cli_and_sys_and_the_vkey() {
    run(async {
        let (tmp, broker, _logs) = start();
        let data = tmp.path().join("data");
        let (status, body) = http_get(broker.http, "/v1/vkey").await;
        assert_eq!((status, body.as_str()), (200, format!("{}\n", broker.vkey).as_str()));
        let (status, _) = http_get(broker.http, "/v1/checkpoint").await;
        assert_eq!(status, 404, "no block is sealed in a fresh log");

        let mut publisher = V5::connect(broker.mqtt, "http-pub").await;
        publisher.publish("http/x", 1, false, "x", &[]).await;
        publisher.publish("http/y", 2, false, "y", &[]).await;
        let deadline = Instant::now() + WAIT;
        let note = loop {
            let (status, body) = http_get(broker.http, "/v1/checkpoint").await;
            if status == 200 && open_note(&broker.vkey, body.as_bytes()).size == 2 {
                break body;
            }
            assert!(Instant::now() < deadline, "no checkpoint of size 2 over HTTP: {status} {body:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(sealmq(&data, &["audit", "checkpoint"]).ok(), note, "HTTP and the CLI disagree");
        let mut sys = V5::connect(broker.mqtt, "http-sys").await;
        sys.subscribe("$SYS/sealmq/checkpoint", 0).await;
        let m = sys.recv().await;
        assert_eq!(std::str::from_utf8(&m.payload).unwrap(), note, "HTTP and $SYS disagree");
        let (status, unknown) = http_get(broker.http, "/v1/nothing-here").await;
        assert_eq!(status, 404, "{unknown}");
        publisher.disconnect().await;
        stop_cleanly(broker);
        assert_eq!(sealmq(&data, &["audit", "checkpoint"]).ok(), note, "nothing to seal at a clean stop");
    });
}

// ---------------------------------------------------------------------------
// MQTT 5 subscription options the router lacks
// ---------------------------------------------------------------------------

#[test]
fn no_local_and_retain_as_published_are_honoured() {
    run(async {
        let (_tmp, broker, _logs) = start();
        let mut me = V5::connect(broker.mqtt, "opt-me").await;
        let mut rap = V5::connect(broker.mqtt, "opt-rap").await;
        let mut plain = V5::connect(broker.mqtt, "opt-plain").await;
        plain.subscribe("opt/#", 1).await;
        let codes =
            me.subscribe_filters(vec![p5::Filter { nolocal: true, ..p5::Filter::new("opt/#", Q5::AtLeastOnce) }]).await;
        assert_eq!(codes, vec![p5::SubscribeReasonCode::Success(Q5::AtLeastOnce)]);
        let codes = rap
            .subscribe_filters(vec![p5::Filter { preserve_retain: true, ..p5::Filter::new("opt/#", Q5::AtLeastOnce) }])
            .await;
        assert_eq!(codes, vec![p5::SubscribeReasonCode::Success(Q5::AtLeastOnce)]);

        me.publish("opt/mine", 1, false, "mine", &[]).await;
        me.publish("opt/retained", 1, true, "r", &[]).await;
        let got = rap.publishes_within(QUIET).await;
        let flags: Vec<(String, bool)> = got.iter().map(|m| (topic5(m), m.retain)).collect();
        assert_eq!(
            flags,
            [("opt/mine".to_string(), false), ("opt/retained".to_string(), true)],
            "Retain As Published keeps the publisher's retain flag (MQTT-3.3.1-13)"
        );
        let got = plain.publishes_within(Duration::ZERO).await;
        let flags: Vec<(String, bool)> = got.iter().map(|m| (topic5(m), m.retain)).collect();
        assert_eq!(
            flags,
            [("opt/mine".to_string(), false), ("opt/retained".to_string(), false)],
            "without Retain As Published, live messages are not flagged retained (MQTT-3.3.1-12)"
        );
        let own = me.publishes_within(Duration::ZERO).await;
        assert!(own.is_empty(), "No Local: a client does not get its own messages: {own:?}");
        me.disconnect().await;
        rap.disconnect().await;
        plain.disconnect().await;
        stop_cleanly(broker);
    });
}

/// Hubs subscribe to trees of hundreds of retained discovery messages
/// (`homeassistant/#`): a new subscription must get every one of them.
#[test]
fn a_new_subscription_gets_every_retained_message_even_hundreds() {
    run(async {
        let (_tmp, broker, _logs) = start();
        const TOPICS: usize = 250;
        let mut publisher = V5::connect(broker.mqtt, "many-pub").await;
        for n in 0..TOPICS {
            publisher
                .client
                .publish(format!("many/{n:03}/config"), Q5::AtMostOnce, true, format!("{n}"))
                .await
                .unwrap();
        }
        // Acknowledged after every earlier publish of the connection was logged and routed.
        publisher.publish("many/last", 1, false, "flush", &[]).await;
        let mut counts = Vec::new();
        for qos in [0u8, 1] {
            let mut hub = V5::connect(broker.mqtt, &format!("many-hub-{qos}")).await;
            hub.subscribe("many/+/config", qos).await;
            let mut got = BTreeSet::new();
            let deadline = Instant::now() + WAIT;
            while got.len() < TOPICS && Instant::now() < deadline {
                for m in hub.publishes_within(Duration::from_millis(200)).await {
                    assert!(m.retain, "{m:?}");
                    got.insert(topic5(&m));
                }
            }
            counts.push((qos, got.len()));
            hub.disconnect().await;
        }
        assert_eq!(counts, [(0, TOPICS), (1, TOPICS)], "(subscription QoS, retained messages delivered)");
        publisher.disconnect().await;
        stop_cleanly(broker);
    });
}
