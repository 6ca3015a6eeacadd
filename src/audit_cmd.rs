//! `sealmq audit …`: the auditor's commands.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use sealmq_audit::store::archive::ArchiveDir;
use sealmq_audit::store::synthetic::SyntheticDevice;
use sealmq_audit::store::{Entry, Log, LogConfig, LogReader, Progress, now_ms, verify_with_archive};
use sealmq_audit::{
    ConsistencyBundle, Cosigner, Policy, ProofBundle, Record, RuleEvent, RuleRecord, VerifierKey,
    check_device_signature, mqs1,
};

use crate::EXIT_FAILED_CHECK;

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Re-derive every leaf hash, block root, chain link, tree root,
    /// checkpoint signature and the retained messages from the stored
    /// records. Exit 0 when all holds, 1 with the first bad record, block or
    /// retained topic named when not.
    Verify {
        /// The verifier key to check checkpoints against (default: the one
        /// stored in the log; pin it to catch a replaced key).
        #[arg(long)]
        vkey: Option<String>,
        /// Also check this archive (`sealmq archive`) of the records the
        /// log no longer holds; without it they are named as unchecked.
        #[arg(long)]
        archive: Option<PathBuf>,
    },
    /// Serve this log's HTTP API (checkpoints, tiles, proofs, records, the
    /// explorer) read-only, with no broker: for a gateway that died or a
    /// copy of its data directory. Records a crash left unsealed are sealed
    /// first when no broker holds the directory.
    Serve(crate::audit_serve_cmd::AuditServeArgs),
    /// Re-execute every rule over the log (spec/rules.md) and check every
    /// action record and every due action. Exit 0 when all holds, 1 with the
    /// first wrong or missing action named; triggers whose needed payload
    /// was erased are listed as unverifiable.
    Replay {
        /// Check the triggers from this index on (the state before it is
        /// still folded from record 0).
        #[arg(long, default_value_t = 0)]
        from: u64,
    },
    /// Print the sealmq-proof/v1 bundle of the record at INDEX (JSON).
    Prove {
        /// The record's log index.
        index: u64,
        /// Prove against the checkpoint of this size (default: the latest).
        #[arg(long)]
        size: Option<u64>,
    },
    /// Check a sealmq-proof/v1 bundle offline, with only the log's verifier
    /// key, or a tlog-policy naming the log and the witnesses it requires.
    CheckProof {
        /// The bundle (JSON), or - for standard input.
        file: PathBuf,
        #[command(flatten)]
        trust: Trust,
        /// Also check the record's MQS1 signature with this device key (hex).
        #[arg(long)]
        device_key: Option<String>,
    },
    /// Print the sealmq-consistency/v1 proof between two checkpoints (JSON).
    Consistency {
        /// The older checkpoint's tree size.
        old_size: u64,
        /// The newer checkpoint's tree size (default: the latest).
        new_size: Option<u64>,
    },
    /// Check a sealmq-consistency/v1 proof offline. With --policy, both
    /// checkpoints must carry the quorum of witness cosignatures.
    CheckConsistency {
        /// The proof (JSON), or - for standard input.
        file: PathBuf,
        #[command(flatten)]
        trust: Trust,
        /// The older signed note you trust (default: the one in the proof).
        #[arg(long)]
        old: Option<PathBuf>,
        /// The newer signed note (default: the one in the proof).
        #[arg(long)]
        new: Option<PathBuf>,
    },
    /// Print the latest signed checkpoint.
    Checkpoint,
    /// Print the log's verifier key.
    Vkey,
    /// Append synthetic signed publishes through the sequencer, as many
    /// concurrent devices would (for tests and benchmarks).
    Load {
        /// How many records to append.
        #[arg(long)]
        records: u64,
        /// Concurrent appenders, each a device.
        #[arg(long, default_value_t = 64)]
        concurrency: u64,
        /// Records per append call.
        #[arg(long, default_value_t = 1)]
        batch: u64,
        /// Application payload size in bytes.
        #[arg(long, default_value_t = 64)]
        payload_size: usize,
        /// Append unsigned (auth = 0) records instead of MQS1-signed ones.
        #[arg(long)]
        unsigned: bool,
        /// Publish retained: every device's 8 topics get retained messages.
        #[arg(long)]
        retained: bool,
        /// The log's origin, when this creates the log.
        #[arg(long)]
        origin: Option<String>,
        /// Seal a block at this many pending records.
        #[arg(long, default_value_t = 4096)]
        block_records: u32,
        /// Seal a block this long after the first pending record.
        #[arg(long, default_value_t = 250)]
        block_ms: u64,
        /// Install this many synthetic rules first (`sealmq_rules::synthetic`:
        /// each record matches one in eight of them, about 1 % of records
        /// fire one action). The rule engine follows the log whatever this
        /// is, as in the broker.
        #[arg(long, default_value_t = 0)]
        rules: usize,
        /// Print `ack START END` on stdout for every durable append.
        #[arg(long)]
        print_acks: bool,
        /// Spread the records' received_ms evenly over this many days
        /// ending now (as if they had arrived over that span), for
        /// retention measurements; 0: the current time.
        #[arg(long, default_value_t = 0.0)]
        span_days: f64,
    },
}

/// What an offline check trusts: the log's key alone, or a C2SP tlog-policy
/// (the logs, the witnesses and the quorum of cosignatures required).
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Trust {
    /// The log's verifier key, `<origin>+<key id>+<key>` (no witnesses required).
    #[arg(long)]
    vkey: Option<String>,
    /// A C2SP tlog-policy file: the log key from its `log` lines, and the
    /// checkpoint must carry its quorum of witness cosignatures.
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
}

impl Trust {
    /// `--vkey` is the policy of that one log with `quorum none`.
    fn policy(&self) -> Result<Policy> {
        match (&self.vkey, &self.policy) {
            (Some(vkey), _) => Ok(Policy::log_only(parse_vkey(vkey)?)),
            (None, Some(file)) => {
                let text = std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
                text.parse().with_context(|| format!("--policy {}", file.display()))
            }
            (None, None) => bail!("pass --vkey or --policy"),
        }
    }
}

/// ", cosigned by A, C (quorum met)", or nothing when no witness is required.
fn cosigned(policy: &Policy, cosigners: &[Cosigner]) -> String {
    if policy.needs_no_witness() && cosigners.is_empty() {
        return String::new();
    }
    let names: Vec<&str> = cosigners.iter().map(|c| c.witness.as_str()).collect();
    format!(", cosigned by {} (quorum met)", if names.is_empty() { "no witness".into() } else { names.join(", ") })
}

pub async fn run(data: &Path, command: AuditCommand) -> Result<ExitCode> {
    match command {
        AuditCommand::Verify { vkey, archive } => verify_log(data, vkey.as_deref(), archive.as_deref()).await,
        AuditCommand::Replay { from } => replay_log(data, from).await,
        AuditCommand::Serve(args) => crate::audit_serve_cmd::run(data, args).await,
        AuditCommand::Prove { index, size } => {
            let bundle = open_reader(data).await?.prove(index, size).await?;
            println!("{}", bundle.to_json());
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::CheckProof { file, trust, device_key } => {
            check_proof(&file, &trust.policy()?, device_key.as_deref())
        }
        AuditCommand::Consistency { old_size, new_size } => {
            let bundle = open_reader(data).await?.consistency(old_size, new_size).await?;
            println!("{}", bundle.to_json());
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::CheckConsistency { file, trust, old, new } => {
            check_consistency(&file, &trust.policy()?, old.as_deref(), new.as_deref())
        }
        AuditCommand::Checkpoint => {
            let block = open_reader(data).await?.latest_block().await?.context("no block has been sealed yet")?;
            print!("{}", block.checkpoint);
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Vkey => {
            println!("{}", open_reader(data).await?.verifier_key());
            Ok(ExitCode::SUCCESS)
        }
        AuditCommand::Load {
            records,
            concurrency,
            batch,
            payload_size,
            unsigned,
            retained,
            origin,
            block_records,
            block_ms,
            rules,
            print_acks,
            span_days,
        } => {
            let mut config = LogConfig::new(data);
            config.origin = origin;
            config.block_max_records = block_records;
            config.block_interval = Duration::from_millis(block_ms);
            let span_ms = (span_days.max(0.0) * 86_400_000.0) as u64;
            let load = Load {
                records,
                concurrency,
                batch,
                payload_size,
                signed: !unsigned,
                retained,
                rules,
                print_acks,
                span_ms,
            };
            load.run(config).await
        }
    }
}

async fn open_reader(data: &Path) -> Result<LogReader> {
    LogReader::open(data).await.with_context(|| format!("opening the log in {}", data.display()))
}

fn parse_vkey(vkey: &str) -> Result<VerifierKey> {
    vkey.parse().with_context(|| format!("--vkey {vkey:?}"))
}

fn read_input(file: &Path) -> Result<String> {
    if file == Path::new("-") {
        return std::io::read_to_string(std::io::stdin()).context("reading standard input");
    }
    std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))
}

async fn verify_log(data: &Path, vkey: Option<&str>, archive: Option<&Path>) -> Result<ExitCode> {
    let reader = open_reader(data).await?;
    let vkey = match vkey {
        Some(vkey) => parse_vkey(vkey)?,
        None => reader.verifier_key().clone(),
    };
    eprintln!("verifying {} against {vkey}", data.display());
    let started = Instant::now();
    let mut last_report = Instant::now();
    let archive = archive.map(ArchiveDir::new);
    let report = verify_with_archive(&reader, &vkey, archive.as_ref(), |p: Progress| {
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let rate = p.records as f64 / started.elapsed().as_secs_f64();
            eprintln!("  {} of {} records ({rate:.0}/s)", p.records, p.total);
        }
    })
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    if let Some(failure) = &report.failure {
        println!("FAILED: {failure}");
        println!("(checked {} records and {} blocks before it)", report.records, report.blocks);
        return Ok(ExitCode::from(EXIT_FAILED_CHECK));
    }
    println!(
        "ok: {} records in {} blocks, tree size {}, {} unsealed, {} payloads checked, {} retained topics match the log, \
         {} payloads erased by {} erasure records ({elapsed:.2} s, {:.0} records/s)",
        report.records,
        report.blocks,
        report.tree_size,
        report.unsealed,
        report.payloads,
        report.retained,
        report.erased,
        report.erasures,
        report.records as f64 / elapsed.max(1e-9),
    );
    if let Some(first) = report.first_unaccounted {
        // The proofs hold either way; a payload gone without an erasure
        // record saying so was deleted behind the broker's back.
        println!(
            "warning: {} erased payloads are covered by no erasure record (the first: record {first})",
            report.unaccounted
        );
    }
    match (&report.archive, report.archived) {
        (Some(check), _) => println!(
            "ok: archive {}: {} records, {} payloads, {} block headers checked against its checkpoint and the log",
            check.tree_size, check.records, check.payloads, check.blocks
        ),
        (None, 0) => {}
        (None, archived) => println!(
            "not checked: records [0, {archived}) are archived (only their blocks, the tree hashes at {archived} \
             and the records kept below it were); pass --archive DIR to check them"
        ),
    }
    Ok(ExitCode::SUCCESS)
}

async fn replay_log(data: &Path, from: u64) -> Result<ExitCode> {
    let reader = open_reader(data).await?;
    eprintln!("replaying the rules of {} with {}", data.display(), sealmq_rules::CEL_VERSION);
    let started = Instant::now();
    let mut last_report = Instant::now();
    let report = sealmq_rules::replay::replay(&reader, from, |done, total| {
        if last_report.elapsed() >= Duration::from_secs(1) {
            last_report = Instant::now();
            let rate = done as f64 / started.elapsed().as_secs_f64();
            eprintln!("  {done} of {total} records ({rate:.0}/s)");
        }
    })
    .await?;
    let elapsed = started.elapsed().as_secs_f64();
    let rate = report.records as f64 / elapsed.max(1e-9);
    for unverifiable in &report.unverifiable {
        println!("unverifiable: record {}: {}", unverifiable.index, unverifiable.reason);
    }
    if let Some(failure) = &report.failure {
        println!("FAILED: {failure}");
        println!("(replayed {} records and checked {} actions before it)", report.records, report.actions);
        return Ok(ExitCode::from(EXIT_FAILED_CHECK));
    }
    let unverifiable = match report.unverifiable.len() {
        0 => String::new(),
        n => format!(", {n} triggers unverifiable (payload erased)"),
    };
    println!(
        "ok: {} records replayed from index {from}, {} triggers evaluated, {} actions checked{unverifiable} \
         ({elapsed:.2} s, {rate:.0} records/s)",
        report.records, report.triggers, report.actions,
    );
    Ok(ExitCode::SUCCESS)
}

fn check_proof(file: &Path, policy: &Policy, device_key: Option<&str>) -> Result<ExitCode> {
    let device_key = device_key
        .map(|hex_key| -> Result<_> {
            let raw: [u8; 32] = hex::decode(hex_key.trim())
                .ok()
                .and_then(|b| b.try_into().ok())
                .context("--device-key must be 32 bytes of hex")?;
            Ok(mqs1::device_key(&raw)?)
        })
        .transpose()?;
    let outcome = ProofBundle::from_json(&read_input(file)?).and_then(|bundle| {
        let (proven, cosigners) = bundle.check_policy(policy)?;
        if let Some(key) = &device_key {
            check_device_signature(&proven.record, key)?;
        }
        Ok((bundle, proven, cosigners))
    });
    match outcome {
        Ok((bundle, proven, cosigners)) => {
            println!(
                "ok: record {} (device {:?}) is in {} at tree size {}{}{}",
                bundle.index,
                proven.record.device_id(),
                proven.checkpoint.origin,
                proven.checkpoint.size,
                cosigned(policy, &cosigners),
                if device_key.is_some() { ", and its device signature holds" } else { "" }
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAILED: {e}");
            Ok(ExitCode::from(EXIT_FAILED_CHECK))
        }
    }
}

fn check_consistency(file: &Path, policy: &Policy, old: Option<&Path>, new: Option<&Path>) -> Result<ExitCode> {
    let bundle = match ConsistencyBundle::from_json(&read_input(file)?) {
        Ok(bundle) => bundle,
        Err(e) => {
            println!("FAILED: {e}");
            return Ok(ExitCode::from(EXIT_FAILED_CHECK));
        }
    };
    let note = |given: Option<&Path>, embedded: &Option<String>, which: &str| -> Result<String> {
        match (given, embedded) {
            (Some(path), _) => read_input(path),
            (None, Some(note)) => Ok(note.clone()),
            (None, None) => bail!("the proof carries no {which} checkpoint: pass --{which} NOTE_FILE"),
        }
    };
    let old_note = note(old, &bundle.old_checkpoint, "old")?;
    let new_note = note(new, &bundle.new_checkpoint, "new")?;
    match bundle.check_policy(policy, &old_note, &new_note) {
        Ok((old, new)) => {
            println!(
                "ok: the checkpoint of size {}{} extends the one of size {}{}",
                new.checkpoint.size,
                cosigned(policy, &new.cosigners),
                old.checkpoint.size,
                cosigned(policy, &old.cosigners)
            );
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!("FAILED: {e}");
            Ok(ExitCode::from(EXIT_FAILED_CHECK))
        }
    }
}

/// `sealmq audit load`: concurrent synthetic devices appending through the sequencer.
struct Load {
    records: u64,
    concurrency: u64,
    batch: u64,
    payload_size: usize,
    signed: bool,
    retained: bool,
    rules: usize,
    print_acks: bool,
    /// received_ms spread over this span ending at the start (0: now).
    span_ms: u64,
}

impl Load {
    async fn run(self, config: LogConfig) -> Result<ExitCode> {
        let log = Arc::new(Log::open(config).await.context("opening the log")?);
        let start = log.reader().record_count().await?;
        let actions_before = follow_with_rules(&log, self.rules).await?;
        let remaining = Arc::new(AtomicU64::new(self.records));
        let started = Instant::now();
        let (total, span_ms, first_ms) = (self.records, self.span_ms, now_ms().saturating_sub(self.span_ms));
        // Record k of the run arrives at first_ms + k/total of the span.
        let clock = move |k: u64| match span_ms {
            0 => now_ms(),
            span => {
                first_ms + u64::try_from(u128::from(k) * u128::from(span) / u128::from(total.max(1))).unwrap_or(span)
            }
        };
        let mut tasks = tokio::task::JoinSet::new();
        for n in 0..self.concurrency.max(1) {
            let (log, remaining) = (Arc::clone(&log), Arc::clone(&remaining));
            let (batch, payload_size, print_acks) = (self.batch.max(1), self.payload_size, self.print_acks);
            let device = SyntheticDevice::new(n, self.signed);
            let mut device = if self.retained { device.retained() } else { device };
            tasks.spawn(async move {
                loop {
                    let take = remaining.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |left| {
                        (left > 0).then(|| left - left.min(batch))
                    });
                    let Ok(left) = take else { return Ok::<(), anyhow::Error>(()) };
                    let take = left.min(batch);
                    let first = total - left;
                    let entries = (first..first + take).map(|k| device.next_entry(clock(k), payload_size)).collect();
                    let acked = log.append(entries).await?;
                    if print_acks {
                        let mut out = std::io::stdout().lock();
                        writeln!(out, "ack {} {}", acked.start, acked.end)?;
                        out.flush()?;
                    }
                }
            });
        }
        while let Some(done) = tasks.join_next().await {
            done.context("an appender panicked")??;
        }
        let elapsed = started.elapsed().as_secs_f64();
        let log = Arc::into_inner(log).context("appenders still hold the log")?;
        let head = log.reader().record_count().await?;
        log.close().await?;
        let actions = head - start - self.records - actions_before;
        eprintln!(
            "appended {} records in {elapsed:.2} s ({:.0} records/s); the log now holds {head}",
            self.records,
            self.records as f64 / elapsed.max(1e-9)
        );
        if self.rules > 0 {
            eprintln!(
                "{} rules fired {actions} actions ({:.2} % of the records appended)",
                self.rules,
                100.0 * actions as f64 / self.records.max(1) as f64
            );
        }
        Ok(ExitCode::SUCCESS)
    }
}

/// Installs `count` synthetic rules (logged like `sealmq rule add` would
/// have them) and makes the rule engine the log's follower, as the broker
/// does. Returns how many records the installs took.
async fn follow_with_rules(log: &Log, count: usize) -> Result<u64> {
    let installs = sealmq_rules::synthetic::rule_documents(count)
        .into_iter()
        .enumerate()
        .map(|(i, document)| {
            let record = Record::Rule(RuleRecord {
                at_ms: now_ms(),
                rule_name: format!("load-{i}"),
                event: RuleEvent::Installed { document: document.into_bytes() },
            });
            Entry::new(&record, None).context("encoding a synthetic rule")
        })
        .collect::<Result<Vec<_>>>()?;
    let logged = installs.len() as u64;
    if !installs.is_empty() {
        log.append(installs).await.context("installing the synthetic rules")?;
    }
    let rules = sealmq_rules::store::load(log.reader()).await.context("loading the rules")?;
    // Nobody routes actions here: the receiver is dropped, so they are only logged.
    drop(log.take_derived());
    log.set_follower(Box::new(rules)).await.context("following the log with the rules")?;
    Ok(logged)
}
