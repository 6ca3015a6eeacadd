//! Topics as rules use them: the `on` filter (MQTT 5 §4.7 matching) and the
//! `publish.topic` template with `{N}` and `{device}` placeholders.

use thiserror::Error;

use sealmq_audit::topic::{self, FilterError};
pub use sealmq_audit::topic::{Level, MAX_TOPIC_LEN};

/// Why `on` is not a filter a rule may use.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TopicError {
    /// Not an MQTT topic filter at all.
    #[error(transparent)]
    Filter(#[from] FilterError),
    /// `$share/…`.
    #[error("a shared subscription ($share/…) cannot trigger rules")]
    Shared,
    /// Starts with `$`.
    #[error("topics starting with '$' cannot trigger rules")]
    Dollar,
}

/// Why a `publish.topic` template is refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum TemplateError {
    /// Zero bytes long.
    #[error("it is empty")]
    Empty,
    /// Longer than an MQTT string.
    #[error("it is {0} bytes long, more than 65535")]
    TooLong(usize),
    /// Contains `+`, `#` or NUL outside placeholders.
    #[error("a topic name cannot contain '+', '#' or NUL")]
    Wildcard,
    /// Starts with `$`.
    #[error("a rule cannot publish to topics starting with '$'")]
    Dollar,
    /// A `{` without its `}`, a `}` alone, or a placeholder other than `{N}` or `{device}`.
    #[error("{0:?} is not a placeholder: use {{N}} (a level of the trigger's topic, from 0) or {{device}}")]
    Placeholder(String),
}

/// A checked MQTT topic filter, not `$share/…`, not starting with `$`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Filter {
    text: String,
}

impl Filter {
    /// Checks `filter` against MQTT's rules and the rules' own.
    pub fn parse(filter: &str) -> Result<Self, TopicError> {
        topic::check_filter(filter)?;
        if filter.starts_with("$share/") {
            return Err(TopicError::Shared);
        }
        if filter.starts_with('$') {
            return Err(TopicError::Dollar);
        }
        Ok(Self { text: filter.to_string() })
    }

    /// The filter as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Its levels.
    pub fn levels(&self) -> impl Iterator<Item = Level<'_>> {
        topic::levels(&self.text)
    }

    /// Does the filter match the topic name `topic`? (`+` one level, `#` the
    /// rest including none; wildcards never match a `$` topic's first level.)
    pub fn matches(&self, topic: &str) -> bool {
        topic::matches(self.levels(), topic)
    }
}

/// Is `topic` a name a rule may publish to: non-empty, at most 65,535
/// bytes, no `+`, `#` or NUL, not starting with `$`?
pub fn is_publishable(topic: &str) -> bool {
    !topic.is_empty() && topic.len() <= MAX_TOPIC_LEN && !topic.contains(['+', '#', '\0']) && !topic.starts_with('$')
}

/// A part of a template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Level(usize),
    Device,
}

/// A checked `publish.topic` template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    text: String,
    parts: Vec<Part>,
}

/// Why a template gave no topic for a trigger.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RenderError {
    /// `{N}` past the trigger topic's last level.
    #[error("{{{level}}} is out of range: the trigger's topic has {levels} levels")]
    LevelOutOfRange {
        /// N.
        level: usize,
        /// How many levels the topic has.
        levels: usize,
    },
    /// The result is not a topic name a rule may publish to.
    #[error("the result {0:?} is not a topic name a rule may publish to")]
    NotATopic(String),
}

impl Template {
    /// Parses and checks a template: literal text and the placeholders
    /// `{N}` (N a decimal level number, 0-based) and `{device}`.
    pub fn parse(template: &str) -> Result<Self, TemplateError> {
        if template.is_empty() {
            return Err(TemplateError::Empty);
        }
        if template.len() > MAX_TOPIC_LEN {
            return Err(TemplateError::TooLong(template.len()));
        }
        let mut parts = Vec::new();
        let mut rest = template;
        while !rest.is_empty() {
            let open = rest.find(['{', '}']).unwrap_or(rest.len());
            if open > 0 {
                let text = &rest[..open];
                if text.contains(['+', '#', '\0']) {
                    return Err(TemplateError::Wildcard);
                }
                parts.push(Part::Text(text.to_string()));
                rest = &rest[open..];
                continue;
            }
            if rest.starts_with('}') {
                return Err(TemplateError::Placeholder("}".into()));
            }
            let Some(close) = rest.find('}') else {
                return Err(TemplateError::Placeholder(rest.chars().take(16).collect()));
            };
            let inner = &rest[1..close];
            let part = match inner {
                "device" => Part::Device,
                digits if !digits.is_empty() && digits.len() <= 5 && digits.bytes().all(|b| b.is_ascii_digit()) => {
                    Part::Level(digits.parse().map_err(|_| TemplateError::Placeholder(rest[..=close].into()))?)
                }
                _ => return Err(TemplateError::Placeholder(rest[..=close].to_string())),
            };
            parts.push(part);
            rest = &rest[close + 1..];
        }
        if matches!(parts.first(), Some(Part::Text(text)) if text.starts_with('$')) {
            return Err(TemplateError::Dollar);
        }
        Ok(Self { text: template.to_string(), parts })
    }

    /// The template as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The topic for a trigger on `topic` from `device`.
    pub fn render(&self, topic: &str, device: &str) -> Result<String, RenderError> {
        let levels: Vec<&str> = topic.split('/').collect();
        let mut out = String::with_capacity(self.text.len() + topic.len());
        for part in &self.parts {
            match part {
                Part::Text(text) => out.push_str(text),
                Part::Device => out.push_str(device),
                Part::Level(n) => match levels.get(*n) {
                    Some(level) => out.push_str(level),
                    None => return Err(RenderError::LevelOutOfRange { level: *n, levels: levels.len() }),
                },
            }
        }
        if is_publishable(&out) { Ok(out) } else { Err(RenderError::NotATopic(out.chars().take(80).collect())) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters() {
        let f = Filter::parse("farm/+/moisture").unwrap();
        assert!(f.matches("farm/bed3/moisture"));
        assert!(f.matches("farm//moisture"));
        assert!(!f.matches("farm/bed3/moisture/x"));
        assert!(!f.matches("farm/moisture"));
        let all = Filter::parse("#").unwrap();
        assert!(all.matches("a/b"));
        assert!(!all.matches("$SYS/x"));
        assert!(Filter::parse("a/#").unwrap().matches("a"));
        assert_eq!(Filter::parse("$share/g/a"), Err(TopicError::Shared));
        assert_eq!(Filter::parse("$SYS/#"), Err(TopicError::Dollar));
        assert_eq!(Filter::parse("a/#/b"), Err(TopicError::Filter(FilterError::MultiLevelWildcard)));
        assert_eq!(Filter::parse("a+"), Err(TopicError::Filter(FilterError::SingleLevelWildcard)));
        assert_eq!(Filter::parse(""), Err(TopicError::Filter(FilterError::Empty)));
    }

    #[test]
    fn templates() {
        let t = Template::parse("farm/{1}/valve").unwrap();
        assert_eq!(t.render("farm/bed3/moisture", "s").unwrap(), "farm/bed3/valve");
        assert!(matches!(t.render("farm", "s"), Err(RenderError::LevelOutOfRange { level: 1, levels: 1 })));
        let d = Template::parse("cmd/{device}/{0}").unwrap();
        assert_eq!(d.render("a/b", "dev-1").unwrap(), "cmd/dev-1/a");
        assert!(matches!(d.render("a", "x+y"), Err(RenderError::NotATopic(_))));
        assert!(matches!(Template::parse("{0"), Err(TemplateError::Placeholder(_))));
        assert!(matches!(Template::parse("a}"), Err(TemplateError::Placeholder(_))));
        assert!(matches!(Template::parse("{x}"), Err(TemplateError::Placeholder(_))));
        assert!(matches!(Template::parse("{}"), Err(TemplateError::Placeholder(_))));
        assert_eq!(Template::parse("a/+"), Err(TemplateError::Wildcard));
        assert_eq!(Template::parse("$SYS/x"), Err(TemplateError::Dollar));
        // A level that begins with '$' at the start is refused only when
        // rendered (the level comes from the trigger).
        assert!(Template::parse("{0}/x").unwrap().render("$a/b", "d").is_err());
    }
}
