//! The cosignatures a log keeps of its witnesses are thinned
//! (`Cosignatures::prune`): everything recent stays, older history keeps
//! each witness's largest size per period with every line on that size, and
//! each witness's latest cosignature is never removed.
#![cfg(feature = "store")]

use std::collections::BTreeSet;
use std::time::Duration;

use sealmq_audit::store::{Cosignatures, Log, LogConfig};

const HOUR: u64 = 3_600_000;
const NOW: u64 = 100 * HOUR;

async fn store(dir: &std::path::Path) -> Cosignatures {
    let mut config = LogConfig::new(dir);
    config.origin = Some("test.sealmq/cosignatures".into());
    config.block_interval = Duration::from_secs(60);
    Log::open(config).await.unwrap().close().await.unwrap();
    Cosignatures::open(dir).await.unwrap()
}

async fn sizes(store: &Cosignatures, witness: &str) -> BTreeSet<u64> {
    let mut kept = BTreeSet::new();
    for size in 1..=400 {
        if store.lines(size).await.unwrap().contains_key(witness) {
            kept.insert(size);
        }
    }
    kept
}

#[tokio::test]
async fn recent_lines_stay_older_ones_thin_to_one_per_period_and_kept_sizes_stay_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    // Witness a cosigns sizes 1..=300, one a minute over the five hours
    // before NOW; b cosigns every other size, a second after a.
    for size in 1..=300u64 {
        let at = NOW - 5 * HOUR + size * 60_000;
        store.record("a", size, &format!("— a {size}\n"), at).await.unwrap();
        if size % 2 == 0 {
            store.record("b", size, &format!("— b {size}\n"), at + 1_000).await.unwrap();
        }
    }
    let before_b = sizes(&store, "b").await;
    let removed = store.prune(NOW, HOUR, HOUR).await.unwrap();
    let a = sizes(&store, "a").await;
    let b = sizes(&store, "b").await;
    assert!(removed > 300, "five hours at a line a minute thin to a few per hour, removed only {removed}");

    // The last hour (sizes 241..=300, received at NOW-1h+1min…) stays whole.
    assert!((241..=300).all(|s| a.contains(&s)), "a lost a recent line: {a:?}");
    assert!((242..=300).step_by(2).all(|s| b.contains(&s)), "b lost a recent line: {b:?}");
    // Before that, each period keeps its largest size per witness, nothing else.
    for period in 95..99u64 {
        let in_period = |s: &u64| (NOW - 5 * HOUR + s * 60_000) / HOUR == period;
        let older: Vec<u64> = a.iter().copied().filter(|s| *s < 241 && in_period(s)).collect();
        assert!(!older.is_empty() && older.len() <= 2, "period {period} keeps {older:?} of a");
    }
    assert!(a.len() < 60 + 12, "a keeps {} lines", a.len());
    // A size kept for one witness keeps the other's line on it too: a
    // quorum that was whole stays whole.
    for size in &a {
        if before_b.contains(size) {
            assert!(b.contains(size), "size {size} kept a's line but lost b's");
        }
    }
    // Pruning again removes nothing more; each witness's latest stays.
    assert_eq!(store.prune(NOW, HOUR, HOUR).await.unwrap(), 0);
    assert_eq!(store.latest("a").await.unwrap().map(|(s, _)| s), Some(300));
    assert_eq!(store.latest("b").await.unwrap().map(|(s, _)| s), Some(300));
}

#[tokio::test]
async fn a_witness_long_silent_keeps_its_latest_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = store(dir.path()).await;
    store.record("gone", 5, "— gone 5\n", NOW - 50 * HOUR + 20).await.unwrap();
    store.record("gone", 4, "— gone 4\n", NOW - 50 * HOUR + 10).await.unwrap();
    store.record("here", 9, "— here 9\n", NOW - 10).await.unwrap();
    store.prune(NOW, HOUR, HOUR).await.unwrap();
    assert_eq!(store.latest("gone").await.unwrap().map(|(s, _)| s), Some(5));
    assert!(store.lines(4).await.unwrap().is_empty(), "an older line of the same period stays");
    assert_eq!(store.lines(9).await.unwrap().len(), 1);
}
