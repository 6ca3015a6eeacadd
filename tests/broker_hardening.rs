//! The broker's outer defences through real sockets: TLS with client
//! certificates that bind the client id, MQTT over WebSocket (ws and wss),
//! failed logins rate-limited per address, connection, publish-rate and
//! protocol limits answered with their reason codes, and the embedded
//! router refusing anyone but the gateway. Certificates are made at test
//! time (rcgen); clients are rumqttc (3.1.1 and 5, TCP/TLS/WS/WSS), raw
//! sockets and mosquitto_pub/sub.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5 as mq5;

use common::broker::BrokerProcess;
use common::mqtt::{QoS, WAIT, connect5, connect5_pw, kind, publish5_packet, subscribe5, try_connect4, try_connect5};
use common::sealmq;
use common::transports::{Pki, Via, runtime};

const BAD_PASSWORD_V5: u8 = 0x86;
const SERVER_BUSY_V5: u8 = 0x89;
const SERVER_UNAVAILABLE_V4: u8 = 0x03;
const CONNECTION_RATE_EXCEEDED_V5: u8 = 0x9F;

/// Waits until the broker's log (stderr, read on another thread) says `what`.
#[track_caller]
fn assert_logged(broker: &BrokerProcess, what: &str) {
    let deadline = Instant::now() + WAIT;
    while !broker.stderr.lock().unwrap().contains(what) {
        assert!(Instant::now() < deadline, "the broker never logged {what:?}:\n{}", broker.stderr.lock().unwrap());
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Connects with rumqttc MQTT 5 over `via`, publishes one QoS 1 message and
/// waits for its PUBACK. `Err` names a refused CONNECT or a failure.
async fn publish_v5(addr: SocketAddr, via: Via, client_id: &str, topic: &str, payload: &str) -> Result<(), String> {
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions};
    let mut options = MqttOptions::new(client_id, via.host(addr), addr.port());
    options.set_transport(via.transport());
    let (client, mut events) = AsyncClient::new(options, 10);
    let run = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(mq5::Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Err(format!("refused: {code:?}")),
                Err(e) => return Err(format!("connection failed: {e}")),
            }
        }
        client.publish(topic, rumqttc::v5::mqttbytes::QoS::AtLeastOnce, false, payload.to_string()).await.unwrap();
        loop {
            match events.poll().await {
                Ok(Event::Incoming(mq5::Packet::PubAck(ack))) if ack.reason == mq5::PubAckReason::Success => break,
                Ok(Event::Incoming(mq5::Packet::PubAck(ack))) => return Err(format!("PUBACK {:?}", ack.reason)),
                Ok(_) => {}
                Err(e) => return Err(format!("after CONNACK: {e}")),
            }
        }
        client.disconnect().await.unwrap();
        while events.poll().await.is_ok() {}
        Ok(())
    };
    tokio::time::timeout(WAIT * 2, run).await.map_err(|_| "timed out".to_string())?
}

/// The same with rumqttc MQTT 3.1.1.
async fn publish_v4(addr: SocketAddr, via: Via, client_id: &str, topic: &str, payload: &str) -> Result<(), String> {
    use rumqttc::{AsyncClient, ConnectionError, Event, MqttOptions, Packet};
    let mut options = MqttOptions::new(client_id, via.host(addr), addr.port());
    options.set_transport(via.transport());
    let (client, mut events) = AsyncClient::new(options, 10);
    let run = async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break,
                Ok(_) => {}
                Err(ConnectionError::ConnectionRefused(code)) => return Err(format!("refused: {code:?}")),
                Err(e) => return Err(format!("connection failed: {e}")),
            }
        }
        client.publish(topic, rumqttc::QoS::AtLeastOnce, false, payload.to_string()).await.unwrap();
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => break,
                Ok(_) => {}
                Err(e) => return Err(format!("after CONNACK: {e}")),
            }
        }
        client.disconnect().await.unwrap();
        while events.poll().await.is_ok() {}
        Ok(())
    };
    tokio::time::timeout(WAIT * 2, run).await.map_err(|_| "timed out".to_string())?
}

/// Runs mosquitto_pub or mosquitto_sub with `args`; stdout, or the failure.
fn mosquitto(tool: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(tool)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{tool}: {e} (tests/run installs mosquitto-clients)"));
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{tool} {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

/// A TLS, WS and WSS broker with client certificates accepted (not required).
fn tls_broker(tmp: &Path, pki: &Pki, require_client_cert: bool) -> BrokerProcess {
    let toml = format!(
        "tls_listen = \"127.0.0.1:0\"\nws_listen = \"127.0.0.1:0\"\nwss_listen = \"127.0.0.1:0\"\n{}",
        pki.toml(require_client_cert)
    );
    BrokerProcess::start_with_config(&tmp.join("data"), &toml)
}

#[test]
fn tls_and_websocket_listeners_carry_mqtt_3_and_5_end_to_end() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    pki.client("dev-mosq");
    pki.client("dev-rumqttc");
    let broker = tls_broker(tmp.path(), &pki, false);
    let (mqtts, ws, wss) = (broker.listeners["mqtts"], broker.listeners["ws"], broker.listeners["wss"]);
    assert!(mqtts.ip().is_loopback() && ws.port() != wss.port());

    // A plain-TCP MQTT 5 subscriber sees what arrives on every transport.
    let mut sub = connect5(broker.mqtt, "watcher");
    assert_eq!(subscribe5(&mut sub, 1, "hw/#", QoS::AtLeastOnce), vec![1]);

    let port = mqtts.port().to_string();
    let (ca, crt, key) = (pki.path("ca.crt"), pki.path("dev-mosq.crt"), pki.path("dev-mosq.key"));
    let tls_args = ["-h", "localhost", "-p", &port, "--cafile", &ca, "--cert", &crt, "--key", &key, "-i", "dev-mosq"];
    let publish = [&tls_args[..], &["-t", "hw/mosquitto-tls", "-m", "from mosquitto over TLS", "-q", "1"]].concat();
    mosquitto("mosquitto_pub", &publish).unwrap();

    let rt = runtime();
    let with_cert = pki.client_config(Some("dev-rumqttc"));
    let no_cert = pki.client_config(None);
    rt.block_on(async {
        publish_v5(mqtts, Via::Tls(with_cert.clone()), "dev-rumqttc", "hw/v5-tls", "v5 over TLS").await.unwrap();
        publish_v4(mqtts, Via::Tls(no_cert.clone()), "anyone-4", "hw/v4-tls", "v4 over TLS, no cert").await.unwrap();
        publish_v5(ws, Via::Ws, "web-5", "hw/v5-ws", "v5 over ws").await.unwrap();
        publish_v4(ws, Via::Ws, "web-4", "hw/v4-ws", "v4 over ws").await.unwrap();
        publish_v5(wss, Via::Wss(no_cert.clone()), "web-5s", "hw/v5-wss", "v5 over wss").await.unwrap();
        publish_v4(wss, Via::Wss(with_cert.clone()), "dev-rumqttc", "hw/v4-wss", "v4 over wss").await.unwrap();
    });
    let mut got: Vec<(String, String)> = (0..7)
        .map(|n| {
            let publish = sub.next_publish5(WAIT).unwrap_or_else(|| panic!("only {n} of 7 messages arrived"));
            (String::from_utf8(publish.topic.to_vec()).unwrap(), String::from_utf8(publish.payload.to_vec()).unwrap())
        })
        .collect();
    got.sort();
    let topics: Vec<&str> = got.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        topics,
        ["hw/mosquitto-tls", "hw/v4-tls", "hw/v4-ws", "hw/v4-wss", "hw/v5-tls", "hw/v5-ws", "hw/v5-wss"]
    );
    assert!(got.iter().any(|(_, p)| p == "from mosquitto over TLS"));

    // mosquitto_sub over TLS receives a retained message published over ws.
    rt.block_on(async {
        use rumqttc::v5::{AsyncClient, Event, MqttOptions};
        let mut options = MqttOptions::new("web-retain", format!("ws://127.0.0.1:{}/mqtt", ws.port()), ws.port());
        options.set_transport(rumqttc::Transport::Ws);
        let (client, mut events) = AsyncClient::new(options, 10);
        client.publish("hw/state", rumqttc::v5::mqttbytes::QoS::AtLeastOnce, true, "retained via ws").await.unwrap();
        loop {
            if let Event::Incoming(mq5::Packet::PubAck(_)) = events.poll().await.unwrap() {
                break;
            }
        }
    });
    let subscribe = [&tls_args[..], &["-t", "hw/state", "-C", "1", "-W", "10"]].concat();
    assert_eq!(mosquitto("mosquitto_sub", &subscribe).unwrap().trim(), "retained via ws");
    assert!(broker.stop().success());
}

#[test]
fn a_client_certificate_binds_the_client_id_and_can_be_required() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    pki.client("dev-a");
    let broker = tls_broker(tmp.path(), &pki, false);
    let mqtts = broker.listeners["mqtts"];
    let rt = runtime();
    let cert_a = pki.client_config(Some("dev-a"));
    rt.block_on(async {
        publish_v5(mqtts, Via::Tls(cert_a.clone()), "dev-a", "id/ok", "mine").await.unwrap();
        let err = publish_v5(mqtts, Via::Tls(cert_a.clone()), "dev-b", "id/x", "not mine").await.unwrap_err();
        assert!(err.contains("NotAuthorized"), "MQTT 5 gets 0x87 for someone else's id: {err}");
        let err = publish_v4(mqtts, Via::Tls(cert_a.clone()), "dev-b", "id/x", "not mine").await.unwrap_err();
        assert!(err.contains("NotAuthorized"), "3.1.1 gets 0x05: {err}");
        // Over wss the same rule holds.
        let wss = broker.listeners["wss"];
        let err = publish_v5(wss, Via::Wss(cert_a.clone()), "dev-c", "id/x", "not mine").await.unwrap_err();
        assert!(err.contains("NotAuthorized"), "{err}");
    });
    assert_logged(&broker, "its client certificate names \"dev-a\"");
    assert!(broker.stop().success());

    // With client certificates required, a client without one fails the
    // TLS handshake; with one it gets in.
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    pki.client("dev-a");
    let broker = tls_broker(tmp.path(), &pki, true);
    let mqtts = broker.listeners["mqtts"];
    rt.block_on(async {
        let err = publish_v5(mqtts, Via::Tls(pki.client_config(None)), "dev-a", "req/x", "no cert").await.unwrap_err();
        assert!(err.contains("connection failed") || err.contains("after CONNACK"), "{err}");
        publish_v5(mqtts, Via::Tls(pki.client_config(Some("dev-a"))), "dev-a", "req/ok", "cert").await.unwrap();
    });
    // A certificate from another CA is refused too.
    let other = tempfile::tempdir().unwrap();
    let stranger = Pki::new(other.path());
    stranger.client("dev-a");
    let mut mixed = (*pki.client_config(None)).clone();
    mixed.client_auth_cert_resolver = stranger.client_config(Some("dev-a")).client_auth_cert_resolver.clone();
    rt.block_on(async {
        let err = publish_v5(mqtts, Via::Tls(Arc::new(mixed)), "dev-a", "req/x", "forged").await.unwrap_err();
        assert!(err.contains("connection failed") || err.contains("after CONNACK"), "{err}");
    });
    assert!(broker.stop().success());
}

/// Sends an HTTP upgrade request to `addr`; the response head.
fn websocket_upgrade(addr: SocketAddr, protocol: Option<&str>) -> String {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let protocol = protocol.map(|p| format!("Sec-WebSocket-Protocol: {p}\r\n")).unwrap_or_default();
    write!(
        stream,
        "GET /mqtt HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{protocol}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head).into_owned()
}

#[test]
fn websocket_clients_must_offer_the_mqtt_subprotocol() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with_config(&tmp.path().join("data"), "ws_listen = \"127.0.0.1:0\"\n");
    let ws = broker.listeners["ws"];
    let refused = websocket_upgrade(ws, None);
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    let refused = websocket_upgrade(ws, Some("chat"));
    assert!(refused.starts_with("HTTP/1.1 400"), "{refused}");
    let accepted = websocket_upgrade(ws, Some("chat, mqtt"));
    assert!(accepted.starts_with("HTTP/1.1 101"), "{accepted}");
    assert!(accepted.to_ascii_lowercase().contains("sec-websocket-protocol: mqtt"), "{accepted}");
    // Plain MQTT is unaffected by the extra listener.
    let (_conn, connack) = try_connect5(broker.mqtt, "plain", None);
    assert_eq!(connack.connack_code(), 0);
    let stderr = broker.stderr.clone();
    let status = broker.stop();
    assert!(status.success(), "{status:?}\n{}", stderr.lock().unwrap());
}

#[test]
fn failed_logins_are_rate_limited_per_source_address() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    sealmq(&data, &["device", "add", "locked", "--policy", "legacy", "--password", "right"]).ok();
    let toml = "[limits]\nmax_failed_logins_per_minute = 3\n";
    let broker = BrokerProcess::start_with_config(&data, toml);
    // The right password works, and does not count against the address.
    let _ok = connect5_pw(broker.mqtt, "locked", Some("right"));
    for attempt in 0..3 {
        let (_, connack) = try_connect5(broker.mqtt, "locked", Some("wrong"));
        assert_eq!(connack.connack_code(), BAD_PASSWORD_V5, "attempt {attempt}");
    }
    // Now even the right password is refused from this address, without
    // the password being checked, for both protocol versions.
    let (_, connack) = try_connect5(broker.mqtt, "locked", Some("right"));
    assert_eq!(connack.connack_code(), CONNECTION_RATE_EXCEEDED_V5);
    let (_, connack) = try_connect4(broker.mqtt, "locked", Some("right"));
    assert_eq!(connack.connack_code(), SERVER_UNAVAILABLE_V4);
    assert_logged(&broker, "too many failed logins from this address");
    // A connection that was already in is not affected.
    let mut ok = _ok;
    assert!(ok.ping().is_ok());
    assert!(broker.stop().success());
}

#[test]
fn connections_past_the_limit_are_refused_with_server_busy_and_others_carry_on() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with_config(&tmp.path().join("data"), "[limits]\nmax_connections = 3\n");
    let mut sub = connect5(broker.mqtt, "sub");
    assert_eq!(subscribe5(&mut sub, 1, "busy/#", QoS::AtLeastOnce), vec![1]);
    let mut publisher = connect5(broker.mqtt, "pub");
    let _third = connect5(broker.mqtt, "third");
    let (_, connack) = try_connect5(broker.mqtt, "fourth", None);
    assert_eq!(connack.connack_code(), SERVER_BUSY_V5);
    let (_, connack) = try_connect4(broker.mqtt, "fourth-4", None);
    assert_eq!(connack.connack_code(), SERVER_UNAVAILABLE_V4);
    publisher.send5(&publish5_packet("busy/x", QoS::AtLeastOnce, 1, b"still here", false, vec![])).unwrap();
    assert_eq!(publisher.expect(kind::PUBACK).ack_reason(), 0);
    assert_eq!(sub.next_publish5(WAIT).unwrap().payload.as_ref(), b"still here");
    // A slot freed is a slot usable.
    drop(_third);
    let deadline = Instant::now() + WAIT;
    loop {
        let (_conn, connack) = try_connect5(broker.mqtt, "fourth", None);
        if connack.connack_code() == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "the freed slot was never reused");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(broker.stop().success());
}

#[test]
fn a_client_over_its_publish_rate_is_slowed_down_and_loses_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start_with_config(&tmp.path().join("data"), "[limits]\nmax_publish_rate = 20\n");
    let mut sub = connect5(broker.mqtt, "sub");
    assert_eq!(subscribe5(&mut sub, 1, "rate/#", QoS::AtLeastOnce), vec![1]);
    let mut fast = connect5(broker.mqtt, "fast");
    let started = Instant::now();
    for n in 0..60u16 {
        fast.send5(&publish5_packet("rate/x", QoS::AtMostOnce, 0, n.to_string().as_bytes(), false, vec![])).unwrap();
    }
    let received: Vec<String> = (0..60)
        .map(|n| {
            let publish = sub.next_publish5(WAIT).unwrap_or_else(|| panic!("message {n} never arrived"));
            String::from_utf8(publish.payload.to_vec()).unwrap()
        })
        .collect();
    let elapsed = started.elapsed();
    assert_eq!(received, (0..60).map(|n| n.to_string()).collect::<Vec<_>>(), "all of them, in order");
    // 20 at once (the burst), then 20 per second: at least ~2 s for 60. A
    // lower bound only, so a slow machine cannot make it fail.
    assert!(elapsed >= Duration::from_millis(1800), "60 publishes at 20/s took only {elapsed:?}");
    // Another client is not held back by the fast one's budget.
    let mut other = connect5(broker.mqtt, "other");
    other.send5(&publish5_packet("rate/y", QoS::AtLeastOnce, 1, b"me too", false, vec![])).unwrap();
    assert_eq!(other.expect(kind::PUBACK).ack_reason(), 0);
    assert!(broker.stop().success());
}

#[test]
fn protocol_limits_are_answered_with_their_reason_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let toml = "[limits]\nmax_subscriptions = 2\nmax_topic_length = 32\nmax_topic_levels = 4\nmax_inflight = 2\n";
    let broker = BrokerProcess::start_with_config(&tmp.path().join("data"), toml);
    let mut conn = connect5(broker.mqtt, "limited");
    assert_eq!(subscribe5(&mut conn, 1, "a/1", QoS::AtLeastOnce), vec![1]);
    assert_eq!(subscribe5(&mut conn, 2, "a/2", QoS::AtLeastOnce), vec![1]);
    assert_eq!(subscribe5(&mut conn, 3, "a/3", QoS::AtLeastOnce), vec![0x97], "quota exceeded");
    assert_eq!(subscribe5(&mut conn, 4, &"x".repeat(40), QoS::AtLeastOnce), vec![0x8F], "filter too long");
    // A topic name over the length or level limits is a malformed
    // publish for this broker: DISCONNECT 0x90 (topic name invalid).
    for topic in ["l/1/2/3/4".to_string(), "t".repeat(33)] {
        let mut conn = connect5(broker.mqtt, "long-topics");
        conn.send5(&publish5_packet(&topic, QoS::AtLeastOnce, 5, b"x", false, vec![])).unwrap();
        let frames = conn.expect_closed(WAIT);
        assert!(
            frames.iter().any(|f| f.kind() == kind::DISCONNECT && f.disconnect_reason() == 0x90),
            "topic {topic:?}: expected DISCONNECT 0x90 among {frames:?}"
        );
    }
    // Topics within the limits still work on a fresh connection.
    let mut fine = connect5(broker.mqtt, "fine");
    fine.send5(&publish5_packet("l/1/2/3", QoS::AtLeastOnce, 6, b"x", false, vec![])).unwrap();
    assert_eq!(fine.expect(kind::PUBACK).ack_reason(), 0);
    // Over the Receive Maximum the broker announced (2): 0x93.
    let mut flood = connect5(broker.mqtt, "flood");
    for pkid in 1..=20 {
        if flood.send5(&publish5_packet("f/x", QoS::AtLeastOnce, pkid, b"x", false, vec![])).is_err() {
            break;
        }
    }
    let frames = flood.expect_closed(WAIT);
    assert!(
        frames.iter().any(|f| f.kind() == kind::DISCONNECT && f.disconnect_reason() == 0x93),
        "expected DISCONNECT 0x93 among {frames:?}"
    );
    assert!(broker.stop().success());
}

#[test]
fn the_broker_listens_on_its_configured_ports_and_nowhere_else() {
    // Routing is in process: nothing reaches subscribers but through the
    // gateway's own listeners (no router port to find on loopback).
    let tmp = tempfile::tempdir().unwrap();
    let broker = BrokerProcess::start(&tmp.path().join("data"), &[]);
    let mut ports = listening_ports(broker.pid());
    ports.sort_unstable();
    let mut expected = vec![broker.mqtt.port(), broker.http.port()];
    expected.sort_unstable();
    assert_eq!(ports, expected, "listening TCP ports of the broker process");
    assert!(broker.stop().success());
}

/// The TCP ports process `pid` listens on: its socket descriptors matched
/// against the kernel's table of listening sockets.
fn listening_ports(pid: u32) -> Vec<u16> {
    let inodes: std::collections::HashSet<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .filter_map(|target| {
            let target = target.to_string_lossy().into_owned();
            Some(target.strip_prefix("socket:[")?.strip_suffix(']')?.to_string())
        })
        .collect();
    let mut ports = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else { continue };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            // local_address is HEXIP:HEXPORT; st 0A is LISTEN; field 9 the inode.
            if fields.len() > 9 && fields[3] == "0A" && inodes.contains(fields[9]) {
                let port = fields[1].rsplit(':').next().unwrap();
                ports.push(u16::from_str_radix(port, 16).unwrap());
            }
        }
    }
    ports
}

#[test]
fn unusable_certificates_stop_the_start_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let pki = Pki::new(tmp.path());
    let config = tmp.path().join("broker.toml");
    let serve = ["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0", "--config", config.to_str().unwrap()];
    // A missing key file, then a key that is not PEM: exit 2, naming the file.
    let missing = tmp.path().join("missing.key");
    let not_pem = tmp.path().join("garbage.key");
    std::fs::write(&not_pem, "not a key").unwrap();
    for key in [&missing, &not_pem] {
        let toml =
            format!("tls_listen = \"127.0.0.1:0\"\n[tls]\ncert = {:?}\nkey = {:?}\n", pki.path("server.crt"), key);
        std::fs::write(&config, toml).unwrap();
        let run = sealmq(&tmp.path().join("data"), &serve);
        assert_eq!(run.code, 2, "{run:?}");
        assert!(run.stderr.contains(key.to_str().unwrap()), "the error names {key:?}: {}", run.stderr);
    }
}
