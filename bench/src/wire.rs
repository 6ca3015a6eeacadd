//! MQTT framing: the few packets a load tool sends and receives, encoded
//! and decoded in place (MQTT 3.1.1 and 5).
/// Why a frame could not be read.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("malformed variable byte integer")]
    MalformedVarint,
    #[error("truncated variable byte integer")]
    TruncatedVarint,
    /// A frame shorter than its fields: `packet`, `PUBLISH`, `ack`, …
    #[error("truncated {0}")]
    Truncated(&'static str),
    #[error("PUBLISH with QoS 3")]
    Qos3,
    #[error("unknown MQTT 5 property {0:#04x}")]
    UnknownProperty(u8),
}

type Result<T> = std::result::Result<T, WireError>;

pub const CONNACK: u8 = 2;
pub const PUBLISH: u8 = 3;
pub const PUBACK: u8 = 4;
pub const PUBREC: u8 = 5;
pub const PUBREL: u8 = 6;
pub const PUBCOMP: u8 = 7;
pub const SUBACK: u8 = 9;
pub const DISCONNECT: u8 = 14;

/// The MQTT 5 user property of a sealmq PUBACK naming the record's log index.
const INDEX_PROPERTY: &[u8] = b"sealmq-index";
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
        return Err(WireError::MalformedVarint);
    }
    Ok(None)
}

fn varint_complete(buf: &[u8]) -> Result<(usize, usize)> {
    match varint(buf)? {
        Some(v) => Ok(v),
        None => Err(WireError::TruncatedVarint),
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
        None => Err(WireError::Truncated("packet")),
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
    if qos == 3 {
        return Err(WireError::Qos3);
    }
    let topic_len = usize::from(u16_at(body, 0)?);
    let mut at = 2 + topic_len;
    let topic = body.get(2..at).ok_or(WireError::Truncated("PUBLISH"))?;
    let mut pkid = 0;
    if qos > 0 {
        pkid = u16_at(body, at)?;
        at += 2;
    }
    if v5 {
        let (props, used) = varint_complete(body.get(at..).unwrap_or_default())?;
        at += used + props;
    }
    let payload = body.get(at..).ok_or(WireError::Truncated("PUBLISH"))?;
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
            other => return Err(WireError::UnknownProperty(other)),
        };
        if props.len() < size {
            return Err(WireError::Truncated("property"));
        }
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
            let props = body.get(3 + used..3 + used + len).ok_or(WireError::Truncated("ack"))?;
            if let Some(value) = user_property(props, INDEX_PROPERTY)? {
                ack.index = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
        }
    }
    Ok(ack)
}

/// CONNACK: the return/reason code and (MQTT 5) the server's Receive Maximum.
pub fn connack_in(body: &[u8], v5: bool) -> Result<(u8, u16)> {
    if body.len() < 2 {
        return Err(WireError::Truncated("CONNACK"));
    }
    let mut receive_max = u16::MAX;
    if v5 && body.len() > 2 {
        let (len, used) = varint_complete(&body[2..])?;
        let props = body.get(2 + used..2 + used + len).ok_or(WireError::Truncated("CONNACK"))?;
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
