//! MQS1 replay windows (spec/mqs1.md, broker rule 5): per key, the highest
//! counter accepted and which of the 64 below it were seen.

use std::collections::HashMap;
use std::sync::Mutex;

use sealmq_audit::mqs1::Kid;

/// Counters below the highest that are still tracked.
pub const WINDOW: u64 = 64;

/// One key's window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Window {
    /// The highest counter accepted; 0 before the first.
    pub highest: u64,
    /// Bit `k` set: counter `highest - k` was accepted (bit 0 is `highest`).
    pub seen: u64,
}

/// What a counter is, for a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// Never seen and inside or above the window: verify, then accept.
    Fresh,
    /// Already accepted: a retransmission, acknowledged but not logged again.
    Seen,
    /// At or below `highest - 64`: rejected before verifying.
    TooOld,
}

impl Window {
    /// Classifies `ctr` without changing the window.
    pub fn check(&self, ctr: u64) -> Freshness {
        if ctr == 0 {
            // Counters start at 1.
            return Freshness::TooOld;
        }
        if ctr > self.highest {
            return Freshness::Fresh;
        }
        let below = self.highest - ctr;
        if self.highest >= WINDOW && ctr <= self.highest - WINDOW {
            return Freshness::TooOld;
        }
        if self.seen & (1 << below) != 0 { Freshness::Seen } else { Freshness::Fresh }
    }

    /// Records `ctr` as accepted (after its signature verified).
    pub fn accept(&mut self, ctr: u64) {
        if ctr > self.highest {
            let shift = ctr - self.highest;
            self.seen = if shift >= WINDOW { 0 } else { self.seen << shift };
            self.seen |= 1;
            self.highest = ctr;
        } else {
            let below = self.highest - ctr;
            if below < WINDOW {
                self.seen |= 1 << below;
            }
        }
    }
}

/// All keys' windows, shared by every connection (one key may be used from
/// several connections at once).
#[derive(Debug, Default)]
pub struct ReplayWindows {
    windows: Mutex<HashMap<Kid, Window>>,
}

impl ReplayWindows {
    /// Windows as persisted in the store.
    pub fn from_persisted(windows: impl IntoIterator<Item = (Kid, Window)>) -> Self {
        Self { windows: Mutex::new(windows.into_iter().collect()) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Kid, Window>> {
        // A panic elsewhere while holding the lock cannot leave a window
        // half-updated (updates are single assignments), so keep going.
        self.windows.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Classifies `ctr` for key `kid`.
    pub fn check(&self, kid: &Kid, ctr: u64) -> Freshness {
        self.lock().get(kid).copied().unwrap_or_default().check(ctr)
    }

    /// Accepts `ctr` if it is still fresh (another connection may have
    /// accepted it meanwhile) and returns the window to persist.
    pub fn accept(&self, kid: &Kid, ctr: u64) -> Result<Window, Freshness> {
        let mut windows = self.lock();
        let window = windows.entry(*kid).or_default();
        match window.check(ctr) {
            Freshness::Fresh => {
                window.accept(ctr);
                Ok(*window)
            }
            other => Err(other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_fresh_once_and_old_below_the_window() {
        let mut w = Window::default();
        assert_eq!(w.check(0), Freshness::TooOld);
        assert_eq!(w.check(1), Freshness::Fresh);
        w.accept(1);
        assert_eq!(w.check(1), Freshness::Seen);
        w.accept(100);
        assert_eq!(w.check(100), Freshness::Seen);
        assert_eq!(w.check(37), Freshness::Fresh, "inside the window, unseen");
        assert_eq!(w.check(36), Freshness::TooOld, "highest - 64");
        assert_eq!(w.check(1), Freshness::TooOld);
        w.accept(37);
        assert_eq!(w.check(37), Freshness::Seen);
        w.accept(101);
        assert_eq!(w.check(37), Freshness::TooOld, "slid out of the window");
        assert_eq!(w.check(100), Freshness::Seen, "shifted with the window");
        w.accept(10_000);
        assert_eq!(w.check(101), Freshness::TooOld);
        assert_eq!(w.check(9_999), Freshness::Fresh);
    }

    #[test]
    fn the_shared_windows_accept_a_counter_only_once() {
        let windows = ReplayWindows::default();
        let kid = [7; 8];
        assert_eq!(windows.check(&kid, 5), Freshness::Fresh);
        let persisted = windows.accept(&kid, 5).unwrap();
        assert_eq!(persisted, Window { highest: 5, seen: 1 });
        assert_eq!(windows.accept(&kid, 5), Err(Freshness::Seen));
        let reopened = ReplayWindows::from_persisted([(kid, persisted)]);
        assert_eq!(reopened.check(&kid, 5), Freshness::Seen, "windows survive a restart");
    }
}
