//! The rule engine: a fold over the log's records in index order
//! (`spec/rules.md`, "Execution").
//!
//! It keeps the active rules (installed by kind-3 records below the current
//! index and not removed since, in the order of their install records),
//! indexed by filter so that a trigger only evaluates the rules whose `on`
//! can match it, and the retained payload text per topic as the log implies
//! it. A trigger at `t` is evaluated against the state just before it; its
//! actions go at `t+1, t+2, …` in rule order; then the trigger and its
//! actions change the retained state, in index order. Actions never
//! trigger rules.
//!
//! Semantics where the spec is silent (shared with every implementation,
//! see the rules contract): an install record whose document does not parse
//! (only a tampered outbox or log can hold one) still replaces the rule of
//! that name, and installs nothing; a removal of a name that is not active
//! changes nothing.
//!
//! Changes since the last [`Rules::commit`] are journaled, so
//! [`Rules::abort`] puts the state back when the sequencer's transaction
//! fails.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use sealmq_audit::{Hash, PublishRecord, Record, RetainedChange, RuleEvent, RuleRecord};

use crate::document::RuleDocument;
use crate::eval::{Retained, RetainedTexts, Scope, Trigger};
use crate::topic::{Filter, Level};

/// An active rule, as `sealmq rule list` and `/v1/rules` show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActiveRule {
    /// Its name.
    pub name: String,
    /// SHA-256 of its document.
    pub hash: Hash,
    /// The log index of its install record (its place in the rule order).
    pub install_index: u64,
    /// The document, byte for byte.
    pub document: Vec<u8>,
}

/// An action the engine computed for a trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedAction {
    /// Its log index: the trigger's + 1, + 2, ….
    pub index: u64,
    /// Its record.
    pub record: PublishRecord,
    /// Its payload.
    pub payload: Vec<u8>,
    /// The rule's name.
    pub rule: String,
    /// The index of the rule's install record.
    pub install_index: u64,
}

/// Why the actions of a trigger cannot be known (replay reports it as
/// unverifiable).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Unknown {
    /// A matching rule reads the payload, and the trigger's was erased.
    PayloadErased,
    /// An expression read `retained(t)` of a topic whose retained payload
    /// (the record at this index) was erased.
    RetainedErased(u64),
}

/// The actions due for one trigger.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriggerResult {
    /// The actions, in rule order (with an erased retained payload read as
    /// `""`; none when the trigger's own payload was needed and erased).
    pub actions: Vec<PlannedAction>,
    /// Set when what is due cannot be known from the log.
    pub unknown: Option<Unknown>,
}

/// One journaled change, undone in reverse order by [`Rules::abort`].
#[derive(Debug)]
enum Undo {
    Retained { topic: String, previous: Option<Retained> },
    Installed { index: u64 },
    Removed { index: u64, rule: Arc<RuleDocument> },
}

/// A trie of filters: each rule sits at the node its filter's levels lead to.
#[derive(Debug, Default)]
struct Node {
    children: HashMap<String, Node>,
    plus: Option<Box<Node>>,
    /// Rules whose filter ends here.
    here: Vec<u64>,
    /// Rules whose filter ends here with `#`.
    rest: Vec<u64>,
}

impl Node {
    fn slot(&mut self, filter: &Filter) -> &mut Vec<u64> {
        let mut node = self;
        for level in filter.levels() {
            node = match level {
                Level::Literal(text) => node.children.entry(text.to_string()).or_default(),
                Level::One => node.plus.get_or_insert_with(Box::default),
                Level::Rest => return &mut node.rest,
            };
        }
        &mut node.here
    }

    fn insert(&mut self, filter: &Filter, index: u64) {
        let slot = self.slot(filter);
        let at = slot.partition_point(|i| *i < index);
        slot.insert(at, index);
    }

    fn remove(&mut self, filter: &Filter, index: u64) {
        self.slot(filter).retain(|i| *i != index);
    }

    /// Adds the rules whose filters match `levels` (a topic split on `/`).
    fn collect(&self, levels: &[&str], first: bool, dollar: bool, out: &mut Vec<u64>) {
        let wildcards = !(first && dollar);
        if wildcards {
            out.extend_from_slice(&self.rest);
        }
        let Some((level, rest)) = levels.split_first() else {
            out.extend_from_slice(&self.here);
            return;
        };
        if let Some(child) = self.children.get(*level) {
            child.collect(rest, false, dollar, out);
        }
        if wildcards && let Some(plus) = &self.plus {
            plus.collect(rest, false, dollar, out);
        }
    }
}

/// The rule engine (see the module docs).
#[derive(Debug)]
pub struct Rules {
    next_index: u64,
    /// Active rules by install index: the rule order.
    rules: BTreeMap<u64, Arc<RuleDocument>>,
    /// Active rules' install indices by name.
    by_name: HashMap<String, u64>,
    filters: Node,
    retained: RetainedTexts,
    undo: Vec<Undo>,
    /// `next_index` as of the last commit, when something changed since.
    undo_next: Option<u64>,
}

impl Rules {
    /// An engine with no rules and no retained state, whose next record is
    /// `next_index`.
    pub fn new(next_index: u64) -> Self {
        Self {
            next_index,
            rules: BTreeMap::new(),
            by_name: HashMap::new(),
            filters: Node::default(),
            retained: RetainedTexts::new(),
            undo: Vec::new(),
            undo_next: None,
        }
    }

    /// The index of the first record the engine has not seen.
    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    /// Moves the next index to `index` without folding in the records
    /// between (loading a state from the store; records that cannot matter).
    pub fn seek(&mut self, index: u64) {
        self.undo_next.get_or_insert(self.next_index);
        self.next_index = index;
    }

    /// The active rules, in rule order.
    pub fn active(&self) -> Vec<ActiveRule> {
        self.rules
            .iter()
            .map(|(index, rule)| ActiveRule {
                name: rule.name().to_string(),
                hash: rule.hash(),
                install_index: *index,
                document: rule.bytes().to_vec(),
            })
            .collect()
    }

    /// The active rule called `name`, with its install index.
    pub fn rule(&self, name: &str) -> Option<(u64, &RuleDocument)> {
        let index = *self.by_name.get(name)?;
        Some((index, self.rules.get(&index)?))
    }

    /// Number of active rules.
    pub fn len(&self) -> usize {
        self.rules.len()
    }

    /// True when no rule is active.
    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }

    /// The retained texts as of the next index.
    pub fn retained(&self) -> &RetainedTexts {
        &self.retained
    }

    /// Sets the retained state of `topic` without journaling it (loading
    /// the state at the log's head).
    pub fn set_retained(&mut self, topic: &str, value: Option<Retained>) {
        self.retained.put(topic, value);
    }

    /// Does some active rule's filter match `topic`?
    pub fn any_rule_matches(&self, topic: &str) -> bool {
        if self.rules.is_empty() {
            return false;
        }
        let levels: Vec<&str> = topic.split('/').collect();
        let mut found = Vec::new();
        self.filters.collect(&levels, true, topic.starts_with('$'), &mut found);
        !found.is_empty()
    }

    /// The actions due for the trigger `record` at `index` (its payload:
    /// `None` when erased), against the current state; changes nothing.
    /// Not a trigger (an action, or no publish): none.
    pub fn evaluate_trigger(&self, index: u64, record: &PublishRecord, payload: Option<&[u8]>) -> TriggerResult {
        if !record.is_trigger() || self.rules.is_empty() {
            return TriggerResult::default();
        }
        let levels: Vec<&str> = record.topic.split('/').collect();
        let mut candidates = Vec::new();
        self.filters.collect(&levels, true, record.topic.starts_with('$'), &mut candidates);
        if candidates.is_empty() {
            return TriggerResult::default();
        }
        candidates.sort_unstable();
        let rules: Vec<(u64, &Arc<RuleDocument>)> =
            candidates.iter().filter_map(|i| self.rules.get(i).map(|rule| (*i, rule))).collect();
        let reads_payload = rules.iter().any(|(_, r)| r.when().uses_payload() || r.payload().uses_payload());
        let payload = match payload {
            Some(payload) => payload,
            None if record.payload_len == 0 => &[],
            None if reads_payload => {
                return TriggerResult { actions: Vec::new(), unknown: Some(Unknown::PayloadErased) };
            }
            // No matching rule reads it: what it was does not matter.
            None => &[],
        };
        let trigger = Trigger::of(record, payload);
        let mut scope = if reads_payload {
            Scope::new(trigger, &self.retained)
        } else {
            Scope::without_payload(trigger, &self.retained)
        };
        let mut actions = Vec::new();
        for (install_index, rule) in rules {
            if let Some(action) = scope.evaluate_matching(rule).action() {
                let at = index + 1 + actions.len() as u64;
                actions.push(PlannedAction {
                    index: at,
                    record: action.record(rule, index, record.received_ms),
                    payload: action.payload,
                    rule: rule.name().to_string(),
                    install_index,
                });
            }
        }
        // The broker still logs what the rules gave (an erased retained
        // payload reads as ""); replay cannot check it.
        TriggerResult { actions, unknown: scope.erased_read().map(Unknown::RetainedErased) }
    }

    /// Folds in the record at `index` (its payload: `None` when erased or
    /// not stored) without evaluating anything: rule installs and removals,
    /// retained changes. The next index becomes `index + 1`.
    pub fn apply(&mut self, index: u64, record: &Record, payload: Option<&[u8]>) {
        if index != self.next_index {
            tracing::warn!(index, expected = self.next_index, "rules: records out of order");
        }
        self.undo_next.get_or_insert(self.next_index);
        match record {
            Record::Rule(rule) => self.rule_event(index, rule),
            Record::Publish(_) => {
                if let Some(change) = RetainedChange::of(record) {
                    let value = match change {
                        RetainedChange::Set(_) => RetainedTexts::value_of(index, payload),
                        RetainedChange::Clear(_) => None,
                    };
                    let previous = self.retained.put(change.topic(), value);
                    self.undo.push(Undo::Retained { topic: change.topic().to_string(), previous });
                }
            }
            Record::Registry(_) => {}
        }
        self.next_index = index + 1;
    }

    /// The sequencer's step: the record at `index` and its payload; returns
    /// the actions to log right after it, already folded in.
    pub fn follow_record(&mut self, index: u64, record: &Record, payload: Option<&[u8]>) -> Vec<PlannedAction> {
        let result = match record {
            Record::Publish(publish) => self.evaluate_trigger(index, publish, payload),
            _ => TriggerResult::default(),
        };
        match result.unknown {
            Some(Unknown::PayloadErased) => {
                tracing::error!(index, "rules: the trigger has no payload to evaluate its rules on; no actions");
            }
            Some(Unknown::RetainedErased(at)) => {
                tracing::warn!(index, retained = at, "rules: a rule read an erased retained payload as \"\"");
            }
            None => {}
        }
        self.apply(index, record, payload);
        for action in &result.actions {
            let record = Record::Publish(action.record.clone());
            self.apply(action.index, &record, Some(&action.payload));
        }
        result.actions
    }

    fn rule_event(&mut self, index: u64, event: &RuleRecord) {
        match &event.event {
            RuleEvent::Installed { document } => {
                self.remove(&event.rule_name);
                match RuleDocument::parse(document) {
                    Ok(rule) if rule.name() == event.rule_name => self.install(index, Arc::new(rule)),
                    Ok(rule) => tracing::error!(
                        index,
                        record = event.rule_name,
                        document = rule.name(),
                        "rules: install record names another rule than its document; nothing installed"
                    ),
                    Err(e) => tracing::error!(index, rule = event.rule_name, "rules: logged document refused: {e}"),
                }
            }
            RuleEvent::Removed => {
                if !self.remove(&event.rule_name) {
                    tracing::warn!(index, rule = event.rule_name, "rules: removal of a rule that is not active");
                }
            }
        }
    }

    fn install(&mut self, index: u64, rule: Arc<RuleDocument>) {
        self.filters.insert(rule.on(), index);
        self.by_name.insert(rule.name().to_string(), index);
        self.rules.insert(index, rule);
        self.undo.push(Undo::Installed { index });
    }

    /// Removes the active rule `name`; false when there is none.
    fn remove(&mut self, name: &str) -> bool {
        let Some(index) = self.by_name.remove(name) else { return false };
        let rule = self.rules.remove(&index).expect("by_name and rules agree");
        self.filters.remove(rule.on(), index);
        self.undo.push(Undo::Removed { index, rule });
        true
    }

    /// The changes since the last commit are durable: forget how to undo them.
    pub fn commit(&mut self) {
        self.undo.clear();
        self.undo_next = None;
    }

    /// Puts the state back as of the last [`Rules::commit`].
    pub fn abort(&mut self) {
        while let Some(undo) = self.undo.pop() {
            match undo {
                Undo::Retained { topic, previous } => {
                    self.retained.put(&topic, previous);
                }
                Undo::Installed { index } => {
                    if let Some(rule) = self.rules.remove(&index) {
                        self.filters.remove(rule.on(), index);
                        self.by_name.remove(rule.name());
                    }
                }
                Undo::Removed { index, rule } => {
                    self.filters.insert(rule.on(), index);
                    self.by_name.insert(rule.name().to_string(), index);
                    self.rules.insert(index, rule);
                }
            }
        }
        if let Some(next) = self.undo_next.take() {
            self.next_index = next;
        }
    }
}

#[cfg(feature = "store")]
impl From<PlannedAction> for sealmq_audit::store::Derived {
    fn from(action: PlannedAction) -> Self {
        Self { index: action.index, record: action.record, payload: action.payload }
    }
}

#[cfg(feature = "store")]
impl sealmq_audit::store::Follower for Rules {
    fn next_index(&self) -> u64 {
        self.next_index
    }

    fn follow(&mut self, index: u64, record: &[u8], payload: Option<&[u8]>) -> Vec<sealmq_audit::store::Derived> {
        let record = match Record::decode(record) {
            Ok(record) => record,
            Err(e) => {
                tracing::error!(index, "rules: the record does not decode ({e}); no actions");
                self.undo_next.get_or_insert(self.next_index);
                self.next_index = index + 1;
                return Vec::new();
            }
        };
        self.follow_record(index, &record, payload).into_iter().map(Into::into).collect()
    }

    fn commit(&mut self) {
        Rules::commit(self);
    }

    fn abort(&mut self) {
        Rules::abort(self);
    }
}
