//! Payload retention (`[retention]` in the configuration) and erase
//! requests (`sealmq erase`), carried out by the sequencer
//! ([`Log::erase`]): records stay, only stored payloads go, and each
//! erasure is itself a record (`$sealmq/erasure`).
//!
//! ```toml
//! [retention]
//! interval = "60s"              # how often the rules run
//! max_payload_bytes = 1073741824 # size cap on stored payloads, oldest erased first
//! [[retention.rules]]
//! name = "zigbee"
//! filter = "zigbee2mqtt/#"
//! max_age = "7d"
//! ```

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use sealmq_audit::store::{ErasureOutbox, ErasureSpec, Log, Reason, Resume, StoreError, now_ms};
use sealmq_audit::topic::check_filter;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::metrics::Metrics;

/// How often the erase-request outbox is looked at.
const OUTBOX_POLL: Duration = Duration::from_millis(500);
/// The size cap erases this much below the cap: the erasure records a pass
/// logs are stored payloads too (a few hundred bytes each, never erased),
/// and without room for them the next pass would find the cap exceeded by
/// its own records and erase again.
const SIZE_CAP_HEADROOM: u64 = 1024;

/// A span of time as written in the configuration: a whole number and a
/// unit, `ms`, `s`, `m`, `h` or `d` (`"7d"`, `"90s"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span(pub Duration);

/// Why a [`Span`], a rule or the `[retention]` section is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    /// Not `<number><unit>`.
    #[error("{0:?} is not a duration: write a whole number and a unit (ms, s, m, h or d), e.g. \"7d\" or \"30s\"")]
    Span(String),
    /// A rule is unusable.
    #[error("retention rule {name:?}: {why}")]
    Rule {
        /// The rule's name.
        name: String,
        /// Why.
        why: String,
    },
    /// The section is unusable.
    #[error("retention: {0}")]
    Section(String),
}

impl FromStr for Span {
    type Err = RetentionError;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let bad = || RetentionError::Span(text.to_string());
        let split = text.find(|c: char| !c.is_ascii_digit()).ok_or_else(bad)?;
        let (number, unit) = text.split_at(split);
        let number: u64 = number.parse().map_err(|_| bad())?;
        let millis_per = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            _ => return Err(bad()),
        };
        number.checked_mul(millis_per).map(|ms| Span(Duration::from_millis(ms))).ok_or_else(bad)
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}ms", self.0.as_millis())
    }
}

/// Written as it is read back: `"<n>ms"` (for `sealmq check-config`).
impl Serialize for Span {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Span {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The `[retention]` section.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How often the rules and the size cap run.
    pub interval: Span,
    /// At most this many bytes of payloads stay stored; beyond, the oldest
    /// are erased. `None`: no cap.
    pub max_payload_bytes: Option<u64>,
    /// Payloads of records whose topic matches `filter` are erased once
    /// older than `max_age`.
    pub rules: Vec<RetentionRule>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self { interval: Span(Duration::from_secs(60)), max_payload_bytes: None, rules: Vec::new() }
    }
}

/// One `[[retention.rules]]` entry.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// Named in each erasure record it causes.
    pub name: String,
    /// An MQTT topic filter.
    pub filter: String,
    /// Payloads older than this are erased.
    pub max_age: Span,
}

impl RetentionConfig {
    /// Refuses rules that cannot work: empty or repeated names, bad
    /// filters, zero ages or interval.
    pub fn check(&self) -> Result<(), RetentionError> {
        if self.interval.0.is_zero() {
            return Err(RetentionError::Section("interval must be more than 0".into()));
        }
        if self.max_payload_bytes == Some(0) {
            return Err(RetentionError::Section(
                "max_payload_bytes must be more than 0 (leave it out for no cap)".into(),
            ));
        }
        let mut names = HashSet::new();
        for rule in &self.rules {
            let wrong = |why: String| RetentionError::Rule { name: rule.name.clone(), why };
            if rule.name.is_empty() {
                return Err(wrong("the name is empty".into()));
            }
            if !names.insert(&rule.name) {
                return Err(wrong("two rules have this name".into()));
            }
            check_filter(&rule.filter).map_err(|e| wrong(format!("filter {:?}: {e}", rule.filter)))?;
            if rule.max_age.0.is_zero() {
                return Err(wrong("max_age must be more than 0".into()));
            }
        }
        Ok(())
    }

    /// Is there anything to run periodically?
    pub fn is_active(&self) -> bool {
        !self.rules.is_empty() || self.max_payload_bytes.is_some()
    }
}

/// What a pass (or a request) erased, for the log and for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Outcome {
    /// Payloads erased.
    pub records: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl std::ops::AddAssign for Outcome {
    fn add_assign(&mut self, other: Self) {
        self.records += other.records;
        self.bytes += other.bytes;
    }
}

/// Where a rule's (or the size cap's) last pass ended: everything it
/// covered below `from` is erased but for `revisit` (then-current retained
/// messages, looked at again each pass).
#[derive(Debug, Clone, Default)]
struct Cursor {
    from: u64,
    revisit: Vec<u64>,
}

/// The retention task's state.
pub struct Retention {
    log: Arc<Log>,
    outbox: ErasureOutbox,
    config: RetentionConfig,
    cursors: HashMap<String, Cursor>,
    size_cursor: Cursor,
    /// Stored payload bytes and the highest payload index counted, once known.
    stored: Option<(u64, Option<u64>)>,
    /// Where erased bytes are counted (`sealmq_payload_erased_bytes_total`).
    metrics: Option<Arc<Metrics>>,
}

impl Retention {
    /// A task for `log`, its outbox and `config` (checked).
    pub fn new(log: Arc<Log>, outbox: ErasureOutbox, config: RetentionConfig) -> Self {
        let (cursors, size_cursor) = (HashMap::new(), Cursor::default());
        Self { log, outbox, config, cursors, size_cursor, stored: None, metrics: None }
    }

    /// Counts what it erases in `metrics`.
    pub fn counting(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Runs until `stop` turns true: erase requests as they come, the rules
    /// every `interval`.
    pub async fn run(mut self, mut stop: watch::Receiver<bool>) {
        let mut poll = tokio::time::interval(OUTBOX_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut due = tokio::time::Instant::now() + self.config.interval.0;
        loop {
            tokio::select! {
                _ = poll.tick() => {}
                _ = stop.changed() => return,
            }
            if *stop.borrow() {
                return;
            }
            // What this round erased, requests and rules alike (the one
            // place a payload-erased counter would add it up).
            let mut erased = Outcome::default();
            match self.requests().await {
                Ok(outcome) => erased += outcome,
                Err(e) => tracing::error!(error = %e, "carrying out erase requests failed; retrying"),
            }
            if self.config.is_active() && tokio::time::Instant::now() >= due {
                due = tokio::time::Instant::now() + self.config.interval.0;
                match self.pass().await {
                    Ok(outcome) => erased += outcome,
                    Err(e) => tracing::error!(error = %e, "a retention pass failed; it runs again next interval"),
                }
            }
            if erased.records > 0 {
                tracing::info!(records = erased.records, bytes = erased.bytes, "payloads erased");
                if let Some(metrics) = &self.metrics {
                    metrics.payload_erased(erased.bytes);
                }
            }
        }
    }

    /// Carries out the erase requests waiting in the outbox.
    pub async fn requests(&mut self) -> Result<Outcome, StoreError> {
        let mut outcome = Outcome::default();
        for (seq, spec) in self.outbox.waiting().await? {
            match spec {
                Ok(spec) => {
                    let erased = self.log.erase(&spec, Resume { outbox: Some(seq), ..Resume::default() }).await?;
                    outcome += self.count(erased.records, erased.bytes);
                }
                Err(why) => {
                    tracing::error!(seq, why, "an erase request does not parse; it is dropped, nothing was erased");
                    self.outbox.discard(seq).await?;
                }
            }
        }
        Ok(outcome)
    }

    /// One pass: each rule, then the size cap. Returns what it erased
    /// (a metrics counter adds it up).
    pub async fn pass(&mut self) -> Result<Outcome, StoreError> {
        let mut outcome = Outcome::default();
        let now = now_ms();
        for rule in self.config.rules.clone() {
            let mut spec = ErasureSpec::new(Reason::Retention);
            spec.rule = Some(rule.name.clone());
            spec.filter = Some(rule.filter.clone());
            let age = u64::try_from(rule.max_age.0.as_millis()).unwrap_or(u64::MAX);
            spec.before_ms = Some(now.saturating_sub(age));
            let cursor = self.cursors.remove(&rule.name).unwrap_or_default();
            let erased =
                self.log.erase(&spec, Resume { from: cursor.from, revisit: cursor.revisit, outbox: None }).await?;
            self.cursors.insert(rule.name.clone(), Cursor { from: erased.next, revisit: erased.kept_retained });
            outcome += self.count(erased.records, erased.bytes);
        }
        if let Some(cap) = self.config.max_payload_bytes {
            let stored = self.stored_bytes().await?;
            if stored > cap {
                let mut spec = ErasureSpec::new(Reason::SizeCap);
                spec.bytes_goal = Some(stored - cap + SIZE_CAP_HEADROOM.min(cap / 2));
                let cursor = std::mem::take(&mut self.size_cursor);
                let erased =
                    self.log.erase(&spec, Resume { from: cursor.from, revisit: cursor.revisit, outbox: None }).await?;
                self.size_cursor = Cursor { from: erased.next, revisit: erased.kept_retained };
                outcome += self.count(erased.records, erased.bytes);
            }
        }
        Ok(outcome)
    }

    /// Takes erased bytes off the running total of stored payload bytes.
    fn count(&mut self, records: u64, bytes: u64) -> Outcome {
        if let Some((stored, _)) = &mut self.stored {
            *stored = stored.saturating_sub(bytes);
        }
        Outcome { records, bytes }
    }

    /// Stored payload bytes: summed once, then kept up to date with the
    /// payloads appended since (a range read of the new rows) and what this
    /// task erased (every erasure while the broker runs is this task's).
    async fn stored_bytes(&mut self) -> Result<u64, StoreError> {
        let reader = self.log.reader();
        let (stored, last) = match self.stored {
            None => reader.payload_bytes_after(None).await?,
            Some((stored, last)) => {
                let (added, newest) = reader.payload_bytes_after(last).await?;
                (stored + added, newest.or(last))
            }
        };
        self.stored = Some((stored, last));
        Ok(stored)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn config(text: &str) -> Result<RetentionConfig, String> {
        let config: RetentionConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        config.check().map_err(|e| e.to_string())?;
        Ok(config)
    }

    #[test]
    fn spans() {
        assert_eq!("7d".parse::<Span>().unwrap().0, Duration::from_secs(7 * 86_400));
        assert_eq!("90s".parse::<Span>().unwrap().0, Duration::from_secs(90));
        assert_eq!("15m".parse::<Span>().unwrap().0, Duration::from_secs(900));
        assert_eq!("2h".parse::<Span>().unwrap().0, Duration::from_secs(7200));
        assert_eq!("250ms".parse::<Span>().unwrap().0, Duration::from_millis(250));
        for bad in ["", "7", "d", "7 d", "7days", "-1s", "1.5h", "7D", "99999999999999999999d"] {
            let err = bad.parse::<Span>().unwrap_err().to_string();
            assert!(err.contains("not a duration"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn rules_parse_and_bad_ones_are_refused_with_the_reason() {
        let ok = config(
            "interval = \"5s\"\nmax_payload_bytes = 1000\n\
             [[rules]]\nname = \"zigbee\"\nfilter = \"zigbee2mqtt/#\"\nmax_age = \"7d\"",
        )
        .unwrap();
        assert_eq!(ok.interval.0, Duration::from_secs(5));
        assert_eq!(ok.rules[0].max_age.0, Duration::from_secs(7 * 86_400));
        assert!(ok.is_active());
        assert!(!config("").unwrap().is_active());
        assert_eq!(config("").unwrap().interval.0, Duration::from_secs(60));

        let err = config("[[rules]]\nname = \"a\"\nfilter = \"a/#/b\"\nmax_age = \"1d\"").unwrap_err();
        assert!(err.contains("\"a\"") && err.contains("filter"), "{err}");
        let err = config("[[rules]]\nname = \"a\"\nfilter = \"a\"\nmax_age = \"1 week\"").unwrap_err();
        assert!(err.contains("not a duration"), "{err}");
        let err = config("[[rules]]\nname = \"a\"\nfilter = \"a\"\nmax_age = \"0s\"").unwrap_err();
        assert!(err.contains("max_age"), "{err}");
        let two = "[[rules]]\nname = \"a\"\nfilter = \"a\"\nmax_age = \"1s\"\n";
        let err = config(&format!("{two}{two}")).unwrap_err();
        assert!(err.contains("two rules"), "{err}");
        let err = config("[[rules]]\nname = \"a\"\nfilter = \"a\"\nmax_age = \"1s\"\nmaxage = \"1s\"").unwrap_err();
        assert!(err.contains("maxage"), "{err}");
        let err = config("[[rules]]\nname = \"a\"\nmax_age = \"1s\"").unwrap_err();
        assert!(err.contains("filter"), "{err}");
        let err = config("max_payload_bytes = 0").unwrap_err();
        assert!(err.contains("max_payload_bytes"), "{err}");
    }

    proptest! {
        #[test]
        fn every_span_written_with_a_unit_reads_back(n in 0u64..1_000_000, unit in 0usize..5) {
            let (name, ms) = [("ms", 1u64), ("s", 1_000), ("m", 60_000), ("h", 3_600_000), ("d", 86_400_000)][unit];
            let span: Span = format!("{n}{name}").parse().unwrap();
            prop_assert_eq!(span.0, Duration::from_millis(n * ms));
        }

        #[test]
        fn garbage_never_parses_as_a_span(text in "[^0-9]*[a-z ]*") {
            prop_assert!(text.parse::<Span>().is_err());
        }
    }
}
