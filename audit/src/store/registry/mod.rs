//! The device registry in SQLite: devices (policy, password, ACL), their
//! MQS1 keys, and the broker state the sequencer keeps beside the log
//! (replay windows; the retained index, whose SQL is in `retained.rs`).
//! All of the registry's SQL is here.
//!
//! The registry is changed by other processes than the broker (`sealmq
//! device …`), while the broker may run, and every change of a key or a
//! policy must become a kind-2 record in the log — but only the broker's
//! sequencer appends to the log. So a change writes its tables, its
//! encoded records into `registry_outbox` and a bumped `registry_version`
//! in one transaction; the broker notices the new version (one cheap read,
//! polled) and has the sequencer log the outbox
//! ([`Log::drain_registry_outbox`](super::Log::drain_registry_outbox));
//! [`Log::open`](super::Log::open) drains it too, so changes made while no
//! broker ran are logged at the next start. Passwords and ACLs have no
//! kind-2 record (spec/log.md): changing them bumps the version only.
//!
//! The registry's vocabulary (`Policy`, `Device`, `DeviceKey`,
//! `RegistrySnapshot`, `DeviceSettings`, `Change`, `RegistryError`) is in
//! `device.rs`, re-exported here.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use sqlx::sqlite::{SqliteConnection, SqlitePool, SqlitePoolOptions};
use sqlx::{Connection, Row};

use super::reader::connect_options;
use super::{DB_FILE, StoreError, io_error, now_ms, to_i64, to_u64};
use crate::acl;
/// The ACL helpers live in [`crate::acl`] (pure, no store needed); here too
/// for users of the registry.
pub use crate::acl::{Acl, acl_allows_publish, acl_allows_subscribe};
use crate::mqs1::{self, Kid};
use crate::{Record, RegistryEvent, RegistryRecord, RuleRecord};

mod device;

pub(in crate::store) use device::shortened;
pub use device::{
    Change, Device, DeviceKey, DeviceSettings, Policy, RegistryError, RegistrySnapshot, validate_device_id,
};

/// Read-write handle on the registry tables of a data directory's `log.db`.
///
/// Safe to use while a broker holds the log open (WAL, busy timeout; every
/// change is one short `BEGIN IMMEDIATE` transaction). It never appends to
/// the log itself.
#[derive(Debug, Clone)]
pub struct Registry {
    pub(super) pool: SqlitePool,
}

impl Registry {
    /// Opens the registry of `data_dir`, creating the directory and the
    /// database (schema only: the log's key and origin are made by the
    /// first [`Log::open`](super::Log::open)) when missing, and bringing the
    /// schema up to date.
    pub async fn open(data_dir: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(data_dir).map_err(io_error(data_dir))?;
        let options = connect_options(&data_dir.join(DB_FILE)).create_if_missing(true);
        let pool = SqlitePoolOptions::new().max_connections(2).connect_with(options).await?;
        {
            let mut conn = pool.acquire().await?;
            super::migrate(&mut conn).await?;
        }
        Ok(Self { pool })
    }

    /// Closes the handle's connections.
    pub async fn close(self) {
        self.pool.close().await;
    }

    /// The kind-3 records `sealmq rule add/remove` queued in the rule
    /// outbox and the sequencer has not logged yet, in the order it will
    /// (written by `sealmq_rules::store::RuleOutbox`; read here because the
    /// registry's database is where `sealmq rule list` finds them whether
    /// or not a log exists yet).
    pub async fn queued_rule_records(&self) -> Result<Vec<RuleRecord>, RegistryError> {
        let rows: Vec<(i64, Vec<u8>)> =
            sqlx::query_as("SELECT seq, record FROM rule_outbox ORDER BY seq").fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|(seq, bytes)| match Record::decode(&bytes) {
                Ok(Record::Rule(record)) => Ok(record),
                _ => Err(StoreError::Corrupt(format!("rule_outbox row {seq} is not a rule record")).into()),
            })
            .collect()
    }

    /// Registers device `id`, or changes it (an upsert): see
    /// [`DeviceSettings`]. Queues a PolicySet record when the device is new
    /// or its policy changes, and a KeyAdded record for `settings.key`; all
    /// in one transaction, so a refused key leaves no half-made device.
    pub async fn add_device(&self, id: &str, settings: &DeviceSettings) -> Result<Change, RegistryError> {
        validate_device_id(id)?;
        for pattern in settings.allow_pub.iter().chain(&settings.allow_sub).flatten() {
            acl::validate_pattern(pattern, id)
                .map_err(|reason| RegistryError::InvalidPattern { pattern: shortened(pattern), reason })?;
        }
        if let Some(key) = &settings.key {
            mqs1::device_key(key).map_err(RegistryError::BadKey)?;
        }
        let password_hash = match &settings.password {
            Some(password) => Some(hash_password(password.clone()).await?),
            None => None,
        };
        let allow_pub = settings.allow_pub.as_ref().map(|p| acl_json(p)).transpose()?;
        let allow_sub = settings.allow_sub.as_ref().map(|p| acl_json(p)).transpose()?;

        let now = now_ms();
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let existing: Option<String> =
            sqlx::query_scalar("SELECT policy FROM devices WHERE id = ?").bind(id).fetch_optional(&mut *tx).await?;
        let mut records = Vec::new();
        let created = existing.is_none();
        let policy_changes = settings.policy.is_some_and(|p| existing.as_deref() != Some(p.as_str()));
        if created || policy_changes || settings.key.is_some() {
            super::registry_follow::refuse_if_following(&mut tx).await?;
        }
        match existing {
            None => {
                let policy = settings.policy.unwrap_or(Policy::Signed);
                sqlx::query(
                    "INSERT INTO devices (id, policy, password_hash, allow_pub, allow_sub, created_ms, updated_ms) \
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
                )
                .bind(id)
                .bind(policy.as_str())
                .bind(&password_hash)
                .bind(allow_pub.as_deref().unwrap_or("[]"))
                .bind(allow_sub.as_deref().unwrap_or("[]"))
                .bind(to_i64(now))
                .bind(to_i64(now))
                .execute(&mut *tx)
                .await?;
                records.push(event(now, id, RegistryEvent::PolicySet { signed_required: policy.is_signed() }));
            }
            Some(stored) => {
                let stored = Policy::from_str(&stored)
                    .map_err(|_| StoreError::Corrupt(format!("device {id:?} has policy {stored:?}")))?;
                sqlx::query(
                    "UPDATE devices SET policy = coalesce(?, policy), password_hash = coalesce(?, password_hash), \
                     allow_pub = coalesce(?, allow_pub), allow_sub = coalesce(?, allow_sub), updated_ms = ? \
                     WHERE id = ?",
                )
                .bind(settings.policy.map(Policy::as_str))
                .bind(&password_hash)
                .bind(&allow_pub)
                .bind(&allow_sub)
                .bind(to_i64(now))
                .bind(id)
                .execute(&mut *tx)
                .await?;
                if let Some(policy) = settings.policy
                    && policy != stored
                {
                    records.push(event(now, id, RegistryEvent::PolicySet { signed_required: policy.is_signed() }));
                }
            }
        }
        if let Some(public_key) = settings.key {
            records.push(insert_key(&mut tx, id, public_key, now).await?);
        }
        let version = queue(&mut tx, &records).await?;
        tx.commit().await?;
        Ok(Change { created, records, version })
    }

    /// Adds an MQS1 key to device `id`. Refuses weak or invalid keys and a
    /// key registered before (to any device, even revoked: a revoked key
    /// stays revoked). Queues a KeyAdded record.
    pub async fn add_key(&self, id: &str, public_key: [u8; 32]) -> Result<Change, RegistryError> {
        validate_device_id(id)?;
        mqs1::device_key(&public_key).map_err(RegistryError::BadKey)?;
        let now = now_ms();
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        super::registry_follow::refuse_if_following(&mut tx).await?;
        touch_device(&mut tx, id, now).await?;
        let records = vec![insert_key(&mut tx, id, public_key, now).await?];
        let version = queue(&mut tx, &records).await?;
        tx.commit().await?;
        Ok(Change { created: false, records, version })
    }

    /// Revokes device `id`'s key `kid`. An error when the device or key is
    /// unknown or the key already revoked. Queues a KeyRevoked record.
    pub async fn revoke_key(&self, id: &str, kid: Kid) -> Result<Change, RegistryError> {
        validate_device_id(id)?;
        let now = now_ms();
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        touch_device(&mut tx, id, now).await?;
        let revoked: Option<Option<i64>> =
            sqlx::query_scalar("SELECT revoked_ms FROM device_keys WHERE kid = ? AND device_id = ?")
                .bind(&kid[..])
                .bind(id)
                .fetch_optional(&mut *tx)
                .await?;
        match revoked {
            None => return Err(RegistryError::UnknownKey { device: shortened(id), kid: hex::encode(kid) }),
            Some(Some(_)) => {
                return Err(RegistryError::AlreadyRevoked { device: shortened(id), kid: hex::encode(kid) });
            }
            Some(None) => {}
        }
        sqlx::query("UPDATE device_keys SET revoked_ms = ? WHERE kid = ?")
            .bind(to_i64(now))
            .bind(&kid[..])
            .execute(&mut *tx)
            .await?;
        let records = vec![event(now, id, RegistryEvent::KeyRevoked { kid })];
        let version = queue(&mut tx, &records).await?;
        tx.commit().await?;
        Ok(Change { created: false, records, version })
    }

    /// Every device with its keys, by id.
    pub async fn list(&self) -> Result<Vec<Device>, RegistryError> {
        Ok(self.snapshot().await?.devices)
    }

    /// The registry's change counter: it grows with every change. Polling
    /// it is one read of one row.
    pub async fn version(&self) -> Result<u64, RegistryError> {
        let version: i64 =
            sqlx::query_scalar("SELECT version FROM registry_version WHERE id = 1").fetch_one(&self.pool).await?;
        Ok(to_u64(version)?)
    }

    /// Everything the broker caches, consistent as of one moment (one read
    /// transaction). See [`RegistrySnapshot::unlogged`] for the order to use it in.
    pub async fn snapshot(&self) -> Result<RegistrySnapshot, RegistryError> {
        let mut tx = self.pool.begin().await?;
        let version: i64 =
            sqlx::query_scalar("SELECT version FROM registry_version WHERE id = 1").fetch_one(&mut *tx).await?;
        let unlogged: i64 = sqlx::query_scalar("SELECT count(*) FROM registry_outbox").fetch_one(&mut *tx).await?;
        let rows = sqlx::query(
            "SELECT id, policy, password_hash, allow_pub, allow_sub, created_ms, updated_ms FROM devices ORDER BY id",
        )
        .fetch_all(&mut *tx)
        .await?;
        let mut devices = Vec::with_capacity(rows.len());
        let mut by_id = HashMap::with_capacity(rows.len());
        for row in rows {
            let id: String = row.try_get(0)?;
            let policy: String = row.try_get(1)?;
            let device = Device {
                policy: Policy::from_str(&policy)
                    .map_err(|_| StoreError::Corrupt(format!("device {id:?} has policy {policy:?}")))?,
                password_hash: row.try_get(2)?,
                allow_pub: parse_acl(&id, "allow_pub", row.try_get(3)?)?,
                allow_sub: parse_acl(&id, "allow_sub", row.try_get(4)?)?,
                created_ms: to_u64(row.try_get(5)?)?,
                updated_ms: to_u64(row.try_get(6)?)?,
                keys: Vec::new(),
                id,
            };
            by_id.insert(device.id.clone(), devices.len());
            devices.push(device);
        }
        let keys = sqlx::query(
            "SELECT device_id, kid, public_key, added_ms, revoked_ms FROM device_keys ORDER BY device_id, added_ms, kid",
        )
        .fetch_all(&mut *tx)
        .await?;
        for row in keys {
            let device_id: String = row.try_get(0)?;
            let kid: &[u8] = row.try_get(1)?;
            let public_key: &[u8] = row.try_get(2)?;
            let corrupt =
                |what: &str| StoreError::Corrupt(format!("key {} of device {device_id:?}: {what}", hex::encode(kid)));
            let key = DeviceKey {
                kid: kid.try_into().map_err(|_| corrupt("kid is not 8 bytes"))?,
                public_key: public_key.try_into().map_err(|_| corrupt("public key is not 32 bytes"))?,
                added_ms: to_u64(row.try_get(3)?)?,
                revoked_ms: row.try_get::<Option<i64>, _>(4)?.map(to_u64).transpose()?,
            };
            if key.kid != mqs1::kid(&key.public_key) {
                return Err(corrupt("kid is not the public key's").into());
            }
            let Some(&at) = by_id.get(&device_id) else {
                return Err(corrupt("no such device").into());
            };
            devices[at].keys.push(key);
        }
        tx.commit().await?;
        Ok(RegistrySnapshot { version: to_u64(version)?, unlogged: to_u64(unlogged)?, devices })
    }

    /// The persisted MQS1 replay windows: `(kid, highest, seen)` per key, as
    /// last given to [`Entry::with_replay`](super::Entry::with_replay).
    pub async fn replay_windows(&self) -> Result<Vec<(Kid, u64, u64)>, RegistryError> {
        let rows: Vec<(Vec<u8>, i64, i64)> =
            sqlx::query_as("SELECT kid, highest, seen FROM replay_windows ORDER BY kid").fetch_all(&self.pool).await?;
        rows.into_iter()
            .map(|(kid, highest, seen)| {
                let kid: Kid = kid.as_slice().try_into().map_err(|_| {
                    StoreError::Corrupt(format!("replay window kid {} is not 8 bytes", hex::encode(&kid)))
                })?;
                Ok((kid, window_highest_from_sql(highest), seen.cast_unsigned()))
            })
            .collect()
    }

    /// The retained index as stored: `(topic, log index)` of the latest
    /// retained publish per topic, by topic. Derived data that anyone with
    /// the file can change: what the log implies is
    /// [`Log::reconcile_retained`](super::Log::reconcile_retained).
    pub async fn retained(&self) -> Result<Vec<(String, u64)>, RegistryError> {
        Ok(super::retained::read(&self.pool).await?)
    }
}

/// Checks an Argon2 PHC string against a password. False for a malformed
/// hash. Takes tens of milliseconds by design (Argon2's cost): call it off
/// the async executor (`spawn_blocking`).
pub fn verify_password(phc: &str, password: &[u8]) -> bool {
    PasswordHash::new(phc).is_ok_and(|hash| Argon2::default().verify_password(password, &hash).is_ok())
}

/// Hashes a password with Argon2id and the crate's default (OWASP) cost,
/// on a blocking thread: it is deliberately slow.
async fn hash_password(password: String) -> Result<String, RegistryError> {
    if password.is_empty() {
        return Err(RegistryError::Password("an empty password protects nothing; give one or leave it out".into()));
    }
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| RegistryError::Password(format!("no randomness for a salt: {e}")))?;
    let hashed = tokio::task::spawn_blocking(move || {
        let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
        Argon2::default().hash_password(password.as_bytes(), &salt).map(|h| h.to_string()).map_err(|e| e.to_string())
    })
    .await
    .map_err(|e| RegistryError::Password(format!("the hashing task failed: {e}")))?;
    hashed.map_err(RegistryError::Password)
}

pub(super) fn event(at_ms: u64, device_id: &str, event: RegistryEvent) -> RegistryRecord {
    RegistryRecord { at_ms, device_id: device_id.to_string(), event }
}

fn acl_json(patterns: &[String]) -> Result<String, RegistryError> {
    serde_json::to_string(patterns).map_err(|e| StoreError::Corrupt(format!("cannot encode an ACL: {e}")).into())
}

fn parse_acl(id: &str, column: &str, text: String) -> Result<Vec<String>, StoreError> {
    serde_json::from_str(&text)
        .map_err(|e| StoreError::Corrupt(format!("device {id:?}: {column} is not a JSON array of strings: {e}")))
}

/// Marks device `id` changed; [`RegistryError::UnknownDevice`] if there is none.
pub(super) async fn touch_device(conn: &mut SqliteConnection, id: &str, now: u64) -> Result<(), RegistryError> {
    let updated =
        sqlx::query("UPDATE devices SET updated_ms = ? WHERE id = ?").bind(to_i64(now)).bind(id).execute(conn).await?;
    if updated.rows_affected() == 0 {
        return Err(RegistryError::UnknownDevice(shortened(id)));
    }
    Ok(())
}

/// Inserts a key (already checked usable) for an existing device; its KeyAdded record.
pub(super) async fn insert_key(
    conn: &mut SqliteConnection,
    id: &str,
    public_key: [u8; 32],
    now: u64,
) -> Result<RegistryRecord, RegistryError> {
    let kid = mqs1::kid(&public_key);
    let existing: Option<(String, Option<i64>)> =
        sqlx::query_as("SELECT device_id, revoked_ms FROM device_keys WHERE kid = ?")
            .bind(&kid[..])
            .fetch_optional(&mut *conn)
            .await?;
    if let Some((device, revoked)) = existing {
        return Err(RegistryError::DuplicateKey {
            kid: hex::encode(kid),
            device: shortened(&device),
            revoked: revoked.is_some(),
        });
    }
    sqlx::query("INSERT INTO device_keys (kid, device_id, public_key, added_ms) VALUES (?, ?, ?, ?)")
        .bind(&kid[..])
        .bind(id)
        .bind(&public_key[..])
        .bind(to_i64(now))
        .execute(&mut *conn)
        .await?;
    Ok(event(now, id, RegistryEvent::KeyAdded { public_key }))
}

/// Queues `records` in the outbox and bumps the version; the new version.
pub(super) async fn queue(conn: &mut SqliteConnection, records: &[RegistryRecord]) -> Result<u64, RegistryError> {
    for record in records {
        let bytes = Record::Registry(record.clone())
            .encode()
            .map_err(|e| StoreError::Corrupt(format!("cannot encode a registry record: {e}")))?;
        sqlx::query("INSERT INTO registry_outbox (record) VALUES (?)").bind(bytes).execute(&mut *conn).await?;
    }
    let version: i64 =
        sqlx::query_scalar("UPDATE registry_version SET version = version + 1 WHERE id = 1 RETURNING version")
            .fetch_one(&mut *conn)
            .await?;
    Ok(to_u64(version)?)
}

/// `replay_windows.highest` as stored: the u64 with its top bit flipped, as
/// an i64, so that SQLite's signed order is the counters' unsigned order
/// (the sequencer's upsert compares them: windows only move forward).
pub(super) fn window_highest_to_sql(highest: u64) -> i64 {
    (highest ^ (1 << 63)).cast_signed()
}

fn window_highest_from_sql(stored: i64) -> u64 {
    stored.cast_unsigned() ^ (1 << 63)
}

/// `replay_windows.seen` as stored: the same 64 bits as an i64.
pub(super) fn window_seen_to_sql(seen: u64) -> i64 {
    seen.cast_signed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn window_encoding_preserves_order_and_bits() {
        let values = [0, 1, 63, 64, (1 << 63) - 1, 1 << 63, (1 << 63) + 1, u64::MAX - 1, u64::MAX];
        for w in values.windows(2) {
            assert!(window_highest_to_sql(w[0]) < window_highest_to_sql(w[1]), "{w:?}");
        }
        for v in values {
            assert_eq!(window_highest_from_sql(window_highest_to_sql(v)), v);
            assert_eq!(window_seen_to_sql(v).cast_unsigned(), v);
        }
    }

    #[test]
    fn device_ids() {
        assert!(validate_device_id("sensor-1").is_ok());
        assert!(validate_device_id("with/slash and ünïcode").is_ok());
        assert!(validate_device_id(&"x".repeat(65535)).is_ok());
        assert!(validate_device_id("$rules").is_ok() && validate_device_id("x$rule/").is_ok());
        for bad in [String::new(), "a\0b".into(), "x".repeat(65536), "$rule/x".into(), "$rule/".into()] {
            let err = validate_device_id(&bad).unwrap_err().to_string();
            assert!(err.starts_with("invalid device id"), "{err}");
            assert!(err.len() < 200, "long ids are shortened in messages: {err}");
        }
    }

    #[test]
    fn policy_names() {
        for policy in [Policy::Signed, Policy::Legacy] {
            assert_eq!(policy.as_str().parse::<Policy>().unwrap(), policy);
        }
        assert!(matches!("strict".parse::<Policy>(), Err(RegistryError::UnknownPolicy(p)) if p == "strict"));
    }
}
