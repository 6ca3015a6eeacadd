//! A raw, synchronous MQTT client for the broker tests: packets encoded by
//! rumqttc's codecs or built by hand, sent over a plain `TcpStream`, and
//! every read bounded by a timeout. Reason codes are read from the raw bytes,
//! so nothing a codec might normalise hides what the broker sent.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes::v5;

pub use rumqttc::mqttbytes::QoS as QoS4;
pub use rumqttc::v5::mqttbytes::QoS;

/// How long any single expected answer may take.
pub const WAIT: Duration = Duration::from_secs(5);

/// MQTT control packet types (high nibble of the first byte).
pub mod kind {
    pub const CONNACK: u8 = 2;
    pub const PUBLISH: u8 = 3;
    pub const PUBACK: u8 = 4;
    pub const PUBREC: u8 = 5;
    pub const PUBREL: u8 = 6;
    pub const PUBCOMP: u8 = 7;
    pub const SUBACK: u8 = 9;
    pub const PINGRESP: u8 = 13;
    pub const DISCONNECT: u8 = 14;
}

/// One whole MQTT frame as received.
#[derive(Clone)]
pub struct Frame {
    /// Fixed header and body.
    pub bytes: Bytes,
    /// Length of the fixed header.
    pub header: usize,
}

impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shown = &self.bytes[..self.bytes.len().min(64)];
        write!(f, "Frame(type {}, {} bytes: {})", self.kind(), self.bytes.len(), hex::encode(shown))
    }
}

impl Frame {
    /// The control packet type.
    pub fn kind(&self) -> u8 {
        self.bytes[0] >> 4
    }

    /// The variable header and payload.
    pub fn body(&self) -> &[u8] {
        &self.bytes[self.header..]
    }

    /// The MQTT 5 packet. A DISCONNECT of remaining length 0 or 1 is legal but
    /// refused by rumqttc's reader: it is built here.
    pub fn v5(&self) -> v5::Packet {
        if self.kind() == kind::DISCONNECT && self.body().len() < 2 {
            let code = self.body().first().copied().unwrap_or(0);
            let reason_code = v5::DisconnectReasonCode::try_from(code).expect("a known DISCONNECT reason code");
            return v5::Packet::Disconnect(v5::Disconnect { reason_code, properties: None });
        }
        let mut buf = BytesMut::from(&self.bytes[..]);
        v5::Packet::read(&mut buf, None).unwrap_or_else(|e| panic!("undecodable MQTT 5 frame {self:?}: {e:?}"))
    }

    /// The MQTT 3.1.1 packet.
    pub fn v4(&self) -> v4::Packet {
        let mut buf = BytesMut::from(&self.bytes[..]);
        v4::Packet::read(&mut buf, usize::MAX)
            .unwrap_or_else(|e| panic!("undecodable MQTT 3.1.1 frame {self:?}: {e:?}"))
    }

    /// The reason code of an MQTT 5 PUBACK/PUBREC/PUBREL/PUBCOMP (0 when omitted).
    pub fn ack_reason(&self) -> u8 {
        assert!((kind::PUBACK..=kind::PUBCOMP).contains(&self.kind()), "not an acknowledgement: {self:?}");
        self.body().get(2).copied().unwrap_or(0)
    }

    /// The packet identifier of an acknowledgement.
    pub fn pkid(&self) -> u16 {
        u16::from_be_bytes([self.body()[0], self.body()[1]])
    }

    /// The return code (3.1.1) or reason code (5) of a CONNACK.
    pub fn connack_code(&self) -> u8 {
        assert_eq!(self.kind(), kind::CONNACK, "not a CONNACK: {self:?}");
        self.body()[1]
    }

    /// The Session Present flag of a CONNACK.
    pub fn session_present(&self) -> bool {
        assert_eq!(self.kind(), kind::CONNACK, "not a CONNACK: {self:?}");
        self.body()[0] & 1 == 1
    }

    /// The reason code of an MQTT 5 DISCONNECT (0 when omitted).
    pub fn disconnect_reason(&self) -> u8 {
        assert_eq!(self.kind(), kind::DISCONNECT, "not a DISCONNECT: {self:?}");
        self.body().first().copied().unwrap_or(0)
    }

    /// The return codes of a SUBACK (`v5`: after the properties).
    pub fn suback_codes(&self, v5: bool) -> Vec<u8> {
        assert_eq!(self.kind(), kind::SUBACK, "not a SUBACK: {self:?}");
        let body = &self.body()[2..];
        if !v5 {
            return body.to_vec();
        }
        let (len, used) = varint(body).expect("SUBACK property length");
        body[used + len..].to_vec()
    }

    /// The reason string of an MQTT 5 packet that can carry one, if present.
    pub fn reason_string(&self) -> Option<String> {
        match self.v5() {
            v5::Packet::PubAck(a) => a.properties.and_then(|p| p.reason_string),
            v5::Packet::PubRec(r) => r.properties.and_then(|p| p.reason_string),
            v5::Packet::Disconnect(d) => d.properties.and_then(|p| p.reason_string),
            v5::Packet::ConnAck(c) => c.properties.and_then(|p| p.reason_string),
            other => panic!("no reason string in {other:?}"),
        }
    }

    /// A user property of an MQTT 5 acknowledgement or PUBLISH.
    pub fn user_property(&self, name: &str) -> Option<String> {
        let properties = match self.v5() {
            v5::Packet::PubAck(a) => a.properties.map(|p| p.user_properties),
            v5::Packet::PubRec(r) => r.properties.map(|p| p.user_properties),
            v5::Packet::Publish(p) => p.properties.map(|p| p.user_properties),
            other => panic!("no user properties in {other:?}"),
        };
        properties.unwrap_or_default().into_iter().find(|(n, _)| n == name).map(|(_, v)| v)
    }
}

/// A variable byte integer: (value, bytes used); `None` if incomplete or longer than 4 bytes.
pub fn varint(bytes: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, byte) in bytes.iter().take(4).enumerate() {
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// Encodes a variable byte integer.
pub fn encode_varint(mut value: usize) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let mut byte = (value % 128) as u8;
        value /= 128;
        if value > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if value == 0 {
            return out;
        }
    }
}

/// A frame: first byte, remaining length, body.
pub fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    out.extend(encode_varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// A `u16be` length-prefixed string.
pub fn str16(s: &[u8]) -> Vec<u8> {
    let mut out = u16::try_from(s.len()).unwrap().to_be_bytes().to_vec();
    out.extend_from_slice(s);
    out
}

/// What a read brought.
#[derive(Debug)]
pub enum Got {
    Frame(Frame),
    /// The peer closed the connection (EOF or reset).
    Closed,
    /// Nothing within the time allowed.
    Timeout,
}

/// One raw connection to the broker.
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    /// Whether the peer closed the connection.
    pub closed: bool,
}

impl Conn {
    /// Opens a TCP connection (no MQTT yet).
    pub fn open(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect_timeout(&addr, WAIT).unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream.set_nodelay(true).unwrap();
        stream.set_write_timeout(Some(WAIT)).unwrap();
        Self { stream, buf: BytesMut::new(), closed: false }
    }

    /// Writes bytes; an error means the broker closed the connection.
    pub fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Writes an MQTT 5 packet encoded by rumqttc.
    pub fn send5(&mut self, packet: &v5::Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        packet.write(&mut out, None).unwrap_or_else(|e| panic!("cannot encode {packet:?}: {e:?}"));
        self.send(&out)
    }

    /// Writes an MQTT 3.1.1 packet encoded by rumqttc.
    pub fn send4(&mut self, packet: &v4::Packet) -> std::io::Result<()> {
        let mut out = BytesMut::new();
        packet.write(&mut out, usize::MAX).unwrap_or_else(|e| panic!("cannot encode {packet:?}: {e:?}"));
        self.send(&out)
    }

    /// Closes the write side (the broker sees EOF).
    pub fn shutdown_write(&mut self) {
        let _ = self.stream.shutdown(std::net::Shutdown::Write);
    }

    fn take_frame(&mut self) -> Option<Frame> {
        if self.buf.len() < 2 {
            return None;
        }
        let (len, used) = match varint(&self.buf[1..]) {
            Some(v) => v,
            None if self.buf.len() >= 5 => panic!("the broker sent an invalid remaining length: {:?}", &self.buf[..5]),
            None => return None,
        };
        let total = 1 + used + len;
        if self.buf.len() < total {
            return None;
        }
        Some(Frame { bytes: self.buf.split_to(total).freeze(), header: 1 + used })
    }

    /// The next frame, or that the connection closed, or nothing within `within`.
    pub fn next(&mut self, within: Duration) -> Got {
        let deadline = Instant::now() + within;
        loop {
            if let Some(frame) = self.take_frame() {
                return Got::Frame(frame);
            }
            if self.closed {
                return Got::Closed;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Got::Timeout;
            }
            self.stream.set_read_timeout(Some(left)).unwrap();
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => self.closed = true,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => self.closed = true,
            }
        }
    }

    /// The next frame; fails the test on close or timeout.
    #[track_caller]
    pub fn frame(&mut self) -> Frame {
        match self.next(WAIT) {
            Got::Frame(frame) => frame,
            other => panic!("expected a packet from the broker, got {other:?}"),
        }
    }

    /// The next frame, which must be of type `expected`.
    #[track_caller]
    pub fn expect(&mut self, expected: u8) -> Frame {
        let frame = self.frame();
        assert_eq!(frame.kind(), expected, "expected packet type {expected}, got {frame:?}");
        frame
    }

    /// Waits until the broker closes the connection; the frames it sent before.
    #[track_caller]
    pub fn expect_closed(&mut self, within: Duration) -> Vec<Frame> {
        let deadline = Instant::now() + within;
        let mut frames = Vec::new();
        loop {
            match self.next(deadline.saturating_duration_since(Instant::now())) {
                Got::Frame(frame) => frames.push(frame),
                Got::Closed => return frames,
                Got::Timeout => panic!("the broker did not close the connection within {within:?} (got {frames:?})"),
            }
        }
    }

    /// The broker must send DISCONNECT with `reason` (MQTT 5) and close.
    /// Returns the reason string.
    #[track_caller]
    pub fn expect_disconnect(&mut self, reason: u8) -> Option<String> {
        let frames = self.expect_closed(WAIT);
        let disconnect = frames
            .iter()
            .find(|f| f.kind() == kind::DISCONNECT)
            .unwrap_or_else(|| panic!("closed without DISCONNECT {reason:#04x}; frames: {frames:?}"));
        assert_eq!(
            disconnect.disconnect_reason(),
            reason,
            "DISCONNECT reason {:#04x} ({:?}), expected {reason:#04x}",
            disconnect.disconnect_reason(),
            disconnect.reason_string()
        );
        assert_eq!(frames.last().unwrap().kind(), kind::DISCONNECT, "DISCONNECT is the last packet: {frames:?}");
        disconnect.reason_string()
    }

    /// Whether the connection still works: PINGREQ answered by PINGRESP
    /// (frames of other types that arrive first are returned for inspection).
    pub fn ping(&mut self) -> Result<Vec<Frame>, String> {
        if self.send(&[0xC0, 0x00]).is_err() {
            return Err("the connection is closed (write failed)".into());
        }
        let mut others = Vec::new();
        loop {
            match self.next(WAIT) {
                Got::Frame(f) if f.kind() == kind::PINGRESP => return Ok(others),
                Got::Frame(f) => others.push(f),
                other => return Err(format!("no PINGRESP: {other:?} after {others:?}")),
            }
        }
    }

    /// The connection must still be open and answering.
    #[track_caller]
    pub fn assert_open(&mut self) {
        if let Err(e) = self.ping() {
            panic!("the connection should still be open: {e}");
        }
    }

    /// The next PUBLISH (MQTT 5) within `within`, acknowledging QoS 1 and 2
    /// deliveries (and completing PUBREL); `None` on timeout.
    #[track_caller]
    pub fn next_publish5(&mut self, within: Duration) -> Option<v5::Publish> {
        let deadline = Instant::now() + within;
        loop {
            let frame = match self.next(deadline.saturating_duration_since(Instant::now())) {
                Got::Frame(frame) => frame,
                Got::Timeout => return None,
                Got::Closed => panic!("the subscriber was disconnected"),
            };
            match frame.v5() {
                v5::Packet::Publish(publish) => {
                    match publish.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => {
                            self.send5(&v5::Packet::PubAck(v5::PubAck::new(publish.pkid, None))).unwrap();
                        }
                        QoS::ExactlyOnce => {
                            self.send5(&v5::Packet::PubRec(v5::PubRec::new(publish.pkid, None))).unwrap();
                        }
                    }
                    return Some(publish);
                }
                v5::Packet::PubRel(rel) => {
                    self.send5(&v5::Packet::PubComp(v5::PubComp::new(rel.pkid, None))).unwrap();
                }
                v5::Packet::PingResp(_) => {}
                other => panic!("unexpected packet while waiting for a PUBLISH: {other:?}"),
            }
        }
    }

    /// The next PUBLISH (MQTT 3.1.1), as [`Conn::next_publish5`].
    #[track_caller]
    pub fn next_publish4(&mut self, within: Duration) -> Option<v4::Publish> {
        let deadline = Instant::now() + within;
        loop {
            let frame = match self.next(deadline.saturating_duration_since(Instant::now())) {
                Got::Frame(frame) => frame,
                Got::Timeout => return None,
                Got::Closed => panic!("the subscriber was disconnected"),
            };
            match frame.v4() {
                v4::Packet::Publish(publish) => {
                    match publish.qos {
                        QoS4::AtMostOnce => {}
                        QoS4::AtLeastOnce => {
                            self.send4(&v4::Packet::PubAck(v4::PubAck::new(publish.pkid))).unwrap();
                        }
                        QoS4::ExactlyOnce => {
                            self.send4(&v4::Packet::PubRec(v4::PubRec::new(publish.pkid))).unwrap();
                        }
                    }
                    return Some(publish);
                }
                v4::Packet::PubRel(rel) => {
                    self.send4(&v4::Packet::PubComp(v4::PubComp::new(rel.pkid))).unwrap();
                }
                v4::Packet::PingResp => {}
                other => panic!("unexpected packet while waiting for a PUBLISH: {other:?}"),
            }
        }
    }

    /// Every PUBLISH (MQTT 5) up to and including the one whose payload is
    /// `sentinel`, then any that still arrive within `grace`.
    #[track_caller]
    pub fn collect5_until(&mut self, sentinel: &[u8], grace: Duration) -> Vec<v5::Publish> {
        let mut got = Vec::new();
        loop {
            let publish = self
                .next_publish5(WAIT)
                .unwrap_or_else(|| panic!("the sentinel {sentinel:?} never arrived; got {got:?}"));
            let done = publish.payload.as_ref() == sentinel;
            got.push(publish);
            if done {
                break;
            }
        }
        while let Some(publish) = self.next_publish5(grace) {
            got.push(publish);
        }
        got
    }

    /// As [`Conn::collect5_until`], for a 3.1.1 subscriber.
    #[track_caller]
    pub fn collect4_until(&mut self, sentinel: &[u8], grace: Duration) -> Vec<v4::Publish> {
        let mut got = Vec::new();
        loop {
            let publish = self
                .next_publish4(WAIT)
                .unwrap_or_else(|| panic!("the sentinel {sentinel:?} never arrived; got {got:?}"));
            let done = publish.payload.as_ref() == sentinel;
            got.push(publish);
            if done {
                break;
            }
        }
        while let Some(publish) = self.next_publish4(grace) {
            got.push(publish);
        }
        got
    }
}

/// An MQTT 5 CONNECT (clean start, keep-alive 30 s).
pub fn connect5_packet(client_id: &str, password: Option<&str>) -> v5::Packet {
    let connect = v5::Connect { keep_alive: 30, client_id: client_id.to_string(), clean_start: true, properties: None };
    v5::Packet::Connect(connect, None, password.map(|p| v5::Login::new(client_id, p)))
}

/// An MQTT 5 CONNECT (keep-alive 30 s) that resumes or keeps a session
/// for `expiry` seconds after it ends; `None`: a clean start, no session.
pub fn connect5_session_packet(client_id: &str, expiry: Option<u32>) -> v5::Packet {
    let mut properties = v5::ConnectProperties::new();
    properties.session_expiry_interval = expiry;
    let connect = v5::Connect {
        keep_alive: 30,
        client_id: client_id.into(),
        clean_start: expiry.is_none(),
        properties: Some(properties),
    };
    v5::Packet::Connect(connect, None, None)
}

/// An MQTT 3.1.1 CONNECT (clean session, keep-alive 30 s).
pub fn connect4_packet(client_id: &str, password: Option<&str>) -> v4::Packet {
    let mut connect = v4::Connect::new(client_id);
    connect.keep_alive = 30;
    connect.login = password.map(|p| v4::Login::new(client_id, p));
    v4::Packet::Connect(connect)
}

/// Connects with MQTT 5; the connection and the CONNACK frame, whatever its code.
pub fn try_connect5(addr: SocketAddr, client_id: &str, password: Option<&str>) -> (Conn, Frame) {
    let mut conn = Conn::open(addr);
    conn.send5(&connect5_packet(client_id, password)).unwrap();
    let connack = conn.expect(kind::CONNACK);
    (conn, connack)
}

/// Connects with MQTT 5 sending `connect` and `will` as given; the
/// connection and the CONNACK frame, whatever its code.
pub fn try_connect5_with(addr: SocketAddr, connect: v5::Connect, will: Option<v5::LastWill>) -> (Conn, Frame) {
    let mut conn = Conn::open(addr);
    conn.send5(&v5::Packet::Connect(connect, will, None)).unwrap();
    let connack = conn.expect(kind::CONNACK);
    (conn, connack)
}

/// Connects with MQTT 3.1.1; the connection and the CONNACK frame.
pub fn try_connect4(addr: SocketAddr, client_id: &str, password: Option<&str>) -> (Conn, Frame) {
    let mut conn = Conn::open(addr);
    conn.send4(&connect4_packet(client_id, password)).unwrap();
    let connack = conn.expect(kind::CONNACK);
    (conn, connack)
}

/// Connects with MQTT 5, which must succeed.
#[track_caller]
pub fn connect5(addr: SocketAddr, client_id: &str) -> Conn {
    connect5_pw(addr, client_id, None)
}

/// Connects with MQTT 5 and a password, which must succeed.
#[track_caller]
pub fn connect5_pw(addr: SocketAddr, client_id: &str, password: Option<&str>) -> Conn {
    let (conn, connack) = try_connect5(addr, client_id, password);
    assert_eq!(connack.connack_code(), 0, "CONNACK for {client_id:?}: {connack:?}");
    conn
}

/// Connects with MQTT 5 asking for receipts (CONNECT user property
/// `sealmq-receipts: 1`): deliveries then carry the record's `sealmq-index`.
#[track_caller]
pub fn connect5_receipts(addr: SocketAddr, client_id: &str) -> Conn {
    let mut conn = Conn::open(addr);
    let properties = v5::ConnectProperties {
        user_properties: vec![("sealmq-receipts".into(), "1".into())],
        ..v5::ConnectProperties::new()
    };
    let connect = v5::Connect {
        keep_alive: 30,
        client_id: client_id.to_string(),
        clean_start: true,
        properties: Some(properties),
    };
    conn.send5(&v5::Packet::Connect(connect, None, None)).unwrap();
    let connack = conn.expect(kind::CONNACK);
    assert_eq!(connack.connack_code(), 0, "CONNACK for {client_id:?}: {connack:?}");
    conn
}

/// Connects with MQTT 3.1.1, which must succeed.
#[track_caller]
pub fn connect4(addr: SocketAddr, client_id: &str) -> Conn {
    let (conn, connack) = try_connect4(addr, client_id, None);
    assert_eq!(connack.connack_code(), 0, "CONNACK for {client_id:?}: {connack:?}");
    conn
}

/// An MQTT 5 PUBLISH.
pub fn publish5_packet(
    topic: &str,
    qos: QoS,
    pkid: u16,
    payload: &[u8],
    retain: bool,
    user_properties: Vec<(String, String)>,
) -> v5::Packet {
    let properties =
        (!user_properties.is_empty()).then(|| v5::PublishProperties { user_properties, ..Default::default() });
    v5::Packet::Publish(v5::Publish {
        dup: false,
        qos,
        retain,
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        pkid: if qos == QoS::AtMostOnce { 0 } else { pkid },
        payload: Bytes::copy_from_slice(payload),
        properties,
    })
}

/// An MQTT 3.1.1 PUBLISH.
pub fn publish4_packet(topic: &str, qos: QoS4, pkid: u16, payload: &[u8], retain: bool) -> v4::Packet {
    let mut publish = v4::Publish::new(topic, qos, payload.to_vec());
    publish.retain = retain;
    publish.pkid = if qos == QoS4::AtMostOnce { 0 } else { pkid };
    v4::Packet::Publish(publish)
}

/// Subscribes (MQTT 5) to `filter`; the SUBACK reason codes.
#[track_caller]
pub fn subscribe5(conn: &mut Conn, pkid: u16, filter: &str, qos: QoS) -> Vec<u8> {
    subscribe5_with(conn, pkid, v5::Filter::new(filter, qos))
}

/// Subscribes (MQTT 5) with explicit subscription options; the SUBACK reason codes.
#[track_caller]
pub fn subscribe5_with(conn: &mut Conn, pkid: u16, filter: v5::Filter) -> Vec<u8> {
    let subscribe = v5::Subscribe { pkid, filters: vec![filter], properties: None };
    conn.send5(&v5::Packet::Subscribe(subscribe)).unwrap();
    let suback = conn.expect(kind::SUBACK);
    assert_eq!(suback.pkid(), pkid);
    suback.suback_codes(true)
}

/// Publishes (MQTT 5) and completes the sender's side of the QoS flow: the
/// PUBACK (QoS 1) or PUBREC (QoS 2, then PUBREL/PUBCOMP) frame; `None` for QoS 0.
/// The connection must not receive PUBLISH packets meanwhile.
#[track_caller]
pub fn publish5_acked(conn: &mut Conn, publish: v5::Publish) -> Option<Frame> {
    let (qos, pkid) = (publish.qos, publish.pkid);
    conn.send5(&v5::Packet::Publish(publish)).unwrap();
    match qos {
        QoS::AtMostOnce => None,
        QoS::AtLeastOnce => {
            let puback = conn.expect(kind::PUBACK);
            assert_eq!(puback.pkid(), pkid, "PUBACK for another packet: {puback:?}");
            Some(puback)
        }
        QoS::ExactlyOnce => {
            let pubrec = conn.expect(kind::PUBREC);
            assert_eq!(pubrec.pkid(), pkid, "PUBREC for another packet: {pubrec:?}");
            conn.send5(&v5::Packet::PubRel(v5::PubRel::new(pkid, None))).unwrap();
            let pubcomp = conn.expect(kind::PUBCOMP);
            assert_eq!(pubcomp.pkid(), pkid, "PUBCOMP for another packet: {pubcomp:?}");
            Some(pubrec)
        }
    }
}

/// Subscribes (MQTT 3.1.1) to `filter`; the SUBACK return codes.
#[track_caller]
pub fn subscribe4(conn: &mut Conn, pkid: u16, filter: &str, qos: QoS4) -> Vec<u8> {
    let mut subscribe = v4::Subscribe::new(filter, qos);
    subscribe.pkid = pkid;
    conn.send4(&v4::Packet::Subscribe(subscribe)).unwrap();
    let suback = conn.expect(kind::SUBACK);
    assert_eq!(suback.pkid(), pkid);
    suback.suback_codes(false)
}

/// Publishes a QoS 1 probe on `topic` from `publisher` until `subscriber`
/// receives one (subscriptions reach an external broker asynchronously),
/// then drains the rest of the probes.
#[track_caller]
pub fn wait_until_routed(publisher: &mut Conn, subscriber: &mut Conn, topic: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let mut pkid = 60_000;
    loop {
        assert!(std::time::Instant::now() < deadline, "nothing published on {topic} was routed to the subscriber");
        pkid += 1;
        publisher.send5(&publish5_packet(topic, QoS::AtLeastOnce, pkid, b"probe", false, vec![])).unwrap();
        publisher.expect(kind::PUBACK);
        if subscriber.next_publish5(Duration::from_millis(300)).is_some() {
            break;
        }
    }
    while subscriber.next_publish5(Duration::from_millis(300)).is_some() {}
}
