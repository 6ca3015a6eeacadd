//! Framing: fixed headers, frames, and the error mapping of rumqttc's readers.

use super::*;

/// Who sent the bytes being decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Origin {
    /// A client: server-only packets and client-forbidden fields are refused.
    Client,
    /// Anyone (upstream broker, tests).
    Any,
}

/// A parsed fixed header.
#[derive(Clone, Copy, Debug)]
pub(super) struct Header {
    pub(super) byte1: u8,
    /// Length of the fixed header (2 to 5 bytes).
    pub(super) len: usize,
    pub(super) remaining: usize,
}

impl Header {
    pub(super) fn size(&self) -> usize {
        self.len + self.remaining
    }

    pub(super) fn kind(&self) -> u8 {
        self.byte1 >> 4
    }

    /// Whether the Remaining Length uses the fewest bytes possible (MQTT 5
    /// §1.5.5 requires it; 3.1.1 does not say, and is not held to it).
    pub(super) fn minimal(&self) -> bool {
        self.len == 2 || self.remaining >= 1 << (7 * (self.len - 2))
    }
}

/// Reads the fixed header; `Ok(None)` if it is not complete yet.
pub(super) fn read_header(buf: &[u8]) -> Result<Option<Header>, CodecError> {
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

/// Whether `buf` starts with a whole PUBLISH packet (any version: the
/// fixed header's layout is the same): what a connection decides next
/// without reading from its socket.
pub fn publish_buffered(buf: &[u8]) -> bool {
    matches!(read_header(buf), Ok(Some(header)) if header.kind() == 3 && header.size() <= buf.len())
}

pub(super) fn decode_frame(
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
pub(super) fn read_v5(header: &Header, frame: &mut BytesMut, rest: &mut BytesMut) -> Result<v5::Packet, CodecError> {
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

pub(super) fn from_v5_error(e: m5::Error) -> CodecError {
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

pub(super) fn from_v4_error(e: m4::Error) -> CodecError {
    match e {
        m4::Error::InvalidProtocolLevel(level) => CodecError::UnsupportedProtocol { level },
        m4::Error::PacketIdZero => protocol("packet identifier 0"),
        m4::Error::EmptySubscription => protocol("SUBSCRIBE without topic filters"),
        m4::Error::InsufficientBytes(_) => malformed("the packet ends inside a field"),
        m4::Error::TopicNotUtf8 => malformed("a string is not valid UTF-8"),
        e => malformed(e),
    }
}

pub(super) fn kind_name(kind: u8) -> &'static str {
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
pub(super) fn check_fixed_header(version: Version, origin: Origin, byte1: u8) -> Result<(), CodecError> {
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
