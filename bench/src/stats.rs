//! The measurements: latency histograms, the PUBACK → checkpoint wait, each
//! subscriber's sequence numbers, and from those the loss and duplicates.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde_json::{Value, json};

use crate::Pattern;
use crate::publisher::Published;
use crate::scenario::Run;
use crate::subscriber::Received;

/// Nanoseconds, 1 ns to an hour, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("valid histogram bounds")
}

/// Records waiting for the first checkpoint that covers them.
pub struct CheckpointWait {
    /// Log index → when its PUBACK arrived.
    pub pending: BTreeMap<u64, u64>,
    /// The largest tree size seen in a checkpoint.
    covered: u64,
    pub hist: Histogram<u64>,
    /// Checkpoints seen.
    pub notes: u64,
}

impl Default for CheckpointWait {
    fn default() -> Self {
        Self { pending: BTreeMap::new(), covered: 0, hist: histogram(), notes: 0 }
    }
}

impl CheckpointWait {
    pub fn acked(&mut self, index: u64, at: u64) {
        if index < self.covered {
            // The checkpoint overtook the PUBACK.
            self.hist.saturating_record(0);
        } else {
            self.pending.insert(index, at);
        }
    }

    pub fn checkpoint(&mut self, tree_size: u64, at: u64) {
        self.notes += 1;
        if tree_size <= self.covered {
            return;
        }
        let later = self.pending.split_off(&tree_size);
        for (_, acked) in std::mem::replace(&mut self.pending, later) {
            self.hist.saturating_record(at.saturating_sub(acked).max(1));
        }
        self.covered = tree_size;
    }
}

/// Which sequence numbers of one publisher a subscriber got.
#[derive(Default, Clone)]
pub struct SeqSet {
    bits: Vec<u64>,
    pub distinct: u64,
    pub dups: u64,
}

impl SeqSet {
    /// Adds `seq`; false if it was there (a duplicate).
    pub fn insert(&mut self, seq: u64) -> bool {
        let word = (seq / 64) as usize;
        if word >= self.bits.len() {
            self.bits.resize((word + 1).max(self.bits.len() * 2), 0);
        }
        let bit = 1u64 << (seq % 64);
        if self.bits[word] & bit != 0 {
            self.dups += 1;
            return false;
        }
        self.bits[word] |= bit;
        self.distinct += 1;
        true
    }

    fn contains(&self, seq: u64) -> bool {
        self.bits.get((seq / 64) as usize).is_some_and(|w| w & (1 << (seq % 64)) != 0)
    }

    /// How many of `0..upto` are in the set.
    fn count_below(&self, upto: u64) -> u64 {
        let full = (upto / 64) as usize;
        let mut n: u64 = self.bits.iter().take(full).map(|w| u64::from(w.count_ones())).sum();
        if let Some(w) = self.bits.get(full) {
            let mask = (1u64 << (upto % 64)) - 1;
            n += u64::from((w & mask).count_ones());
        }
        n
    }

    /// How many are in both sets.
    fn overlap(&self, other: &SeqSet) -> u64 {
        self.bits.iter().zip(&other.bits).map(|(a, b)| u64::from((a & b).count_ones())).sum()
    }

    fn union_with(&mut self, other: &SeqSet) {
        if other.bits.len() > self.bits.len() {
            self.bits.resize(other.bits.len(), 0);
        }
        for (a, b) in self.bits.iter_mut().zip(&other.bits) {
            *a |= b;
        }
        self.distinct = self.bits.iter().map(|w| u64::from(w.count_ones())).sum();
    }
}

/// Latency summary in milliseconds.
pub fn latency_json(hist: &Histogram<u64>) -> Value {
    let ms = |ns: u64| (ns as f64 / 1e4).round() / 100.0;
    if hist.is_empty() {
        return Value::Null;
    }
    json!({
        "count": hist.len(),
        "p50": ms(hist.value_at_quantile(0.50)),
        "p90": ms(hist.value_at_quantile(0.90)),
        "p99": ms(hist.value_at_quantile(0.99)),
        "max": ms(hist.max()),
        "mean": (hist.mean() / 1e4).round() / 100.0,
    })
}

/// Outcome of the loss and duplicate analysis.
#[derive(Default)]
pub struct Tally {
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unexpected: u64,
}

pub fn tally(run: &Run, published: &[Published], received: &[Received]) -> Tally {
    let mut t = Tally::default();
    let expected_at = |p: usize, s: usize| run.pattern != Pattern::Pairs || run.pair_of(p) == s;
    for (p, out) in published.iter().enumerate() {
        let expected = out.sent - out.excluded.len() as u64;
        let missing = |got: &SeqSet| {
            let excluded_got = out.excluded.iter().filter(|&&seq| got.contains(seq)).count() as u64;
            expected - (got.count_below(out.sent) - excluded_got)
        };
        match run.pattern {
            Pattern::Shared if !received.is_empty() => {
                let mut union = SeqSet::default();
                let mut total = 0;
                for r in received {
                    let got = &r.seen[p];
                    t.duplicated += got.dups + union.overlap(got);
                    total += got.distinct;
                    union.union_with(got);
                }
                t.delivered += total;
                t.lost += missing(&union);
            }
            _ => {
                for (s, r) in received.iter().enumerate() {
                    let got = &r.seen[p];
                    t.delivered += got.distinct;
                    t.duplicated += got.dups;
                    if expected_at(p, s) {
                        t.lost += missing(got);
                    } else {
                        t.unexpected += got.distinct;
                    }
                }
            }
        }
    }
    t
}
