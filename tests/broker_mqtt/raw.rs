//! Hand-encoded packets, raw connections, HTTP, proofs: for tests where a
//! client must misbehave or the log must be checked from outside.

use super::*;

pub(super) fn put_str(out: &mut Vec<u8>, s: &[u8]) {
    out.extend_from_slice(&u16::try_from(s.len()).unwrap().to_be_bytes());
    out.extend_from_slice(s);
}

/// A packet: first byte, remaining length (variable byte integer), body.
pub(super) fn frame(first: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![first];
    let mut len = body.len();
    loop {
        let mut byte = u8::try_from(len % 128).unwrap();
        len /= 128;
        if len > 0 {
            byte |= 0x80;
        }
        out.push(byte);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// A clean-session CONNECT (protocol level 4 or 5) with a will, not retained.
pub(super) fn connect_with_will(
    level: u8,
    client_id: &str,
    will_topic: &str,
    will_payload: &[u8],
    will_qos: u8,
) -> Vec<u8> {
    connect_with_will_keep_alive(level, client_id, will_topic, will_payload, will_qos, 30)
}

/// As [`connect_with_will`], with a keep-alive in seconds.
pub(super) fn connect_with_will_keep_alive(
    level: u8,
    client_id: &str,
    will_topic: &str,
    will_payload: &[u8],
    will_qos: u8,
    keep_alive: u16,
) -> Vec<u8> {
    let mut body = Vec::new();
    put_str(&mut body, b"MQTT");
    body.push(level);
    body.push(0x02 | 0x04 | (will_qos << 3)); // clean session, will flag, will QoS
    body.extend_from_slice(&keep_alive.to_be_bytes());
    if level == 5 {
        body.push(0); // no CONNECT properties
    }
    put_str(&mut body, client_id.as_bytes());
    if level == 5 {
        body.push(0); // no will properties
    }
    put_str(&mut body, will_topic.as_bytes());
    put_str(&mut body, will_payload);
    frame(0x10, &body)
}

/// Connects a raw socket, sends `connect` and checks the CONNACK is a success.
pub(super) async fn raw_connect(addr: SocketAddr, connect: &[u8]) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(connect).await.unwrap();
    let mut head = [0u8; 2];
    tokio::time::timeout(WAIT, stream.read_exact(&mut head)).await.expect("CONNACK in time").unwrap();
    assert_eq!(head[0], 0x20, "expected CONNACK, got {head:?}");
    assert!(head[1] < 0x80, "CONNACK longer than expected");
    let mut rest = vec![0u8; usize::from(head[1])];
    tokio::time::timeout(WAIT, stream.read_exact(&mut rest)).await.expect("CONNACK in time").unwrap();
    assert_eq!(rest[1], 0, "CONNACK refused: {rest:?}");
    stream
}

// ---- HTTP -----------------------------------------------------------------

/// A plain HTTP/1.1 GET; status and body.
pub(super) async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw)).await.expect("an HTTP response in time").unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").expect("an HTTP header");
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let mut body = raw[split + 4..].to_vec();
    let status = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("an HTTP status");
    if head.contains("transfer-encoding: chunked") {
        let mut decoded = Vec::new();
        let mut rest = &body[..];
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n").expect("a chunk size line");
            let size_text = String::from_utf8_lossy(&rest[..line_end]).to_string();
            let size = usize::from_str_radix(size_text.split(';').next().unwrap().trim(), 16).unwrap();
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            decoded.extend_from_slice(&rest[..size]);
            rest = &rest[size + 2..];
        }
        body = decoded;
    }
    (status, String::from_utf8(body).expect("a UTF-8 body"))
}

// ---- The log, from outside ---------------------------------------------------

/// `audit prove INDEX`, checked by `audit check-proof` with `vkey` and by
/// [`ProofBundle::check`]; the proved publish record.
pub(super) fn prove(data: &Path, scratch: &Path, vkey: &str, index: u64) -> PublishRecord {
    let json = sealmq(data, &["audit", "prove", &index.to_string()]).ok();
    let file = scratch.join(format!("proof-{index}.json"));
    std::fs::write(&file, &json).unwrap();
    let ok = sealmq(scratch, &["audit", "check-proof", file.to_str().unwrap(), "--vkey", vkey]).ok();
    assert!(ok.starts_with(&format!("ok: record {index} ")), "check-proof: {ok}");
    let bundle = ProofBundle::from_json(&json).unwrap();
    assert_eq!(bundle.index, index);
    let proven = bundle.check(&vkey.parse::<VerifierKey>().unwrap()).unwrap();
    match proven.record {
        Record::Publish(record) => record,
        other => panic!("record {index} is not a publish: {other:?}"),
    }
}

/// Asserts what an unsigned (legacy) publish record says.
#[track_caller]
pub(super) fn assert_record(record: &PublishRecord, device: &str, topic: &str, payload: &[u8], qos: u8, retain: bool) {
    assert_eq!(record.device_id, device, "{record:?}");
    assert_eq!(record.topic, topic, "{record:?}");
    assert_eq!(record.payload_sha256, sha256(payload), "payload hash of {record:?}");
    assert_eq!(record.payload_len as usize, payload.len(), "{record:?}");
    assert_eq!(record.qos, qos, "{record:?}");
    assert_eq!(record.retain, retain, "{record:?}");
    assert!(record.signature.is_none(), "a legacy publish is logged unsigned: {record:?}");
}

/// A payload that is not text and not trivially short.
pub(super) fn payload(tag: u8) -> Vec<u8> {
    (0..3000u32).map(|i| u8::try_from((i * 7 + u32::from(tag)) % 256).unwrap()).collect()
}

// ---------------------------------------------------------------------------
