//! The log asks its witnesses to cosign: after each seal, in rounds.
//!
//! A round sends the latest sealed checkpoint to every witness of the
//! policy that has a URL, in parallel, and ends when all have answered
//! (or `timeout_ms` passed). All witnesses are asked about the same size,
//! so their cosignatures meet on one checkpoint and a quorum can form even
//! while blocks seal faster than witnesses answer. A witness still busy
//! from an earlier round is skipped (requests to one witness never
//! overlap); one that is down is asked again next round and catches up
//! from the size it last cosigned. Rounds start at most every
//! `min_interval_ms`.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use sealmq_audit::policy::{Policy, PolicyWitness};
use sealmq_audit::store::{Cosignatures, LogReader, SealedBlock, StoreError, now_ms};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::client::WitnessClient;
use super::exchange::{Outcome, Target, exchange};
use crate::config::WitnessingConfig;
use crate::ops::metrics::{WitnessView, WitnessingView};

/// Cosigned sizes searched for the latest witnessed checkpoint on start,
/// and listed by `/v1/witnesses`.
const RECENT: u32 = 20;

/// The longest wait between asking a lagging witness again.
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often the stored cosignatures are thinned, how long every one is
/// kept, and the spacing of the sparse history kept after that
/// ([`Cosignatures::prune`]).
const PRUNE_EVERY: Duration = Duration::from_secs(600);
const KEEP_ALL_MS: u64 = 3_600_000;
const KEEP_ONE_PER_MS: u64 = 3_600_000;
/// Round trips kept per witness for the latency figures.
const LATENCIES: usize = 256;

/// What the log knows of one witness.
#[derive(Default)]
struct WitnessState {
    busy: AtomicBool,
    /// The largest size it cosigned since this process started.
    cosigned: AtomicU64,
    requests: AtomicU64,
    refusals: AtomicU64,
    last: Mutex<Option<(u16, String, u64)>>,
    /// The latest exchanges that ended in a cosignature, in microseconds.
    latencies: Mutex<VecDeque<u64>>,
}

impl WitnessState {
    fn record_latency(&self, elapsed: Duration) {
        let mut latencies = self.latencies.lock().expect("latency lock");
        if latencies.len() == LATENCIES {
            latencies.pop_front();
        }
        latencies.push_back(u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX));
    }

    /// p50 and p99 of the kept round trips, in milliseconds.
    fn latency_ms(&self) -> Value {
        let mut sorted: Vec<u64> = self.latencies.lock().expect("latency lock").iter().copied().collect();
        if sorted.is_empty() {
            return Value::Null;
        }
        sorted.sort_unstable();
        let at = |q: f64| {
            let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
            sorted[rank - 1] as f64 / 1000.0
        };
        json!({ "p50": at(0.50), "p99": at(0.99), "samples": sorted.len() })
    }
}

/// The log's witnessing: policy, stored cosignatures, status, and the
/// latest checkpoint that meets the quorum.
pub struct Witnessing {
    policy: Policy,
    store: Cosignatures,
    reader: LogReader,
    client: WitnessClient,
    states: Vec<WitnessState>,
    min_interval: Duration,
    round_timeout: Duration,
    /// The latest checkpoint meeting the quorum: size and note.
    witnessed: watch::Sender<Option<(u64, String)>>,
    /// Bumped whenever a cosignature is stored (its size).
    cosigned: watch::Sender<u64>,
}

impl Witnessing {
    /// Witnessing for the log `reader` reads, under `policy`.
    pub async fn new(
        policy: Policy,
        store: Cosignatures,
        reader: LogReader,
        config: &WitnessingConfig,
    ) -> Result<Self, StoreError> {
        let timeout = Duration::from_millis(config.timeout_ms);
        let states = policy.witnesses().iter().map(|_| WitnessState::default()).collect();
        let this = Self {
            policy,
            store,
            reader,
            client: WitnessClient::new(timeout),
            states,
            min_interval: Duration::from_millis(config.min_interval_ms),
            round_timeout: timeout,
            witnessed: watch::channel(None).0,
            cosigned: watch::channel(0).0,
        };
        for size in this.store.recent(RECENT).await?.keys().rev() {
            if this.update_witnessed(*size).await? {
                break;
            }
        }
        Ok(this)
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The client and store, for the check on start.
    pub(crate) fn parts(&self) -> (&WitnessClient, &LogReader, &Cosignatures) {
        (&self.client, &self.reader, &self.store)
    }

    /// The witnesses to ask: those of the policy with a URL.
    pub(crate) fn targets(&self) -> impl Iterator<Item = (usize, Target<'_>)> {
        self.policy.witnesses().iter().enumerate().filter_map(|(n, PolicyWitness { name, key, url })| {
            url.as_deref().map(|url| (n, Target { name, key, url }))
        })
    }

    /// `note` (a sealed checkpoint) with every cosignature stored for its size.
    pub async fn with_cosignatures(&self, note: &str, size: u64) -> Result<String, StoreError> {
        let mut note = note.to_string();
        for line in self.store.lines(size).await?.values() {
            note.push_str(line);
        }
        Ok(note)
    }

    /// The latest checkpoint meeting the quorum, with its cosignatures.
    pub fn witnessed(&self) -> Option<(u64, String)> {
        self.witnessed.borrow().clone()
    }

    /// Changes whenever a cosignature is stored.
    pub fn cosigned_changes(&self) -> watch::Receiver<u64> {
        self.cosigned.subscribe()
    }

    /// Recomputes the note of `size` with its cosignatures; if it meets the
    /// quorum and is newer than the witnessed one, it becomes the witnessed one.
    async fn update_witnessed(&self, size: u64) -> Result<bool, StoreError> {
        let Some(block) = self.reader.block_with_size(size).await? else { return Ok(false) };
        let note = self.with_cosignatures(&block.checkpoint, size).await?;
        if self.policy.check(&note).is_err() {
            return Ok(false);
        }
        Ok(self.witnessed.send_if_modified(|current| {
            let newer = current.as_ref().is_none_or(|(s, _)| *s <= size);
            if newer {
                *current = Some((size, note));
            }
            newer
        }))
    }

    /// One exchange with witness `n`, its outcome recorded and said.
    async fn ask(&self, n: usize, target: &Target<'_>, block: &SealedBlock) {
        let state = &self.states[n];
        state.requests.fetch_add(1, Ordering::Relaxed);
        let started = std::time::Instant::now();
        let outcome = exchange(&self.client, &self.reader, &self.store, target, block).await;
        let size = block.header.tree_size;
        let (status, why) = match outcome {
            Ok(Outcome::Cosigned) => {
                state.record_latency(started.elapsed());
                state.cosigned.fetch_max(size, Ordering::AcqRel);
                self.cosigned.send_replace(size);
                if let Err(e) = self.update_witnessed(size).await {
                    tracing::warn!(error = %e, "cannot read back cosignatures");
                }
                (200, String::new())
            }
            Ok(Outcome::Behind { witness_size }) => {
                let why = format!(
                    "the witness cosigned size {witness_size} of this log, which holds only {size}: the log was rolled back"
                );
                tracing::error!(witness = target.name, witness_size, size, "{why}");
                (409, why)
            }
            Ok(Outcome::Fork { why }) => {
                tracing::error!(witness = target.name, size, "the witness shows this log forked: {why}");
                (422, why)
            }
            Ok(Outcome::Refused { status, why }) => {
                tracing::warn!(witness = target.name, url = target.url, status, size, "witness did not cosign: {why}");
                (status, why)
            }
            Err(e) => {
                tracing::warn!(witness = target.name, error = %e, "cannot read the log to ask a witness");
                (0, e.to_string())
            }
        };
        if status != 200 {
            state.refusals.fetch_add(1, Ordering::Relaxed);
        }
        *state.last.lock().expect("status lock") = Some((status, why, now_ms()));
    }

    /// Whether a witness that is asked has not cosigned `size` yet.
    fn lagging(&self, size: u64) -> bool {
        self.targets().any(|(n, _)| self.states[n].cosigned.load(Ordering::Acquire) < size)
    }

    /// The state of every witness as numbers, for `/metrics`: what each
    /// cosigned (as stored, so it survives restarts) and when, and this
    /// process's requests and failures.
    pub async fn metrics(&self) -> Result<WitnessingView, StoreError> {
        let mut witnesses = Vec::new();
        for (state, witness) in self.states.iter().zip(self.policy.witnesses()) {
            let cosigned = self.store.latest(&witness.key.to_string()).await?;
            witnesses.push(WitnessView {
                name: witness.name.clone(),
                cosigned_size: cosigned.map(|(size, _)| size),
                last_success_ms: cosigned.map(|(_, at)| at),
                requests: state.requests.load(Ordering::Relaxed),
                failures: state.refusals.load(Ordering::Relaxed),
            });
        }
        Ok(WitnessingView { witnessed_size: self.witnessed().map(|(size, _)| size), witnesses })
    }

    /// The state of every witness, for `/v1/witnesses`.
    pub async fn status(&self) -> Result<Value, StoreError> {
        let mut witnesses = Vec::new();
        for (state, witness) in self.states.iter().zip(self.policy.witnesses()) {
            let vkey = witness.key.to_string();
            let cosigned = self.store.latest(&vkey).await?;
            let last = state.last.lock().expect("status lock").clone();
            witnesses.push(json!({
                "name": witness.name,
                "vkey": vkey,
                "url": witness.url,
                "cosigned_size": cosigned.map(|(size, _)| size),
                "cosigned_at": cosigned.map(|(_, at)| at),
                "last_status": last.as_ref().map(|l| l.0),
                "last_error": last.as_ref().map(|l| l.1.clone()).filter(|e| !e.is_empty()),
                "last_attempt_ms": last.as_ref().map(|l| l.2),
                "requests": state.requests.load(Ordering::Relaxed),
                "refusals": state.refusals.load(Ordering::Relaxed),
                "round_trip_ms": state.latency_ms(),
            }));
        }
        let mut recent = Vec::new();
        for (size, lines) in self.store.recent(RECENT).await?.into_iter().rev() {
            let Some(block) = self.reader.block_with_size(size).await? else { continue };
            let mut note = block.checkpoint.clone();
            lines.values().for_each(|line| note.push_str(line));
            let cosigners = self.policy.cosigners(&note).unwrap_or_default();
            recent.push(json!({
                "size": size,
                "sealed_ms": block.header.sealed_ms,
                "quorum": self.policy.quorum_met(&cosigners.iter().map(|c| c.position).collect::<Vec<_>>()),
                "cosigners": cosigners.iter().map(|c| json!({"name": c.witness, "timestamp": c.timestamp})).collect::<Vec<_>>(),
            }));
        }
        let witnessed = self.witnessed().map(|(size, _)| size);
        Ok(
            json!({ "quorum": self.policy.rules(), "witnessed_size": witnessed, "witnesses": witnesses, "recent": recent }),
        )
    }
}

/// Runs rounds after seals until the log closes. Witnesses that did not
/// cosign the latest checkpoint (down, refusing, slow) are asked again,
/// backing off up to [`RETRY_MAX`], even when nothing new is sealed: a log
/// that has gone quiet still regains its quorum once they are back.
pub async fn run(witnessing: std::sync::Arc<Witnessing>, mut sealed: watch::Receiver<Option<SealedBlock>>) {
    let mut asked = 0u64;
    let mut retry = witnessing.min_interval;
    let mut pruned = tokio::time::Instant::now();
    loop {
        if pruned.elapsed() >= PRUNE_EVERY {
            pruned = tokio::time::Instant::now();
            match witnessing.store.prune(now_ms(), KEEP_ALL_MS, KEEP_ONE_PER_MS).await {
                Ok(removed) => tracing::debug!(removed, "older cosignatures thinned"),
                Err(e) => tracing::warn!(error = %e, "cannot thin the stored cosignatures"),
            }
        }
        let latest = sealed.borrow_and_update().clone();
        if let Some(block) = latest.as_ref().filter(|b| b.header.tree_size > asked) {
            asked = block.header.tree_size;
            retry = witnessing.min_interval;
            let started = tokio::time::Instant::now();
            round(&witnessing, block).await;
            tokio::time::sleep_until(started + witnessing.min_interval).await;
            continue;
        }
        let lagging = latest.as_ref().is_some_and(|block| witnessing.lagging(block.header.tree_size));
        if lagging {
            tokio::select! {
                changed = sealed.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(retry) => {
                    retry = (retry * 2).min(RETRY_MAX);
                    if let Some(block) = latest {
                        round(&witnessing, &block).await;
                    }
                }
            }
        } else if sealed.changed().await.is_err() {
            return;
        }
    }
}

/// Asks every idle witness that has not cosigned `block` yet, waiting for
/// their answers up to the timeout (late answers still land, in the
/// background).
async fn round(witnessing: &std::sync::Arc<Witnessing>, block: &SealedBlock) {
    let size = block.header.tree_size;
    let mut asks = JoinSet::new();
    for (n, _) in witnessing.targets() {
        let state = &witnessing.states[n];
        if state.cosigned.load(Ordering::Acquire) >= size || state.busy.swap(true, Ordering::AcqRel) {
            continue;
        }
        let witnessing = std::sync::Arc::clone(witnessing);
        let block = block.clone();
        asks.spawn(async move {
            let target = witnessing.targets().find(|(m, _)| *m == n).map(|(_, t)| t).expect("target exists");
            witnessing.ask(n, &target, &block).await;
            witnessing.states[n].busy.store(false, Ordering::Release);
        });
    }
    let all = async { while asks.join_next().await.is_some() {} };
    if tokio::time::timeout(witnessing.round_timeout, all).await.is_err() {
        asks.detach_all();
    }
}
