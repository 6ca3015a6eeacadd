//! File descriptors through the real binary under a low `ulimit -n`: MQTT
//! clients past what the limit fits are refused as busy at once instead of
//! waiting for a CONNACK that never comes, and half-sent HTTP requests are
//! cut off by the header timeout and held to the HTTP connection cap, while
//! MQTT clients keep connecting and exchanging messages.

mod common;

use std::time::{Duration, Instant};

use common::broker::BrokerProcess;
use common::http::{Fate, fate, half_request, sent};
use common::mqtt::{
    Conn, Got, QoS, WAIT, connect4_packet, connect5, connect5_packet, connect5_session_packet, kind, publish5_packet,
    subscribe5,
};
use rumqttc::v5::mqttbytes::v5;

/// The broker's descriptor limit (soft and hard) in these tests.
const NOFILE: u64 = 300;
/// Each client's socket, its link to the router and the router's end.
const PER_CLIENT: u64 = 1;
/// How soon any CONNACK, admitting or refusing, must come.
const PROMPT: Duration = Duration::from_secs(2);
const SERVER_BUSY_V5: u8 = 0x89;
const SERVER_UNAVAILABLE_V4: u8 = 0x03;

/// Connects (MQTT 5, or 3.1.1) and returns the CONNACK's code, which must
/// come within [`PROMPT`].
#[track_caller]
fn connack(broker: &BrokerProcess, client_id: &str, v5: bool) -> (Conn, u8) {
    if v5 {
        connack_to(broker, client_id, &connect5_packet(client_id, None))
    } else {
        let mut conn = Conn::open(broker.mqtt);
        conn.send4(&connect4_packet(client_id, None)).unwrap();
        await_connack(broker, client_id, conn)
    }
}

/// Sends an MQTT 5 CONNECT; as [`connack`].
#[track_caller]
fn connack_to(broker: &BrokerProcess, client_id: &str, connect: &v5::Packet) -> (Conn, u8) {
    let mut conn = Conn::open(broker.mqtt);
    conn.send5(connect).unwrap();
    await_connack(broker, client_id, conn)
}

#[track_caller]
fn await_connack(broker: &BrokerProcess, client_id: &str, mut conn: Conn) -> (Conn, u8) {
    match conn.next(PROMPT) {
        Got::Frame(frame) => {
            let code = frame.connack_code();
            (conn, code)
        }
        other => panic!(
            "{client_id}: no CONNACK within {PROMPT:?} ({other:?}); broker log:\n{}",
            broker.stderr.lock().unwrap()
        ),
    }
}

/// Publishes at QoS 1 from `publisher`; `sub` (subscribed to `fd/#`) must get it.
#[track_caller]
fn exchange(publisher: &mut Conn, sub: &mut Conn, pkid: u16, payload: &[u8]) {
    publisher.send5(&publish5_packet("fd/x", QoS::AtLeastOnce, pkid, payload, false, vec![])).unwrap();
    assert_eq!(publisher.expect(kind::PUBACK).ack_reason(), 0);
    assert_eq!(sub.next_publish5(WAIT).expect("the message arrives").payload.as_ref(), payload);
}

#[test]
fn clients_past_what_the_descriptor_limit_fits_are_refused_at_once_and_the_rest_carry_on() {
    let tmp = tempfile::tempdir().unwrap();
    // Far more connections allowed than 300 descriptors can hold.
    let toml = "[limits]\nmax_connections = 1000\nhttp_max_connections = 8\n";
    let broker = BrokerProcess::start_with_nofile(&tmp.path().join("data"), toml, NOFILE);
    let mut sub = connect5(broker.mqtt, "sub");
    assert_eq!(subscribe5(&mut sub, 1, "fd/#", QoS::AtLeastOnce), vec![1]);

    let mut admitted = Vec::new();
    let mut refused = 0;
    // More attempts than could ever fit: connect until ten are refused.
    for n in 0..NOFILE {
        let (conn, code) = connack(&broker, &format!("c{n}"), true);
        match code {
            0 => {
                assert_eq!(refused, 0, "c{n} admitted after a refusal, with no one gone");
                admitted.push(conn);
            }
            SERVER_BUSY_V5 => refused += 1,
            other => panic!("c{n}: CONNACK {other:#04x}, expected success or 0x89 server busy"),
        }
        if refused == 10 {
            break;
        }
    }
    assert_eq!(refused, 10, "no client was refused in {NOFILE} attempts");
    let clients = admitted.len() as u64 + 1;
    assert!(clients * PER_CLIENT < NOFILE, "{clients} clients admitted cannot fit in {NOFILE} descriptors");
    // 3.1.1 clients are told too, in their protocol's terms.
    let (_, code) = connack(&broker, "v4-past-the-limit", false);
    assert_eq!(code, SERVER_UNAVAILABLE_V4);
    let log = broker.stderr.lock().unwrap().clone();
    assert!(
        log.contains(&format!("file descriptor limit ({NOFILE}) fits only")) && log.contains("raise the limit"),
        "the start-up warning is missing:\n{log}"
    );

    // Those already in carry on, the first and the last admitted alike.
    exchange(&mut admitted[0], &mut sub, 1, b"first still here");
    let last = admitted.len() - 1;
    exchange(&mut admitted[last], &mut sub, 1, b"last still here");

    // Slots freed are slots usable.
    admitted.truncate(admitted.len() - 3);
    let deadline = Instant::now() + WAIT;
    let mut again = loop {
        let (conn, code) = connack(&broker, "again", true);
        if code == 0 {
            break conn;
        }
        assert_eq!(code, SERVER_BUSY_V5);
        assert!(Instant::now() < deadline, "no client was admitted after three left");
        std::thread::sleep(Duration::from_millis(50));
    };
    exchange(&mut again, &mut sub, 2, b"back in");
    drop(admitted);
    assert!(broker.stop().success());
}

#[test]
fn half_sent_http_requests_are_capped_and_cut_off_while_mqtt_carries_on() {
    // More of them than the broker has descriptors.
    const STRAGGLERS: usize = 400;
    const HTTP_CAP: usize = 8;
    const HEADER_TIMEOUT: Duration = Duration::from_secs(3);
    let tmp = tempfile::tempdir().unwrap();
    let toml = format!(
        "[limits]\nmax_connections = 20\nhttp_max_connections = {HTTP_CAP}\nhttp_header_timeout_ms = {}\n",
        HEADER_TIMEOUT.as_millis()
    );
    let broker = BrokerProcess::start_with_nofile(&tmp.path().join("data"), &toml, NOFILE);

    let opened = Instant::now();
    let mut stragglers: Vec<_> = (0..STRAGGLERS).map(|_| half_request(broker.http)).collect();
    // The cap holds: a whole request meanwhile is turned away (answered 503,
    // or closed unanswered while the broker is busy answering others), and
    // no more stragglers than the cap are held open.
    let mut past_the_cap = sent(broker.http, b"GET /v1/vkey HTTP/1.1\r\nHost: sealmq\r\n\r\n");
    let turned_away = fate(&mut past_the_cap, PROMPT);
    assert!(matches!(turned_away, Fate::Answered(503) | Fate::Closed), "a request past the HTTP cap: {turned_away:?}");
    let held = stragglers.iter_mut().map(|s| fate(s, Duration::ZERO)).filter(|f| *f == Fate::Open).count();
    assert!(held <= HTTP_CAP, "{held} half-sent requests held open; the cap is {HTTP_CAP}");
    assert!(opened.elapsed() < HEADER_TIMEOUT, "too slow to see the cap: {:?}", opened.elapsed());

    // MQTT is served meanwhile.
    let mut sub = connect5(broker.mqtt, "sub");
    assert_eq!(subscribe5(&mut sub, 1, "fd/#", QoS::AtLeastOnce), vec![1]);
    let mut publisher = connect5(broker.mqtt, "pub");
    exchange(&mut publisher, &mut sub, 1, b"despite the stragglers");

    // Every straggler is closed by the header timeout (or was answered).
    let deadline = opened + HEADER_TIMEOUT + Duration::from_secs(3);
    for (n, straggler) in stragglers.iter_mut().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1));
        let fate = fate(straggler, left);
        assert_ne!(fate, Fate::Open, "straggler {n} still open {:?} after it started", opened.elapsed());
    }
    drop(stragglers);

    // HTTP answers again, and MQTT still works.
    let (status, body) = common::http::get(broker.http, "/v1/vkey");
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains(&broker.vkey));
    exchange(&mut publisher, &mut sub, 2, b"after them");
    assert!(broker.stop().success());
}

#[test]
fn sessions_kept_for_disconnected_clients_hold_no_descriptors() {
    // Routing is in process: a parked session is state and a bounded
    // inbox, no socket. Many more sessions than the descriptor limit could
    // hold clients are kept, and connected clients carry on.
    let tmp = tempfile::tempdir().unwrap();
    let toml = "[limits]\nmax_connections = 1000\nhttp_max_connections = 8\nmax_session_expiry_secs = 3600\n";
    let broker = BrokerProcess::start_with_nofile(&tmp.path().join("data"), toml, NOFILE);
    let mut sub = connect5(broker.mqtt, "sub");
    assert_eq!(subscribe5(&mut sub, 1, "fd/#", QoS::AtLeastOnce), vec![1]);
    let mut publisher = connect5(broker.mqtt, "pub");

    let sessions = 2 * NOFILE;
    for n in 0..sessions {
        let client_id = format!("p{n}");
        let (conn, code) = connack_to(&broker, &client_id, &connect5_session_packet(&client_id, Some(3600)));
        drop(conn);
        assert_eq!(code, 0, "{client_id}: refused with {} sessions kept and {NOFILE} descriptors", n);
    }
    exchange(&mut publisher, &mut sub, 1, b"connected clients carry on");
    // A kept session is still there: its client resumes it.
    let (_conn, code) = connack_to(&broker, "p0", &connect5_session_packet("p0", Some(3600)));
    assert_eq!(code, 0);
    assert!(broker.stop().success());
}
