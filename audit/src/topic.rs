//! MQTT topic filters (3.1.1 §4.7, 5 §4.7): the syntax every filter obeys
//! and how a filter matches a topic name. Device ACLs ([`crate::acl`]) and
//! rules (`sealmq-rules`) add their own restrictions on top.

use thiserror::Error;

/// Longest MQTT string: a u16 length prefix.
pub const MAX_TOPIC_LEN: usize = u16::MAX as usize;

/// Why a string is not an MQTT topic filter.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FilterError {
    /// Zero bytes long.
    #[error("it is empty")]
    Empty,
    /// More than an MQTT string holds.
    #[error("it is {0} bytes long, more than 65535")]
    TooLong(usize),
    /// MQTT strings may not contain U+0000.
    #[error("it contains a NUL character")]
    Nul,
    /// `#` anywhere but alone in the last level.
    #[error("'#' must be alone in the last level")]
    MultiLevelWildcard,
    /// `+` not alone in its level.
    #[error("'+' must be alone in its level")]
    SingleLevelWildcard,
}

/// One level of a filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level<'a> {
    /// Exact text.
    Literal(&'a str),
    /// `+`: exactly one level, possibly empty.
    One,
    /// `#`: the rest, including none.
    Rest,
}

/// Checks the rules every MQTT topic filter obeys.
pub fn check_filter(filter: &str) -> Result<(), FilterError> {
    if filter.is_empty() {
        return Err(FilterError::Empty);
    }
    if filter.len() > MAX_TOPIC_LEN {
        return Err(FilterError::TooLong(filter.len()));
    }
    if filter.contains('\0') {
        return Err(FilterError::Nul);
    }
    let mut levels = filter.split('/').peekable();
    while let Some(level) = levels.next() {
        if level.contains('#') && (level != "#" || levels.peek().is_some()) {
            return Err(FilterError::MultiLevelWildcard);
        }
        if level.contains('+') && level != "+" {
            return Err(FilterError::SingleLevelWildcard);
        }
    }
    Ok(())
}

/// The levels of a filter (checked with [`check_filter`] beforehand).
pub fn levels(filter: &str) -> impl Iterator<Item = Level<'_>> {
    filter.split('/').map(|level| match level {
        "+" => Level::One,
        "#" => Level::Rest,
        literal => Level::Literal(literal),
    })
}

/// Does the filter with these levels match the topic name `topic`? A
/// filter starting with a wildcard does not match topics starting with `$`
/// (5 §4.7.2).
pub fn matches<'a>(filter: impl IntoIterator<Item = Level<'a>>, topic: &str) -> bool {
    let mut filter = filter.into_iter().peekable();
    if topic.starts_with('$') && matches!(filter.peek(), Some(Level::One | Level::Rest)) {
        return false;
    }
    let mut names = topic.split('/');
    for level in filter {
        match level {
            Level::Rest => return true,
            Level::One => {
                if names.next().is_none() {
                    return false;
                }
            }
            Level::Literal(text) => {
                if names.next() != Some(text) {
                    return false;
                }
            }
        }
    }
    names.next().is_none()
}
