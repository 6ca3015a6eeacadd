//! Topic names and filters: validation (MQTT 5 §4.7, 3.1.1 §4.7) and matching.

use super::*;

/// Checks a topic name (MQTT 5 §4.7, 3.1.1 §4.7): 1 to 65535 bytes of UTF-8,
/// no U+0000, no `+` or `#`. Encoding faults are [`CodecError::Malformed`], the
/// rest [`CodecError::InvalidTopicName`]. Resolve topic aliases first.
pub fn validate_topic_name(topic: &[u8]) -> Result<&str, CodecError> {
    let topic = std::str::from_utf8(topic).map_err(|_| malformed("topic name is not valid UTF-8"))?;
    if topic.contains('\0') {
        return Err(malformed("topic name contains U+0000"));
    }
    if topic.is_empty() {
        return Err(CodecError::InvalidTopicName("empty topic name".into()));
    }
    if topic.len() > MAX_FIELD {
        return Err(CodecError::InvalidTopicName(format!("topic name of {} bytes", topic.len())));
    }
    if topic.contains(['+', '#']) {
        return Err(CodecError::InvalidTopicName(format!("wildcard in topic name {topic:?}")));
    }
    Ok(topic)
}

/// A valid topic filter, see [`validate_filter`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterKind<'a> {
    /// An ordinary filter.
    Plain(&'a str),
    /// `$share/{group}/{filter}`.
    Shared {
        /// The share name.
        group: &'a str,
        /// The filter inside.
        filter: &'a str,
    },
}

impl<'a> FilterKind<'a> {
    /// The filter topics are matched against (the inner one when shared).
    pub fn filter(&self) -> &'a str {
        match *self {
            FilterKind::Plain(filter) | FilterKind::Shared { filter, .. } => filter,
        }
    }
}

/// Checks a topic filter: non-empty, at most 65535 bytes, no U+0000, `#` only as
/// the whole last level, `+` only as a whole level; `$share/{group}/{filter}`
/// needs a non-empty group without `+`, `#` (or `/`), and a valid inner filter.
pub fn validate_filter(filter: &str) -> Result<FilterKind<'_>, CodecError> {
    let bad = |why: &str| CodecError::InvalidTopicFilter(format!("{filter:?}: {why}"));
    if filter.is_empty() {
        return Err(bad("empty"));
    }
    if filter.len() > MAX_FIELD {
        return Err(bad("longer than 65535 bytes"));
    }
    if filter.contains('\0') {
        return Err(bad("contains U+0000"));
    }
    if let Some(rest) = filter.strip_prefix("$share/") {
        let Some((group, inner)) = rest.split_once('/') else {
            return Err(bad("shared subscription without a topic filter"));
        };
        if group.is_empty() {
            return Err(bad("empty share name"));
        }
        if group.contains(['+', '#']) {
            return Err(bad("wildcard in the share name"));
        }
        if inner.is_empty() {
            return Err(bad("shared subscription with an empty topic filter"));
        }
        check_levels(inner).map_err(&bad)?;
        return Ok(FilterKind::Shared { group, filter: inner });
    }
    check_levels(filter).map_err(bad)?;
    Ok(FilterKind::Plain(filter))
}

pub(super) fn check_levels(filter: &str) -> Result<(), &'static str> {
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err("'#' must be the whole last level");
        }
        if level.contains('+') && level != "+" {
            return Err("'+' must be a whole level");
        }
    }
    Ok(())
}

/// Does `topic` match `filter`? `+` matches one level (possibly empty), `#` the
/// parent level and any number of levels below; topics starting with `$` are
/// not matched by a filter starting with a wildcard. A `$share/{group}/` prefix
/// is ignored (the inner filter is matched). Neither argument is validated.
pub fn topic_matches(filter: &str, topic: &str) -> bool {
    let filter = match filter.strip_prefix("$share/").and_then(|rest| rest.split_once('/')) {
        Some((_, inner)) => inner,
        None => filter,
    };
    if topic.starts_with('$') && filter.starts_with(['+', '#']) {
        return false;
    }
    let mut topic_levels = topic.split('/');
    for f in filter.split('/') {
        if f == "#" {
            return true;
        }
        match topic_levels.next() {
            Some(t) if f == "+" || f == t => {}
            _ => return false,
        }
    }
    topic_levels.next().is_none()
}
