//! Inclusion proofs: fetched, checked against the log's key (and the
//! policy's quorum of witnesses), described.

use std::time::Duration;

use anyhow::{Result, anyhow};
use sealmq_audit::mqs1::{self, SignatureBlock};
use sealmq_audit::{Cosigner, Policy, ProofBundle, Proven, PublishRecord, Record, RegistryEvent, RuleEvent, sha256};

use crate::*;
/// Fetches the proof of record `index` (against checkpoint `size`, or the
/// latest; under a policy with witnesses, the latest witnessed one) and
/// checks it offline against `policy`: the checkpoint is signed by the log
/// and cosigned by the quorum, and the record leads to its root.
/// `Unavailable` if there is no such proof within `wait` (the record is not
/// sealed, or not witnessed, yet, or does not exist).
pub fn fetch_and_check_proof(
    api: &Api,
    policy: &Policy,
    index: u64,
    size: Option<u64>,
    wait: Duration,
) -> Result<(ProofBundle, Proven, Vec<Cosigner>), CheckError> {
    let witnessed = size.is_none() && !policy.needs_no_witness();
    let mut short = None;
    let found = api.wait_for(wait, || {
        let json = if witnessed { api.witnessed_proof(index)? } else { api.proof(index, size)? };
        let Some(json) = json else { return Ok(None) };
        Ok(match check_proof_json(&json, policy, index) {
            Ok(ProofCheck::Witnessed(bundle, proven, cosigners)) => Some(Ok((bundle, *proven, cosigners))),
            // Witnesses cosign after the log signs: wait for them.
            Ok(ProofCheck::Unwitnessed { size, cosigned }) => {
                short = Some((size, cosigned));
                None
            }
            Err(e) => Some(Err(e)),
        })
    });
    match found {
        Ok(Some(checked)) => checked,
        Ok(None) => Err(CheckError::Unavailable(match short {
            Some((size, cosigned)) => anyhow!(
                "the proof of record {index} is against the checkpoint of tree size {size}, cosigned only by \
                 {cosigned:?}: the policy's quorum is not met (waited {:.1} s)",
                wait.as_secs_f64()
            ),
            None => anyhow!(
                "the log has no {}proof of record {index}{} (HTTP 404 for {:.1} s): not {} yet, or no such record",
                if witnessed { "witnessed " } else { "" },
                size.map(|s| format!(" at tree size {s}")).unwrap_or_default(),
                wait.as_secs_f64(),
                if witnessed { "sealed and witnessed" } else { "sealed" },
            ),
        })),
        Err(e) => Err(CheckError::Unavailable(e)),
    }
}

/// What [`check_proof_json`] found in a bundle that holds.
#[derive(Debug)]
pub enum ProofCheck {
    /// The proof holds and its checkpoint satisfies the policy: the bundle,
    /// what it proves and who cosigned.
    Witnessed(ProofBundle, Box<Proven>, Vec<Cosigner>),
    /// The checkpoint is the log's, but not (yet) cosigned by the policy's
    /// quorum: nothing is proven to a verifier that requires witnesses.
    Unwitnessed {
        /// Its tree size.
        size: u64,
        /// The witnesses that did cosign it.
        cosigned: Vec<String>,
    },
}

/// Checks a `sealmq-proof/v1` bundle for record `index` against a policy
/// (`Policy::log_only(vkey)` for the log's key alone).
pub fn check_proof_json(json: &str, policy: &Policy, index: u64) -> Result<ProofCheck, CheckError> {
    let bundle =
        ProofBundle::from_json(json).map_err(|e| CheckError::Failed(format!("proof of record {index}: {e}")))?;
    if bundle.index != index {
        return failed(format!("asked for the proof of record {index}, got one for record {}", bundle.index));
    }
    let cosigners = match check_witnessed(policy, &bundle.checkpoint)
        .map_err(|e| CheckError::Failed(format!("proof of record {index}: {e}")))?
    {
        Witnessing::Met { cosigners, .. } => cosigners,
        Witnessing::Short { checkpoint, cosigned, .. } => {
            return Ok(ProofCheck::Unwitnessed { size: checkpoint.size, cosigned });
        }
    };
    let (proven, _) =
        bundle.check_policy(policy).map_err(|e| CheckError::Failed(format!("proof of record {index}: {e}")))?;
    Ok(ProofCheck::Witnessed(bundle, Box::new(proven), cosigners))
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
        Record::Publish(PublishRecord { device_id, topic, payload_len, signature, cause, qos, .. }) => {
            let auth = match (signature, cause) {
                (Some(sb), _) => format!("MQS1 kid {} ctr {}", hex::encode(sb.kid), sb.ctr),
                (None, Some(cause)) => {
                    format!("a rule's action (trigger {}, rule {})", cause.trigger_index, hex::encode(cause.rule_hash))
                }
                (None, None) => "unsigned".to_string(),
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
        Record::Rule(r) => match &r.event {
            RuleEvent::Installed { document } => {
                format!(
                    "rule {:?} installed ({} bytes, hash {})",
                    r.rule_name,
                    document.len(),
                    hex::encode(sha256(document))
                )
            }
            RuleEvent::Removed => format!("rule {:?} removed", r.rule_name),
        },
    }
}
