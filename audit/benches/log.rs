//! Benchmarks of the SQLite log, each on a real database file:
//!
//! - `append`: durable append throughput from many concurrent callers;
//! - `verify`: full `audit verify` rate over a 1,000,000-record log;
//! - `prove`: inclusion-proof latency at 1,000,000 records (p50/p99/max);
//! - `memory`: peak RSS while appending 5,000,000 records, sampled as it goes.
//!
//! `cargo bench -p sealmq-audit --bench log` runs the first three;
//! `cargo bench -p sealmq-audit --bench log -- memory` the last; name any
//! of them to run only those. Set `SEALMQ_BENCH_DIR` to put the databases
//! on another disk (default: the system temp dir).

use std::sync::Arc;
use std::time::Instant;

use hdrhistogram::Histogram;
use sealmq_audit::store::synthetic::SyntheticDevice;
use sealmq_audit::store::{Entry, Log, LogConfig, LogReader, now_ms, verify};

const BIG_LOG: u64 = 1_000_000;
const MEMORY_RECORDS: u64 = 5_000_000;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wants = |name: &str| if args.is_empty() { name != "memory" } else { args.iter().any(|a| a == name) };
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let base = std::env::var_os("SEALMQ_BENCH_DIR").map_or_else(std::env::temp_dir, Into::into);
    let dir = tempfile::tempdir_in(base).unwrap();
    println!(
        "machine: {} cores; database in {}",
        std::thread::available_parallelism().map_or(0, |n| n.get()),
        dir.path().display()
    );
    runtime.block_on(async {
        if wants("append") {
            for callers in [64, 256, 1024] {
                append_throughput(&dir.path().join(format!("append-{callers}")), callers, 200_000).await;
            }
        }
        let big = dir.path().join("big");
        if wants("verify") || wants("prove") {
            fill(&big, BIG_LOG).await;
        }
        if wants("verify") {
            verify_rate(&big).await;
        }
        if wants("prove") {
            proof_latency(&big).await;
        }
        if wants("memory") {
            memory(&dir.path().join("memory")).await;
        }
    });
}

fn config(dir: &std::path::Path) -> LogConfig {
    let mut config = LogConfig::new(dir);
    config.origin = Some("bench.sealmq/log".into());
    config
}

/// `callers` tasks, each appending one record at a time and waiting for it
/// to be durable, as broker connections do. Records are made beforehand so
/// only the log is timed.
async fn append_throughput(dir: &std::path::Path, callers: u64, records: u64) {
    let log = Arc::new(Log::open(config(dir)).await.unwrap());
    let per_caller = records / callers;
    let work: Vec<Vec<Entry>> = (0..callers)
        .map(|n| {
            let mut device = SyntheticDevice::new(n, true);
            (0..per_caller).map(|_| device.next_entry(now_ms(), 64)).collect()
        })
        .collect();
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for entries in work {
        let log = Arc::clone(&log);
        tasks.spawn(async move {
            for entry in entries {
                log.append_one(entry).await.unwrap();
            }
        });
    }
    tasks.join_all().await;
    let elapsed = started.elapsed();
    let total = per_caller * callers;
    println!(
        "append: {callers:>5} concurrent callers, {total} signed records of 64 B: {:>8.0} records/s durable",
        total as f64 / elapsed.as_secs_f64()
    );
    Arc::into_inner(log).unwrap().close().await.unwrap();
}

/// Fills a log quickly (batched appends), for the read benchmarks.
async fn fill(dir: &std::path::Path, records: u64) {
    let log = Arc::new(Log::open(config(dir)).await.unwrap());
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    let callers = 8;
    for n in 0..callers {
        let log = Arc::clone(&log);
        tasks.spawn(async move {
            let mut device = SyntheticDevice::new(n, true);
            for _ in 0..records / callers / 250 {
                log.append((0..250).map(|_| device.next_entry(now_ms(), 64)).collect()).await.unwrap();
            }
        });
    }
    tasks.join_all().await;
    Arc::into_inner(log).unwrap().close().await.unwrap();
    println!("fill: {records} signed records in {:.1} s", started.elapsed().as_secs_f64());
}

async fn verify_rate(dir: &std::path::Path) {
    let reader = LogReader::open(dir).await.unwrap();
    let vkey = reader.verifier_key().clone();
    let started = Instant::now();
    let report = verify(&reader, &vkey, |_| {}).await.unwrap();
    let elapsed = started.elapsed();
    assert!(report.is_ok(), "{:?}", report.failure);
    println!(
        "verify: {} records, {} blocks in {:.2} s: {:.0} records/s",
        report.records,
        report.blocks,
        elapsed.as_secs_f64(),
        report.records as f64 / elapsed.as_secs_f64()
    );
}

async fn proof_latency(dir: &std::path::Path) {
    let reader = LogReader::open(dir).await.unwrap();
    let size = reader.latest_block().await.unwrap().unwrap().header.tree_size;
    let mut histogram = Histogram::<u64>::new(3).unwrap();
    // A fixed odd stride visits indices all over the log, reproducibly.
    let mut index = 0u64;
    for _ in 0..10_000 {
        index = (index + 700_001) % size;
        let started = Instant::now();
        let bundle = reader.prove(index, None).await.unwrap();
        histogram.record(started.elapsed().as_micros() as u64).unwrap();
        assert_eq!(bundle.index, index);
    }
    println!(
        "prove: 10000 inclusion proofs at {size} records: p50 {} µs, p99 {} µs, max {} µs",
        histogram.value_at_quantile(0.5),
        histogram.value_at_quantile(0.99),
        histogram.max()
    );
}

/// Peak resident memory of this process (VmHWM), and current (VmRSS), in MiB.
fn memory_mib() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    };
    (field("VmHWM:"), field("VmRSS:"))
}

async fn memory(dir: &std::path::Path) {
    let log = Arc::new(Log::open(config(dir)).await.unwrap());
    let callers = 256u64;
    let started = Instant::now();
    let step = MEMORY_RECORDS / 10;
    for round in 1..=10 {
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..callers {
            let log = Arc::clone(&log);
            tasks.spawn(async move {
                let mut device = SyntheticDevice::new(n, false);
                for _ in 0..step / callers {
                    log.append_one(device.next_entry(now_ms(), 64)).await.unwrap();
                }
            });
        }
        tasks.join_all().await;
        let (peak, now) = memory_mib();
        println!(
            "memory: {:>8} records appended ({:.0}/s): RSS {now:.1} MiB, peak {peak:.1} MiB",
            round * step,
            (round * step) as f64 / started.elapsed().as_secs_f64()
        );
    }
    Arc::into_inner(log).unwrap().close().await.unwrap();
    let bytes = std::fs::metadata(dir.join("log.db")).map(|m| m.len()).unwrap_or(0);
    println!(
        "memory: database {:.1} MiB, {:.0} bytes per record",
        bytes as f64 / 1048576.0,
        bytes as f64 / MEMORY_RECORDS as f64
    );
}
