//! The signature-check pool: MQS1 checks (SHA-256 of the payload, the TBS
//! rebuilt, Ed25519 `verify_strict`) on a few dedicated threads, off the
//! tasks that serve connections; and, for the same reason, the SHA-256 of
//! large unsigned payloads ([`CheckPool::digest`]).
//!
//! Why: one check costs about 23 µs of CPU on the project's AMD EPYC VMs
//! (curve25519-dalek's AVX-512 IFMA backend, `.cargo/config.toml`; 39 µs
//! with AVX2), more than the rest of a publish's path. Checked inline, a
//! connection's task verified a whole read's worth of publishes in one
//! turn, holding its tokio worker for milliseconds; here the connection
//! tasks only hand checks over and take the verdicts back, and the kernel
//! shares the cores between the checks and the I/O ([`work`]); with more
//! than one core they run in parallel.
//!
//! Only the expensive, stateless part runs here. The decision itself (the
//! key still registered and still the one checked, the replay window, the
//! record queued in the log) stays on the connection, in receive order,
//! under `Shared::registry_gate` ([`crate::admission::admit_checked`]).
//!
//! Bounded: at most `queue` checks wait or run at once. A connection whose
//! check finds no room waits for one (and, past its pipeline depth, stops
//! reading from its client): a flood costs it back-pressure, not the broker
//! memory. Permits are handed out first come, first served, so no
//! connection can keep the others out.

use std::sync::mpsc;
use std::sync::{Arc, Mutex, TryLockError};

use bytes::Bytes;
use ed25519_dalek::VerifyingKey;
use sealmq_audit::mqs1::{self, SignatureBlock, Signed};
use sealmq_audit::{Hash, sha256};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, oneshot};

/// Checks waiting or running per check thread, at most: enough that a
/// thread never idles while connections have work for it.
pub const QUEUE_PER_THREAD: usize = 256;

/// One MQS1 check.
#[derive(Debug, Clone)]
pub struct Check {
    /// The key the signature block names, as the device's registry entry had it.
    pub key: VerifyingKey,
    /// The device's registry id (part of the TBS).
    pub device_id: Arc<str>,
    /// The full topic name.
    pub topic: Arc<str>,
    /// The application payload (an MQS1 envelope's already taken off).
    pub payload: Bytes,
    /// The PUBLISH's retain bit.
    pub retain: bool,
    /// The signature block.
    pub sb: SignatureBlock,
}

/// What a check found.
#[derive(Debug, Clone)]
pub struct Verdict {
    /// The key it was checked against: the decision uses the verdict only
    /// while the device's key for that kid is still this one.
    pub key: VerifyingKey,
    /// The payload's SHA-256 (the record needs it too) if the signature
    /// verified; why not otherwise.
    pub result: Result<Hash, String>,
}

impl Check {
    /// Runs the check here, on the calling thread.
    pub fn run(&self) -> Verdict {
        let result = verify(&self.key, &self.device_id, &self.topic, &self.payload, self.retain, &self.sb);
        Verdict { key: self.key, result }
    }
}

/// The MQS1 check itself (spec/mqs1.md rules 3–4): the payload's SHA-256
/// if `sb` is `key`'s signature over this publish, why not otherwise. What
/// the pool runs, and what a decision runs inline when it has no verdict
/// for the device's current key.
pub fn verify(
    key: &VerifyingKey,
    device_id: &str,
    topic: &str,
    payload: &[u8],
    retain: bool,
    sb: &SignatureBlock,
) -> Result<Hash, String> {
    let digest = sha256(payload);
    let signed = Signed { device_id, topic, payload_sha256: &digest, retain };
    mqs1::verify(key, &signed, sb).map(|()| digest).map_err(|e| format!("MQS1: {e}"))
}

/// What the pool worked out for a publish before its decision: the
/// verdict on its signature, or, unsigned, its payload's SHA-256.
#[derive(Debug, Clone)]
pub enum Prechecked {
    Verdict(Verdict),
    Digest(Hash),
}

impl Prechecked {
    pub fn verdict(self) -> Option<Verdict> {
        match self {
            Self::Verdict(verdict) => Some(verdict),
            Self::Digest(_) => None,
        }
    }

    pub fn digest(self) -> Option<Hash> {
        match self {
            Self::Digest(digest) => Some(digest),
            Self::Verdict(_) => None,
        }
    }
}

/// Payloads of at least this many bytes that need no check are still
/// hashed here rather than on their connection's task: SHA-256 of 64 KiB
/// takes about as long as a signature check (about 37 µs at the 1.7 GB/s
/// SHA-NI reaches on this project's machines), and of 1 MiB 0.6 ms, during
/// which the tokio worker would serve nobody else.
pub const DIGEST_MIN: usize = 64 * 1024;

/// What a check thread is asked to do, with where the answer goes.
// Moved once, through the queue: boxing the check would only add an
// allocation per signed publish.
#[allow(clippy::large_enum_variant)]
enum Work {
    Check(Check, oneshot::Sender<Verdict>),
    Digest(Bytes, oneshot::Sender<Hash>),
}

impl Work {
    fn payload_len(&self) -> usize {
        match self {
            Self::Check(check, _) => check.payload.len(),
            Self::Digest(payload, _) => payload.len(),
        }
    }

    fn run(self) -> Answer {
        match self {
            Self::Check(check, reply) => Answer::Verdict(reply, check.run()),
            Self::Digest(payload, reply) => Answer::Digest(reply, sha256(&payload)),
        }
    }
}

/// A job's answer, not yet handed over.
enum Answer {
    Verdict(oneshot::Sender<Verdict>, Verdict),
    Digest(oneshot::Sender<Hash>, Hash),
}

impl Answer {
    fn send(self) {
        // The connection may have gone meanwhile: nobody to tell.
        match self {
            Self::Verdict(reply, verdict) => {
                let _ = reply.send(verdict);
            }
            Self::Digest(reply, digest) => {
                let _ = reply.send(digest);
            }
        }
    }
}

struct Job {
    work: Work,
    /// Frees the job's place in the queue once its answer is sent.
    _permit: OwnedSemaphorePermit,
}

/// The pool: a fixed number of threads and a bounded queue.
pub struct CheckPool {
    jobs: mpsc::Sender<Job>,
    permits: Arc<Semaphore>,
    threads: usize,
}

impl std::fmt::Debug for CheckPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckPool").field("threads", &self.threads).finish_non_exhaustive()
    }
}

impl CheckPool {
    /// Starts `threads` check threads (at least one) with room for
    /// `QUEUE_PER_THREAD` checks each. They end when the pool is dropped.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let threads = threads.max(1);
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        for n in 0..threads {
            let queue = Arc::clone(&queue);
            std::thread::Builder::new().name(format!("sealmq-check-{n}")).spawn(move || work(&queue))?;
        }
        Ok(Self { jobs, permits: Arc::new(Semaphore::new(threads * QUEUE_PER_THREAD)), threads })
    }

    /// A pool with one thread per core this process may run on (one on a
    /// single core: see [`work`] for why it still helps there).
    pub fn per_core() -> std::io::Result<Self> {
        Self::start(std::thread::available_parallelism().map_or(1, usize::from))
    }

    /// How many check threads run.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Queues `check` and resolves to its verdict. Queued at once when
    /// there is room (so checks start in the order connections hand them
    /// over); otherwise the returned future waits for room first.
    pub fn check(&self, check: Check) -> impl Future<Output = Verdict> + Send + 'static {
        let (reply, verdict) = oneshot::channel();
        let key = check.key;
        let queued = self.queue(Work::Check(check, reply));
        async move {
            queued.await;
            verdict.await.unwrap_or_else(|_| stopped(key))
        }
    }

    /// Queues the SHA-256 of `payload` as [`CheckPool::check`] queues a
    /// check, in the same queue; `None` when the pool is gone (the broker
    /// is stopping).
    pub fn digest(&self, payload: Bytes) -> impl Future<Output = Option<Hash>> + Send + 'static {
        let (reply, digest) = oneshot::channel();
        let queued = self.queue(Work::Digest(payload, reply));
        async move {
            queued.await;
            digest.await.ok()
        }
    }

    /// Queues `work` now when there is room; otherwise the returned future
    /// waits for room, then queues it. Work that cannot be queued (the
    /// pool is gone) is dropped with its reply, which its caller sees.
    fn queue(&self, work: Work) -> impl Future<Output = ()> + Send + 'static {
        let waiting = match Arc::clone(&self.permits).try_acquire_owned() {
            Ok(permit) => {
                // The threads only stop when the pool is dropped.
                let _ = self.jobs.send(Job { work, _permit: permit });
                None
            }
            Err(_) => Some((work, Arc::clone(&self.permits), self.jobs.clone())),
        };
        async move {
            if let Some((work, permits, jobs)) = waiting
                && let Ok(permit) = permits.acquire_owned().await
            {
                let _ = jobs.send(Job { work, _permit: permit });
            }
        }
    }
}

/// The verdict when the pool is gone (the broker is stopping).
fn stopped(key: VerifyingKey) -> Verdict {
    Verdict { key, result: Err("the broker is stopping".to_string()) }
}

/// Verdicts a check thread holds back at most before it hands them over:
/// at 64 B, about 0.25 ms of checking on this project's machines, small
/// beside the delivery latency the issue allows (p99 2 ms).
const BATCH: usize = 8;

/// Payload bytes whose verdicts a check thread holds back at most: a
/// payload this large is checked on its own, after the verdicts held back
/// are handed over (hashing it alone costs more than a batch of small ones).
const BATCH_BYTES: usize = 64 * 1024;

/// A check thread: takes jobs until the pool is dropped.
///
/// At the same priority as the connection tasks: the kernel then shares a
/// saturated core between checking and everything else, whatever the
/// number of connections. Checked on the connections' own tasks, 100
/// signing publishers took a whole turn each for every turn of one
/// subscriber, which got a few hundred of the 16,000 messages a second
/// they had acknowledged. (A lower priority for these threads was tried:
/// it changed nothing for that subscriber and halved signed QoS 0 fan-out,
/// where delivering then took the checks' share too.)
///
/// Verdicts go back in batches while checks are queued: each verdict
/// sent wakes its connection's task, and when the tokio worker is parked
/// (as it is whenever its connections all wait for verdicts) that is a
/// syscall to unpark it and, on a shared core, a switch to the worker and
/// back. Batched, the worker decides the lot in one turn and the log
/// commits them as one group. Signed 1 → 1, broker on one core, the same
/// shared and busy machine, runs interleaved: 4,986–5,722 acknowledged/s
/// and 95–117 µs of broker CPU per publish, against 4,244–4,494 and
/// 124–132 µs one by one (context switches stayed about 2 per publish:
/// the client's packets wake the worker too). A verdict is held back only
/// while the next check is already queued, and for at most [`BATCH`]
/// checks, so a lone publish is answered as soon as it is checked. The
/// bound is in work, not time: a 250 µs wall-clock bound ran out at once
/// on a core shared with other processes (any preemption outlasts it) and
/// batched nothing. Each verdict is the one its check alone would get; its
/// connection still decides in receive order.
fn work(queue: &Mutex<mpsc::Receiver<Job>>) {
    let mut done = Held::default();
    loop {
        let job = if done.is_empty() {
            // Nothing held: wait for a job. One thread waits in `recv` at
            // a time; the lock is let go as soon as it has a job, so the
            // others take the next ones meanwhile.
            match queue.lock().unwrap_or_else(|p| p.into_inner()).recv() {
                Ok(job) => Some(job),
                Err(_) => return,
            }
        } else if done.replies.len() < BATCH && done.bytes < BATCH_BYTES {
            // Only a job queued already: a lock held by another thread
            // means it waits in `recv`, so nothing is queued.
            match queue.try_lock() {
                Ok(queue) => queue.try_recv().ok(),
                Err(TryLockError::Poisoned(p)) => p.into_inner().try_recv().ok(),
                Err(TryLockError::WouldBlock) => None,
            }
        } else {
            None
        };
        let Some(Job { work, _permit: permit }) = job else {
            done.hand_over();
            continue;
        };
        let len = work.payload_len();
        if done.bytes.saturating_add(len) > BATCH_BYTES {
            done.hand_over();
        }
        done.replies.push(work.run());
        done.bytes = done.bytes.saturating_add(len);
        done.permits.push(permit);
    }
}

/// Answers a check thread reached and has not handed over yet, with the
/// queue places of their jobs.
#[derive(Default)]
struct Held {
    replies: Vec<Answer>,
    permits: Vec<OwnedSemaphorePermit>,
    /// Their payloads' bytes.
    bytes: usize,
}

impl Held {
    fn is_empty(&self) -> bool {
        self.replies.is_empty()
    }

    /// Sends the verdicts held back, in the order they were reached.
    fn hand_over(&mut self) {
        // Room for the next checks before any verdict is seen, so that a
        // caller who got every verdict finds the queue empty.
        self.permits.clear();
        self.bytes = 0;
        for answer in self.replies.drain(..) {
            answer.send();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::SigningKey;

    fn signed_check(ctr: u64) -> (Check, SigningKey) {
        let key = SigningKey::from_bytes(&[7; 32]);
        let payload = Bytes::from_static(b"hello");
        let sb = mqs1::sign(&key, "dev", "a/b", &payload, false, ctr, 0).expect("signs");
        let check = Check {
            key: key.verifying_key(),
            device_id: Arc::from("dev"),
            topic: Arc::from("a/b"),
            payload,
            retain: false,
            sb,
        };
        (check, key)
    }

    #[tokio::test]
    async fn verdicts_match_checking_inline() {
        let pool = CheckPool::start(2).expect("threads start");
        let (good, _) = signed_check(1);
        let verdict = pool.check(good.clone()).await;
        assert_eq!(verdict.result, Ok(sha256(b"hello")));
        assert_eq!(verdict.key, good.key);
        let mut forged = good.clone();
        forged.topic = Arc::from("a/c");
        assert!(pool.check(forged.clone()).await.result.is_err(), "a signature over another topic");
        assert_eq!(forged.run().result, pool.check(forged).await.result);
    }

    #[tokio::test]
    async fn verdicts_handed_over_together_each_go_to_their_own_check() {
        // One thread and a queue full at once: verdicts are handed back in
        // batches, and each must still be its own check's (good ones pass
        // with their payload's digest, forged ones fail), whatever its place.
        let pool = CheckPool::start(1).expect("threads start");
        let key = SigningKey::from_bytes(&[9; 32]);
        let mut expected = Vec::new();
        let mut waiting = Vec::new();
        for n in 0..(BATCH * 3 + 1) {
            let payload = Bytes::from(format!("payload {n}"));
            let sb = mqs1::sign(&key, "dev", "a/b", &payload, false, n as u64 + 1, 0).expect("signs");
            let forged = n % 3 == 1;
            let check = Check {
                key: key.verifying_key(),
                device_id: Arc::from("dev"),
                topic: Arc::from(if forged { "a/forged" } else { "a/b" }),
                payload: payload.clone(),
                retain: false,
                sb,
            };
            expected.push((!forged).then(|| sha256(&payload)));
            waiting.push(pool.check(check));
        }
        let verdicts = futures_util::future::join_all(waiting).await;
        for (n, (verdict, expected)) in verdicts.into_iter().zip(expected).enumerate() {
            assert_eq!(verdict.result.ok(), expected, "check {n}");
        }
    }

    #[tokio::test]
    async fn digests_queued_among_checks_each_go_to_their_own_payload() {
        let pool = CheckPool::start(1).expect("threads start");
        let (check, _) = signed_check(1);
        let payloads: Vec<Bytes> = (0..5u8).map(|n| Bytes::from(vec![n; DIGEST_MIN + usize::from(n)])).collect();
        let mut digests = Vec::new();
        let mut verdicts = Vec::new();
        for payload in &payloads {
            verdicts.push(pool.check(check.clone()));
            digests.push(pool.digest(payload.clone()));
        }
        for (digest, payload) in futures_util::future::join_all(digests).await.into_iter().zip(&payloads) {
            assert_eq!(digest, Some(sha256(payload)));
        }
        for verdict in futures_util::future::join_all(verdicts).await {
            assert_eq!(verdict.result, Ok(sha256(b"hello")));
        }
    }

    #[tokio::test]
    async fn more_checks_than_the_queue_holds_all_get_verdicts() {
        let pool = CheckPool::start(1).expect("threads start");
        let (check, _) = signed_check(1);
        // More than fit: the later ones wait for room, and still get theirs.
        let waiting: Vec<_> = (0..QUEUE_PER_THREAD * 2 + 3).map(|_| pool.check(check.clone())).collect();
        for verdict in futures_util::future::join_all(waiting).await {
            assert!(verdict.result.is_ok());
        }
        assert_eq!(pool.permits.available_permits(), QUEUE_PER_THREAD);
    }
}
