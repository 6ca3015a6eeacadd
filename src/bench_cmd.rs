//! `sealmq bench`: load and measure an MQTT broker — sealmq, or any other
//! for comparison (`tests/bench/compare.sh` runs it against rumqttd alone
//! and Mosquitto too).
//!
//! Publishers and subscribers run in this one process, so the payload of
//! every message carries its publisher, its sequence number and the
//! monotonic time it was sent (20 bytes, then filler), and subscribers
//! measure publish-to-delivery latency on the same clock, and find lost and
//! duplicated messages by tracking each publisher's sequence numbers.
//!
//! **Why a hand-written client and not rumqttc's `AsyncClient`.** The load
//! tool shares the machine with the broker (one core each under
//! `compare.sh`), so every microsecond it spends per message is one the
//! measurement cannot see past. rumqttc's event loop moves each publish
//! through a request channel, allocates a `Publish` (and for MQTT 5 every
//! user property as `String`s) per message in both directions, keeps its
//! own in-flight bookkeeping that the tool would have to duplicate, and
//! hides the PUBACK properties the checkpoint measurement needs behind its
//! event types. Measured on this machine (1 → 1, QoS 1, 64 B, against
//! Mosquitto): see `BENCHMARKS.md` ("The load tool"). Here each connection
//! is one task over a split `TcpStream`: publishes are encoded straight into
//! a write buffer that goes out in one `write` per batch, frames are decoded
//! in place from the read buffer, and nothing is allocated per message
//! unless the message is signed.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, ValueEnum};
use ed25519_dalek::SigningKey;
use hdrhistogram::Histogram;
use sealmq_audit::mqs1;
use sealmq_audit::store::{DeviceSettings, Policy, Registry};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{Notify, Semaphore, watch};
use tokio::task::JoinSet;

/// `sealmq bench`'s options.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The broker's MQTT address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    host: String,
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

/// Bytes at the start of every payload: publisher (u32), sequence (u64),
/// send time in ns on this process's monotonic clock (u64), big-endian.
const HEADER: usize = 20;
/// Keep-alive asked for in CONNECT; every connection pings at half of it.
const KEEP_ALIVE_SECS: u16 = 60;
const PING_EVERY_NS: u64 = 30_000_000_000;
/// Encoded publishes are written once this much is buffered.
const WRITE_BATCH: usize = 64 * 1024;
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;
/// How long setup steps (CONNACK, SUBACK) may take.
const SETUP_TIMEOUT: Duration = Duration::from_secs(30);
/// At QoS 0 a publisher whose window has seen no delivery for this long
/// presumes its outstanding messages dropped and carries on.
const QOS0_STALL_NS: u64 = 1_000_000_000;
/// During the drain, a delivery is given up once nothing at all arrived for this long.
const DRAIN_STALL: Duration = Duration::from_secs(2);
/// The topic sealmq publishes each signed checkpoint on.
const CHECKPOINT_TOPIC: &str = "$SYS/sealmq/checkpoint";
/// The MQTT 5 user property of a sealmq PUBACK naming the record's log index.
const INDEX_PROPERTY: &[u8] = b"sealmq-index";
/// Shared subscription group name.
const SHARE_GROUP: &str = "sealmqbench";
/// A deadline that never comes (far enough, yet safe to add to an `Instant`).
const FAR: u64 = u64::MAX / 4;

// ---------------------------------------------------------------------------
// The clock: one monotonic epoch for the process, so publishers and
// subscribers compare times directly.

static EPOCH: OnceLock<Instant> = OnceLock::new();

fn now_ns() -> u64 {
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

fn at_ns(ns: u64) -> tokio::time::Instant {
    tokio::time::Instant::from_std(*EPOCH.get_or_init(Instant::now) + Duration::from_nanos(ns))
}

fn secs_ns(secs: f64) -> u64 {
    (secs * 1e9) as u64
}

// ---------------------------------------------------------------------------
// MQTT framing: the few packets a load tool sends and receives, encoded and
// decoded in place.

mod wire {
    use anyhow::{Result, bail, ensure};

    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBACK: u8 = 9;
    pub const DISCONNECT: u8 = 14;

    /// User property identifier (MQTT 5).
    const USER_PROPERTY: u8 = 0x26;
    /// Receive Maximum identifier (MQTT 5).
    const RECEIVE_MAXIMUM: u8 = 0x21;

    fn varint_len(n: usize) -> usize {
        match n {
            0..128 => 1,
            128..16_384 => 2,
            16_384..2_097_152 => 3,
            _ => 4,
        }
    }

    fn put_varint(buf: &mut Vec<u8>, mut n: usize) {
        loop {
            let byte = (n % 128) as u8;
            n /= 128;
            if n == 0 {
                buf.push(byte);
                return;
            }
            buf.push(byte | 0x80);
        }
    }

    /// A UTF-8 string or binary field: the tool's own strings are all short.
    fn put_str(buf: &mut Vec<u8>, s: &[u8]) {
        let len = u16::try_from(s.len()).expect("the tool's strings are shorter than 64 KiB");
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(s);
    }

    fn packet(buf: &mut Vec<u8>, first: u8, body: &[u8]) {
        buf.push(first);
        put_varint(buf, body.len());
        buf.extend_from_slice(body);
    }

    /// CONNECT with a clean session; MQTT 5 announces a Receive Maximum.
    pub fn connect(buf: &mut Vec<u8>, v5: bool, client_id: &str, keep_alive: u16, receive_max: u16) {
        let mut body = Vec::with_capacity(32 + client_id.len());
        put_str(&mut body, b"MQTT");
        body.push(if v5 { 5 } else { 4 });
        body.push(0x02); // clean session / clean start
        body.extend_from_slice(&keep_alive.to_be_bytes());
        if v5 {
            body.push(3);
            body.push(RECEIVE_MAXIMUM);
            body.extend_from_slice(&receive_max.to_be_bytes());
        }
        put_str(&mut body, client_id.as_bytes());
        packet(buf, 0x10, &body);
    }

    /// SUBSCRIBE to `filters`, all at `qos`.
    pub fn subscribe(buf: &mut Vec<u8>, v5: bool, pkid: u16, filters: &[String], qos: u8) {
        let mut body = Vec::new();
        body.extend_from_slice(&pkid.to_be_bytes());
        if v5 {
            body.push(0);
        }
        for filter in filters {
            put_str(&mut body, filter.as_bytes());
            body.push(qos);
        }
        packet(buf, 0x82, &body);
    }

    /// PUBLISH of `prefix ‖ payload` (the prefix is an MQS1 envelope's head,
    /// or empty), with an `mqs1` user property when given (MQTT 5).
    #[allow(clippy::too_many_arguments)]
    pub fn publish(
        buf: &mut Vec<u8>,
        v5: bool,
        topic: &[u8],
        qos: u8,
        pkid: u16,
        mqs1: Option<&str>,
        prefix: &[u8],
        payload: &[u8],
    ) {
        let props_len = mqs1.map_or(0, |value| 1 + 2 + 4 + 2 + value.len());
        let remaining = 2
            + topic.len()
            + if qos > 0 { 2 } else { 0 }
            + if v5 { varint_len(props_len) + props_len } else { 0 }
            + prefix.len()
            + payload.len();
        buf.reserve(5 + remaining);
        buf.push(0x30 | (qos << 1));
        put_varint(buf, remaining);
        put_str(buf, topic);
        if qos > 0 {
            buf.extend_from_slice(&pkid.to_be_bytes());
        }
        if v5 {
            put_varint(buf, props_len);
            if let Some(value) = mqs1 {
                buf.push(USER_PROPERTY);
                put_str(buf, b"mqs1");
                put_str(buf, value.as_bytes());
            }
        }
        buf.extend_from_slice(prefix);
        buf.extend_from_slice(payload);
    }

    /// PUBACK, PUBREC, PUBREL or PUBCOMP with reason "success" (omitted).
    pub fn ack(buf: &mut Vec<u8>, kind: u8, pkid: u16) {
        let first = (kind << 4) | if kind == PUBREL { 0x02 } else { 0 };
        let [hi, lo] = pkid.to_be_bytes();
        buf.extend_from_slice(&[first, 2, hi, lo]);
    }

    pub fn pingreq(buf: &mut Vec<u8>) {
        buf.extend_from_slice(&[0xC0, 0]);
    }

    /// A variable byte integer and its length in bytes.
    fn varint(buf: &[u8]) -> Result<Option<(usize, usize)>> {
        let mut value = 0usize;
        for (i, &byte) in buf.iter().enumerate().take(4) {
            value |= usize::from(byte & 0x7F) << (7 * i);
            if byte & 0x80 == 0 {
                return Ok(Some((value, i + 1)));
            }
        }
        if buf.len() >= 4 {
            bail!("malformed variable byte integer");
        }
        Ok(None)
    }

    fn varint_complete(buf: &[u8]) -> Result<(usize, usize)> {
        match varint(buf)? {
            Some(v) => Ok(v),
            None => bail!("truncated variable byte integer"),
        }
    }

    /// Where a frame at the start of a buffer lies, once its fixed header is in.
    #[derive(Debug, Clone, Copy)]
    pub struct Header {
        /// The first byte: type and flags.
        pub first: u8,
        /// Offset of the variable header.
        pub body: usize,
        /// Offset just past the frame.
        pub end: usize,
    }

    pub fn header(buf: &[u8]) -> Result<Option<Header>> {
        let Some(&first) = buf.first() else { return Ok(None) };
        Ok(varint(&buf[1..])?.map(|(len, used)| Header { first, body: 1 + used, end: 1 + used + len }))
    }

    fn u16_at(body: &[u8], at: usize) -> Result<u16> {
        match body.get(at..at + 2) {
            Some(b) => Ok(u16::from_be_bytes([b[0], b[1]])),
            None => bail!("truncated packet"),
        }
    }

    /// A received PUBLISH, borrowed from the read buffer.
    pub struct Publish<'a> {
        pub qos: u8,
        pub pkid: u16,
        pub topic: &'a [u8],
        pub payload: &'a [u8],
    }

    pub fn publish_in(first: u8, body: &[u8], v5: bool) -> Result<Publish<'_>> {
        let qos = (first >> 1) & 3;
        ensure!(qos < 3, "PUBLISH with QoS 3");
        let topic_len = usize::from(u16_at(body, 0)?);
        let mut at = 2 + topic_len;
        let topic = body.get(2..at).ok_or_else(|| anyhow::anyhow!("truncated PUBLISH"))?;
        let mut pkid = 0;
        if qos > 0 {
            pkid = u16_at(body, at)?;
            at += 2;
        }
        if v5 {
            let (props, used) = varint_complete(body.get(at..).unwrap_or_default())?;
            at += used + props;
        }
        let payload = body.get(at..).ok_or_else(|| anyhow::anyhow!("truncated PUBLISH"))?;
        Ok(Publish { qos, pkid, topic, payload })
    }

    /// Calls `f` with each MQTT 5 property's identifier and value bytes.
    fn properties<'a>(mut props: &'a [u8], mut f: impl FnMut(u8, &'a [u8])) -> Result<()> {
        while let Some(&id) = props.first() {
            props = &props[1..];
            let str_len = |p: &[u8], at: usize| u16_at(p, at).map(|n| 2 + usize::from(n));
            let size = match id {
                0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => 1,
                0x13 | 0x21 | 0x22 | 0x23 => 2,
                0x02 | 0x11 | 0x18 | 0x27 => 4,
                0x0B => varint_complete(props)?.1,
                0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => str_len(props, 0)?,
                USER_PROPERTY => {
                    let key = str_len(props, 0)?;
                    key + str_len(props, key)?
                }
                other => bail!("unknown MQTT 5 property {other:#04x}"),
            };
            ensure!(props.len() >= size, "truncated property");
            f(id, &props[..size]);
            props = &props[size..];
        }
        Ok(())
    }

    /// The value of user property `name` among `props`, if present.
    fn user_property<'a>(props: &'a [u8], name: &[u8]) -> Result<Option<&'a [u8]>> {
        let mut found = None;
        properties(props, |id, value| {
            if id == USER_PROPERTY && found.is_none() {
                let key_len = usize::from(u16::from_be_bytes([value[0], value[1]]));
                if &value[2..2 + key_len] == name {
                    found = Some(&value[2 + key_len + 2..]);
                }
            }
        })?;
        Ok(found)
    }

    /// A received PUBACK, PUBREC, PUBREL or PUBCOMP.
    pub struct Ack {
        pub pkid: u16,
        /// 0 when omitted (and always for 3.1.1).
        pub reason: u8,
        /// sealmq's `sealmq-index` user property.
        pub index: Option<u64>,
    }

    pub fn ack_in(body: &[u8], v5: bool, want_index: bool) -> Result<Ack> {
        let pkid = u16_at(body, 0)?;
        let mut ack = Ack { pkid, reason: 0, index: None };
        if v5 && body.len() > 2 {
            ack.reason = body[2];
            if want_index && body.len() > 3 {
                let (len, used) = varint_complete(&body[3..])?;
                let props = body.get(3 + used..3 + used + len).ok_or_else(|| anyhow::anyhow!("truncated ack"))?;
                if let Some(value) = user_property(props, super::INDEX_PROPERTY)? {
                    ack.index = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
                }
            }
        }
        Ok(ack)
    }

    /// CONNACK: the return/reason code and (MQTT 5) the server's Receive Maximum.
    pub fn connack_in(body: &[u8], v5: bool) -> Result<(u8, u16)> {
        ensure!(body.len() >= 2, "truncated CONNACK");
        let mut receive_max = u16::MAX;
        if v5 && body.len() > 2 {
            let (len, used) = varint_complete(&body[2..])?;
            let props = body.get(2 + used..2 + used + len).ok_or_else(|| anyhow::anyhow!("truncated CONNACK"))?;
            properties(props, |id, value| {
                if id == RECEIVE_MAXIMUM {
                    receive_max = u16::from_be_bytes([value[0], value[1]]);
                }
            })?;
        }
        Ok((body[1], receive_max))
    }

    /// SUBACK: the packet id and the per-filter codes.
    pub fn suback_in(body: &[u8], v5: bool) -> Result<(u16, Vec<u8>)> {
        let pkid = u16_at(body, 0)?;
        let mut at = 2;
        if v5 {
            let (len, used) = varint_complete(body.get(2..).unwrap_or_default())?;
            at += used + len;
        }
        Ok((pkid, body.get(at..).unwrap_or_default().to_vec()))
    }

    /// The reason of a DISCONNECT (MQTT 5), for messages.
    pub fn disconnect_reason(body: &[u8]) -> String {
        match body.first() {
            Some(code) => format!("DISCONNECT reason {code:#04x}"),
            None => "DISCONNECT".to_string(),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn publish_round_trips_through_the_decoder() {
            for v5 in [false, true] {
                let mut buf = Vec::new();
                let payload = vec![7u8; 300];
                publish(&mut buf, v5, b"a/b", 1, 513, v5.then_some("x".repeat(120).as_str()), b"MQS1", &payload);
                let h = header(&buf).unwrap().unwrap();
                assert_eq!(h.end, buf.len());
                let p = publish_in(h.first, &buf[h.body..h.end], v5).unwrap();
                assert_eq!((p.qos, p.pkid, p.topic), (1, 513, &b"a/b"[..]));
                assert_eq!(&p.payload[..4], b"MQS1");
                assert_eq!(p.payload.len(), 304);
            }
        }

        #[test]
        fn puback_index_property_is_read() {
            // PUBACK pkid 9, reason 0, properties: user property sealmq-index = 42.
            let mut body = vec![0, 9, 0];
            let mut props = vec![USER_PROPERTY];
            put_str(&mut props, b"sealmq-index");
            put_str(&mut props, b"42");
            put_varint(&mut body, props.len());
            body.extend_from_slice(&props);
            let ack = ack_in(&body, true, true).unwrap();
            assert_eq!((ack.pkid, ack.reason, ack.index), (9, 0, Some(42)));
        }

        #[test]
        fn incomplete_headers_wait_for_more_bytes() {
            assert!(header(&[0x30]).unwrap().is_none());
            assert!(header(&[0x30, 0x80]).unwrap().is_none());
            assert!(header(&[0x30, 0x80, 0x80, 0x80, 0x80]).is_err());
            let h = header(&[0x30, 0x80, 0x01]).unwrap().unwrap();
            assert_eq!((h.body, h.end), (3, 131));
        }
    }
}

// ---------------------------------------------------------------------------
// Connections.

/// One connected client, before its task takes it over.
struct Conn {
    stream: TcpStream,
    rbuf: Vec<u8>,
    v5: bool,
    /// The broker's Receive Maximum (MQTT 5 CONNACK), else 65535.
    receive_max: u16,
    /// Packet id of the next SUBSCRIBE.
    next_pkid: u16,
}

/// Reads more bytes into `rbuf`, with room for at least `want` more (the
/// rest of a frame that is partly in), and at least half a chunk.
async fn fill<R: tokio::io::AsyncRead + Unpin>(stream: &mut R, rbuf: &mut Vec<u8>, want: usize) -> Result<usize> {
    if rbuf.capacity() - rbuf.len() < want.max(READ_CHUNK / 2) {
        rbuf.reserve(want.max(READ_CHUNK));
    }
    Ok(stream.read_buf(rbuf).await?)
}

impl Conn {
    async fn open(addr: SocketAddr, v5: bool, client_id: &str) -> Result<Self> {
        let stream = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        let mut conn = Self { stream, rbuf: Vec::new(), v5, receive_max: u16::MAX, next_pkid: 1 };
        let mut buf = Vec::new();
        wire::connect(&mut buf, v5, client_id, KEEP_ALIVE_SECS, u16::MAX);
        conn.stream.write_all(&buf).await?;
        let (first, body) = conn.next_packet().await.with_context(|| format!("{client_id}: waiting for CONNACK"))?;
        ensure!(first >> 4 == wire::CONNACK, "{client_id}: expected CONNACK, got packet type {}", first >> 4);
        let (code, receive_max) = wire::connack_in(&body, v5)?;
        ensure!(code == 0, "{client_id}: the broker refused the connection (code {code:#04x})");
        conn.receive_max = receive_max.max(1);
        Ok(conn)
    }

    /// The next packet during setup (publishes that arrive then are skipped).
    async fn next_packet(&mut self) -> Result<(u8, Vec<u8>)> {
        let deadline = tokio::time::Instant::now() + SETUP_TIMEOUT;
        loop {
            if let Some(h) = wire::header(&self.rbuf)?
                && self.rbuf.len() >= h.end
            {
                let body = self.rbuf[h.body..h.end].to_vec();
                self.rbuf.drain(..h.end);
                if h.first >> 4 == wire::PUBLISH && h.first & 0x06 == 0 {
                    continue;
                }
                return Ok((h.first, body));
            }
            // Small reads here: thousands of idle connections may be set up,
            // and only the tasks that carry traffic need a large buffer.
            if self.rbuf.capacity() - self.rbuf.len() < 256 {
                self.rbuf.reserve(1024);
            }
            let read = tokio::time::timeout_at(deadline, self.stream.read_buf(&mut self.rbuf)).await;
            match read {
                Ok(Ok(0)) => bail!("the broker closed the connection"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return Err(e.into()),
                Err(_) => bail!("no answer within {} s", SETUP_TIMEOUT.as_secs()),
            }
        }
    }

    /// Subscribes to `filters` at `qos`, in packets of up to 64 filters.
    async fn subscribe(&mut self, filters: &[String], qos: u8) -> Result<()> {
        for chunk in filters.chunks(64) {
            let pkid = self.next_pkid;
            self.next_pkid += 1;
            let mut buf = Vec::new();
            wire::subscribe(&mut buf, self.v5, pkid, chunk, qos);
            self.stream.write_all(&buf).await?;
            let (first, body) = self.next_packet().await.context("waiting for SUBACK")?;
            ensure!(first >> 4 == wire::SUBACK, "expected SUBACK, got packet type {}", first >> 4);
            let (acked, codes) = wire::suback_in(&body, self.v5)?;
            ensure!(acked == pkid, "SUBACK for packet {acked}, expected {pkid}");
            for (filter, code) in chunk.iter().zip(&codes) {
                ensure!(*code < 0x80, "the broker refused the subscription to {filter:?} (code {code:#04x})");
            }
        }
        Ok(())
    }
}

/// Opens connections `0..n` named by `name`, `concurrency` at a time.
async fn open_many(
    addr: SocketAddr,
    v5: bool,
    n: usize,
    concurrency: usize,
    name: impl Fn(usize) -> String,
) -> Result<Vec<Conn>> {
    let gate = Arc::new(Semaphore::new(concurrency.max(1)));
    let mut tasks = JoinSet::new();
    for i in 0..n {
        let gate = Arc::clone(&gate);
        let client_id = name(i);
        tasks.spawn(async move {
            let _permit = gate.acquire_owned().await?;
            Ok::<_, anyhow::Error>((i, Conn::open(addr, v5, &client_id).await?))
        });
    }
    let mut conns: Vec<Option<Conn>> = (0..n).map(|_| None).collect();
    while let Some(joined) = tasks.join_next().await {
        let (i, conn) = joined??;
        conns[i] = Some(conn);
    }
    Ok(conns.into_iter().flatten().collect())
}

// ---------------------------------------------------------------------------
// State shared by the tasks of one run.

struct Run {
    publishers: usize,
    subscribers: usize,
    pattern: Pattern,
    qos: u8,
    v5: bool,
    /// Measured traffic: messages sent at or after `warm_end` and before
    /// `measure_end` (u64::MAX with --count).
    warm_end: u64,
    measure_end: u64,
    /// Sequence numbers handed out so far, per publisher: a subscriber
    /// treats anything at or above as not this run's.
    next_seq: Vec<AtomicU64>,
    /// QoS 0 window: per publisher, per receiving subscriber (one cell for
    /// pairs and shared), the highest sequence delivered + 1.
    delivered_upto: Vec<AtomicU64>,
    cells_per_publisher: usize,
    /// Wakes a publisher waiting on its QoS 0 window.
    wake: Vec<Notify>,
    /// First copies delivered, all subscribers together.
    distinct: AtomicU64,
    checkpoints: Option<Mutex<CheckpointWait>>,
}

impl Run {
    fn qos0_window(&self) -> bool {
        self.qos == 0 && self.subscribers > 0
    }

    /// The subscriber that takes publisher `p`'s topics under `pairs`.
    fn pair_of(&self, p: usize) -> usize {
        p % self.subscribers
    }

    fn cell(&self, publisher: usize, subscriber: usize) -> &AtomicU64 {
        let slot = if self.cells_per_publisher == 1 { 0 } else { subscriber };
        &self.delivered_upto[publisher * self.cells_per_publisher + slot]
    }

    /// The lowest "delivered up to" over the subscribers publisher `p` waits on.
    fn delivered_floor(&self, p: usize) -> u64 {
        let cells = &self.delivered_upto[p * self.cells_per_publisher..(p + 1) * self.cells_per_publisher];
        cells.iter().map(|c| c.load(Ordering::Acquire)).min().unwrap_or(u64::MAX)
    }

    /// How many subscribers should receive each of a publisher's messages.
    fn receivers(&self) -> u64 {
        match self.pattern {
            _ if self.subscribers == 0 => 0,
            Pattern::Pairs | Pattern::Shared => 1,
            Pattern::Fanout | Pattern::Wildcard => self.subscribers as u64,
        }
    }

    fn in_window(&self, ns: u64) -> bool {
        ns >= self.warm_end && ns < self.measure_end
    }
}

fn histogram() -> Histogram<u64> {
    // Nanoseconds, 1 ns to an hour, 3 significant digits.
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Records waiting for the first checkpoint that covers them.
struct CheckpointWait {
    /// Log index → when its PUBACK arrived.
    pending: BTreeMap<u64, u64>,
    /// The largest tree size seen in a checkpoint.
    covered: u64,
    hist: Histogram<u64>,
    notes: u64,
}

impl CheckpointWait {
    fn acked(&mut self, index: u64, at: u64) {
        if index < self.covered {
            // The checkpoint overtook the PUBACK.
            self.hist.saturating_record(0);
        } else {
            self.pending.insert(index, at);
        }
    }

    fn checkpoint(&mut self, tree_size: u64, at: u64) {
        self.notes += 1;
        if tree_size <= self.covered {
            return;
        }
        let later = self.pending.split_off(&tree_size);
        for (_, acked) in std::mem::replace(&mut self.pending, later) {
            self.hist.saturating_record(at.saturating_sub(acked).max(1));
        }
        self.covered = tree_size;
    }
}

// ---------------------------------------------------------------------------
// Publishers.

struct Publisher {
    id: usize,
    device_id: String,
    topics: Vec<String>,
    payload: Vec<u8>,
    signer: Option<SigningKey>,
    window: usize,
    /// ns between two messages; 0: no schedule.
    interval_ns: u64,
    count: Option<u64>,
    stop_at: Option<u64>,
    drain_ns: u64,
}

/// What one publisher did.
#[derive(Default)]
struct Published {
    sent: u64,
    sent_in_window: u64,
    acked: u64,
    acked_in_window: u64,
    last_ack_ns: u64,
    last_send_ns: u64,
    rejected: u64,
    unacked: u64,
    /// Sequences not expected at subscribers: rejected or never acknowledged.
    excluded: Vec<u64>,
    ack_hist: Option<Histogram<u64>>,
    window_stalls: u64,
}

#[derive(Clone, Copy)]
struct Flight {
    seq: u64,
    sent_ns: u64,
}

async fn run_publisher(me: Publisher, mut conn: Conn, run: Arc<Run>) -> Result<Published> {
    let id = me.id;
    let qos = run.qos;
    let v5 = run.v5;
    let window = if qos > 0 { me.window.min(usize::from(conn.receive_max)) } else { me.window }.max(1);
    let want_index = run.checkpoints.is_some();
    let mut flights: Vec<Option<Flight>> = if qos > 0 { vec![None; 1 << 16] } else { Vec::new() };
    let mut in_flight = 0usize;
    let mut next_pkid: u16 = 0;
    let mut out = Published::default();
    let mut ack_hist = histogram();
    let mut payload = me.payload;
    payload[..4].copy_from_slice(&u32::try_from(id).context("too many publishers")?.to_be_bytes());
    let start = now_ns();
    // Publishers on a schedule start spread over one interval, not all at once.
    let offset = me.interval_ns * id as u64 / run.publishers.max(1) as u64;
    let mut seq = 0u64;
    let mut sending = true;
    let mut drain_deadline = u64::MAX;
    // QoS 0 window: sequences below this count as delivered, and when the
    // window last moved.
    let mut qos0_floor = 0u64;
    let mut qos0_moved = start;
    let mut wbuf: Vec<u8> = Vec::with_capacity(WRITE_BATCH + payload.len() + 256);
    let mut woff = 0usize;
    let mut need = 0usize;
    // One timer, re-armed only when the next deadline changes (schedule,
    // stop, QoS 0 stall, drain), rather than a new timer per loop turn.
    let timer = tokio::time::sleep_until(at_ns(FAR));
    tokio::pin!(timer);
    let mut timer_at = FAR;
    let mut ping = tokio::time::interval_at(at_ns(start + PING_EVERY_NS), Duration::from_nanos(PING_EVERY_NS));
    let (mut rd, mut wr) = conn.stream.split();
    loop {
        let now = now_ns();
        if sending && (me.count.is_some_and(|n| seq >= n) || me.stop_at.is_some_and(|t| now >= t)) {
            sending = false;
            drain_deadline = now + me.drain_ns;
        }
        // Encode as many publishes as the window, the schedule and the batch allow.
        let mut wake_at = if sending { me.stop_at.unwrap_or(FAR) } else { drain_deadline };
        let mut blocked_qos0 = false;
        while sending && wbuf.len() - woff < WRITE_BATCH && me.count.is_none_or(|n| seq < n) {
            if qos > 0 && in_flight >= window {
                break;
            }
            if run.qos0_window() && seq - qos0_floor >= window as u64 {
                let floor = run.delivered_floor(id);
                if floor > qos0_floor {
                    (qos0_floor, qos0_moved) = (floor, now_ns());
                }
                if seq - qos0_floor >= window as u64 {
                    if now_ns() >= qos0_moved + QOS0_STALL_NS {
                        // Nothing delivered for a while: the broker dropped
                        // what is outstanding (QoS 0 may be dropped); go on.
                        (qos0_floor, qos0_moved) = (seq, now_ns());
                        out.window_stalls += 1;
                    } else {
                        blocked_qos0 = true;
                        wake_at = wake_at.min(qos0_moved + QOS0_STALL_NS);
                        break;
                    }
                }
            }
            if me.interval_ns > 0 {
                let due = start + offset + seq * me.interval_ns;
                if due > now_ns() {
                    wake_at = wake_at.min(due);
                    break;
                }
            }
            let topic = &me.topics[(seq % me.topics.len() as u64) as usize];
            let sent = now_ns();
            payload[4..12].copy_from_slice(&seq.to_be_bytes());
            payload[12..20].copy_from_slice(&sent.to_be_bytes());
            let pkid = if qos > 0 {
                // The window is far below 65535, so a free id is near.
                loop {
                    next_pkid = next_pkid.checked_add(1).unwrap_or(1);
                    if flights[usize::from(next_pkid)].is_none() {
                        break next_pkid;
                    }
                }
            } else {
                0
            };
            // Publish the sequence before the bytes leave: a subscriber
            // takes anything at or above it for another run's message.
            run.next_seq[id].store(seq + 1, Ordering::Release);
            match &me.signer {
                Some(key) => {
                    let wall_ms = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
                    let sb = mqs1::sign(key, &me.device_id, topic, &payload, false, seq + 1, wall_ms)?;
                    if v5 {
                        let value = sb.to_property_value();
                        wire::publish(&mut wbuf, v5, topic.as_bytes(), qos, pkid, Some(&value), &[], &payload);
                    } else {
                        let mut head = [0u8; mqs1::ENVELOPE_OVERHEAD];
                        head[..mqs1::MAGIC.len()].copy_from_slice(mqs1::MAGIC);
                        head[mqs1::MAGIC.len()..].copy_from_slice(&sb.to_bytes());
                        wire::publish(&mut wbuf, v5, topic.as_bytes(), qos, pkid, None, &head, &payload);
                    }
                }
                None => wire::publish(&mut wbuf, v5, topic.as_bytes(), qos, pkid, None, &[], &payload),
            }
            if qos > 0 {
                flights[usize::from(pkid)] = Some(Flight { seq, sent_ns: sent });
                in_flight += 1;
            }
            if run.in_window(sent) {
                out.sent_in_window += 1;
            }
            out.last_send_ns = sent;
            seq += 1;
        }
        if sending && me.count.is_some_and(|n| seq >= n) {
            sending = false;
            drain_deadline = now_ns() + me.drain_ns;
            wake_at = drain_deadline;
        }
        let writing = woff < wbuf.len();
        if !sending && ((!writing && in_flight == 0) || now_ns() >= drain_deadline) {
            break;
        }
        if wake_at != timer_at {
            timer.as_mut().reset(at_ns(wake_at));
            timer_at = wake_at;
        }
        tokio::select! {
            read = fill(&mut rd, &mut conn.rbuf, need) => {
                if read? == 0 {
                    bail!("the broker closed publisher {}'s connection", me.device_id);
                }
                let now = now_ns();
                let mut at = 0;
                need = 0;
                while let Some(h) = wire::header(&conn.rbuf[at..])? {
                    if conn.rbuf.len() - at < h.end {
                        need = h.end - (conn.rbuf.len() - at);
                        break;
                    }
                    let body = &conn.rbuf[at + h.body..at + h.end];
                    at += h.end;
                    let completes = match h.first >> 4 {
                        wire::PUBACK if qos == 1 => true,
                        wire::PUBREC if qos == 2 => false,
                        wire::PUBCOMP if qos == 2 => true,
                        wire::DISCONNECT => bail!(
                            "the broker disconnected publisher {}: {}", me.device_id, wire::disconnect_reason(body)
                        ),
                        _ => continue,
                    };
                    let ack = wire::ack_in(body, v5, want_index)?;
                    let Some(flight) = flights[usize::from(ack.pkid)] else { continue };
                    if let (Some(index), Some(wait)) = (ack.index, &run.checkpoints)
                        && run.in_window(flight.sent_ns)
                    {
                        wait.lock().unwrap_or_else(|p| p.into_inner()).acked(index, now);
                    }
                    if ack.reason >= 0x80 {
                        flights[usize::from(ack.pkid)] = None;
                        in_flight -= 1;
                        out.rejected += 1;
                        out.excluded.push(flight.seq);
                        continue;
                    }
                    if !completes {
                        wire::ack(&mut wbuf, wire::PUBREL, ack.pkid);
                        continue;
                    }
                    flights[usize::from(ack.pkid)] = None;
                    in_flight -= 1;
                    out.acked += 1;
                    out.last_ack_ns = now;
                    if run.in_window(now) {
                        out.acked_in_window += 1;
                    }
                    if run.in_window(flight.sent_ns) {
                        ack_hist.saturating_record(now.saturating_sub(flight.sent_ns).max(1));
                    }
                }
                conn.rbuf.drain(..at);
            }
            written = wr.write(&wbuf[woff..]), if writing => {
                woff += written?;
                if woff == wbuf.len() {
                    wbuf.clear();
                    woff = 0;
                }
            }
            () = &mut timer => {}
            _ = run.wake[id].notified(), if blocked_qos0 => {}
            _ = ping.tick() => wire::pingreq(&mut wbuf),
        }
    }
    out.sent = seq;
    for flight in flights.iter().flatten() {
        out.unacked += 1;
        out.excluded.push(flight.seq);
    }
    out.ack_hist = Some(ack_hist);
    // No DISCONNECT: rumqttd 0.20 frees a connection's slot both on
    // DISCONNECT and on close, which can drop an innocent new connection
    // that took the slot in between (see broker/src/upstream.rs); a plain
    // close means the same to every broker here, since there is no will.
    let _ = wr.shutdown().await;
    Ok(out)
}

// ---------------------------------------------------------------------------
// Subscribers.

/// Which sequence numbers of one publisher a subscriber got.
#[derive(Default, Clone)]
struct SeqSet {
    bits: Vec<u64>,
    distinct: u64,
    dups: u64,
}

impl SeqSet {
    /// Adds `seq`; false if it was there (a duplicate).
    fn insert(&mut self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        if word >= self.bits.len() {
            self.bits.resize((word + 1).max(self.bits.len() * 2), 0);
        }
        let bit = 1u64 << (seq % 64);
        if self.bits[word] & bit != 0 {
            self.dups += 1;
            return false;
        }
        self.bits[word] |= bit;
        self.distinct += 1;
        true
    }

    fn contains(&self, seq: u64) -> bool {
        self.bits.get((seq / 64) as usize).is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// How many of `0..upto` are in the set.
    fn count_below(&self, upto: u64) -> u64 {
        let full = (upto / 64) as usize;
        let mut n: u64 = self.bits.iter().take(full).map(|w| u64::from(w.count_ones())).sum();
        if let Some(w) = self.bits.get(full) {
            let mask = (1u64 << (upto % 64)) - 1;
            n += u64::from((w & mask).count_ones());
        }
        n
    }

    /// How many are in both sets.
    fn overlap(&self, other: &SeqSet) -> u64 {
        self.bits.iter().zip(&other.bits).map(|(a, b)| u64::from((a & b).count_ones())).sum()
    }

    fn union_with(&mut self, other: &SeqSet) {
        if other.bits.len() > self.bits.len() {
            self.bits.resize(other.bits.len(), 0);
        }
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= b;
        }
        self.distinct = self.bits.iter().map(|w| u64::from(w.count_ones())).sum();
    }
}

/// What one subscriber received.
struct Received {
    /// Per publisher.
    seen: Vec<SeqSet>,
    hist: Histogram<u64>,
    delivered_in_window: u64,
    last_recv_ns: u64,
    /// Payloads that are not this run's (too short, unknown publisher or sequence).
    foreign: u64,
}

async fn run_subscriber(
    index: usize,
    mut conn: Conn,
    run: Arc<Run>,
    mut stop: watch::Receiver<bool>,
) -> Result<Received> {
    let v5 = run.v5;
    let mut got = Received {
        seen: vec![SeqSet::default(); run.publishers],
        hist: histogram(),
        delivered_in_window: 0,
        last_recv_ns: 0,
        foreign: 0,
    };
    let mut wbuf: Vec<u8> = Vec::with_capacity(4096);
    let mut woff = 0usize;
    let mut need = 0usize;
    // QoS 2: packet ids received and not yet released (PUBREL), as bits.
    let mut awaiting_release = vec![0u64; (1 << 16) / 64];
    let mut ping = tokio::time::interval_at(at_ns(now_ns() + PING_EVERY_NS), Duration::from_nanos(PING_EVERY_NS));
    let (mut rd, mut wr) = conn.stream.split();
    loop {
        let writing = woff < wbuf.len();
        tokio::select! {
            read = fill(&mut rd, &mut conn.rbuf, need) => {
                if read? == 0 {
                    bail!("the broker closed subscriber {index}'s connection");
                }
                // One clock reading per read: these frames arrived together.
                let now = now_ns();
                let mut at = 0;
                need = 0;
                while let Some(h) = wire::header(&conn.rbuf[at..])? {
                    if conn.rbuf.len() - at < h.end {
                        need = h.end - (conn.rbuf.len() - at);
                        break;
                    }
                    let body = &conn.rbuf[at + h.body..at + h.end];
                    at += h.end;
                    match h.first >> 4 {
                        wire::PUBLISH => {
                            let publish = wire::publish_in(h.first, body, v5)?;
                            match publish.qos {
                                1 => wire::ack(&mut wbuf, wire::PUBACK, publish.pkid),
                                2 => {
                                    wire::ack(&mut wbuf, wire::PUBREC, publish.pkid);
                                    // A QoS 2 receiver takes a packet id it has
                                    // not yet seen released as a resend, and
                                    // must not pass it on again.
                                    let (word, bit) = (usize::from(publish.pkid / 64), 1u64 << (publish.pkid % 64));
                                    if awaiting_release[word] & bit != 0 {
                                        continue;
                                    }
                                    awaiting_release[word] |= bit;
                                }
                                _ => {}
                            }
                            on_message(&run, index, &mut got, publish.payload, now);
                        }
                        wire::PUBREL => {
                            let ack = wire::ack_in(body, v5, false)?;
                            awaiting_release[usize::from(ack.pkid / 64)] &= !(1u64 << (ack.pkid % 64));
                            wire::ack(&mut wbuf, wire::PUBCOMP, ack.pkid);
                        }
                        wire::DISCONNECT => {
                            bail!("the broker disconnected subscriber {index}: {}", wire::disconnect_reason(body))
                        }
                        _ => {}
                    }
                }
                conn.rbuf.drain(..at);
            }
            written = wr.write(&wbuf[woff..]), if writing => {
                woff += written?;
                if woff == wbuf.len() {
                    wbuf.clear();
                    woff = 0;
                }
            }
            _ = ping.tick() => wire::pingreq(&mut wbuf),
            _ = stop.changed() => break,
        }
    }
    let _ = wr.shutdown().await;
    Ok(got)
}

fn on_message(run: &Run, index: usize, got: &mut Received, payload: &[u8], now: u64) {
    // Brokers other than sealmq pass an MQS1 envelope through unopened.
    let data = match payload.strip_prefix(mqs1::MAGIC) {
        Some(rest) if rest.len() >= mqs1::SB_LEN + HEADER => &rest[mqs1::SB_LEN..],
        _ => payload,
    };
    let Some(head) = data.get(..HEADER) else {
        got.foreign += 1;
        return;
    };
    let publisher = u32::from_be_bytes(head[0..4].try_into().expect("4 bytes")) as usize;
    let seq = u64::from_be_bytes(head[4..12].try_into().expect("8 bytes"));
    let sent = u64::from_be_bytes(head[12..20].try_into().expect("8 bytes"));
    if publisher >= run.publishers || seq >= run.next_seq[publisher].load(Ordering::Acquire) {
        got.foreign += 1;
        return;
    }
    if !got.seen[publisher].insert(seq) {
        return;
    }
    run.distinct.fetch_add(1, Ordering::Relaxed);
    if run.qos0_window() {
        run.cell(publisher, index).fetch_max(seq + 1, Ordering::AcqRel);
        run.wake[publisher].notify_one();
    }
    if run.in_window(sent) {
        got.hist.saturating_record(now.saturating_sub(sent).max(1));
    }
    if run.in_window(now) {
        got.delivered_in_window += 1;
    }
    got.last_recv_ns = now;
}

/// Follows `$SYS/sealmq/checkpoint`: each note's second line is its tree size.
async fn run_checkpoint_watch(mut conn: Conn, run: Arc<Run>, mut stop: watch::Receiver<bool>) -> Result<()> {
    let v5 = run.v5;
    let Some(wait) = &run.checkpoints else { return Ok(()) };
    let mut wbuf = Vec::new();
    let mut ping = tokio::time::interval_at(at_ns(now_ns() + PING_EVERY_NS), Duration::from_nanos(PING_EVERY_NS));
    let (mut rd, mut wr) = conn.stream.split();
    loop {
        tokio::select! {
            read = fill(&mut rd, &mut conn.rbuf, 0) => {
                if read? == 0 {
                    bail!("the broker closed the checkpoint watcher's connection");
                }
                let now = now_ns();
                let mut at = 0;
                while let Some(h) = wire::header(&conn.rbuf[at..])? {
                    if conn.rbuf.len() - at < h.end {
                        break;
                    }
                    let body = &conn.rbuf[at + h.body..at + h.end];
                    at += h.end;
                    if h.first >> 4 != wire::PUBLISH {
                        continue;
                    }
                    let publish = wire::publish_in(h.first, body, v5)?;
                    if publish.topic != CHECKPOINT_TOPIC.as_bytes() {
                        continue;
                    }
                    let size = std::str::from_utf8(publish.payload)
                        .ok()
                        .and_then(|note| note.lines().nth(1))
                        .and_then(|line| line.trim().parse::<u64>().ok());
                    if let Some(size) = size {
                        wait.lock().unwrap_or_else(|p| p.into_inner()).checkpoint(size, now);
                    }
                }
                conn.rbuf.drain(..at);
            }
            _ = ping.tick() => {
                wbuf.clear();
                wire::pingreq(&mut wbuf);
                wr.write_all(&wbuf).await?;
            }
            _ = stop.changed() => break,
        }
    }
    Ok(())
}

/// Keeps an idle connection alive (pings) until told to stop.
async fn run_idle(conn: Conn, mut stop: watch::Receiver<bool>) -> Result<()> {
    let mut stream = conn.stream;
    // A small buffer: there may be thousands of these, and only PINGRESPs come.
    let mut buf = [0u8; 64];
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => {
                if read? == 0 {
                    bail!("the broker closed an idle connection");
                }
            }
            _ = tokio::time::sleep(Duration::from_nanos(PING_EVERY_NS)) => stream.write_all(&[0xC0, 0]).await?,
            _ = stop.changed() => break,
        }
    }
    let _ = stream.shutdown().await;
    Ok(())
}

// ---------------------------------------------------------------------------
// The broker process, from /proc.

/// VmRSS of `pid`, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// User + system CPU time of a process, in seconds. /proc counts in
/// USER_HZ ticks, which Linux fixes at 100 for this interface.
fn cpu_secs(pid: &str) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces; fields after it are plain.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) as f64 / 100.0)
}

#[derive(Clone, Copy, Default)]
struct CpuMark {
    at: u64,
    broker: Option<f64>,
    tool: Option<f64>,
}

fn cpu_mark(broker_pid: Option<u32>) -> CpuMark {
    CpuMark { at: now_ns(), broker: broker_pid.and_then(|pid| cpu_secs(&pid.to_string())), tool: cpu_secs("self") }
}

/// Percent of one core used between two marks.
fn cpu_percent(from: CpuMark, to: CpuMark, pick: impl Fn(&CpuMark) -> Option<f64>) -> Option<f64> {
    let secs = to.at.saturating_sub(from.at) as f64 / 1e9;
    Some((pick(&to)? - pick(&from)?) / secs * 100.0).filter(|_| secs > 0.0)
}

// ---------------------------------------------------------------------------
// Signed devices.

/// Registers each publisher as a `signed` device with a fresh key in the
/// registry of `data`, and waits until the running broker has logged the
/// keys (it reloads the registry within a second of a change).
async fn register(data: &std::path::Path, device_ids: &[String]) -> Result<Vec<SigningKey>> {
    let registry = Registry::open(data).await.with_context(|| format!("opening the registry in {}", data.display()))?;
    let mut keys = Vec::with_capacity(device_ids.len());
    for id in device_ids {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a device key: {e}"))?;
        let key = SigningKey::from_bytes(&seed);
        let settings = DeviceSettings {
            policy: Some(Policy::Signed),
            key: Some(key.verifying_key().to_bytes()),
            ..Default::default()
        };
        registry.add_device(id, &settings).await.with_context(|| format!("registering device {id}"))?;
        keys.push(key);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if registry.snapshot().await?.unlogged == 0 {
            break;
        }
        if Instant::now() > deadline {
            registry.close().await;
            bail!("the broker did not log the new device keys within 30 s: is it running on {}?", data.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    registry.close().await;
    // The broker swaps in its new view right after draining the outbox.
    tokio::time::sleep(Duration::from_millis(300)).await;
    Ok(keys)
}

// ---------------------------------------------------------------------------
// The run.

/// Latency summary in milliseconds.
fn latency_json(hist: &Histogram<u64>) -> Value {
    let ms = |ns: u64| (ns as f64 / 1e4).round() / 100.0;
    if hist.is_empty() {
        return Value::Null;
    }
    json!({
        "count": hist.len(),
        "p50": ms(hist.value_at_quantile(0.50)),
        "p90": ms(hist.value_at_quantile(0.90)),
        "p99": ms(hist.value_at_quantile(0.99)),
        "max": ms(hist.max()),
        "mean": (hist.mean() / 1e4).round() / 100.0,
    })
}

/// Outcome of the loss and duplicate analysis.
#[derive(Default)]
struct Tally {
    delivered: u64,
    lost: u64,
    duplicated: u64,
    unexpected: u64,
}

fn tally(run: &Run, published: &[Published], received: &[Received]) -> Tally {
    let mut t = Tally::default();
    let expected_at = |p: usize, s: usize| run.pattern != Pattern::Pairs || run.pair_of(p) == s;
    for (p, out) in published.iter().enumerate() {
        let expected = out.sent - out.excluded.len() as u64;
        let missing = |got: &SeqSet| {
            let excluded_got = out.excluded.iter().filter(|&&seq| got.contains(seq)).count() as u64;
            expected - (got.count_below(out.sent) - excluded_got)
        };
        match run.pattern {
            Pattern::Shared if !received.is_empty() => {
                let mut union = SeqSet::default();
                let mut total = 0;
                for r in received {
                    let got = &r.seen[p];
                    t.duplicated += got.dups + union.overlap(got);
                    total += got.distinct;
                    union.union_with(got);
                }
                t.delivered += total;
                t.lost += missing(&union);
            }
            _ => {
                for (s, r) in received.iter().enumerate() {
                    let got = &r.seen[p];
                    t.delivered += got.distinct;
                    t.duplicated += got.dups;
                    if expected_at(p, s) {
                        t.lost += missing(got);
                    } else {
                        t.unexpected += got.distinct;
                    }
                }
            }
        }
    }
    t
}

fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

pub async fn run(args: BenchArgs) -> Result<ExitCode> {
    if args.verify_ceiling {
        return ceiling::run(&args);
    }
    now_ns();
    let duration = args.duration.unwrap_or(10.0);
    ensure!(args.payload >= HEADER, "--payload must be at least {HEADER} bytes");
    ensure!(args.topics >= 1, "--topics must be at least 1");
    ensure!(args.inflight >= 1 && args.inflight < 60_000, "--inflight must be between 1 and 59999");
    ensure!(args.rate >= 0.0 && args.rate.is_finite(), "--rate must be 0 or positive");
    ensure!(duration > 0.0 && args.warmup >= 0.0 && args.drain >= 0.0, "durations must be positive");
    ensure!(!args.checkpoints || args.mqtt == Mqtt::V5, "--checkpoints needs --mqtt 5 (PUBACKs carry the log index)");
    ensure!(args.idle == 0 || args.broker_pid.is_some(), "--idle needs --broker-pid to read the broker's memory");
    ensure!(args.publishers > 0 || args.idle > 0, "nothing to do: no publishers and no idle connections");
    let addr = tokio::net::lookup_host(&args.host)
        .await
        .with_context(|| format!("resolving {}", args.host))?
        .next()
        .with_context(|| format!("{} resolves to no address", args.host))?;
    let v5 = args.mqtt == Mqtt::V5;
    let prefix = match &args.prefix {
        Some(prefix) => prefix.clone(),
        None => {
            let mut run_id = [0u8; 4];
            getrandom::fill(&mut run_id).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            format!("bench-{}", hex::encode(run_id))
        }
    };
    let (p_count, s_count) = (args.publishers, args.subscribers);
    let topic = |p: usize, t: usize| format!("{prefix}/{p}/{t}");
    let device_ids: Vec<String> = (0..p_count).map(|p| format!("{prefix}-p{p}")).collect();

    let signers = match (&args.register_data, args.signed) {
        (Some(data), true) => {
            eprintln!("registering {p_count} signed devices in {}", data.display());
            register(data, &device_ids).await?
        }
        _ => Vec::new(),
    };

    let stop_tx = watch::channel(false).0;
    let mut background: JoinSet<Result<()>> = JoinSet::new();
    let rss_start = args.broker_pid.and_then(rss_kib);

    // Idle connections: the broker's memory per connection.
    let mut idle_report = Value::Null;
    if args.idle > 0 {
        let pid = args.broker_pid.expect("checked above");
        let before = rss_kib(pid).with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let started = Instant::now();
        let conns = open_many(addr, v5, args.idle, args.connect_concurrency, |i| format!("{prefix}-i{i}"))
            .await
            .context("opening idle connections")?;
        let connect_secs = started.elapsed().as_secs_f64();
        for conn in conns {
            background.spawn(run_idle(conn, stop_tx.subscribe()));
        }
        // Let the broker finish setting up what each connection costs it.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let after = rss_kib(pid).with_context(|| format!("cannot read /proc/{pid}/status"))?;
        let per_conn = (after.saturating_sub(before) * 1024) as f64 / args.idle as f64;
        idle_report = json!({
            "connections": args.idle,
            "connect_secs": (connect_secs * 100.0).round() / 100.0,
            "rss_before_kib": before,
            "rss_after_kib": after,
            "bytes_per_connection": per_conn.round(),
        });
    }

    // Subscribers first, so that nothing published is missed.
    let filters_of = |s: usize| -> Vec<String> {
        match args.pattern {
            Pattern::Pairs => (0..p_count)
                .filter(|p| p % s_count == s)
                .flat_map(|p| (0..args.topics).map(move |t| (p, t)))
                .map(|(p, t)| topic(p, t))
                .collect(),
            Pattern::Fanout => {
                (0..p_count).flat_map(|p| (0..args.topics).map(move |t| (p, t))).map(|(p, t)| topic(p, t)).collect()
            }
            Pattern::Wildcard => vec![format!("{prefix}/#")],
            Pattern::Shared => vec![format!("$share/{SHARE_GROUP}/{prefix}/#")],
        }
    };
    let mut sub_conns = if p_count > 0 {
        open_many(addr, v5, s_count, args.connect_concurrency, |s| format!("{prefix}-s{s}"))
            .await
            .context("connecting subscribers")?
    } else {
        Vec::new()
    };
    for (s, conn) in sub_conns.iter_mut().enumerate() {
        let filters = filters_of(s);
        if !filters.is_empty() {
            conn.subscribe(&filters, args.qos).await.with_context(|| format!("subscriber {s}"))?;
        }
    }
    let checkpoint_conn = if args.checkpoints {
        let mut conn = Conn::open(addr, v5, &format!("{prefix}-cp")).await.context("checkpoint watcher")?;
        conn.subscribe(&[CHECKPOINT_TOPIC.to_string()], 0).await.context("subscribing to the checkpoints")?;
        Some(conn)
    } else {
        None
    };
    let pub_conns = open_many(addr, v5, p_count, args.connect_concurrency, |p| device_ids[p].clone())
        .await
        .context("connecting publishers")?;

    // Timing starts now.
    let start = now_ns();
    let warm_end = start + secs_ns(args.warmup);
    let measure_end = if args.count.is_some() { u64::MAX } else { warm_end + secs_ns(duration) };
    let cells_per_publisher = match args.pattern {
        Pattern::Fanout | Pattern::Wildcard => s_count.max(1),
        Pattern::Pairs | Pattern::Shared => 1,
    };
    let run = Arc::new(Run {
        publishers: p_count,
        subscribers: s_count,
        pattern: args.pattern,
        qos: args.qos,
        v5,
        warm_end,
        measure_end,
        next_seq: (0..p_count).map(|_| AtomicU64::new(0)).collect(),
        delivered_upto: (0..p_count * cells_per_publisher).map(|_| AtomicU64::new(0)).collect(),
        cells_per_publisher,
        wake: (0..p_count).map(|_| Notify::new()).collect(),
        distinct: AtomicU64::new(0),
        checkpoints: args
            .checkpoints
            .then(|| Mutex::new(CheckpointWait { pending: BTreeMap::new(), covered: 0, hist: histogram(), notes: 0 })),
    });
    let mut sub_tasks = JoinSet::new();
    for (s, conn) in sub_conns.into_iter().enumerate() {
        let (run, stop) = (Arc::clone(&run), stop_tx.subscribe());
        sub_tasks.spawn(async move { (s, run_subscriber(s, conn, run, stop).await) });
    }
    if let Some(conn) = checkpoint_conn {
        background.spawn(run_checkpoint_watch(conn, Arc::clone(&run), stop_tx.subscribe()));
    }
    // Broker memory over the run, sampled.
    let rss_samples = Arc::new(Mutex::new(Vec::<u64>::new()));
    if let Some(pid) = args.broker_pid {
        let (samples, mut stop) = (Arc::clone(&rss_samples), stop_tx.subscribe());
        background.spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(500));
            loop {
                tokio::select! {
                    _ = tick.tick() => {
                        if let Some(kib) = rss_kib(pid) {
                            samples.lock().unwrap_or_else(|p| p.into_inner()).push(kib);
                        }
                    }
                    _ = stop.changed() => return Ok(()),
                }
            }
        });
    }
    // CPU use over the measured window.
    let marks = Arc::new(Mutex::new((None::<CpuMark>, None::<CpuMark>)));
    {
        let (marks, pid, mut stop) = (Arc::clone(&marks), args.broker_pid, stop_tx.subscribe());
        background.spawn(async move {
            tokio::select! {
                _ = tokio::time::sleep_until(at_ns(warm_end)) => {}
                _ = stop.changed() => return Ok(()),
            }
            marks.lock().unwrap_or_else(|p| p.into_inner()).0 = Some(cpu_mark(pid));
            if measure_end != u64::MAX {
                tokio::select! {
                    _ = tokio::time::sleep_until(at_ns(measure_end)) => {}
                    _ = stop.changed() => return Ok(()),
                }
                marks.lock().unwrap_or_else(|p| p.into_inner()).1 = Some(cpu_mark(pid));
            }
            Ok(())
        });
    }

    let payload: Vec<u8> = (0..args.payload).map(|i| (i % 251) as u8).collect();
    let interval_ns = if args.rate > 0.0 { (1e9 / args.rate).max(1.0) as u64 } else { 0 };
    let mut pub_tasks = JoinSet::new();
    let mut signers = signers.into_iter();
    for (p, conn) in pub_conns.into_iter().enumerate() {
        let me = Publisher {
            id: p,
            device_id: device_ids[p].clone(),
            topics: (0..args.topics).map(|t| topic(p, t)).collect(),
            payload: payload.clone(),
            signer: signers.next(),
            window: args.inflight,
            interval_ns,
            count: args.count,
            stop_at: (measure_end != u64::MAX).then_some(measure_end),
            drain_ns: secs_ns(args.drain),
        };
        let run = Arc::clone(&run);
        pub_tasks.spawn(async move { (p, run_publisher(me, conn, run).await) });
    }
    let mut published: Vec<Option<Published>> = (0..p_count).map(|_| None).collect();
    let mut failures = Vec::new();
    while let Some(joined) = pub_tasks.join_next().await {
        match joined.context("a publisher task panicked")? {
            (p, Ok(out)) => published[p] = Some(out),
            (p, Err(e)) => failures.push(format!("publisher {p}: {e:#}")),
        }
    }
    // With --count the measured window ends when the last publisher is done.
    let done_mark = cpu_mark(args.broker_pid);
    let published: Vec<Published> = published.into_iter().map(Option::unwrap_or_default).collect();

    // Drain: wait for the deliveries still on their way.
    let expected: u64 = published.iter().map(|o| o.sent - o.excluded.len() as u64).sum::<u64>() * run.receivers();
    let drain_deadline = Instant::now() + Duration::from_secs_f64(args.drain);
    let (mut last, mut last_change) = (u64::MAX, Instant::now());
    while s_count > 0 && failures.is_empty() {
        let got = run.distinct.load(Ordering::Relaxed);
        if got >= expected || Instant::now() > drain_deadline {
            break;
        }
        if got != last {
            (last, last_change) = (got, Instant::now());
        } else if last_change.elapsed() > DRAIN_STALL {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if let Some(wait) = &run.checkpoints {
        // The last records wait for one more block to seal.
        while Instant::now() < drain_deadline && !wait.lock().unwrap_or_else(|p| p.into_inner()).pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let rss_end = args.broker_pid.and_then(rss_kib);
    let _ = stop_tx.send(true);
    let mut received: Vec<Option<Received>> = (0..s_count).map(|_| None).collect();
    while let Some(joined) = sub_tasks.join_next().await {
        match joined.context("a subscriber task panicked")? {
            (s, Ok(got)) => received[s] = Some(got),
            (s, Err(e)) => failures.push(format!("subscriber {s}: {e:#}")),
        }
    }
    while let Some(joined) = background.join_next().await {
        if let Err(e) = joined.context("a background task panicked")? {
            failures.push(format!("{e:#}"));
        }
    }
    if !failures.is_empty() {
        bail!("the run failed:\n  {}", failures.join("\n  "));
    }
    let received: Vec<Received> = received.into_iter().flatten().collect();

    // Results.
    let t = tally(&run, &published, &received);
    let mut hist = histogram();
    let mut ack_hist = histogram();
    for r in &received {
        hist.add(&r.hist).context("merging latency histograms")?;
    }
    for o in &published {
        if let Some(h) = &o.ack_hist {
            ack_hist.add(h).context("merging ack latency histograms")?;
        }
    }
    let sum = |f: fn(&Published) -> u64| published.iter().map(f).sum::<u64>();
    let (sent, acked, rejected, unacked) = (sum(|o| o.sent), sum(|o| o.acked), sum(|o| o.rejected), sum(|o| o.unacked));
    let sent_in_window = sum(|o| o.sent_in_window);
    let acked_in_window = sum(|o| o.acked_in_window);
    let delivered_in_window: u64 = received.iter().map(|r| r.delivered_in_window).sum();
    let foreign: u64 = received.iter().map(|r| r.foreign).sum();
    let stalls = sum(|o| o.window_stalls);
    // The measured window: fixed with a duration; with a count, from the end
    // of the warm-up to the last event of each kind.
    let window_secs = |last: u64| -> f64 {
        if measure_end != u64::MAX { duration } else { last.saturating_sub(warm_end) as f64 / 1e9 }
    };
    let rate = |n: u64, last: u64| {
        let secs = window_secs(last);
        if secs > 0.0 { (n as f64 / secs).round() } else { 0.0 }
    };
    let last_send = published.iter().map(|o| o.last_send_ns).max().unwrap_or(0);
    let last_ack = published.iter().map(|o| o.last_ack_ns).max().unwrap_or(0);
    let last_recv = received.iter().map(|r| r.last_recv_ns).max().unwrap_or(0);
    let published_per_s = rate(sent_in_window, last_send);
    let acked_per_s = rate(acked_in_window, last_ack);
    let delivered_per_s = rate(delivered_in_window, last_recv);
    let cpu_from = marks.lock().unwrap_or_else(|p| p.into_inner()).0;
    let cpu_to = marks.lock().unwrap_or_else(|p| p.into_inner()).1.unwrap_or(done_mark);
    let broker_cpu = cpu_from.and_then(|from| cpu_percent(from, cpu_to, |m| m.broker));
    let tool_cpu = cpu_from.and_then(|from| cpu_percent(from, cpu_to, |m| m.tool));
    let rss = rss_samples.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let checkpoint = run.checkpoints.as_ref().map(|w| {
        let w = w.lock().unwrap_or_else(|p| p.into_inner());
        (latency_json(&w.hist), w.pending.len(), w.notes)
    });
    let failed_qos = args.qos >= 1 && (t.lost > 0 || unacked > 0 || rejected > 0);
    let ok = !failed_qos && t.duplicated == 0 && t.unexpected == 0;
    let label = args
        .label
        .clone()
        .unwrap_or_else(|| format!("{p_count}→{s_count} {} QoS {} {} B", args.pattern.name(), args.qos, args.payload));
    let mqtt = if v5 { "5" } else { "3.1.1" };

    let report = json!({
        "label": label,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "config": {
            "host": args.host, "mqtt": mqtt, "publishers": p_count, "subscribers": s_count,
            "topics_per_publisher": args.topics, "pattern": args.pattern.name(), "qos": args.qos,
            "payload": args.payload, "signed": args.signed, "rate_per_publisher": args.rate,
            "inflight": args.inflight, "duration_s": duration, "count": args.count,
            "warmup_s": args.warmup, "idle": args.idle,
        },
        "window_s": window_secs(last_recv.max(last_ack)),
        "published": sent, "published_per_s": published_per_s,
        "acked": acked, "acked_per_s": if args.qos > 0 { json!(acked_per_s) } else { Value::Null },
        "delivered": t.delivered, "delivered_per_s": delivered_per_s, "expected_deliveries": expected,
        "latency_ms": latency_json(&hist),
        "ack_latency_ms": latency_json(&ack_hist),
        "lost": t.lost, "duplicated": t.duplicated, "unexpected": t.unexpected, "foreign": foreign,
        "unacked": unacked, "rejected": rejected, "qos0_window_stalls": stalls,
        "checkpoint_latency_ms": checkpoint.as_ref().map_or(Value::Null, |c| c.0.clone()),
        "checkpoint_uncovered": checkpoint.as_ref().map(|c| c.1),
        "checkpoints_seen": checkpoint.as_ref().map(|c| c.2),
        "idle": idle_report,
        "broker": args.broker_pid.map(|pid| json!({
            "pid": pid,
            "rss_start_kib": rss_start,
            "rss_end_kib": rss_end,
            "rss_max_kib": rss.iter().copied().max(),
            "cpu_percent": broker_cpu.map(|c| c.round()),
        })),
        "tool_cpu_percent": tool_cpu.map(|c| c.round()),
        "ok": ok,
    });

    // The human table.
    let mode = if args.rate > 0.0 {
        format!("{} msgs/s per publisher", args.rate)
    } else {
        format!("max rate, window {} per publisher", args.inflight)
    };
    let span = match args.count {
        Some(n) => format!("{n} msgs per publisher, {:.1} s warm-up", args.warmup),
        None => format!("{:.1} s measured after {:.1} s warm-up", duration, args.warmup),
    };
    println!("sealmq bench: {label}");
    println!(
        "  {addr}, MQTT {mqtt}, {p_count} publishers → {s_count} subscribers ({}), QoS {}, {} B, {}",
        args.pattern.name(),
        args.qos,
        args.payload,
        if args.signed { "MQS1-signed" } else { "unsigned" }
    );
    println!("  {mode}; {span}");
    println!();
    let row = |name: &str, value: String| println!("  {name:<32} {value}");
    let lat = |h: &Histogram<u64>| {
        if h.is_empty() {
            return "-".to_string();
        }
        let ms = |ns: u64| ns as f64 / 1e6;
        format!(
            "{:.2} / {:.2} / {:.2} / {:.2} ms",
            ms(h.value_at_quantile(0.5)),
            ms(h.value_at_quantile(0.9)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max())
        )
    };
    if p_count > 0 {
        row("published", format!("{} msgs, {}/s", group(sent), group(published_per_s as u64)));
        if args.qos > 0 {
            row("acknowledged", format!("{} msgs, {}/s", group(acked), group(acked_per_s as u64)));
            row("ack latency p50 / p90 / p99 / max", lat(&ack_hist));
        }
        if s_count > 0 {
            row(
                "delivered",
                format!(
                    "{} msgs, {}/s (expected {})",
                    group(t.delivered),
                    group(delivered_per_s as u64),
                    group(expected)
                ),
            );
            row("latency p50 / p90 / p99 / max", lat(&hist));
            row("lost / duplicated", format!("{} / {}", group(t.lost), group(t.duplicated)));
        }
        if args.qos > 0 {
            row("unacknowledged / rejected", format!("{} / {}", group(unacked), group(rejected)));
        }
        if t.unexpected > 0 || foreign > 0 {
            row("misrouted / foreign", format!("{} / {}", group(t.unexpected), group(foreign)));
        }
        if stalls > 0 {
            row("QoS 0 window stalls", group(stalls));
        }
    }
    if let Some((_, uncovered, notes)) = &checkpoint {
        let w = run.checkpoints.as_ref().expect("checkpoints measured").lock().unwrap_or_else(|p| p.into_inner());
        let h = &w.hist;
        let value = if h.is_empty() {
            format!("- ({notes} checkpoints seen)")
        } else {
            format!(
                "{:.0} / {:.0} / {:.0} ms ({} records, {notes} checkpoints, {uncovered} uncovered)",
                h.value_at_quantile(0.5) as f64 / 1e6,
                h.value_at_quantile(0.99) as f64 / 1e6,
                h.max() as f64 / 1e6,
                group(h.len())
            )
        };
        row("PUBACK → checkpoint p50 / p99 / max", value);
    }
    if let Some(idle) = idle_report.as_object() {
        let (before, after) =
            (idle["rss_before_kib"].as_u64().unwrap_or(0), idle["rss_after_kib"].as_u64().unwrap_or(0));
        row(
            "idle connections",
            format!(
                "{}: RSS {} → {}, {:.1} KiB per connection (connected in {:.1} s)",
                group(args.idle as u64),
                mib(before),
                mib(after),
                idle["bytes_per_connection"].as_f64().unwrap_or(0.0) / 1024.0,
                idle["connect_secs"].as_f64().unwrap_or(0.0)
            ),
        );
    }
    if args.broker_pid.is_some() {
        row(
            "broker RSS start / end / max",
            format!(
                "{} / {} / {}",
                rss_start.map_or("-".into(), mib),
                rss_end.map_or("-".into(), mib),
                rss.iter().copied().max().map_or("-".into(), mib)
            ),
        );
        row("broker CPU", broker_cpu.map_or("-".into(), |c| format!("{c:.0} % of one core")));
    }
    row("load tool CPU", tool_cpu.map_or("-".into(), |c| format!("{c:.0} % of one core")));
    let verdict = if ok {
        "OK".to_string()
    } else {
        let mut why = Vec::new();
        if failed_qos {
            why.push(format!("QoS {}: lost, unacknowledged or rejected messages", args.qos));
        }
        if t.duplicated > 0 {
            why.push("duplicates".into());
        }
        if t.unexpected > 0 {
            why.push("messages delivered to a client that did not subscribe to them".into());
        }
        format!("FAILED: {}", why.join("; "))
    };
    row("result", verdict);

    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(if ok { ExitCode::SUCCESS } else { ExitCode::from(crate::EXIT_FAILED_CHECK) })
}

// ---------------------------------------------------------------------------
// --verify-ceiling: what the broker's MQS1 check of one publish costs, with
// no broker and no network — the ceiling for signed traffic.

mod ceiling {
    use std::process::ExitCode;
    use std::sync::Barrier;
    use std::time::{Duration, Instant};

    use anyhow::{Result, bail, ensure};
    use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
    use sealmq_audit::mqs1::{self, SignatureBlock, Signed};
    use sealmq_audit::sha256;
    use serde_json::{Value, json};

    use super::{BenchArgs, group};

    /// Signatures per `verify_batch` call in the batch figures.
    pub const BATCH: usize = 64;
    /// Devices (keys) the message set is signed by.
    const DEVICES: usize = 64;
    /// Messages in the set each thread cycles through, at most.
    const MAX_MESSAGES: usize = 1024;
    /// Payload bytes the set may hold: large payloads mean fewer messages.
    const PAYLOAD_BYTES: usize = 64 << 20;
    /// Seconds per figure when neither --duration nor --count is given.
    const DEFAULT_SECS: f64 = 3.0;
    /// Why the broker does not batch: said in the table and the JSON.
    pub const BATCH_NOTE: &str = "reference only: the broker verifies each publish on its own with verify_strict \
        (spec/mqs1.md, rule 4); cofactorless batch verification is not guaranteed to agree with it (a batch can \
        accept a signature verify_strict rejects: Chalkias, Garillot, Nikolaenko, \"Taming the many EdDSAs\", \
        SSR 2020), and ed25519-dalek derives its batch coefficients deterministically from the public inputs";

    /// One signed publish as the broker sees it after extracting the SB.
    #[derive(Clone)]
    struct Message {
        device: usize,
        topic: String,
        payload: Vec<u8>,
        sb: SignatureBlock,
    }

    /// The devices, their parsed keys (the broker parses a key once, when
    /// it loads the registry) and the signed publishes.
    struct Set {
        device_ids: Vec<String>,
        keys: Vec<VerifyingKey>,
        messages: Vec<Message>,
    }

    impl Set {
        fn new(payload_len: usize) -> Result<Self> {
            let count = (PAYLOAD_BYTES / payload_len.max(1)).clamp(BATCH, MAX_MESSAGES) / BATCH * BATCH;
            let mut signers = Vec::with_capacity(DEVICES);
            let mut keys = Vec::with_capacity(DEVICES);
            let device_ids: Vec<String> = (0..DEVICES).map(|d| format!("bench-ceiling-p{d}")).collect();
            for _ in 0..DEVICES {
                let mut seed = [0u8; 32];
                getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a device key: {e}"))?;
                let signer = SigningKey::from_bytes(&seed);
                keys.push(mqs1::device_key(&signer.verifying_key().to_bytes())?);
                signers.push(signer);
            }
            let mut filler = [0u8; 8];
            getrandom::fill(&mut filler).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
            let mut x = u64::from_le_bytes(filler) | 1;
            let ts_ms =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
            let mut messages = Vec::with_capacity(count);
            for i in 0..count {
                let device = i % DEVICES;
                let topic = format!("bench-ceiling/{device}/0");
                // Payload bytes from xorshift: distinct per message, cheap to make.
                let payload: Vec<u8> = (0..payload_len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        x as u8
                    })
                    .collect();
                let ctr = (i / DEVICES) as u64 + 1;
                let sb = mqs1::sign(&signers[device], &device_ids[device], &topic, &payload, false, ctr, ts_ms)?;
                messages.push(Message { device, topic, payload, sb });
            }
            Ok(Self { device_ids, keys, messages })
        }

        /// The broker's check (`admission.rs`): SHA-256 of the payload, then
        /// `mqs1::verify` (retain bit, kid, TBS rebuilt, `verify_strict`).
        fn check_one(&self, m: &Message) -> bool {
            let digest = sha256(&m.payload);
            let signed = Signed {
                device_id: &self.device_ids[m.device],
                topic: &m.topic,
                payload_sha256: &digest,
                retain: false,
            };
            mqs1::verify(&self.keys[m.device], &signed, &m.sb).is_ok()
        }

        /// The same checks and TBS, the signatures verified in one
        /// `ed25519_dalek::verify_batch` call.
        fn check_batch(&self, ms: &[Message]) -> bool {
            let mut tbs = Vec::with_capacity(ms.len());
            let mut sigs = Vec::with_capacity(ms.len());
            let mut keys = Vec::with_capacity(ms.len());
            for m in ms {
                let key = &self.keys[m.device];
                if m.sb.retain || m.sb.kid != mqs1::kid(key.as_bytes()) {
                    return false;
                }
                let Ok(message) = mqs1::tbs(&m.sb, &self.device_ids[m.device], &m.topic, &sha256(&m.payload)) else {
                    return false;
                };
                tbs.push(message);
                sigs.push(Signature::from_bytes(&m.sb.sig));
                keys.push(*key);
            }
            let tbs: Vec<&[u8]> = tbs.iter().map(Vec::as_slice).collect();
            ed25519_dalek::verify_batch(&tbs, &sigs, &keys).is_ok()
        }

        /// `BATCH` messages from `at` checked by one path; all accepted?
        fn check_chunk(&self, at: usize, batch: bool) -> bool {
            let chunk = &self.messages[at..at + BATCH];
            if batch { self.check_batch(chunk) } else { chunk.iter().fold(true, |ok, m| self.check_one(m) & ok) }
        }
    }

    /// What the self-check found.
    struct SelfCheck {
        valid_single: bool,
        valid_batch: bool,
        corrupted_rejected_single: bool,
        corrupted_rejected_batch: bool,
    }

    impl SelfCheck {
        fn ok(&self) -> bool {
            self.valid_single && self.valid_batch && self.corrupted_rejected_single && self.corrupted_rejected_batch
        }
    }

    /// Both paths accept every valid message; with one signature corrupted
    /// (one bit of its `s`, so that only the curve equation can catch it),
    /// the single path rejects exactly that one and the batch holding it is
    /// rejected, while the other batches still pass.
    fn self_check(set: &Set) -> SelfCheck {
        let n = set.messages.len();
        let valid_single = set.messages.iter().all(|m| set.check_one(m));
        let valid_batch = (0..n).step_by(BATCH).all(|at| set.check_chunk(at, true));
        let bad = BATCH / 2 + 1;
        let mut corrupted =
            Set { device_ids: set.device_ids.clone(), keys: set.keys.clone(), messages: set.messages.clone() };
        corrupted.messages[bad].sb.sig[32] ^= 0x01;
        let corrupted_rejected_single = (0..n).all(|i| corrupted.check_one(&corrupted.messages[i]) == (i != bad));
        let holds_bad = |at: usize| (at..at + BATCH).contains(&bad);
        let corrupted_rejected_batch = (0..n).step_by(BATCH).all(|at| corrupted.check_chunk(at, true) != holds_bad(at));
        SelfCheck { valid_single, valid_batch, corrupted_rejected_single, corrupted_rejected_batch }
    }

    /// When a figure's measurement stops.
    #[derive(Clone, Copy)]
    enum Limit {
        Secs(f64),
        /// Verifications per thread (rounded up to whole chunks).
        Count(u64),
    }

    /// One measured figure.
    struct Figure {
        threads: usize,
        verifications: u64,
        secs: f64,
    }

    impl Figure {
        fn per_s(&self) -> f64 {
            if self.secs > 0.0 { self.verifications as f64 / self.secs } else { 0.0 }
        }

        fn json(&self) -> Value {
            json!({
                "threads": self.threads,
                "verifications": self.verifications,
                "secs": (self.secs * 1e4).round() / 1e4,
                "per_s": self.per_s().round(),
                "us_per_verification_per_thread": if self.verifications > 0 {
                    json!((self.secs * 1e6 * self.threads as f64 / self.verifications as f64 * 100.0).round() / 100.0)
                } else {
                    Value::Null
                },
            })
        }
    }

    /// `threads` threads check chunks of the set at once, each from its own
    /// place in it, after one chunk of warm-up; the rate is the
    /// verifications of all of them over the wall-clock time.
    fn measure(set: &Set, threads: usize, batch: bool, limit: Limit) -> Result<Figure> {
        let n = set.messages.len();
        let start = Barrier::new(threads + 1);
        let (verifications, secs, ok) = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let start = &start;
                    scope.spawn(move || {
                        let mut at = (t * n / threads) / BATCH * BATCH;
                        let mut ok = set.check_chunk(at, batch);
                        start.wait();
                        let began = Instant::now();
                        let deadline = match limit {
                            Limit::Secs(secs) => began + Duration::from_secs_f64(secs),
                            Limit::Count(_) => began + Duration::from_secs(u32::MAX.into()),
                        };
                        let mut done = 0u64;
                        loop {
                            ok &= set.check_chunk(at, batch);
                            done += BATCH as u64;
                            at = (at + BATCH) % n;
                            let enough = match limit {
                                Limit::Secs(_) => Instant::now() >= deadline,
                                Limit::Count(count) => done >= count,
                            };
                            if enough {
                                return (done, ok);
                            }
                        }
                    })
                })
                .collect();
            start.wait();
            let began = Instant::now();
            let mut total = (0u64, true);
            for worker in workers {
                let (done, ok) = worker.join().unwrap_or((0, false));
                total = (total.0 + done, total.1 && ok);
            }
            (total.0, began.elapsed().as_secs_f64(), total.1)
        });
        ensure!(ok, "a valid signature failed to verify while measuring");
        Ok(Figure { threads, verifications, secs })
    }

    pub fn run(args: &BenchArgs) -> Result<ExitCode> {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let threads = args.threads.unwrap_or(cores);
        ensure!(threads >= 1, "--threads must be at least 1");
        let limit = match (args.count, args.duration) {
            (Some(count), _) => {
                ensure!(count > 0, "--count must be positive");
                Limit::Count(count)
            }
            (None, secs) => {
                let secs = secs.unwrap_or(DEFAULT_SECS);
                ensure!(secs > 0.0 && secs.is_finite(), "--duration must be positive");
                Limit::Secs(secs)
            }
        };
        let label = args.label.clone().unwrap_or_else(|| format!("MQS1 signature-check ceiling, {} B", args.payload));
        let set = Set::new(args.payload)?;
        let check = self_check(&set);

        let single_1 = if check.ok() { Some(measure(&set, 1, false, limit)?) } else { None };
        let single_n = match (&single_1, threads) {
            (None, _) => None,
            (Some(one), 1) => Some(Figure { threads: 1, verifications: one.verifications, secs: one.secs }),
            _ => Some(measure(&set, threads, false, limit)?),
        };
        let batch_1 = if check.ok() { Some(measure(&set, 1, true, limit)?) } else { None };
        let batch_n = match (&batch_1, threads) {
            (None, _) => None,
            (Some(one), 1) => Some(Figure { threads: 1, verifications: one.verifications, secs: one.secs }),
            _ => Some(measure(&set, threads, true, limit)?),
        };
        let figure_json = |f: &Option<Figure>| f.as_ref().map_or(Value::Null, Figure::json);

        let report = json!({
            "label": label,
            "command": std::env::args().collect::<Vec<_>>().join(" "),
            "mode": "verify-ceiling",
            "config": {
                "payload": args.payload,
                "duration_s": match limit { Limit::Secs(s) => json!(s), Limit::Count(_) => Value::Null },
                "count": args.count,
                "threads": threads,
                "available_parallelism": cores,
                "batch_size": BATCH,
                "messages": set.messages.len(),
                "devices": DEVICES,
            },
            "self_check": {
                "valid_accepted_single": check.valid_single,
                "valid_accepted_batch": check.valid_batch,
                "corrupted_rejected_single": check.corrupted_rejected_single,
                "corrupted_rejected_batch": check.corrupted_rejected_batch,
                "ok": check.ok(),
            },
            "ceiling": {
                "single_1_thread": figure_json(&single_1),
                "single_n_threads": figure_json(&single_n),
                "batch_1_thread": figure_json(&batch_1),
                "batch_n_threads": figure_json(&batch_n),
            },
            "single_path": "sha256(payload) + mqs1::verify (TBS rebuilt, verify_strict), one publish at a time",
            "batch_path": format!("sha256(payload) + TBS per publish, ed25519_dalek::verify_batch of {BATCH}"),
            "batch_note": BATCH_NOTE,
            "ok": check.ok(),
        });

        println!("sealmq bench: {label}");
        println!(
            "  in process, no broker: {} B payloads, {} signed publishes from {DEVICES} devices; {}; {} for the N-thread figures ({cores} available)",
            args.payload,
            set.messages.len(),
            match limit {
                Limit::Secs(s) => format!("{s:.1} s per figure"),
                Limit::Count(c) => format!("{} verifications per thread and figure", group(c)),
            },
            if threads == 1 { "1 thread".to_string() } else { format!("{threads} threads") }
        );
        println!();
        let row = |name: &str, value: String| println!("  {name:<36} {value}");
        let yes = |ok: bool, good: &str, bad: &str| if ok { good.to_string() } else { bad.to_string() };
        row(
            "self-check: valid signatures",
            format!(
                "{} (single), {} (batch)",
                yes(check.valid_single, "accepted", "REJECTED"),
                yes(check.valid_batch, "accepted", "REJECTED")
            ),
        );
        row(
            "self-check: one corrupted signature",
            format!(
                "{} (single), {} (batch)",
                yes(check.corrupted_rejected_single, "rejected", "NOT REJECTED"),
                yes(check.corrupted_rejected_batch, "rejected", "NOT REJECTED")
            ),
        );
        let rate = |f: &Option<Figure>| match f {
            Some(f) => format!(
                "{} verifications/s ({:.1} µs each per thread)",
                group(f.per_s().round() as u64),
                f.secs * 1e6 * f.threads as f64 / f.verifications.max(1) as f64
            ),
            None => "-".into(),
        };
        row("single, 1 thread", rate(&single_1));
        // With one thread the N-thread figures are the 1-thread ones (not measured twice).
        if threads > 1 {
            row(&format!("single, {threads} threads"), rate(&single_n));
        }
        row(&format!("batch of {BATCH}, 1 thread"), rate(&batch_1));
        if threads > 1 {
            row(&format!("batch of {BATCH}, {threads} threads"), rate(&batch_n));
        }
        println!();
        println!("  single: SHA-256 of the payload + mqs1::verify (TBS rebuilt, verify_strict), as the broker checks");
        println!(
            "  every signed publish, on every tokio worker: the N-thread figure is the ceiling for signed traffic."
        );
        let mut line = String::from("  batch:");
        for word in BATCH_NOTE.split_whitespace() {
            if line.len() + word.len() > 104 {
                println!("{line}");
                line = String::from("        ");
            }
            line.push(' ');
            line.push_str(word);
        }
        println!("{line}.");
        if !check.ok() {
            println!();
            println!(
                "  result                               FAILED: the self-check did not hold; no figure was measured"
            );
        }

        if let Some(path) = &args.json {
            let text = serde_json::to_string_pretty(&report)?;
            std::fs::write(path, text + "\n").map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
        }
        if !check.ok() {
            eprintln!(
                "error: the signature-check self-check failed: valid signatures must verify and a corrupted one must be rejected, on the single and on the batch path"
            );
            return Ok(ExitCode::from(crate::EXIT_FAILED_CHECK));
        }
        if single_1.as_ref().is_none_or(|f| f.verifications == 0) {
            bail!("nothing was measured");
        }
        Ok(ExitCode::SUCCESS)
    }
}
