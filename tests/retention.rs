//! Payload retention and erasure through a real broker (issue 14): payloads
//! past a retention rule disappear while their records stay and every
//! proof still checks; each erasure is a `$sealmq/erasure` record whose
//! JSON says what was erased and whose count matches; a current retained
//! message keeps its payload and is still delivered; `sealmq erase
//! --device` while the broker serves erases that device's payloads and no
//! other's; the size cap holds; no client may pose as `$sealmq/…`.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rumqttc::v5::mqttbytes::v5;
use serde_json::Value;

use common::broker::BrokerProcess;
use common::http::get;
use common::mqtt::{QoS, WAIT, connect5, publish5_acked, publish5_packet, subscribe5, try_connect4, try_connect5};
use common::signed::publishes;
use common::{Db, sealmq, verify_ok};

const ERASURE_DEVICE: &str = "$sealmq/erasure";

/// Publishes `payload` on `topic` at QoS 1 from the connected client; acked.
#[track_caller]
fn publish(conn: &mut common::mqtt::Conn, pkid: u16, topic: &str, payload: &[u8], retain: bool) {
    let publish = match publish5_packet(topic, QoS::AtLeastOnce, pkid, payload, retain, vec![]) {
        v5::Packet::Publish(publish) => publish,
        _ => unreachable!(),
    };
    assert_eq!(publish5_acked(conn, publish).unwrap().ack_reason(), 0, "{topic}");
}

/// Indices with a stored payload, read from the database as an auditor would.
fn stored(data: &Path) -> BTreeMap<u64, Vec<u8>> {
    let mut db = Db::open_read_only(data);
    let indices = db.ints("SELECT idx FROM payloads ORDER BY idx");
    let blobs = db.blobs("SELECT data FROM payloads ORDER BY idx");
    indices.into_iter().map(|i| i as u64).zip(blobs).collect()
}

/// The erasure records: (index, their JSON).
fn erasures(data: &Path) -> Vec<(u64, Value)> {
    let payloads = stored(data);
    publishes(data)
        .into_iter()
        .filter(|(_, p)| p.device_id == ERASURE_DEVICE)
        .map(|(index, p)| {
            assert_eq!(p.topic, "$SYS/sealmq/erasure");
            assert_eq!((p.qos, p.retain, p.signature.is_none(), p.cause.is_none()), (0, false, true, true));
            let json = payloads.get(&index).unwrap_or_else(|| panic!("erasure record {index} lost its payload"));
            (index, serde_json::from_slice(json).unwrap())
        })
        .collect()
}

/// Waits until `done` holds for the data directory.
#[track_caller]
fn wait_for(what: &str, within: Duration, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    while !done() {
        assert!(started.elapsed() < within, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Fetches `/v1/proof/INDEX` and checks it with `sealmq audit check-proof`.
#[track_caller]
fn proof_checks(broker: &BrokerProcess, dir: &Path, index: u64) {
    let (status, body) = get(broker.http, &format!("/v1/proof/{index}"));
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    let file = dir.join(format!("proof-{index}.json"));
    std::fs::write(&file, &body).unwrap();
    let out = sealmq(dir, &["audit", "check-proof", file.to_str().unwrap(), "--vkey", &broker.vkey]).ok();
    assert!(out.starts_with("ok"), "proof of {index}: {out}");
}

#[test]
fn payloads_past_a_rule_are_erased_records_and_proofs_stay() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    // A rule that reads the lamps' payloads: once they are erased, replay
    // cannot re-evaluate it and must say so.
    let rule = tmp.path().join("echo.toml");
    std::fs::write(
        &rule,
        "name = \"lamp-echo\"\non = \"zigbee2mqtt/lamp\"\nwhen = \"true\"\n\
         [publish]\ntopic = \"house/lamp-echo\"\npayload = \"'echo ' + text\"\nqos = 0\nretain = false\n",
    )
    .unwrap();
    sealmq(&data, &["rule", "add", rule.to_str().unwrap()]).ok();
    let broker = BrokerProcess::start_with_config(
        &data,
        "block_interval_ms = 50\n[retention]\ninterval = \"1s\"\n\
         [[retention.rules]]\nname = \"zigbee\"\nfilter = \"zigbee2mqtt/#\"\nmax_age = \"2s\"\n",
    );
    let mut hub = connect5(broker.mqtt, "hub");
    let lamp: Vec<Vec<u8>> = (0..5).map(|i| format!("{{\"state\":\"ON\",\"n\":{i}}}").into_bytes()).collect();
    for (i, payload) in lamp.iter().enumerate() {
        publish(&mut hub, 1 + i as u16, "zigbee2mqtt/lamp", payload, false);
    }
    publish(&mut hub, 10, "zigbee2mqtt/bridge/state", b"online", true);
    publish(&mut hub, 11, "house/meter", b"42 kWh", false);

    let logged = publishes(&data);
    let index_of =
        |topic: &str| -> Vec<u64> { logged.iter().filter(|(_, p)| p.topic == topic).map(|(i, _)| *i).collect() };
    let (lamps, bridge, meter) =
        (index_of("zigbee2mqtt/lamp"), index_of("zigbee2mqtt/bridge/state")[0], index_of("house/meter")[0]);
    assert_eq!(lamps.len(), 5);
    assert!(lamps.iter().all(|i| stored(&data).contains_key(i)), "stored until they are 2 s old");

    // Within a few passes after the 2 s: the lamp payloads are gone.
    wait_for("the lamp payloads to be erased", Duration::from_secs(20), || {
        let now = stored(&data);
        lamps.iter().all(|i| !now.contains_key(i))
    });
    let now = stored(&data);
    assert_eq!(now.get(&meter).map(Vec::as_slice), Some(&b"42 kWh"[..]), "no rule covers house/#");
    assert_eq!(now.get(&bridge).map(Vec::as_slice), Some(&b"online"[..]), "a current retained message stays");
    // The records stay: as many as before, and more (the erasure records).
    let after = publishes(&data);
    for (index, record) in &logged {
        assert_eq!(after.iter().find(|(i, _)| i == index).map(|(_, r)| r), Some(record));
    }

    // The erasure records say what went: the rule, the filter, a time
    // bound past the lamps', an index bound above them, count and bytes.
    let found = erasures(&data);
    assert!(!found.is_empty(), "no erasure record");
    let count: u64 = found.iter().map(|(_, j)| j["count"].as_u64().unwrap()).sum();
    let bytes: u64 = found.iter().map(|(_, j)| j["bytes"].as_u64().unwrap()).sum();
    assert_eq!(count, 5, "{found:?}");
    assert_eq!(bytes, lamp.iter().map(|p| p.len() as u64).sum::<u64>(), "{found:?}");
    for (index, json) in &found {
        assert_eq!(json["reason"], "retention");
        assert_eq!(json["rule"], "zigbee");
        assert_eq!(json["filter"], "zigbee2mqtt/#");
        assert!(json["device"].is_null());
        let below = json["below_index"].as_u64().unwrap();
        assert!(below <= *index, "an erasure covers only records before it");
        let before_ms = json["before_ms"].as_u64().unwrap();
        let erasure_at = after.iter().find(|(i, _)| i == index).unwrap().1.received_ms;
        assert!(before_ms + 2000 <= erasure_at + 50, "before_ms is the pass's time minus max_age");
    }
    // An auditor recomputes the erased set from the log: every lamp is
    // covered by an erasure record after it; the meter and the retained
    // bridge state are not erased.
    for lamp_index in &lamps {
        let record = &after.iter().find(|(i, _)| i == lamp_index).unwrap().1;
        assert!(found.iter().any(|(at, j)| {
            at > lamp_index
                && *lamp_index < j["below_index"].as_u64().unwrap()
                && record.received_ms < j["before_ms"].as_u64().unwrap()
        }));
    }

    // Every proof still checks, erased payload or not.
    for index in lamps.iter().chain([&bridge, &meter]) {
        proof_checks(&broker, tmp.path(), *index);
    }
    // The API says the payload was erased.
    let (status, body) = get(broker.http, &format!("/v1/records/{}", lamps[0]));
    assert_eq!(status, 200);
    let view: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!((view["payload"].is_null(), view["payload_erased"].as_bool()), (true, Some(true)), "{view}");
    let (_, body) = get(broker.http, &format!("/v1/records/{meter}"));
    let view: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(view["payload_erased"].as_bool(), Some(false));
    assert_eq!(STANDARD.decode(view["payload"].as_str().unwrap()).unwrap(), b"42 kWh");

    // A new subscriber still gets the retained message, payload and all.
    let mut late = connect5(broker.mqtt, "late");
    assert_eq!(subscribe5(&mut late, 1, "zigbee2mqtt/bridge/state", QoS::AtMostOnce), [0]);
    let retained = late.next_publish5(WAIT).expect("the retained message");
    assert_eq!((retained.payload.as_ref(), retained.retain), (&b"online"[..], true));
    broker.stop();

    // verify passes, counts the erased payloads and finds each accounted
    // for by an erasure record; replay holds.
    let out = sealmq(&data, &["audit", "verify"]).ok();
    assert!(!out.contains("warning"), "{out}");
    let verified = verify_ok(&data);
    assert_eq!(verified.erased, 5);
    assert_eq!(verified.erasures, found.len() as u64);
    assert_eq!(verified.retained, 1);
    let replay = sealmq(&data, &["audit", "replay"]).ok();
    assert!(replay.contains("ok:") && replay.contains("5 triggers unverifiable (payload erased)"), "{replay}");
    for index in &lamps {
        assert!(replay.contains(&format!("unverifiable: record {index}: its payload was erased")), "{replay}");
    }
    // The actions (not covered by the rule's filter) keep theirs.
    let echoes = publishes(&data).into_iter().filter(|(_, p)| p.topic == "house/lamp-echo").count();
    assert_eq!(echoes, 5);
}

#[test]
fn erase_a_device_while_the_broker_serves() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker = BrokerProcess::start_with_config(&data, "block_interval_ms = 50\n");
    let mut a = connect5(broker.mqtt, "dev-a");
    let mut b = connect5(broker.mqtt, "dev-b");
    for i in 0..3u16 {
        publish(&mut a, 1 + i, &format!("home/a/{i}"), format!("a-{i}").as_bytes(), false);
        publish(&mut b, 1 + i, &format!("home/b/{i}"), format!("b-{i}").as_bytes(), false);
    }
    let out = sealmq(&data, &["erase", "--device", "dev-a"]).ok();
    assert!(out.contains("erased 3 payloads (9 bytes)"), "{out}");

    let now = stored(&data);
    for (index, p) in publishes(&data) {
        match p.device_id.as_str() {
            "dev-a" => assert!(!now.contains_key(&index), "dev-a's payload {index} is still stored"),
            "dev-b" => assert!(now.contains_key(&index), "dev-b's payload {index} was erased"),
            _ => {}
        }
    }
    let found = erasures(&data);
    assert_eq!(found.len(), 1, "{found:?}");
    let json = &found[0].1;
    assert_eq!(json["reason"], "request");
    assert_eq!(json["device"], "dev-a");
    assert!(json["rule"].is_null() && json["filter"].is_null() && json["before_ms"].is_null());
    assert_eq!((json["count"].as_u64(), json["bytes"].as_u64()), (Some(3), Some(9)));

    // The broker still serves, and a second request finds nothing left:
    // still logged, with count 0, so the request is on record.
    publish(&mut a, 9, "home/a/new", b"fresh", false);
    let out = sealmq(&data, &["erase", "--device", "dev-a", "--topic", "home/b/#"]).ok();
    assert!(out.contains("erased 0 payloads"), "{out}");
    assert_eq!(erasures(&data).len(), 2);
    broker.stop();
    let verified = verify_ok(&data);
    assert_eq!((verified.erased, verified.erasures), (3, 2));

    // Without a broker the command opens the log itself.
    let out = sealmq(&data, &["erase", "--topic", "home/#"]).ok();
    assert!(out.contains("erased 4 payloads"), "{out}");
    let out = sealmq(&data, &["audit", "verify"]).ok();
    assert!(!out.contains("warning"), "every erased payload is accounted for: {out}");
    let verified = verify_ok(&data);
    assert_eq!((verified.erased, verified.erasures), (7, 3));
    // A bad filter is refused before anything is done.
    sealmq(&data, &["erase", "--topic", "home/#/x"]).error();
    sealmq(&data, &["erase"]).error();
}

#[test]
fn the_size_cap_keeps_stored_payloads_under_it() {
    const CAP: i64 = 4000;
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let broker = BrokerProcess::start_with_config(
        &data,
        &format!("block_interval_ms = 50\n[retention]\ninterval = \"1s\"\nmax_payload_bytes = {CAP}\n"),
    );
    let mut conn = connect5(broker.mqtt, "meter");
    publish(&mut conn, 1, "meter/config", &[b'c'; 500], true);
    for i in 0..40u16 {
        publish(&mut conn, 2 + i, "meter/reading", &[b'0' + (i % 10) as u8; 200], false);
    }
    let total = || Db::open_read_only(&data).int("SELECT coalesce(sum(length(data)), 0) FROM payloads");
    wait_for("the size cap", Duration::from_secs(20), || total() <= CAP);
    let now = stored(&data);
    let logged = publishes(&data);
    let readings: Vec<u64> = logged.iter().filter(|(_, p)| p.topic == "meter/reading").map(|(i, _)| *i).collect();
    // Oldest first: what is kept is a tail of the readings.
    let kept: Vec<u64> = readings.iter().copied().filter(|i| now.contains_key(i)).collect();
    assert!(!kept.is_empty() && kept.len() < readings.len(), "kept {kept:?}");
    assert_eq!(kept, readings[readings.len() - kept.len()..], "the oldest went first");
    let config = logged.iter().find(|(_, p)| p.topic == "meter/config").unwrap().0;
    assert!(now.contains_key(&config), "the current retained message stays");
    let found = erasures(&data);
    assert!(found.iter().all(|(_, j)| j["reason"] == "size_cap"), "{found:?}");
    let count: u64 = found.iter().map(|(_, j)| j["count"].as_u64().unwrap()).sum();
    assert_eq!(count as usize, readings.len() - kept.len());
    // Stays under it while more arrives.
    for i in 0..10u16 {
        publish(&mut conn, 100 + i, "meter/reading", &[b'x'; 200], false);
    }
    std::thread::sleep(Duration::from_secs(3));
    assert!(total() <= CAP, "{} > {CAP}", total());
    broker.stop();
    let out = sealmq(&data, &["audit", "verify"]).ok();
    assert!(out.starts_with("ok:") && !out.contains("warning"), "{out}");
}

#[test]
fn no_client_may_pose_as_the_broker() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&tmp.path().join("data"), &[]);
    for id in ["$sealmq/erasure", "$sealmq/anything"] {
        let (_, connack) = try_connect5(broker.mqtt, id, None);
        assert_eq!(connack.connack_code(), 0x85, "{id}: Client Identifier not valid");
        let (_, connack) = try_connect4(broker.mqtt, id, None);
        assert_eq!(connack.connack_code(), 0x02, "{id}: Identifier rejected");
    }
    // Not a prefix match on "$sealmq" alone.
    let (_, connack) = try_connect5(broker.mqtt, "$sealmqx", None);
    assert_eq!(connack.connack_code(), 0);
    // Nor can a device be registered under such an id.
    let err = sealmq(&tmp.path().join("data"), &["device", "add", "$sealmq/erasure", "--policy", "legacy"]).error();
    assert!(err.contains("$sealmq/"), "{err}");
    broker.stop();
}
