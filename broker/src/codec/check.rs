//! The validation rumqttc's decoders leave out: packet bodies, CONNECT,
//! properties (MQTT 5 §2.2.2), what a client may send.

use super::*;

/// Reads the fields of a packet body, for checking.
pub(super) struct Reader<'a> {
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
pub(super) fn check_body(version: Version, header: &Header, body: &[u8]) -> Result<(), CodecError> {
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

pub(super) fn check_connect(version: Version, r: &mut Reader<'_>) -> Result<(), CodecError> {
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
pub(super) enum Props {
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
pub(super) fn property_allowed(ctx: Props, id: u8) -> bool {
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

pub(super) fn property_name(id: u8) -> &'static str {
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
pub(super) fn check_properties(r: &mut Reader<'_>, ctx: Props) -> Result<(), CodecError> {
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
pub(super) fn check_from_client(packet: &v5::Packet) -> Result<(), CodecError> {
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
