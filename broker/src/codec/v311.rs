//! MQTT 3.1.1 <-> the MQTT 5 model.

use super::*;

pub(super) fn qos_from_v4(qos: m4::QoS) -> QoS {
    match qos {
        m4::QoS::AtMostOnce => QoS::AtMostOnce,
        m4::QoS::AtLeastOnce => QoS::AtLeastOnce,
        m4::QoS::ExactlyOnce => QoS::ExactlyOnce,
    }
}

pub(super) fn qos_to_v4(qos: QoS) -> m4::QoS {
    match qos {
        QoS::AtMostOnce => m4::QoS::AtMostOnce,
        QoS::AtLeastOnce => m4::QoS::AtLeastOnce,
        QoS::ExactlyOnce => m4::QoS::ExactlyOnce,
    }
}

/// A 3.1.1 packet in the MQTT 5 model.
pub(super) fn from_v4(packet: v4::Packet) -> v5::Packet {
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
pub(super) fn v4_connack_code(code: ConnectReturnCode) -> v4::ConnectReturnCode {
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
pub(super) fn v5_connack_code(code: ConnectReturnCode) -> ConnectReturnCode {
    match code {
        ConnectReturnCode::RefusedProtocolVersion => ConnectReturnCode::UnsupportedProtocolVersion,
        ConnectReturnCode::BadClientId => ConnectReturnCode::ClientIdentifierNotValid,
        ConnectReturnCode::ServiceUnavailable => ConnectReturnCode::ServerUnavailable,
        code => code,
    }
}

pub(super) fn utf8_topic(topic: &Bytes, what: &str) -> Result<String, CodecError> {
    String::from_utf8(topic.to_vec()).map_err(|_| cannot(format_args!("{what} is not UTF-8 (3.1.1 needs a string)")))
}

/// The 3.1.1 form of a model packet; `None`: nothing to send (DISCONNECT).
/// Handles both directions (the client side uses only server packets).
pub(super) fn to_v4(packet: &v5::Packet) -> Result<Option<v4::Packet>, CodecError> {
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
