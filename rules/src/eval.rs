//! Evaluating rules against one trigger (`spec/rules.md`, "Variables"): the
//! CEL context is built once per trigger and every matching rule runs in
//! it, against the retained state just before the trigger.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use cel::objects::Map;
use cel::{Context, Value};
use sealmq_audit::{PublishRecord, RuleCause, sha256};

use crate::document::RuleDocument;
use crate::expr::env;

/// Below this much stack left, an evaluation moves to a stack of its own.
const EVAL_RED_ZONE: usize = 1536 << 10;
/// The stack an evaluation moves to (reserved, committed only as used).
pub const EVAL_STACK: usize = 16 << 20;

/// Largest action payload; a rule whose payload is longer does not fire.
pub const MAX_ACTION_PAYLOAD: usize = 256 * 1024;

/// What the expressions see of a trigger.
#[derive(Debug, Clone, Copy)]
pub struct Trigger<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its device id.
    pub device: &'a str,
    /// auth = 1.
    pub signed: bool,
    /// Its `received_ms`.
    pub received_ms: u64,
    /// Its application payload.
    pub payload: &'a [u8],
}

impl<'a> Trigger<'a> {
    /// The trigger a publish record and its payload make.
    pub fn of(record: &'a PublishRecord, payload: &'a [u8]) -> Self {
        Self {
            topic: &record.topic,
            device: &record.device_id,
            signed: record.signature.is_some(),
            received_ms: record.received_ms,
            payload,
        }
    }
}

/// What the log implies is retained on one topic, as `retained()` reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Retained {
    /// The retained payload, valid UTF-8.
    Text(Arc<str>),
    /// A retained message whose payload was erased (replay cannot know its
    /// text): the log index of its record.
    Erased(u64),
}

/// The retained payload text per topic (topics whose retained payload is
/// not UTF-8 are absent: `retained()` gives `""` for them as for none).
/// Cloning shares the map; the engine changes it only when no evaluation
/// holds a clone, so that costs no copy.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetainedTexts {
    topics: Arc<HashMap<String, Retained>>,
}

impl RetainedTexts {
    /// An empty state.
    pub fn new() -> Self {
        Self::default()
    }

    /// What `retained(topic)` sees.
    pub fn get(&self, topic: &str) -> Option<&Retained> {
        self.topics.get(topic)
    }

    /// Sets or clears `topic` and returns what it held.
    pub fn put(&mut self, topic: &str, value: Option<Retained>) -> Option<Retained> {
        let topics = Arc::make_mut(&mut self.topics);
        match value {
            Some(value) => match topics.get_mut(topic) {
                Some(held) => Some(std::mem::replace(held, value)),
                None => topics.insert(topic.to_string(), value),
            },
            None => topics.remove(topic),
        }
    }

    /// What a retained publish with `payload` (`None`: erased) at `index` leaves.
    pub fn value_of(index: u64, payload: Option<&[u8]>) -> Option<Retained> {
        match payload {
            None => Some(Retained::Erased(index)),
            Some(bytes) => std::str::from_utf8(bytes).ok().map(|text| Retained::Text(Arc::from(text))),
        }
    }

    /// Number of topics held.
    pub fn len(&self) -> usize {
        self.topics.len()
    }

    /// True when no topic is held.
    pub fn is_empty(&self) -> bool {
        self.topics.is_empty()
    }
}

/// A rule's action: the publish it asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Action {
    /// The topic, from `publish.topic`.
    pub topic: String,
    /// The payload `publish.payload` gave (a string as its UTF-8 bytes).
    pub payload: Vec<u8>,
    /// `publish.qos`.
    pub qos: u8,
    /// `publish.retain`.
    pub retain: bool,
}

impl Action {
    /// The action's log record (`spec/rules.md`): device `$rule/<name>`,
    /// the trigger's `received_ms`, auth 2 with the cause.
    pub fn record(&self, rule: &RuleDocument, trigger_index: u64, received_ms: u64) -> PublishRecord {
        PublishRecord {
            received_ms,
            device_id: rule.device_id(),
            topic: self.topic.clone(),
            qos: self.qos,
            retain: self.retain,
            payload_len: u32::try_from(self.payload.len()).expect("action payloads are at most 256 KiB"),
            payload_sha256: sha256(&self.payload),
            signature: None,
            cause: Some(RuleCause { trigger_index, rule_hash: rule.hash() }),
        }
    }
}

/// What a rule does for a trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It fires: one action.
    Fired(Action),
    /// `on` does not match the trigger's topic.
    NoMatch,
    /// `when` is false.
    WhenFalse,
    /// `when` errored or gave no bool: false, as the spec says.
    WhenError(String),
    /// `publish.payload` errored or gave neither string nor bytes: no action.
    PayloadError(String),
    /// The payload is longer than [`MAX_ACTION_PAYLOAD`]: no action.
    PayloadTooLarge(usize),
    /// `publish.topic` gave no topic a rule may publish to: no action.
    BadTopic(String),
}

impl std::fmt::Display for Outcome {
    /// One line for people (`sealmq rule test`).
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Outcome::Fired(a) => {
                let payload = match std::str::from_utf8(&a.payload) {
                    Ok(text) => format!("{text:?}"),
                    Err(_) => format!("0x{}", hex::encode(&a.payload)),
                };
                write!(f, "fires: publishes {payload} to {:?} (qos {}, retain {})", a.topic, a.qos, a.retain)
            }
            Outcome::NoMatch => f.write_str("does not fire: its `on` filter does not match the topic"),
            Outcome::WhenFalse => f.write_str("does not fire: `when` is false"),
            Outcome::WhenError(e) => write!(f, "does not fire: `when` failed, which counts as false ({e})"),
            Outcome::PayloadError(e) => write!(f, "does not fire: `publish.payload` failed ({e})"),
            Outcome::PayloadTooLarge(n) => {
                write!(f, "does not fire: the payload is {n} bytes, more than {MAX_ACTION_PAYLOAD}")
            }
            Outcome::BadTopic(e) => write!(f, "does not fire: `publish.topic` {e}"),
        }
    }
}

impl Outcome {
    /// The action, when the rule fired.
    pub fn action(self) -> Option<Action> {
        match self {
            Outcome::Fired(action) => Some(action),
            _ => None,
        }
    }
}

/// Sentinel for "no erased retained message was read".
const NONE_READ: u64 = u64::MAX;

/// The CEL context of one trigger; evaluate each matching rule in it.
pub struct Scope<'a> {
    trigger: Trigger<'a>,
    context: Option<Context<'static, 'static>>,
    retained: RetainedTexts,
    erased_read: Arc<AtomicU64>,
    /// Bind `payload`, `text` and `json` (parsing the payload as JSON).
    payload_variables: bool,
}

impl<'a> Scope<'a> {
    /// A scope for `trigger` against `retained` (the state just before it).
    /// The CEL context is built on the first evaluation.
    pub fn new(trigger: Trigger<'a>, retained: &RetainedTexts) -> Self {
        Self {
            trigger,
            context: None,
            retained: retained.clone(),
            erased_read: Arc::new(AtomicU64::new(NONE_READ)),
            payload_variables: true,
        }
    }

    /// As [`Scope::new`], for rules none of which reads `payload`, `text`
    /// or `json` ([`crate::Expression::uses_payload`]): the payload is
    /// neither copied nor parsed.
    pub fn without_payload(trigger: Trigger<'a>, retained: &RetainedTexts) -> Self {
        Self { payload_variables: false, ..Self::new(trigger, retained) }
    }

    /// When an expression read `retained(t)` of a topic whose retained
    /// payload was erased: that record's index (the outcome is then unknown).
    pub fn erased_read(&self) -> Option<u64> {
        let index = self.erased_read.load(Ordering::Relaxed);
        (index != NONE_READ).then_some(index)
    }

    /// What `rule` does for this scope's trigger.
    pub fn evaluate(&mut self, rule: &RuleDocument) -> Outcome {
        if !rule.on().matches(self.trigger.topic) {
            return Outcome::NoMatch;
        }
        self.evaluate_matching(rule)
    }

    /// What `rule`, whose filter is known to match the trigger's topic (the
    /// engine's filter index found it), does for this scope's trigger.
    pub fn evaluate_matching(&mut self, rule: &RuleDocument) -> Outcome {
        stacker::maybe_grow(EVAL_RED_ZONE, EVAL_STACK, || self.evaluate_here(rule))
    }

    fn evaluate_here(&mut self, rule: &RuleDocument) -> Outcome {
        let trigger = self.trigger;
        let context = match &mut self.context {
            Some(context) => context,
            None => {
                self.context.insert(build_context(&trigger, self.payload_variables, &self.retained, &self.erased_read))
            }
        };
        match rule.when().program().execute(context) {
            Ok(Value::Bool(true)) => {}
            Ok(Value::Bool(false)) => return Outcome::WhenFalse,
            Ok(other) => return Outcome::WhenError(format!("gave a {}, not a bool", other.type_of())),
            Err(e) => return Outcome::WhenError(e.to_string()),
        }
        let payload = match rule.payload().program().execute(context) {
            Ok(Value::String(s)) => s.as_bytes().to_vec(),
            Ok(Value::Bytes(b)) => b.as_ref().clone(),
            Ok(other) => return Outcome::PayloadError(format!("gave a {}, not a string or bytes", other.type_of())),
            Err(e) => return Outcome::PayloadError(e.to_string()),
        };
        if payload.len() > MAX_ACTION_PAYLOAD {
            return Outcome::PayloadTooLarge(payload.len());
        }
        let topic = match rule.topic().render(trigger.topic, trigger.device) {
            Ok(topic) => topic,
            Err(e) => return Outcome::BadTopic(e.to_string()),
        };
        Outcome::Fired(Action { topic, payload, qos: rule.qos(), retain: rule.retain() })
    }
}

/// What `rule` does for `trigger`, with `retained` the state just before it
/// (`sealmq rule test`; the engine evaluates through a [`Scope`]).
pub fn evaluate(rule: &RuleDocument, trigger: &Trigger<'_>, retained: &RetainedTexts) -> Outcome {
    Scope::new(*trigger, retained).evaluate(rule)
}

fn build_context(
    trigger: &Trigger<'_>,
    payload_variables: bool,
    retained: &RetainedTexts,
    erased_read: &Arc<AtomicU64>,
) -> Context<'static, 'static> {
    let mut context = Context::with_env(env());
    let levels: Vec<Value> = trigger.topic.split('/').map(|l| Value::String(Arc::new(l.to_string()))).collect();
    context.add_variable_from_value("topic", Value::String(Arc::new(trigger.topic.to_string())));
    context.add_variable_from_value("levels", Value::List(Arc::new(levels)));
    context.add_variable_from_value("device", Value::String(Arc::new(trigger.device.to_string())));
    context.add_variable_from_value("signed", Value::Bool(trigger.signed));
    // received_ms is a Unix time in ms: far below 2^63.
    context.add_variable_from_value("received_ms", Value::Int(i64::try_from(trigger.received_ms).unwrap_or(i64::MAX)));
    if payload_variables {
        let text = std::str::from_utf8(trigger.payload).ok();
        let json = text.and_then(|t| serde_json::from_str::<serde_json::Value>(t).ok()).map_or(Value::Null, from_json);
        context.add_variable_from_value("payload", Value::Bytes(Arc::new(trigger.payload.to_vec())));
        context.add_variable_from_value("text", text.map_or(Value::Null, |t| Value::String(Arc::new(t.to_string()))));
        context.add_variable_from_value("json", json);
    }
    let retained = retained.clone();
    let erased_read = Arc::clone(erased_read);
    context
        .add_function("retained", move |topic: Arc<String>| -> String {
            match retained.get(&topic) {
                Some(Retained::Text(text)) => text.to_string(),
                Some(Retained::Erased(index)) => {
                    erased_read.store(*index, Ordering::Relaxed);
                    String::new()
                }
                None => String::new(),
            }
        })
        .expect("retained is no standard function");
    context
}

/// A JSON value as CEL sees it: numbers as doubles (`spec/rules.md`), so
/// `json.moisture < 30.0` holds for `{"moisture": 21}` as for `21.0`.
fn from_json(value: serde_json::Value) -> Value {
    match value {
        serde_json::Value::Null => Value::Null,
        serde_json::Value::Bool(b) => Value::Bool(b),
        serde_json::Value::Number(n) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        serde_json::Value::String(s) => Value::String(Arc::new(s)),
        serde_json::Value::Array(items) => Value::List(Arc::new(items.into_iter().map(from_json).collect())),
        serde_json::Value::Object(entries) => {
            let map: HashMap<String, Value> = entries.into_iter().map(|(k, v)| (k, from_json(v))).collect();
            Value::Map(Map::from(map))
        }
    }
}
