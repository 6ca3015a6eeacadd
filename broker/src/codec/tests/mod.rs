//! The codec's tests: helpers here, the cases by theme in the files below.

mod decode;
mod encode;
mod props;
mod samples;
mod strategies;

use super::*;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::{Index, select};
use v5::Packet as P;

const MAX: u32 = 1 << 20;

// ----- helpers -------------------------------------------------------

pub(super) fn varint(mut n: usize) -> Vec<u8> {
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

pub(super) fn frame(byte1: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![byte1];
    out.extend(varint(body.len()));
    out.extend_from_slice(body);
    out
}

/// A length-prefixed string or binary.
pub(super) fn s(x: impl AsRef<[u8]>) -> Vec<u8> {
    let x = x.as_ref();
    let mut out = (x.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(x);
    out
}

pub(super) fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

pub(super) fn kind(e: &CodecError) -> &'static str {
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
pub(super) fn decode_with(version: Version, origin: Origin, bytes: &[u8]) -> Result<v5::Packet, CodecError> {
    let mut buf = BytesMut::from(bytes);
    match decode_frame(version, origin, &mut buf, MAX)? {
        Some(p) => {
            assert!(buf.is_empty(), "{} bytes left after {p:?}", buf.len());
            Ok(p)
        }
        None => panic!("incomplete: {bytes:02x?}"),
    }
}

pub(super) fn from_client(version: Version, bytes: &[u8]) -> Result<v5::Packet, CodecError> {
    decode_with(version, Origin::Client, bytes)
}

pub(super) fn from_upstream(bytes: &[u8]) -> Result<v5::Packet, CodecError> {
    decode_with(Version::V5, Origin::Any, bytes)
}

pub(super) fn client_err(version: Version, bytes: &[u8]) -> &'static str {
    match from_client(version, bytes) {
        Ok(p) => panic!("decoded {p:?} from {bytes:02x?}"),
        Err(e) => kind(&e),
    }
}

pub(super) fn enc_v5(p: &v5::Packet) -> Vec<u8> {
    let mut out = BytesMut::new();
    let n = encode_v5(p, &mut out).unwrap();
    assert_eq!(n, out.len());
    out.to_vec()
}

pub(super) fn enc_client(version: Version, p: &v5::Packet) -> Result<Vec<u8>, CodecError> {
    let mut out = BytesMut::new();
    let n = ClientCodec::new(version, MAX).encode(p, &mut out)?;
    assert_eq!(n, out.len());
    Ok(out.to_vec())
}

/// Any packet in its 3.1.1 form (client packets too, for the tests).
pub(super) fn enc_v4_any(p: &v5::Packet) -> Vec<u8> {
    if let P::Disconnect(_) = p {
        return vec![0xE0, 0x00]; // a client's DISCONNECT
    }
    let mut out = BytesMut::new();
    write_v4(p, &mut out, None).unwrap();
    out.to_vec()
}

pub(super) fn users(n: usize) -> Vec<(String, String)> {
    (0..n).map(|i| (format!("k{i}"), format!("v{i} é"))).collect()
}

pub(super) fn auth_packet() -> v5::Packet {
    let header = v5::FixedHeader::new(0xF0, 1, 2);
    P::Auth(v5::Auth::read(header, Bytes::from_static(&[0xF0, 0x02, 0x00, 0x00])).unwrap())
}

/// The decoder's view of a packet: empty property sets become `None`, and
/// what the encoder normalises is normalised.
pub(super) fn canon(p: v5::Packet) -> v5::Packet {
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

pub(super) fn empty_connack_properties() -> v5::ConnAckProperties {
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
pub(super) fn expect_v4(p: &v5::Packet) -> Option<v5::Packet> {
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

pub(super) const ALL_CONNECT_CODES: [ConnectReturnCode; 25] = [
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

pub(super) const ALL_DISCONNECT_CODES: [DisconnectReasonCode; 29] = [
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

pub(super) fn all_suback_codes() -> Vec<v5::SubscribeReasonCode> {
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
