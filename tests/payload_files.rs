//! A large payload through the real broker (migration 0011): published
//! QoS 1 and retained, it is delivered whole, its PUBACK comes once its
//! file `payloads/<n>/<index>` holds exactly its bytes, a subscriber after
//! a restart gets the retained message read back from that file, `audit
//! verify` checks it against the record, and a changed byte in the file is
//! a failure naming the record. Large unsigned payloads are hashed off the
//! connection's task (`checks::DIGEST_MIN`): a client's large and small
//! publishes, pipelined, still keep their order and their hashes. Large
//! payloads are sent on from where they are, not copied (`codec::SPLICE_MIN`):
//! subscribers over TCP, TLS, WebSocket and WSS, MQTT 3.1.1 and 5, get them
//! whole.

mod common;

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5;

use common::broker::BrokerProcess;
use common::mqtt::{self, QoS, WAIT, connect5, kind, publish5_acked, subscribe5};
use common::transports::{Pki, Via, receive_v4, receive_v5, runtime};
use common::{sealmq, verify_ok};

/// Larger than the store's threshold for files (64 KiB), below the default
/// maximum packet size (1 MiB + 1 KiB).
const SIZE: u32 = 300_000;

#[test]
fn a_large_retained_payload_is_delivered_logged_in_its_file_and_served_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let payload: Vec<u8> = (0..SIZE).map(|i| (i.wrapping_mul(7) % 251) as u8).collect();

    let broker = BrokerProcess::start(data, &[]);
    let mut subscriber = mqtt::connect5(broker.mqtt, "files-sub");
    assert_eq!(mqtt::subscribe5(&mut subscriber, 1, "files/#", QoS::AtLeastOnce), [1]);
    let mut publisher = mqtt::connect5(broker.mqtt, "files-pub");
    let v5::Packet::Publish(publish) = mqtt::publish5_packet("files/big", QoS::AtLeastOnce, 1, &payload, true, vec![])
    else {
        unreachable!()
    };
    let ack = mqtt::publish5_acked(&mut publisher, publish).expect("a PUBACK");
    assert!(ack.ack_reason() < 0x80, "refused: {:?}", ack.reason_string());
    let index: u64 = ack.user_property("sealmq-index").expect("sealmq-index in the PUBACK").parse().unwrap();
    // Acknowledged means durable: the file is complete by now.
    let file = data.join("payloads").join((index / 4096).to_string()).join(index.to_string());
    assert_eq!(std::fs::read(&file).expect("the payload's file"), payload);
    let delivered = subscriber.next_publish5(Duration::from_secs(10)).expect("the publish is delivered");
    assert_eq!((delivered.topic.as_ref(), delivered.payload.len()), (&b"files/big"[..], payload.len()));
    assert!(delivered.payload[..] == payload[..], "delivered whole");
    broker.stop();

    // The retained message of a restarted broker comes from the log, so
    // from the file.
    let broker = BrokerProcess::start(data, &[]);
    let mut late = mqtt::connect5(broker.mqtt, "files-late");
    assert_eq!(mqtt::subscribe5(&mut late, 1, "files/big", QoS::AtLeastOnce), [1]);
    let retained = late.next_publish5(Duration::from_secs(10)).expect("the retained message");
    assert!(retained.retain, "MQTT 5 §3.3.1.3: retained messages sent on a new subscription have RETAIN set");
    assert!(retained.payload[..] == payload[..], "the retained payload is read back whole");
    broker.stop();

    let verified = verify_ok(data);
    assert!(verified.payloads >= 1, "the file's payload was checked: {verified:?}");

    let mut bytes = std::fs::read(&file).unwrap();
    bytes[SIZE as usize / 2] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let failed = sealmq(data, &["audit", "verify"]).failed();
    assert!(failed.contains(&format!("record {index}")), "the failure names record {index}: {failed}");
}

#[test]
fn large_and_small_publishes_of_one_client_keep_their_order_and_their_hashes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path();
    let broker = BrokerProcess::start(data, &[]);
    let mut subscriber = mqtt::connect5(broker.mqtt, "order-sub");
    assert_eq!(mqtt::subscribe5(&mut subscriber, 1, "order/t", QoS::AtLeastOnce), [1]);
    let mut publisher = mqtt::connect5(broker.mqtt, "order-pub");

    // Alternately above and below the 64 KiB at which payloads are hashed
    // off the connection's task, at QoS 0 and 1, all sent before any
    // acknowledgement is read.
    let sent: Vec<(QoS, Vec<u8>)> = (0..12u8)
        .map(|n| {
            let len = if n % 2 == 0 { 100_000 + usize::from(n) } else { 10 + usize::from(n) };
            let qos = if n % 3 == 0 { QoS::AtMostOnce } else { QoS::AtLeastOnce };
            (qos, (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(n)).collect())
        })
        .collect();
    for (n, (qos, payload)) in sent.iter().enumerate() {
        let pkid = n as u16 + 1;
        publisher.send5(&mqtt::publish5_packet("order/t", *qos, pkid, payload, false, vec![])).unwrap();
    }
    let mut indices = Vec::new();
    for (n, _) in sent.iter().enumerate().filter(|(_, (qos, _))| *qos == QoS::AtLeastOnce) {
        let puback = publisher.expect(kind::PUBACK);
        // MQTT-4.6.0-2: PUBACKs in the order the PUBLISH packets came.
        assert_eq!(puback.pkid(), n as u16 + 1, "PUBACK out of order: {puback:?}");
        assert!(puback.ack_reason() < 0x80, "refused: {:?}", puback.reason_string());
        indices.push(puback.user_property("sealmq-index").expect("sealmq-index").parse::<u64>().unwrap());
    }
    assert!(indices.windows(2).all(|w| w[0] < w[1]), "logged in the order received: {indices:?}");

    // MQTT-4.6.0-5 and -6: a subscriber gets one client's publishes to a
    // topic in the order they were received.
    for (n, (_, payload)) in sent.iter().enumerate() {
        let got = subscriber.next_publish5(Duration::from_secs(10)).unwrap_or_else(|| panic!("publish {n} delivered"));
        assert!(
            got.payload[..] == payload[..],
            "publish {n}: got {} bytes starting {:?}",
            got.payload.len(),
            &got.payload[..4]
        );
    }
    broker.stop();

    // Every record's payload hash (computed off the task for the large
    // ones) matches the payload stored.
    let verified = verify_ok(data);
    assert!(verified.records >= 12 && verified.payloads >= 12, "{verified:?}");
}

/// Large payloads leave the broker without being copied into a client's
/// output buffer (`codec::SPLICE_MIN`): whatever the transport and version,
/// each subscriber gets every payload byte for byte and in order
/// [MQTT-4.6.0-6], and one whose Maximum Packet Size a message exceeds
/// gets the others, not that one [MQTT-3.1.2-24].
#[test]
fn large_payloads_reach_every_transport_and_version_whole_and_in_order() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let toml = format!(
        "tls_listen = \"127.0.0.1:0\"\nws_listen = \"127.0.0.1:0\"\nwss_listen = \"127.0.0.1:0\"\n{}\
         [limits]\nmax_packet_size = 4194304\n",
        pki.toml(false)
    );
    let broker = BrokerProcess::start_with_config(&tmp.path().join("data"), &toml);
    let (mqtts, ws, wss) = (broker.listeners["mqtts"], broker.listeners["ws"], broker.listeners["wss"]);
    // Sizes on both sides of the splice threshold and of the Remaining
    // Length's 3- and 4-byte forms; every payload's bytes its own.
    let sizes = [10, 16_383, 16_384, 100_000, 2, 2_097_000, 700_000, 5];
    let payloads: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(n, &size)| (0..size).map(|i| (i * 31 + n * 7 + i / 251) as u8).collect())
        .collect();
    let small_max = 100_000;

    let rt = runtime();
    let no_cert = pki.client_config(None);
    let mut sub = connect5(broker.mqtt, "tcp-5");
    assert_eq!(subscribe5(&mut sub, 1, "big/#", QoS::AtLeastOnce), vec![1]);
    let (tx, subscribed): (Vec<_>, Vec<_>) = (0..4).map(|_| tokio::sync::oneshot::channel()).unzip();
    let mut tx = tx.into_iter();
    let n = payloads.len();
    let fits = payloads.iter().filter(|p| p.len() + 64 < small_max as usize).count();
    let receivers = [
        rt.spawn(receive_v4(mqtts, Via::Tls(no_cert.clone()), "tls-4", "big/#", tx.next().unwrap(), n)),
        rt.spawn(receive_v4(ws, Via::Ws, "ws-4", "big/#", tx.next().unwrap(), n)),
        rt.spawn(receive_v5(wss, Via::Wss(no_cert), "wss-5", "big/#", 4 << 20, tx.next().unwrap(), n)),
        rt.spawn(receive_v5(ws, Via::Ws, "ws-5-small", "big/#", small_max, tx.next().unwrap(), fits)),
    ];
    rt.block_on(async {
        for ready in subscribed {
            tokio::time::timeout(WAIT, ready).await.expect("a subscriber got no SUBACK").unwrap();
        }
    });

    let mut publisher = connect5(broker.mqtt, "publisher");
    for (n, payload) in payloads.iter().enumerate() {
        let mut publish = v5::Publish::new(format!("big/{n}"), QoS::AtLeastOnce, payload.clone(), None);
        publish.pkid = n as u16 + 1;
        publish5_acked(&mut publisher, publish);
    }
    for (n, expected) in payloads.iter().enumerate() {
        let got = sub.next_publish5(WAIT).unwrap_or_else(|| panic!("tcp-5: message {n} never came"));
        assert!(got.payload[..] == expected[..], "tcp-5: message {n} differs ({} bytes)", got.payload.len());
        if got.qos != rumqttc::v5::mqttbytes::QoS::AtMostOnce {
            sub.send5(&v5::Packet::PubAck(v5::PubAck::new(got.pkid, None))).unwrap();
        }
    }
    let names = ["tls-4", "ws-4", "wss-5", "ws-5-small"];
    let got: Vec<Vec<Vec<u8>>> = rt.block_on(async {
        let mut got = Vec::new();
        for receiver in receivers {
            got.push(tokio::time::timeout(WAIT * 2, receiver).await.expect("a subscriber timed out").unwrap());
        }
        got
    });
    for (name, got) in names.iter().zip(&got[..3]) {
        assert_eq!(got.len(), n, "{name}");
        for (k, (got, expected)) in got.iter().zip(&payloads).enumerate() {
            assert!(got == expected, "{name}: message {k} differs ({} bytes, {} expected)", got.len(), expected.len());
        }
    }
    let small: Vec<&Vec<u8>> = payloads.iter().filter(|p| p.len() + 64 < small_max as usize).collect();
    assert_eq!(got[3].iter().collect::<Vec<_>>(), small, "ws-5-small: those that fit, in order");
    assert!(broker.stop().success());
}
