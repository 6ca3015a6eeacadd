//! `/v1/records`: one record decoded (with its payload, and for a rule's
//! trigger the actions it caused), and the search over the sealed records.

use std::sync::Arc;

use axum::extract::State;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use sealmq_audit::store::{FoundRecord, LogReader, RecordQuery};
use sealmq_audit::{RULE_DEVICE_PREFIX, Record, RegistryEvent, RuleEvent, mqs1, sha256};
use serde_json::{Value, json};

use super::{
    ApiError, ApiResult, ApiState, Params, Segment, ok_json, optional_position, page_limit, params, position, segment,
};

/// Records per search page: the default and the most a client may ask for.
const RECORDS_PAGE: u32 = 50;
const RECORDS_PAGE_MAX: u32 = 500;
/// Records read at a time when looking for a trigger's actions: most
/// triggers cause none, so the first read is one record.
const ACTIONS_BATCH_FIRST: u64 = 1;
const ACTIONS_BATCH_MAX: u64 = 256;

/// One record, decoded, with its payload if stored; a trigger (a publish
/// that is not itself an action) with the indices of the actions it caused.
pub(super) async fn record(State(api): State<Arc<ApiState>>, index: Segment) -> ApiResult {
    let index = position("index", &segment(index)?)?;
    let (found, payload) =
        api.reader.found_record(index).await?.ok_or_else(|| ApiError::not_found(format!("no record {index}")))?;
    let mut view = record_view(&found)?;
    if view["kind"] == "publish" && view["cause"].is_null() {
        view["actions"] = json!(actions_of(&api.reader, index).await?);
    }
    view["record"] = json!(B64.encode(&found.body));
    if view["kind"] == "publish" {
        // A missing non-empty payload was erased (retention or `sealmq
        // erase`; the `$sealmq/erasure` records say which rule or request).
        let erased = payload.is_none() && view["payload_len"].as_u64().is_some_and(|len| len > 0);
        view["payload_erased"] = json!(erased);
    }
    view["payload"] = payload.map_or(Value::Null, |p| json!(B64.encode(p)));
    ok_json(view)
}

/// The indices of the actions trigger `trigger` caused: the records right
/// after it whose cause names it (spec/rules.md: actions are logged at
/// `t+1, t+2, …` with nothing between). They are committed with their
/// trigger, so a trigger that can be read has all of its actions stored.
async fn actions_of(reader: &LogReader, trigger: u64) -> Result<Vec<u64>, ApiError> {
    let count = reader.record_count().await?;
    let mut actions = Vec::new();
    let mut next = trigger + 1;
    let mut batch = ACTIONS_BATCH_FIRST;
    while next < count {
        let end = count.min(next + batch);
        for (index, body) in (next..).zip(reader.record_bodies(next, end).await?) {
            let record = Record::decode(&body).map_err(|e| undecodable(index, &e))?;
            match record {
                Record::Publish(p) if p.cause.is_some_and(|c| c.trigger_index == trigger) => actions.push(index),
                _ => return Ok(actions),
            }
        }
        next = end;
        batch = (batch * 4).min(ACTIONS_BATCH_MAX);
    }
    Ok(actions)
}

fn undecodable(index: u64, error: &dyn std::fmt::Display) -> ApiError {
    ApiError::unavailable(&format!("record {index} does not decode ({error}); run `sealmq audit verify`"))
}

/// A search over the sealed records, paged.
pub(super) async fn records(State(api): State<Arc<ApiState>>, query: Params) -> ApiResult {
    let params = params(query)?;
    let kind = match params.get("kind").map(String::as_str) {
        None => None,
        Some("publish") => Some(1),
        Some("registry") => Some(2),
        Some("rule") => Some(3),
        Some(other) => {
            return Err(ApiError::bad_request(format!("kind must be publish, registry or rule, not {other:?}")));
        }
    };
    let descending = match params.get("order").map(String::as_str) {
        None | Some("desc") => true,
        Some("asc") => false,
        Some(other) => return Err(ApiError::bad_request(format!("order must be asc or desc, not {other:?}"))),
    };
    let non_empty = |name: &str| -> Result<Option<String>, ApiError> {
        match params.get(name) {
            Some(value) if value.is_empty() => Err(ApiError::bad_request(format!("{name} must not be empty"))),
            value => Ok(value.cloned()),
        }
    };
    let query = RecordQuery {
        device: non_empty("device")?,
        topic: non_empty("topic")?,
        from_ms: optional_position(&params, "from_ms")?,
        to_ms: optional_position(&params, "to_ms")?,
        kind,
        descending,
        cursor: optional_position(&params, "cursor")?,
        limit: page_limit(&params, RECORDS_PAGE, RECORDS_PAGE_MAX)?,
    };
    let page = api.reader.search(&query).await?;
    let records = page.records.iter().map(record_view).collect::<Result<Vec<_>, _>>()?;
    ok_json(json!({ "records": records, "next": page.next }))
}

/// The JSON view of a record (without its bytes and payload).
pub(super) fn record_view(found: &FoundRecord) -> Result<Value, ApiError> {
    let record = Record::decode(&found.body).map_err(|e| undecodable(found.index, &e))?;
    let mut view = json!({
        "index": found.index,
        "leaf_hash": hex::encode(found.leaf),
        "block": found.block,
    });
    match record {
        Record::Publish(p) => {
            view["kind"] = json!("publish");
            view["received_ms"] = json!(p.received_ms);
            view["device_id"] = json!(p.device_id);
            view["topic"] = json!(p.topic);
            view["qos"] = json!(p.qos);
            view["retain"] = json!(p.retain);
            view["payload_len"] = json!(p.payload_len);
            view["payload_sha256"] = json!(hex::encode(p.payload_sha256));
            view["auth"] = json!(match p.auth() {
                1 => "mqs1",
                2 => "rule",
                _ => "unsigned",
            });
            // An action's device id is `$rule/<name>`: the rule that ran.
            let rule_name = p.device_id.strip_prefix(RULE_DEVICE_PREFIX);
            view["cause"] = p.cause.map_or(Value::Null, |cause| {
                json!({
                    "trigger_index": cause.trigger_index,
                    "rule_hash": hex::encode(cause.rule_hash),
                    "rule_name": rule_name,
                })
            });
            view["mqs1"] = p.signature.map_or(Value::Null, |sb| {
                json!({
                    "kid": hex::encode(sb.kid),
                    "ctr": sb.ctr,
                    "ts_ms": sb.ts_ms,
                    "retain": sb.retain,
                    "sig": hex::encode(sb.sig),
                    "sb": B64.encode(sb.to_bytes()),
                })
            });
        }
        Record::Registry(r) => {
            view["kind"] = json!("registry");
            view["at_ms"] = json!(r.at_ms);
            view["device_id"] = json!(r.device_id);
            match r.event {
                RegistryEvent::KeyAdded { public_key } => {
                    view["action"] = json!("key_added");
                    view["public_key"] = json!(hex::encode(public_key));
                    view["kid"] = json!(hex::encode(mqs1::kid(&public_key)));
                }
                RegistryEvent::KeyRevoked { kid } => {
                    view["action"] = json!("key_revoked");
                    view["kid"] = json!(hex::encode(kid));
                }
                RegistryEvent::PolicySet { signed_required } => {
                    view["action"] = json!("policy_set");
                    view["policy"] = json!(if signed_required { "signed" } else { "legacy" });
                }
            }
        }
        Record::Rule(r) => {
            view["kind"] = json!("rule");
            view["at_ms"] = json!(r.at_ms);
            view["rule_name"] = json!(r.rule_name);
            match &r.event {
                RuleEvent::Installed { document } => {
                    view["action"] = json!("installed");
                    view["rule_hash"] = json!(hex::encode(sha256(document)));
                    view["document"] = json!(String::from_utf8_lossy(document));
                }
                RuleEvent::Removed => view["action"] = json!("removed"),
            }
        }
    }
    Ok(view)
}
