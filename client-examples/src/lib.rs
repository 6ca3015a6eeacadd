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
//! - [`SignedPublisher`]: an MQTT 5 device that signs each publish (MQS1 in
//!   the `mqs1` user property) and learns its log index from the PUBACK.
//! - [`CheckpointChain`]: follows the log's signed checkpoints and checks that
//!   each new one extends the last one seen (a consistency proof).
//! - [`load_policy`], [`check_witnessed`]: what the hub and auditor trust,
//!   `--vkey` or a C2SP tlog-policy (`--policy`) whose quorum of witness
//!   cosignatures each accepted checkpoint must carry.
//! - [`check_delivery`], [`check_delivered_in_log`]: what a subscriber can
//!   check about one message, end to end.
//! - [`load_logs`], [`FollowedLog`]: several logs at once (`--logs FILE`),
//!   for gateways behind one clustered broker, each with its own log; a
//!   delivery names its log in [`ORIGIN_PROPERTY`].
//!
//! The checks themselves are `sealmq-audit`'s (built without its SQLite
//! store): [`sealmq_audit::mqs1`], [`ProofBundle::check`],
//! [`ConsistencyBundle::check`], [`VerifierKey::open`].
//!
//! Files: `api.rs`, `proofs.rs`, `checkpoints.rs`, `signing.rs` (the device
//! key), `state.rs` (atomic state files, [`CounterState`]), `publisher.rs`, `delivery.rs`
//! ([`DeviceKeys`], [`check_delivery`]), `logs.rs` (`--logs`), `witnessed.rs` (policies);
//! everything is re-exported here.
//!
//! Exit codes of every example: [`EXIT_OK`] when everything checked held,
//! [`EXIT_FAILED`] when a check ran and did not hold (or a device's publish
//! was refused), [`EXIT_ERROR`] when it could not run (bad arguments,
//! broker unreachable).

mod api;
mod checkpoints;
mod delivery;
mod logs;
mod proofs;
mod publisher;
mod signing;
mod state;
mod witnessed;

pub use api::*;
pub use checkpoints::*;
pub use delivery::*;
pub use logs::*;
pub use proofs::*;
pub use publisher::*;
pub use signing::*;
pub use state::*;
pub use witnessed::*;

use std::fmt;
use std::process::ExitCode;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Result, anyhow};
use sealmq_audit::VerifierKey;

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
/// Beside [`INDEX_PROPERTY`] on every delivery that carries it: the origin
/// (checkpoint origin line) of the log holding that index — with several
/// gateways in front of a cluster, the publishing gateway's log, whose
/// checkpoints and proofs are the ones to check the delivery against.
pub const ORIGIN_PROPERTY: &str = "sealmq-origin";
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

#[cfg(test)]
mod tests {
    use base64::Engine;
    use base64::engine::general_purpose::STANDARD;

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
