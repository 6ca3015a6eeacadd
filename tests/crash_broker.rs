//! Crash test of the broker: `sealmq serve` under QoS 1 load from several
//! MQTT 3.1.1 and 5 publishers and a subscriber is killed with SIGKILL at
//! random moments, over and over on the same data directory. After each
//! kill the log as the kill left it must verify and hold every publish that
//! got a PUBACK exactly once; the restarted broker must serve again within
//! [`RESTART_LIMIT`] and have rebuilt the retained messages from the log
//! and the search index rows the kill left unwritten.
//!
//! The publishers never retransmit: each connection dies with the broker,
//! and what was in flight is given up. So the log may hold an
//! unacknowledged publish (logged, PUBACK lost to the kill) at most once,
//! and an acknowledged one exactly once.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rand::Rng;
use rumqttc::v5::mqttbytes::v5;

use common::broker::BrokerProcess;
use common::logged::{self, LoggedPublish};
use common::mqtt::{self, Conn, Got, QoS, QoS4, WAIT, kind};
use common::verify_ok;

/// Rounds of start, load and kill; `SEALMQ_CRASH_ROUNDS` overrides for a soak.
const ROUNDS: usize = 10;
/// Publishing clients per round; even ones speak MQTT 5, odd ones 3.1.1.
const PUBLISHERS: usize = 4;
/// Unacknowledged publishes each publisher keeps in flight (the broker allows 64).
const WINDOW: usize = 16;
/// Every this many publishes of a client is retained, on one of [`RETAINED_TOPICS`] topics.
const RETAIN_EVERY: u64 = 5;
/// Topics the publishers share for retained messages, so their order is the log's.
const RETAINED_TOPICS: u64 = 3;
/// How long after every client is connected and publishing the broker is killed.
const KILL_AFTER_MS: RangeInclusive<u64> = 100..=1500;
/// From starting the process to a publish's PUBACK, after a kill.
const RESTART_LIMIT: Duration = Duration::from_secs(2);

/// One QoS 1 publish a client sent.
#[derive(Debug, Clone)]
struct Sent {
    client: String,
    topic: String,
    payload: String,
    retain: bool,
}

/// What one publisher saw before its connection died.
#[derive(Debug, Default)]
struct Outcome {
    /// Acknowledged with success; for MQTT 5, the log index the PUBACK named.
    acked: Vec<(Sent, Option<u64>)>,
    /// Sent, then no PUBACK before the connection closed.
    unacked: Vec<Sent>,
    /// Acknowledged with a failure reason (nothing here should be refused).
    refused: Vec<(Sent, u8, Option<String>)>,
}

/// An acknowledged publish, as the test remembers it across rounds.
#[derive(Debug)]
struct Acked {
    sent: Sent,
    round: usize,
    /// The log index from the MQTT 5 PUBACK.
    index: Option<u64>,
}

/// Prints the broker's log when the test fails while it is alive.
struct LogsOnPanic(Arc<Mutex<String>>);

impl Drop for LogsOnPanic {
    fn drop(&mut self) {
        if thread::panicking() {
            let logs = self.0.lock().map(|l| l.clone()).unwrap_or_default();
            let tail: Vec<&str> = logs.lines().rev().take(60).collect::<Vec<_>>().into_iter().rev().collect();
            eprintln!("---- broker log (last {} lines) ----\n{}\n----", tail.len(), tail.join("\n"));
        }
    }
}

fn connect(addr: SocketAddr, client: &str, v5: bool) -> Conn {
    if v5 { mqtt::connect5(addr, client) } else { mqtt::connect4(addr, client) }
}

/// Sends one QoS 1 publish; an error means the broker is gone.
fn send(conn: &mut Conn, v5: bool, pkid: u16, sent: &Sent) -> std::io::Result<()> {
    let payload = sent.payload.as_bytes();
    if v5 {
        conn.send5(&mqtt::publish5_packet(&sent.topic, QoS::AtLeastOnce, pkid, payload, sent.retain, vec![]))
    } else {
        conn.send4(&mqtt::publish4_packet(&sent.topic, QoS4::AtLeastOnce, pkid, payload, sent.retain))
    }
}

/// The success, log index or failure of one PUBACK frame.
fn read_puback(frame: &mqtt::Frame, v5: bool) -> Result<Option<u64>, (u8, Option<String>)> {
    if !v5 {
        return Ok(None);
    }
    let reason = frame.ack_reason();
    if reason >= 0x80 {
        return Err((reason, frame.reason_string()));
    }
    let index = frame.user_property("sealmq-index").map(|i| i.parse::<u64>().expect("sealmq-index is a number"));
    Ok(index)
}

/// Publishes QoS 1 with [`WINDOW`] in flight until the connection dies.
/// Signals `ready` once connected, so the kill comes under load.
fn publisher(addr: SocketAddr, client: usize, round: usize, v5: bool, ready: mpsc::Sender<()>) -> Outcome {
    let id = format!("pub-{client}-r{round}");
    let mut conn = connect(addr, &id, v5);
    ready.send(()).unwrap();
    let mut inflight: HashMap<u16, Sent> = HashMap::new();
    let mut out = Outcome::default();
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seq = 0u64;
    'run: while Instant::now() < deadline {
        while inflight.len() < WINDOW {
            seq += 1;
            let retain = seq.is_multiple_of(RETAIN_EVERY);
            let topic = if retain {
                format!("crash/retained/{}", (seq / RETAIN_EVERY) % RETAINED_TOPICS)
            } else {
                format!("crash/load/{client}")
            };
            let sent = Sent { client: id.clone(), topic, payload: format!("pub-{client}-{round}-{seq}"), retain };
            let pkid = u16::try_from(seq % 65_535 + 1).unwrap();
            let result = send(&mut conn, v5, pkid, &sent);
            // Counted as in flight even if the write failed: part of it may have reached the broker.
            assert!(inflight.insert(pkid, sent).is_none(), "{id}: packet id {pkid} reused while in flight");
            if result.is_err() {
                break 'run;
            }
        }
        match conn.next(Duration::from_millis(100)) {
            Got::Frame(frame) if frame.kind() == kind::PUBACK => {
                let pkid = frame.pkid();
                let sent =
                    inflight.remove(&pkid).unwrap_or_else(|| panic!("{id}: PUBACK for unknown packet id {pkid}"));
                match read_puback(&frame, v5) {
                    Ok(index) => out.acked.push((sent, index)),
                    Err((reason, why)) => out.refused.push((sent, reason, why)),
                }
            }
            Got::Frame(frame) => panic!("{id}: unexpected packet {frame:?}"),
            Got::Closed => break,
            Got::Timeout => {}
        }
    }
    out.unacked = inflight.into_values().collect();
    out
}

/// Receives (and acknowledges) publishes until the connection dies; their payloads.
fn subscriber(mut conn: Conn) -> Vec<String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while Instant::now() < deadline {
        match conn.next(Duration::from_millis(100)) {
            Got::Frame(frame) => {
                let v5::Packet::Publish(publish) = frame.v5() else {
                    panic!("subscriber: unexpected packet {frame:?}")
                };
                if publish.qos == QoS::AtLeastOnce {
                    // The broker may be gone already; the kill ends this loop.
                    let _ = conn.send5(&v5::Packet::PubAck(v5::PubAck::new(publish.pkid, None)));
                }
                got.push(String::from_utf8_lossy(&publish.payload).into_owned());
            }
            Got::Closed => break,
            Got::Timeout => {}
        }
    }
    got
}

/// A publish to `crash/probe` that must be acknowledged with success.
#[track_caller]
fn probe(addr: SocketAddr, round: usize) -> Acked {
    let v5 = !round.is_multiple_of(2);
    let client = format!("probe-r{round}");
    let mut conn = connect(addr, &client, v5);
    let sent = Sent { client, topic: "crash/probe".into(), payload: format!("probe-{round}"), retain: false };
    send(&mut conn, v5, 1, &sent).unwrap();
    let ack = conn.expect(kind::PUBACK);
    assert_eq!(ack.pkid(), 1);
    let index = read_puback(&ack, v5).unwrap_or_else(|e| panic!("round {round}: the probe was refused: {e:?}"));
    Acked { sent, round, index }
}

/// The retained messages under `crash/retained/#` a new subscriber gets
/// must be exactly `expected` (topic → payload).
#[track_caller]
fn check_retained(addr: SocketAddr, round: usize, expected: &BTreeMap<String, String>) {
    let mut conn = mqtt::connect5(addr, &format!("retained-r{round}"));
    assert_eq!(mqtt::subscribe5(&mut conn, 1, "crash/retained/#", QoS::AtLeastOnce), vec![1]);
    let mut got = BTreeMap::new();
    let deadline = Instant::now() + WAIT;
    // Until every expected topic arrived, then a little longer for any that should not.
    while Instant::now() < deadline {
        let grace = if got.len() >= expected.len() { Duration::from_millis(300) } else { Duration::from_millis(100) };
        match conn.next_publish5(grace) {
            Some(publish) => {
                assert!(publish.retain, "round {round}: a live publish on {:?} while nobody publishes", publish.topic);
                let topic = String::from_utf8(publish.topic.to_vec()).unwrap();
                let payload = String::from_utf8(publish.payload.to_vec()).unwrap();
                assert!(got.insert(topic.clone(), payload).is_none(), "round {round}: {topic} retained twice");
            }
            None if got.len() >= expected.len() => break,
            None => {}
        }
    }
    assert_eq!(&got, expected, "round {round}: retained messages after the restart are not the log's latest");
}

#[test]
fn killed_broker_loses_no_acknowledged_publish() {
    let rounds = std::env::var("SEALMQ_CRASH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let mut rng = rand::rng();
    let started = Instant::now();

    // Every acknowledged publish so far, by payload.
    let mut acked: BTreeMap<String, Acked> = BTreeMap::new();
    // Per retained topic, the payload of its latest retained record in the log.
    let mut expected_retained: BTreeMap<String, String> = BTreeMap::new();
    let mut restarts: Vec<Duration> = Vec::new();
    let (mut unacked_total, mut unacked_logged, mut delivered_total) = (0usize, 0usize, 0usize);

    // Round `rounds + 1` only restarts and checks what the last kill left.
    for round in 1..=rounds + 1 {
        let start = Instant::now();
        let mut broker = BrokerProcess::start(&data, &[]);
        let _logs = LogsOnPanic(Arc::clone(&broker.stderr));
        let probe = probe(broker.mqtt, round);
        let restart = start.elapsed();
        if round > 1 {
            // The first start creates the log; every later one follows a kill.
            assert!(restart <= RESTART_LIMIT, "round {round}: serving again took {restart:?} after a kill");
            restarts.push(restart);
        }
        acked.insert(probe.sent.payload.clone(), probe);
        check_retained(broker.mqtt, round, &expected_retained);

        if round == rounds + 1 {
            let stderr = Arc::clone(&broker.stderr);
            let status = broker.stop();
            assert!(status.success(), "the broker did not stop cleanly: {status:?}\n{}", stderr.lock().unwrap());
            break;
        }

        // Load: a subscriber to everything, publishers, and a kill at a random moment.
        let mut sub = mqtt::connect5(broker.mqtt, &format!("sub-r{round}"));
        assert_eq!(mqtt::subscribe5(&mut sub, 1, "crash/#", QoS::AtLeastOnce), vec![1]);
        let subscriber = thread::spawn(move || subscriber(sub));
        let (ready_tx, ready_rx) = mpsc::channel();
        let publishers: Vec<_> = (0..PUBLISHERS)
            .map(|client| {
                let (addr, ready) = (broker.mqtt, ready_tx.clone());
                thread::spawn(move || publisher(addr, client, round, client.is_multiple_of(2), ready))
            })
            .collect();
        for _ in 0..PUBLISHERS {
            ready_rx.recv_timeout(WAIT).expect("every publisher connects");
        }
        let delay = Duration::from_millis(rng.random_range(KILL_AFTER_MS));
        thread::sleep(delay);
        assert!(broker.is_running(), "round {round}: the broker exited by itself under load");
        assert!(!broker.stderr.lock().unwrap().contains("panicked"), "round {round}: the broker panicked");
        broker.kill();

        let mut outcomes = Vec::new();
        for publisher in publishers {
            outcomes.push(publisher.join().expect("a publisher thread failed"));
        }
        let delivered = subscriber.join().expect("the subscriber thread failed");
        let (mut round_acked, mut round_unacked) = (0usize, Vec::new());
        for outcome in outcomes {
            assert!(outcome.refused.is_empty(), "round {round}: publishes refused: {:?}", outcome.refused);
            round_acked += outcome.acked.len();
            for (sent, index) in outcome.acked {
                let payload = sent.payload.clone();
                assert!(acked.insert(payload.clone(), Acked { sent, round, index }).is_none(), "{payload} sent twice");
            }
            round_unacked.extend(outcome.unacked);
        }

        // The log as the kill left it (unsealed tail and all) verifies, and
        // the publish records in it are what the clients were told.
        let verified = verify_ok(&data);
        let records = logged::publishes(&data);
        let mut db = common::Db::open_read_only(&data);
        assert_eq!(db.int("SELECT count(*) FROM records") as u64, verified.records, "round {round}");
        // The search index is written in batches: a kill may leave the
        // newest rows unwritten, never a hole below written ones.
        let prefix = db.int("SELECT count(*) = coalesce(max(idx), -1) + 1 FROM record_index");
        assert_eq!(prefix, 1, "round {round}: the search index has a hole");
        db.close();
        let occurrences = logged::by_payload(&records);
        for (payload, indices) in &occurrences {
            assert_eq!(
                indices.len(),
                1,
                "round {round}: {payload:?} is in the log {} times: {indices:?}",
                indices.len()
            );
        }
        let at = |payload: &str| -> Option<&LoggedPublish> {
            occurrences.get(payload).map(|indices| &records[records.partition_point(|r| r.index < indices[0])])
        };
        for (payload, acked) in &acked {
            let record = at(payload).unwrap_or_else(|| {
                panic!("round {round}: {payload:?} (acknowledged in round {}) is not in the log", acked.round)
            });
            let sent = &acked.sent;
            assert_eq!(
                (record.device_id.as_str(), record.topic.as_str(), record.qos, record.retain),
                (sent.client.as_str(), sent.topic.as_str(), 1, sent.retain),
                "round {round}: the record of {payload:?}"
            );
            if let Some(index) = acked.index {
                assert_eq!(record.index, index, "round {round}: the PUBACK of {payload:?} named another index");
            }
        }
        let logged_unacked = round_unacked.iter().filter(|sent| occurrences.contains_key(&sent.payload)).count();
        // Delivered means durably logged first: the gateway forwards only after the append.
        for payload in &delivered {
            assert!(occurrences.contains_key(payload), "round {round}: {payload:?} was delivered but is not logged");
        }

        // The retained index agrees with the log: per topic, its latest
        // retained record. Acknowledged retained publishes are all in the
        // log, so the latest is the last acknowledged one or one logged
        // after it whose PUBACK the kill cut off; next round's restart must
        // serve exactly these.
        let mut latest: BTreeMap<&str, &LoggedPublish> = BTreeMap::new();
        for record in records.iter().filter(|r| r.retain && r.topic.starts_with("crash/")) {
            latest.insert(&record.topic, record);
        }
        let index_now: BTreeMap<String, u64> =
            logged::retained_index(&data).into_iter().filter(|(topic, _)| topic.starts_with("crash/")).collect();
        let index_log: BTreeMap<String, u64> = latest.iter().map(|(t, r)| (t.to_string(), r.index)).collect();
        assert_eq!(index_now, index_log, "round {round}: the retained index is not the log's latest retained records");
        expected_retained = latest
            .iter()
            .map(|(topic, r)| (topic.to_string(), String::from_utf8(r.payload.clone().unwrap()).unwrap()))
            .collect();

        eprintln!(
            "round {round}: killed after {delay:?}; {round_acked} acknowledged, {} unacknowledged ({logged_unacked} of \
             them logged), {} delivered; this start took {restart:?} to a PUBACK; log: {} records, {} unsealed",
            round_unacked.len(),
            delivered.len(),
            verified.records,
            verified.unsealed,
        );
        assert!(round_acked > 0, "round {round}: nothing was acknowledged before the kill");
        unacked_total += round_unacked.len();
        unacked_logged += logged_unacked;
        delivered_total += delivered.len();
    }

    // Stopped cleanly after the last restart: everything is sealed, and
    // every acknowledged publish is still there exactly once.
    let verified = verify_ok(&data);
    assert_eq!((verified.unsealed, verified.tree_size), (0, verified.records), "{verified:?}");
    // Each start indexed what the kill before it left unwritten.
    let mut db = common::Db::open_read_only(&data);
    assert_eq!(db.int("SELECT count(*) FROM record_index") as u64, verified.records, "records missing from the index");
    db.close();
    let occurrences = logged::by_payload(&logged::publishes(&data));
    let found = acked.keys().filter(|payload| occurrences.get(*payload).is_some_and(|i| i.len() == 1)).count();
    assert_eq!(found, acked.len(), "acknowledged publishes missing or duplicated after the final restart");

    restarts.sort();
    eprintln!(
        "crash_broker: {rounds} rounds, {} publishes acknowledged, {found} found exactly once, {unacked_total} \
         unacknowledged ({unacked_logged} of them logged), {delivered_total} deliveries; restart to PUBACK: min {:?}, \
         median {:?}, max {:?}; {} records in the log; {:.1} s",
        acked.len(),
        restarts.first().unwrap(),
        restarts[restarts.len() / 2],
        restarts.last().unwrap(),
        verified.records,
        started.elapsed().as_secs_f64(),
    );
}
