//! A gateway killed (issue 15, "Faults"): its log stays verifiable and its
//! checkpoints and proofs are still served, by `sealmq audit serve` over
//! its data directory, with no broker. Every record the gateway
//! acknowledged (PUBACK with its index) is under a served, signed
//! checkpoint and provable offline with the log's verifier key alone.

mod common;

use std::net::SocketAddr;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use common::broker::{BrokerProcess, spawn_piped};
use common::http::get;
use common::mqtt::{QoS, connect5, kind, publish5_packet};
use common::{sealmq, sealmq_bin, verify_ok};

/// Blocks sealed only every minute: what the gateway acknowledged before
/// it is killed is committed but not yet under any checkpoint.
const SLOW_SEALING: &str = "block_interval_ms = 60000\nblock_max_records = 100000\n";

/// `sealmq audit serve` on an ephemeral port: the process and its address.
struct AuditServer {
    child: Child,
    http: SocketAddr,
}

impl AuditServer {
    fn start(data: &std::path::Path) -> Self {
        let mut command = Command::new(sealmq_bin());
        command.args(["--data", data.to_str().unwrap(), "audit", "serve", "--http", "127.0.0.1:0"]);
        let (child, stderr, lines) = spawn_piped(command, "sealmq audit serve starts");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let line =
                lines.recv_timeout(left).unwrap_or_else(|_| panic!("no banner; stderr:\n{}", stderr.lock().unwrap()));
            if let Some(addr) = line.trim().strip_prefix("http      http://") {
                return Self { child, http: addr.parse().unwrap() };
            }
        }
    }

    /// The tree size of the served checkpoint (`/checkpoint`, C2SP
    /// tlog-checkpoint: origin line, then the size).
    fn checkpoint_size(&self) -> u64 {
        let (status, body) = get(self.http, "/checkpoint");
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let note = String::from_utf8(body).unwrap();
        note.lines().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for AuditServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Publishes `count` QoS 1 messages; the log index each PUBACK names.
fn publish_acknowledged(gateway: &BrokerProcess, client: &str, count: u16) -> Vec<u64> {
    let mut conn = connect5(gateway.mqtt, client);
    (1..=count)
        .map(|pkid| {
            conn.send5(&publish5_packet("plant/a", QoS::AtLeastOnce, pkid, b"21.5", false, vec![])).unwrap();
            let ack = conn.expect(kind::PUBACK);
            assert_eq!((ack.pkid(), ack.ack_reason()), (pkid, 0));
            ack.user_property("sealmq-index").expect("PUBACK names the record's index").parse().unwrap()
        })
        .collect()
}

/// Fetches `/v1/proof/{index}` and checks it offline with only `vkey`.
fn proof_checks_offline(server: &AuditServer, data: &std::path::Path, index: u64, vkey: &str) {
    let (status, bundle) = get(server.http, &format!("/v1/proof/{index}"));
    assert_eq!(status, 200, "proof of {index}: {}", String::from_utf8_lossy(&bundle));
    let file = data.with_extension(format!("proof-{index}.json"));
    std::fs::write(&file, bundle).unwrap();
    let checked = sealmq(data, &["audit", "check-proof", file.to_str().unwrap(), "--vkey", vkey]).ok();
    assert!(checked.starts_with(&format!("ok: record {index} ")), "check-proof names the record: {checked}");
}

#[test]
fn a_killed_gateways_acknowledged_records_are_sealed_served_and_provable() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("gateway");
    let gateway = BrokerProcess::start_with_config(&data, SLOW_SEALING);
    let vkey = gateway.vkey.clone();
    let indices = publish_acknowledged(&gateway, "sensor-1", 20);
    gateway.kill();

    let server = AuditServer::start(&data);
    let last = *indices.iter().max().unwrap();
    let size = server.checkpoint_size();
    assert!(size > last, "every acknowledged record (the last at index {last}) is under the served checkpoint");
    for index in [indices[0], last] {
        proof_checks_offline(&server, &data, index, &vkey);
    }
    let (status, _) = get(server.http, &format!("/v1/records/{last}"));
    assert_eq!(status, 200, "the record itself is served");
    // C2SP tlog-tiles: the level-0 tile of fewer than 256 hashes is partial.
    assert!(size < 256);
    let (status, tile) = get(server.http, &format!("/tile/0/000.p/{size}"));
    assert_eq!((status, tile.len()), (200, 32 * usize::try_from(size).unwrap()), "tlog-tiles readers are served too");
    verify_ok(&data);
}

#[test]
fn the_served_checkpoint_follows_a_gateway_restarted_on_the_same_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("gateway");
    let gateway = BrokerProcess::start(&data, &[]);
    publish_acknowledged(&gateway, "sensor-1", 5);
    gateway.kill();

    let server = AuditServer::start(&data);
    let before = server.checkpoint_size();
    // The audit server holds no lock: the gateway comes back beside it.
    let gateway = BrokerProcess::start(&data, &[]);
    let indices = publish_acknowledged(&gateway, "sensor-2", 5);
    let last = *indices.iter().max().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while server.checkpoint_size() <= last {
        assert!(Instant::now() < deadline, "the served checkpoint stayed at {before}, below index {last}");
        std::thread::sleep(Duration::from_millis(200));
    }
    proof_checks_offline(&server, &data, last, &gateway.vkey);
    drop(gateway);
}

#[test]
fn serving_a_directory_without_a_log_fails_clearly() {
    let tmp = tempfile::tempdir().unwrap();
    let failed = sealmq(tmp.path(), &["audit", "serve", "--http", "127.0.0.1:0"]).error();
    assert!(failed.contains("no log"), "{failed}");
}
