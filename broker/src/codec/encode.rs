//! Encoding: what rumqttc's writers cannot write is refused before they
//! run, so they never panic or leave a partial packet.

use super::*;

pub(super) fn field(what: &str, len: usize) -> Result<(), CodecError> {
    if len > MAX_FIELD {
        return Err(cannot(format_args!("{what} is {len} bytes, more than 65535")));
    }
    Ok(())
}

pub(super) fn opt_field(what: &str, len: Option<usize>) -> Result<(), CodecError> {
    len.map_or(Ok(()), |len| field(what, len))
}

pub(super) fn user_properties(props: &[(String, String)]) -> Result<(), CodecError> {
    for (key, value) in props {
        field("user property name", key.len())?;
        field("user property value", value.len())?;
    }
    Ok(())
}

pub(super) fn reason_and_users(reason: Option<&String>, users: &[(String, String)]) -> Result<(), CodecError> {
    opt_field("reason string", reason.map(String::len))?;
    user_properties(users)
}

pub(super) fn packet_id(what: &str, pkid: u16) -> Result<(), CodecError> {
    if pkid == 0 {
        return Err(cannot(format_args!("{what} with packet identifier 0")));
    }
    Ok(())
}

pub(super) fn subscription_id(id: usize) -> Result<(), CodecError> {
    if id == 0 || id > MAX_SUBSCRIPTION_ID {
        return Err(cannot(format_args!("subscription identifier {id} (must be 1..=268435455)")));
    }
    Ok(())
}

/// What rumqttc's writers would silently get wrong: fields over 65535 bytes
/// (truncated length prefix), packet id 0, out-of-range subscription ids, empty
/// lists. Also refuses AUTH, whose writer is broken.
pub(super) fn check_encodable(packet: &v5::Packet) -> Result<(), CodecError> {
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

pub(super) fn from_write_error_v5(e: m5::Error, size: usize) -> CodecError {
    match e {
        m5::Error::PayloadTooLong => CodecError::PacketTooLarge { size, max: (MAX_REMAINING_LENGTH + 5) as u32 },
        e => cannot(e),
    }
}

pub(super) fn from_write_error_v4(e: m4::Error, size: usize) -> CodecError {
    match e {
        m4::Error::PayloadTooLong => CodecError::PacketTooLarge { size, max: (MAX_REMAINING_LENGTH + 5) as u32 },
        e => cannot(e),
    }
}

pub(super) fn disconnect_properties_empty(p: &v5::DisconnectProperties) -> bool {
    p.session_expiry_interval.is_none()
        && p.reason_string.is_none()
        && p.user_properties.is_empty()
        && p.server_reference.is_none()
}

/// Appends `packet` (MQTT 5) to `out`; on error `out` is unchanged.
pub(super) fn write_v5(packet: &v5::Packet, out: &mut BytesMut, max: Option<u32>) -> Result<usize, CodecError> {
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
pub(super) fn write_v4(packet: &v5::Packet, out: &mut BytesMut, max: Option<u32>) -> Result<usize, CodecError> {
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

pub(super) fn finish(out: &mut BytesMut, start: usize, max: Option<u32>) -> Result<usize, CodecError> {
    let written = out.len() - start;
    if let Some(max) = max
        && written > max as usize
    {
        out.truncate(start);
        return Err(CodecError::PacketTooLarge { size: written, max });
    }
    Ok(written)
}

/// Makes the PUBLISH just appended at `out[start..]`, encoded with an empty
/// payload, the head of one whose `payload_len`-byte payload is sent right
/// after it: its Remaining Length grows by `payload_len` (the payload is
/// the last field of a PUBLISH in both versions, with no length of its
/// own). A packet over `max`, or over MQTT's largest, is refused, leaving
/// `out` as it was before `start`. Returns the head's length.
pub(super) fn extend_to_payload(
    out: &mut BytesMut,
    start: usize,
    payload_len: usize,
    max: Option<u32>,
) -> Result<usize, CodecError> {
    let Some(header) = read_header(&out[start..])? else {
        return Err(cannot("no PUBLISH head was written"));
    };
    let remaining = header.remaining + payload_len;
    let head_len = fixed_header_len(remaining) + header.remaining;
    let size = head_len + payload_len;
    let limit = max.map_or(MAX_REMAINING_LENGTH + 5, |max| max as usize);
    if remaining > MAX_REMAINING_LENGTH || size > limit {
        out.truncate(start);
        return Err(CodecError::PacketTooLarge { size, max: limit as u32 });
    }
    let body = start + header.len..out.len();
    let new_len = fixed_header_len(remaining);
    out.resize(out.len() + new_len - header.len, 0);
    out.copy_within(body, start + new_len);
    let mut rest = remaining;
    for byte in &mut out[start + 1..start + new_len] {
        *byte = (rest & 0x7F) as u8 | if rest > 0x7F { 0x80 } else { 0 };
        rest >>= 7;
    }
    Ok(head_len)
}

/// The fixed header's length for a Remaining Length (MQTT 5 §1.5.5).
fn fixed_header_len(remaining: usize) -> usize {
    match remaining {
        0..=0x7F => 2,
        0x80..=0x3FFF => 3,
        0x4000..=0x1F_FFFF => 4,
        _ => 5,
    }
}
