//! What crosses a link to the external router ([`super`]) besides
//! the publisher's own packet: the upstream form of topics and filters, and
//! the [`Route`] property that carries what a router does not keep.

use crate::codec::v5;

/// The gateway's own user property on upstream packets: always the last
/// one, added after everything the publisher sent (which goes on unaltered,
/// [MQTT-3.3.2-17/18]) and taken off again before delivery. See [`Route`].
pub const PROP_ROUTE: &str = "sealmq-route";

/// Topic prefix upstream for topics that do not start with `$`.
const PLAIN: &str = "t/";
/// Topic prefix upstream for `$` topics, which `#` and `+` must not match.
const DOLLAR: &str = "d/";
/// The shared-subscription prefix, which the router interprets itself.
const SHARE: &str = "$share/";

/// The upstream name of a topic, or of a filter that is not shared.
pub fn up_topic(topic: &str) -> String {
    if topic.starts_with('$') { format!("{DOLLAR}{topic}") } else { format!("{PLAIN}{topic}") }
}

/// The upstream form of a filter. A shared subscription is one group per
/// share name *and* filter (MQTT 5 §4.8.2), but some brokers (rumqttd) key
/// groups by name alone, so the group goes upstream named by a hash of
/// both: the same on every gateway, distinct for every (name, filter).
pub fn up_filter(filter: &str) -> String {
    if let Some(rest) = filter.strip_prefix(SHARE)
        && let Some((group, inner)) = rest.split_once('/')
    {
        let key = sealmq_audit::sha256(format!("{group}\0{inner}").as_bytes());
        return format!("{SHARE}g{}/{}", hex::encode(&key[..12]), up_topic(inner));
    }
    up_topic(filter)
}

/// The client-facing name of an upstream topic; `None` for a topic the
/// gateway did not write.
pub fn down_topic(topic: &str) -> Option<&str> {
    topic.strip_prefix(PLAIN).or_else(|| topic.strip_prefix(DOLLAR).filter(|t| t.starts_with('$')))
}

/// What the router must carry for the gateway beside a publish: the
/// semantics the router does not keep (the published QoS and retain flag,
/// the publisher for No Local), the record's log index and the origin of
/// the log that holds it.
///
/// Encoded as one value, `{index or -} {qos} {0|1} {origin} {from}`: an
/// origin is a C2SP note key name, which has no spaces, and the publisher
/// comes last, as it may.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// The record's log index; `None` for the gateway's own `$SYS` publishes.
    pub index: Option<u64>,
    /// The origin (checkpoint origin line) of the publishing gateway's log.
    pub origin: String,
    /// QoS as published (the router delivers at the subscription's).
    pub qos: u8,
    /// Published retained (the router clears the flag on live deliveries).
    pub retain: bool,
    /// The publisher's client id (empty for the gateway itself); through
    /// the external router, `{gateway id}/{client id}`.
    pub from: String,
}

impl Route {
    /// Appends the route as the last user property of an upstream publish.
    pub fn attach(&self, publish: &mut v5::Publish) {
        let index = self.index.map_or_else(|| "-".to_string(), |i| i.to_string());
        let value = format!("{index} {} {} {} {}", self.qos, u8::from(self.retain), self.origin, self.from);
        publish.properties.get_or_insert_with(Default::default).user_properties.push((PROP_ROUTE.to_string(), value));
    }

    /// Takes the route off a routed publish's properties: the last user
    /// property, when it is one (the gateway adds it after the
    /// publisher's own, so a publisher cannot forge it).
    pub fn detach(properties: &mut v5::PublishProperties) -> Option<Self> {
        let (name, value) = properties.user_properties.last()?;
        if name != PROP_ROUTE {
            return None;
        }
        let mut parts = value.splitn(5, ' ');
        let index = match parts.next()? {
            "-" => None,
            index => Some(index.parse().ok()?),
        };
        let qos = parts.next()?.parse().ok().filter(|q| *q <= 2)?;
        let retain = parts.next()? == "1";
        let origin = parts.next().filter(|o| !o.is_empty())?.to_string();
        let from = parts.next()?.to_string();
        properties.user_properties.pop();
        Some(Self { index, origin, qos, retain, from })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topics_and_filters_get_ascii_prefixes_and_come_back() {
        assert_eq!(up_topic("é/x"), "t/é/x");
        assert_eq!(up_topic("$SYS/sealmq/checkpoint"), "d/$SYS/sealmq/checkpoint");
        assert_eq!(up_filter("#"), "t/#");
        assert_eq!(up_filter("$SYS/#"), "d/$SYS/#");
        let shared = up_filter("$share/g/a/+");
        assert!(shared.starts_with("$share/g") && shared.ends_with("/t/a/+"), "{shared}");
        assert_eq!(shared, up_filter("$share/g/a/+"), "the same group on every gateway");
        assert_ne!(shared, up_filter("$share/g/b/+"), "one group per (name, filter)");
        assert_ne!(shared, up_filter("$share/h/a/+"));
        assert_eq!(down_topic("t/é/x"), Some("é/x"));
        assert_eq!(down_topic("d/$SYS/x"), Some("$SYS/x"));
        assert_eq!(down_topic("d/x"), None);
        assert_eq!(down_topic("x"), None);
    }

    #[test]
    fn the_route_is_the_last_user_property_and_comes_off_again() {
        let route =
            Route { index: Some(7), origin: "gw.example/log".into(), qos: 2, retain: true, from: "gw/a b".into() };
        let properties =
            v5::PublishProperties { user_properties: vec![("k".into(), "v".into())], ..Default::default() };
        let mut publish = v5::Publish { properties: Some(properties), ..Default::default() };
        route.attach(&mut publish);
        let mut properties = publish.properties.unwrap();
        assert_eq!(Route::detach(&mut properties), Some(route));
        assert_eq!(properties.user_properties, vec![("k".to_string(), "v".to_string())]);
        assert_eq!(Route::detach(&mut properties), None, "only the gateway's last property is a route");
        let mut truncated = v5::PublishProperties {
            user_properties: vec![(PROP_ROUTE.into(), "7 1 0 gw.example/log".into())],
            ..Default::default()
        };
        assert_eq!(Route::detach(&mut truncated), None, "no publisher: not a route");
    }
}
