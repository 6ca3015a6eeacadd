//! Crash test: `sealmq audit load` is killed with SIGKILL at random moments,
//! over and over on the same log. Every record it acknowledged must survive,
//! the killed log must verify, and reopening must seal what was left.

mod common;

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Stdio;
use std::thread;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::Rng;
use rand::seq::IndexedRandom;
use serde_json::Value;

use common::{Db, base_command, parse_verified, sealmq};

/// Rounds of start-and-kill; `SEALMQ_CRASH_ROUNDS` overrides for a longer soak.
const ROUNDS: usize = 12;

/// Reads a pipe to its end on another thread.
fn drain(mut pipe: impl Read + Send + 'static) -> thread::JoinHandle<Vec<u8>> {
    thread::spawn(move || {
        let mut out = Vec::new();
        let _ = pipe.read_to_end(&mut out);
        out
    })
}

/// The `ack START END` lines of a killed run. A last line cut off by the
/// kill (no newline) is not counted: it was not fully reported.
fn parse_acks(stdout: &[u8]) -> Vec<(u64, u64)> {
    let text = String::from_utf8_lossy(stdout);
    let complete = match text.rfind('\n') {
        Some(end) => &text[..=end],
        None => "",
    };
    complete
        .lines()
        .map(|line| {
            let parts: Vec<&str> = line.split(' ').collect();
            let [ack, start, end] = parts[..] else { panic!("not an ack line: {line:?}") };
            assert_eq!(ack, "ack", "not an ack line: {line:?}");
            let (start, end): (u64, u64) = (start.parse().unwrap(), end.parse().unwrap());
            assert!(start < end, "empty ack range: {line:?}");
            (start, end)
        })
        .collect()
}

/// `audit prove INDEX` then `audit check-proof`; the record's bytes.
fn prove_and_check(data: &Path, scratch: &Path, vkey: &str, index: u64, tree_size: u64) -> Vec<u8> {
    let json = sealmq(data, &["audit", "prove", &index.to_string()]).ok();
    let bundle: Value = serde_json::from_str(&json).unwrap();
    assert_eq!(bundle["index"], index);
    assert_eq!(bundle["tree_size"], tree_size);
    let file = scratch.join("bundle.json");
    std::fs::write(&file, &json).unwrap();
    let ok = sealmq(scratch, &["audit", "check-proof", file.to_str().unwrap(), "--vkey", vkey]).ok();
    assert!(ok.starts_with(&format!("ok: record {index} ")), "{ok}");
    STANDARD.decode(bundle["record"].as_str().unwrap()).unwrap()
}

#[test]
fn killed_loads_lose_no_acknowledged_record() {
    let rounds = std::env::var("SEALMQ_CRASH_ROUNDS").ok().and_then(|r| r.parse().ok()).unwrap_or(ROUNDS);
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("data");
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let mut rng = rand::rng();
    let started = Instant::now();

    // Every acknowledged range, by start: no index may be acknowledged twice.
    let mut acked: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    // Records already proved, and their bytes: they must never change.
    let mut proved: BTreeMap<u64, Vec<u8>> = BTreeMap::new();
    let mut records_after = 0u64; // record count after the previous round's reopen
    let (mut acked_total, mut found_total, mut unsealed_seen) = (0u64, 0u64, 0u64);

    for round in 1..=rounds {
        let delay = Duration::from_millis(rng.random_range(50..=800));
        let mut child = base_command(&data)
            .args(["audit", "load", "--print-acks", "--records", "1000000", "--concurrency", "16"])
            .args(["--block-records", "500", "--block-ms", "50"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = drain(child.stdout.take().unwrap());
        let stderr = drain(child.stderr.take().unwrap());
        thread::sleep(delay);
        let early = child.try_wait().unwrap();
        child.kill().unwrap();
        let status = child.wait().unwrap();
        let (stdout, stderr) = (stdout.join().unwrap(), stderr.join().unwrap());
        let stderr = String::from_utf8_lossy(&stderr);
        assert!(early.is_none(), "round {round}: load exited by itself ({early:?}) before the kill:\n{stderr}");
        assert!(!stderr.contains("panicked"), "round {round}: {stderr}");
        assert_eq!(status.signal(), Some(9), "round {round}: killed by SIGKILL: {status:?}");

        let acks = parse_acks(&stdout);
        let max_acked = acks.iter().map(|&(_, end)| end).max();
        for &(start, end) in &acks {
            assert!(start >= records_after, "round {round}: ack {start}..{end} reuses an index below {records_after}");
            acked_total += end - start;
            // The range starting last before `end` is the only one that could overlap.
            if let Some((&before, &(before_end, before_round))) = acked.range(..end).next_back() {
                assert!(
                    before_end <= start,
                    "round {round}: ack {start}..{end} overlaps {before}..{before_end} of round {before_round}"
                );
            }
            acked.insert(start, (end, round));
        }

        // The killed log verifies as it is, unsealed tail and all.
        let run = sealmq(&data, &["audit", "verify"]);
        let killed = if run.code == 2 && acked.is_empty() && records_after == 0 {
            // Killed before the log was even created.
            eprintln!("round {round}: killed after {delay:?}, before the log existed: {}", run.stderr.trim());
            None
        } else {
            let v = parse_verified(&run.ok());
            assert_eq!(v.tree_size + v.unsealed, v.records, "round {round}: {v:?}");
            assert!(v.records >= records_after, "round {round}: the log shrank from {records_after} to {v:?}");
            if let Some(max) = max_acked {
                assert!(v.records >= max, "round {round}: {max} acknowledged, {} records in the killed log", v.records);
            }
            unsealed_seen += v.unsealed;
            Some(v)
        };

        // Reopening seals the leftovers; one more record is appended.
        let reopened = sealmq(&data, &["audit", "load", "--records", "1", "--block-records", "500"]);
        reopened.ok();
        let run = sealmq(&data, &["audit", "verify"]);
        let v = parse_verified(&run.ok());
        assert_eq!((v.unsealed, v.tree_size), (0, v.records), "round {round}: reopening sealed everything: {v:?}");
        if let Some(killed) = killed {
            assert_eq!(v.records, killed.records + 1, "round {round}: reopening kept every record and added one");
        }
        assert!(v.records > records_after, "round {round}: the log did not grow past {records_after}: {v:?}");

        // Every acknowledged index is below the record count and stored.
        let mut db = Db::open(&data);
        assert_eq!(db.int("SELECT count(*) FROM records") as u64, v.records, "round {round}: records are contiguous");
        assert_eq!(db.int("SELECT max(idx) + 1 FROM records") as u64, v.records);
        let mut found = 0;
        for &(start, end) in &acks {
            assert!(end <= v.records, "round {round}: acknowledged {start}..{end}, the log has {}", v.records);
            found += db.int(&format!("SELECT count(*) FROM records WHERE idx >= {start} AND idx < {end}")) as u64;
        }
        db.close();
        let acked_now: u64 = acks.iter().map(|&(start, end)| end - start).sum();
        assert_eq!(found, acked_now, "round {round}: acknowledged records missing");
        found_total += found;

        // Prove a sample of this round's acknowledged records, the highest
        // among them, and some proved in earlier rounds (unchanged since).
        let vkey = common::vkey(&data);
        let mut sample: Vec<u64> = Vec::new();
        if let Some(max) = max_acked {
            sample.push(max - 1);
            let ranges: Vec<(u64, u64)> = acks.choose_multiple(&mut rng, 3).copied().collect();
            sample.extend(ranges.into_iter().map(|(start, end)| rng.random_range(start..end)));
        }
        let earlier: Vec<u64> = proved.keys().copied().collect();
        sample.extend(earlier.choose_multiple(&mut rng, 2));
        for index in sample {
            let record = prove_and_check(&data, &scratch, &vkey, index, v.records);
            if let Some(before) = proved.insert(index, record.clone()) {
                assert_eq!(before, record, "round {round}: record {index} changed since it was first proved");
            }
        }

        eprintln!(
            "round {round}: killed after {delay:?}: {} acks ({acked_now} records, highest index {}), killed log {}, \
             {} after reopening",
            acks.len(),
            max_acked.map_or("-".to_string(), |end| (end - 1).to_string()),
            killed.map_or("absent".to_string(), |k| format!("{} records ({} unsealed)", k.records, k.unsealed)),
            v.records,
        );
        records_after = v.records;
    }

    eprintln!(
        "crash test: {rounds} rounds, {acked_total} records acknowledged, {found_total} found, \
         {unsealed_seen} left unsealed by kills, {records_after} records in the log, {} proved, {:.1} s",
        proved.len(),
        started.elapsed().as_secs_f64()
    );
    assert_eq!(found_total, acked_total);
    assert!(acked_total > 0, "no round acknowledged anything");
}
