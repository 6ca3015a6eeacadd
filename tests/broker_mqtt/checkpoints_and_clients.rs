//! `$SYS` checkpoints, mosquitto clients, clean shutdown and the audit
//! trail, HTTP.

use super::*;

// 6. $SYS checkpoints
// ---------------------------------------------------------------------------

/// Opens a checkpoint note with the broker's verifier key.
#[track_caller]
fn open_note(vkey: &str, note: &[u8]) -> Checkpoint {
    let vkey: VerifierKey = vkey.parse().unwrap();
    let text = std::str::from_utf8(note).expect("a note is text");
    assert!(text.starts_with(&format!("{}\n", vkey.name())), "a note starts with the origin line: {text:?}");
    assert!(text.contains("\n\n— "), "a note has a signature line: {text:?}");
    vkey.open(text).unwrap_or_else(|e| panic!("the note does not verify ({e}): {text:?}"))
}

#[test]
fn checkpoints_are_published_on_sys_and_hash_does_not_match_sys_topics() {
    run(async {
        let (_tmp, broker, _logs) = start();
        let mut hash = V4::connect(broker.mqtt, "sys-hash").await;
        hash.subscribe("#", 1).await;
        let mut publisher = V5::connect(broker.mqtt, "sys-pub").await;
        publisher.publish("sys/one", 1, false, "1", &[]).await;

        let mut sys = V4::connect(broker.mqtt, "sys-watch").await;
        sys.subscribe("$SYS/#", 1).await;
        let m = sys.recv().await;
        assert_eq!(m.topic, "$SYS/sealmq/checkpoint");
        let first = open_note(&broker.vkey, &m.payload);
        assert_eq!(first.size, 1, "the first block holds the first record");

        // More records: a newer checkpoint follows within the block interval.
        let started = Instant::now();
        for n in 2..=4 {
            publisher.publish(&format!("sys/{n}"), 1, false, n.to_string(), &[]).await;
        }
        let newer = loop {
            let m = sys.recv().await;
            assert_eq!(m.topic, "$SYS/sealmq/checkpoint");
            let note = open_note(&broker.vkey, &m.payload);
            assert!(note.size >= first.size, "checkpoints only grow");
            if note.size == 4 {
                break note;
            }
        };
        assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
        assert_ne!(newer.root, first.root);

        // A broker topic cannot be published to by clients.
        publisher.client.publish("$SYS/sealmq/checkpoint", Q5::AtLeastOnce, true, "forged").await.unwrap();
        let ack = publisher.puback().await;
        assert_eq!(ack.reason, p5::PubAckReason::NotAuthorized, "{ack:?}");

        // `#` never matched a `$` topic; a new `$SYS` subscriber gets the latest, retained.
        let to_hash = hash.publishes_within(QUIET).await;
        let topics: Vec<&str> = to_hash.iter().map(|m| m.topic.as_str()).collect();
        assert_eq!(topics, ["sys/one", "sys/2", "sys/3", "sys/4"]);
        assert!(sys.publishes_within(Duration::ZERO).await.is_empty(), "the forged publish was delivered");
        let mut late = V5::connect(broker.mqtt, "sys-late").await;
        late.subscribe("$SYS/sealmq/checkpoint", 0).await;
        let m = late.recv().await;
        assert!(m.retain, "the checkpoint is retained");
        assert_eq!(open_note(&broker.vkey, &m.payload), newer);
        publisher.disconnect().await;
        stop_cleanly(broker);
    });
}

// ---------------------------------------------------------------------------
// 7. mosquitto clients
// ---------------------------------------------------------------------------

/// Runs a command with a deadline.
fn run_with_timeout(command: &mut Command, limit: Duration) -> Output {
    let mut child = command.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("{command:?} did not finish within {limit:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn mosquitto_pub_and_sub_work_as_with_any_broker() {
    run(async {
        let (_tmp, broker, _logs) = start();
        let port = broker.mqtt_port();
        let mut messages = Vec::new();
        for version in ["mqttv311", "mqttv5"] {
            for qos in 0..3u8 {
                // Lengths differ, so each debug line can be paired with its message.
                let message = format!("hello {version} q{qos}{}", "!".repeat(usize::from(qos) * 3));
                messages.push(("some/topic".to_string(), message, version, qos));
            }
            messages.push(("é/x".to_string(), format!("bonjour {version}"), version, 1));
        }
        let count = messages.len().to_string();

        // Two subscribers, one per version; `-d` shows the SUBACK and each PUBLISH's QoS.
        let mut subs = Vec::new();
        for version in ["mqttv311", "mqttv5"] {
            // Line-buffered, so the SUBACK line shows up while it runs.
            let mut child = Command::new("stdbuf")
                .args([
                    "-oL",
                    "mosquitto_sub",
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &port,
                    "-V",
                    version,
                    "-q",
                    "2",
                    "-t",
                    "#",
                    "-v",
                    "-d",
                ])
                .args(["-C", &count, "-W", "20"])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .expect("mosquitto_sub runs");
            let (tx, rx) = std::sync::mpsc::channel::<String>();
            let stdout = child.stdout.take().unwrap();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    let _ = tx.send(line);
                }
            });
            let mut seen = Vec::new();
            let deadline = std::time::Instant::now() + WAIT;
            loop {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                let line = rx.recv_timeout(left).unwrap_or_else(|_| panic!("{version}: no SUBACK: {seen:?}"));
                let subscribed = line.contains("received SUBACK");
                seen.push(line);
                if subscribed {
                    break;
                }
            }
            subs.push((version, child, rx, seen));
        }

        for (topic, message, version, qos) in &messages {
            let out = run_with_timeout(
                Command::new("mosquitto_pub").args(["-h", "127.0.0.1", "-p", &port, "-V", version]).args([
                    "-q",
                    &qos.to_string(),
                    "-t",
                    topic,
                    "-m",
                    message,
                ]),
                Duration::from_secs(10),
            );
            assert!(out.status.success(), "mosquitto_pub {version} q{qos}: {}", String::from_utf8_lossy(&out.stderr));
        }

        for (version, mut child, rx, mut lines) in subs {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            let status = loop {
                if let Some(status) = child.try_wait().unwrap() {
                    break status;
                }
                if std::time::Instant::now() > deadline {
                    let _ = child.kill();
                    let _ = child.wait();
                    lines.extend(rx.try_iter());
                    panic!("mosquitto_sub {version} did not get {count} messages: {lines:#?}");
                }
                std::thread::sleep(Duration::from_millis(10));
            };
            std::thread::sleep(Duration::from_millis(50));
            lines.extend(rx.try_iter());
            assert!(status.success(), "mosquitto_sub {version}: {status:?}: {lines:#?}");
            // Pair each "received PUBLISH (d0, qN, …, 'topic', … (L bytes))" debug
            // line with its message line, which for QoS 2 comes only after PUBREL.
            let mut received = Vec::new();
            let mut pending: Vec<(String, usize, u8)> = Vec::new();
            for line in &lines {
                if line.starts_with("Client ") {
                    if line.contains("received PUBLISH") {
                        let at = line.find(", q").expect("a QoS in the debug line") + 3;
                        let qos = line[at..at + 1].parse::<u8>().unwrap();
                        let topic = line.split('\'').nth(1).expect("a topic in the debug line").to_string();
                        let len = line.rsplit('(').next().unwrap().split(' ').next().unwrap().parse().unwrap();
                        pending.push((topic, len, qos));
                    }
                } else if let Some(at) = pending.iter().position(|(topic, len, _)| {
                    line.strip_prefix(topic.as_str())
                        .and_then(|rest| rest.strip_prefix(' '))
                        .is_some_and(|m| m.len() == *len)
                }) {
                    received.push((line.clone(), pending.remove(at).2));
                }
            }
            assert!(pending.is_empty(), "PUBLISHes without a printed message: {pending:?}: {lines:#?}");
            let mut expected: Vec<(String, u8)> =
                messages.iter().map(|(topic, message, _, qos)| (format!("{topic} {message}"), *qos)).collect();
            expected.sort();
            received.sort();
            assert_eq!(received, expected, "mosquitto_sub {version}");
        }
        stop_cleanly(broker);
    });
}

// ---------------------------------------------------------------------------
// 8. Clean shutdown and the audit trail
// ---------------------------------------------------------------------------

#[test]
fn after_a_clean_stop_the_log_verifies_and_every_delivery_is_provable() {
    run(async {
        let (tmp, broker, _logs) = start();
        let banner_vkey = broker.vkey.clone();
        let mut sub = V5::connect(broker.mqtt, "audit-sub").await;
        sub.subscribe("audit/#", 2).await;
        let mut pub5 = V5::connect(broker.mqtt, "audit-pub5").await;
        let mut pub4 = V4::connect(broker.mqtt, "audit-pub4").await;
        let mut sent = Vec::new();
        for n in 0..6u8 {
            let qos = n % 3;
            let topic = format!("audit/{n}/é");
            let body = payload(n);
            if n % 2 == 0 {
                pub5.publish(&topic, qos, n == 4, body.clone(), &[]).await;
                sent.push((topic, body, qos, n == 4, "audit-pub5"));
            } else {
                pub4.publish(&topic, qos, false, body.clone()).await;
                sent.push((topic, body, qos, false, "audit-pub4"));
            }
        }
        let mut delivered = BTreeMap::new();
        for _ in 0..sent.len() {
            let m = sub.recv().await;
            let index = the_index(&user_properties(m.properties.as_ref()));
            assert!(delivered.insert(topic5(&m), (index, m.payload.to_vec())).is_none(), "twice: {m:?}");
        }
        pub5.disconnect().await;
        pub4.disconnect().await;
        // Deliberately still connected at shutdown.
        let _still_connected = sub;
        stop_cleanly(broker);

        let data = tmp.path().join("data");
        assert_eq!(common::vkey(&data), banner_vkey);
        let verified = verify_ok(&data);
        assert_eq!(verified.records, sent.len() as u64, "one record per publish: {verified:?}");
        assert_eq!(verified.unsealed, 0, "a clean stop seals the last block: {verified:?}");
        assert_eq!(verified.tree_size, sent.len() as u64);
        let indices: BTreeSet<u64> = delivered.values().map(|(i, _)| *i).collect();
        assert_eq!(indices, (0..sent.len() as u64).collect(), "every record was delivered once with its index");
        for (topic, body, qos, retain, device) in &sent {
            let (index, got) = &delivered[topic];
            assert!(got == body, "{topic}: payload changed");
            let record = prove(&data, tmp.path(), &banner_vkey, *index);
            assert_record(&record, device, topic, body, *qos, *retain);
        }
        // Nothing past the last record.
        let past = sealmq(&data, &["audit", "prove", &sent.len().to_string()]);
        assert_ne!(past.code, 0, "a proof past the end: {}", past.stdout);
    });
}

// ---------------------------------------------------------------------------
// 9. HTTP
// ---------------------------------------------------------------------------

#[test]
fn http_serves_the_same_checkpoint_as_the_cli_and_sys_and_the_vkey() {
    run(async {
        let (tmp, broker, _logs) = start();
        let data = tmp.path().join("data");
        let (status, body) = http_get(broker.http, "/v1/vkey").await;
        assert_eq!((status, body.as_str()), (200, format!("{}\n", broker.vkey).as_str()));
        let (status, _) = http_get(broker.http, "/v1/checkpoint").await;
        assert_eq!(status, 404, "no block is sealed in a fresh log");

        let mut publisher = V5::connect(broker.mqtt, "http-pub").await;
        publisher.publish("http/x", 1, false, "x", &[]).await;
        publisher.publish("http/y", 2, false, "y", &[]).await;
        let deadline = Instant::now() + WAIT;
        let note = loop {
            let (status, body) = http_get(broker.http, "/v1/checkpoint").await;
            if status == 200 && open_note(&broker.vkey, body.as_bytes()).size == 2 {
                break body;
            }
            assert!(Instant::now() < deadline, "no checkpoint of size 2 over HTTP: {status} {body:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(sealmq(&data, &["audit", "checkpoint"]).ok(), note, "HTTP and the CLI disagree");
        let mut sys = V5::connect(broker.mqtt, "http-sys").await;
        sys.subscribe("$SYS/sealmq/checkpoint", 0).await;
        let m = sys.recv().await;
        assert_eq!(std::str::from_utf8(&m.payload).unwrap(), note, "HTTP and $SYS disagree");
        let (status, unknown) = http_get(broker.http, "/v1/nothing-here").await;
        assert_eq!(status, 404, "{unknown}");
        publisher.disconnect().await;
        stop_cleanly(broker);
        assert_eq!(sealmq(&data, &["audit", "checkpoint"]).ok(), note, "nothing to seal at a clean stop");
    });
}

// ---------------------------------------------------------------------------
