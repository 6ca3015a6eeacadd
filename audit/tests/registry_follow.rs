//! A follower's registry on a real SQLite file: a primary's kind-2 record
//! applied changes the tables, queues this gateway's own kind-2 records and
//! moves the position in one transaction; a record is applied once; local
//! changes that would diverge from the primary are refused while following.
#![cfg(feature = "store")]

use ed25519_dalek::SigningKey;
use sealmq_audit::store::registry_follow::{Applied, FollowError, Source};
use sealmq_audit::store::{DeviceSettings, Policy, Registry, RegistryError};
use sealmq_audit::{RegistryEvent, RegistryRecord, mqs1};

const PRIMARY: &str = "primary.test/log+01020304+AQ";
const OTHER: &str = "other.test/log+05060708+AQ";

fn public_key(n: u8) -> [u8; 32] {
    SigningKey::from_bytes(&[n; 32]).verifying_key().to_bytes()
}

fn record(device: &str, event: RegistryEvent) -> RegistryRecord {
    RegistryRecord { at_ms: 1, device_id: device.into(), event }
}

async fn following(dir: &std::path::Path, size: u64) -> Registry {
    let registry = Registry::open(dir).await.unwrap();
    registry.set_following(PRIMARY, true).await.unwrap();
    registry.accept_checkpoint(&Source::Primary, PRIMARY, "note", size, &[7; 32]).await.unwrap();
    registry
}

#[tokio::test]
async fn a_primary_record_is_applied_once_and_queued_for_this_log() {
    let dir = tempfile::tempdir().unwrap();
    let registry = following(dir.path(), 10).await;
    let key = public_key(1);
    let policy = record("dev", RegistryEvent::PolicySet { signed_required: true });
    let added = record("dev", RegistryEvent::KeyAdded { public_key: key });

    let Applied::Changed(queued) = registry.apply_followed(&Source::Primary, PRIMARY, 3, &policy).await.unwrap() else {
        panic!("a new device is a change")
    };
    assert_eq!(queued.iter().map(|r| r.event).collect::<Vec<_>>(), vec![policy.event]);
    let Applied::Changed(queued) = registry.apply_followed(&Source::Primary, PRIMARY, 4, &added).await.unwrap() else {
        panic!("a new key is a change")
    };
    assert_eq!(queued.iter().map(|r| r.event).collect::<Vec<_>>(), vec![added.event]);
    // Again (a restart that had not recorded the scan): not applied twice.
    assert_eq!(registry.apply_followed(&Source::Primary, PRIMARY, 4, &added).await.unwrap(), Applied::AlreadyApplied);
    assert_eq!(registry.apply_followed(&Source::Primary, PRIMARY, 3, &policy).await.unwrap(), Applied::AlreadyApplied);

    let snapshot = registry.snapshot().await.unwrap();
    assert_eq!(snapshot.unlogged, 2, "one PolicySet and one KeyAdded wait for this log");
    let device = snapshot.devices.iter().find(|d| d.id == "dev").unwrap();
    assert_eq!(device.policy, Policy::Signed);
    assert_eq!(device.keys.len(), 1);
    assert!(device.password_hash.is_none() && device.allow_pub.is_empty(), "no password or ACL follows");

    // A revocation reaches the key whatever device holds it here.
    let revoked = record("dev", RegistryEvent::KeyRevoked { kid: mqs1::kid(&key) });
    assert!(matches!(
        registry.apply_followed(&Source::Primary, PRIMARY, 6, &revoked).await.unwrap(),
        Applied::Changed(_)
    ));
    let snapshot = registry.snapshot().await.unwrap();
    assert!(!snapshot.devices[0].keys[0].is_active());
    // A key revoked here stays revoked: added again by the primary, nothing changes.
    assert_eq!(registry.apply_followed(&Source::Primary, PRIMARY, 7, &added).await.unwrap(), Applied::Unchanged);
    // A revocation of a key this gateway never had changes nothing, and says why.
    let unknown = record("dev", RegistryEvent::KeyRevoked { kid: [9; 8] });
    assert!(matches!(
        registry.apply_followed(&Source::Primary, PRIMARY, 8, &unknown).await.unwrap(),
        Applied::Skipped(_)
    ));

    let state = registry.follow_state().await.unwrap().unwrap();
    assert_eq!((state.scanned, state.last_applied, state.applied), (9, Some(8), 5));
    // Beyond the accepted checkpoint nothing is applied.
    assert!(registry.apply_followed(&Source::Primary, PRIMARY, 10, &policy).await.is_err());
}

#[tokio::test]
async fn the_position_only_moves_forward_and_one_primary_is_followed() {
    let dir = tempfile::tempdir().unwrap();
    let registry = following(dir.path(), 10).await;
    registry.finish_scan(&Source::Primary, PRIMARY, 10).await.unwrap();
    // An older checkpoint, or another root at the same size, is not stored.
    assert!(registry.accept_checkpoint(&Source::Primary, PRIMARY, "older", 9, &[7; 32]).await.is_err());
    assert!(registry.accept_checkpoint(&Source::Primary, PRIMARY, "fork", 10, &[8; 32]).await.is_err());
    assert!(registry.finish_scan(&Source::Primary, PRIMARY, 11).await.is_err(), "no scan past the accepted checkpoint");
    let err = registry.set_following(OTHER, true).await.unwrap_err();
    assert!(matches!(err, FollowError::OtherPrimary { .. }), "{err}");
    let policy = record("x", RegistryEvent::PolicySet { signed_required: true });
    let err = registry.apply_followed(&Source::Primary, OTHER, 10, &policy).await.unwrap_err();
    assert!(matches!(err, FollowError::OtherPrimary { .. }), "{err}");
    let state = registry.follow_state().await.unwrap().unwrap();
    assert_eq!((state.vkey.as_str(), state.tree_size, state.scanned), (PRIMARY, 10, 10));
}

#[tokio::test]
async fn local_changes_that_would_diverge_are_refused_while_following() {
    let dir = tempfile::tempdir().unwrap();
    let registry = following(dir.path(), 10).await;
    registry
        .apply_followed(
            &Source::Primary,
            PRIMARY,
            0,
            &record("dev", RegistryEvent::KeyAdded { public_key: public_key(1) }),
        )
        .await
        .unwrap();
    let refused =
        |r: Result<_, RegistryError>| matches!(r, Err(RegistryError::Follower { primary }) if primary == PRIMARY);
    let with_key = DeviceSettings { key: Some(public_key(2)), ..Default::default() };
    assert!(refused(registry.add_device("new", &DeviceSettings::default()).await), "a new device");
    assert!(refused(registry.add_device("dev", &with_key).await), "a key through add");
    assert!(refused(registry.add_key("dev", public_key(3)).await), "a key");
    let legacy = DeviceSettings { policy: Some(Policy::Legacy), ..Default::default() };
    assert!(refused(registry.add_device("dev", &legacy).await), "a policy change");
    // Per gateway: ACLs (and passwords); the policy it already has; revocations.
    let acl = DeviceSettings {
        policy: Some(Policy::Signed),
        allow_pub: Some(vec!["dev/{device}/#".into()]),
        ..Default::default()
    };
    registry.add_device("dev", &acl).await.unwrap();
    registry.revoke_key("dev", mqs1::kid(&public_key(1))).await.unwrap();

    // No longer following: the registry is this gateway's own again.
    registry.stop_following().await.unwrap();
    registry.add_device("new", &DeviceSettings::default()).await.unwrap();
}
