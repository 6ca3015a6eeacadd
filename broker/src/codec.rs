//! MQTT wire codecs for the gateway: MQTT 3.1.1 and 5 towards clients, MQTT 5
//! towards the upstream broker, all decoded into one model, rumqttc 0.25's
//! MQTT 5 [`v5::Packet`].
//!
//! rumqttc's codecs do the field parsing; this module frames packets itself and
//! checks every frame before rumqttc sees it, because rumqttc 0.25.1:
//!
//! - refuses a v5 DISCONNECT with remaining length 0 (`E0 00`, `PayloadRequired`)
//!   or 1 (`E0 01 rc`, `InsufficientBytes` after consuming the frame), both legal;
//! - answers `InsufficientBytes` for a complete frame that is short inside, after
//!   consuming it (indistinguishable from "need more bytes" for its callers);
//! - checks neither reserved fixed-header flags, nor duplicate v5 properties, nor
//!   properties that run past their declared length, nor trailing bytes, nor the
//!   CONNECT reserved flag, nor subscription option reserved bits, nor U+0000 in
//!   strings, nor packet identifier 0 outside PUBLISH;
//! - parses a v5 CONNECT with its 3.1.1 codec (wrong fields), and cannot decode
//!   AUTH at all.
//!
//! And its writers: v5 `ConnAck::write` panics (`unreachable!`) for the 3.1.1
//! return codes `RefusedProtocolVersion`, `BadClientId`, `ServiceUnavailable`;
//! `Disconnect::write` writes `E0 01 rc 00` for a reason code without properties
//! and `E0 00` (reason lost) with empty properties; `Auth::write` computes wrong
//! lengths; `Connect::write` patches its flags at an offset counted from the
//! start of the buffer, not of the packet (corrupting earlier bytes when the
//! buffer is not empty); strings and binaries longer than 65535 bytes get a
//! truncated `u16` length; an error midway leaves a partial packet in the
//! buffer. [`ClientCodec::encode`] and [`encode_v5`] guard all of these and never
//! panic; the property tests below feed arbitrary bytes and arbitrary packets to
//! every entry point.
//!
//! After any `Err` from a decoder the connection must be closed: the buffer is
//! left in an unspecified state. After a DISCONNECT, stop decoding.
//!
//! This file uses nothing else from the crate (only bytes, rumqttc and
//! thiserror): the fuzz targets in `fuzz/` compile it on its own.

use std::fmt;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use rumqttc::mqttbytes as m4;
use rumqttc::mqttbytes::v4;
use rumqttc::v5::mqttbytes as m5;

/// The internal packet model: rumqttc's MQTT 5 packets (and their QoS).
pub mod v5 {
    pub use rumqttc::v5::mqttbytes::QoS;
    pub use rumqttc::v5::mqttbytes::v5::*;
}

use v5::{ConnectReturnCode, DisconnectReasonCode, QoS};

/// Largest remaining length MQTT can express (four-byte variable integer).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;
/// Largest value of a Subscription Identifier.
const MAX_SUBSCRIPTION_ID: usize = MAX_REMAINING_LENGTH;
/// Largest UTF-8 string or binary field (two-byte length prefix).
const MAX_FIELD: usize = 65_535;

/// The MQTT version a client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5 (protocol level 5).
    V5,
}

impl Version {
    /// The version for a CONNECT protocol level, if this module speaks it
    /// (level 3, MQTT 3.1, is answered with [`connack_v31_refused`]).
    pub fn from_level(level: u8) -> Option<Version> {
        match level {
            4 => Some(Version::V311),
            5 => Some(Version::V5),
            _ => None,
        }
    }
}

/// Why a packet could not be decoded, validated or encoded.
#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    /// The bytes do not follow the MQTT grammar (MQTT 5: Malformed Packet).
    #[error("malformed packet: {0}")]
    Malformed(String),
    /// Well formed, but breaks a protocol rule (MQTT 5: Protocol Error).
    #[error("protocol error: {0}")]
    ProtocolError(String),
    /// The whole packet (fixed header included) is larger than allowed.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge {
        /// Size of the whole packet in bytes.
        size: usize,
        /// The limit it exceeds.
        max: u32,
    },
    /// A CONNECT for a protocol level this codec does not speak.
    #[error("unsupported MQTT protocol level {level}")]
    UnsupportedProtocol {
        /// The protocol level byte of the CONNECT.
        level: u8,
    },
    /// The first packet of a connection is not a CONNECT.
    #[error("the first packet is not CONNECT (packet type {packet_type})")]
    NotConnect {
        /// The control packet type (high nibble of the first byte).
        packet_type: u8,
    },
    /// A topic name that is well formed but not acceptable (wildcards, empty, too long).
    #[error("invalid topic name: {0}")]
    InvalidTopicName(String),
    /// A topic filter that breaks the wildcard or shared-subscription rules.
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(String),
    /// A PUBLISH's Topic Alias of 0 (MQTT 5: 0x94 Topic Alias invalid, [MQTT-3.3.2-8]).
    #[error("topic alias invalid: {0}")]
    TopicAliasInvalid(String),
    /// The caller asked to encode a packet that cannot or must not be sent
    /// (a programming error on our side, never the peer's).
    #[error("cannot encode packet: {0}")]
    CannotEncode(String),
}

impl CodecError {
    /// The MQTT 5 DISCONNECT reason code for this error.
    pub fn v5_reason(&self) -> DisconnectReasonCode {
        match self {
            CodecError::Malformed(_) => DisconnectReasonCode::MalformedPacket,
            CodecError::ProtocolError(_) | CodecError::UnsupportedProtocol { .. } | CodecError::NotConnect { .. } => {
                DisconnectReasonCode::ProtocolError
            }
            CodecError::PacketTooLarge { .. } => DisconnectReasonCode::PacketTooLarge,
            CodecError::InvalidTopicName(_) => DisconnectReasonCode::TopicNameInvalid,
            CodecError::InvalidTopicFilter(_) => DisconnectReasonCode::TopicFilterInvalid,
            CodecError::TopicAliasInvalid(_) => DisconnectReasonCode::TopicAliasInvalid,
            CodecError::CannotEncode(_) => DisconnectReasonCode::ImplementationSpecificError,
        }
    }

    /// The CONNACK return code for this error when it happens on the CONNECT.
    pub fn connack_code(&self) -> ConnectReturnCode {
        match self {
            CodecError::Malformed(_) => ConnectReturnCode::MalformedPacket,
            CodecError::ProtocolError(_) | CodecError::NotConnect { .. } => ConnectReturnCode::ProtocolError,
            CodecError::PacketTooLarge { .. } => ConnectReturnCode::PacketTooLarge,
            CodecError::UnsupportedProtocol { .. } => ConnectReturnCode::UnsupportedProtocolVersion,
            CodecError::InvalidTopicName(_) => ConnectReturnCode::TopicNameInvalid,
            CodecError::InvalidTopicFilter(_) | CodecError::TopicAliasInvalid(_) => ConnectReturnCode::UnspecifiedError,
            CodecError::CannotEncode(_) => ConnectReturnCode::ImplementationSpecificError,
        }
    }
}

fn malformed(msg: impl fmt::Display) -> CodecError {
    CodecError::Malformed(msg.to_string())
}

fn protocol(msg: impl fmt::Display) -> CodecError {
    CodecError::ProtocolError(msg.to_string())
}

fn cannot(msg: impl fmt::Display) -> CodecError {
    CodecError::CannotEncode(msg.to_string())
}

/// The MQTT 3.1 answer to a CONNECT with protocol level 3 (or any level we do
/// not speak): CONNACK "unacceptable protocol version". Send it, then close.
pub fn connack_v31_refused() -> [u8; 4] {
    [0x20, 0x02, 0x00, 0x01]
}

/// Looks at the start of a connection. `Ok(None)`: more bytes needed.
///
/// Returns the CONNECT's protocol level: 3 (`MQIsdp`, MQTT 3.1), 4 (3.1.1) or 5.
/// Errors: [`CodecError::NotConnect`] if the first packet is not a CONNECT,
/// [`CodecError::UnsupportedProtocol`] for another level (answer
/// [`connack_v31_refused`] and close), [`CodecError::Malformed`] for a broken
/// header or an unknown protocol name. Only the first bytes are needed, not the
/// whole CONNECT; nothing is consumed.
pub fn peek_protocol_level(buf: &[u8]) -> Result<Option<u8>, CodecError> {
    let Some(&first) = buf.first() else { return Ok(None) };
    if first >> 4 != 1 {
        return Err(CodecError::NotConnect { packet_type: first >> 4 });
    }
    if first & 0x0F != 0 {
        return Err(malformed("CONNECT: reserved fixed-header flags are set"));
    }
    let Some(header) = read_header(buf)? else { return Ok(None) };
    let complete = buf.len() >= header.size();
    let end = buf.len().min(header.size());
    let body = buf.get(header.len..end).unwrap_or_default();
    // Protocol name (2-byte length + bytes) then the level byte.
    let need = |n: usize| -> Result<bool, CodecError> {
        if body.len() >= n {
            Ok(true)
        } else if complete {
            Err(malformed("CONNECT: too short for a protocol name and level"))
        } else {
            Ok(false)
        }
    };
    if !need(2)? {
        return Ok(None);
    }
    let name_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
    if name_len != 4 && name_len != 6 {
        return Err(malformed("CONNECT: unknown protocol name"));
    }
    if !need(2 + name_len + 1)? {
        return Ok(None);
    }
    let name = &body[2..2 + name_len];
    let level = body[2 + name_len];
    match (name, level) {
        (b"MQTT", 4 | 5) | (b"MQIsdp", 3) => Ok(Some(level)),
        (b"MQTT" | b"MQIsdp", level) => Err(CodecError::UnsupportedProtocol { level }),
        _ => Err(malformed("CONNECT: unknown protocol name")),
    }
}

/// A client's side of the wire: decodes what a client sends, encodes what the
/// gateway sends to it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientCodec {
    /// The version the client spoke in its CONNECT (see [`peek_protocol_level`]).
    pub version: Version,
    /// Largest packet (whole, fixed header included) accepted from the client.
    pub max_incoming: u32,
    /// The client's Maximum Packet Size (MQTT 5 CONNECT); `None`: unlimited.
    pub max_outgoing: Option<u32>,
}

impl ClientCodec {
    /// A codec with no outgoing limit yet (set `max_outgoing` after CONNECT).
    pub fn new(version: Version, max_incoming: u32) -> Self {
        ClientCodec { version, max_incoming, max_outgoing: None }
    }

    /// Decodes one packet from `buf`, consuming it. `Ok(None)`: more bytes are
    /// needed (capacity for the whole packet has been reserved in `buf`).
    ///
    /// MQTT 3.1.1 packets come out translated to the MQTT 5 model: CONNECT
    /// (`clean_session` → `clean_start`, no properties, will topic as bytes),
    /// PUBLISH (no properties), acknowledgements with reason Success and no
    /// properties, SUBSCRIBE options with MQTT 5 defaults (No Local and Retain
    /// As Published off, retained messages sent on every subscribe),
    /// DISCONNECT as Normal Disconnection.
    ///
    /// Oversized packets are refused as soon as the fixed header is readable,
    /// before their body is buffered. Packets a client must never send
    /// (CONNACK, SUBACK, UNSUBACK, PINGRESP; AUTH, as enhanced authentication is
    /// not supported) are protocol errors.
    ///
    /// Not checked here (the caller's job): topic names (use
    /// [`validate_topic_name`] on PUBLISH topics after resolving topic aliases —
    /// an MQTT 5 PUBLISH may carry an empty topic with an alias — and on will
    /// topics), topic filters ([`validate_filter`]), topic alias ranges, the
    /// payload against a Payload Format Indicator, session state rules (a second
    /// CONNECT, empty client id with a persistent session in 3.1.1, ...).
    pub fn decode(&self, buf: &mut BytesMut) -> Result<Option<v5::Packet>, CodecError> {
        decode_frame(self.version, Origin::Client, buf, self.max_incoming)
    }

    /// Encodes a packet the gateway sends to this client; returns the bytes
    /// appended to `out` (0 for a DISCONNECT to a 3.1.1 client, which has no
    /// server DISCONNECT: just close). On error nothing is appended.
    ///
    /// MQTT 3.1.1: CONNACK codes are mapped (Success → 0, Unsupported Protocol
    /// Version → 1, Client Identifier Not Valid → 2, Bad User Name or Password
    /// and Bad Authentication Method → 4, Not Authorized and Banned → 5, all
    /// others → 3 Server Unavailable); PUBLISH loses its properties and needs a
    /// non-empty UTF-8 topic; acknowledgements carry the packet id only (3.1.1
    /// cannot say "refused": close the connection instead); SUBACK keeps granted
    /// QoS and turns every failure into 0x80.
    ///
    /// Both versions: a refused CONNACK never says session present, and the
    /// MQTT 3.1-style return codes of the model are sent as their MQTT 5
    /// equivalents. A packet larger than `max_outgoing` is
    /// [`CodecError::PacketTooLarge`] (MQTT 5: drop it). Packets a server never
    /// sends (CONNECT, SUBSCRIBE, UNSUBSCRIBE, PINGREQ) and AUTH are
    /// [`CodecError::CannotEncode`].
    pub fn encode(&self, packet: &v5::Packet, out: &mut BytesMut) -> Result<usize, CodecError> {
        use v5::Packet as P;
        match packet {
            P::Connect(..) | P::Subscribe(_) | P::Unsubscribe(_) | P::PingReq(_) | P::Auth(_) => {
                return Err(cannot(format_args!("a server does not send {} to a client", packet_name(packet))));
            }
            _ => {}
        }
        match self.version {
            Version::V5 => write_v5(packet, out, self.max_outgoing),
            Version::V311 => write_v4(packet, out, self.max_outgoing),
        }
    }
}

/// Decodes one MQTT 5 packet from the upstream broker (`max`: largest whole
/// packet accepted). Any packet type but AUTH is accepted (so this also serves
/// a broker-side test harness); the connection logic refuses unexpected ones.
/// A DISCONNECT written by rumqttd's buggy writer (`E0 01 rc 00`) is read as
/// `E0 01 rc`, and the stray `00` is dropped if already buffered.
pub fn decode_v5(buf: &mut BytesMut, max: u32) -> Result<Option<v5::Packet>, CodecError> {
    decode_frame(Version::V5, Origin::Any, buf, max)
}

/// Encodes one MQTT 5 packet towards the upstream broker; returns the bytes
/// appended to `out` (nothing on error). A DISCONNECT without properties is
/// written `E0 00` (Normal) or `E0 02 rc 00`; AUTH is refused.
pub fn encode_v5(packet: &v5::Packet, out: &mut BytesMut) -> Result<usize, CodecError> {
    write_v5(packet, out, None)
}

/// Encodes any packet of the model in its MQTT 3.1.1 form, client packets
/// included, as a 3.1.1 peer would send it; returns the bytes appended to
/// `out` (nothing on error). The gateway never sends client packets, so this
/// is for tests, tools and the fuzz targets (`fuzz/`): what
/// [`ClientCodec::decode`] accepts from a 3.1.1 client, this writes back to
/// the same packet. A DISCONNECT is the client's `E0 00`; the translation is
/// that of [`ClientCodec::encode`] (properties dropped), and AUTH is refused.
pub fn encode_v4(packet: &v5::Packet, out: &mut BytesMut) -> Result<usize, CodecError> {
    if let v5::Packet::Disconnect(_) = packet {
        out.put_slice(&[0xE0, 0x00]);
        return Ok(2);
    }
    write_v4(packet, out, None)
}

// ---------------------------------------------------------------------------
// Topic names and filters
// ---------------------------------------------------------------------------

/// Checks a topic name (MQTT 5 §4.7, 3.1.1 §4.7): 1 to 65535 bytes of UTF-8,
/// no U+0000, no `+` or `#`. Encoding faults are [`CodecError::Malformed`], the
/// rest [`CodecError::InvalidTopicName`]. Resolve topic aliases first.
pub fn validate_topic_name(topic: &[u8]) -> Result<&str, CodecError> {
    let topic = std::str::from_utf8(topic).map_err(|_| malformed("topic name is not valid UTF-8"))?;
    if topic.contains('\0') {
        return Err(malformed("topic name contains U+0000"));
    }
    if topic.is_empty() {
        return Err(CodecError::InvalidTopicName("empty topic name".into()));
    }
    if topic.len() > MAX_FIELD {
        return Err(CodecError::InvalidTopicName(format!("topic name of {} bytes", topic.len())));
    }
    if topic.contains(['+', '#']) {
        return Err(CodecError::InvalidTopicName(format!("wildcard in topic name {topic:?}")));
    }
    Ok(topic)
}

/// A valid topic filter, see [`validate_filter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKind<'a> {
    /// An ordinary filter.
    Plain(&'a str),
    /// `$share/{group}/{filter}`.
    Shared {
        /// The share name.
        group: &'a str,
        /// The filter inside.
        filter: &'a str,
    },
}

impl<'a> FilterKind<'a> {
    /// The filter topics are matched against (the inner one when shared).
    pub fn filter(&self) -> &'a str {
        match *self {
            FilterKind::Plain(filter) | FilterKind::Shared { filter, .. } => filter,
        }
    }
}

/// Checks a topic filter: non-empty, at most 65535 bytes, no U+0000, `#` only as
/// the whole last level, `+` only as a whole level; `$share/{group}/{filter}`
/// needs a non-empty group without `+`, `#` (or `/`), and a valid inner filter.
pub fn validate_filter(filter: &str) -> Result<FilterKind<'_>, CodecError> {
    let bad = |why: &str| CodecError::InvalidTopicFilter(format!("{filter:?}: {why}"));
    if filter.is_empty() {
        return Err(bad("empty"));
    }
    if filter.len() > MAX_FIELD {
        return Err(bad("longer than 65535 bytes"));
    }
    if filter.contains('\0') {
        return Err(bad("contains U+0000"));
    }
    if let Some(rest) = filter.strip_prefix("$share/") {
        let Some((group, inner)) = rest.split_once('/') else {
            return Err(bad("shared subscription without a topic filter"));
        };
        if group.is_empty() {
            return Err(bad("empty share name"));
        }
        if group.contains(['+', '#']) {
            return Err(bad("wildcard in the share name"));
        }
        if inner.is_empty() {
            return Err(bad("shared subscription with an empty topic filter"));
        }
        check_levels(inner).map_err(&bad)?;
        return Ok(FilterKind::Shared { group, filter: inner });
    }
    check_levels(filter).map_err(bad)?;
    Ok(FilterKind::Plain(filter))
}

fn check_levels(filter: &str) -> Result<(), &'static str> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err("'#' must be the whole last level");
        }
        if level.contains('+') && level != "+" {
            return Err("'+' must be a whole level");
        }
    }
    Ok(())
}

/// Does `topic` match `filter`? `+` matches one level (possibly empty), `#` the
/// parent level and any number of levels below; topics starting with `$` are
/// not matched by a filter starting with a wildcard. A `$share/{group}/` prefix
/// is ignored (the inner filter is matched). Neither argument is validated.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')) {
        Some((_, inner)) => inner,
        None => filter,
    };
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if f == "+" || f == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}

// ---------------------------------------------------------------------------
// Framing and decoding
// ---------------------------------------------------------------------------

/// Who sent the bytes being decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Origin {
    /// A client: server-only packets and client-forbidden fields are refused.
    Client,
    /// Anyone (upstream broker, tests).
    Any,
}

/// A parsed fixed header.
#[derive(Clone, Copy, Debug)]
struct Header {
    byte1: u8,
    /// Length of the fixed header (2 to 5 bytes).
    len: usize,
    remaining: usize,
}

impl Header {
    fn size(&self) -> usize {
        self.len + self.remaining
    }

    fn kind(&self) -> u8 {
        self.byte1 >> 4
    }

    /// Whether the Remaining Length uses the fewest bytes possible (MQTT 5
    /// §1.5.5 requires it; 3.1.1 does not say, and is not held to it).
    fn minimal(&self) -> bool {
        self.len == 2 || self.remaining >= 1 << (7 * (self.len - 2))
    }
}

/// Reads the fixed header; `Ok(None)` if it is not complete yet.
fn read_header(buf: &[u8]) -> Result<Option<Header>, CodecError> {
    let Some(&byte1) = buf.first() else { return Ok(None) };
    let mut remaining = 0usize;
    for i in 0..4 {
        let Some(&b) = buf.get(1 + i) else { return Ok(None) };
        remaining |= usize::from(b & 0x7F) << (7 * i);
        if b & 0x80 == 0 {
            return Ok(Some(Header { byte1, len: 2 + i, remaining }));
        }
    }
    Err(malformed("remaining length is longer than 4 bytes"))
}

fn decode_frame(
    version: Version,
    origin: Origin,
    buf: &mut BytesMut,
    max: u32,
) -> Result<Option<v5::Packet>, CodecError> {
    let Some(header) = read_header(buf)? else { return Ok(None) };
    if version == Version::V5 && !header.minimal() {
        return Err(malformed("the remaining length is not encoded in the fewest bytes"));
    }
    let size = header.size();
    if size > max as usize {
        return Err(CodecError::PacketTooLarge { size, max });
    }
    check_fixed_header(version, origin, header.byte1)?;
    if buf.len() < size {
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(size);
    check_body(version, &header, frame.get(header.len..).unwrap_or_default())?;
    let packet = match version {
        Version::V5 => read_v5(&header, &mut frame, buf)?,
        Version::V311 => from_v4(v4::Packet::read(&mut frame, usize::MAX).map_err(from_v4_error)?),
    };
    if origin == Origin::Client {
        check_from_client(&packet)?;
    }
    Ok(Some(packet))
}

/// rumqttc's v5 reader, except for the DISCONNECTs it cannot read.
fn read_v5(header: &Header, frame: &mut BytesMut, rest: &mut BytesMut) -> Result<v5::Packet, CodecError> {
    if header.kind() == 14 && header.remaining <= 1 {
        let reason_code = match frame.get(header.len) {
            None => DisconnectReasonCode::NormalDisconnection,
            Some(&rc) => {
                // rumqttc's and rumqttd's writers send `E0 01 rc 00`; a packet
                // never starts with 0x00, so a following 0x00 is that stray byte.
                if rest.first() == Some(&0) {
                    rest.advance(1);
                }
                DisconnectReasonCode::try_from(rc)
                    .map_err(|_| malformed(format_args!("DISCONNECT: unknown reason code {rc:#04x}")))?
            }
        };
        return Ok(v5::Packet::Disconnect(v5::Disconnect { reason_code, properties: None }));
    }
    v5::Packet::read(frame, None).map_err(from_v5_error)
}

fn from_v5_error(e: m5::Error) -> CodecError {
    match e {
        m5::Error::InvalidProtocolLevel(level) => CodecError::UnsupportedProtocol { level },
        m5::Error::PacketIdZero => protocol("packet identifier 0"),
        m5::Error::EmptySubscription => protocol("SUBSCRIBE without topic filters"),
        m5::Error::InvalidRetainForwardRule(r) => protocol(format_args!("retain handling {r}")),
        m5::Error::PayloadSizeLimitExceeded { pkt_size, max } => CodecError::PacketTooLarge { size: pkt_size, max },
        m5::Error::InsufficientBytes(_) => malformed("the packet ends inside a field"),
        m5::Error::TopicNotUtf8 => malformed("a string is not valid UTF-8"),
        e => malformed(e),
    }
}

fn from_v4_error(e: m4::Error) -> CodecError {
    match e {
        m4::Error::InvalidProtocolLevel(level) => CodecError::UnsupportedProtocol { level },
        m4::Error::PacketIdZero => protocol("packet identifier 0"),
        m4::Error::EmptySubscription => protocol("SUBSCRIBE without topic filters"),
        m4::Error::InsufficientBytes(_) => malformed("the packet ends inside a field"),
        m4::Error::TopicNotUtf8 => malformed("a string is not valid UTF-8"),
        e => malformed(e),
    }
}

fn kind_name(kind: u8) -> &'static str {
    match kind {
        1 => "CONNECT",
        2 => "CONNACK",
        3 => "PUBLISH",
        4 => "PUBACK",
        5 => "PUBREC",
        6 => "PUBREL",
        7 => "PUBCOMP",
        8 => "SUBSCRIBE",
        9 => "SUBACK",
        10 => "UNSUBSCRIBE",
        11 => "UNSUBACK",
        12 => "PINGREQ",
        13 => "PINGRESP",
        14 => "DISCONNECT",
        15 => "AUTH",
        _ => "reserved packet type 0",
    }
}

/// A packet's name, for messages (never its content, which may be large).
pub fn packet_name(packet: &v5::Packet) -> &'static str {
    use v5::Packet as P;
    match packet {
        P::Auth(_) => "AUTH",
        P::Connect(..) => "CONNECT",
        P::ConnAck(_) => "CONNACK",
        P::Publish(_) => "PUBLISH",
        P::PubAck(_) => "PUBACK",
        P::PingReq(_) => "PINGREQ",
        P::PingResp(_) => "PINGRESP",
        P::Subscribe(_) => "SUBSCRIBE",
        P::SubAck(_) => "SUBACK",
        P::PubRec(_) => "PUBREC",
        P::PubRel(_) => "PUBREL",
        P::PubComp(_) => "PUBCOMP",
        P::Unsubscribe(_) => "UNSUBSCRIBE",
        P::UnsubAck(_) => "UNSUBACK",
        P::Disconnect(_) => "DISCONNECT",
    }
}

/// Packet type and fixed-header flags; runs before the body is buffered.
fn check_fixed_header(version: Version, origin: Origin, byte1: u8) -> Result<(), CodecError> {
    let kind = byte1 >> 4;
    let flags = byte1 & 0x0F;
    let name = kind_name(kind);
    match kind {
        0 => return Err(malformed("reserved packet type 0")),
        15 if version == Version::V311 => return Err(malformed("reserved packet type 15")),
        15 => return Err(protocol("AUTH: enhanced authentication is not supported")),
        3 => {
            if flags & 0b0110 == 0b0110 {
                return Err(malformed("PUBLISH with QoS 3"));
            }
            if origin == Origin::Client && flags & 0b1110 == 0b1000 {
                return Err(malformed("PUBLISH: DUP set on a QoS 0 message"));
            }
        }
        6 | 8 | 10 if flags != 0b0010 => {
            return Err(malformed(format_args!("{name}: fixed-header flags must be 0010, not {flags:04b}")));
        }
        6 | 8 | 10 => {}
        _ if flags != 0 => {
            return Err(malformed(format_args!("{name}: reserved fixed-header flags are set ({flags:04b})")));
        }
        _ => {}
    }
    if origin == Origin::Client && matches!(kind, 2 | 9 | 11 | 13) {
        return Err(protocol(format_args!("a client must not send {name}")));
    }
    Ok(())
}

/// Reads the fields of a packet body, for checking.
struct Reader<'a> {
    data: &'a [u8],
    packet: &'static str,
}

impl<'a> Reader<'a> {
    fn new(data: &'a [u8], packet: &'static str) -> Self {
        Reader { data, packet }
    }

    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    fn malformed(&self, msg: impl fmt::Display) -> CodecError {
        malformed(format_args!("{}: {msg}", self.packet))
    }

    fn protocol(&self, msg: impl fmt::Display) -> CodecError {
        protocol(format_args!("{}: {msg}", self.packet))
    }

    fn take(&mut self, n: usize, field: &str) -> Result<&'a [u8], CodecError> {
        if n > self.data.len() {
            return Err(self.malformed(format_args!("{field} runs past the end of its packet or section")));
        }
        let (head, tail) = self.data.split_at(n);
        self.data = tail;
        Ok(head)
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.data)
    }

    fn u8(&mut self, field: &str) -> Result<u8, CodecError> {
        Ok(self.take(1, field)?[0])
    }

    fn u16(&mut self, field: &str) -> Result<u16, CodecError> {
        let b = self.take(2, field)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self, field: &str) -> Result<u32, CodecError> {
        let b = self.take(4, field)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// A Variable Byte Integer in its shortest form (MQTT 5 §1.5.5).
    fn varint(&mut self, field: &str) -> Result<usize, CodecError> {
        let mut value = 0usize;
        for i in 0..4 {
            let b = self.u8(field)?;
            value |= usize::from(b & 0x7F) << (7 * i);
            if b & 0x80 == 0 {
                if i > 0 && b == 0 {
                    return Err(self.malformed(format_args!("{field} is not encoded in the fewest bytes")));
                }
                return Ok(value);
            }
        }
        Err(self.malformed(format_args!("{field} is longer than 4 bytes")))
    }

    fn binary(&mut self, field: &str) -> Result<&'a [u8], CodecError> {
        let len = self.u16(field)?;
        self.take(usize::from(len), field)
    }

    /// A UTF-8 string: valid UTF-8 without U+0000 (MQTT 5 §1.5.4, 3.1.1 §1.5.3).
    fn string(&mut self, field: &str) -> Result<&'a str, CodecError> {
        let bytes = self.binary(field)?;
        let s = std::str::from_utf8(bytes).map_err(|_| self.malformed(format_args!("{field} is not valid UTF-8")))?;
        if s.contains('\0') {
            return Err(self.malformed(format_args!("{field} contains U+0000")));
        }
        Ok(s)
    }

    /// A non-zero packet identifier.
    fn packet_id(&mut self) -> Result<u16, CodecError> {
        let id = self.u16("packet identifier")?;
        if id == 0 {
            return Err(self.protocol("packet identifier 0"));
        }
        Ok(id)
    }
}

/// Structural check of a complete packet body, before rumqttc parses it.
fn check_body(version: Version, header: &Header, body: &[u8]) -> Result<(), CodecError> {
    let kind = header.kind();
    let v5 = version == Version::V5;
    let mut r = Reader::new(body, kind_name(kind));
    match kind {
        1 => check_connect(version, &mut r)?,
        2 => {
            if r.u8("acknowledge flags")? & 0xFE != 0 {
                return Err(r.malformed("reserved acknowledge flags are set"));
            }
            r.u8("return code")?;
            if v5 {
                check_properties(&mut r, Props::ConnAck)?;
            }
        }
        3 => {
            r.binary("topic name")?;
            if header.byte1 & 0b0110 != 0 {
                r.packet_id()?;
            }
            if v5 {
                check_properties(&mut r, Props::Publish)?;
            }
            r.rest(); // the payload
        }
        4..=7 => {
            r.packet_id()?;
            if v5 && !r.is_empty() {
                r.u8("reason code")?;
                if !r.is_empty() {
                    check_properties(&mut r, Props::Ack)?;
                }
            }
        }
        8 => {
            r.packet_id()?;
            if v5 {
                check_properties(&mut r, Props::Subscribe)?;
            }
            if r.is_empty() {
                return Err(r.protocol("no topic filters"));
            }
            while !r.is_empty() {
                r.string("topic filter")?;
                let options = r.u8("subscription options")?;
                let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
                if options & reserved != 0 {
                    return Err(r.malformed("reserved subscription option bits are set"));
                }
                if options & 0b11 == 3 {
                    return Err(r.malformed("requested QoS 3"));
                }
                if (options >> 4) & 0b11 == 3 {
                    return Err(r.protocol("retain handling 3"));
                }
            }
        }
        9 | 11 if v5 => {
            r.packet_id()?;
            check_properties(&mut r, Props::SubAck)?;
            if r.rest().is_empty() {
                return Err(r.protocol("no reason codes"));
            }
        }
        9 => {
            r.packet_id()?;
            if r.rest().is_empty() {
                return Err(r.protocol("no return codes"));
            }
        }
        10 => {
            r.packet_id()?;
            if v5 {
                check_properties(&mut r, Props::Unsubscribe)?;
            }
            if r.is_empty() {
                return Err(r.protocol("no topic filters"));
            }
            while !r.is_empty() {
                r.string("topic filter")?;
            }
        }
        11 => {
            r.packet_id()?;
        }
        14 if v5 && !r.is_empty() => {
            r.u8("reason code")?;
            if !r.is_empty() {
                check_properties(&mut r, Props::Disconnect)?;
            }
        }
        _ => {} // PINGREQ, PINGRESP, DISCONNECT: empty bodies (checked below)
    }
    if !r.is_empty() {
        return Err(r.malformed(format_args!("{} unexpected bytes at the end", r.data.len())));
    }
    Ok(())
}

fn check_connect(version: Version, r: &mut Reader<'_>) -> Result<(), CodecError> {
    let name = r.binary("protocol name")?;
    let level = r.u8("protocol level")?;
    match name {
        b"MQTT" => {}
        b"MQIsdp" => return Err(CodecError::UnsupportedProtocol { level }),
        _ => return Err(r.malformed("unknown protocol name")),
    }
    let expected = match version {
        Version::V311 => 4,
        Version::V5 => 5,
    };
    if level != expected {
        return Err(CodecError::UnsupportedProtocol { level });
    }
    let flags = r.u8("connect flags")?;
    if flags & 0x01 != 0 {
        return Err(r.malformed("the reserved connect flag is set"));
    }
    let will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    if !will && flags & 0b0011_1000 != 0 {
        return Err(r.malformed("will QoS or will retain set without a will"));
    }
    if will_qos == 3 {
        return Err(r.malformed("will QoS 3"));
    }
    let user = flags & 0x80 != 0;
    let pass = flags & 0x40 != 0;
    if version == Version::V311 && pass && !user {
        return Err(r.malformed("password flag set without the user name flag"));
    }
    r.u16("keep alive")?;
    if version == Version::V5 {
        check_properties(r, Props::Connect)?;
    }
    r.string("client identifier")?;
    if will {
        if version == Version::V5 {
            check_properties(r, Props::Will)?;
        }
        r.string("will topic")?;
        r.binary("will payload")?;
    }
    if user {
        r.string("user name")?;
    }
    if pass && std::str::from_utf8(r.binary("password")?).is_err() {
        return Err(r.malformed("binary (non-UTF-8) passwords are not supported"));
    }
    Ok(())
}

/// Which packet a property section belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Props {
    Connect,
    Will,
    ConnAck,
    Publish,
    /// PUBACK, PUBREC, PUBREL, PUBCOMP.
    Ack,
    Subscribe,
    /// SUBACK, UNSUBACK.
    SubAck,
    Unsubscribe,
    Disconnect,
}

/// MQTT 5 §2.2.2.2: which property may appear where.
fn property_allowed(ctx: Props, id: u8) -> bool {
    use Props::*;
    match id {
        38 => true,
        1 | 2 | 3 | 8 | 9 => matches!(ctx, Publish | Will),
        11 => matches!(ctx, Publish | Subscribe),
        17 => matches!(ctx, Connect | ConnAck | Disconnect),
        21 | 22 | 33 | 34 | 39 => matches!(ctx, Connect | ConnAck),
        18 | 19 | 26 | 36 | 37 | 40 | 41 | 42 => ctx == ConnAck,
        23 | 25 => ctx == Connect,
        24 => ctx == Will,
        28 => matches!(ctx, ConnAck | Disconnect),
        31 => matches!(ctx, ConnAck | Ack | SubAck | Disconnect),
        35 => ctx == Publish,
        _ => false,
    }
}

fn property_name(id: u8) -> &'static str {
    match id {
        1 => "Payload Format Indicator",
        2 => "Message Expiry Interval",
        3 => "Content Type",
        8 => "Response Topic",
        9 => "Correlation Data",
        11 => "Subscription Identifier",
        17 => "Session Expiry Interval",
        18 => "Assigned Client Identifier",
        19 => "Server Keep Alive",
        21 => "Authentication Method",
        22 => "Authentication Data",
        23 => "Request Problem Information",
        24 => "Will Delay Interval",
        25 => "Request Response Information",
        26 => "Response Information",
        28 => "Server Reference",
        31 => "Reason String",
        33 => "Receive Maximum",
        34 => "Topic Alias Maximum",
        35 => "Topic Alias",
        36 => "Maximum QoS",
        37 => "Retain Available",
        38 => "User Property",
        39 => "Maximum Packet Size",
        40 => "Wildcard Subscription Available",
        41 => "Subscription Identifier Available",
        42 => "Shared Subscription Available",
        _ => "unknown property",
    }
}

/// Walks an MQTT 5 property section: its length, each property's type, place,
/// value range and repetition.
fn check_properties(r: &mut Reader<'_>, ctx: Props) -> Result<(), CodecError> {
    let len = r.varint("property length")?;
    let mut p = Reader::new(r.take(len, "property section")?, r.packet);
    let mut seen = 0u64;
    while !p.is_empty() {
        let id = p.u8("property identifier")?;
        if !property_allowed(ctx, id) {
            return Err(p.malformed(format_args!("property {id:#04x} ({}) is not allowed here", property_name(id))));
        }
        let name = property_name(id);
        let bit = 1u64 << id; // id <= 42 here
        let repeatable = id == 38 || (id == 11 && ctx == Props::Publish);
        if !repeatable && seen & bit != 0 {
            return Err(p.protocol(format_args!("{name} appears more than once")));
        }
        seen |= bit;
        match id {
            1 | 23 | 25 | 36 | 37 | 40 | 41 | 42 => {
                let value = p.u8(name)?;
                if value > 1 {
                    return Err(p.protocol(format_args!("{name} {value} (must be 0 or 1)")));
                }
            }
            19 | 34 => {
                p.u16(name)?;
            }
            33 => {
                if p.u16(name)? == 0 {
                    return Err(p.protocol(format_args!("{name} 0")));
                }
            }
            35 => {
                if p.u16(name)? == 0 {
                    return Err(CodecError::TopicAliasInvalid("Topic Alias 0".into()));
                }
            }
            2 | 17 | 24 => {
                p.u32(name)?;
            }
            39 => {
                if p.u32(name)? == 0 {
                    return Err(p.protocol(format_args!("{name} 0")));
                }
            }
            11 => {
                if p.varint(name)? == 0 {
                    return Err(p.protocol(format_args!("{name} 0")));
                }
            }
            8 => {
                if p.string(name)?.contains(['+', '#']) {
                    return Err(p.protocol("wildcard in the Response Topic"));
                }
            }
            3 | 18 | 21 | 26 | 28 | 31 => {
                p.string(name)?;
            }
            9 | 22 => {
                p.binary(name)?;
            }
            _ => {
                p.string("user property name")?;
                p.string("user property value")?;
            }
        }
    }
    if ctx == Props::Connect && seen & (1 << 22) != 0 && seen & (1 << 21) == 0 {
        return Err(r.protocol("Authentication Data without an Authentication Method"));
    }
    Ok(())
}

/// Rules only a client can break, checked on the decoded packet.
fn check_from_client(packet: &v5::Packet) -> Result<(), CodecError> {
    match packet {
        v5::Packet::Publish(publish)
            if publish.properties.as_ref().is_some_and(|p| !p.subscription_identifiers.is_empty()) =>
        {
            Err(protocol("PUBLISH: a client must not send a Subscription Identifier"))
        }
        v5::Packet::Subscribe(subscribe)
            if subscribe.filters.iter().any(|f| f.nolocal && f.path.starts_with("$share/")) =>
        {
            Err(protocol("SUBSCRIBE: No Local on a shared subscription"))
        }
        _ => Ok(()),
    }
}

// ---------------------------------------------------------------------------
// MQTT 3.1.1 <-> the MQTT 5 model
// ---------------------------------------------------------------------------

fn qos_from_v4(qos: m4::QoS) -> QoS {
    match qos {
        m4::QoS::AtMostOnce => QoS::AtMostOnce,
        m4::QoS::AtLeastOnce => QoS::AtLeastOnce,
        m4::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

fn qos_to_v4(qos: QoS) -> m4::QoS {
    match qos {
        QoS::AtMostOnce => m4::QoS::AtMostOnce,
        QoS::AtLeastOnce => m4::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m4::QoS::ExactlyOnce,
    }
}

/// A 3.1.1 packet in the MQTT 5 model.
fn from_v4(packet: v4::Packet) -> v5::Packet {
    use v5::Packet as P;
    match packet {
        v4::Packet::Connect(c) => {
            let will = c.last_will.map(|w| v5::LastWill {
                topic: Bytes::from(w.topic.into_bytes()),
                message: w.message,
                qos: qos_from_v4(w.qos),
                retain: w.retain,
                properties: None,
            });
            let login = c.login.map(|l| v5::Login { username: l.username, password: l.password });
            let connect = v5::Connect {
                keep_alive: c.keep_alive,
                client_id: c.client_id,
                clean_start: c.clean_session,
                properties: None,
            };
            P::Connect(connect, will, login)
        }
        v4::Packet::ConnAck(ack) => P::ConnAck(v5::ConnAck {
            session_present: ack.session_present,
            code: match ack.code {
                v4::ConnectReturnCode::Success => ConnectReturnCode::Success,
                v4::ConnectReturnCode::RefusedProtocolVersion => ConnectReturnCode::UnsupportedProtocolVersion,
                v4::ConnectReturnCode::BadClientId => ConnectReturnCode::ClientIdentifierNotValid,
                v4::ConnectReturnCode::ServiceUnavailable => ConnectReturnCode::ServerUnavailable,
                v4::ConnectReturnCode::BadUserNamePassword => ConnectReturnCode::BadUserNamePassword,
                v4::ConnectReturnCode::NotAuthorized => ConnectReturnCode::NotAuthorized,
            },
            properties: None,
        }),
        v4::Packet::Publish(p) => P::Publish(v5::Publish {
            dup: p.dup,
            qos: qos_from_v4(p.qos),
            retain: p.retain,
            topic: Bytes::from(p.topic.into_bytes()),
            pkid: p.pkid,
            payload: p.payload,
            properties: None,
        }),
        v4::Packet::PubAck(a) => P::PubAck(v5::PubAck::new(a.pkid, None)),
        v4::Packet::PubRec(a) => P::PubRec(v5::PubRec::new(a.pkid, None)),
        v4::Packet::PubRel(a) => P::PubRel(v5::PubRel::new(a.pkid, None)),
        v4::Packet::PubComp(a) => P::PubComp(v5::PubComp::new(a.pkid, None)),
        v4::Packet::Subscribe(s) => P::Subscribe(v5::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .into_iter()
                .map(|f| v5::Filter {
                    path: f.path,
                    qos: qos_from_v4(f.qos),
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: v5::RetainForwardRule::OnEverySubscribe,
                })
                .collect(),
            properties: None,
        }),
        v4::Packet::SubAck(s) => P::SubAck(v5::SubAck {
            pkid: s.pkid,
            return_codes: s
                .return_codes
                .into_iter()
                .map(|c| match c {
                    v4::SubscribeReasonCode::Success(q) => v5::SubscribeReasonCode::Success(qos_from_v4(q)),
                    v4::SubscribeReasonCode::Failure => v5::SubscribeReasonCode::Failure,
                })
                .collect(),
            properties: None,
        }),
        v4::Packet::Unsubscribe(u) => {
            P::Unsubscribe(v5::Unsubscribe { pkid: u.pkid, filters: u.topics, properties: None })
        }
        v4::Packet::UnsubAck(u) => P::UnsubAck(v5::UnsubAck { pkid: u.pkid, reasons: Vec::new(), properties: None }),
        v4::Packet::PingReq => P::PingReq(v5::PingReq),
        v4::Packet::PingResp => P::PingResp(v5::PingResp),
        v4::Packet::Disconnect => P::Disconnect(v5::Disconnect::new(DisconnectReasonCode::NormalDisconnection)),
    }
}

/// The 3.1.1 CONNACK return code for an MQTT 5 reason code.
fn v4_connack_code(code: ConnectReturnCode) -> v4::ConnectReturnCode {
    use ConnectReturnCode as C;
    match code {
        C::Success => v4::ConnectReturnCode::Success,
        C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => v4::ConnectReturnCode::RefusedProtocolVersion,
        C::ClientIdentifierNotValid | C::BadClientId => v4::ConnectReturnCode::BadClientId,
        C::BadUserNamePassword | C::BadAuthenticationMethod => v4::ConnectReturnCode::BadUserNamePassword,
        C::NotAuthorized | C::Banned => v4::ConnectReturnCode::NotAuthorized,
        _ => v4::ConnectReturnCode::ServiceUnavailable,
    }
}

/// The MQTT 5 code for the model's 3.1-style codes, which rumqttc's v5 writer
/// cannot write (it panics).
fn v5_connack_code(code: ConnectReturnCode) -> ConnectReturnCode {
    match code {
        ConnectReturnCode::RefusedProtocolVersion => ConnectReturnCode::UnsupportedProtocolVersion,
        ConnectReturnCode::BadClientId => ConnectReturnCode::ClientIdentifierNotValid,
        ConnectReturnCode::ServiceUnavailable => ConnectReturnCode::ServerUnavailable,
        code => code,
    }
}

fn utf8_topic(topic: &Bytes, what: &str) -> Result<String, CodecError> {
    String::from_utf8(topic.to_vec()).map_err(|_| cannot(format_args!("{what} is not UTF-8 (3.1.1 needs a string)")))
}

/// The 3.1.1 form of a model packet; `None`: nothing to send (DISCONNECT).
/// Handles both directions (the client side uses only server packets).
fn to_v4(packet: &v5::Packet) -> Result<Option<v4::Packet>, CodecError> {
    use v5::Packet as P;
    let p = match packet {
        P::Connect(c, will, login) => v4::Packet::Connect(v4::Connect {
            protocol: m4::Protocol::V4,
            keep_alive: c.keep_alive,
            client_id: c.client_id.clone(),
            clean_session: c.clean_start,
            last_will: match will {
                Some(w) => Some(v4::LastWill {
                    topic: utf8_topic(&w.topic, "will topic")?,
                    message: w.message.clone(),
                    qos: qos_to_v4(w.qos),
                    retain: w.retain,
                }),
                None => None,
            },
            login: login.as_ref().map(|l| v4::Login { username: l.username.clone(), password: l.password.clone() }),
        }),
        P::ConnAck(ack) => v4::Packet::ConnAck(v4::ConnAck {
            session_present: ack.session_present && ack.code == ConnectReturnCode::Success,
            code: v4_connack_code(ack.code),
        }),
        P::Publish(p) => {
            if p.topic.is_empty() {
                return Err(cannot("PUBLISH with an empty topic (3.1.1 has no topic aliases)"));
            }
            v4::Packet::Publish(v4::Publish {
                dup: p.dup,
                qos: qos_to_v4(p.qos),
                retain: p.retain,
                topic: utf8_topic(&p.topic, "topic")?,
                pkid: p.pkid,
                payload: p.payload.clone(),
            })
        }
        P::PubAck(a) => v4::Packet::PubAck(v4::PubAck { pkid: a.pkid }),
        P::PubRec(a) => v4::Packet::PubRec(v4::PubRec { pkid: a.pkid }),
        P::PubRel(a) => v4::Packet::PubRel(v4::PubRel { pkid: a.pkid }),
        P::PubComp(a) => v4::Packet::PubComp(v4::PubComp { pkid: a.pkid }),
        P::Subscribe(s) => v4::Packet::Subscribe(v4::Subscribe {
            pkid: s.pkid,
            filters: s
                .filters
                .iter()
                .map(|f| v4::SubscribeFilter { path: f.path.clone(), qos: qos_to_v4(f.qos) })
                .collect(),
        }),
        P::SubAck(s) => v4::Packet::SubAck(v4::SubAck {
            pkid: s.pkid,
            return_codes: s
                .return_codes
                .iter()
                .map(|c| match c {
                    v5::SubscribeReasonCode::Success(q) => v4::SubscribeReasonCode::Success(qos_to_v4(*q)),
                    _ => v4::SubscribeReasonCode::Failure,
                })
                .collect(),
        }),
        P::Unsubscribe(u) => v4::Packet::Unsubscribe(v4::Unsubscribe { pkid: u.pkid, topics: u.filters.clone() }),
        P::UnsubAck(u) => v4::Packet::UnsubAck(v4::UnsubAck { pkid: u.pkid }),
        P::PingReq(_) => v4::Packet::PingReq,
        P::PingResp(_) => v4::Packet::PingResp,
        P::Disconnect(_) => return Ok(None),
        P::Auth(_) => return Err(cannot("MQTT 3.1.1 has no AUTH")),
    };
    Ok(Some(p))
}

// ---------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------

fn field(what: &str, len: usize) -> Result<(), CodecError> {
    if len > MAX_FIELD {
        return Err(cannot(format_args!("{what} is {len} bytes, more than 65535")));
    }
    Ok(())
}

fn opt_field(what: &str, len: Option<usize>) -> Result<(), CodecError> {
    len.map_or(Ok(()), |len| field(what, len))
}

fn user_properties(props: &[(String, String)]) -> Result<(), CodecError> {
    for (key, value) in props {
        field("user property name", key.len())?;
        field("user property value", value.len())?;
    }
    Ok(())
}

fn reason_and_users(reason: Option<&String>, users: &[(String, String)]) -> Result<(), CodecError> {
    opt_field("reason string", reason.map(String::len))?;
    user_properties(users)
}

fn packet_id(what: &str, pkid: u16) -> Result<(), CodecError> {
    if pkid == 0 {
        return Err(cannot(format_args!("{what} with packet identifier 0")));
    }
    Ok(())
}

fn subscription_id(id: usize) -> Result<(), CodecError> {
    if id == 0 || id > MAX_SUBSCRIPTION_ID {
        return Err(cannot(format_args!("subscription identifier {id} (must be 1..=268435455)")));
    }
    Ok(())
}

/// What rumqttc's writers would silently get wrong: fields over 65535 bytes
/// (truncated length prefix), packet id 0, out-of-range subscription ids, empty
/// lists. Also refuses AUTH, whose writer is broken.
fn check_encodable(packet: &v5::Packet) -> Result<(), CodecError> {
    use v5::Packet as P;
    match packet {
        P::Connect(c, will, login) => {
            field("client identifier", c.client_id.len())?;
            if let Some(p) = &c.properties {
                user_properties(&p.user_properties)?;
                opt_field("authentication method", p.authentication_method.as_ref().map(String::len))?;
                opt_field("authentication data", p.authentication_data.as_ref().map(Bytes::len))?;
            }
            if let Some(w) = will {
                field("will topic", w.topic.len())?;
                field("will payload", w.message.len())?;
                if let Some(p) = &w.properties {
                    opt_field("content type", p.content_type.as_ref().map(String::len))?;
                    opt_field("response topic", p.response_topic.as_ref().map(String::len))?;
                    opt_field("correlation data", p.correlation_data.as_ref().map(Bytes::len))?;
                    user_properties(&p.user_properties)?;
                }
            }
            if let Some(l) = login {
                field("user name", l.username.len())?;
                field("password", l.password.len())?;
            }
        }
        P::ConnAck(ack) => {
            if let Some(p) = &ack.properties {
                opt_field("assigned client identifier", p.assigned_client_identifier.as_ref().map(String::len))?;
                reason_and_users(p.reason_string.as_ref(), &p.user_properties)?;
                opt_field("response information", p.response_information.as_ref().map(String::len))?;
                opt_field("server reference", p.server_reference.as_ref().map(String::len))?;
                opt_field("authentication method", p.authentication_method.as_ref().map(String::len))?;
                opt_field("authentication data", p.authentication_data.as_ref().map(Bytes::len))?;
            }
        }
        P::Publish(p) => {
            field("topic", p.topic.len())?;
            if p.qos != QoS::AtMostOnce {
                packet_id("QoS 1/2 PUBLISH", p.pkid)?;
            }
            if let Some(props) = &p.properties {
                opt_field("response topic", props.response_topic.as_ref().map(String::len))?;
                opt_field("correlation data", props.correlation_data.as_ref().map(Bytes::len))?;
                opt_field("content type", props.content_type.as_ref().map(String::len))?;
                user_properties(&props.user_properties)?;
                props.subscription_identifiers.iter().try_for_each(|&id| subscription_id(id))?;
            }
        }
        P::PubAck(a) => {
            packet_id("PUBACK", a.pkid)?;
            if let Some(p) = &a.properties {
                reason_and_users(p.reason_string.as_ref(), &p.user_properties)?;
            }
        }
        P::PubRec(a) => {
            packet_id("PUBREC", a.pkid)?;
            if let Some(p) = &a.properties {
                reason_and_users(p.reason_string.as_ref(), &p.user_properties)?;
            }
        }
        P::PubRel(a) => {
            packet_id("PUBREL", a.pkid)?;
            if let Some(p) = &a.properties {
                reason_and_users(p.reason_string.as_ref(), &p.user_properties)?;
            }
        }
        P::PubComp(a) => {
            packet_id("PUBCOMP", a.pkid)?;
            if let Some(p) = &a.properties {
                reason_and_users(p.reason_string.as_ref(), &p.user_properties)?;
            }
        }
        P::Subscribe(s) => {
            packet_id("SUBSCRIBE", s.pkid)?;
            if s.filters.is_empty() {
                return Err(cannot("SUBSCRIBE without topic filters"));
            }
            s.filters.iter().try_for_each(|f| field("topic filter", f.path.len()))?;
            if let Some(p) = &s.properties {
                p.id.map_or(Ok(()), subscription_id)?;
                user_properties(&p.user_properties)?;
            }
        }
        P::SubAck(s) => {
            packet_id("SUBACK", s.pkid)?;
            if s.return_codes.is_empty() {
                return Err(cannot("SUBACK without return codes"));
            }
            if let Some(p) = &s.properties {
                reason_and_users(p.reason_string.as_ref(), &p.user_properties)?;
            }
        }
        P::Unsubscribe(u) => {
            packet_id("UNSUBSCRIBE", u.pkid)?;
            if u.filters.is_empty() {
                return Err(cannot("UNSUBSCRIBE without topic filters"));
            }
            u.filters.iter().try_for_each(|f| field("topic filter", f.len()))?;
            if let Some(p) = &u.properties {
                user_properties(&p.user_properties)?;
            }
        }
        P::UnsubAck(u) => {
            packet_id("UNSUBACK", u.pkid)?;
            if let Some(p) = &u.properties {
                reason_and_users(p.reason_string.as_ref(), &p.user_properties)?;
            }
        }
        P::Disconnect(d) => {
            if let Some(p) = &d.properties {
                reason_and_users(p.reason_string.as_ref(), &p.user_properties)?;
                opt_field("server reference", p.server_reference.as_ref().map(String::len))?;
            }
        }
        P::PingReq(_) | P::PingResp(_) => {}
        P::Auth(_) => return Err(cannot("AUTH is not supported (rumqttc's AUTH writer is broken)")),
    }
    Ok(())
}

fn from_write_error_v5(e: m5::Error, size: usize) -> CodecError {
    match e {
        m5::Error::PayloadTooLong => CodecError::PacketTooLarge { size, max: (MAX_REMAINING_LENGTH + 5) as u32 },
        e => cannot(e),
    }
}

fn from_write_error_v4(e: m4::Error, size: usize) -> CodecError {
    match e {
        m4::Error::PayloadTooLong => CodecError::PacketTooLarge { size, max: (MAX_REMAINING_LENGTH + 5) as u32 },
        e => cannot(e),
    }
}

fn disconnect_properties_empty(p: &v5::DisconnectProperties) -> bool {
    p.session_expiry_interval.is_none()
        && p.reason_string.is_none()
        && p.user_properties.is_empty()
        && p.server_reference.is_none()
}

/// Appends `packet` (MQTT 5) to `out`; on error `out` is unchanged.
fn write_v5(packet: &v5::Packet, out: &mut BytesMut, max: Option<u32>) -> Result<usize, CodecError> {
    use v5::Packet as P;
    check_encodable(packet)?;
    if let (Some(max), P::Publish(p)) = (max, packet) {
        // Cheap early refusal for the one big packet (exact: pkid was checked).
        let size = p.size();
        if size > max as usize {
            return Err(CodecError::PacketTooLarge { size, max });
        }
    }
    let start = out.len();
    let result = match packet {
        P::Disconnect(d) if d.properties.as_ref().is_none_or(disconnect_properties_empty) => {
            if d.reason_code == DisconnectReasonCode::NormalDisconnection {
                out.put_slice(&[0xE0, 0x00]);
            } else {
                out.put_slice(&[0xE0, 0x02, d.reason_code as u8, 0x00]);
            }
            Ok(())
        }
        P::ConnAck(ack) => {
            let code = v5_connack_code(ack.code);
            let ack = v5::ConnAck {
                session_present: ack.session_present && code == ConnectReturnCode::Success,
                code,
                properties: ack.properties.clone(),
            };
            ack.write(out).map(drop)
        }
        // rumqttc patches the connect flags at an offset from the buffer start.
        P::Connect(..) if start > 0 => {
            let mut scratch = BytesMut::new();
            let result = packet.write(&mut scratch, None).map(drop);
            out.extend_from_slice(&scratch);
            result
        }
        _ => packet.write(out, None).map(drop),
    };
    if let Err(e) = result {
        out.truncate(start);
        return Err(from_write_error_v5(e, packet.size()));
    }
    finish(out, start, max)
}

/// Appends `packet` in its 3.1.1 form to `out`; on error `out` is unchanged.
fn write_v4(packet: &v5::Packet, out: &mut BytesMut, max: Option<u32>) -> Result<usize, CodecError> {
    check_encodable(packet)?;
    let Some(p4) = to_v4(packet)? else { return Ok(0) };
    let start = out.len();
    let result = if matches!(p4, v4::Packet::Connect(_)) && start > 0 {
        let mut scratch = BytesMut::new();
        let result = p4.write(&mut scratch, usize::MAX).map(drop);
        out.extend_from_slice(&scratch);
        result
    } else {
        p4.write(out, usize::MAX).map(drop)
    };
    if let Err(e) = result {
        out.truncate(start);
        return Err(from_write_error_v4(e, p4.size()));
    }
    finish(out, start, max)
}

fn finish(out: &mut BytesMut, start: usize, max: Option<u32>) -> Result<usize, CodecError> {
    let written = out.len() - start;
    if let Some(max) = max
        && written > max as usize
    {
        out.truncate(start);
        return Err(CodecError::PacketTooLarge { size: written, max });
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::collection::vec;
    use proptest::option;
    use proptest::prelude::*;
    use proptest::sample::{Index, select};
    use v5::Packet as P;

    const MAX: u32 = 1 << 20;

    // ----- helpers -------------------------------------------------------

    fn varint(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let mut b = (n % 128) as u8;
            n /= 128;
            if n > 0 {
                b |= 0x80;
            }
            out.push(b);
            if n == 0 {
                return out;
            }
        }
    }

    fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
        let mut out = vec![byte1];
        out.extend(varint(body.len()));
        out.extend_from_slice(body);
        out
    }

    /// A length-prefixed string or binary.
    fn s(x: impl AsRef<[u8]>) -> Vec<u8> {
        let x = x.as_ref();
        let mut out = (x.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(x);
        out
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    fn kind(e: &CodecError) -> &'static str {
        match e {
            CodecError::Malformed(_) => "malformed",
            CodecError::ProtocolError(_) => "protocol",
            CodecError::PacketTooLarge { .. } => "too large",
            CodecError::UnsupportedProtocol { .. } => "unsupported",
            CodecError::NotConnect { .. } => "not connect",
            CodecError::InvalidTopicName(_) => "topic",
            CodecError::InvalidTopicFilter(_) => "filter",
            CodecError::TopicAliasInvalid(_) => "alias",
            CodecError::CannotEncode(_) => "cannot",
        }
    }

    /// Decodes exactly one complete packet from `bytes`, which must all be used.
    fn decode_with(version: Version, origin: Origin, bytes: &[u8]) -> Result<v5::Packet, CodecError> {
        let mut buf = BytesMut::from(bytes);
        match decode_frame(version, origin, &mut buf, MAX)? {
            Some(p) => {
                assert!(buf.is_empty(), "{} bytes left after {p:?}", buf.len());
                Ok(p)
            }
            None => panic!("incomplete: {bytes:02x?}"),
        }
    }

    fn from_client(version: Version, bytes: &[u8]) -> Result<v5::Packet, CodecError> {
        decode_with(version, Origin::Client, bytes)
    }

    fn from_upstream(bytes: &[u8]) -> Result<v5::Packet, CodecError> {
        decode_with(Version::V5, Origin::Any, bytes)
    }

    fn client_err(version: Version, bytes: &[u8]) -> &'static str {
        match from_client(version, bytes) {
            Ok(p) => panic!("decoded {p:?} from {bytes:02x?}"),
            Err(e) => kind(&e),
        }
    }

    fn enc_v5(p: &v5::Packet) -> Vec<u8> {
        let mut out = BytesMut::new();
        let n = encode_v5(p, &mut out).unwrap();
        assert_eq!(n, out.len());
        out.to_vec()
    }

    fn enc_client(version: Version, p: &v5::Packet) -> Result<Vec<u8>, CodecError> {
        let mut out = BytesMut::new();
        let n = ClientCodec::new(version, MAX).encode(p, &mut out)?;
        assert_eq!(n, out.len());
        Ok(out.to_vec())
    }

    /// Any packet in its 3.1.1 form (client packets too, for the tests).
    fn enc_v4_any(p: &v5::Packet) -> Vec<u8> {
        if let P::Disconnect(_) = p {
            return vec![0xE0, 0x00]; // a client's DISCONNECT
        }
        let mut out = BytesMut::new();
        write_v4(p, &mut out, None).unwrap();
        out.to_vec()
    }

    fn users(n: usize) -> Vec<(String, String)> {
        (0..n).map(|i| (format!("k{i}"), format!("v{i} é"))).collect()
    }

    fn auth_packet() -> v5::Packet {
        let header = v5::FixedHeader::new(0xF0, 1, 2);
        P::Auth(v5::Auth::read(header, Bytes::from_static(&[0xF0, 0x02, 0x00, 0x00])).unwrap())
    }

    /// The decoder's view of a packet: empty property sets become `None`, and
    /// what the encoder normalises is normalised.
    fn canon(p: v5::Packet) -> v5::Packet {
        match p {
            P::Connect(mut c, will, login) => {
                if c.properties == Some(v5::ConnectProperties::new()) {
                    c.properties = None;
                }
                let will = will.map(|mut w| {
                    let empty = v5::LastWillProperties {
                        delay_interval: None,
                        payload_format_indicator: None,
                        message_expiry_interval: None,
                        content_type: None,
                        response_topic: None,
                        correlation_data: None,
                        user_properties: vec![],
                    };
                    if w.properties == Some(empty) {
                        w.properties = None;
                    }
                    w
                });
                let login = login.filter(|l| !(l.username.is_empty() && l.password.is_empty()));
                P::Connect(c, will, login)
            }
            P::ConnAck(mut a) => {
                a.code = v5_connack_code(a.code);
                a.session_present &= a.code == ConnectReturnCode::Success;
                if a.properties.as_ref().is_some_and(|p| *p == empty_connack_properties()) {
                    a.properties = None;
                }
                P::ConnAck(a)
            }
            P::Publish(mut p) => {
                if p.properties == Some(v5::PublishProperties::default()) {
                    p.properties = None;
                }
                if p.qos == QoS::AtMostOnce {
                    p.pkid = 0;
                }
                P::Publish(p)
            }
            P::PubAck(mut a) => {
                if a.properties == Some(v5::PubAckProperties { reason_string: None, user_properties: vec![] }) {
                    a.properties = None;
                }
                P::PubAck(a)
            }
            P::PubRec(mut a) => {
                if a.properties == Some(v5::PubRecProperties { reason_string: None, user_properties: vec![] }) {
                    a.properties = None;
                }
                P::PubRec(a)
            }
            P::PubRel(mut a) => {
                if a.properties == Some(v5::PubRelProperties { reason_string: None, user_properties: vec![] }) {
                    a.properties = None;
                }
                P::PubRel(a)
            }
            P::PubComp(mut a) => {
                if a.properties == Some(v5::PubCompProperties { reason_string: None, user_properties: vec![] }) {
                    a.properties = None;
                }
                P::PubComp(a)
            }
            P::Subscribe(mut s) => {
                if s.properties == Some(v5::SubscribeProperties { id: None, user_properties: vec![] }) {
                    s.properties = None;
                }
                P::Subscribe(s)
            }
            P::SubAck(mut s) => {
                for c in &mut s.return_codes {
                    if *c == v5::SubscribeReasonCode::Failure {
                        *c = v5::SubscribeReasonCode::Unspecified; // both are 0x80 on the wire
                    }
                }
                if s.properties == Some(v5::SubAckProperties { reason_string: None, user_properties: vec![] }) {
                    s.properties = None;
                }
                P::SubAck(s)
            }
            P::Unsubscribe(mut u) => {
                if u.properties == Some(v5::UnsubscribeProperties { user_properties: vec![] }) {
                    u.properties = None;
                }
                P::Unsubscribe(u)
            }
            P::UnsubAck(mut u) => {
                if u.properties == Some(v5::UnsubAckProperties { reason_string: None, user_properties: vec![] }) {
                    u.properties = None;
                }
                P::UnsubAck(u)
            }
            P::Disconnect(mut d) => {
                if d.properties.as_ref().is_some_and(disconnect_properties_empty) {
                    d.properties = None;
                }
                P::Disconnect(d)
            }
            p => p,
        }
    }

    fn empty_connack_properties() -> v5::ConnAckProperties {
        v5::ConnAckProperties {
            session_expiry_interval: None,
            receive_max: None,
            max_qos: None,
            retain_available: None,
            max_packet_size: None,
            assigned_client_identifier: None,
            topic_alias_max: None,
            reason_string: None,
            user_properties: vec![],
            wildcard_subscription_available: None,
            subscription_identifiers_available: None,
            shared_subscription_available: None,
            server_keep_alive: None,
            response_information: None,
            server_reference: None,
            authentication_method: None,
            authentication_data: None,
        }
    }

    /// What a 3.1.1 client receives for a server packet, back in the model.
    fn expect_v4(p: &v5::Packet) -> Option<v5::Packet> {
        Some(match p {
            P::ConnAck(a) => P::ConnAck(v5::ConnAck {
                session_present: a.session_present && a.code == ConnectReturnCode::Success,
                code: match v4_connack_code(a.code) {
                    v4::ConnectReturnCode::Success => ConnectReturnCode::Success,
                    v4::ConnectReturnCode::RefusedProtocolVersion => ConnectReturnCode::UnsupportedProtocolVersion,
                    v4::ConnectReturnCode::BadClientId => ConnectReturnCode::ClientIdentifierNotValid,
                    v4::ConnectReturnCode::ServiceUnavailable => ConnectReturnCode::ServerUnavailable,
                    v4::ConnectReturnCode::BadUserNamePassword => ConnectReturnCode::BadUserNamePassword,
                    v4::ConnectReturnCode::NotAuthorized => ConnectReturnCode::NotAuthorized,
                },
                properties: None,
            }),
            P::Publish(p) => P::Publish(v5::Publish {
                properties: None,
                pkid: if p.qos == QoS::AtMostOnce { 0 } else { p.pkid },
                ..p.clone()
            }),
            P::PubAck(a) => P::PubAck(v5::PubAck::new(a.pkid, None)),
            P::PubRec(a) => P::PubRec(v5::PubRec::new(a.pkid, None)),
            P::PubRel(a) => P::PubRel(v5::PubRel::new(a.pkid, None)),
            P::PubComp(a) => P::PubComp(v5::PubComp::new(a.pkid, None)),
            P::SubAck(s) => P::SubAck(v5::SubAck {
                pkid: s.pkid,
                return_codes: s
                    .return_codes
                    .iter()
                    .map(|c| match c {
                        v5::SubscribeReasonCode::Success(q) => v5::SubscribeReasonCode::Success(*q),
                        _ => v5::SubscribeReasonCode::Failure,
                    })
                    .collect(),
                properties: None,
            }),
            P::UnsubAck(u) => P::UnsubAck(v5::UnsubAck { pkid: u.pkid, reasons: vec![], properties: None }),
            P::PingResp(_) => P::PingResp(v5::PingResp),
            P::Disconnect(_) => return None,
            other => panic!("not a server packet: {other:?}"),
        })
    }

    const ALL_CONNECT_CODES: [ConnectReturnCode; 25] = [
        ConnectReturnCode::Success,
        ConnectReturnCode::RefusedProtocolVersion,
        ConnectReturnCode::BadClientId,
        ConnectReturnCode::ServiceUnavailable,
        ConnectReturnCode::UnspecifiedError,
        ConnectReturnCode::MalformedPacket,
        ConnectReturnCode::ProtocolError,
        ConnectReturnCode::ImplementationSpecificError,
        ConnectReturnCode::UnsupportedProtocolVersion,
        ConnectReturnCode::ClientIdentifierNotValid,
        ConnectReturnCode::BadUserNamePassword,
        ConnectReturnCode::NotAuthorized,
        ConnectReturnCode::ServerUnavailable,
        ConnectReturnCode::ServerBusy,
        ConnectReturnCode::Banned,
        ConnectReturnCode::BadAuthenticationMethod,
        ConnectReturnCode::TopicNameInvalid,
        ConnectReturnCode::PacketTooLarge,
        ConnectReturnCode::QuotaExceeded,
        ConnectReturnCode::PayloadFormatInvalid,
        ConnectReturnCode::RetainNotSupported,
        ConnectReturnCode::QoSNotSupported,
        ConnectReturnCode::UseAnotherServer,
        ConnectReturnCode::ServerMoved,
        ConnectReturnCode::ConnectionRateExceeded,
    ];

    const ALL_DISCONNECT_CODES: [DisconnectReasonCode; 29] = [
        DisconnectReasonCode::NormalDisconnection,
        DisconnectReasonCode::DisconnectWithWillMessage,
        DisconnectReasonCode::UnspecifiedError,
        DisconnectReasonCode::MalformedPacket,
        DisconnectReasonCode::ProtocolError,
        DisconnectReasonCode::ImplementationSpecificError,
        DisconnectReasonCode::NotAuthorized,
        DisconnectReasonCode::ServerBusy,
        DisconnectReasonCode::ServerShuttingDown,
        DisconnectReasonCode::KeepAliveTimeout,
        DisconnectReasonCode::SessionTakenOver,
        DisconnectReasonCode::TopicFilterInvalid,
        DisconnectReasonCode::TopicNameInvalid,
        DisconnectReasonCode::ReceiveMaximumExceeded,
        DisconnectReasonCode::TopicAliasInvalid,
        DisconnectReasonCode::PacketTooLarge,
        DisconnectReasonCode::MessageRateTooHigh,
        DisconnectReasonCode::QuotaExceeded,
        DisconnectReasonCode::AdministrativeAction,
        DisconnectReasonCode::PayloadFormatInvalid,
        DisconnectReasonCode::RetainNotSupported,
        DisconnectReasonCode::QoSNotSupported,
        DisconnectReasonCode::UseAnotherServer,
        DisconnectReasonCode::ServerMoved,
        DisconnectReasonCode::SharedSubscriptionNotSupported,
        DisconnectReasonCode::ConnectionRateExceeded,
        DisconnectReasonCode::MaximumConnectTime,
        DisconnectReasonCode::SubscriptionIdentifiersNotSupported,
        DisconnectReasonCode::WildcardSubscriptionsNotSupported,
    ];

    fn all_suback_codes() -> Vec<v5::SubscribeReasonCode> {
        use v5::SubscribeReasonCode as S;
        vec![
            S::Success(QoS::AtMostOnce),
            S::Success(QoS::AtLeastOnce),
            S::Success(QoS::ExactlyOnce),
            S::Failure,
            S::Unspecified,
            S::ImplementationSpecific,
            S::NotAuthorized,
            S::TopicFilterInvalid,
            S::PkidInUse,
            S::QuotaExceeded,
            S::SharedSubscriptionsNotSupported,
            S::SubscriptionIdNotSupported,
            S::WildcardSubscriptionsNotSupported,
        ]
    }

    // ----- sample packets ------------------------------------------------

    fn sample_connect_v5() -> v5::Packet {
        let properties = v5::ConnectProperties {
            session_expiry_interval: Some(3600),
            receive_maximum: Some(20),
            max_packet_size: Some(4096),
            topic_alias_max: Some(10),
            request_response_info: Some(1),
            request_problem_info: Some(0),
            user_properties: users(2),
            authentication_method: Some("SCRAM".into()),
            authentication_data: Some(Bytes::from_static(b"\x00\x01")),
        };
        let will = v5::LastWill {
            topic: Bytes::from_static(b"devices/d1/status"),
            message: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: Some(v5::LastWillProperties {
                delay_interval: Some(5),
                payload_format_indicator: Some(1),
                message_expiry_interval: Some(60),
                content_type: Some("text/plain".into()),
                response_topic: Some("replies/d1".into()),
                correlation_data: Some(Bytes::from_static(b"cd")),
                user_properties: users(1),
            }),
        };
        let connect =
            v5::Connect { keep_alive: 30, client_id: "d1".into(), clean_start: true, properties: Some(properties) };
        P::Connect(connect, Some(will), Some(v5::Login::new("user", "pässword")))
    }

    fn sample_publish(qos: QoS, pkid: u16, properties: bool) -> v5::Publish {
        v5::Publish {
            dup: false,
            qos,
            retain: true,
            topic: Bytes::from_static("sensors/é/temp".as_bytes()),
            pkid,
            payload: Bytes::from_static(b"\x00\x01\x02 binary"),
            properties: properties.then(|| v5::PublishProperties {
                payload_format_indicator: Some(0),
                message_expiry_interval: Some(10),
                topic_alias: Some(3),
                response_topic: Some("r/x".into()),
                correlation_data: Some(Bytes::from_static(b"c")),
                user_properties: users(2),
                subscription_identifiers: vec![],
                content_type: Some("application/cbor".into()),
            }),
        }
    }

    fn sample_client_v5() -> Vec<v5::Packet> {
        let reason = Some("because".to_string());
        vec![
            sample_connect_v5(),
            P::Connect(
                v5::Connect { keep_alive: 0, client_id: String::new(), clean_start: false, properties: None },
                None,
                Some(v5::Login::new("", "password-only is legal in MQTT 5")),
            ),
            P::Publish(sample_publish(QoS::AtMostOnce, 0, false)),
            P::Publish(sample_publish(QoS::AtLeastOnce, 1, true)),
            P::Publish(v5::Publish { topic: Bytes::new(), ..sample_publish(QoS::ExactlyOnce, 65535, true) }),
            P::PubAck(v5::PubAck::new(7, None)),
            P::PubAck(v5::PubAck {
                pkid: 8,
                reason: v5::PubAckReason::NotAuthorized,
                properties: Some(v5::PubAckProperties { reason_string: reason.clone(), user_properties: users(1) }),
            }),
            P::PubRec(v5::PubRec { pkid: 9, reason: v5::PubRecReason::QuotaExceeded, properties: None }),
            P::PubRel(v5::PubRel::new(10, None)),
            P::PubRel(v5::PubRel {
                pkid: 11,
                reason: v5::PubRelReason::PacketIdentifierNotFound,
                properties: Some(v5::PubRelProperties { reason_string: reason.clone(), user_properties: vec![] }),
            }),
            P::PubComp(v5::PubComp::new(12, None)),
            P::Subscribe(v5::Subscribe {
                pkid: 13,
                filters: vec![
                    v5::Filter::new("sport/+", QoS::AtLeastOnce),
                    v5::Filter {
                        path: "a/#".into(),
                        qos: QoS::ExactlyOnce,
                        nolocal: true,
                        preserve_retain: true,
                        retain_forward_rule: v5::RetainForwardRule::Never,
                    },
                    v5::Filter {
                        path: "$share/g/x".into(),
                        qos: QoS::AtMostOnce,
                        nolocal: false,
                        preserve_retain: false,
                        retain_forward_rule: v5::RetainForwardRule::OnNewSubscribe,
                    },
                ],
                properties: Some(v5::SubscribeProperties { id: Some(268_435_455), user_properties: users(1) }),
            }),
            P::Unsubscribe(v5::Unsubscribe {
                pkid: 14,
                filters: vec!["a/#".into(), "é".into()],
                properties: Some(v5::UnsubscribeProperties { user_properties: users(1) }),
            }),
            P::PingReq(v5::PingReq),
            P::Disconnect(v5::Disconnect::new(DisconnectReasonCode::NormalDisconnection)),
            P::Disconnect(v5::Disconnect::new(DisconnectReasonCode::DisconnectWithWillMessage)),
            P::Disconnect(v5::Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
                properties: Some(v5::DisconnectProperties {
                    session_expiry_interval: Some(0),
                    reason_string: reason,
                    user_properties: users(1),
                    server_reference: None,
                }),
            }),
        ]
    }

    fn sample_server_v5() -> Vec<v5::Packet> {
        let mut props = empty_connack_properties();
        props.assigned_client_identifier = Some("sealmq-1".into());
        props.max_packet_size = Some(1 << 20);
        props.receive_max = Some(100);
        props.max_qos = Some(1);
        props.topic_alias_max = Some(0);
        props.user_properties = users(1);
        let mut with_ids = sample_publish(QoS::AtLeastOnce, 5, true);
        if let Some(p) = &mut with_ids.properties {
            p.subscription_identifiers = vec![1, 128, 268_435_455];
        }
        vec![
            P::ConnAck(v5::ConnAck {
                session_present: true,
                code: ConnectReturnCode::Success,
                properties: Some(props),
            }),
            P::ConnAck(v5::ConnAck {
                session_present: false,
                code: ConnectReturnCode::NotAuthorized,
                properties: None,
            }),
            P::Publish(sample_publish(QoS::AtMostOnce, 0, false)),
            P::Publish(with_ids),
            P::PubAck(v5::PubAck {
                pkid: 1,
                reason: v5::PubAckReason::NoMatchingSubscribers,
                properties: Some(v5::PubAckProperties { reason_string: None, user_properties: users(1) }),
            }),
            P::PubRec(v5::PubRec::new(2, None)),
            P::PubRel(v5::PubRel::new(3, None)),
            P::PubComp(v5::PubComp { pkid: 4, reason: v5::PubCompReason::PacketIdentifierNotFound, properties: None }),
            P::SubAck(v5::SubAck {
                pkid: 5,
                return_codes: all_suback_codes()
                    .into_iter()
                    .filter(|c| *c != v5::SubscribeReasonCode::Failure)
                    .collect(),
                properties: Some(v5::SubAckProperties { reason_string: Some("r".into()), user_properties: vec![] }),
            }),
            P::UnsubAck(v5::UnsubAck {
                pkid: 6,
                reasons: vec![v5::UnsubAckReason::Success, v5::UnsubAckReason::NoSubscriptionExisted],
                properties: None,
            }),
            P::PingResp(v5::PingResp),
            P::Disconnect(v5::Disconnect::new(DisconnectReasonCode::SessionTakenOver)),
        ]
    }

    fn sample_client_v4() -> Vec<v5::Packet> {
        vec![
            P::Connect(
                v5::Connect { keep_alive: 60, client_id: "hub".into(), clean_start: false, properties: None },
                Some(v5::LastWill {
                    topic: Bytes::from_static(b"hubs/hub/online"),
                    message: Bytes::from_static(b"false"),
                    qos: QoS::ExactlyOnce,
                    retain: true,
                    properties: None,
                }),
                Some(v5::Login::new("user", "pw")),
            ),
            P::Connect(
                v5::Connect { keep_alive: 0, client_id: String::new(), clean_start: true, properties: None },
                None,
                None,
            ),
            P::Publish(sample_publish(QoS::AtMostOnce, 0, false)),
            P::Publish(v5::Publish { dup: true, ..sample_publish(QoS::AtLeastOnce, 42, false) }),
            P::Publish(sample_publish(QoS::ExactlyOnce, 43, false)),
            P::PubAck(v5::PubAck::new(1, None)),
            P::PubRec(v5::PubRec::new(2, None)),
            P::PubRel(v5::PubRel::new(3, None)),
            P::PubComp(v5::PubComp::new(4, None)),
            P::Subscribe(v5::Subscribe {
                pkid: 5,
                filters: vec![
                    v5::Filter::new("homeassistant/#", QoS::AtLeastOnce),
                    v5::Filter::new("+", QoS::ExactlyOnce),
                ],
                properties: None,
            }),
            P::Unsubscribe(v5::Unsubscribe { pkid: 6, filters: vec!["homeassistant/#".into()], properties: None }),
            P::PingReq(v5::PingReq),
            P::Disconnect(v5::Disconnect::new(DisconnectReasonCode::NormalDisconnection)),
        ]
    }

    // ----- peek ----------------------------------------------------------

    #[test]
    fn peek_finds_the_protocol_level_from_the_first_bytes() {
        let v4 = enc_v4_any(&sample_client_v4()[0]);
        let v5 = enc_v5(&sample_connect_v5());
        let v31 = frame(0x10, &cat(&[&s("MQIsdp"), &[3, 2, 0, 60], &s("c")]));
        // The level sits after the fixed header, the name length and the name.
        for (bytes, level, name_len) in [(&v4, 4, 4), (&v5, 5, 4), (&v31, 3, 6)] {
            let at = read_header(bytes).unwrap().unwrap().len + 2 + name_len;
            assert_eq!(bytes[at], level);
            for n in 0..bytes.len() {
                let expected = if n > at { Some(level) } else { None };
                assert_eq!(peek_protocol_level(&bytes[..n]).unwrap(), expected, "prefix {n} of {bytes:02x?}");
            }
        }
        assert_eq!(connack_v31_refused(), [0x20, 0x02, 0x00, 0x01]);
    }

    #[test]
    fn peek_refuses_what_is_not_a_supported_connect() {
        let cases: &[(&[u8], &str)] = &[
            (&[0x30, 0x00], "not connect"),
            (b"GET / HTTP/1.1\r\n", "not connect"),
            (&[0x16, 0x03, 0x01], "malformed"), // a TLS ClientHello: type 1, flags 6
            (&[0x12, 0x00], "malformed"),
            (&[0x10, 0x80, 0x80, 0x80, 0x80, 0x01], "malformed"),
            (&[0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'T', 6], "unsupported"),
            (&[0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'T', 3], "unsupported"),
            (&[0x10, 0x09, 0x00, 0x06, b'M', b'Q', b'I', b's', b'd', b'p', 4], "unsupported"),
            (&[0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'X', 4], "malformed"),
            (&[0x10, 0x07, 0x00, 0x05, b'M', b'Q', b'T', b'T', b'5'], "malformed"),
            (&[0x10, 0x02, 0x00, 0x04], "malformed"), // complete, too short
            (&[0x10, 0x06, 0x00, 0x04, b'M', b'Q', b'T', b'T'], "malformed"),
            (&[0x10, 0x00], "malformed"),
        ];
        for (bytes, expected) in cases {
            let err = peek_protocol_level(bytes).unwrap_err();
            assert_eq!(kind(&err), *expected, "{bytes:02x?}: {err}");
        }
        assert!(matches!(peek_protocol_level(&[0xC0, 0x00]), Err(CodecError::NotConnect { packet_type: 12 })));
        assert!(matches!(
            peek_protocol_level(&[0x10, 0x07, 0x00, 0x04, b'M', b'Q', b'T', b'T', 6]),
            Err(CodecError::UnsupportedProtocol { level: 6 })
        ));
        assert_eq!(peek_protocol_level(&[]).unwrap(), None);
        assert_eq!(peek_protocol_level(&[0x10, 0xFF]).unwrap(), None);
    }

    // ----- round trips ---------------------------------------------------

    #[test]
    fn v5_client_packets_round_trip() {
        for p in sample_client_v5() {
            let bytes = enc_v5(&p);
            assert_eq!(from_client(Version::V5, &bytes).unwrap(), canon(p.clone()), "{bytes:02x?}");
        }
    }

    #[test]
    fn v5_server_packets_round_trip() {
        for p in sample_server_v5() {
            let bytes = enc_client(Version::V5, &p).unwrap();
            assert_eq!(from_upstream(&bytes).unwrap(), canon(p.clone()), "{bytes:02x?}");
            assert_eq!(bytes, enc_v5(&p), "both v5 encoders agree");
        }
    }

    #[test]
    fn v4_client_packets_translate_to_the_v5_model() {
        for p in sample_client_v4() {
            let bytes = enc_v4_any(&p);
            assert_eq!(from_client(Version::V311, &bytes).unwrap(), p, "{bytes:02x?}");
        }
    }

    #[test]
    fn v4_server_packets_round_trip() {
        for p in sample_server_v5() {
            let bytes = enc_client(Version::V311, &p).unwrap();
            match expect_v4(&p) {
                Some(expected) => assert_eq!(decode_with(Version::V311, Origin::Any, &bytes).unwrap(), expected),
                None => assert!(bytes.is_empty()),
            }
        }
    }

    #[test]
    fn v4_connect_bytes_translate() {
        // rumqttc's own 3.1.1 CONNECT test vector: user, password, will QoS 1, clean session.
        let bytes = cat(&[
            &[0x10, 39],
            &s("MQTT"),
            &[0x04, 0b1100_1110, 0x00, 0x0a],
            &s("test"),
            &s("/a"),
            &s("offline"),
            &s("rumq"),
            &s("mq"),
        ]);
        let expected = P::Connect(
            v5::Connect { keep_alive: 10, client_id: "test".into(), clean_start: true, properties: None },
            Some(v5::LastWill {
                topic: Bytes::from_static(b"/a"),
                message: Bytes::from_static(b"offline"),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: None,
            }),
            Some(v5::Login::new("rumq", "mq")),
        );
        assert_eq!(from_client(Version::V311, &bytes).unwrap(), expected);
        // SUBSCRIBE options get the MQTT 5 defaults.
        let sub = from_client(Version::V311, &frame(0x82, &cat(&[&[0, 9], &s("a/+"), &[2]]))).unwrap();
        assert_eq!(
            sub,
            P::Subscribe(v5::Subscribe {
                pkid: 9,
                filters: vec![v5::Filter {
                    path: "a/+".into(),
                    qos: QoS::ExactlyOnce,
                    nolocal: false,
                    preserve_retain: false,
                    retain_forward_rule: v5::RetainForwardRule::OnEverySubscribe,
                }],
                properties: None,
            })
        );
    }

    #[test]
    fn a_stream_decodes_the_same_byte_by_byte() {
        for (version, packets) in [(Version::V5, sample_client_v5()), (Version::V311, sample_client_v4())] {
            let stream: Vec<u8> =
                packets.iter().flat_map(|p| if version == Version::V5 { enc_v5(p) } else { enc_v4_any(p) }).collect();
            let codec = ClientCodec::new(version, MAX);
            let mut whole = BytesMut::from(&stream[..]);
            let mut at_once = Vec::new();
            while let Some(p) = codec.decode(&mut whole).unwrap() {
                at_once.push(p);
            }
            assert!(whole.is_empty());
            let mut buf = BytesMut::new();
            let mut trickled = Vec::new();
            for b in &stream {
                buf.put_u8(*b);
                while let Some(p) = codec.decode(&mut buf).unwrap() {
                    trickled.push(p);
                }
            }
            assert_eq!(at_once.len(), packets.len());
            assert_eq!(at_once, trickled);
        }
    }

    // ----- DISCONNECT ------------------------------------------------------

    #[test]
    fn short_v5_disconnects_decode() {
        let normal = P::Disconnect(v5::Disconnect::new(DisconnectReasonCode::NormalDisconnection));
        let will = P::Disconnect(v5::Disconnect::new(DisconnectReasonCode::DisconnectWithWillMessage));
        for origin in [Origin::Client, Origin::Any] {
            assert_eq!(decode_with(Version::V5, origin, &[0xE0, 0x00]).unwrap(), normal);
            assert_eq!(decode_with(Version::V5, origin, &[0xE0, 0x01, 0x04]).unwrap(), will);
            assert_eq!(decode_with(Version::V5, origin, &[0xE0, 0x02, 0x04, 0x00]).unwrap(), will);
            // What rumqttc's and rumqttd's writers send: the stray 00 is dropped.
            assert_eq!(decode_with(Version::V5, origin, &[0xE0, 0x01, 0x04, 0x00]).unwrap(), will);
            let mut buf = BytesMut::from(&[0xE0, 0x01][..]);
            assert_eq!(decode_frame(Version::V5, origin, &mut buf, MAX).unwrap(), None);
            assert_eq!(buf.len(), 2);
            // A following packet is left alone.
            let mut buf = BytesMut::from(&[0xE0, 0x01, 0x04, 0xC0, 0x00][..]);
            assert_eq!(decode_frame(Version::V5, origin, &mut buf, MAX).unwrap(), Some(will.clone()));
            assert_eq!(&buf[..], &[0xC0, 0x00]);
        }
        assert_eq!(client_err(Version::V5, &[0xE0, 0x01, 0x03]), "malformed"); // unknown reason code
        assert_eq!(client_err(Version::V5, &[0xE0, 0x03, 0x04, 0x00, 0x00]), "malformed"); // trailing byte
        assert_eq!(client_err(Version::V5, &[0xE2, 0x00]), "malformed");
        let with_reason = from_client(Version::V5, &[0xE0, 0x05, 0x04, 0x03, 0x1F, 0x00, 0x00]).unwrap();
        let P::Disconnect(d) = with_reason else { panic!() };
        assert_eq!(d.properties.unwrap().reason_string.as_deref(), Some(""));
        // 3.1.1: no body at all.
        assert_eq!(from_client(Version::V311, &[0xE0, 0x00]).unwrap(), normal);
        assert_eq!(client_err(Version::V311, &[0xE0, 0x01, 0x00]), "malformed");
    }

    #[test]
    fn disconnects_encode_correctly() {
        let empty = v5::DisconnectProperties {
            session_expiry_interval: None,
            reason_string: None,
            user_properties: vec![],
            server_reference: None,
        };
        for (reason, properties, bytes) in [
            (DisconnectReasonCode::NormalDisconnection, None, vec![0xE0, 0x00]),
            (DisconnectReasonCode::NormalDisconnection, Some(empty.clone()), vec![0xE0, 0x00]),
            (DisconnectReasonCode::NotAuthorized, None, vec![0xE0, 0x02, 0x87, 0x00]),
            (DisconnectReasonCode::ServerShuttingDown, Some(empty), vec![0xE0, 0x02, 0x8B, 0x00]),
        ] {
            let p = P::Disconnect(v5::Disconnect { reason_code: reason, properties });
            assert_eq!(enc_v5(&p), bytes);
            assert_eq!(enc_client(Version::V5, &p).unwrap(), bytes);
            assert_eq!(from_upstream(&bytes).unwrap(), canon(p.clone()));
            // 3.1.1 has no server DISCONNECT: nothing to send.
            assert_eq!(enc_client(Version::V311, &p).unwrap(), Vec::<u8>::new());
        }
        for reason in ALL_DISCONNECT_CODES {
            let with_props = P::Disconnect(v5::Disconnect {
                reason_code: reason,
                properties: Some(v5::DisconnectProperties {
                    session_expiry_interval: Some(1),
                    reason_string: Some("bye".into()),
                    user_properties: users(1),
                    server_reference: Some("elsewhere".into()),
                }),
            });
            assert_eq!(from_upstream(&enc_v5(&with_props)).unwrap(), with_props);
            let bare = P::Disconnect(v5::Disconnect::new(reason));
            assert_eq!(from_upstream(&enc_v5(&bare)).unwrap(), bare);
        }
    }

    /// The rumqttc 0.25.1 bugs this module works around. If this test fails,
    /// rumqttc changed: revisit the workarounds.
    #[test]
    fn rumqttc_bugs_still_present() {
        let mut buf = BytesMut::from(&[0xE0, 0x00][..]);
        assert!(matches!(v5::Packet::read(&mut buf, None), Err(m5::Error::PayloadRequired)));
        let mut buf = BytesMut::from(&[0xE0, 0x01, 0x04][..]);
        assert!(matches!(v5::Packet::read(&mut buf, None), Err(m5::Error::InsufficientBytes(_))));
        assert!(buf.is_empty(), "the frame was consumed");
        let mut out = BytesMut::new();
        v5::Disconnect::new(DisconnectReasonCode::NotAuthorized).write(&mut out).unwrap();
        assert_eq!(&out[..], &[0xE0, 0x01, 0x87, 0x00]);
        let panicked = std::panic::catch_unwind(|| {
            let ack = v5::ConnAck { session_present: false, code: ConnectReturnCode::BadClientId, properties: None };
            ack.write(&mut BytesMut::new())
        });
        assert!(panicked.is_err(), "v5 ConnAck::write panics on 3.1 return codes");
        let connect = v5::Connect { keep_alive: 1, client_id: "c".into(), clean_start: true, properties: None };
        let connect = v5::Packet::Connect(connect, None, Some(v5::Login::new("u", "p")));
        let mut alone = BytesMut::new();
        connect.write(&mut alone, None).unwrap();
        let mut after = BytesMut::from(&b"xyz"[..]);
        connect.write(&mut after, None).unwrap();
        assert_ne!(&after[3..], &alone[..], "Connect::write patches flags relative to the buffer start");
    }

    // ----- framing, size, flags -------------------------------------------

    #[test]
    fn oversized_packets_are_refused_from_the_fixed_header() {
        let codec = ClientCodec::new(Version::V5, 1000);
        let mut buf = BytesMut::from(&[0x30, 0xFF, 0xFF, 0x7F][..]);
        match codec.decode(&mut buf) {
            Err(CodecError::PacketTooLarge { size, max: 1000 }) => assert_eq!(size, 4 + 2_097_151),
            other => panic!("{other:?}"),
        }
        assert_eq!(buf.len(), 4, "nothing consumed, nothing more needed");
        // Exactly at the limit is fine, one byte over is not.
        let bytes = enc_v5(&P::Publish(sample_publish(QoS::AtLeastOnce, 1, true)));
        let size = bytes.len() as u32;
        let at = ClientCodec::new(Version::V5, size);
        assert!(at.decode(&mut BytesMut::from(&bytes[..])).unwrap().is_some());
        let under = ClientCodec::new(Version::V5, size - 1);
        assert!(matches!(
            under.decode(&mut BytesMut::from(&bytes[..3])),
            Err(CodecError::PacketTooLarge { size: s, .. }) if s == bytes.len()
        ));
        // A partial packet below the limit reserves room for the rest.
        let mut buf = BytesMut::from(&bytes[..5]);
        assert_eq!(at.decode(&mut buf).unwrap(), None);
        assert!(buf.capacity() >= bytes.len());
        // Remaining length: at most 4 bytes.
        for version in [Version::V311, Version::V5] {
            let codec = ClientCodec::new(version, u32::MAX);
            assert_eq!(codec.decode(&mut BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF][..])).unwrap(), None);
            let err = codec.decode(&mut BytesMut::from(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01][..])).unwrap_err();
            assert_eq!(kind(&err), "malformed");
        }
    }

    #[test]
    fn fixed_header_flags_and_packet_types_are_checked() {
        let sub_body = cat(&[&[0, 1], &s("a"), &[0]]);
        let sub_body_v5 = cat(&[&[0, 1, 0], &s("a"), &[0]]);
        for version in [Version::V311, Version::V5] {
            let v5 = version == Version::V5;
            let sub = if v5 { &sub_body_v5 } else { &sub_body };
            let publish = if v5 { cat(&[&s("a"), &[0, 1, 0], b"x"]) } else { cat(&[&s("a"), &[0, 1], b"x"]) };
            let cases: Vec<(Vec<u8>, &str)> = vec![
                (frame(0x00, &[]), "malformed"),
                (frame(0xF0, &[0, 0]), if v5 { "protocol" } else { "malformed" }),
                (frame(0x80, sub), "malformed"),
                (frame(0x83, sub), "malformed"),
                (frame(0x60, &[0, 1]), "malformed"),
                (frame(0xA0, &cat(&[&[0, 1], if v5 { &[0] } else { &[] }, &s("a")])), "malformed"),
                (frame(0x41, &[0, 1]), "malformed"),
                (frame(0xC1, &[]), "malformed"),
                (frame(0xE1, &[]), "malformed"),
                (frame(0x11, &[]), "malformed"),
                (frame(0x36, &publish), "malformed"),                      // QoS 3
                (frame(0x38, &publish[..publish.len() - 2]), "malformed"), // DUP on QoS 0
                (frame(0x20, &[0, 0]), "protocol"),                        // CONNACK from a client
                (frame(0x90, &[0, 1, 0]), "protocol"),
                (frame(0xB0, &[0, 1]), "protocol"),
                (frame(0xD0, &[]), "protocol"),
                (frame(0xC0, &[0]), "malformed"), // PINGREQ with a body
                (frame(0x32, &cat(&[&s("a"), &[0, 0], if v5 { &[0] } else { &[] }])), "protocol"), // pkid 0
            ];
            for (bytes, expected) in cases {
                assert_eq!(client_err(version, &bytes), expected, "{version:?} {bytes:02x?}");
            }
            assert!(from_client(version, &frame(0x82, sub)).is_ok());
            assert!(from_client(version, &frame(0x62, &[0, 1])).is_ok());
            assert!(from_client(version, &frame(0x3B, &publish)).is_ok()); // DUP, QoS 1, retain
        }
        // Lenient towards upstream on DUP + QoS 0.
        assert!(from_upstream(&frame(0x38, &cat(&[&s("a"), &[0], b"x"]))).is_ok());
    }

    #[test]
    fn subscribe_and_unsubscribe_rules() {
        let v4_sub = |pkid: [u8; 2], rest: &[u8]| frame(0x82, &cat(&[&pkid, rest]));
        let v5_sub = |props: &[u8], rest: &[u8]| frame(0x82, &cat(&[&[0, 1], &varint(props.len()), props, rest]));
        let f = s("a/b");
        // 3.1.1
        assert_eq!(client_err(Version::V311, &v4_sub([0, 0], &cat(&[&f, &[1]]))), "protocol");
        assert_eq!(client_err(Version::V311, &v4_sub([0, 1], &[])), "protocol");
        assert_eq!(client_err(Version::V311, &v4_sub([0, 1], &cat(&[&f, &[3]]))), "malformed");
        assert_eq!(client_err(Version::V311, &v4_sub([0, 1], &cat(&[&f, &[0x04]]))), "malformed");
        assert_eq!(client_err(Version::V311, &v4_sub([0, 1], &f)), "malformed"); // options byte missing
        assert_eq!(client_err(Version::V311, &v4_sub([0, 1], &cat(&[&s("a\0b"), &[0]]))), "malformed");
        assert_eq!(client_err(Version::V311, &v4_sub([0, 1], &cat(&[&s([0xC3, 0x28]), &[0]]))), "malformed");
        // MQTT 5
        assert!(from_client(Version::V5, &v5_sub(&[], &cat(&[&f, &[0b0010_1110]]))).is_ok());
        assert_eq!(client_err(Version::V5, &v5_sub(&[], &[])), "protocol");
        assert_eq!(client_err(Version::V5, &v5_sub(&[], &cat(&[&f, &[0x40]]))), "malformed");
        assert_eq!(client_err(Version::V5, &v5_sub(&[], &cat(&[&f, &[0x30]]))), "protocol"); // retain handling 3
        assert_eq!(client_err(Version::V5, &v5_sub(&[11, 0], &cat(&[&f, &[0]]))), "protocol"); // sub id 0
        assert_eq!(client_err(Version::V5, &v5_sub(&[11, 1, 11, 2], &cat(&[&f, &[0]]))), "protocol");
        assert_eq!(client_err(Version::V5, &v5_sub(&[11, 0x80], &cat(&[&f, &[0]]))), "malformed");
        let shared_nolocal = v5_sub(&[], &cat(&[&s("$share/g/a"), &[0x04]]));
        assert_eq!(client_err(Version::V5, &shared_nolocal), "protocol");
        assert!(from_upstream(&shared_nolocal).is_ok());
        assert_eq!(client_err(Version::V5, &frame(0x82, &[0, 1])), "malformed"); // property length missing
        // UNSUBSCRIBE
        assert_eq!(client_err(Version::V311, &frame(0xA2, &[0, 1])), "protocol");
        assert_eq!(client_err(Version::V311, &frame(0xA2, &cat(&[&[0, 0], &f]))), "protocol");
        assert_eq!(client_err(Version::V5, &frame(0xA2, &[0, 1, 0])), "protocol");
        assert_eq!(client_err(Version::V5, &frame(0xA2, &cat(&[&[0, 1, 0], &f, &[0]]))), "malformed");
    }

    #[test]
    fn acknowledgement_bodies() {
        for first in [0x40, 0x50, 0x62, 0x70] {
            // 3.1.1: exactly the packet id.
            assert!(from_client(Version::V311, &frame(first, &[0, 1])).is_ok());
            assert_eq!(client_err(Version::V311, &frame(first, &[0, 1, 0])), "malformed");
            assert_eq!(client_err(Version::V311, &frame(first, &[0, 0])), "protocol");
            assert_eq!(client_err(Version::V311, &frame(first, &[0])), "malformed");
            // MQTT 5: reason code and properties optional.
            assert!(from_client(Version::V5, &frame(first, &[0, 1, 0])).is_ok());
            assert!(from_client(Version::V5, &frame(first, &[0, 1, 0, 0])).is_ok());
            assert!(from_client(Version::V5, &frame(first, &cat(&[&[0, 1, 0, 3, 31], &s("")]))).is_ok());
            assert_eq!(client_err(Version::V5, &frame(first, &[0, 1, 0, 5])), "malformed");
            assert_eq!(client_err(Version::V5, &frame(first, &[0, 1, 0, 0, 0])), "malformed");
            assert_eq!(client_err(Version::V5, &frame(first, &[0, 1, 0x55])), "malformed"); // unknown reason
            assert_eq!(client_err(Version::V5, &frame(first, &[0, 1, 0, 2, 1, 0])), "malformed"); // PFI not here
        }
    }

    #[test]
    fn v5_property_rules() {
        let publish = |props: &[u8]| frame(0x30, &cat(&[&s("a"), &varint(props.len()), props, b"payload"]));
        let ok = |bytes: &[u8]| from_client(Version::V5, bytes).unwrap();
        ok(&publish(&[]));
        ok(&publish(&cat(&[&[38], &s("k"), &s("v"), &[38], &s("k"), &s("v")])));
        ok(&publish(&[1, 1, 2, 0, 0, 0, 9, 35, 0, 1]));
        assert_eq!(client_err(Version::V5, &publish(&[2, 0, 0, 0, 1, 2, 0, 0, 0, 2])), "protocol");
        assert_eq!(client_err(Version::V5, &publish(&[11, 1])), "protocol"); // client Subscription Identifier
        assert!(from_upstream(&publish(&[11, 1, 11, 2])).is_ok());
        assert_eq!(client_err(Version::V5, &publish(&[35, 0, 0])), "alias"); // Topic Alias 0: 0x94
        assert_eq!(client_err(Version::V5, &publish(&[35, 0, 1, 35, 0, 2])), "protocol");
        assert_eq!(client_err(Version::V5, &publish(&[1, 2])), "protocol");
        assert_eq!(client_err(Version::V5, &publish(&cat(&[&[8], &s("r/#")]))), "protocol");
        assert_eq!(client_err(Version::V5, &publish(&[0x50, 0])), "malformed");
        assert_eq!(client_err(Version::V5, &publish(&[0x81, 0])), "malformed");
        assert_eq!(client_err(Version::V5, &publish(&[17, 0, 0, 0, 1])), "malformed"); // not allowed in PUBLISH
        assert_eq!(client_err(Version::V5, &publish(&cat(&[&[3], &s([0xFF])]))), "malformed");
        assert_eq!(client_err(Version::V5, &publish(&cat(&[&[38], &s("k\0"), &s("v")]))), "malformed");
        // A property running past its section (declared 2, a 4-byte integer inside).
        let crossing = frame(0x30, &cat(&[&s("a"), &[2], &[2, 0, 0, 0, 1], b"payload"]));
        assert_eq!(client_err(Version::V5, &crossing), "malformed");
        // A property section running past the packet.
        assert_eq!(client_err(Version::V5, &frame(0x30, &cat(&[&s("a"), &[9, 1, 0]]))), "malformed");
        // Empty topic (topic alias) is the caller's business.
        let alias_only = from_client(Version::V5, &frame(0x30, &cat(&[&s(""), &[3, 35, 0, 7]]))).unwrap();
        let P::Publish(alias_only) = alias_only else { panic!() };
        assert!(alias_only.topic.is_empty());
        // Invalid UTF-8 in the topic too: validate_topic_name does that.
        assert!(from_client(Version::V5, &frame(0x30, &cat(&[&s([0xFF]), &[0]]))).is_ok());
    }

    /// Found by `fuzz/` (targets `client_packets_v5`, `upstream_v5`): `C0 80 00`,
    /// a PINGREQ whose Remaining Length 0 is spread over two bytes, decoded.
    /// MQTT 5 §1.5.5 (MQTT-1.5.5-1) requires the fewest bytes, for the Remaining
    /// Length, property lengths and Subscription Identifiers alike; 3.1.1 does
    /// not say so, and its decoder stays lenient.
    #[test]
    fn non_minimal_variable_byte_integers_are_malformed_in_v5() {
        let publish = |props: &[u8]| frame(0x30, &cat(&[&s("a"), props, b"x"]));
        let cases: [Vec<u8>; 6] = [
            vec![0xC0, 0x80, 0x00],
            vec![0xC0, 0x80, 0x80, 0x80, 0x00],
            vec![0xE0, 0x80, 0x00],
            cat(&[&[0x30, 0x84, 0x00], &s("a"), &[0], b"x"]), // Remaining Length 4 in two bytes
            publish(&[0x80, 0x00]),                           // property length 0 in two bytes
            publish(&[3, 11, 0x81, 0x00]),                    // Subscription Identifier 1 in two bytes
        ];
        for bytes in &cases {
            for origin in [Origin::Client, Origin::Any] {
                let result = decode_with(Version::V5, origin, bytes);
                assert!(matches!(result, Err(CodecError::Malformed(_))), "{origin:?} {bytes:02x?}: {result:?}");
            }
        }
        // The shortest forms of the same values, and values that need the bytes.
        assert_eq!(from_client(Version::V5, &[0xC0, 0x00]).unwrap(), P::PingReq(v5::PingReq));
        assert!(from_upstream(&publish(&[3, 11, 0x80, 0x01])).is_ok()); // Subscription Identifier 128
        let long = cat(&[&s("a"), &[0], &[b'x'; 200]]);
        assert!(from_client(Version::V5, &frame(0x30, &long)).is_ok());
        assert_eq!(frame(0x30, &long)[1..3], [0xCC, 0x01]); // 204 needs two bytes
        // MQTT 3.1.1 is not held to it.
        assert_eq!(from_client(Version::V311, &[0xC0, 0x80, 0x00]).unwrap(), P::PingReq(v5::PingReq));
    }

    fn connect_bytes(level: u8, flags: u8, props: Option<&[u8]>, payload: &[u8]) -> Vec<u8> {
        let mut body = cat(&[&s("MQTT"), &[level, flags, 0, 60]]);
        if let Some(p) = props {
            body.extend(varint(p.len()));
            body.extend_from_slice(p);
        }
        body.extend_from_slice(payload);
        frame(0x10, &body)
    }

    #[test]
    fn connect_rules() {
        let id = s("c");
        let v4 = |flags: u8, payload: &[u8]| connect_bytes(4, flags, None, payload);
        let v5 = |flags: u8, props: &[u8], payload: &[u8]| connect_bytes(5, flags, Some(props), payload);
        assert!(from_client(Version::V311, &v4(0x02, &id)).is_ok());
        assert!(from_client(Version::V5, &v5(0x02, &[], &id)).is_ok());
        assert_eq!(client_err(Version::V311, &v4(0x03, &id)), "malformed"); // reserved flag
        assert_eq!(client_err(Version::V5, &v5(0x01, &[], &id)), "malformed");
        assert_eq!(client_err(Version::V311, &v4(0x08, &id)), "malformed"); // will QoS without will
        assert_eq!(client_err(Version::V311, &v4(0x20, &id)), "malformed"); // will retain without will
        assert_eq!(client_err(Version::V311, &v4(0x1C, &cat(&[&id, &s("t"), &s("m")]))), "malformed"); // QoS 3
        assert!(from_client(Version::V311, &v4(0x14, &cat(&[&id, &s("t"), &s("m")]))).is_ok());
        assert_eq!(client_err(Version::V311, &v4(0x40, &cat(&[&id, &s("p")]))), "malformed"); // password alone
        assert!(from_client(Version::V5, &v5(0x40, &[], &cat(&[&id, &s("p")]))).is_ok());
        assert_eq!(client_err(Version::V311, &v4(0x02, &cat(&[&id, &[0]]))), "malformed"); // trailing byte
        assert_eq!(client_err(Version::V5, &v5(0x80, &[], &id)), "malformed"); // user name missing
        assert_eq!(client_err(Version::V311, &v4(0x02, &s("c\0"))), "malformed");
        match from_client(Version::V5, &v5(0xC0, &[], &cat(&[&id, &s("u"), &s([0xFF, 0xFE])]))) {
            Err(CodecError::Malformed(msg)) => assert!(msg.contains("password"), "{msg}"),
            other => panic!("{other:?}"),
        }
        // Protocol level and name.
        assert!(matches!(
            from_client(Version::V311, &v5(0x02, &[], &id)),
            Err(CodecError::UnsupportedProtocol { level: 5 })
        ));
        assert!(matches!(from_client(Version::V5, &v4(0x02, &id)), Err(CodecError::UnsupportedProtocol { level: 4 })));
        let v31 = frame(0x10, &cat(&[&s("MQIsdp"), &[3, 2, 0, 60], &id]));
        assert!(matches!(from_client(Version::V311, &v31), Err(CodecError::UnsupportedProtocol { level: 3 })));
        let other = frame(0x10, &cat(&[&s("MQTX"), &[4, 2, 0, 60], &id]));
        assert_eq!(client_err(Version::V311, &other), "malformed");
        // MQTT 5 properties.
        assert_eq!(client_err(Version::V5, &v5(0x02, &[17, 0, 0, 0, 1, 17, 0, 0, 0, 1], &id)), "protocol");
        assert_eq!(client_err(Version::V5, &v5(0x02, &[33, 0, 0], &id)), "protocol");
        assert_eq!(client_err(Version::V5, &v5(0x02, &[39, 0, 0, 0, 0], &id)), "protocol");
        assert_eq!(client_err(Version::V5, &v5(0x02, &[23, 2], &id)), "protocol");
        assert_eq!(client_err(Version::V5, &v5(0x02, &[22, 0, 1, 0xAA], &id)), "protocol");
        assert_eq!(client_err(Version::V5, &v5(0x02, &[35, 0, 1], &id)), "malformed");
        assert!(from_client(Version::V5, &v5(0x02, &cat(&[&[21], &s("m"), &[22, 0, 1, 0xAA]]), &id)).is_ok());
        // Will properties: Will Delay is allowed there, not in CONNECT's own.
        let will = cat(&[&id, &[5, 24, 0, 0, 0, 9], &s("t"), &s("m")]);
        assert!(from_client(Version::V5, &v5(0x06, &[], &will)).is_ok());
        assert_eq!(client_err(Version::V5, &v5(0x02, &[24, 0, 0, 0, 9], &id)), "malformed");
        // A truncated CONNECT (short inside a complete frame).
        let full = enc_v5(&sample_connect_v5());
        let mut short = full[..full.len() - 3].to_vec();
        short[1] -= 3; // keep the frame complete, cut the password
        assert_eq!(client_err(Version::V5, &short), "malformed");
    }

    // ----- encoding -------------------------------------------------------

    #[test]
    fn v4_connack_codes() {
        for code in ALL_CONNECT_CODES {
            use ConnectReturnCode as C;
            let expected: u8 = match code {
                C::Success => 0,
                C::UnsupportedProtocolVersion | C::RefusedProtocolVersion => 1,
                C::ClientIdentifierNotValid | C::BadClientId => 2,
                C::BadUserNamePassword | C::BadAuthenticationMethod => 4,
                C::NotAuthorized | C::Banned => 5,
                _ => 3,
            };
            for session_present in [false, true] {
                let ack = P::ConnAck(v5::ConnAck { session_present, code, properties: None });
                let sp = u8::from(session_present && code == C::Success);
                assert_eq!(enc_client(Version::V311, &ack).unwrap(), vec![0x20, 0x02, sp, expected], "{code:?}");
            }
        }
    }

    #[test]
    fn v5_connack_never_panics_and_maps_31_codes() {
        for code in ALL_CONNECT_CODES {
            let ack = P::ConnAck(v5::ConnAck { session_present: true, code, properties: None });
            let bytes = enc_client(Version::V5, &ack).unwrap();
            let P::ConnAck(back) = from_upstream(&bytes).unwrap() else { panic!() };
            assert_eq!(back.code, v5_connack_code(code));
            assert_eq!(back.session_present, code == ConnectReturnCode::Success);
        }
        let mapped = |code| enc_v5(&P::ConnAck(v5::ConnAck { session_present: false, code, properties: None }))[3];
        assert_eq!(mapped(ConnectReturnCode::RefusedProtocolVersion), 0x84);
        assert_eq!(mapped(ConnectReturnCode::BadClientId), 0x85);
        assert_eq!(mapped(ConnectReturnCode::ServiceUnavailable), 0x88);
    }

    #[test]
    fn v4_suback_and_other_server_packets() {
        let codes = all_suback_codes();
        let ack = P::SubAck(v5::SubAck {
            pkid: 0x0102,
            return_codes: codes.clone(),
            properties: Some(v5::SubAckProperties { reason_string: Some("x".into()), user_properties: vec![] }),
        });
        let expected: Vec<u8> = codes
            .iter()
            .map(|c| match c {
                v5::SubscribeReasonCode::Success(q) => *q as u8,
                _ => 0x80,
            })
            .collect();
        assert_eq!(enc_client(Version::V311, &ack).unwrap(), frame(0x90, &cat(&[&[1, 2], &expected])));
        let refused = v5::PubAck {
            pkid: 7,
            reason: v5::PubAckReason::NotAuthorized,
            properties: Some(v5::PubAckProperties { reason_string: Some("no".into()), user_properties: users(1) }),
        };
        assert_eq!(enc_client(Version::V311, &P::PubAck(refused)).unwrap(), vec![0x40, 0x02, 0, 7]);
        assert_eq!(enc_client(Version::V311, &P::PubRec(v5::PubRec::new(8, None))).unwrap(), vec![0x50, 2, 0, 8]);
        assert_eq!(enc_client(Version::V311, &P::PubRel(v5::PubRel::new(9, None))).unwrap(), vec![0x62, 2, 0, 9]);
        assert_eq!(enc_client(Version::V311, &P::PubComp(v5::PubComp::new(10, None))).unwrap(), vec![0x70, 2, 0, 10]);
        let unsuback = v5::UnsubAck { pkid: 11, reasons: vec![v5::UnsubAckReason::NotAuthorized], properties: None };
        assert_eq!(enc_client(Version::V311, &P::UnsubAck(unsuback)).unwrap(), vec![0xB0, 2, 0, 11]);
        assert_eq!(enc_client(Version::V311, &P::PingResp(v5::PingResp)).unwrap(), vec![0xD0, 0]);
        let publish = sample_publish(QoS::AtLeastOnce, 0x0304, true);
        assert_eq!(
            enc_client(Version::V311, &P::Publish(publish.clone())).unwrap(),
            frame(0x33, &cat(&[&s(&publish.topic), &[3, 4], &publish.payload]))
        );
        let bad_topic = v5::Publish { topic: Bytes::from_static(&[0xFF]), ..publish.clone() };
        assert_eq!(kind(&enc_client(Version::V311, &P::Publish(bad_topic)).unwrap_err()), "cannot");
        let no_topic = v5::Publish { topic: Bytes::new(), ..publish };
        assert_eq!(kind(&enc_client(Version::V311, &P::Publish(no_topic)).unwrap_err()), "cannot");
    }

    #[test]
    fn encoders_refuse_what_they_cannot_write_and_leave_the_buffer_alone() {
        let long = "x".repeat(65_536);
        let mut with_long_user = sample_publish(QoS::AtMostOnce, 0, true);
        with_long_user.properties.as_mut().unwrap().user_properties.push(("k".into(), long.clone()));
        let mut with_sub_id_0 = sample_publish(QoS::AtMostOnce, 0, true);
        with_sub_id_0.properties.as_mut().unwrap().subscription_identifiers.push(0);
        let mut with_big_sub_id = sample_publish(QoS::AtMostOnce, 0, true);
        with_big_sub_id.properties.as_mut().unwrap().subscription_identifiers.push(MAX_SUBSCRIPTION_ID + 1);
        let bad: Vec<v5::Packet> = vec![
            P::Publish(sample_publish(QoS::AtLeastOnce, 0, false)),
            P::Publish(with_long_user),
            P::Publish(with_sub_id_0),
            P::Publish(with_big_sub_id),
            P::Publish(v5::Publish {
                topic: Bytes::from(long.clone().into_bytes()),
                ..sample_publish(QoS::AtMostOnce, 0, false)
            }),
            P::SubAck(v5::SubAck { pkid: 1, return_codes: vec![], properties: None }),
            P::PubAck(v5::PubAck::new(0, None)),
            P::Disconnect(v5::Disconnect {
                reason_code: DisconnectReasonCode::NormalDisconnection,
                properties: Some(v5::DisconnectProperties {
                    session_expiry_interval: None,
                    reason_string: Some(long),
                    user_properties: vec![],
                    server_reference: None,
                }),
            }),
            auth_packet(),
        ];
        for p in &bad {
            for version in [Version::V311, Version::V5] {
                let mut out = BytesMut::from(&b"keep"[..]);
                let err = ClientCodec::new(version, MAX).encode(p, &mut out).unwrap_err();
                assert_eq!(kind(&err), "cannot", "{version:?} {err}");
                assert_eq!(&out[..], b"keep");
            }
            let mut out = BytesMut::from(&b"keep"[..]);
            assert_eq!(kind(&encode_v5(p, &mut out).unwrap_err()), "cannot");
            assert_eq!(&out[..], b"keep");
        }
        let upstream_only: Vec<v5::Packet> = vec![
            sample_connect_v5(),
            P::Subscribe(v5::Subscribe::new(v5::Filter::new("a", QoS::AtMostOnce), None)),
            P::Unsubscribe(v5::Unsubscribe { pkid: 1, filters: vec!["a".into()], properties: None }),
            P::PingReq(v5::PingReq),
        ];
        for p in &upstream_only {
            for version in [Version::V311, Version::V5] {
                assert_eq!(kind(&enc_client(version, p).unwrap_err()), "cannot");
            }
        }
        // Subscribe::new leaves pkid 0, Publish::new too.
        assert_eq!(kind(&encode_v5(&upstream_only[1], &mut BytesMut::new()).unwrap_err()), "cannot");
        let publish = v5::Publish::new("a", QoS::AtLeastOnce, "x", None);
        assert_eq!(kind(&encode_v5(&P::Publish(publish), &mut BytesMut::new()).unwrap_err()), "cannot");
    }

    #[test]
    fn client_maximum_packet_size_is_respected() {
        let p = P::Publish(sample_publish(QoS::AtLeastOnce, 1, true));
        let size = enc_v5(&p).len() as u32;
        for version in [Version::V5, Version::V311] {
            let needed = enc_client(version, &p).unwrap().len() as u32;
            let exact = ClientCodec { version, max_incoming: MAX, max_outgoing: Some(needed) };
            let mut out = BytesMut::new();
            assert_eq!(exact.encode(&p, &mut out).unwrap(), needed as usize);
            let small = ClientCodec { max_outgoing: Some(needed - 1), ..exact };
            let mut out = BytesMut::from(&b"ab"[..]);
            let err = small.encode(&p, &mut out).unwrap_err();
            assert!(matches!(err, CodecError::PacketTooLarge { size, .. } if size == needed as usize), "{err}");
            assert_eq!(&out[..], b"ab");
            // Small packets (post-check path) too.
            let tiny = ClientCodec { max_outgoing: Some(3), ..exact };
            assert!(matches!(
                tiny.encode(&P::PubAck(v5::PubAck::new(1, None)), &mut out),
                Err(CodecError::PacketTooLarge { size: 4, max: 3 })
            ));
        }
        assert!(size > 0);
    }

    #[test]
    fn connect_encodes_into_a_non_empty_buffer() {
        let p = sample_connect_v5();
        let mut out = BytesMut::from(&b"xyz"[..]);
        let n = encode_v5(&p, &mut out).unwrap();
        assert_eq!(&out[..3], b"xyz");
        assert_eq!(n, out.len() - 3);
        assert_eq!(from_client(Version::V5, &out[3..]).unwrap(), canon(p));
        let p4 = sample_client_v4().remove(0);
        let mut out = BytesMut::from(&b"xyz"[..]);
        write_v4(&p4, &mut out, None).unwrap();
        assert_eq!(&out[..3], b"xyz");
        assert_eq!(from_client(Version::V311, &out[3..]).unwrap(), p4);
    }

    // ----- topics and filters ----------------------------------------------

    #[test]
    fn topic_names() {
        for ok in ["a", "a/b", "/", "a//b", "é/x", "$SYS/x", " ", "sport/tennis/player1"] {
            assert_eq!(validate_topic_name(ok.as_bytes()).unwrap(), ok);
        }
        let long = vec![b'a'; 65_536];
        let cases: &[(&[u8], &str)] = &[
            (b"", "topic"),
            (b"a/+", "topic"),
            (b"#", "topic"),
            (b"a#", "topic"),
            (b"+", "topic"),
            (&long, "topic"),
            (b"a\0b", "malformed"),
            (&[0xFF], "malformed"),
            (&[b'a', 0xC3], "malformed"),
        ];
        for (topic, expected) in cases {
            assert_eq!(kind(&validate_topic_name(topic).unwrap_err()), *expected, "{topic:?}");
        }
        assert_eq!(validate_topic_name(&[b'a'; 65_535]).unwrap().len(), 65_535);
    }

    #[test]
    fn topic_filters() {
        for ok in [
            "#",
            "+",
            "sport/+",
            "sport/#",
            "+/+",
            "/",
            "a//b",
            "é/x",
            "$SYS/#",
            "+/tennis/#",
            "sport/tennis/player1",
            "$share",
            "$sharex/a",
            "/+",
            "+/",
        ] {
            assert_eq!(validate_filter(ok).unwrap(), FilterKind::Plain(ok), "{ok}");
        }
        for (filter, group, inner) in [
            ("$share/g/x", "g", "x"),
            ("$share/g/#", "g", "#"),
            ("$share/group-1/sport/+/x", "group-1", "sport/+/x"),
            ("$share/g//", "g", "/"),
            ("$share/é/$SYS/#", "é", "$SYS/#"),
        ] {
            let kind = validate_filter(filter).unwrap();
            assert_eq!(kind, FilterKind::Shared { group, filter: inner }, "{filter}");
            assert_eq!(kind.filter(), inner);
        }
        let long = "a".repeat(65_536);
        for bad in [
            "",
            "a/#/b",
            "a#",
            "+a",
            "a+",
            "sport/tennis#",
            "##",
            "#/",
            "++",
            "$share//x",
            "$share/g",
            "$share/g/",
            "$share/g+/x",
            "$share/#/x",
            "$share/g/a#",
            "$share/g/#/a",
            "a\0b",
            &long,
        ] {
            assert_eq!(kind(&validate_filter(bad).unwrap_err()), "filter", "{bad:?}");
        }
    }

    #[test]
    fn matching() {
        for (filter, topic, expected) in [
            ("#", "a", true),
            ("#", "a/b/c", true),
            ("#", "$SYS/x", false),
            ("+/x", "$SYS/x", false),
            ("+", "$SYS", false),
            ("$SYS/#", "$SYS/x", true),
            ("$SYS/#", "$SYS", true),
            ("$SYS/+", "$SYS/x", true),
            ("+/x", "a/x", true),
            ("+/x", "/x", true),
            ("+/x", "a/y", false),
            ("+", "a/b", false),
            ("+", "a", true),
            ("a/+", "a", false),
            ("a/+", "a/", true),
            ("a/#", "a", true),
            ("a/#", "ab", false),
            ("a/b", "a/b", true),
            ("a/b", "a/c", false),
            ("a/b", "a/b/c", false),
            ("a/b/c", "a/b", false),
            ("+/+", "a/b", true),
            ("a/+/c", "a/b/c", true),
            ("sport/tennis/+", "sport/tennis/player1", true),
            ("sport/tennis/+", "sport/tennis/player1/ranking", false),
            ("sport/#", "sport", true),
            ("é/+", "é/x", true),
            ("A", "a", false),
            ("$share/g/a/+", "a/b", true),
            ("$share/g/#", "$SYS/x", false),
            ("$share/g/#", "x", true),
        ] {
            assert_eq!(topic_matches(filter, topic), expected, "{filter} vs {topic}");
        }
    }

    #[test]
    fn reason_codes_for_errors() {
        let cases = [
            (
                CodecError::Malformed(String::new()),
                DisconnectReasonCode::MalformedPacket,
                ConnectReturnCode::MalformedPacket,
            ),
            (
                CodecError::ProtocolError(String::new()),
                DisconnectReasonCode::ProtocolError,
                ConnectReturnCode::ProtocolError,
            ),
            (
                CodecError::PacketTooLarge { size: 2, max: 1 },
                DisconnectReasonCode::PacketTooLarge,
                ConnectReturnCode::PacketTooLarge,
            ),
            (
                CodecError::UnsupportedProtocol { level: 6 },
                DisconnectReasonCode::ProtocolError,
                ConnectReturnCode::UnsupportedProtocolVersion,
            ),
            (
                CodecError::NotConnect { packet_type: 3 },
                DisconnectReasonCode::ProtocolError,
                ConnectReturnCode::ProtocolError,
            ),
            (
                CodecError::InvalidTopicName(String::new()),
                DisconnectReasonCode::TopicNameInvalid,
                ConnectReturnCode::TopicNameInvalid,
            ),
            (
                CodecError::InvalidTopicFilter(String::new()),
                DisconnectReasonCode::TopicFilterInvalid,
                ConnectReturnCode::UnspecifiedError,
            ),
            (
                CodecError::CannotEncode(String::new()),
                DisconnectReasonCode::ImplementationSpecificError,
                ConnectReturnCode::ImplementationSpecificError,
            ),
        ];
        for (err, disconnect, connack) in cases {
            assert_eq!(err.v5_reason(), disconnect, "{err}");
            assert_eq!(err.connack_code(), connack, "{err}");
        }
        assert_eq!(Version::from_level(4), Some(Version::V311));
        assert_eq!(Version::from_level(5), Some(Version::V5));
        assert_eq!(Version::from_level(3), None);
    }

    // ----- property tests --------------------------------------------------

    fn text() -> impl Strategy<Value = String> {
        "[a-zA-Z0-9 é_/-]{0,8}"
    }

    fn topic_text() -> impl Strategy<Value = String> {
        "[a-z0-9é/]{1,8}"
    }

    fn bin(max: usize) -> impl Strategy<Value = Bytes> {
        vec(any::<u8>(), 0..max).prop_map(Bytes::from)
    }

    fn user_props() -> impl Strategy<Value = Vec<(String, String)>> {
        vec((text(), text()), 0..3)
    }

    fn qos() -> impl Strategy<Value = QoS> {
        select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
    }

    fn pkid() -> impl Strategy<Value = u16> {
        1..=u16::MAX
    }

    fn flag() -> impl Strategy<Value = Option<u8>> {
        option::of(0..=1u8)
    }

    /// A reason string and user properties, as acknowledgements carry.
    type ReasonProps = Option<(Option<String>, Vec<(String, String)>)>;

    fn reason_props() -> impl Strategy<Value = ReasonProps> {
        option::of((option::of(text()), user_props()))
    }

    fn connect_v5() -> impl Strategy<Value = v5::Packet> {
        let props = option::of(
            (
                option::of(any::<u32>()),
                option::of(1..=u16::MAX),
                option::of(1..=u32::MAX),
                option::of(any::<u16>()),
                flag(),
                flag(),
                user_props(),
                option::of((text(), option::of(bin(8)))),
            )
                .prop_map(|(se, rm, mps, tam, rri, rpi, user_properties, auth)| v5::ConnectProperties {
                    session_expiry_interval: se,
                    receive_maximum: rm,
                    max_packet_size: mps,
                    topic_alias_max: tam,
                    request_response_info: rri,
                    request_problem_info: rpi,
                    user_properties,
                    authentication_method: auth.as_ref().map(|a| a.0.clone()),
                    authentication_data: auth.and_then(|a| a.1),
                }),
        );
        let will_props = option::of(
            (
                option::of(any::<u32>()),
                flag(),
                option::of(any::<u32>()),
                option::of(text()),
                option::of(topic_text()),
                option::of(bin(8)),
                user_props(),
            )
                .prop_map(|(d, pfi, exp, ct, rt, cd, user_properties)| v5::LastWillProperties {
                    delay_interval: d,
                    payload_format_indicator: pfi,
                    message_expiry_interval: exp,
                    content_type: ct,
                    response_topic: rt,
                    correlation_data: cd,
                    user_properties,
                }),
        );
        let will = option::of((topic_text(), bin(16), qos(), any::<bool>(), will_props).prop_map(
            |(topic, message, qos, retain, properties)| v5::LastWill {
                topic: Bytes::from(topic.into_bytes()),
                message,
                qos,
                retain,
                properties,
            },
        ));
        let login = option::of((text(), text()).prop_map(|(u, p)| v5::Login::new(u, p)));
        (any::<u16>(), text(), any::<bool>(), props, will, login).prop_map(
            |(keep_alive, client_id, clean_start, properties, will, login)| {
                P::Connect(v5::Connect { keep_alive, client_id, clean_start, properties }, will, login)
            },
        )
    }

    fn publish(topic: BoxedStrategy<Vec<u8>>, sub_ids: bool) -> impl Strategy<Value = v5::Packet> {
        let ids = if sub_ids { vec(1..=MAX_SUBSCRIPTION_ID, 0..3).boxed() } else { Just(vec![]).boxed() };
        let props = option::of(
            (
                flag(),
                option::of(any::<u32>()),
                option::of(1..=u16::MAX),
                option::of(topic_text()),
                option::of(bin(8)),
                user_props(),
                ids,
                option::of(text()),
            )
                .prop_map(|(pfi, exp, alias, rt, cd, user_properties, subscription_identifiers, ct)| {
                    v5::PublishProperties {
                        payload_format_indicator: pfi,
                        message_expiry_interval: exp,
                        topic_alias: alias,
                        response_topic: rt,
                        correlation_data: cd,
                        user_properties,
                        subscription_identifiers,
                        content_type: ct,
                    }
                }),
        );
        (qos(), any::<bool>(), any::<bool>(), topic, pkid(), bin(32), props).prop_map(
            |(qos, dup, retain, topic, pkid, payload, properties)| {
                let qos0 = qos == QoS::AtMostOnce;
                P::Publish(v5::Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic: Bytes::from(topic),
                    pkid: if qos0 { 0 } else { pkid },
                    payload,
                    properties,
                })
            },
        )
    }

    fn any_topic() -> BoxedStrategy<Vec<u8>> {
        vec(any::<u8>(), 0..12).boxed()
    }

    fn utf8_topic() -> BoxedStrategy<Vec<u8>> {
        topic_text().prop_map(String::into_bytes).boxed()
    }

    fn acks() -> impl Strategy<Value = v5::Packet> {
        use v5::{PubAckReason as A, PubCompReason as C, PubRecReason as R, PubRelReason as L};
        let ack_reasons = vec![
            A::Success,
            A::NoMatchingSubscribers,
            A::UnspecifiedError,
            A::ImplementationSpecificError,
            A::NotAuthorized,
            A::TopicNameInvalid,
            A::PacketIdentifierInUse,
            A::QuotaExceeded,
            A::PayloadFormatInvalid,
        ];
        let rec_reasons = vec![
            R::Success,
            R::NoMatchingSubscribers,
            R::UnspecifiedError,
            R::ImplementationSpecificError,
            R::NotAuthorized,
            R::TopicNameInvalid,
            R::PacketIdentifierInUse,
            R::QuotaExceeded,
            R::PayloadFormatInvalid,
        ];
        prop_oneof![
            (pkid(), select(ack_reasons), reason_props()).prop_map(|(pkid, reason, p)| P::PubAck(v5::PubAck {
                pkid,
                reason,
                properties: p
                    .map(|(reason_string, user_properties)| v5::PubAckProperties { reason_string, user_properties }),
            })),
            (pkid(), select(rec_reasons), reason_props()).prop_map(|(pkid, reason, p)| P::PubRec(v5::PubRec {
                pkid,
                reason,
                properties: p
                    .map(|(reason_string, user_properties)| v5::PubRecProperties { reason_string, user_properties }),
            })),
            (pkid(), select(vec![L::Success, L::PacketIdentifierNotFound]), reason_props()).prop_map(
                |(pkid, reason, p)| {
                    P::PubRel(v5::PubRel {
                        pkid,
                        reason,
                        properties: p.map(|(reason_string, user_properties)| v5::PubRelProperties {
                            reason_string,
                            user_properties,
                        }),
                    })
                }
            ),
            (pkid(), select(vec![C::Success, C::PacketIdentifierNotFound]), reason_props()).prop_map(
                |(pkid, reason, p)| {
                    P::PubComp(v5::PubComp {
                        pkid,
                        reason,
                        properties: p.map(|(reason_string, user_properties)| v5::PubCompProperties {
                            reason_string,
                            user_properties,
                        }),
                    })
                }
            ),
        ]
    }

    fn filter() -> impl Strategy<Value = v5::Filter> {
        use v5::RetainForwardRule as R;
        (
            "[a-z0-9+#/]{0,8}",
            qos(),
            any::<bool>(),
            any::<bool>(),
            select(vec![R::OnEverySubscribe, R::OnNewSubscribe, R::Never]),
        )
            .prop_map(|(path, qos, nolocal, preserve_retain, retain_forward_rule)| v5::Filter {
                path,
                qos,
                nolocal,
                preserve_retain,
                retain_forward_rule,
            })
    }

    fn subscribe() -> impl Strategy<Value = v5::Packet> {
        let props = option::of((option::of(1..=MAX_SUBSCRIPTION_ID), user_props()))
            .prop_map(|p| p.map(|(id, user_properties)| v5::SubscribeProperties { id, user_properties }));
        (pkid(), vec(filter(), 1..4), props)
            .prop_map(|(pkid, filters, properties)| P::Subscribe(v5::Subscribe { pkid, filters, properties }))
    }

    fn unsubscribe() -> impl Strategy<Value = v5::Packet> {
        let props = option::of(user_props())
            .prop_map(|p| p.map(|user_properties| v5::UnsubscribeProperties { user_properties }));
        (pkid(), vec(text(), 1..4), props)
            .prop_map(|(pkid, filters, properties)| P::Unsubscribe(v5::Unsubscribe { pkid, filters, properties }))
    }

    fn disconnect() -> impl Strategy<Value = v5::Packet> {
        let props = option::of((option::of(any::<u32>()), option::of(text()), user_props(), option::of(text())))
            .prop_map(|p| {
                p.map(|(session_expiry_interval, reason_string, user_properties, server_reference)| {
                    v5::DisconnectProperties {
                        session_expiry_interval,
                        reason_string,
                        user_properties,
                        server_reference,
                    }
                })
            });
        (select(ALL_DISCONNECT_CODES.to_vec()), props)
            .prop_map(|(reason_code, properties)| P::Disconnect(v5::Disconnect { reason_code, properties }))
    }

    fn connack() -> impl Strategy<Value = v5::Packet> {
        let props = option::of(
            (
                (
                    option::of(any::<u32>()),
                    option::of(1..=u16::MAX),
                    flag(),
                    flag(),
                    option::of(1..=u32::MAX),
                    option::of(text()),
                    option::of(any::<u16>()),
                    option::of(text()),
                ),
                (
                    user_props(),
                    flag(),
                    flag(),
                    flag(),
                    option::of(any::<u16>()),
                    option::of(text()),
                    option::of(text()),
                    option::of(text()),
                    option::of(bin(8)),
                ),
            )
                .prop_map(
                    |((se, rm, mq, ra, mps, id, tam, rs), (up, wsa, sia, ssa, ska, ri, sr, am, ad))| {
                        v5::ConnAckProperties {
                            session_expiry_interval: se,
                            receive_max: rm,
                            max_qos: mq,
                            retain_available: ra,
                            max_packet_size: mps,
                            assigned_client_identifier: id,
                            topic_alias_max: tam,
                            reason_string: rs,
                            user_properties: up,
                            wildcard_subscription_available: wsa,
                            subscription_identifiers_available: sia,
                            shared_subscription_available: ssa,
                            server_keep_alive: ska,
                            response_information: ri,
                            server_reference: sr,
                            authentication_method: am,
                            authentication_data: ad,
                        }
                    },
                ),
        );
        (any::<bool>(), select(ALL_CONNECT_CODES.to_vec()), props).prop_map(|(session_present, code, properties)| {
            P::ConnAck(v5::ConnAck { session_present, code, properties })
        })
    }

    fn suback() -> impl Strategy<Value = v5::Packet> {
        (pkid(), vec(select(all_suback_codes()), 1..5), reason_props()).prop_map(|(pkid, return_codes, p)| {
            P::SubAck(v5::SubAck {
                pkid,
                return_codes,
                properties: p
                    .map(|(reason_string, user_properties)| v5::SubAckProperties { reason_string, user_properties }),
            })
        })
    }

    fn unsuback() -> impl Strategy<Value = v5::Packet> {
        use v5::UnsubAckReason as U;
        let reasons = vec![
            U::Success,
            U::NoSubscriptionExisted,
            U::UnspecifiedError,
            U::ImplementationSpecificError,
            U::NotAuthorized,
            U::TopicFilterInvalid,
            U::PacketIdentifierInUse,
        ];
        (pkid(), vec(select(reasons), 1..4), reason_props()).prop_map(|(pkid, reasons, p)| {
            P::UnsubAck(v5::UnsubAck {
                pkid,
                reasons,
                properties: p
                    .map(|(reason_string, user_properties)| v5::UnsubAckProperties { reason_string, user_properties }),
            })
        })
    }

    fn client_v5() -> BoxedStrategy<v5::Packet> {
        prop_oneof![
            connect_v5(),
            publish(any_topic(), false),
            acks(),
            subscribe(),
            unsubscribe(),
            Just(P::PingReq(v5::PingReq)),
            disconnect(),
        ]
        .boxed()
    }

    fn server_v5(topic: fn() -> BoxedStrategy<Vec<u8>>) -> BoxedStrategy<v5::Packet> {
        prop_oneof![
            connack(),
            publish(topic(), true),
            acks(),
            suback(),
            unsuback(),
            Just(P::PingResp(v5::PingResp)),
            disconnect(),
        ]
        .boxed()
    }

    /// Client packets 3.1.1 can express, in the model.
    fn client_v4() -> BoxedStrategy<v5::Packet> {
        let will =
            option::of((topic_text(), bin(16), qos(), any::<bool>()).prop_map(|(topic, message, qos, retain)| {
                v5::LastWill { topic: Bytes::from(topic.into_bytes()), message, qos, retain, properties: None }
            }));
        let login = option::of(("[a-z]{1,6}", text()).prop_map(|(u, p)| v5::Login::new(u, p)));
        let connect = (any::<u16>(), text(), any::<bool>(), will, login).prop_map(
            |(keep_alive, client_id, clean_start, will, login)| {
                P::Connect(v5::Connect { keep_alive, client_id, clean_start, properties: None }, will, login)
            },
        );
        let publish = (qos(), any::<bool>(), any::<bool>(), topic_text(), pkid(), bin(32)).prop_map(
            |(qos, dup, retain, topic, pkid, payload)| {
                let qos0 = qos == QoS::AtMostOnce;
                P::Publish(v5::Publish {
                    dup: dup && !qos0,
                    qos,
                    retain,
                    topic: Bytes::from(topic.into_bytes()),
                    pkid: if qos0 { 0 } else { pkid },
                    payload,
                    properties: None,
                })
            },
        );
        let ack = (0..4u8, pkid()).prop_map(|(k, pkid)| match k {
            0 => P::PubAck(v5::PubAck::new(pkid, None)),
            1 => P::PubRec(v5::PubRec::new(pkid, None)),
            2 => P::PubRel(v5::PubRel::new(pkid, None)),
            _ => P::PubComp(v5::PubComp::new(pkid, None)),
        });
        let subscribe = (pkid(), vec(("[a-z0-9+#/]{0,8}", qos()), 1..4)).prop_map(|(pkid, filters)| {
            let filters = filters.into_iter().map(|(path, qos)| v5::Filter::new(path, qos)).collect();
            P::Subscribe(v5::Subscribe { pkid, filters, properties: None })
        });
        let unsubscribe = (pkid(), vec(text(), 1..4))
            .prop_map(|(pkid, filters)| P::Unsubscribe(v5::Unsubscribe { pkid, filters, properties: None }));
        prop_oneof![
            connect,
            publish,
            ack,
            subscribe,
            unsubscribe,
            Just(P::PingReq(v5::PingReq)),
            Just(P::Disconnect(v5::Disconnect::new(DisconnectReasonCode::NormalDisconnection))),
        ]
        .boxed()
    }

    /// Packets with invalid values mixed in: encoders must refuse, never panic.
    fn wild_packet() -> BoxedStrategy<v5::Packet> {
        let wild_text = "[a\\x00é+#/]{0,6}";
        let publish =
            (qos(), any::<bool>(), any::<u16>(), vec(any::<u8>(), 0..8), vec(any::<usize>(), 0..3), wild_text)
                .prop_map(|(qos, dup, pkid, topic, ids, rt)| {
                    P::Publish(v5::Publish {
                        dup,
                        qos,
                        retain: false,
                        topic: Bytes::from(topic),
                        pkid,
                        payload: Bytes::new(),
                        properties: Some(v5::PublishProperties {
                            subscription_identifiers: ids,
                            response_topic: Some(rt),
                            topic_alias: Some(0),
                            payload_format_indicator: Some(7),
                            ..Default::default()
                        }),
                    })
                });
        let subscribe =
            (any::<u16>(), vec(filter(), 0..3), option::of(any::<usize>())).prop_map(|(pkid, filters, id)| {
                P::Subscribe(v5::Subscribe {
                    pkid,
                    filters,
                    properties: Some(v5::SubscribeProperties { id, user_properties: vec![] }),
                })
            });
        let suback = (any::<u16>(), vec(select(all_suback_codes()), 0..3))
            .prop_map(|(pkid, return_codes)| P::SubAck(v5::SubAck { pkid, return_codes, properties: None }));
        let unsuback = (any::<u16>(), 0..3usize).prop_map(|(pkid, n)| {
            P::UnsubAck(v5::UnsubAck { pkid, reasons: vec![v5::UnsubAckReason::Success; n], properties: None })
        });
        let unsubscribe = (any::<u16>(), vec(wild_text, 0..3))
            .prop_map(|(pkid, filters)| P::Unsubscribe(v5::Unsubscribe { pkid, filters, properties: None }));
        let acks = (any::<u16>(), 0..4u8).prop_map(|(pkid, k)| match k {
            0 => P::PubAck(v5::PubAck::new(pkid, None)),
            1 => P::PubRec(v5::PubRec::new(pkid, None)),
            2 => P::PubRel(v5::PubRel::new(pkid, None)),
            _ => P::PubComp(v5::PubComp::new(pkid, None)),
        });
        let connect = (wild_text, vec(any::<u8>(), 0..6), wild_text).prop_map(|(id, will_topic, user)| {
            P::Connect(
                v5::Connect {
                    keep_alive: 0,
                    client_id: id,
                    clean_start: false,
                    properties: Some(v5::ConnectProperties {
                        receive_maximum: Some(0),
                        ..v5::ConnectProperties::new()
                    }),
                },
                Some(v5::LastWill {
                    topic: Bytes::from(will_topic),
                    message: Bytes::new(),
                    qos: QoS::ExactlyOnce,
                    retain: true,
                    properties: None,
                }),
                Some(v5::Login::new(user, "")),
            )
        });
        prop_oneof![
            client_v5(),
            server_v5(any_topic),
            publish,
            subscribe,
            suback,
            unsuback,
            unsubscribe,
            acks,
            connect,
            Just(auth_packet()),
        ]
        .boxed()
    }

    /// Every decoder on the same bytes; decoded packets go through every encoder.
    fn decode_everything(bytes: &[u8], max: u32) {
        let _ = peek_protocol_level(bytes);
        for version in [Version::V311, Version::V5] {
            for origin in [Origin::Client, Origin::Any] {
                let mut buf = BytesMut::from(bytes);
                for _ in 0..16 {
                    let before = buf.len();
                    match decode_frame(version, origin, &mut buf, max) {
                        Ok(Some(p)) => {
                            assert!(buf.len() < before, "progress");
                            encode_everything(&p);
                        }
                        Ok(None) => {
                            assert_eq!(buf.len(), before, "Ok(None) consumes nothing");
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
        }
    }

    fn encode_everything(p: &v5::Packet) {
        let mut out = BytesMut::from(&b"pre"[..]);
        for codec in [
            ClientCodec { version: Version::V311, max_incoming: MAX, max_outgoing: None },
            ClientCodec { version: Version::V5, max_incoming: MAX, max_outgoing: None },
            ClientCodec { version: Version::V5, max_incoming: MAX, max_outgoing: Some(16) },
        ] {
            let before = out.len();
            match codec.encode(p, &mut out) {
                Ok(n) => {
                    assert_eq!(out.len(), before + n);
                    if n > 0 {
                        let mut buf = BytesMut::from(&out[before..]);
                        let _ = decode_frame(codec.version, Origin::Any, &mut buf, MAX);
                    }
                }
                Err(_) => assert_eq!(out.len(), before),
            }
        }
        let before = out.len();
        match encode_v5(p, &mut out) {
            Ok(n) => {
                assert_eq!(out.len(), before + n);
                let mut buf = BytesMut::from(&out[before..]);
                let _ = decode_frame(Version::V5, Origin::Any, &mut buf, MAX);
            }
            Err(_) => assert_eq!(out.len(), before),
        }
        assert_eq!(&out[..3], b"pre");
    }

    fn mutate(mut bytes: Vec<u8>, edits: &[(Index, u8, u8)], cut: Option<Index>) -> Vec<u8> {
        for (at, value, how) in edits {
            if bytes.is_empty() {
                break;
            }
            let i = at.index(bytes.len());
            match how % 4 {
                0 | 1 => bytes[i] = *value,
                2 => bytes.insert(i, *value),
                _ => {
                    bytes.remove(i);
                }
            }
        }
        if let Some(cut) = cut {
            let n = cut.index(bytes.len() + 1);
            bytes.truncate(n);
        }
        bytes
    }

    fn fuzz_config() -> ProptestConfig {
        let mut config = ProptestConfig::default();
        if std::env::var_os("PROPTEST_CASES").is_none() {
            config.cases = 2000;
        }
        config
    }

    proptest! {
        #[test]
        fn prop_v5_client_round_trip(p in client_v5()) {
            let bytes = enc_v5(&p);
            prop_assert_eq!(from_client(Version::V5, &bytes).unwrap(), canon(p));
        }

        #[test]
        fn prop_v5_server_round_trip(p in server_v5(any_topic)) {
            let bytes = enc_client(Version::V5, &p).unwrap();
            prop_assert_eq!(from_upstream(&bytes).unwrap(), canon(p.clone()));
            prop_assert_eq!(bytes, enc_v5(&p));
        }

        #[test]
        fn prop_v4_client_round_trip(p in client_v4()) {
            let bytes = enc_v4_any(&p);
            prop_assert_eq!(from_client(Version::V311, &bytes).unwrap(), p);
        }

        #[test]
        fn prop_v4_server_round_trip(p in server_v5(utf8_topic)) {
            let bytes = enc_client(Version::V311, &p).unwrap();
            match expect_v4(&p) {
                Some(expected) => prop_assert_eq!(decode_with(Version::V311, Origin::Any, &bytes).unwrap(), expected),
                None => prop_assert!(bytes.is_empty()),
            }
        }

        #[test]
        fn prop_streams_decode_the_same_in_any_chunks(
            packets in vec(client_v5(), 1..5),
            chunk in 1..9usize,
        ) {
            let stream: Vec<u8> = packets.iter().flat_map(enc_v5).collect();
            let codec = ClientCodec::new(Version::V5, MAX);
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for piece in stream.chunks(chunk) {
                buf.extend_from_slice(piece);
                while let Some(p) = codec.decode(&mut buf).unwrap() {
                    out.push(p);
                }
            }
            prop_assert!(buf.is_empty());
            prop_assert_eq!(out, packets.into_iter().map(canon).collect::<Vec<_>>());
        }
    }

    proptest! {
        #![proptest_config(fuzz_config())]

        #[test]
        fn prop_arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..200)) {
            decode_everything(&bytes, MAX);
            decode_everything(&bytes, 8);
        }

        #[test]
        fn prop_arbitrary_frames_never_panic(
            first in any::<u8>(),
            body in vec(any::<u8>(), 0..64),
            extra in vec(any::<u8>(), 0..4),
        ) {
            let mut bytes = frame(first, &body);
            bytes.extend(extra);
            decode_everything(&bytes, MAX);
            // And as a CONNECT-shaped body.
            let connect = frame(0x10, &cat(&[&s("MQTT"), &[4 + (first & 1)], &body]));
            decode_everything(&connect, MAX);
        }

        #[test]
        fn prop_mutated_packets_never_panic(
            p5 in client_v5(),
            p4 in client_v4(),
            ps in server_v5(any_topic),
            edits in vec((any::<Index>(), any::<u8>(), any::<u8>()), 1..4),
            cut in option::of(any::<Index>()),
        ) {
            for bytes in [enc_v5(&p5), enc_v4_any(&p4), enc_v5(&ps)] {
                decode_everything(&mutate(bytes, &edits, cut), MAX);
            }
        }

        #[test]
        fn prop_encoders_never_panic(p in wild_packet()) {
            encode_everything(&p);
        }
    }
}
