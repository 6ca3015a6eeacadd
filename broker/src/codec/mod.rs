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
//! This module uses nothing else from the crate (only bytes, rumqttc and
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

mod check;
mod encode;
mod frame;
#[cfg(test)]
mod tests;
mod topic;
mod v311;

pub use frame::{packet_name, publish_buffered};
pub use topic::{FilterKind, topic_matches, validate_filter, validate_topic_name};
use {check::*, encode::*, frame::*, v311::*};

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

/// Payloads of at least this many bytes are not copied into a client's
/// output buffer: [`ClientCodec::encode_publish_head`] writes the packet
/// up to its payload, and the payload goes out from where it is, in the
/// same vectored write. Below it a copy costs less than the extra slice.
pub const SPLICE_MIN: usize = 16 * 1024;

impl ClientCodec {
    /// [`ClientCodec::encode`] for a PUBLISH, without its payload: the bytes
    /// that precede it on the wire (the Remaining Length counts it), which
    /// the caller must send immediately followed by `publish.payload`. The
    /// same refusals as [`ClientCodec::encode`], the whole packet's size
    /// held to `max_outgoing`. Returns the head's length.
    pub fn encode_publish_head(&self, publish: &v5::Publish, out: &mut BytesMut) -> Result<usize, CodecError> {
        let head = v5::Publish { payload: Bytes::new(), ..publish.clone() };
        let start = out.len();
        self.encode(&v5::Packet::Publish(head), out)?;
        extend_to_payload(out, start, publish.payload.len(), self.max_outgoing)
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
