//! Replay (`spec/rules.md`, "what replay checks"): every rule re-executed
//! over every record, each action record compared byte for byte with the
//! one its trigger and rule imply (position, rule hash, topic, payload
//! hash, qos, retain, and the rest of the record), and every implied action
//! required to exist.
//!
//! Records are read in index order in batches and decoded; payloads are
//! fetched only where needed (triggers some rule's filter matches, retained
//! publishes, actions), so CEL runs only on matching triggers. Where a
//! needed payload was erased, the trigger is reported as unverifiable and
//! the actions logged for it are taken as they are.

use std::collections::{HashMap, VecDeque};
use std::fmt;

use sealmq_audit::store::LogReader;
use sealmq_audit::{PublishRecord, Record, RuleEvent, sha256};

use crate::document::RuleDocument;
use crate::engine::{PlannedAction, Rules, Unknown};
use crate::store::RuleStoreError;

/// Records read per query.
const BATCH: u64 = 8192;

/// What kind of wrong replay found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureKind {
    /// A due action is not in the log (another record, or none, is there).
    Missing,
    /// An action record where none is due.
    Unexpected,
    /// The action record differs from the one implied (topic, payload hash, qos, …).
    Differs,
    /// The action carries another hash than the installed rule document's:
    /// the document was changed after install.
    RuleChanged,
    /// An install record whose document is refused or names another rule.
    BadDocument,
    /// A record with a rule's device id (`$rule/…`) but no cause.
    NoCause,
    /// A stored payload that does not match its record's hash.
    PayloadMismatch,
    /// A record is missing or does not decode.
    BadRecord,
}

/// The first wrong place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayFailure {
    /// The log index it is at.
    pub index: u64,
    /// What kind of wrong.
    pub kind: FailureKind,
    /// What is wrong, for people.
    pub message: String,
}

impl fmt::Display for ReplayFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "record {}: {}", self.index, self.message)
    }
}

/// A trigger whose actions cannot be checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unverifiable {
    /// The trigger's index.
    pub index: u64,
    /// Why.
    pub reason: String,
}

/// What a replay found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Records read.
    pub records: u64,
    /// Triggers that some rule's filter matched (evaluated with CEL).
    pub triggers: u64,
    /// Action records checked.
    pub actions: u64,
    /// Triggers whose actions could not be checked, in index order.
    pub unverifiable: Vec<Unverifiable>,
    /// The first wrong place; `None` when replay holds.
    pub failure: Option<ReplayFailure>,
}

/// Replay's fold: the engine, with what it expects next.
#[derive(Debug)]
pub struct Replayer {
    engine: Rules,
    from: u64,
    expected: VecDeque<PlannedAction>,
    /// The trigger whose actions are being compared: (index, topic).
    trigger: Option<(u64, String)>,
    /// A trigger whose logged actions are taken as they are (unverifiable).
    unknown_span: Option<u64>,
    /// Does any rule of the log call `retained()`? If none does, retained
    /// payloads need not be read.
    reads_retained: bool,
    report: ReplayReport,
}

impl Replayer {
    /// Replays from record 0, checking the triggers at `from` and after.
    /// `reads_retained`: some rule document of the log may call
    /// `retained()` (when none does, retained payloads are not needed).
    pub fn new(from: u64, reads_retained: bool) -> Self {
        Self {
            reads_retained,
            engine: Rules::new(0),
            from,
            expected: VecDeque::new(),
            trigger: None,
            unknown_span: None,
            report: ReplayReport::default(),
        }
    }

    /// Steps over archived records to `index` (below the archived size,
    /// where no trigger is checked).
    pub fn skip_to(&mut self, index: u64) {
        self.engine.seek(index);
        self.expected.clear();
        self.trigger = None;
    }

    /// The index of the next record.
    pub fn next_index(&self) -> u64 {
        self.engine.next_index()
    }

    /// Does checking `record` need its payload?
    pub fn wants_payload(&self, index: u64, record: &Record) -> bool {
        match record {
            Record::Publish(p) => {
                p.cause.is_some()
                    || (self.reads_retained && p.retain && p.payload_len > 0)
                    || (index >= self.from && self.engine.any_rule_matches(&p.topic))
            }
            _ => false,
        }
    }

    /// Folds in the record at the next index (`body` its bytes, `payload`
    /// when wanted and stored); the first wrong place is an error.
    pub fn record(&mut self, body: &[u8], record: &Record, payload: Option<&[u8]>) -> Result<(), ReplayFailure> {
        let index = self.engine.next_index();
        self.report.records += 1;
        if let Some(expected) = self.expected.pop_front() {
            let implied = Record::Publish(expected.record.clone()).encode().expect("the engine's records encode");
            if body != implied {
                return Err(self.explain(index, &expected, record));
            }
            self.check_payload(index, &expected.record, payload)?;
            self.report.actions += 1;
            self.engine.apply(index, record, Some(payload.unwrap_or(&expected.payload)));
            return Ok(());
        }
        self.trigger = None;
        match record {
            Record::Publish(p) if p.cause.is_some() => {
                let trigger = p.cause.map_or(0, |c| c.trigger_index);
                if trigger >= self.from && self.unknown_span != Some(trigger) {
                    return Err(self.unexpected(index, p));
                }
                if let Some(payload) = payload {
                    self.check_payload(index, p, Some(payload))?;
                }
            }
            Record::Publish(p) if p.device_id.starts_with("$rule/") => {
                return Err(failure(
                    index,
                    FailureKind::NoCause,
                    format!(
                        "device {:?} is a rule's, but the record carries no cause (auth {})",
                        p.device_id,
                        p.auth()
                    ),
                ));
            }
            Record::Publish(p) => {
                self.unknown_span = None;
                if index >= self.from && self.engine.any_rule_matches(&p.topic) {
                    self.report.triggers += 1;
                    if let Some(payload) = payload {
                        self.check_payload(index, p, Some(payload))?;
                    }
                    let result = self.engine.evaluate_trigger(index, p, payload);
                    match result.unknown {
                        Some(unknown) => {
                            let reason = match unknown {
                                Unknown::PayloadErased => "its payload was erased".to_string(),
                                Unknown::RetainedErased(at) => {
                                    format!(
                                        "a rule reads the retained message of record {at}, whose payload was erased"
                                    )
                                }
                            };
                            self.report.unverifiable.push(Unverifiable { index, reason });
                            self.unknown_span = Some(index);
                        }
                        None => {
                            self.expected = result.actions.into();
                            self.trigger = Some((index, p.topic.clone()));
                        }
                    }
                }
            }
            Record::Rule(rule) => {
                self.unknown_span = None;
                if let RuleEvent::Installed { document } = &rule.event {
                    match RuleDocument::parse(document) {
                        Ok(parsed) if parsed.name() == rule.rule_name => {}
                        Ok(parsed) => {
                            return Err(failure(
                                index,
                                FailureKind::BadDocument,
                                format!("installs {:?} with a document named {:?}", rule.rule_name, parsed.name()),
                            ));
                        }
                        Err(e) => {
                            return Err(failure(
                                index,
                                FailureKind::BadDocument,
                                format!("installs {:?} with a document that is refused ({e})", rule.rule_name),
                            ));
                        }
                    }
                }
            }
            Record::Registry(_) => self.unknown_span = None,
        }
        self.engine.apply(index, record, payload);
        Ok(())
    }

    /// The log ended: an action still due is missing.
    pub fn finish(mut self) -> ReplayReport {
        if self.report.failure.is_none()
            && let Some(expected) = self.expected.pop_front()
        {
            let mut missing = self.missing(&expected);
            missing.message.push_str(" (the log ends before it)");
            self.report.failure = Some(missing);
        }
        self.report
    }

    /// Marks the changes so far durable (replay never aborts): keeps the
    /// engine's journal short.
    pub fn commit(&mut self) {
        self.engine.commit();
    }

    fn check_payload(&self, index: u64, record: &PublishRecord, payload: Option<&[u8]>) -> Result<(), ReplayFailure> {
        match payload {
            Some(payload) if sha256(payload) != record.payload_sha256 => Err(failure(
                index,
                FailureKind::PayloadMismatch,
                "the stored payload does not match the record's payload hash".into(),
            )),
            _ => Ok(()),
        }
    }

    fn trigger_text(&self, expected: &PlannedAction) -> String {
        let trigger = expected.record.cause.map_or(0, |c| c.trigger_index);
        match &self.trigger {
            Some((_, topic)) => format!("the trigger at {trigger} (topic {topic:?})"),
            None => format!("the trigger at {trigger}"),
        }
    }

    fn missing(&self, expected: &PlannedAction) -> ReplayFailure {
        failure(
            expected.index,
            FailureKind::Missing,
            format!(
                "missing action: rule {:?} (installed at {}) fires for {} and publishes to {:?}",
                expected.rule,
                expected.install_index,
                self.trigger_text(expected),
                expected.record.topic
            ),
        )
    }

    fn explain(&self, index: u64, expected: &PlannedAction, actual: &Record) -> ReplayFailure {
        let Record::Publish(actual) = actual else { return self.missing(expected) };
        let (Some(cause), Some(due)) = (actual.cause, expected.record.cause) else { return self.missing(expected) };
        if cause.trigger_index != due.trigger_index {
            return self.missing(expected);
        }
        if cause.rule_hash != due.rule_hash && actual.device_id == expected.record.device_id {
            return failure(
                index,
                FailureKind::RuleChanged,
                format!(
                    "the action carries rule hash {}, but rule {:?} as logged at {} hashes to {}: its document was \
                     changed after install",
                    hex::encode(cause.rule_hash),
                    expected.rule,
                    expected.install_index,
                    hex::encode(due.rule_hash)
                ),
            );
        }
        let e = &expected.record;
        let mut differences = Vec::new();
        if actual.device_id != e.device_id {
            differences.push(format!("device {:?} instead of {:?}", actual.device_id, e.device_id));
        }
        if actual.topic != e.topic {
            differences.push(format!("topic {:?} instead of {:?}", actual.topic, e.topic));
        }
        if (actual.payload_len, actual.payload_sha256) != (e.payload_len, e.payload_sha256) {
            differences.push(format!(
                "payload hash {} instead of {} (the payload {:?})",
                hex::encode(actual.payload_sha256),
                hex::encode(e.payload_sha256),
                String::from_utf8_lossy(&expected.payload)
            ));
        }
        if actual.qos != e.qos {
            differences.push(format!("qos {} instead of {}", actual.qos, e.qos));
        }
        if actual.retain != e.retain {
            differences.push(format!("retain {} instead of {}", actual.retain, e.retain));
        }
        if actual.received_ms != e.received_ms {
            differences.push(format!("received_ms {} instead of the trigger's {}", actual.received_ms, e.received_ms));
        }
        if cause.rule_hash != due.rule_hash {
            differences.push("another rule's hash".into());
        }
        failure(
            index,
            FailureKind::Differs,
            format!(
                "the action of rule {:?} for {} is not the one implied: {}",
                expected.rule,
                self.trigger_text(expected),
                differences.join(", ")
            ),
        )
    }

    fn unexpected(&self, index: u64, actual: &PublishRecord) -> ReplayFailure {
        let cause = actual.cause.expect("an action");
        let name = actual.device_id.strip_prefix("$rule/").unwrap_or(&actual.device_id);
        if let Some((at, rule)) = self.engine.rule(name)
            && rule.hash() != cause.rule_hash
        {
            return failure(
                index,
                FailureKind::RuleChanged,
                format!(
                    "an action of rule {name:?} with rule hash {}, but the rule as logged at {at} hashes to {}: its \
                     document was changed after install, and it implies no action here",
                    hex::encode(cause.rule_hash),
                    hex::encode(rule.hash())
                ),
            );
        }
        failure(
            index,
            FailureKind::Unexpected,
            format!(
                "an action of {:?} (for the trigger at {}, to {:?}) where none is due",
                actual.device_id, cause.trigger_index, actual.topic
            ),
        )
    }
}

fn failure(index: u64, kind: FailureKind, message: String) -> ReplayFailure {
    ReplayFailure { index, kind, message }
}

/// Replays the log `reader` reads, checking the triggers from index `from`
/// on; `progress(records done, total)` after each batch.
pub async fn replay(
    reader: &LogReader,
    from: u64,
    mut progress: impl FnMut(u64, u64),
) -> Result<ReplayReport, RuleStoreError> {
    let total = reader.record_count().await?;
    let pool = reader.pool();
    // A document that does not even contain the word calls no `retained()`.
    let reads_retained = {
        let mut conn = pool.acquire().await?;
        crate::store::rule_records(&mut conn).await?.iter().any(|e| {
            matches!(&e.record.event, RuleEvent::Installed { document }
                if document.windows(8).any(|w| w == b"retained"))
        })
    };
    // Records below the archived size are in the archive, not the log:
    // only the kept ones (registry, rules, current retained) are folded,
    // and triggers are checked from the archived size on.
    let archived = sealmq_audit::store::archive::archived_size(pool).await?;
    let mut replayer = Replayer::new(from.max(archived), reads_retained);
    let mut start = 0;
    while start < total {
        let end = (start + BATCH).min(total);
        let rows: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT idx, body FROM records WHERE idx >= ? AND idx < ? ORDER BY idx")
                .bind(to_i64(start))
                .bind(to_i64(end))
                .fetch_all(pool)
                .await?;
        let mut batch = Vec::with_capacity(rows.len());
        let mut wanted = Vec::new();
        let mut expected = start;
        for (idx, body) in rows {
            let found = u64::try_from(idx).unwrap_or(u64::MAX);
            if sealmq_audit::store::archive::gap::skips_archived(expected, found, archived) {
                expected = found;
            }
            if idx != to_i64(expected) {
                replayer.report.failure =
                    Some(failure(expected, FailureKind::BadRecord, "the record is missing".into()));
                return Ok(replayer.report);
            }
            let record = match Record::decode(&body) {
                Ok(record) => record,
                Err(e) => {
                    replayer.report.failure =
                        Some(failure(expected, FailureKind::BadRecord, format!("the record does not decode: {e}")));
                    return Ok(replayer.report);
                }
            };
            // Guessed with the state at the batch's start; a rule installed
            // within the batch is caught below, one payload at a time.
            if replayer.wants_payload(expected, &record) {
                wanted.push(expected);
            }
            batch.push((expected, body, record));
            expected += 1;
        }
        let mut payloads = fetch_payloads(reader, &wanted).await?;
        for (index, body, record) in batch {
            if index != replayer.next_index() {
                replayer.skip_to(index);
            }
            let payload = if replayer.wants_payload(index, &record) {
                match payloads.remove(&index) {
                    Some(payload) => payload,
                    None => fetch_payloads(reader, &[index]).await?.remove(&index).flatten(),
                }
            } else {
                None
            };
            if let Err(wrong) = replayer.record(&body, &record, payload.as_deref()) {
                replayer.report.failure = Some(wrong);
                return Ok(replayer.report);
            }
        }
        replayer.commit();
        start = end;
        progress(end, total);
    }
    Ok(replayer.finish())
}

/// The stored payloads of `indices`: `Some(None)` for one not stored.
async fn fetch_payloads(reader: &LogReader, indices: &[u64]) -> Result<HashMap<u64, Option<Vec<u8>>>, RuleStoreError> {
    let mut found: HashMap<u64, Option<Vec<u8>>> = indices.iter().map(|i| (*i, None)).collect();
    if indices.is_empty() {
        return Ok(found);
    }
    for (index, payload) in reader.payloads(indices).await? {
        found.insert(index, Some(payload));
    }
    Ok(found)
}

fn to_i64(value: u64) -> i64 {
    i64::try_from(value).expect("log positions stay below 2^63")
}
