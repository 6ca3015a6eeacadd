//! `--verify-ceiling`: what the broker's MQS1 check of one publish costs,
//! with no broker and no network — the ceiling for signed traffic.

use std::process::ExitCode;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use anyhow::{Result, bail, ensure};
use ed25519_dalek::{Signature, SigningKey, VerifyingKey};
use sealmq_audit::mqs1::{self, SignatureBlock, Signed};
use sealmq_audit::sha256;
use serde_json::{Value, json};

use crate::BenchArgs;
use crate::report::group;

/// Signatures per `verify_batch` call in the batch figures.
pub const BATCH: usize = 64;
/// Devices (keys) the message set is signed by.
const DEVICES: usize = 64;
/// Messages in the set each thread cycles through, at most.
const MAX_MESSAGES: usize = 1024;
/// Payload bytes the set may hold: large payloads mean fewer messages.
const PAYLOAD_BYTES: usize = 64 << 20;
/// Seconds per figure when neither --duration nor --count is given.
const DEFAULT_SECS: f64 = 3.0;
/// Why the broker does not batch: said in the table and the JSON.
pub const BATCH_NOTE: &str = "reference only: the broker verifies each publish on its own with verify_strict \
    (spec/mqs1.md, rule 4); cofactorless batch verification is not guaranteed to agree with it (a batch can \
    accept a signature verify_strict rejects: Chalkias, Garillot, Nikolaenko, \"Taming the many EdDSAs\", \
    SSR 2020), and ed25519-dalek derives its batch coefficients deterministically from the public inputs";

/// One signed publish as the broker sees it after extracting the SB.
#[derive(Clone)]
struct Message {
    device: usize,
    topic: String,
    payload: Vec<u8>,
    sb: SignatureBlock,
}

/// The devices, their parsed keys (the broker parses a key once, when
/// it loads the registry) and the signed publishes.
struct Set {
    device_ids: Vec<String>,
    keys: Vec<VerifyingKey>,
    messages: Vec<Message>,
}

impl Set {
    fn new(payload_len: usize) -> Result<Self> {
        let count = (PAYLOAD_BYTES / payload_len.max(1)).clamp(BATCH, MAX_MESSAGES) / BATCH * BATCH;
        let mut signers = Vec::with_capacity(DEVICES);
        let mut keys = Vec::with_capacity(DEVICES);
        let device_ids: Vec<String> = (0..DEVICES).map(|d| format!("bench-ceiling-p{d}")).collect();
        for _ in 0..DEVICES {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow::anyhow!("no randomness for a device key: {e}"))?;
            let signer = SigningKey::from_bytes(&seed);
            keys.push(mqs1::device_key(&signer.verifying_key().to_bytes())?);
            signers.push(signer);
        }
        let mut filler = [0u8; 8];
        getrandom::fill(&mut filler).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
        let mut x = u64::from_le_bytes(filler) | 1;
        let ts_ms =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        let mut messages = Vec::with_capacity(count);
        for i in 0..count {
            let device = i % DEVICES;
            let topic = format!("bench-ceiling/{device}/0");
            // Payload bytes from xorshift: distinct per message, cheap to make.
            let payload: Vec<u8> = (0..payload_len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x as u8
                })
                .collect();
            let ctr = (i / DEVICES) as u64 + 1;
            let sb = mqs1::sign(&signers[device], &device_ids[device], &topic, &payload, false, ctr, ts_ms)?;
            messages.push(Message { device, topic, payload, sb });
        }
        Ok(Self { device_ids, keys, messages })
    }

    /// The broker's check (`admission.rs`): SHA-256 of the payload, then
    /// `mqs1::verify` (retain bit, kid, TBS rebuilt, `verify_strict`).
    fn check_one(&self, m: &Message) -> bool {
        let digest = sha256(&m.payload);
        let signed =
            Signed { device_id: &self.device_ids[m.device], topic: &m.topic, payload_sha256: &digest, retain: false };
        mqs1::verify(&self.keys[m.device], &signed, &m.sb).is_ok()
    }

    /// The same checks and TBS, the signatures verified in one
    /// `ed25519_dalek::verify_batch` call.
    fn check_batch(&self, ms: &[Message]) -> bool {
        let mut tbs = Vec::with_capacity(ms.len());
        let mut sigs = Vec::with_capacity(ms.len());
        let mut keys = Vec::with_capacity(ms.len());
        for m in ms {
            let key = &self.keys[m.device];
            if m.sb.retain || m.sb.kid != mqs1::kid(key.as_bytes()) {
                return false;
            }
            let Ok(message) = mqs1::tbs(&m.sb, &self.device_ids[m.device], &m.topic, &sha256(&m.payload)) else {
                return false;
            };
            tbs.push(message);
            sigs.push(Signature::from_bytes(&m.sb.sig));
            keys.push(*key);
        }
        let tbs: Vec<&[u8]> = tbs.iter().map(Vec::as_slice).collect();
        ed25519_dalek::verify_batch(&tbs, &sigs, &keys).is_ok()
    }

    /// `BATCH` messages from `at` checked by one path; all accepted?
    fn check_chunk(&self, at: usize, batch: bool) -> bool {
        let chunk = &self.messages[at..at + BATCH];
        if batch { self.check_batch(chunk) } else { chunk.iter().fold(true, |ok, m| self.check_one(m) & ok) }
    }
}

/// What the self-check found.
struct SelfCheck {
    valid_single: bool,
    valid_batch: bool,
    corrupted_rejected_single: bool,
    corrupted_rejected_batch: bool,
}

impl SelfCheck {
    fn ok(&self) -> bool {
        self.valid_single && self.valid_batch && self.corrupted_rejected_single && self.corrupted_rejected_batch
    }
}

/// Both paths accept every valid message; with one signature corrupted
/// (one bit of its `s`, so that only the curve equation can catch it),
/// the single path rejects exactly that one and the batch holding it is
/// rejected, while the other batches still pass.
fn self_check(set: &Set) -> SelfCheck {
    let n = set.messages.len();
    let valid_single = set.messages.iter().all(|m| set.check_one(m));
    let valid_batch = (0..n).step_by(BATCH).all(|at| set.check_chunk(at, true));
    let bad = BATCH / 2 + 1;
    let mut corrupted =
        Set { device_ids: set.device_ids.clone(), keys: set.keys.clone(), messages: set.messages.clone() };
    corrupted.messages[bad].sb.sig[32] ^= 0x01;
    let corrupted_rejected_single = (0..n).all(|i| corrupted.check_one(&corrupted.messages[i]) == (i != bad));
    let holds_bad = |at: usize| (at..at + BATCH).contains(&bad);
    let corrupted_rejected_batch = (0..n).step_by(BATCH).all(|at| corrupted.check_chunk(at, true) != holds_bad(at));
    SelfCheck { valid_single, valid_batch, corrupted_rejected_single, corrupted_rejected_batch }
}

/// When a figure's measurement stops.
#[derive(Clone, Copy)]
enum Limit {
    Secs(f64),
    /// Verifications per thread (rounded up to whole chunks).
    Count(u64),
}

/// One measured figure.
struct Figure {
    threads: usize,
    verifications: u64,
    secs: f64,
}

impl Figure {
    fn per_s(&self) -> f64 {
        if self.secs > 0.0 { self.verifications as f64 / self.secs } else { 0.0 }
    }

    fn json(&self) -> Value {
        json!({
            "threads": self.threads,
            "verifications": self.verifications,
            "secs": (self.secs * 1e4).round() / 1e4,
            "per_s": self.per_s().round(),
            "us_per_verification_per_thread": if self.verifications > 0 {
                json!((self.secs * 1e6 * self.threads as f64 / self.verifications as f64 * 100.0).round() / 100.0)
            } else {
                Value::Null
            },
        })
    }
}

/// `threads` threads check chunks of the set at once, each from its own
/// place in it, after one chunk of warm-up; the rate is the
/// verifications of all of them over the wall-clock time.
fn measure(set: &Set, threads: usize, batch: bool, limit: Limit) -> Result<Figure> {
    let n = set.messages.len();
    let start = Barrier::new(threads + 1);
    let (verifications, secs, ok) = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let start = &start;
                scope.spawn(move || {
                    let mut at = (t * n / threads) / BATCH * BATCH;
                    let mut ok = set.check_chunk(at, batch);
                    start.wait();
                    let began = Instant::now();
                    let deadline = match limit {
                        Limit::Secs(secs) => began + Duration::from_secs_f64(secs),
                        Limit::Count(_) => began + Duration::from_secs(u32::MAX.into()),
                    };
                    let mut done = 0u64;
                    loop {
                        ok &= set.check_chunk(at, batch);
                        done += BATCH as u64;
                        at = (at + BATCH) % n;
                        let enough = match limit {
                            Limit::Secs(_) => Instant::now() >= deadline,
                            Limit::Count(count) => done >= count,
                        };
                        if enough {
                            return (done, ok);
                        }
                    }
                })
            })
            .collect();
        start.wait();
        let began = Instant::now();
        let mut total = (0u64, true);
        for worker in workers {
            let (done, ok) = worker.join().unwrap_or((0, false));
            total = (total.0 + done, total.1 && ok);
        }
        (total.0, began.elapsed().as_secs_f64(), total.1)
    });
    ensure!(ok, "a valid signature failed to verify while measuring");
    Ok(Figure { threads, verifications, secs })
}

pub fn run(args: &BenchArgs) -> Result<ExitCode> {
    let cores = std::thread::available_parallelism().map_or(1, usize::from);
    let threads = args.threads.unwrap_or(cores);
    ensure!(threads >= 1, "--threads must be at least 1");
    let limit = match (args.count, args.duration) {
        (Some(count), _) => {
            ensure!(count > 0, "--count must be positive");
            Limit::Count(count)
        }
        (None, secs) => {
            let secs = secs.unwrap_or(DEFAULT_SECS);
            ensure!(secs > 0.0 && secs.is_finite(), "--duration must be positive");
            Limit::Secs(secs)
        }
    };
    let label = args.label.clone().unwrap_or_else(|| format!("MQS1 signature-check ceiling, {} B", args.payload));
    let set = Set::new(args.payload)?;
    let check = self_check(&set);

    let single_1 = if check.ok() { Some(measure(&set, 1, false, limit)?) } else { None };
    let single_n = match (&single_1, threads) {
        (None, _) => None,
        (Some(one), 1) => Some(Figure { threads: 1, verifications: one.verifications, secs: one.secs }),
        _ => Some(measure(&set, threads, false, limit)?),
    };
    let batch_1 = if check.ok() { Some(measure(&set, 1, true, limit)?) } else { None };
    let batch_n = match (&batch_1, threads) {
        (None, _) => None,
        (Some(one), 1) => Some(Figure { threads: 1, verifications: one.verifications, secs: one.secs }),
        _ => Some(measure(&set, threads, true, limit)?),
    };
    let figure_json = |f: &Option<Figure>| f.as_ref().map_or(Value::Null, Figure::json);

    let report = json!({
        "label": label,
        "command": std::env::args().collect::<Vec<_>>().join(" "),
        "mode": "verify-ceiling",
        "config": {
            "payload": args.payload,
            "duration_s": match limit { Limit::Secs(s) => json!(s), Limit::Count(_) => Value::Null },
            "count": args.count,
            "threads": threads,
            "available_parallelism": cores,
            "batch_size": BATCH,
            "messages": set.messages.len(),
            "devices": DEVICES,
        },
        "self_check": {
            "valid_accepted_single": check.valid_single,
            "valid_accepted_batch": check.valid_batch,
            "corrupted_rejected_single": check.corrupted_rejected_single,
            "corrupted_rejected_batch": check.corrupted_rejected_batch,
            "ok": check.ok(),
        },
        "ceiling": {
            "single_1_thread": figure_json(&single_1),
            "single_n_threads": figure_json(&single_n),
            "batch_1_thread": figure_json(&batch_1),
            "batch_n_threads": figure_json(&batch_n),
        },
        "single_path": "sha256(payload) + mqs1::verify (TBS rebuilt, verify_strict), one publish at a time",
        "batch_path": format!("sha256(payload) + TBS per publish, ed25519_dalek::verify_batch of {BATCH}"),
        "batch_note": BATCH_NOTE,
        "ok": check.ok(),
    });

    println!("sealmq bench: {label}");
    println!(
        "  in process, no broker: {} B payloads, {} signed publishes from {DEVICES} devices; {}; {} for the N-thread figures ({cores} available)",
        args.payload,
        set.messages.len(),
        match limit {
            Limit::Secs(s) => format!("{s:.1} s per figure"),
            Limit::Count(c) => format!("{} verifications per thread and figure", group(c)),
        },
        if threads == 1 { "1 thread".to_string() } else { format!("{threads} threads") }
    );
    println!();
    let row = |name: &str, value: String| println!("  {name:<36} {value}");
    let yes = |ok: bool, good: &str, bad: &str| if ok { good.to_string() } else { bad.to_string() };
    row(
        "self-check: valid signatures",
        format!(
            "{} (single), {} (batch)",
            yes(check.valid_single, "accepted", "REJECTED"),
            yes(check.valid_batch, "accepted", "REJECTED")
        ),
    );
    row(
        "self-check: one corrupted signature",
        format!(
            "{} (single), {} (batch)",
            yes(check.corrupted_rejected_single, "rejected", "NOT REJECTED"),
            yes(check.corrupted_rejected_batch, "rejected", "NOT REJECTED")
        ),
    );
    let rate = |f: &Option<Figure>| match f {
        Some(f) => format!(
            "{} verifications/s ({:.1} µs each per thread)",
            group(f.per_s().round() as u64),
            f.secs * 1e6 * f.threads as f64 / f.verifications.max(1) as f64
        ),
        None => "-".into(),
    };
    row("single, 1 thread", rate(&single_1));
    // With one thread the N-thread figures are the 1-thread ones (not measured twice).
    if threads > 1 {
        row(&format!("single, {threads} threads"), rate(&single_n));
    }
    row(&format!("batch of {BATCH}, 1 thread"), rate(&batch_1));
    if threads > 1 {
        row(&format!("batch of {BATCH}, {threads} threads"), rate(&batch_n));
    }
    println!();
    println!("  single: SHA-256 of the payload + mqs1::verify (TBS rebuilt, verify_strict), as the broker checks");
    println!("  every signed publish, on every tokio worker: the N-thread figure is the ceiling for signed traffic.");
    let mut line = String::from("  batch:");
    for word in BATCH_NOTE.split_whitespace() {
        if line.len() + word.len() > 104 {
            println!("{line}");
            line = String::from("        ");
        }
        line.push(' ');
        line.push_str(word);
    }
    println!("{line}.");
    if !check.ok() {
        println!();
        println!("  result                               FAILED: the self-check did not hold; no figure was measured");
    }

    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text + "\n").map_err(|e| anyhow::anyhow!("writing {}: {e}", path.display()))?;
    }
    if !check.ok() {
        eprintln!(
            "error: the signature-check self-check failed: valid signatures must verify and a corrupted one must be rejected, on the single and on the batch path"
        );
        return Ok(ExitCode::from(crate::EXIT_FAILED_CHECK));
    }
    if single_1.as_ref().is_none_or(|f| f.verifications == 0) {
        bail!("nothing was measured");
    }
    Ok(ExitCode::SUCCESS)
}
