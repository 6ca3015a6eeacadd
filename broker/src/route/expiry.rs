//! Message Expiry Interval (MQTT 5 §3.3.2.3.3) for messages the broker
//! holds before sending: queued for a session, or retained.

use std::time::Duration;

use tokio::time::Instant;

use crate::codec::v5;

/// Whether a message held since `since` has outlived its Message Expiry
/// Interval: it must not be sent any more [MQTT-3.3.2-5].
pub fn expired(properties: &v5::PublishProperties, since: Instant, now: Instant) -> bool {
    properties
        .message_expiry_interval
        .is_some_and(|secs| now.saturating_duration_since(since) >= Duration::from_secs(u64::from(secs)))
}

/// Prepares a held message for sending: `false` when it has expired;
/// otherwise its Message Expiry Interval is lowered by the whole seconds it
/// waited [MQTT-3.3.2-6].
pub fn age(properties: &mut Option<v5::PublishProperties>, since: Instant, now: Instant) -> bool {
    let Some(properties) = properties.as_mut() else { return true };
    let Some(secs) = properties.message_expiry_interval else { return true };
    let waited = now.saturating_duration_since(since).as_secs();
    if waited >= u64::from(secs) {
        return false;
    }
    // `waited < secs`, so this fits and stays at least 1.
    properties.message_expiry_interval = Some(secs - u32::try_from(waited).unwrap_or(0));
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_interval_counts_down_and_ends() {
        let start = Instant::now();
        let mut props = Some(v5::PublishProperties { message_expiry_interval: Some(10), ..Default::default() });
        assert!(age(&mut props, start, start + Duration::from_millis(3_500)));
        assert_eq!(props.as_ref().unwrap().message_expiry_interval, Some(7));
        assert!(!expired(props.as_ref().unwrap(), start, start + Duration::from_millis(6_999)));
        assert!(expired(props.as_ref().unwrap(), start, start + Duration::from_secs(7)));
        assert!(!age(&mut props, start, start + Duration::from_secs(7)));
        let mut none = None;
        assert!(age(&mut none, start, start + Duration::from_secs(1_000_000)));
    }
}
