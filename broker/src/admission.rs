//! The decision on one PUBLISH (a client's, or a will): policy, ACL, MQS1
//! signature and replay window, and the record and upstream packet it
//! becomes. Shared by client connections and the gateway's own publishes.

use std::sync::Arc;

use bytes::Bytes;
use sealmq_audit::mqs1::{self, Carrier, SignatureBlock};
use sealmq_audit::store::{Entry, now_ms};
use sealmq_audit::{Hash, PublishRecord, Record, sha256};

use crate::checks::{self, Prechecked, Verdict};
use crate::codec::v5;
use crate::devices::identity::{Device, Policy};
use crate::devices::replay::{Freshness, Window};
use crate::gateway::Shared;
use crate::ops::metrics::Rejection;
use crate::route::Message;
use crate::route::retained::Retained;
use tokio::time::Instant;

/// The record's log index: on PUBACK/PUBREC, and on deliveries to
/// subscribers that ask for receipts ([`PROP_RECEIPTS`]).
pub const PROP_INDEX: &str = "sealmq-index";
/// A CONNECT user property: with the value `1`, the client's deliveries
/// (live, retained, wills) carry [`PROP_INDEX`], and any `sealmq-*` user
/// property a publisher set is removed from them, so none can be spoofed.
pub const PROP_RECEIPTS: &str = "sealmq-receipts";
/// Beside [`PROP_INDEX`] on every delivery that carries it: the origin (the
/// C2SP checkpoint origin line) of the log that holds that index — this
/// gateway's own, or, behind an external router, the publishing gateway's.
pub const PROP_ORIGIN: &str = "sealmq-origin";
/// Reason codes of refusals (MQTT 5 PUBACK/PUBREC).
pub const NOT_AUTHORIZED: u8 = 0x87;
/// A malformed MQS1 envelope or property.
pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;

/// What to do with a PUBLISH.
// Made once per publish and taken apart at once: boxing the large variant
// would only add an allocation on the hot path.
#[allow(clippy::large_enum_variant)]
pub enum Admission {
    /// Log `entry`; once durable, route `message` (its index filled in).
    Log {
        /// The record (with its replay-window update).
        entry: Entry,
        /// What subscribers get: the application payload, the publisher's
        /// properties (the SB as the `mqs1` property).
        message: Message,
        /// The key that signed it, if any.
        kid: Option<mqs1::Kid>,
    },
    /// An MQS1 retransmission: acknowledge, do not log or forward again.
    Duplicate,
    /// Refused: nobody receives it.
    Rejected {
        /// Why, for `/metrics`.
        reason: Rejection,
        /// MQTT 5 reason code.
        code: u8,
        /// Why, for the reason string and the log.
        why: String,
    },
}

fn rejected(reason: Rejection, code: u8, why: impl Into<String>) -> Admission {
    Admission::Rejected { reason, code, why: why.into() }
}

/// A PUBLISH as read: its MQS1 signature block, if any, found and taken
/// apart (not checked). Made without the registry gate, so the expensive
/// check can start before the decision ([`crate::checks`]).
pub struct Candidate {
    publish: v5::Publish,
    properties: v5::PublishProperties,
    /// The application payload (an envelope's taken off).
    payload: Bytes,
    /// The signature block and how it came, or why it is malformed.
    found: Result<Option<(SignatureBlock, Carrier)>, String>,
}

impl Candidate {
    /// Finds the MQS1 signature block of `publish`, if any.
    pub fn new(mut publish: v5::Publish) -> Self {
        let properties = publish.properties.take().unwrap_or_default();
        let extracted = mqs1::extract(
            properties.user_properties.iter().map(|(name, value)| (name.as_str(), value.as_str())),
            &publish.payload,
        );
        let (payload, found) = match extracted {
            Err(e) => (publish.payload.clone(), Err(format!("MQS1: {e}"))),
            Ok(None) => (publish.payload.clone(), Ok(None)),
            Ok(Some(found)) => (publish.payload.slice_ref(found.payload), Ok(Some((found.sb, found.carrier)))),
        };
        Self { publish, properties, payload, found }
    }

    /// The signature block, if there is a well-formed one.
    pub fn signature(&self) -> Option<&SignatureBlock> {
        self.found.as_ref().ok()?.as_ref().map(|(sb, _)| sb)
    }

    /// Whether it carries no signature block at all (neither a property
    /// nor an envelope, well-formed or not).
    pub fn is_unsigned(&self) -> bool {
        matches!(self.found, Ok(None))
    }

    /// The application payload (without an MQS1 envelope).
    pub fn payload(&self) -> &Bytes {
        &self.payload
    }

    /// The PUBLISH's retain bit.
    pub fn retain(&self) -> bool {
        self.publish.retain
    }
}

/// Decides on a PUBLISH to a valid `topic` (aliases resolved) by `device`,
/// connected as `client_id` (the device id; shared, not copied per publish).
/// Call it with [`Shared::registry_gate`] held and `device` looked up under
/// the current registry generation, and queue the record before letting go.
pub fn admit(shared: &Shared, device: &Device, client_id: &Arc<str>, topic: &str, publish: v5::Publish) -> Admission {
    admit_checked(shared, device, client_id, topic, Candidate::new(publish), None)
}

/// [`admit`] for a candidate the check pool has seen already
/// (`prechecked`, from [`crate::checks`]): its signature checked, or,
/// unsigned, its payload hashed. A verdict counts only if it was reached
/// with the key the device has for that kid now; otherwise (the registry
/// changed meanwhile) the signature is checked here again. Every other rule
/// is applied here, under the gate, as [`admit`] does.
pub fn admit_checked(
    shared: &Shared,
    device: &Device,
    client_id: &Arc<str>,
    topic: &str,
    candidate: Candidate,
    prechecked: Option<Prechecked>,
) -> Admission {
    if topic.starts_with('$') {
        return rejected(Rejection::ReservedTopic, NOT_AUTHORIZED, "topics starting with $ belong to the broker");
    }
    if !device.may_publish(topic) {
        return rejected(Rejection::Acl, NOT_AUTHORIZED, "not allowed to publish to this topic");
    }
    let Candidate { publish, mut properties, payload, found } = candidate;
    let (sb, carrier) = match found {
        Err(why) => return rejected(Rejection::Malformed, PAYLOAD_FORMAT_INVALID, why),
        Ok(None) if device.policy == Policy::Signed => {
            return rejected(Rejection::Unsigned, NOT_AUTHORIZED, "this device must sign every publish (MQS1)");
        }
        Ok(None) => (None, None),
        Ok(Some((sb, carrier))) => (Some(sb), Some(carrier)),
    };
    let (window, digest) = match &sb {
        None => (None, prechecked.and_then(Prechecked::digest).unwrap_or_else(|| sha256(&payload))),
        Some(sb) => match check_signature(
            shared,
            device,
            topic,
            &payload,
            publish.retain,
            sb,
            prechecked.and_then(Prechecked::verdict),
        ) {
            Ok((Some(window), digest)) => (Some(window), digest),
            Ok((None, _)) => return Admission::Duplicate,
            Err((reason, why)) => return rejected(reason, NOT_AUTHORIZED, why),
        },
    };
    let received_ms = now_ms();
    let record = Record::Publish(PublishRecord {
        received_ms,
        device_id: device.id.clone(),
        topic: topic.to_string(),
        qos: publish.qos as u8,
        retain: publish.retain,
        payload_len: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        payload_sha256: digest,
        signature: sb,
        cause: None,
    });
    let mut entry = match Entry::with_payload(&record, Some(payload.clone())) {
        Ok(entry) => entry,
        Err(e) => return rejected(Rejection::Malformed, PAYLOAD_FORMAT_INVALID, e.to_string()),
    };
    if let (Some(sb), Some(window)) = (&sb, window) {
        entry = entry.with_replay(sb.kid, window.highest, window.seen);
    }
    // The publisher's properties go on as they came; a signature carried in
    // a 3.1.1-style envelope is stripped from the payload and carried as
    // the `mqs1` property instead, so MQTT 5 subscribers can check it.
    if let (Some(sb), Some(Carrier::Envelope)) = (&sb, carrier) {
        properties.user_properties.push((mqs1::PROPERTY_NAME.to_string(), sb.to_property_value()));
    }
    properties.topic_alias = None;
    properties.subscription_identifiers.clear();
    let message = Message {
        topic: Bytes::copy_from_slice(topic.as_bytes()),
        payload,
        properties: Some(properties),
        qos: publish.qos as u8,
        retain: publish.retain,
        index: None,
        origin: None,
        from: Arc::clone(client_id),
        at: Instant::now(),
        received_ms,
    };
    Admission::Log { entry, message, kid: sb.map(|sb| sb.kid) }
}

/// Once a publish is durably logged at `index`: counts it, makes it the
/// topic's retained message if it was retained (an empty payload clears the
/// topic), and routes it. The one way a logged publish reaches subscribers,
/// a client's or a will.
pub fn route_logged(shared: &Shared, mut message: Message, index: u64) {
    shared.stats.routed();
    message.index = Some(index);
    // Message Expiry Interval counts from here.
    message.at = Instant::now();
    if message.retain {
        let properties = message.properties.clone().unwrap_or_default();
        let held = Retained::new(message.index, message.qos, message.payload.clone(), properties);
        shared.retained.set(message.topic_str(), held.received(message.received_ms));
    }
    shared.router.publish(Arc::new(message));
}

/// Checks an SB against the device's keys and the replay window (spec/mqs1.md
/// rules 3–5), using `verdict` when it was reached with the device's current
/// key. `Ok((None, _))`: a retransmission. `Ok((Some(window), digest))`:
/// fresh and verified; the window to persist with the record, and the
/// payload's SHA-256. `Err`: why it is refused.
fn check_signature(
    shared: &Shared,
    device: &Device,
    topic: &str,
    payload: &[u8],
    retain: bool,
    sb: &SignatureBlock,
    verdict: Option<Verdict>,
) -> Result<(Option<Window>, Hash), (Rejection, String)> {
    let key = device.signing_key(&sb.kid).map_err(|why| (Rejection::UnknownKey, why.to_string()))?;
    let below_window = || (Rejection::Replay, format!("MQS1 counter {} is below the replay window", sb.ctr));
    let seen = match shared.replay.check(&sb.kid, sb.ctr) {
        Freshness::TooOld => return Err(below_window()),
        Freshness::Seen => true,
        Freshness::Fresh => false,
    };
    // A seen counter is verified too before it is acknowledged as a
    // retransmission: otherwise anyone could have a forged publish with a
    // used counter acknowledged (nothing logged, but a misleading answer).
    let digest = match verdict {
        Some(verdict) if verdict.key == *key => verdict.result,
        // Not checked yet, or checked with a key the device no longer has.
        _ => checks::verify(key, &device.id, topic, payload, retain, sb),
    }
    .map_err(|why| (Rejection::BadSignature, why))?;
    if seen {
        return Ok((None, digest));
    }
    // Another connection may have accepted the same counter meanwhile.
    match shared.replay.accept(&sb.kid, sb.ctr) {
        Ok(window) => Ok((Some(window), digest)),
        Err(Freshness::Seen) => Ok((None, digest)),
        Err(_) => Err(below_window()),
    }
}
