//! Peers' revocations on a real SQLite file (`[registry] peers`): a peer's
//! revocation is applied once and queued for this log; a key revoked here
//! already changes nothing and is not logged again (so two gateways that
//! follow each other do not echo a revocation back and forth); a peer's
//! other records change nothing; each peer has its own position, by origin,
//! which only moves forward and keeps the key it accepted a checkpoint with.
#![cfg(feature = "store")]

use ed25519_dalek::SigningKey;
use sealmq_audit::store::registry_follow::{Applied, FollowError, Source};
use sealmq_audit::store::{DeviceSettings, Registry};
use sealmq_audit::{RegistryEvent, RegistryRecord, mqs1};

const PEER_A: &str = "a.test/log+01020304+AQ";
const PEER_B: &str = "b.test/log+05060708+AQ";
/// Another key for peer A's origin.
const IMPOSTOR_A: &str = "a.test/log+0a0b0c0d+AQ";
const PRIMARY: &str = "primary.test/log+11121314+AQ";

fn peer(vkey: &str) -> Source {
    Source::Peer(vkey.split('+').next().unwrap().to_string())
}

fn public_key(n: u8) -> [u8; 32] {
    SigningKey::from_bytes(&[n; 32]).verifying_key().to_bytes()
}

fn revoked(device: &str, key: &[u8; 32]) -> RegistryRecord {
    RegistryRecord { at_ms: 1, device_id: device.into(), event: RegistryEvent::KeyRevoked { kid: mqs1::kid(key) } }
}

/// A registry with device `dev` holding key 1, following peer A up to a
/// checkpoint of size `size`.
async fn with_peer(dir: &std::path::Path, size: u64) -> Registry {
    let registry = Registry::open(dir).await.unwrap();
    let settings = DeviceSettings { key: Some(public_key(1)), ..Default::default() };
    registry.add_device("dev", &settings).await.unwrap();
    registry.set_peer(PEER_A).await.unwrap();
    registry.accept_checkpoint(&peer(PEER_A), PEER_A, "note a", size, &[7; 32]).await.unwrap();
    registry
}

fn key_active(snapshot: &sealmq_audit::store::RegistrySnapshot, device: &str) -> bool {
    snapshot.devices.iter().find(|d| d.id == device).unwrap().keys[0].is_active()
}

#[tokio::test]
async fn a_peer_revocation_is_applied_once_and_an_echo_of_it_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let registry = with_peer(dir.path(), 10).await;
    let unlogged_before = registry.snapshot().await.unwrap().unlogged;
    let revocation = revoked("dev", &public_key(1));

    let applied = registry.apply_followed(&peer(PEER_A), PEER_A, 4, &revocation).await.unwrap();
    let Applied::Changed(queued) = applied else { panic!("the revocation of a key held here: {applied:?}") };
    assert_eq!(queued.iter().map(|r| r.event).collect::<Vec<_>>(), vec![revocation.event]);
    let snapshot = registry.snapshot().await.unwrap();
    assert!(!key_active(&snapshot, "dev"), "the key is still active");
    assert_eq!(snapshot.unlogged, unlogged_before + 1, "one KeyRevoked waits for this log");
    // The same record again (a restart before the scan was stored): not applied twice.
    assert_eq!(registry.apply_followed(&peer(PEER_A), PEER_A, 4, &revocation).await.unwrap(), Applied::AlreadyApplied);

    // Peer B logged the revocation too (it applied it from A, or from this
    // gateway's log): revoked here already, nothing changes, nothing is queued.
    registry.set_peer(PEER_B).await.unwrap();
    registry.accept_checkpoint(&peer(PEER_B), PEER_B, "note b", 3, &[8; 32]).await.unwrap();
    assert_eq!(registry.apply_followed(&peer(PEER_B), PEER_B, 2, &revocation).await.unwrap(), Applied::Unchanged);
    assert_eq!(registry.snapshot().await.unwrap().unlogged, unlogged_before + 1, "the echo was queued for the log");

    // A key this gateway never had: skipped, not an error.
    let unknown = revoked("elsewhere", &public_key(9));
    assert!(matches!(registry.apply_followed(&peer(PEER_A), PEER_A, 6, &unknown).await.unwrap(), Applied::Skipped(_)));

    // Each peer has its own position.
    let a = registry.state_of(&peer(PEER_A)).await.unwrap().unwrap();
    assert_eq!((a.tree_size, a.scanned, a.last_applied, a.applied), (10, 7, Some(6), 2));
    let b = registry.state_of(&peer(PEER_B)).await.unwrap().unwrap();
    assert_eq!((b.tree_size, b.scanned, b.applied), (3, 3, 1));
    // Beyond the accepted checkpoint nothing is applied.
    assert!(registry.apply_followed(&peer(PEER_A), PEER_A, 10, &revocation).await.is_err());
}

#[tokio::test]
async fn a_peer_cannot_add_keys_or_change_policies() {
    let dir = tempfile::tempdir().unwrap();
    let registry = with_peer(dir.path(), 10).await;
    let unlogged_before = registry.snapshot().await.unwrap().unlogged;
    let added = RegistryRecord {
        at_ms: 1,
        device_id: "dev".into(),
        event: RegistryEvent::KeyAdded { public_key: public_key(2) },
    };
    let new_device = RegistryRecord {
        at_ms: 1,
        device_id: "new".into(),
        event: RegistryEvent::PolicySet { signed_required: false },
    };
    let legacy = RegistryRecord {
        at_ms: 1,
        device_id: "dev".into(),
        event: RegistryEvent::PolicySet { signed_required: false },
    };
    for (index, record) in [(1, &added), (2, &new_device), (3, &legacy)] {
        let applied = registry.apply_followed(&peer(PEER_A), PEER_A, index, record).await.unwrap();
        assert!(matches!(applied, Applied::Skipped(_)), "record {index}: {applied:?}");
    }
    let snapshot = registry.snapshot().await.unwrap();
    assert_eq!(snapshot.unlogged, unlogged_before, "a peer's non-revocation was queued for the log");
    assert_eq!(snapshot.devices.len(), 1, "a peer registered a device");
    assert_eq!(snapshot.devices[0].keys.len(), 1, "a peer added a key");
    assert!(snapshot.devices[0].policy.is_signed(), "a peer changed a policy");
}

#[tokio::test]
async fn a_peer_keeps_its_key_and_its_position_only_moves_forward() {
    let dir = tempfile::tempdir().unwrap();
    let registry = with_peer(dir.path(), 10).await;
    registry.finish_scan(&peer(PEER_A), PEER_A, 10).await.unwrap();
    assert!(registry.accept_checkpoint(&peer(PEER_A), PEER_A, "older", 9, &[7; 32]).await.is_err());
    assert!(registry.accept_checkpoint(&peer(PEER_A), PEER_A, "fork", 10, &[9; 32]).await.is_err());

    // Another key for A's origin is another log.
    let err = registry.set_peer(IMPOSTOR_A).await.unwrap_err();
    assert!(matches!(err, FollowError::OtherPeer { .. }), "{err}");
    let err =
        registry.apply_followed(&peer(PEER_A), IMPOSTOR_A, 10, &revoked("dev", &public_key(1))).await.unwrap_err();
    assert!(matches!(err, FollowError::OtherPeer { .. }), "{err}");

    // Before anything was accepted with it, a (mistyped) key can be corrected.
    registry.set_peer("b.test/log+0f0f0f0f+AQ").await.unwrap();
    let corrected = registry.set_peer(PEER_B).await.unwrap();
    assert_eq!(corrected.vkey, PEER_B);

    // Removed from the configuration, then listed again: it resumes.
    registry.retire_peers_except(&["b.test/log".to_string()]).await.unwrap();
    let states = registry.peer_states().await.unwrap();
    let active: Vec<(&str, bool)> = states.iter().map(|s| (s.origin(), s.active)).collect();
    assert_eq!(active, vec![("a.test/log", false), ("b.test/log", true)]);
    let again = registry.set_peer(PEER_A).await.unwrap();
    assert_eq!((again.active, again.tree_size, again.scanned), (true, 10, 10));
    // A primary is still a separate thing: no follow state was made.
    assert!(registry.follow_state().await.unwrap().is_none());
}

#[tokio::test]
async fn a_follower_applies_a_peer_revocation_though_it_refuses_local_key_changes() {
    let dir = tempfile::tempdir().unwrap();
    let registry = Registry::open(dir.path()).await.unwrap();
    registry.set_following(PRIMARY, true).await.unwrap();
    registry.accept_checkpoint(&Source::Primary, PRIMARY, "p", 5, &[1; 32]).await.unwrap();
    let added = RegistryRecord {
        at_ms: 1,
        device_id: "dev".into(),
        event: RegistryEvent::KeyAdded { public_key: public_key(1) },
    };
    assert!(matches!(
        registry.apply_followed(&Source::Primary, PRIMARY, 0, &added).await.unwrap(),
        Applied::Changed(_)
    ));
    registry.set_peer(PEER_A).await.unwrap();
    registry.accept_checkpoint(&peer(PEER_A), PEER_A, "a", 2, &[2; 32]).await.unwrap();
    let applied = registry.apply_followed(&peer(PEER_A), PEER_A, 1, &revoked("dev", &public_key(1))).await.unwrap();
    assert!(matches!(applied, Applied::Changed(_)), "{applied:?}");
    assert!(!key_active(&registry.snapshot().await.unwrap(), "dev"));
    // The primary's position is where its own record left it.
    let primary = registry.follow_state().await.unwrap().unwrap();
    assert_eq!((primary.scanned, primary.applied), (1, 1));
}
