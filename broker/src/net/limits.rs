//! Rate limits that protect the broker from any one client: publishes per
//! connection ([`PublishRate`]) and failed logins per source address
//! ([`LoginLimiter`]). Both are token buckets: a burst of up to the rate's
//! worth, refilled continuously.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// Source addresses tracked at most; past this, addresses whose buckets
/// have refilled are forgotten (and if that is not enough, all of them:
/// memory stays bounded even against an attacker with many addresses).
const TRACKED_ADDRESSES_MAX: usize = 64 * 1024;

/// A token bucket: `capacity` tokens, refilled at `per_second`.
#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(capacity: f64, now: Instant) -> Self {
        Self { tokens: capacity, at: now }
    }

    fn refill(&mut self, capacity: f64, per_second: f64, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * per_second).min(capacity);
        self.at = now;
    }
}

/// One connection's publish budget ([`crate::config::Limits::max_publish_rate`]).
#[derive(Debug)]
pub struct PublishRate {
    per_second: f64,
    bucket: Bucket,
}

impl PublishRate {
    /// `per_second` publishes, bursts of as many; 0 means unlimited.
    pub fn new(per_second: u32) -> Self {
        let per_second = f64::from(per_second);
        Self { per_second, bucket: Bucket::full(per_second, Instant::now()) }
    }

    fn unlimited(&self) -> bool {
        self.per_second == 0.0
    }

    /// Counts one publish.
    pub fn spend(&mut self) {
        if !self.unlimited() {
            self.bucket.refill(self.per_second, self.per_second, Instant::now());
            self.bucket.tokens -= 1.0;
        }
    }

    /// `None` when another publish may be read now; otherwise when it may.
    pub fn wait_until(&mut self) -> Option<Instant> {
        if self.unlimited() {
            return None;
        }
        let now = Instant::now();
        self.bucket.refill(self.per_second, self.per_second, now);
        if self.bucket.tokens >= 1.0 {
            return None;
        }
        let missing = 1.0 - self.bucket.tokens;
        Some(now + Duration::from_secs_f64(missing / self.per_second))
    }
}

/// Failed logins per source address
/// ([`crate::config::Limits::max_failed_logins_per_minute`]).
#[derive(Debug)]
pub struct LoginLimiter {
    per_minute: u32,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

impl LoginLimiter {
    /// `per_minute` failures per address, in bursts of as many; 0: no limit.
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute, buckets: Mutex::new(HashMap::new()) }
    }

    fn capacity(&self) -> f64 {
        f64::from(self.per_minute)
    }

    fn per_second(&self) -> f64 {
        self.capacity() / 60.0
    }

    /// Whether `addr` may try to log in now (it has failures left).
    pub fn allows(&self, addr: IpAddr) -> bool {
        if self.per_minute == 0 {
            return true;
        }
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        match buckets.get_mut(&source(addr)) {
            Some(bucket) => {
                bucket.refill(self.capacity(), self.per_second(), now);
                bucket.tokens >= 1.0
            }
            None => true,
        }
    }

    /// Counts a failed login from `addr`.
    pub fn failed(&self, addr: IpAddr) {
        if self.per_minute == 0 {
            return;
        }
        let now = Instant::now();
        let (capacity, per_second) = (self.capacity(), self.per_second());
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= TRACKED_ADDRESSES_MAX {
            buckets.retain(|_, bucket| {
                bucket.refill(capacity, per_second, now);
                bucket.tokens < capacity
            });
            if buckets.len() >= TRACKED_ADDRESSES_MAX {
                tracing::warn!("failed logins from too many addresses to track; starting over");
                buckets.clear();
            }
        }
        let bucket = buckets.entry(source(addr)).or_insert_with(|| Bucket::full(capacity, now));
        bucket.refill(capacity, per_second, now);
        bucket.tokens = (bucket.tokens - 1.0).max(0.0);
    }
}

/// The unit a limit applies to: an IPv4 address, or an IPv6 /64 (one
/// host's usual allocation, which it can otherwise cycle through freely).
fn source(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V4(_) => addr,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let mut octets = v6.octets();
                octets[8..].fill(0);
                IpAddr::V6(octets.into())
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn publishes_beyond_the_burst_wait_for_their_share_of_the_rate() {
        let mut rate = PublishRate::new(10);
        for _ in 0..10 {
            assert!(rate.wait_until().is_none());
            rate.spend();
        }
        let wait = rate.wait_until().expect("the burst is spent");
        assert!(wait - Instant::now() <= Duration::from_millis(100) + Duration::from_millis(1));
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(rate.wait_until().is_none(), "one publish refilled after 1/10 s");
        let mut unlimited = PublishRate::new(0);
        for _ in 0..100_000 {
            unlimited.spend();
        }
        assert!(unlimited.wait_until().is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn failed_logins_are_limited_per_address_and_forgiven_over_time() {
        let limiter = LoginLimiter::new(3);
        let attacker: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limiter.allows(attacker));
            limiter.failed(attacker);
        }
        assert!(!limiter.allows(attacker));
        assert!(limiter.allows(other), "one address's failures do not lock out another");
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(limiter.allows(attacker), "one failure is forgiven every 60/3 s");
    }

    #[test]
    fn ipv6_addresses_of_one_slash_64_share_a_limit() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(source(a), source(b));
        assert_ne!(source(a), source(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(source(mapped), "192.0.2.7".parse::<IpAddr>().unwrap());
    }
}
