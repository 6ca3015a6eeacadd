//! Duplicates at the receiving gateway: after a connection is lost, a
//! gateway sends again what the broker may not have passed on
//! (`connection.rs`), so a copy can reach a subscription twice, through
//! one node and then another. Each subscription entry remembers which
//! records, by (origin, index), it delivered recently, and drops a second
//! copy.
//!
//! Copies of one log arrive out of order (several connections, a resent
//! stretch after newer messages), so each log gets a window of
//! [`WINDOW`] indices below the highest seen, kept as a bitmap in chunks
//! of [`CHUNK_BITS`] allocated as used: an entry that gets few messages
//! holds a chunk per message at most, a busy one at most
//! `WINDOW / CHUNK_BITS` chunks (128 KiB) per log. An index below the
//! window is taken for a copy sent again (a resent stretch covers seconds,
//! far less than a window of any log) and dropped.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Indices per log below the highest seen that are remembered.
pub const WINDOW: u64 = 1 << 20;
/// Indices per bitmap chunk.
const CHUNK_BITS: u64 = 4096;
/// Most logs one entry remembers (a cluster has one per gateway); past
/// it, copies of further logs are not checked.
const MAX_LOGS: usize = 1024;

/// What a copy is to one subscription entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Seen {
    /// Not delivered before: deliver it.
    First,
    /// Delivered already (or older than the window): drop it.
    Again,
}

/// One log's window.
#[derive(Debug, Default)]
struct Window {
    highest: u64,
    chunks: BTreeMap<u64, Box<[u64; (CHUNK_BITS / 64) as usize]>>,
}

impl Window {
    fn check(&mut self, index: u64) -> Seen {
        if !self.chunks.is_empty() && index.saturating_add(WINDOW) <= self.highest {
            return Seen::Again;
        }
        let chunk = self.chunks.entry(index / CHUNK_BITS).or_insert_with(|| Box::new([0; 64]));
        let (word, bit) = ((index % CHUNK_BITS / 64) as usize, index % 64);
        if chunk[word] & (1 << bit) != 0 {
            return Seen::Again;
        }
        chunk[word] |= 1 << bit;
        if index > self.highest {
            self.highest = index;
            // Chunks wholly below the window go.
            let keep = self.highest.saturating_sub(WINDOW) / CHUNK_BITS;
            while self.chunks.first_key_value().is_some_and(|(k, _)| *k < keep) {
                self.chunks.pop_first();
            }
        }
        Seen::First
    }
}

/// The records one subscription entry delivered recently, per log.
#[derive(Debug, Default)]
pub(super) struct Delivered {
    /// By origin; `None`: this gateway's own log.
    logs: HashMap<Option<Arc<str>>, Window>,
}

impl Delivered {
    /// Whether the record at `index` of the log `origin` is new to the entry.
    pub(super) fn check(&mut self, origin: Option<&Arc<str>>, index: u64) -> Seen {
        if let Some(window) = self.logs.get_mut(&origin.cloned()) {
            return window.check(index);
        }
        if self.logs.len() >= MAX_LOGS {
            return Seen::First;
        }
        self.logs.entry(origin.cloned()).or_default().check(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_copy_is_dropped_per_log_in_any_order() {
        let mut delivered = Delivered::default();
        let (a, b): (Arc<str>, Arc<str>) = ("a.example/log".into(), "b.example/log".into());
        for index in [5, 3, 9000, 4] {
            assert_eq!(delivered.check(Some(&a), index), Seen::First, "{index}");
        }
        assert_eq!(delivered.check(Some(&a), 3), Seen::Again, "out of order, still seen");
        assert_eq!(delivered.check(Some(&a), 9000), Seen::Again);
        assert_eq!(delivered.check(Some(&b), 3), Seen::First, "another log's index 3");
        assert_eq!(delivered.check(None, 3), Seen::First, "this gateway's own");
        assert_eq!(delivered.check(None, 3), Seen::Again);
    }

    #[test]
    fn the_window_moves_with_the_highest_index_and_holds_few_chunks() {
        let mut window = Window::default();
        for index in (0..4 * WINDOW).step_by(997) {
            assert_eq!(window.check(index), Seen::First);
        }
        assert!(window.chunks.len() as u64 <= WINDOW / CHUNK_BITS + 1, "{} chunks", window.chunks.len());
        let highest = window.highest;
        assert_eq!(window.check(highest - WINDOW + 1), Seen::First, "inside the window, not seen");
        assert_eq!(window.check(highest - WINDOW - 1), Seen::Again, "below it: a copy sent again");
        assert_eq!(window.check(highest - 997), Seen::Again);
    }
}
