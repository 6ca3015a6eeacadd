//! `/v1/rules`: the rules (spec/rules.md) as the log holds them — the
//! active ones, and one rule's history of installs and removals.
//!
//! Both are the rule store's folds over the log's kind-3 records
//! ([`sealmq_rules::store`]), the same ones `sealmq rule list` and `show`
//! print: an install is shown once it is logged (it is provable once a
//! block seals it).

use std::sync::Arc;

use axum::extract::State;
use sealmq_audit::{RuleEvent, sha256};
use sealmq_rules::store::{RuleHistoryEntry, RuleStoreError, active_rules, history};
use sealmq_rules::{ActiveRule, CEL_VERSION, RuleDocument};
use serde_json::{Value, json};

use super::{ApiError, ApiResult, ApiState, Segment, ok_json, segment};

/// Longest rule name (spec/rules.md: 1–64 characters).
const MAX_NAME_LEN: usize = 64;

impl From<RuleStoreError> for ApiError {
    fn from(e: RuleStoreError) -> Self {
        match e {
            RuleStoreError::Store(e) => e.into(),
            other => Self::unavailable(&other),
        }
    }
}

/// The active rules, in rule order (by install index), with the CEL
/// version actions are evaluated with.
pub(super) async fn rules(State(api): State<Arc<ApiState>>) -> ApiResult {
    let rules: Vec<Value> = active_rules(&api.reader).await?.iter().map(active_view).collect();
    ok_json(json!({ "cel_version": CEL_VERSION, "rules": rules }))
}

/// One rule's history: each install (with its document) and removal, in
/// log order, and whether it is active now.
pub(super) async fn rule(State(api): State<Arc<ApiState>>, name: Segment) -> ApiResult {
    let name = segment(name)?;
    if name.is_empty() || name.len() > MAX_NAME_LEN {
        return Err(ApiError::bad_request(format!("{name:?} is not a rule name (1 to {MAX_NAME_LEN} characters)")));
    }
    let events = history(&api.reader, &name).await?;
    if events.is_empty() {
        return Err(ApiError::not_found(format!("no rule {name:?} was ever installed")));
    }
    // Active when its last event installed a document that parses (an
    // install that does not parse, which only a tampered log can hold,
    // replaces the rule and installs nothing: the engine's fold).
    let active = events.last().is_some_and(|last| match &last.record.event {
        RuleEvent::Installed { document } => RuleDocument::parse(document).is_ok(),
        RuleEvent::Removed => false,
    });
    ok_json(json!({
        "name": name,
        "active": active,
        "cel_version": CEL_VERSION,
        "history": events.iter().map(event_view).collect::<Vec<_>>(),
    }))
}

/// One install or removal.
fn event_view(entry: &RuleHistoryEntry) -> Value {
    let record = &entry.record;
    match &record.event {
        RuleEvent::Installed { document } => json!({
            "index": entry.index,
            "action": "installed",
            "at_ms": record.at_ms,
            "rule_hash": hex::encode(sha256(document)),
            "document": String::from_utf8_lossy(document),
        }),
        RuleEvent::Removed => json!({ "index": entry.index, "action": "removed", "at_ms": record.at_ms }),
    }
}

/// An active rule: its install, and the document's fields for display.
fn active_view(rule: &ActiveRule) -> Value {
    let document = &rule.document;
    let mut view = json!({
        "name": rule.name,
        "rule_hash": hex::encode(rule.hash),
        "install_index": rule.install_index,
        "document": String::from_utf8_lossy(document),
    });
    // The document was checked at install; reading it again as plain TOML
    // (not compiling its expressions) is enough to show its fields.
    let table = std::str::from_utf8(document).ok().and_then(|text| text.parse::<toml::Table>().ok());
    let field =
        |table: Option<&toml::Table>, key: &str| table.and_then(|t| t.get(key)).map_or(Value::Null, toml_to_json);
    let publish = table.as_ref().and_then(|t| t.get("publish")).and_then(toml::Value::as_table);
    view["on"] = field(table.as_ref(), "on");
    view["when"] = field(table.as_ref(), "when");
    view["publish"] = json!({
        "topic": field(publish, "topic"),
        "payload": field(publish, "payload"),
        "qos": field(publish, "qos"),
        "retain": field(publish, "retain"),
    });
    view
}

fn toml_to_json(value: &toml::Value) -> Value {
    match value {
        toml::Value::String(s) => json!(s),
        toml::Value::Integer(n) => json!(n),
        toml::Value::Boolean(b) => json!(b),
        other => json!(other.to_string()),
    }
}
