//! `sealmq erase`: erase the stored payloads of one device's or one
//! topic filter's publishes. Records stay (they commit to the payloads'
//! hashes; every proof stays valid), and the erasure is itself logged: a
//! record from `$sealmq/erasure` on `$SYS/sealmq/erasure` whose payload
//! says what was erased (JSON), in the transaction of the deletes.
//!
//! While a broker holds the log, the request is queued in the log's
//! `erasure_outbox` and the broker's sequencer carries it out (within a
//! second); otherwise this command opens the log and does it itself.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use sealmq_audit::store::{
    ERASURE_DEVICE, ErasureOutbox, ErasureRecord, ErasureSpec, Log, LogConfig, LogReader, Reason, RecordQuery, Resume,
    StoreError, now_ms,
};
use sealmq_broker::ops::retention::Span;

#[derive(Debug, Args)]
pub struct EraseArgs {
    /// Erase the payloads of this device's publishes.
    #[arg(long)]
    device: Option<String>,
    /// Erase the payloads of publishes to topics this MQTT filter matches.
    #[arg(long)]
    topic: Option<String>,
    /// Only publishes received before this time (Unix milliseconds).
    #[arg(long, conflicts_with = "older_than")]
    before: Option<u64>,
    /// Only publishes older than this (e.g. 7d, 12h, 30s).
    #[arg(long)]
    older_than: Option<Span>,
    /// Only records below this log index.
    #[arg(long)]
    below: Option<u64>,
    /// How long to wait for a running broker to carry the request out.
    #[arg(long, default_value = "60s")]
    wait: Span,
}

pub async fn run(data: &Path, args: EraseArgs) -> Result<ExitCode> {
    if args.device.is_none() && args.topic.is_none() {
        bail!("say whose payloads to erase: --device ID and/or --topic FILTER");
    }
    let mut spec = ErasureSpec::new(Reason::Request);
    spec.device = args.device;
    spec.filter = args.topic;
    spec.below_index = args.below;
    spec.before_ms = match (args.before, args.older_than) {
        (Some(before), _) => Some(before),
        (None, Some(age)) => Some(now_ms().saturating_sub(u64::try_from(age.0.as_millis()).unwrap_or(u64::MAX))),
        (None, None) => None,
    };
    spec.check()?;
    // There must be a log: opening one for writing would create it.
    let reader = LogReader::open(data).await.with_context(|| format!("opening the log in {}", data.display()))?;
    match Log::open(LogConfig::new(data)).await {
        Ok(log) => {
            let erased = log.erase(&spec, Resume::default()).await.context("erasing")?;
            for index in &erased.logged {
                print_record(&reader, *index).await?;
            }
            println!("erased {} payloads ({} bytes)", erased.records, erased.bytes);
            log.close().await?;
            Ok(ExitCode::SUCCESS)
        }
        Err(StoreError::Locked(_)) => queue(data, &reader, &spec, args.wait.0).await,
        Err(e) => Err(e).context("opening the log"),
    }
}

/// A broker holds the log: queue the request and wait until its sequencer
/// has carried it out, then show the erasure records it logged.
async fn queue(data: &Path, reader: &LogReader, spec: &ErasureSpec, wait: Duration) -> Result<ExitCode> {
    let head = reader.record_count().await?;
    let outbox = ErasureOutbox::open(data).await?;
    let seq = outbox.queue(spec).await?;
    eprintln!("a broker holds the log; queued the request (erasure_outbox row {seq})");
    let deadline = tokio::time::Instant::now() + wait;
    while outbox.is_waiting(seq).await? {
        if tokio::time::Instant::now() >= deadline {
            println!("the broker has not carried the request out yet; it stays queued and runs when it does");
            return Ok(ExitCode::from(crate::EXIT_ERROR));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outbox.close().await;
    // The records are searchable once sealed (within the block interval).
    let query = RecordQuery {
        device: Some(ERASURE_DEVICE.to_string()),
        cursor: Some(head),
        limit: 1000,
        ..RecordQuery::default()
    };
    for _ in 0..100 {
        let page = reader.search(&query).await?;
        if !page.records.is_empty() {
            let (mut count, mut bytes) = (0, 0);
            for found in &page.records {
                if let Some(record) = print_record(reader, found.index).await? {
                    count += record.count;
                    bytes += record.bytes;
                }
            }
            println!("erased {count} payloads ({bytes} bytes)");
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("done; the erasure records are not sealed yet (see /v1/records?device=$sealmq/erasure)");
    Ok(ExitCode::SUCCESS)
}

/// Prints `erasure record N: <json>`; the record, if it is one.
async fn print_record(reader: &LogReader, index: u64) -> Result<Option<ErasureRecord>> {
    let Some(stored) = reader.record(index).await? else { return Ok(None) };
    let Some(payload) = stored.payload else { return Ok(None) };
    let Ok(record) = ErasureRecord::from_json(&payload) else { return Ok(None) };
    println!("erasure record {index}: {}", String::from_utf8_lossy(&payload));
    Ok(Some(record))
}
