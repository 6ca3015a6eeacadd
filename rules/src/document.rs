//! The rule document (`spec/rules.md`): UTF-8 TOML, stored in the log byte
//! for byte as installed, parsed strictly and checked once, at install.
//!
//! ```toml
//! name = "irrigate-bed"
//! on = "farm/+/moisture"
//! when = "json.moisture < 30.0"
//! [publish]
//! topic = "farm/{1}/valve"
//! payload = "'open'"
//! qos = 1
//! retain = true
//! ```
//!
//! Every field is required and no other key is accepted: a document means
//! exactly one thing to every implementation that replays it.

use std::fmt;

use sealmq_audit::{Hash, sha256};
use serde::Deserialize;
use thiserror::Error;

use crate::expr::{CelError, Expression};
use crate::topic::{Filter, Template, TemplateError, TopicError};

/// Longest rule document, in bytes (refused at install above it).
pub const MAX_DOCUMENT_BYTES: usize = 16 * 1024;
/// Longest rule name, in characters (all ASCII).
pub const MAX_NAME_LEN: usize = 64;

/// Why a rule document is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RuleError {
    /// Larger than [`MAX_DOCUMENT_BYTES`].
    #[error("the document is {0} bytes; at most 16384 are allowed")]
    TooLarge(usize),
    /// Not UTF-8.
    #[error("the document is not UTF-8 text")]
    NotUtf8,
    /// Not TOML of the documented shape (the message names the key or line).
    #[error("not a rule document: {0}")]
    Toml(String),
    /// The name is empty, too long or has other characters than [A-Za-z0-9._-].
    #[error("name {0:?}: 1 to 64 characters of A-Z, a-z, 0-9, '.', '_' and '-' are allowed")]
    Name(String),
    /// `on` is not a topic filter a rule may use.
    #[error("on = {filter:?}: {reason}")]
    On {
        /// The filter as written.
        filter: String,
        /// What is wrong with it.
        reason: TopicError,
    },
    /// `publish.topic` is not a valid template.
    #[error("publish.topic = {template:?}: {reason}")]
    Topic {
        /// The template as written.
        template: String,
        /// What is wrong with it.
        reason: TemplateError,
    },
    /// `publish.qos` is not 0, 1 or 2.
    #[error("publish.qos = {0}: must be 0, 1 or 2")]
    Qos(i64),
    /// `when` does not compile or exceeds a limit.
    #[error("when: {0}")]
    When(CelError),
    /// `publish.payload` does not compile or exceeds a limit.
    #[error("publish.payload: {0}")]
    Payload(CelError),
}

/// The document as TOML: exactly these keys.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: String,
    on: String,
    when: String,
    publish: RawPublish,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    topic: String,
    payload: String,
    qos: i64,
    retain: bool,
}

/// A parsed, checked rule document with its expressions compiled.
pub struct RuleDocument {
    bytes: Vec<u8>,
    hash: Hash,
    name: String,
    on: Filter,
    when: Expression,
    topic: Template,
    payload: Expression,
    qos: u8,
    retain: bool,
}

impl fmt::Debug for RuleDocument {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RuleDocument")
            .field("name", &self.name)
            .field("hash", &hex::encode(self.hash))
            .field("on", &self.on.as_str())
            .field("when", &self.when.source())
            .field("topic", &self.topic.as_str())
            .field("payload", &self.payload.source())
            .field("qos", &self.qos)
            .field("retain", &self.retain)
            .finish()
    }
}

impl RuleDocument {
    /// Parses and checks `bytes`: the TOML shape, the name, the filter, the
    /// topic template, qos, and both expressions (compiled within the
    /// limits of [`crate::expr`]).
    pub fn parse(bytes: &[u8]) -> Result<Self, RuleError> {
        if bytes.len() > MAX_DOCUMENT_BYTES {
            return Err(RuleError::TooLarge(bytes.len()));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| RuleError::NotUtf8)?;
        let raw: Raw = toml::from_str(text).map_err(|e| RuleError::Toml(e.message().to_string()))?;
        check_name(&raw.name)?;
        let on = Filter::parse(&raw.on).map_err(|reason| RuleError::On { filter: raw.on.clone(), reason })?;
        let topic = Template::parse(&raw.publish.topic)
            .map_err(|reason| RuleError::Topic { template: raw.publish.topic.clone(), reason })?;
        let qos = u8::try_from(raw.publish.qos).ok().filter(|q| *q <= 2).ok_or(RuleError::Qos(raw.publish.qos))?;
        let when = Expression::compile(&raw.when).map_err(RuleError::When)?;
        let payload = Expression::compile(&raw.publish.payload).map_err(RuleError::Payload)?;
        Ok(Self {
            hash: sha256(bytes),
            bytes: bytes.to_vec(),
            name: raw.name,
            on,
            when,
            topic,
            payload,
            qos,
            retain: raw.publish.retain,
        })
    }

    /// The rule's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `rule_hash`: SHA-256 of the document bytes as given.
    pub fn hash(&self) -> Hash {
        self.hash
    }

    /// The document, byte for byte.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The `on` filter.
    pub fn on(&self) -> &Filter {
        &self.on
    }

    /// The `when` expression.
    pub fn when(&self) -> &Expression {
        &self.when
    }

    /// The `publish.topic` template.
    pub fn topic(&self) -> &Template {
        &self.topic
    }

    /// The `publish.payload` expression.
    pub fn payload(&self) -> &Expression {
        &self.payload
    }

    /// `publish.qos`.
    pub fn qos(&self) -> u8 {
        self.qos
    }

    /// `publish.retain`.
    pub fn retain(&self) -> bool {
        self.retain
    }

    /// The device id of this rule's actions: `$rule/<name>`.
    pub fn device_id(&self) -> String {
        format!("$rule/{}", self.name)
    }
}

/// Checks a rule name: 1–64 characters of `[A-Za-z0-9._-]`.
pub fn check_name(name: &str) -> Result<(), RuleError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok { Ok(()) } else { Err(RuleError::Name(name.chars().take(80).collect())) }
}
