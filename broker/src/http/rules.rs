//! `/v1/rules`: the rules (spec/rules.md) as the log holds them — the
//! active ones, and one rule's history of installs and removals.
//!
//! Both are folds over the kind-3 records the search index finds, so they
//! show what the sealed log proves (like `/v1/records`): a rule installed a
//! moment ago appears once its install record is sealed.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::State;
use sealmq_audit::store::{FoundRecord, LogReader, RecordQuery};
use sealmq_audit::{Record, RuleEvent, RuleRecord, sha256};
use serde_json::{Value, json};

use super::records::RULE_DEVICE_PREFIX;
use super::{ApiError, ApiResult, ApiState, Segment, ok_json, segment};

/// Kind-3 records read per index query.
const RULE_RECORDS_PAGE: u32 = 500;
// Placeholder until sealmq-rules lands: replaced by sealmq_rules::CEL_VERSION.
const CEL_VERSION: &str = "cel 0.15.0";
/// Longest rule name (spec/rules.md: 1–64 characters).
const MAX_NAME_LEN: usize = 64;

/// The active rules, in rule order (by install index), with the CEL
/// version actions are evaluated with.
pub(super) async fn rules(State(api): State<Arc<ApiState>>) -> ApiResult {
    let mut active: BTreeMap<String, (u64, RuleRecord)> = BTreeMap::new();
    for (index, record) in rule_records(&api.reader, None).await? {
        match record.event {
            RuleEvent::Installed { .. } => {
                active.insert(record.rule_name.clone(), (index, record));
            }
            RuleEvent::Removed => {
                active.remove(&record.rule_name);
            }
        }
    }
    let mut active: Vec<(u64, RuleRecord)> = active.into_values().collect();
    active.sort_by_key(|(index, _)| *index);
    let rules: Vec<Value> = active.iter().filter_map(|(index, record)| active_view(*index, record)).collect();
    ok_json(json!({ "cel_version": CEL_VERSION, "rules": rules }))
}

/// One rule's history: each install (with its document) and removal, in
/// log order, and whether it is active now.
pub(super) async fn rule(State(api): State<Arc<ApiState>>, name: Segment) -> ApiResult {
    let name = segment(name)?;
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ApiError::bad_request(format!("{name:?} is not a rule name (1 to {MAX_NAME_LEN} characters)")));
    }
    let events = rule_records(&api.reader, Some(&name)).await?;
    if events.is_empty() {
        return Err(ApiError::not_found(format!("no rule {name:?} was ever installed")));
    }
    let history: Vec<Value> = events.iter().map(|(index, record)| event_view(*index, record)).collect();
    let active = matches!(events.last(), Some((_, r)) if matches!(r.event, RuleEvent::Installed { .. }));
    ok_json(json!({
        "name": name,
        "active": active,
        "cel_version": CEL_VERSION,
        "history": history,
    }))
}

/// One install or removal.
fn event_view(index: u64, record: &RuleRecord) -> Value {
    match &record.event {
        RuleEvent::Installed { document } => json!({
            "index": index,
            "action": "installed",
            "at_ms": record.at_ms,
            "rule_hash": hex::encode(sha256(document)),
            "document": String::from_utf8_lossy(document),
        }),
        RuleEvent::Removed => json!({ "index": index, "action": "removed", "at_ms": record.at_ms }),
    }
}

/// An active rule: its install, and the document's fields for display.
fn active_view(index: u64, record: &RuleRecord) -> Option<Value> {
    let RuleEvent::Installed { document } = &record.event else { return None };
    let mut view = json!({
        "name": record.rule_name,
        "rule_hash": hex::encode(sha256(document)),
        "install_index": index,
        "installed_ms": record.at_ms,
        "document": String::from_utf8_lossy(document),
    });
    // The document was checked at install; reading it again as plain TOML
    // (not compiling its expressions) is enough to show its fields.
    let table = std::str::from_utf8(document).ok().and_then(|text| text.parse::<toml::Table>().ok());
    let field = |table: Option<&toml::Table>, key: &str| table.and_then(|t| t.get(key)).map(toml_to_json);
    let publish = table.as_ref().and_then(|t| t.get("publish")).and_then(toml::Value::as_table);
    view["on"] = field(table.as_ref(), "on").unwrap_or(Value::Null);
    view["when"] = field(table.as_ref(), "when").unwrap_or(Value::Null);
    view["publish"] = json!({
        "topic": field(publish, "topic"),
        "payload": field(publish, "payload"),
        "qos": field(publish, "qos"),
        "retain": field(publish, "retain"),
    });
    Some(view)
}

fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => json!(s),
        toml::Value::Integer(n) => json!(n),
        toml::Value::Boolean(b) => json!(b),
        other => json!(other.to_string()),
    }
}

/// The sealed kind-3 records, in log order; of one rule when `name` is given.
async fn rule_records(reader: &LogReader, name: Option<&str>) -> Result<Vec<(u64, RuleRecord)>, ApiError> {
    let mut records = Vec::new();
    let mut cursor = None;
    loop {
        let query = RecordQuery {
            device: name.map(|name| format!("{RULE_DEVICE_PREFIX}{name}")),
            kind: Some(3),
            descending: false,
            cursor,
            limit: RULE_RECORDS_PAGE,
            ..RecordQuery::default()
        };
        let page = reader.search(&query).await?;
        for found in &page.records {
            records.push((found.index, decode_rule(found)?));
        }
        match page.next {
            Some(next) => cursor = Some(next),
            None => return Ok(records),
        }
    }
}

fn decode_rule(found: &FoundRecord) -> Result<RuleRecord, ApiError> {
    match Record::decode(&found.body) {
        Ok(Record::Rule(record)) => Ok(record),
        Ok(_) => Err(ApiError::unavailable(&format!("the search index calls record {} a rule event", found.index))),
        Err(e) => Err(ApiError::unavailable(&format!(
            "record {} does not decode ({e}); run `sealmq audit verify`",
            found.index
        ))),
    }
}
