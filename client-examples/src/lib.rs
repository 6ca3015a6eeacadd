//! Code shared by the sealmq client examples (`examples/`): devices, a hub
//! and an auditor, each runnable with
//! `cargo run -p client-examples --example NAME -- --help`.
//!
//! What is here, and why an example needs it:
//!
//! - [`Api`]: the broker's HTTP API (`/v1/checkpoint`, `/v1/proof/{i}`,
//!   `/v1/consistency`, `/v1/devices`, `/v1/records`) over plain HTTP. Nothing
//!   it returns is trusted: every proof and checkpoint is checked here
//!   against the log's verifier key.
//! - [`load_or_create_device_key`] and [`CounterState`]: a device's Ed25519
//!   key and its MQS1 counter, persisted so that a restarted device never
//!   signs two messages with the same counter.
//! - [`DeviceKeys`]: the device keys a subscriber checks MQS1 signatures
//!   with, fetched from `/v1/devices` and refreshed when an unknown key id
//!   shows up.
//! - [`CheckpointChain`]: follows the log's signed checkpoints and checks that
//!   each new one extends the last one seen (a consistency proof).
//! - [`check_delivery`], [`check_delivered_in_log`]: what a subscriber can
//!   check about one message, end to end.
//!
//! The checks themselves are `sealmq-audit`'s (built without its SQLite
//! store): [`sealmq_audit::mqs1`], [`ProofBundle::check`],
//! [`ConsistencyBundle::check`], [`VerifierKey::open`].
//!
//! Exit codes of every example: [`EXIT_OK`] when everything checked held,
//! [`EXIT_FAILED`] when a check ran and did not hold (or a device's publish
//! was refused), [`EXIT_ERROR`] when it could not run (bad arguments,
//! broker unreachable).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ed25519_dalek::{SigningKey, VerifyingKey};
use sealmq_audit::mqs1::{self, Kid, SignatureBlock};
use sealmq_audit::{
    Checkpoint, ConsistencyBundle, ProofBundle, Proven, PublishRecord, Record, RegistryEvent, VerifierKey, sha256,
};
use serde::{Deserialize, Serialize};

/// Every check held.
pub const EXIT_OK: u8 = 0;
/// A check ran and did not hold, or the broker refused a publish.
pub const EXIT_FAILED: u8 = 1;
/// The example could not do its work (arguments, network, files).
pub const EXIT_ERROR: u8 = 2;

/// The MQTT 5 user property in which the broker gives a message's log index:
/// on the PUBACK/PUBREC to the publisher, and on each delivery to a
/// subscriber that asked for receipts ([`RECEIPTS_PROPERTY`]).
pub const INDEX_PROPERTY: &str = "sealmq-index";
/// The CONNECT user property (value `1`) with which a subscriber asks for
/// [`INDEX_PROPERTY`] on its deliveries; without it the broker forwards
/// every message's properties exactly as published.
pub const RECEIPTS_PROPERTY: &str = "sealmq-receipts";
/// The retained topic on which the broker publishes each signed checkpoint.
pub const CHECKPOINT_TOPIC: &str = "$SYS/sealmq/checkpoint";

/// Unix time in milliseconds (0 if the clock is before 1970).
pub fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Why a check did not pass: it ran and found something wrong, or it could
/// not run. Only the first is evidence against the log.
#[derive(Debug)]
pub enum CheckError {
    /// The check ran and did not hold: a bad signature, a proof that does
    /// not lead to the signed root, two checkpoints that are not consistent.
    Failed(String),
    /// The check could not be made (the API was unreachable, answered an
    /// error, or has no proof yet).
    Unavailable(anyhow::Error),
}

impl fmt::Display for CheckError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CheckError::Failed(why) => write!(f, "{why}"),
            CheckError::Unavailable(e) => write!(f, "could not check: {e:#}"),
        }
    }
}

impl std::error::Error for CheckError {}

impl From<anyhow::Error> for CheckError {
    fn from(e: anyhow::Error) -> Self {
        CheckError::Unavailable(e)
    }
}

/// The broker refused something a device sent (a PUBACK reason code, or a
/// closed connection for MQTT 3.1.1).
#[derive(Debug)]
pub struct Refused(pub String);

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Refused {}

/// Turns an example's result into its exit code, printing the error: a
/// failed check or a refusal is `FAILED: …` and [`EXIT_FAILED`], anything
/// else `error: …` and [`EXIT_ERROR`].
pub fn exit_code(result: Result<ExitCode>) -> ExitCode {
    match result {
        Ok(code) => code,
        Err(e) if e.downcast_ref::<Refused>().is_some() || matches!(e.downcast_ref(), Some(CheckError::Failed(_))) => {
            eprintln!("FAILED: {e:#}");
            ExitCode::from(EXIT_FAILED)
        }
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

fn failed<T>(why: impl Into<String>) -> Result<T, CheckError> {
    Err(CheckError::Failed(why.into()))
}

/// Parses the log's verifier key (`<origin>+<hex key id>+<base64 key>`, as
/// `sealmq audit vkey` prints it). It is the root of trust: take it from the
/// operator out of band, never from the server being checked.
pub fn parse_vkey(text: &str) -> Result<VerifierKey> {
    text.trim().parse::<VerifierKey>().map_err(|e| anyhow!("--vkey: {e}"))
}

// ---------------------------------------------------------------------------
// HTTP API
// ---------------------------------------------------------------------------

/// A client of the broker's HTTP API (`notes/api.md`), blocking, plain HTTP.
///
/// It only fetches: what it returns is checked by the caller.
#[derive(Clone)]
pub struct Api {
    agent: ureq::Agent,
    base: String,
}

/// A device as `GET /v1/devices` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceInfo {
    /// The device id (its MQTT client id).
    pub id: String,
    /// `signed` or `legacy`.
    #[serde(default)]
    pub policy: String,
    /// Its MQS1 keys, revoked ones included.
    #[serde(default)]
    pub keys: Vec<DeviceKeyInfo>,
}

/// One key of a device in `GET /v1/devices`.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceKeyInfo {
    /// The raw Ed25519 public key, hex.
    pub public_key: String,
    /// Whether the key may still sign.
    #[serde(default)]
    pub active: bool,
}

#[derive(Deserialize)]
struct DeviceList {
    devices: Vec<DeviceInfo>,
}

/// A record as `GET /v1/records?…` lists it (only the fields used here).
#[derive(Debug, Clone, Deserialize)]
pub struct RecordSummary {
    /// Its log index.
    pub index: u64,
    /// `publish` or `registry`.
    pub kind: String,
    /// The device it concerns.
    #[serde(default)]
    pub device_id: String,
    /// Registry records: `key_added`, `key_revoked` or `policy_set`.
    #[serde(default)]
    pub action: Option<String>,
    /// Registry `key_added` records: the key, hex.
    #[serde(default)]
    pub public_key: Option<String>,
}

#[derive(Deserialize)]
struct RecordList {
    records: Vec<RecordSummary>,
    next: Option<u64>,
}

impl Api {
    /// A client for `addr`: `host:port` or `http://host:port`. HTTPS is not
    /// compiled in (the examples keep their dependencies small); put a TLS
    /// proxy in front, or build ureq with its `rustls` feature.
    pub fn new(addr: &str) -> Result<Self> {
        let addr = addr.trim().trim_end_matches('/');
        if addr.starts_with("https://") {
            bail!("--http {addr}: this example speaks plain HTTP only");
        }
        let base = if addr.starts_with("http://") { addr.to_string() } else { format!("http://{addr}") };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            // 404 is an answer here (not sealed yet, no such record), not an error.
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self { agent, base })
    }

    /// The base URL, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`: the body on 200, `None` on 404, an error (with the
    /// server's `{"error": …}` message) otherwise.
    pub fn get(&self, path: &str) -> Result<Option<String>> {
        let url = format!("{}{path}", self.base);
        let mut response = self.agent.get(&url).call().with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().with_context(|| format!("reading the answer to GET {url}"))?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            _ => {
                let message = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                    .unwrap_or_else(|| body.trim().chars().take(200).collect());
                bail!("GET {url}: HTTP {status}: {message}")
            }
        }
    }

    /// The latest signed checkpoint note, `None` before the first block is sealed.
    pub fn checkpoint(&self) -> Result<Option<String>> {
        self.get("/v1/checkpoint")
    }

    /// What the server says its verifier key is. For diagnostics only: a
    /// server cannot vouch for its own key.
    pub fn vkey(&self) -> Result<Option<String>> {
        Ok(self.get("/v1/vkey")?.map(|k| k.trim().to_string()))
    }

    /// The inclusion proof bundle of record `index`, against the checkpoint
    /// of tree size `size` (or the latest). `None` when there is none (yet):
    /// a record is proven once its block is sealed.
    pub fn proof(&self, index: u64, size: Option<u64>) -> Result<Option<String>> {
        match size {
            Some(size) => self.get(&format!("/v1/proof/{index}?size={size}")),
            None => self.get(&format!("/v1/proof/{index}")),
        }
    }

    /// The consistency proof between the checkpoints of sizes `old` and `new`.
    pub fn consistency(&self, old: u64, new: u64) -> Result<Option<String>> {
        self.get(&format!("/v1/consistency?old={old}&new={new}"))
    }

    /// The registered devices and their keys.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>> {
        let body = self.get("/v1/devices")?.context("GET /v1/devices: 404")?;
        let list: DeviceList = serde_json::from_str(&body).context("GET /v1/devices: unexpected JSON")?;
        Ok(list.devices)
    }

    /// The sealed registry (kind 2) records of `device`, oldest first.
    pub fn registry_records(&self, device: &str) -> Result<Vec<RecordSummary>> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let mut path = format!("/v1/records?kind=registry&order=asc&limit=500&device={}", url_encode(device));
            if let Some(cursor) = cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let body = self.get(&path)?.with_context(|| format!("GET {path}: 404"))?;
            let page: RecordList =
                serde_json::from_str(&body).with_context(|| format!("GET {path}: unexpected JSON"))?;
            out.extend(page.records);
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Polls `fetch` until it returns something or `timeout` passes: for
    /// proofs of records whose block is not sealed yet (blocks seal every
    /// 250 ms by default).
    pub fn wait_for<T>(&self, timeout: Duration, mut fetch: impl FnMut() -> Result<Option<T>>) -> Result<Option<T>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = fetch()? {
                return Ok(Some(found));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Percent-encodes a query value (device ids may hold any UTF-8).
fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(byte)),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}

// ---------------------------------------------------------------------------
// Proofs
// ---------------------------------------------------------------------------

/// Fetches the proof of record `index` (against checkpoint `size`, or the
/// latest) and checks it offline with `vkey`: the checkpoint is signed by the
/// log, and the record leads to its root. `Unavailable` if there is no proof
/// within `wait` (e.g. the record is not sealed yet, or does not exist).
pub fn fetch_and_check_proof(
    api: &Api,
    vkey: &VerifierKey,
    index: u64,
    size: Option<u64>,
    wait: Duration,
) -> Result<(ProofBundle, Proven), CheckError> {
    let Some(json) = api.wait_for(wait, || api.proof(index, size))? else {
        return Err(CheckError::Unavailable(anyhow!(
            "the log has no proof of record {index}{} (HTTP 404 for {:.1} s): not sealed yet, or no such record",
            size.map(|s| format!(" at tree size {s}")).unwrap_or_default(),
            wait.as_secs_f64()
        )));
    };
    check_proof_json(&json, vkey, index)
}

/// Checks a `sealmq-proof/v1` bundle for record `index` with the verifier key.
pub fn check_proof_json(json: &str, vkey: &VerifierKey, index: u64) -> Result<(ProofBundle, Proven), CheckError> {
    let bundle =
        ProofBundle::from_json(json).map_err(|e| CheckError::Failed(format!("proof of record {index}: {e}")))?;
    if bundle.index != index {
        return failed(format!("asked for the proof of record {index}, got one for record {}", bundle.index));
    }
    let proven = bundle.check(vkey).map_err(|e| CheckError::Failed(format!("proof of record {index}: {e}")))?;
    Ok((bundle, proven))
}

/// Checks that a proven record is the message a subscriber received: same
/// topic, same payload (by hash and length), same MQS1 signature block (or
/// both unsigned).
pub fn check_delivered_in_log(
    proven: &Proven,
    topic: &str,
    payload: &[u8],
    sb: Option<&SignatureBlock>,
) -> Result<(), CheckError> {
    let Record::Publish(record) = &proven.record else {
        return failed("the record is a registry record, not the publish that was delivered");
    };
    let mut wrong = Vec::new();
    if record.topic != topic {
        wrong.push(format!("topic {:?} (delivered {topic:?})", record.topic));
    }
    if record.payload_sha256 != sha256(payload) || usize::try_from(record.payload_len).ok() != Some(payload.len()) {
        wrong.push("payload hash or length differs from the delivered payload".to_string());
    }
    if record.signature.as_ref() != sb {
        wrong.push(match (&record.signature, sb) {
            (None, Some(_)) => "the log has it unsigned, but it was delivered signed".to_string(),
            (Some(_), None) => "the log has it signed, but it was delivered unsigned".to_string(),
            _ => "the signature block differs from the delivered one".to_string(),
        });
    }
    if wrong.is_empty() { Ok(()) } else { failed(format!("the logged record differs: {}", wrong.join("; "))) }
}

/// One line about a proven record, for output.
pub fn describe_record(record: &Record) -> String {
    match record {
        Record::Publish(PublishRecord { device_id, topic, payload_len, signature, qos, .. }) => {
            let auth = match signature {
                Some(sb) => format!("MQS1 kid {} ctr {}", hex::encode(sb.kid), sb.ctr),
                None => "unsigned".to_string(),
            };
            format!("publish by {device_id:?} on {topic:?}, qos {qos}, {payload_len} bytes, {auth}")
        }
        Record::Registry(r) => {
            let what = match r.event {
                RegistryEvent::KeyAdded { public_key } => {
                    format!("key added (kid {})", hex::encode(mqs1::kid(&public_key)))
                }
                RegistryEvent::KeyRevoked { kid } => format!("key revoked (kid {})", hex::encode(kid)),
                RegistryEvent::PolicySet { signed_required: true } => "policy set to signed".to_string(),
                RegistryEvent::PolicySet { signed_required: false } => "policy set to legacy".to_string(),
            };
            format!("registry: device {:?}: {what}", r.device_id)
        }
    }
}

// ---------------------------------------------------------------------------
// Checkpoints
// ---------------------------------------------------------------------------

/// A checkpoint note that opened with the verifier key.
#[derive(Debug, Clone)]
pub struct VerifiedCheckpoint {
    /// Size and root.
    pub checkpoint: Checkpoint,
    /// The signed note, verbatim (consistency proofs are checked against it).
    pub note: String,
}

/// What [`CheckpointChain::observe`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// The first checkpoint seen: signed by the log; nothing to compare yet.
    First {
        /// Its tree size.
        size: u64,
    },
    /// The checkpoint already seen (same size, same root).
    Same {
        /// Its tree size.
        size: u64,
    },
    /// A larger checkpoint, proven to extend the last one.
    Extended {
        /// The size it was proven consistent with.
        from: u64,
        /// Its size.
        to: u64,
    },
    /// An older checkpoint (e.g. a delayed message), proven to be a prefix
    /// of the latest one; the latest stays.
    Older {
        /// Its size.
        size: u64,
        /// The latest size, which extends it.
        latest: u64,
    },
}

/// Follows a log's checkpoints: each one must be signed by the log's key and
/// consistent with the latest one seen, so the log can only grow, never
/// change what it already committed to, nor show different histories to
/// different people who compare checkpoints.
pub struct CheckpointChain {
    vkey: VerifierKey,
    latest: Option<VerifiedCheckpoint>,
    /// How long to wait for a consistency proof the server does not have yet.
    pub wait: Duration,
}

impl CheckpointChain {
    /// A chain that trusts `vkey` and has seen nothing yet.
    pub fn new(vkey: VerifierKey) -> Self {
        Self { vkey, latest: None, wait: Duration::from_secs(5) }
    }

    /// Resumes from a checkpoint verified earlier (e.g. from a state file).
    /// The note is opened again: a state file is not trusted blindly.
    pub fn resume(vkey: VerifierKey, note: &str) -> Result<Self, CheckError> {
        let checkpoint = vkey.open(note).map_err(|e| {
            CheckError::Failed(format!("the saved checkpoint does not open with the verifier key: {e}"))
        })?;
        let latest = Some(VerifiedCheckpoint { checkpoint, note: note.to_string() });
        Ok(Self { vkey, latest, wait: Duration::from_secs(5) })
    }

    /// The verifier key.
    pub fn vkey(&self) -> &VerifierKey {
        &self.vkey
    }

    /// The latest checkpoint verified so far.
    pub fn latest(&self) -> Option<&VerifiedCheckpoint> {
        self.latest.as_ref()
    }

    /// Checks one checkpoint note against the chain and, when it is newer,
    /// makes it the latest.
    pub fn observe(&mut self, api: &Api, note: &str) -> Result<Step, CheckError> {
        let checkpoint = self
            .vkey
            .open(note)
            .map_err(|e| CheckError::Failed(format!("checkpoint is not signed by the log's verifier key: {e}")))?;
        let size = checkpoint.size;
        let Some(latest) = &self.latest else {
            self.latest = Some(VerifiedCheckpoint { checkpoint, note: note.to_string() });
            return Ok(Step::First { size });
        };
        let latest_size = latest.checkpoint.size;
        if size == latest_size {
            if checkpoint.root != latest.checkpoint.root {
                return failed(format!(
                    "FORK: two checkpoints of tree size {size} signed by the log with different roots ({} and {})",
                    STANDARD.encode(latest.checkpoint.root),
                    STANDARD.encode(checkpoint.root)
                ));
            }
            return Ok(Step::Same { size });
        }
        let (old_note, new_note) = if size > latest_size { (&latest.note[..], note) } else { (note, &latest.note[..]) };
        let (old, new) = (size.min(latest_size), size.max(latest_size));
        self.check_consistency(api, old, new, old_note, new_note)?;
        if size > latest_size {
            self.latest = Some(VerifiedCheckpoint { checkpoint, note: note.to_string() });
            Ok(Step::Extended { from: latest_size, to: size })
        } else {
            Ok(Step::Older { size, latest: latest_size })
        }
    }

    /// Fetches the consistency proof `old → new` and checks it against the
    /// two notes this chain holds (not the copies in the server's answer).
    fn check_consistency(
        &self,
        api: &Api,
        old: u64,
        new: u64,
        old_note: &str,
        new_note: &str,
    ) -> Result<(), CheckError> {
        // The checkpoint may reach a subscriber a moment before the HTTP
        // side serves it; wait a little rather than cry wolf.
        let Some(json) = api.wait_for(self.wait, || api.consistency(old, new))? else {
            return failed(format!(
                "the log signed checkpoints of sizes {old} and {new} but serves no consistency proof between them (404)"
            ));
        };
        let bundle = ConsistencyBundle::from_json(&json)
            .map_err(|e| CheckError::Failed(format!("consistency proof {old} → {new}: {e}")))?;
        bundle.check(&self.vkey, old_note, new_note).map_err(|e| {
            CheckError::Failed(format!("checkpoint {new} is NOT consistent with checkpoint {old}: {e}"))
        })?;
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// Device keys (signing side)
// ---------------------------------------------------------------------------

/// DER of an Ed25519 PKCS#8 private key (RFC 8410) up to the 32-byte seed,
/// as `openssl genpkey -algorithm ed25519` writes it.
const PKCS8_ED25519_PREFIX: [u8; 16] =
    [0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20];

/// Loads a device's signing key from `path`, or creates one there (mode
/// 0600) when the file does not exist. Returns the key and whether it was
/// created.
///
/// The file holds the 32-byte Ed25519 seed as 64 hex characters — the
/// format of the `.key` file `sealmq device keygen --out PREFIX` writes —
/// or a PEM "PRIVATE KEY" (PKCS#8, `openssl genpkey -algorithm ed25519`).
pub fn load_or_create_device_key(path: &Path) -> Result<(SigningKey, bool)> {
    if path.extension().is_some_and(|e| e == "pub") {
        bail!("{} is a public key file; give the device its private .key file", path.display());
    }
    match std::fs::read_to_string(path) {
        Ok(text) => {
            warn_if_readable_by_others(path);
            Ok((parse_device_key(&text).with_context(|| format!("device key file {}", path.display()))?, false))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut seed = [0u8; 32];
            getrandom::fill(&mut seed).map_err(|e| anyhow!("no randomness for a new key: {e}"))?;
            let mut file = create_private(path)?;
            file.write_all(format!("{}\n", hex::encode(seed)).as_bytes())
                .and_then(|()| file.sync_all())
                .with_context(|| format!("writing {}", path.display()))?;
            sync_parent(path)?;
            Ok((SigningKey::from_bytes(&seed), true))
        }
        Err(e) => Err(e).with_context(|| format!("reading device key file {}", path.display())),
    }
}

/// A seed as 64 hex characters, or a PEM PKCS#8 Ed25519 private key.
fn parse_device_key(text: &str) -> Result<SigningKey> {
    let text = text.trim();
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        let seed: [u8; 32] = hex::decode(text)?.try_into().map_err(|_| anyhow!("not 32 bytes"))?;
        return Ok(SigningKey::from_bytes(&seed));
    }
    if let Some(rest) = text.strip_prefix("-----BEGIN PRIVATE KEY-----") {
        let body = rest.split("-----END PRIVATE KEY-----").next().unwrap_or_default();
        let der = STANDARD
            .decode(body.split_whitespace().collect::<String>())
            .map_err(|e| anyhow!("PEM body is not base64: {e}"))?;
        return match der.strip_prefix(&PKCS8_ED25519_PREFIX[..]) {
            Some(seed) if seed.len() == 32 => Ok(SigningKey::from_bytes(&seed.try_into()?)),
            _ => bail!("the PEM private key is not an Ed25519 PKCS#8 key"),
        };
    }
    bail!("expected a 64-hex-character seed (as `sealmq device keygen` writes) or a PEM \"PRIVATE KEY\"")
}

/// Creates a new file readable by its owner only.
fn create_private(path: &Path) -> Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    options.open(path).with_context(|| format!("creating {}", path.display()))
}

fn warn_if_readable_by_others(path: &Path) {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path)
            && meta.permissions().mode() & 0o077 != 0
        {
            eprintln!(
                "warning: {} is readable by other users (mode {:o}); a device key should be 0600",
                path.display(),
                meta.permissions().mode() & 0o777
            );
        }
    }
    #[cfg(not(unix))]
    let _ = path;
}

/// The hex public key and key id of a device key.
pub fn public_identity(key: &SigningKey) -> (String, String) {
    let public = key.verifying_key().to_bytes();
    (hex::encode(public), hex::encode(mqs1::kid(&public)))
}

// ---------------------------------------------------------------------------
// State files
// ---------------------------------------------------------------------------

/// Replaces `path` with `contents` so that a crash leaves either the old or
/// the new file, never a torn one: write a temporary file beside it, sync
/// it, rename it over `path`, sync the directory.
pub fn write_atomically(path: &Path, contents: &[u8]) -> Result<()> {
    let mut tmp_name = path.file_name().context("a state file path needs a file name")?.to_os_string();
    tmp_name.push(".tmp");
    let tmp = path.with_file_name(tmp_name);
    let mut file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    file.write_all(contents).and_then(|()| file.sync_all()).with_context(|| format!("writing {}", tmp.display()))?;
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))?;
    sync_parent(path)
}

/// Syncs the directory holding `path`, so a rename or create in it is durable.
fn sync_parent(path: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let parent = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(parent).and_then(|d| d.sync_all()).with_context(|| format!("syncing {}", parent.display()))?;
    }
    #[cfg(not(unix))]
    let _ = path;
    Ok(())
}

/// A device's MQS1 counters, one per key id, in a small JSON file:
/// `{"counters": {"<kid hex>": <last counter used>}}`.
///
/// The broker refuses a counter at or below `highest − 64` and silently
/// drops one it has seen (a retransmission), so a device must never reuse a
/// counter, even after a crash: [`CounterState::reserve_next`] writes the new value
/// to disk *before* it is used. A crash between the write and the publish
/// only skips a counter, which is harmless.
pub struct CounterState {
    path: PathBuf,
    kid: Kid,
    counters: BTreeMap<String, u64>,
}

#[derive(Serialize, Deserialize, Default)]
struct CounterFile {
    counters: BTreeMap<String, u64>,
}

impl CounterState {
    /// Opens the state at `path` for the key `kid`; a missing file starts at 0.
    pub fn open(path: &Path, kid: Kid) -> Result<Self> {
        let counters = match std::fs::read(path) {
            Ok(bytes) => {
                serde_json::from_slice::<CounterFile>(&bytes)
                    .with_context(|| {
                        format!(
                            "state file {} is not valid (expected {{\"counters\": {{\"KID\": N}}}}); \
                             do not delete it: a device that reuses counters has its messages dropped",
                            path.display()
                        )
                    })?
                    .counters
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(e).with_context(|| format!("reading state file {}", path.display())),
        };
        Ok(Self { path: path.to_path_buf(), kid, counters })
    }

    /// The last counter used with this key (0: none yet).
    pub fn last(&self) -> u64 {
        self.counters.get(&hex::encode(self.kid)).copied().unwrap_or(0)
    }

    /// Reserves the next counter: persists it, then returns it.
    pub fn reserve_next(&mut self) -> Result<u64> {
        let next = self.last().checked_add(1).context("the counter is exhausted")?;
        let mut counters = self.counters.clone();
        counters.insert(hex::encode(self.kid), next);
        let json = serde_json::to_vec_pretty(&CounterFile { counters: counters.clone() })?;
        write_atomically(&self.path, &json)?;
        self.counters = counters;
        Ok(next)
    }
}

// ---------------------------------------------------------------------------
// Device keys (checking side)
// ---------------------------------------------------------------------------

/// A device key learned from the registry.
#[derive(Debug, Clone)]
pub struct KnownKey {
    /// The device it belongs to; MQS1 signs the device id, so a subscriber
    /// needs it to rebuild the signed bytes.
    pub device_id: String,
    /// The Ed25519 public key.
    pub public_key: VerifyingKey,
    /// False once revoked: messages signed before the revocation still
    /// verify, new ones are refused by the broker.
    pub active: bool,
}

/// The device keys a subscriber checks signatures with, by key id, fetched
/// from `GET /v1/devices`.
///
/// Deliveries do not name their publisher, but the MQS1 key id does: the
/// key id finds the key and so the device. A key id not seen before triggers
/// a refresh (a device registered after the last one), at most once a
/// second so a flood of unknown ids cannot hammer the API.
#[derive(Default)]
pub struct DeviceKeys {
    keys: HashMap<Kid, KnownKey>,
    last_refresh: Option<Instant>,
}

impl DeviceKeys {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of keys known.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is known.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Reloads every key from the API.
    pub fn refresh(&mut self, api: &Api) -> Result<()> {
        let mut keys = HashMap::new();
        for device in api.devices()? {
            for key in &device.keys {
                let raw: [u8; 32] =
                    hex::decode(&key.public_key).ok().and_then(|k| k.try_into().ok()).with_context(|| {
                        format!("device {:?}: public key {:?} is not 32 bytes hex", device.id, key.public_key)
                    })?;
                let public_key =
                    mqs1::device_key(&raw).with_context(|| format!("device {:?}: unusable public key", device.id))?;
                // The key id is computed here rather than taken from the
                // server, so a wrong one cannot point at someone else's key.
                keys.insert(mqs1::kid(&raw), KnownKey { device_id: device.id.clone(), public_key, active: key.active });
            }
        }
        self.keys = keys;
        self.last_refresh = Some(Instant::now());
        Ok(())
    }

    /// The key with id `kid`, refreshing from the API when it is unknown.
    pub fn lookup(&mut self, api: &Api, kid: &Kid) -> Result<Option<&KnownKey>> {
        let stale = self.last_refresh.is_none_or(|at| at.elapsed() >= Duration::from_secs(1));
        if !self.keys.contains_key(kid) && stale {
            self.refresh(api)?;
        }
        Ok(self.keys.get(kid))
    }

    /// The key with id `kid`, if known (no refresh).
    pub fn get(&self, kid: &Kid) -> Option<&KnownKey> {
        self.keys.get(kid)
    }
}

/// What a subscriber found out about one delivered message.
#[derive(Debug, Clone)]
pub enum Verdict {
    /// The MQS1 signature holds for a registered key.
    Signed {
        /// The signing device.
        device_id: String,
        /// The signature block.
        sb: SignatureBlock,
        /// Whether the key is still active.
        active: bool,
    },
    /// No MQS1 signature: a legacy device, or anyone the broker lets publish
    /// unsigned.
    Unsigned,
}

/// Checks one delivered message's MQS1 signature end to end: finds the
/// signature (`mqs1` user property, or an envelope in the payload), looks the
/// key up by its id, and verifies it over the device id, topic, payload and
/// retain flag. Returns the verdict and the application payload.
///
/// `retain` must be the publisher's retain flag (it is signed): subscribe
/// with Retain As Published so live deliveries carry it.
pub fn check_delivery<'a, 'p>(
    keys: &mut DeviceKeys,
    api: &Api,
    topic: &str,
    retain: bool,
    user_properties: impl IntoIterator<Item = (&'p str, &'p str)>,
    payload: &'a [u8],
) -> Result<(Verdict, &'a [u8]), CheckError> {
    let extracted = mqs1::extract(user_properties, payload)
        .map_err(|e| CheckError::Failed(format!("malformed MQS1 signature: {e}")))?;
    let Some(extracted) = extracted else {
        return Ok((Verdict::Unsigned, payload));
    };
    let sb = extracted.sb;
    let Some(key) = keys.lookup(api, &sb.kid)? else {
        return failed(format!(
            "signed with key {} which no registered device has (GET /v1/devices)",
            hex::encode(sb.kid)
        ));
    };
    let payload_sha256 = sha256(extracted.payload);
    let signed = mqs1::Signed { device_id: &key.device_id, topic, payload_sha256: &payload_sha256, retain };
    mqs1::verify(&key.public_key, &signed, &sb).map_err(|e| {
        CheckError::Failed(format!(
            "BAD SIGNATURE from key {} of device {:?} (ctr {}): {e}",
            hex::encode(sb.kid),
            key.device_id,
            sb.ctr
        ))
    })?;
    Ok((Verdict::Signed { device_id: key.device_id.clone(), sb, active: key.active }, extracted.payload))
}

/// Proves that a device key was registered in the log: finds the device's
/// `key_added` registry record, fetches its inclusion proof and checks it
/// with the verifier key, so the key no longer rests on the API's word alone
/// (and a key slipped in and out of the registry cannot hide: the log keeps
/// the record). Returns the record's index.
pub fn prove_key_registration(
    api: &Api,
    vkey: &VerifierKey,
    device_id: &str,
    public_key: &VerifyingKey,
    wait: Duration,
) -> Result<u64, CheckError> {
    let hex_key = hex::encode(public_key.as_bytes());
    // Registry records are searchable once sealed; the broker logs a key
    // before it accepts signatures made with it, so it is there or will be
    // within a block interval.
    let found = api.wait_for(wait, || {
        Ok(api.registry_records(device_id)?.into_iter().find(|r| {
            r.kind == "registry"
                && r.action.as_deref() == Some("key_added")
                && r.public_key.as_deref() == Some(&hex_key)
        }))
    })?;
    let Some(summary) = found else {
        return failed(format!(
            "device {device_id:?}: key {} is served by /v1/devices but the log has no key_added record for it",
            hex::encode(mqs1::kid(public_key.as_bytes()))
        ));
    };
    let (_, proven) = fetch_and_check_proof(api, vkey, summary.index, None, wait)?;
    match &proven.record {
        Record::Registry(r)
            if r.device_id == device_id
                && matches!(r.event, RegistryEvent::KeyAdded { public_key: k } if &k == public_key.as_bytes()) =>
        {
            Ok(summary.index)
        }
        other => failed(format!(
            "record {} was listed as device {device_id:?}'s key_added record but is: {}",
            summary.index,
            describe_record(other)
        )),
    }
}

// ---------------------------------------------------------------------------
// Sensor helpers
// ---------------------------------------------------------------------------

/// The arguments both sensor examples take.
#[derive(Debug, Clone, clap::Args)]
pub struct SensorArgs {
    /// The broker's host.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// The broker's MQTT port.
    #[arg(long, default_value_t = 1883)]
    pub port: u16,
    /// The device id: its MQTT client id, as registered with `sealmq device add`.
    #[arg(long)]
    pub id: String,
    /// The topic to publish on (`{id}` stands for the device id).
    #[arg(long, default_value = "sensors/{id}/temperature")]
    pub topic: String,
    /// How many messages to publish (0: until stopped).
    #[arg(long, default_value_t = 5)]
    pub count: u64,
    /// Milliseconds between messages.
    #[arg(long, default_value_t = 1000)]
    pub interval_ms: u64,
    /// A fixed payload instead of a JSON temperature reading; `{ctr}` and
    /// `{ts_ms}` are replaced by the message's counter and time.
    #[arg(long)]
    pub payload: Option<String>,
    /// Publish with the retain flag (the flag is signed too).
    #[arg(long)]
    pub retain: bool,
    /// The device's private key: a hex seed file, as `sealmq device keygen`
    /// writes (PREFIX.key), or a PEM PKCS#8 key. Created (mode 0600) if missing.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// Where the MQS1 counter is kept between runs (created if missing).
    #[arg(long, value_name = "FILE")]
    pub state: PathBuf,
    /// MQTT user name, for a device registered with a password.
    #[arg(long)]
    pub username: Option<String>,
    /// MQTT password (`sealmq device add … --password`); better passed in
    /// the environment than on the command line, where `ps` shows it.
    #[arg(long, env = "SEALMQ_MQTT_PASSWORD", hide_env_values = true)]
    pub password: Option<String>,
    /// Print the device's public key and key id (creating the key if
    /// needed) and exit, without connecting.
    #[arg(long)]
    pub print_public_key: bool,
}

impl SensorArgs {
    /// The topic with `{id}` replaced.
    pub fn topic(&self) -> String {
        self.topic.replace("{id}", &self.id)
    }

    /// The payload of message `ctr`: the fixed one, or a JSON reading.
    pub fn payload(&self, ctr: u64, ts_ms: u64) -> Vec<u8> {
        match &self.payload {
            Some(fixed) => fixed.replace("{ctr}", &ctr.to_string()).replace("{ts_ms}", &ts_ms.to_string()).into_bytes(),
            None => {
                // A plausible, deterministic reading; a real device reads its sensor here.
                let tenths = 200 + (ctr * 37 % 60);
                format!(
                    "{{\"device\":{:?},\"ctr\":{ctr},\"celsius\":{}.{},\"ts_ms\":{ts_ms}}}",
                    self.id,
                    tenths / 10,
                    tenths % 10
                )
                .into_bytes()
            }
        }
    }

    /// Loads (or creates) the key and opens the counter state, printing what
    /// an operator needs to know about a new key.
    pub fn key_and_state(&self) -> Result<(SigningKey, CounterState)> {
        let (key, created) = load_or_create_device_key(&self.key)?;
        let (public_hex, kid_hex) = public_identity(&key);
        if created {
            eprintln!("created a new device key in {} (kid {kid_hex})", self.key.display());
            eprintln!("register it with: sealmq device add {} --key {public_hex} --policy signed", self.id);
        }
        let state = CounterState::open(&self.state, mqs1::kid(&key.verifying_key().to_bytes()))?;
        Ok((key, state))
    }
}

/// A payload as one printable line (lossy UTF-8, control characters as `.`, at most 100 characters).
pub fn printable(payload: &[u8]) -> String {
    let text = String::from_utf8_lossy(payload);
    let mut out: String = text.chars().take(100).map(|c| if c.is_control() { '.' } else { c }).collect();
    if text.chars().count() > 100 {
        out.push('…');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_persist_and_never_repeat() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("state.json");
        let (kid_a, kid_b) = ([1u8; 8], [2u8; 8]);
        let mut state = CounterState::open(&path, kid_a).unwrap();
        assert_eq!((state.reserve_next().unwrap(), state.reserve_next().unwrap()), (1, 2));
        let mut other = CounterState::open(&path, kid_b).unwrap();
        assert_eq!(other.reserve_next().unwrap(), 1);
        let state = CounterState::open(&path, kid_a).unwrap();
        assert_eq!(state.last(), 2, "another key's counter does not disturb this one's");
        assert!(!dir.join("state.json.tmp").exists());
        std::fs::write(&path, "garbage").unwrap();
        assert!(CounterState::open(&path, kid_a).is_err());
    }

    #[test]
    fn device_key_formats() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        let path = dir.join("dev.key");
        let (created, was_new) = load_or_create_device_key(&path).unwrap();
        assert!(was_new);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        }
        let (loaded, was_new) = load_or_create_device_key(&path).unwrap();
        assert!(!was_new);
        assert_eq!(loaded.to_bytes(), created.to_bytes());
        // PKCS#8 PEM of the same seed.
        let mut der = PKCS8_ED25519_PREFIX.to_vec();
        der.extend_from_slice(&created.to_bytes());
        let pem = format!("-----BEGIN PRIVATE KEY-----\n{}\n-----END PRIVATE KEY-----\n", STANDARD.encode(der));
        assert_eq!(parse_device_key(&pem).unwrap().to_bytes(), created.to_bytes());
        assert!(load_or_create_device_key(&dir.join("dev.pub")).is_err());
        assert!(parse_device_key("abcd").is_err());
    }

    #[test]
    fn query_values_are_encoded() {
        assert_eq!(url_encode("a b/ü"), "a%20b%2F%C3%BC");
    }
}
