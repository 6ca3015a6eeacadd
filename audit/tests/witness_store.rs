//! The witness's state in SQLite (C2SP tlog-witness): checked and updated
//! atomically, kept across reopening, and never rolled back by racing
//! requests.

use std::sync::Arc;

use sealmq_audit::store::WitnessStore;
use sealmq_audit::witness::{AddCheckpoint, Refusal};
use sealmq_audit::{Checkpoint, Hash, LogKey, leaf_hash, merkle_root};

const ORIGIN: &str = "example.com/witnessed";

fn key() -> LogKey {
    LogKey::from_seed(ORIGIN, &[3; 32]).unwrap()
}

fn note(size: u64) -> String {
    let leaves: Vec<Hash> = (0..size).map(|i| leaf_hash(&i.to_le_bytes())).collect();
    key().sign(&Checkpoint { origin: ORIGIN.into(), size, root: merkle_root(&leaves) })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_first_requests_cosign_exactly_one_and_the_rest_see_its_size() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(WitnessStore::open(dir.path(), Some("witness.example/w")).await.unwrap());
    let keys = [key().verifier()];
    let mut tasks = Vec::new();
    for size in 1..=16u64 {
        let store = Arc::clone(&store);
        let keys = keys.clone();
        tasks.push(tokio::spawn(async move {
            let request = AddCheckpoint { old_size: 0, proof: vec![], note: note(size) };
            (size, store.add_checkpoint(&keys, &request).await.unwrap())
        }));
    }
    let mut cosigned = Vec::new();
    let mut conflicts = Vec::new();
    for task in tasks {
        match task.await.unwrap() {
            (size, Ok(_)) => cosigned.push(size),
            (_, Err(Refusal::Conflict { latest })) => conflicts.push(latest),
            (size, Err(other)) => panic!("size {size}: {other}"),
        }
    }
    // Each request said "old 0": only the first to commit may succeed; every
    // later one must see that it no longer matches (409 with the stored size).
    assert_eq!(cosigned.len(), 1, "cosigned {cosigned:?}");
    assert!(conflicts.iter().all(|&latest| latest == cosigned[0]), "409s named {conflicts:?}, stored {cosigned:?}");
    let logs = store.logs().await.unwrap();
    assert_eq!(logs.len(), 1);
    assert_eq!(logs[0].size, cosigned[0]);
}

#[tokio::test]
async fn the_state_and_the_key_survive_reopening_and_the_name_is_fixed() {
    let dir = tempfile::tempdir().unwrap();
    let keys = [key().verifier()];
    let vkey = {
        let store = WitnessStore::open(dir.path(), Some("witness.example/w")).await.unwrap();
        let line = store.add_checkpoint(&keys, &AddCheckpoint { old_size: 0, proof: vec![], note: note(4) }).await;
        assert!(line.unwrap().is_ok());
        let vkey = store.key().verifier();
        store.close().await;
        vkey
    };
    let store = WitnessStore::open(dir.path(), None).await.unwrap();
    assert_eq!(store.key().verifier(), vkey, "same key and name after reopening");
    // The stored size is what a new request must name.
    let stale = AddCheckpoint { old_size: 0, proof: vec![], note: note(6) };
    assert_eq!(store.add_checkpoint(&keys, &stale).await.unwrap(), Err(Refusal::Conflict { latest: 4 }));
    // The stored note carries the log's signature and this witness's cosignature.
    let stored = &store.logs().await.unwrap()[0];
    assert!(key().verifier().open(&stored.note).is_ok());
    assert!(vkey.check(&stored.note).unwrap().is_some());
    store.close().await;
    let renamed = WitnessStore::open(dir.path(), Some("witness.example/other")).await;
    assert!(renamed.unwrap_err().to_string().contains("cannot be renamed"));
}
