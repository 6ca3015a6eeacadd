//! Device ACLs: which topics a device may publish to, which filters it may
//! subscribe to. Pure code, no I/O: the broker checks every PUBLISH and
//! SUBSCRIBE with it, and the registry validates patterns with it.
//!
//! A device's ACL is a list of patterns, each an MQTT topic filter that may
//! contain the placeholder `{device}`, replaced by the device's own id. An
//! empty list means no restriction. The id is substituted as literal text
//! *inside* a level that the pattern's own `/` delimit: an id containing
//! `/`, `+` or `#` never acts as a separator or wildcard (a device called
//! `+` with pattern `sensors/{device}/#` gets the topic level `+`, which no
//! real topic has, never every device's topics). The registry refuses such
//! combinations up front ([`validate_pattern`]); here they simply match
//! nothing, so a bad row fails closed.
//!
//! Matching follows MQTT (3.1.1 §4.7, 5 §4.7): `+` is one level (possibly
//! empty), `#` is the rest including none (`a/#` matches `a`), and a pattern
//! starting with a wildcard does not match topics starting with `$`.

use std::borrow::Cow;
use std::sync::Arc;

use thiserror::Error;

use crate::topic::{self, FilterError, check_filter};

/// The placeholder a pattern may contain for the device's own id.
pub const DEVICE_PLACEHOLDER: &str = "{device}";

/// The prefix of an MQTT 5 shared subscription, `$share/<group>/<filter>`.
const SHARE_PREFIX: &str = "$share/";

/// Why a pattern or filter is not a valid ACL pattern.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum AclError {
    /// Not an MQTT topic filter at all.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// ACL patterns name topics; a shared subscription's group is not one.
    #[error("a shared subscription ($share/…) is not an ACL pattern; allow its filter instead")]
    Shared,
    /// `{device}` would bring `/`, `+` or `#` into the pattern.
    #[error("it uses {{device}}, and the device id {0:?} contains '/', '+' or '#', so it could never match")]
    DeviceIdNotLiteral(String),
}

/// One level of a compiled pattern or filter.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Level<'a> {
    /// Exact text (for a pattern: after substituting `{device}`).
    Literal(Cow<'a, str>),
    /// `+`
    One,
    /// `#`
    Rest,
}

impl Level<'_> {
    fn as_topic_level(&self) -> topic::Level<'_> {
        match self {
            Level::Literal(text) => topic::Level::Literal(text),
            Level::One => topic::Level::One,
            Level::Rest => topic::Level::Rest,
        }
    }
}

/// Parses a filter already checked by [`check_filter`] into levels.
fn filter_levels(filter: &str) -> Vec<Level<'_>> {
    filter
        .split('/')
        .map(|level| match level {
            "+" => Level::One,
            "#" => Level::Rest,
            literal => Level::Literal(Cow::Borrowed(literal)),
        })
        .collect()
}

/// Checks that `pattern` is a valid ACL pattern for `device_id`: a valid
/// MQTT topic filter once `{device}` is replaced by the id, not a shared
/// subscription, and with `{device}` only where the id stays literal text.
pub fn validate_pattern(pattern: &str, device_id: &str) -> Result<(), AclError> {
    check_filter(pattern)?;
    if pattern.starts_with(SHARE_PREFIX) {
        return Err(AclError::Shared);
    }
    if pattern.contains(DEVICE_PLACEHOLDER) {
        if device_id.contains(['/', '+', '#']) {
            return Err(AclError::DeviceIdNotLiteral(device_id.to_string()));
        }
        let substituted = pattern.replace(DEVICE_PLACEHOLDER, device_id);
        check_filter(&substituted)?;
    }
    Ok(())
}

/// A device's ACL, compiled once (per session) for checks on every packet.
/// Cloning shares the compiled patterns: an ACL without `{device}` can be
/// compiled once for every device it applies to (unknown devices: one
/// broker-wide ACL, not one per connection).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    /// `None`: no restriction. Invalid patterns are left out, so a list of
    /// only invalid patterns allows nothing (fails closed).
    patterns: Option<Arc<[Vec<Level<'static>>]>>,
}

impl Acl {
    /// Compiles `patterns` for `device_id`. An empty list means no restriction.
    pub fn new<S: AsRef<str>>(patterns: &[S], device_id: &str) -> Self {
        if patterns.is_empty() {
            return Self { patterns: None };
        }
        let compiled: Vec<_> = patterns.iter().filter_map(|p| compile(p.as_ref(), device_id)).collect();
        Self { patterns: Some(compiled.into()) }
    }

    /// An ACL that allows every valid topic and filter.
    pub fn unrestricted() -> Self {
        Self { patterns: None }
    }

    /// True when some pattern names `{device}`: the ACL then differs from
    /// one device to the next.
    pub fn depends_on_device<S: AsRef<str>>(patterns: &[S]) -> bool {
        patterns.iter().any(|p| p.as_ref().contains(DEVICE_PLACEHOLDER))
    }

    /// True when the ACL restricts nothing.
    pub fn is_unrestricted(&self) -> bool {
        self.patterns.is_none()
    }

    /// May the device publish to `topic`? False for a topic name that is
    /// not valid (empty, too long, NUL, or containing a wildcard).
    pub fn allows_publish(&self, topic: &str) -> bool {
        if topic.is_empty() || topic.len() > topic::MAX_TOPIC_LEN || topic.contains(['\0', '+', '#']) {
            return false;
        }
        let Some(patterns) = &self.patterns else { return true };
        patterns.iter().any(|pattern| matches_topic(pattern, topic))
    }

    /// May the device subscribe to `filter`? True when every topic the
    /// filter can match is matched by one pattern; for a shared
    /// subscription `$share/<group>/<filter>`, the inner filter. False for
    /// a filter that is not valid.
    ///
    /// Coverage is checked pattern by pattern: a filter that only the union
    /// of several patterns covers (`+` against `a` and `b`) is refused.
    pub fn allows_subscribe(&self, filter: &str) -> bool {
        let Some(inner) = subscription_filter(filter) else { return false };
        let Some(patterns) = &self.patterns else { return true };
        let levels = filter_levels(inner);
        patterns.iter().any(|pattern| covers(pattern, &levels))
    }
}

/// May a device with ACL `patterns` publish to `topic`? (`{device}` is
/// replaced by `device_id`; an empty list allows everything.) Compile an
/// [`Acl`] instead when checking many topics.
pub fn acl_allows_publish<S: AsRef<str>>(patterns: &[S], device_id: &str, topic: &str) -> bool {
    Acl::new(patterns, device_id).allows_publish(topic)
}

/// May a device with ACL `patterns` subscribe to `filter`? See
/// [`Acl::allows_subscribe`].
pub fn acl_allows_subscribe<S: AsRef<str>>(patterns: &[S], device_id: &str, filter: &str) -> bool {
    Acl::new(patterns, device_id).allows_subscribe(filter)
}

/// A pattern's levels with `{device}` substituted inside each level, or
/// `None` when the pattern is not a valid ACL pattern.
fn compile(pattern: &str, device_id: &str) -> Option<Vec<Level<'static>>> {
    check_filter(pattern).ok()?;
    if pattern.starts_with(SHARE_PREFIX) {
        return None;
    }
    let levels = filter_levels(pattern)
        .into_iter()
        .map(|level| match level {
            Level::Literal(text) => Level::Literal(Cow::Owned(text.replace(DEVICE_PLACEHOLDER, device_id))),
            Level::One => Level::One,
            Level::Rest => Level::Rest,
        })
        .collect();
    Some(levels)
}

/// The filter a subscription asks for: itself, or the inner filter of a
/// shared subscription. `None` when it is not a valid filter.
fn subscription_filter(filter: &str) -> Option<&str> {
    check_filter(filter).ok()?;
    let Some(rest) = filter.strip_prefix(SHARE_PREFIX) else { return Some(filter) };
    // MQTT 5 §4.8.2: a non-empty group without wildcards, then a filter.
    let (group, inner) = rest.split_once('/')?;
    if group.is_empty() || group.contains(['+', '#']) || inner.is_empty() {
        return None;
    }
    Some(inner)
}

/// A pattern starting with a wildcard does not match `$` topics.
fn excludes_dollar(pattern: &[Level<'_>]) -> bool {
    matches!(pattern.first(), Some(Level::One | Level::Rest))
}

/// Does `pattern` match the topic name `topic`?
fn matches_topic(pattern: &[Level<'_>], topic: &str) -> bool {
    topic::matches(pattern.iter().map(Level::as_topic_level), topic)
}

/// Does `pattern` match every topic the filter `filter` matches?
fn covers(pattern: &[Level<'_>], filter: &[Level<'_>]) -> bool {
    // A filter starting with a literal `$…` level names `$` topics, which a
    // pattern starting with a wildcard does not match. (A filter starting
    // with a wildcard matches no `$` topic itself.)
    if let Some(Level::Literal(first)) = filter.first()
        && first.starts_with('$')
        && excludes_dollar(pattern)
    {
        return false;
    }
    let mut requested = filter.iter();
    for allowed in pattern {
        match (allowed, requested.next()) {
            // The pattern takes everything from here, including nothing.
            (Level::Rest, _) => return true,
            // The filter stops (or `#` also matches its parent level)
            // where the pattern still requires a level.
            (_, None | Some(Level::Rest)) => return false,
            (Level::One, Some(Level::One | Level::Literal(_))) => {}
            (Level::Literal(a), Some(Level::Literal(b))) if a == b => {}
            (Level::Literal(_), Some(_)) => return false,
        }
    }
    // The pattern ends; the filter must end too.
    requested.next().is_none()
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: [&str; 0] = [];

    #[test]
    fn publish_table() {
        // (patterns, device, topic, allowed)
        let cases: &[(&[&str], &str, &str, bool)] = &[
            (&[], "d", "anything/at/all", true),
            (&[], "d", "$SYS/x", true),
            (&["a/b"], "d", "a/b", true),
            (&["a/b"], "d", "a/b/c", false),
            (&["a/b"], "d", "a", false),
            (&["a/+"], "d", "a/b", true),
            (&["a/+"], "d", "a/", true), // + matches an empty level
            (&["a/+"], "d", "a", false),
            (&["a/+"], "d", "a/b/c", false),
            (&["a/#"], "d", "a", true), // # matches the parent level
            (&["a/#"], "d", "a/b/c", true),
            (&["a/#"], "d", "ab", false),
            (&["#"], "d", "x/y", true),
            (&["#"], "d", "$SYS/x", false), // wildcards do not match $ topics
            (&["+/x"], "d", "$SYS/x", false),
            (&["$SYS/#"], "d", "$SYS/x", true),
            (&["+/+"], "d", "/x", true), // empty first level
            (&["sensors/{device}/#"], "s-1", "sensors/s-1/temp", true),
            (&["sensors/{device}/#"], "s-1", "sensors/s-2/temp", false),
            (&["sensors/{device}"], "s-1", "sensors/s-1", true),
            (&["dev-{device}/x"], "7", "dev-7/x", true), // placeholder inside a level
            (&["{device}/{device}"], "q", "q/q", true),
            // An id with a wildcard or separator stays literal: matches nothing real.
            (&["sensors/{device}/#"], "+", "sensors/other/temp", false),
            (&["sensors/{device}/#"], "#", "sensors/other/temp", false),
            (&["sensors/{device}"], "a/b", "sensors/a/b", false),
            // Several patterns: any one.
            (&["a/#", "b/c"], "d", "b/c", true),
            (&["a/#", "b/c"], "d", "c", false),
            // Invalid patterns match nothing; the list is still a restriction.
            (&["a/#/b"], "d", "a/x/b", false),
            (&["a+"], "d", "a+", false),
            (&["$share/g/#"], "d", "x", false),
            // Invalid topic names are never allowed.
            (&["#"], "d", "a/+", false),
            (&["#"], "d", "a/#", false),
            (&[], "d", "", false),
            (&[], "d", "a\0b", false),
        ];
        for (patterns, device, topic, allowed) in cases {
            assert_eq!(
                acl_allows_publish(patterns, device, topic),
                *allowed,
                "publish {topic:?} by {device:?} under {patterns:?}"
            );
        }
    }

    #[test]
    fn subscribe_table() {
        let cases: &[(&[&str], &str, &str, bool)] = &[
            (&[], "d", "#", true),
            (&[], "d", "a/#/b", false), // invalid filter
            (&["a/#"], "d", "a/#", true),
            (&["a/#"], "d", "a", true),
            (&["a/#"], "d", "a/b/+", true),
            (&["a/#"], "d", "a/+/#", true),
            (&["a/#"], "d", "#", false),
            (&["a/#"], "d", "+/b", false),
            (&["a/#"], "d", "b/#", false),
            (&["a/+"], "d", "a/b", true),
            (&["a/+"], "d", "a/+", true),
            (&["a/+"], "d", "a/#", false), // also matches a and a/b/c
            (&["a/+"], "d", "a", false),
            (&["a/+"], "d", "a/b/c", false),
            (&["a/+/#"], "d", "a/#", false), // a/# matches a; a/+/# does not
            (&["a/+/#"], "d", "a/b", true),
            (&["a/+/#"], "d", "a/+/c/#", true),
            (&["a/b"], "d", "a/+", false),
            (&["a/b"], "d", "a/b", true),
            (&["+/b"], "d", "x/b", true),
            (&["+/b"], "d", "+/b", true),
            (&["#"], "d", "+/#", true),
            (&["#"], "d", "$SYS/#", false),
            (&["+/#"], "d", "$SYS/x", false),
            (&["$SYS/#"], "d", "$SYS/broker/+", true),
            (&["#"], "d", "a/#", true),
            // Shared subscriptions: the inner filter counts.
            (&["a/#"], "d", "$share/g/a/b", true),
            (&["a/#"], "d", "$share/g/b", false),
            (&["a/#"], "d", "$share/g/a/#", true),
            (&["#"], "d", "$share/g/#", true),
            (&[], "d", "$share/g/#", true),
            (&["a/#"], "d", "$share//a/b", false), // empty group
            (&["a/#"], "d", "$share/g+/a", false), // wildcard in the group
            (&["#"], "d", "$share/g", false),      // no inner filter
            (&["#"], "d", "$share/g/", false),
            // {device}.
            (&["cmd/{device}/#"], "s-1", "cmd/s-1/#", true),
            (&["cmd/{device}/#"], "s-1", "cmd/+/#", false),
            (&["cmd/{device}/#"], "s-1", "cmd/s-2/x", false),
            (&["cmd/{device}/#"], "+", "cmd/+/#", false), // a "+" id is literal
            (&["cmd/{device}/#"], "+", "cmd/x/y", false),
            // Coverage is per pattern, not by union.
            (&["a", "b"], "d", "+", false),
            (&["a", "b"], "d", "b", true),
        ];
        for (patterns, device, filter, allowed) in cases {
            assert_eq!(
                acl_allows_subscribe(patterns, device, filter),
                *allowed,
                "subscribe {filter:?} by {device:?} under {patterns:?}"
            );
        }
    }

    #[test]
    fn pattern_validation() {
        assert_eq!(validate_pattern("a/b/#", "d"), Ok(()));
        assert_eq!(validate_pattern("+/{device}/#", "d"), Ok(()));
        assert_eq!(validate_pattern("#", "d"), Ok(()));
        assert_eq!(validate_pattern("$SYS/#", "d"), Ok(()));
        assert_eq!(validate_pattern("", "d"), Err(AclError::Filter(FilterError::Empty)));
        assert_eq!(validate_pattern("a/#/b", "d"), Err(AclError::Filter(FilterError::MultiLevelWildcard)));
        assert_eq!(validate_pattern("a#", "d"), Err(AclError::Filter(FilterError::MultiLevelWildcard)));
        assert_eq!(validate_pattern("a/b+", "d"), Err(AclError::Filter(FilterError::SingleLevelWildcard)));
        assert_eq!(validate_pattern("a\0", "d"), Err(AclError::Filter(FilterError::Nul)));
        assert_eq!(validate_pattern(&"a".repeat(65536), "d"), Err(AclError::Filter(FilterError::TooLong(65536))));
        assert_eq!(validate_pattern("$share/g/a", "d"), Err(AclError::Shared));
        for id in ["a/b", "+", "x#"] {
            assert_eq!(validate_pattern("t/{device}", id), Err(AclError::DeviceIdNotLiteral(id.into())));
            // Without the placeholder the id does not matter.
            assert_eq!(validate_pattern("t/x", id), Ok(()));
        }
        // Fits alone, too long once the id is substituted.
        let long = "a".repeat(65534);
        assert_eq!(validate_pattern("{device}/x", &long), Err(AclError::Filter(FilterError::TooLong(65536))));
    }

    #[test]
    fn compiled_acl() {
        let acl = Acl::new(&["sensors/{device}/#", "shared/+"], "s-9");
        assert!(!acl.is_unrestricted());
        assert!(acl.allows_publish("sensors/s-9/t"));
        assert!(acl.allows_publish("shared/x"));
        assert!(!acl.allows_publish("shared/x/y"));
        assert!(acl.allows_subscribe("sensors/s-9/#"));
        assert!(!acl.allows_subscribe("sensors/#"));
        assert!(Acl::new(&NONE, "d").is_unrestricted());
        assert!(Acl::unrestricted().allows_subscribe("#"));
        // Only invalid patterns: allows nothing.
        let broken = Acl::new(&["a/#/b"], "d");
        assert!(!broken.is_unrestricted());
        assert!(!broken.allows_publish("a/x/b"));
        assert!(!broken.allows_subscribe("#"));
    }
}
