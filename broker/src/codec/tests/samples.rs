//! Sample packets of every kind, each version.

use super::*;

// ----- sample packets ------------------------------------------------

pub(super) fn sample_connect_v5() -> v5::Packet {
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

pub(super) fn sample_publish(qos: QoS, pkid: u16, properties: bool) -> v5::Publish {
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

pub(super) fn sample_client_v5() -> Vec<v5::Packet> {
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

pub(super) fn sample_server_v5() -> Vec<v5::Packet> {
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
        P::ConnAck(v5::ConnAck { session_present: true, code: ConnectReturnCode::Success, properties: Some(props) }),
        P::ConnAck(v5::ConnAck { session_present: false, code: ConnectReturnCode::NotAuthorized, properties: None }),
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
            return_codes: all_suback_codes().into_iter().filter(|c| *c != v5::SubscribeReasonCode::Failure).collect(),
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

pub(super) fn sample_client_v4() -> Vec<v5::Packet> {
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
            filters: vec![v5::Filter::new("homeassistant/#", QoS::AtLeastOnce), v5::Filter::new("+", QoS::ExactlyOnce)],
            properties: None,
        }),
        P::Unsubscribe(v5::Unsubscribe { pkid: 6, filters: vec!["homeassistant/#".into()], properties: None }),
        P::PingReq(v5::PingReq),
        P::Disconnect(v5::Disconnect::new(DisconnectReasonCode::NormalDisconnection)),
    ]
}
