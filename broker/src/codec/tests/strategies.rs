//! proptest strategies: arbitrary packets of every kind.

use super::*;

// ----- property tests --------------------------------------------------

pub(super) fn text() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 é_/-]{0,8}"
}

pub(super) fn topic_text() -> impl Strategy<Value = String> {
    "[a-z0-9é/]{1,8}"
}

pub(super) fn bin(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..max).prop_map(Bytes::from)
}

pub(super) fn user_props() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((text(), text()), 0..3)
}

pub(super) fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

pub(super) fn pkid() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

pub(super) fn flag() -> impl Strategy<Value = Option<u8>> {
    option::of(0..=1u8)
}

/// A reason string and user properties, as acknowledgements carry.
pub(super) type ReasonProps = Option<(Option<String>, Vec<(String, String)>)>;

pub(super) fn reason_props() -> impl Strategy<Value = ReasonProps> {
    option::of((option::of(text()), user_props()))
}

pub(super) fn connect_v5() -> impl Strategy<Value = v5::Packet> {
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

pub(super) fn publish(topic: BoxedStrategy<Vec<u8>>, sub_ids: bool) -> impl Strategy<Value = v5::Packet> {
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

pub(super) fn any_topic() -> BoxedStrategy<Vec<u8>> {
    vec(any::<u8>(), 0..12).boxed()
}

pub(super) fn valid_utf8_topic() -> BoxedStrategy<Vec<u8>> {
    topic_text().prop_map(String::into_bytes).boxed()
}

pub(super) fn acks() -> impl Strategy<Value = v5::Packet> {
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

pub(super) fn filter() -> impl Strategy<Value = v5::Filter> {
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

pub(super) fn subscribe() -> impl Strategy<Value = v5::Packet> {
    let props = option::of((option::of(1..=MAX_SUBSCRIPTION_ID), user_props()))
        .prop_map(|p| p.map(|(id, user_properties)| v5::SubscribeProperties { id, user_properties }));
    (pkid(), vec(filter(), 1..4), props)
        .prop_map(|(pkid, filters, properties)| P::Subscribe(v5::Subscribe { pkid, filters, properties }))
}

pub(super) fn unsubscribe() -> impl Strategy<Value = v5::Packet> {
    let props =
        option::of(user_props()).prop_map(|p| p.map(|user_properties| v5::UnsubscribeProperties { user_properties }));
    (pkid(), vec(text(), 1..4), props)
        .prop_map(|(pkid, filters, properties)| P::Unsubscribe(v5::Unsubscribe { pkid, filters, properties }))
}

pub(super) fn disconnect() -> impl Strategy<Value = v5::Packet> {
    let props =
        option::of((option::of(any::<u32>()), option::of(text()), user_props(), option::of(text()))).prop_map(|p| {
            p.map(|(session_expiry_interval, reason_string, user_properties, server_reference)| {
                v5::DisconnectProperties { session_expiry_interval, reason_string, user_properties, server_reference }
            })
        });
    (select(ALL_DISCONNECT_CODES.to_vec()), props)
        .prop_map(|(reason_code, properties)| P::Disconnect(v5::Disconnect { reason_code, properties }))
}

pub(super) fn connack() -> impl Strategy<Value = v5::Packet> {
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
            .prop_map(|((se, rm, mq, ra, mps, id, tam, rs), (up, wsa, sia, ssa, ska, ri, sr, am, ad))| {
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
            }),
    );
    (any::<bool>(), select(ALL_CONNECT_CODES.to_vec()), props)
        .prop_map(|(session_present, code, properties)| P::ConnAck(v5::ConnAck { session_present, code, properties }))
}

pub(super) fn suback() -> impl Strategy<Value = v5::Packet> {
    (pkid(), vec(select(all_suback_codes()), 1..5), reason_props()).prop_map(|(pkid, return_codes, p)| {
        P::SubAck(v5::SubAck {
            pkid,
            return_codes,
            properties: p
                .map(|(reason_string, user_properties)| v5::SubAckProperties { reason_string, user_properties }),
        })
    })
}

pub(super) fn unsuback() -> impl Strategy<Value = v5::Packet> {
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

pub(super) fn client_v5() -> BoxedStrategy<v5::Packet> {
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

pub(super) fn server_v5(topic: fn() -> BoxedStrategy<Vec<u8>>) -> BoxedStrategy<v5::Packet> {
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
pub(super) fn client_v4() -> BoxedStrategy<v5::Packet> {
    let will = option::of((topic_text(), bin(16), qos(), any::<bool>()).prop_map(|(topic, message, qos, retain)| {
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
pub(super) fn wild_packet() -> BoxedStrategy<v5::Packet> {
    let wild_text = "[a\\x00é+#/]{0,6}";
    let publish = (qos(), any::<bool>(), any::<u16>(), vec(any::<u8>(), 0..8), vec(any::<usize>(), 0..3), wild_text)
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
    let subscribe = (any::<u16>(), vec(filter(), 0..3), option::of(any::<usize>())).prop_map(|(pkid, filters, id)| {
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
                properties: Some(v5::ConnectProperties { receive_maximum: Some(0), ..v5::ConnectProperties::new() }),
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
