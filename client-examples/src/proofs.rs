//! Inclusion proofs: fetched, checked against the log's key, described.

use std::time::Duration;

use anyhow::{Result, anyhow};
use sealmq_audit::mqs1::{self, SignatureBlock};
use sealmq_audit::{ProofBundle, Proven, PublishRecord, Record, RegistryEvent, VerifierKey, sha256};

use crate::*;
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
