//! The broker on a data directory that fills up, or is read-only: it must
//! not acknowledge what it could not log, must say why, must keep running
//! and serving its other clients, and must acknowledge again once there is
//! space, with a log that verifies.
//!
//! The condition is real, not a mock: the data directory is on a small
//! tmpfs mounted for the test, filled with a file until the kernel answers
//! ENOSPC (or remounted read-only). Mounting needs root with CAP_SYS_ADMIN
//! (a VM, or a privileged container); without it the tests fail and say
//! so rather than skip. (A file-size limit, RLIMIT_FSIZE, would need no
//! privilege, but the kernel answers it with SIGXFSZ, whose default action
//! kills the broker: that is a different failure from a full disk.)

mod common;

use std::fs::File;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5;

use common::broker::BrokerProcess;
use common::logged;
use common::mqtt::{self, Conn, Got, QoS, QoS4, WAIT, kind};
use common::{base_command, verify_ok};

/// The test filesystem's size: room for the log, then filled by a file.
const FS_SIZE: &str = "16m";
/// Bytes of each publish while the disk fills: a few pages per record.
const PAYLOAD_LEN: usize = 4096;
/// Publishes the broker may still acknowledge after the filesystem is full:
/// SQLite reuses WAL space it had already allocated, so appends only start
/// failing once that is used up (a few MB at most).
const MAX_AFTER_FULL: usize = 5_000;
/// Refusals in a row that show the broker stopped acknowledging.
const REFUSALS: usize = 5;
/// The broker's block interval: long enough that records acknowledged just
/// before the disk fills up are still unsealed when it is full, so sealing
/// fails too.
const BLOCK_INTERVAL_MS: u64 = 3_000;
/// How soon after space is freed publishes must be acknowledged again.
const RECOVERY: Duration = Duration::from_secs(5);
/// The sentinel that ends the subscriber's collection.
const SENTINEL: &str = "sentinel";

/// A tmpfs mounted for the test, unmounted on drop (also when the test fails).
struct Tmpfs {
    dir: PathBuf,
}

impl Tmpfs {
    #[track_caller]
    fn mount(dir: &Path, size: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700"), "sealmq-test"])
            .arg(dir)
            .output()
            .unwrap_or_else(|e| panic!("cannot run `mount` (util-linux) to make a small filesystem for the test: {e}"));
        assert!(
            out.status.success(),
            "cannot mount a {size} tmpfs at {}: {}\nThis test fills a real filesystem; it needs root with \
             CAP_SYS_ADMIN (a VM, or a container run with --privileged or --cap-add SYS_ADMIN). It does not skip.",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Self { dir: dir.to_path_buf() }
    }

    /// Remounts read-only or read-write (only while no file is open for writing).
    #[track_caller]
    fn remount(&self, option: &str) {
        let out = Command::new("mount").args(["-o", &format!("remount,{option}")]).arg(&self.dir).output().unwrap();
        assert!(
            out.status.success(),
            "remount,{option} {}: {}",
            self.dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let unmounted = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
        if !unmounted {
            // Something still holds it (a failed test's broker): detach it so
            // the temporary directory can go; the kernel frees it when released.
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
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

/// Whether the broker logs a line holding every one of `words` within
/// [`WAIT`] (it logs before it answers, but its stderr reaches the test
/// through a thread).
fn logged_line(broker: &BrokerProcess, words: &[&str]) -> bool {
    let deadline = Instant::now() + WAIT + Duration::from_millis(BLOCK_INTERVAL_MS);
    loop {
        if broker.stderr.lock().unwrap().lines().any(|line| words.iter().all(|w| line.contains(w))) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// Writes a file at `path` until the filesystem has no space left; its size.
fn fill(path: &Path) -> u64 {
    let mut file = File::create(path).unwrap();
    let mut written = 0u64;
    // Large writes first, then page-sized ones for what is left.
    for chunk in [vec![0xA5u8; 1 << 20], vec![0xA5u8; 4096]] {
        loop {
            match file.write(&chunk) {
                Ok(n) => written += n as u64,
                Err(e) if e.kind() == ErrorKind::StorageFull => break,
                Err(e) => panic!("filling {}: {e}", path.display()),
            }
        }
    }
    written
}

/// A unique payload of [`PAYLOAD_LEN`] bytes.
fn payload(name: &str) -> String {
    format!("{name}:{}", "x".repeat(PAYLOAD_LEN - name.len() - 1))
}

/// Publishes at QoS 1 (MQTT 5) and waits for the PUBACK: its reason code and reason string.
#[track_caller]
fn publish5(conn: &mut Conn, pkid: u16, payload: &str) -> (u8, Option<String>) {
    let packet = mqtt::publish5_packet("full/load", QoS::AtLeastOnce, pkid, payload.as_bytes(), false, vec![]);
    conn.send5(&packet).expect("the MQTT 5 publisher's connection is open");
    let ack = conn.expect(kind::PUBACK);
    assert_eq!(ack.pkid(), pkid);
    let reason = ack.ack_reason();
    (reason, (reason >= 0x80).then(|| ack.reason_string()).flatten())
}

/// Receives (and acknowledges) publishes until [`SENTINEL`]; their
/// payloads, or an error if the connection closed first.
fn subscriber(mut conn: Conn) -> Result<Vec<String>, String> {
    let mut got = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while Instant::now() < deadline {
        match conn.next(Duration::from_millis(200)) {
            Got::Frame(frame) => {
                let v5::Packet::Publish(publish) = frame.v5() else {
                    panic!("subscriber: unexpected packet {frame:?}")
                };
                if publish.qos == QoS::AtLeastOnce {
                    conn.send5(&v5::Packet::PubAck(v5::PubAck::new(publish.pkid, None))).unwrap();
                }
                let payload = String::from_utf8_lossy(&publish.payload).into_owned();
                if payload == SENTINEL {
                    return Ok(got);
                }
                got.push(payload);
            }
            Got::Closed => return Err(format!("the subscriber was disconnected after {} deliveries", got.len())),
            Got::Timeout => {}
        }
    }
    Err("no sentinel within 120 s".into())
}

#[test]
fn full_disk_stops_acknowledgements_and_says_why() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&tmp.path().join("fs"), FS_SIZE);
    let data = fs.dir.join("data");
    let mut broker = BrokerProcess::start_with_config(&data, &format!("block_interval_ms = {BLOCK_INTERVAL_MS}\n"));
    let _logs = LogsOnPanic(Arc::clone(&broker.stderr));

    let mut sub = mqtt::connect5(broker.mqtt, "sub");
    assert_eq!(mqtt::subscribe5(&mut sub, 1, "full/#", QoS::AtLeastOnce), vec![1]);
    let subscriber = thread::spawn(move || subscriber(sub));
    let mut pub5 = mqtt::connect5(broker.mqtt, "pub5");
    let mut pub4 = mqtt::connect4(broker.mqtt, "pub4");

    // Acknowledged publishes, by payload; refused ones (reason ≥ 0x80 or no PUBACK).
    let mut acked: Vec<String> = Vec::new();
    let mut refused: Vec<String> = Vec::new();
    let mut pkid = 0u16;
    let mut next_pkid = || {
        pkid = pkid % u16::MAX + 1;
        pkid
    };

    // Space left: both protocol versions are acknowledged.
    let before = payload("before-5");
    assert_eq!(publish5(&mut pub5, next_pkid(), &before), (0, None));
    acked.push(before);
    let before = payload("before-4");
    pub4.send4(&mqtt::publish4_packet("full/load", QoS4::AtLeastOnce, 1, before.as_bytes(), false)).unwrap();
    assert_eq!(pub4.expect(kind::PUBACK).pkid(), 1);
    acked.push(before);

    let filler = fs.dir.join("filler");
    let filled = fill(&filler);

    // Full: appends fail once SQLite's already allocated space is used up.
    let (mut in_a_row, mut acked_while_full, mut reasons) = (0usize, 0usize, Vec::new());
    for n in 0.. {
        if in_a_row == REFUSALS {
            break;
        }
        assert!(n < MAX_AFTER_FULL, "{n} publishes after the disk filled up, and the broker still acknowledges");
        let payload = payload(&format!("full-{n}"));
        match publish5(&mut pub5, next_pkid(), &payload) {
            (0, None) => {
                acked.push(payload);
                acked_while_full += 1;
                in_a_row = 0;
            }
            (reason, why) => {
                assert_eq!(reason, 0x80, "reason code of a publish the log could not take ({why:?})");
                reasons.push(why.unwrap_or_default());
                refused.push(payload);
                in_a_row += 1;
            }
        }
    }
    let says_why = |why: &str| why.contains("the audit log is not accepting records") && why.contains("disk is full");
    assert!(says_why(&reasons[0]), "the first refusal does not say why: {:?}", reasons[0]);
    // MQTT 3.1.1 has no negative PUBACK: the broker closes the connection instead.
    let refused4 = payload("full-v4");
    pub4.send4(&mqtt::publish4_packet("full/load", QoS4::AtLeastOnce, 2, refused4.as_bytes(), false)).unwrap();
    let frames = pub4.expect_closed(WAIT);
    assert!(frames.iter().all(|f| f.kind() != kind::PUBACK), "a 3.1.1 publish was acknowledged: {frames:?}");
    refused.push(refused4);

    // The broker says why in its log, for the refused publishes. (Sealing
    // the records acknowledged before the disk filled up may fail too, or
    // not: a seal writes a block row and a few tree hashes, no payloads,
    // and may fit in WAL space SQLite already has. Where it fails, the
    // check of every failure line below wants the reason.)
    assert!(
        logged_line(&broker, &["could not log a publish", "disk is full"]),
        "the broker's log does not say why publishes were refused:\n{}",
        broker.stderr.lock().unwrap()
    );
    assert!(broker.is_running(), "the broker died when the disk filled up");
    assert!(!broker.stderr.lock().unwrap().contains("panicked"), "the broker panicked");

    // Space again: the same MQTT 5 connection is acknowledged again (soon;
    // at once is not required), a 3.1.1 client can reconnect and publish.
    std::fs::remove_file(&filler).unwrap();
    let freed = Instant::now();
    for n in 0.. {
        let after = payload(&format!("after-5-{n}"));
        match publish5(&mut pub5, next_pkid(), &after) {
            (0, None) => {
                acked.push(after);
                break;
            }
            (reason, why) => {
                refused.push(after);
                assert!(
                    freed.elapsed() < RECOVERY,
                    "still refused {:?} after space was freed ({n} tries): {reason:#04x} {why:?}",
                    freed.elapsed()
                );
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    // Every refusal and every logged failure said why; a later one blaming
    // something else would hide the cause.
    for why in &reasons {
        assert!(says_why(why), "a refusal on the full disk does not say why: {why:?}");
    }
    for line in broker.stderr.lock().unwrap().lines() {
        if line.contains("could not log a publish") || line.contains("sealing a block failed") {
            assert!(line.contains("disk is full"), "a failure on the full disk does not say why: {line}");
        }
    }
    let mut pub4 = mqtt::connect4(broker.mqtt, "pub4");
    let after = payload("after-4");
    pub4.send4(&mqtt::publish4_packet("full/load", QoS4::AtLeastOnce, 1, after.as_bytes(), false)).unwrap();
    assert_eq!(pub4.expect(kind::PUBACK).pkid(), 1);
    acked.push(after);

    // Sealing resumes without a restart: the records left pending are
    // covered by a checkpoint within a retry or two.
    let deadline = Instant::now() + RECOVERY;
    loop {
        let verified = verify_ok(&data);
        if verified.unsealed == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "records still unsealed {RECOVERY:?} after space was freed: {verified:?}");
        thread::sleep(Duration::from_millis(200));
    }

    // The subscriber stayed connected throughout and got exactly the acknowledged publishes.
    assert_eq!(publish5(&mut pub5, next_pkid(), SENTINEL), (0, None));
    let mut delivered = subscriber.join().unwrap().unwrap_or_else(|e| panic!("{e}"));
    let mut expected = acked.clone();
    expected.sort();
    delivered.sort();
    if delivered != expected {
        // Payloads are 4 KiB; name them by their prefix.
        let names = |all: &[String]| all.iter().map(|p| p.split(':').next().unwrap().to_string()).collect::<Vec<_>>();
        panic!("deliveries {:?} are not the acknowledged publishes {:?}", names(&delivered), names(&expected));
    }

    // A clean stop seals what the full disk left unsealed; the log verifies
    // and holds every acknowledged publish once, and no refused one.
    let stderr = Arc::clone(&broker.stderr);
    let status = broker.stop();
    assert!(status.success(), "the broker did not stop cleanly: {status:?}\n{}", stderr.lock().unwrap());
    let verified = verify_ok(&data);
    assert_eq!((verified.unsealed, verified.tree_size), (0, verified.records), "{verified:?}");
    let occurrences = logged::by_payload(&logged::publishes(&data));
    for payload in &acked {
        let found = occurrences.get(payload).map_or(0, Vec::len);
        assert_eq!(found, 1, "acknowledged {:?} is in the log {found} times", payload.split(':').next());
    }
    for payload in &refused {
        assert!(!occurrences.contains_key(payload), "refused {:?} is in the log", payload.split(':').next());
    }
    let sealing_failed = stderr.lock().unwrap().matches("sealing a block failed").count();
    eprintln!(
        "disk_full: filled {filled} bytes; {acked_while_full} publishes still acknowledged on the full disk, then \
         {} refused (reason 0x80: {:?}); {} acknowledged in all, {} records in the log; {sealing_failed} failed \
         seals logged",
        refused.len(),
        reasons.first(),
        acked.len(),
        verified.records,
    );
}

#[test]
fn read_only_data_directory_is_refused_at_start_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let fs = Tmpfs::mount(&tmp.path().join("fs"), FS_SIZE);
    let data = fs.dir.join("data");
    let broker = BrokerProcess::start(&data, &[]);
    let mut conn = mqtt::connect5(broker.mqtt, "pub");
    assert_eq!(publish5(&mut conn, 1, "before"), (0, None));
    drop(conn);
    assert!(broker.stop().success());

    fs.remount("ro");
    let mut child = base_command(&data)
        .args(["serve", "--listen", "127.0.0.1:0", "--http", "127.0.0.1:0"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the broker kept running on a read-only data directory");
        }
        thread::sleep(Duration::from_millis(20));
    };
    let out = child.wait_with_output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    common::assert_no_panic("sealmq serve", status.code().unwrap_or(-1), &stdout, &stderr);
    assert!(!status.success(), "serve on a read-only data directory exited 0:\n{stdout}\n{stderr}");
    assert!(!stdout.contains("serving"), "it served on a read-only data directory:\n{stdout}");
    assert!(stderr.contains("Read-only file system"), "the error does not say why:\n{stderr}");
    eprintln!("read-only data directory: exit {status}: {}", stderr.trim());

    // Writable again: it serves, and the log is intact.
    fs.remount("rw");
    let broker = BrokerProcess::start(&data, &[]);
    let mut conn = mqtt::connect5(broker.mqtt, "pub");
    assert_eq!(publish5(&mut conn, 1, "after"), (0, None));
    drop(conn);
    assert!(broker.stop().success());
    let occurrences = logged::by_payload(&logged::publishes(&data));
    for payload in ["before", "after"] {
        assert_eq!(occurrences.get(payload).map(Vec::len), Some(1), "{payload} in the log");
    }
    verify_ok(&data);
}
