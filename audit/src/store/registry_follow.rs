//! A follower's side of a primary registry log (`[registry] follow`): where
//! it is in the primary's log (`registry_follow`, migration 0009) and the
//! primary's kind-2 records applied to this registry.
//!
//! The broker checks each primary record (signed checkpoint, consistency,
//! inclusion proof: `sealmq_broker::devices::follow`) and hands it to
//! [`Registry::apply_followed`], which changes the device tables, queues
//! the kind-2 records of what changed *here* in `registry_outbox` (so this
//! gateway's own log records every change it acts on, through the sequencer
//! like a local change) and moves the scan position past the record, all in
//! one transaction. A crash therefore never applies a record twice nor
//! skips one.
//!
//! The same code follows peers (`[registry] peers`, [`Source::Peer`]): their
//! revocations only, each peer's position in `registry_peers` (migration
//! 0010, `registry_peers.rs`).
//!
//! Kind-2 records carry keys and policies only (spec/log.md): passwords and
//! ACLs are not in the log, so they stay each gateway's own. A device the
//! primary registers arrives here without a password and without an ACL
//! restriction, as `sealmq device add` makes one; give it its password and
//! ACL on each gateway that needs them.

use sqlx::sqlite::SqliteConnection;
use sqlx::{AssertSqlSafe, Connection, Row};

use super::registry::{
    Policy, Registry, RegistryError, event, insert_key, queue, shortened, touch_device, validate_device_id,
};
use super::{StoreError, now_ms, to_hash, to_i64, to_u64};
use crate::mqs1::{self, Kid};
use crate::{Hash, RegistryEvent, RegistryRecord, empty_root};

/// Where a follower is in its primary's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FollowState {
    /// The primary log's verifier key.
    pub vkey: String,
    /// Whether a broker runs following it (local key and policy changes
    /// are refused while it does).
    pub active: bool,
    /// The size of the primary's checkpoint accepted last (0: none yet).
    pub tree_size: u64,
    /// Its root (the empty tree's before the first).
    pub root: Hash,
    /// The signed note, once one was accepted.
    pub checkpoint: Option<String>,
    /// Every kind-2 record of the primary below this index is applied.
    pub scanned: u64,
    /// The index of the last kind-2 record applied.
    pub last_applied: Option<u64>,
    /// How many of the primary's kind-2 records were applied.
    pub applied: u64,
}

impl FollowState {
    /// The followed log's origin: the name in its verifier key.
    pub fn origin(&self) -> &str {
        origin_of(&self.vkey)
    }
}

/// The origin a verifier key names (`<name>+<key id>+<key>`).
pub fn origin_of(vkey: &str) -> &str {
    vkey.split('+').next().unwrap_or(vkey)
}

/// Whose log a registry follows: the primary's (every kind-2 record,
/// position in `registry_follow`), or a peer's (its revocations only,
/// position in `registry_peers` under the peer's origin).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The primary (`[registry] follow`).
    Primary,
    /// A peer (`[registry] peers`), by its log's origin.
    Peer(String),
}

impl Source {
    /// Whether this is a peer (revocations only).
    pub fn is_peer(&self) -> bool {
        matches!(self, Source::Peer(_))
    }

    /// What it is called in messages.
    pub fn role(&self) -> &'static str {
        match self {
            Source::Primary => "primary",
            Source::Peer(_) => "peer",
        }
    }

    /// The table holding its position (a fixed name, never input).
    fn table(&self) -> &'static str {
        match self {
            Source::Primary => "registry_follow",
            Source::Peer(_) => "registry_peers",
        }
    }

    /// The condition naming its row, with one parameter.
    fn key_column(&self) -> &'static str {
        match self {
            Source::Primary => "id = ?",
            Source::Peer(_) => "origin = ?",
        }
    }

    /// Binds the parameter of [`Source::key_column`], last.
    fn bind_key<'q>(&self, query: SqliteQuery<'q>) -> SqliteQuery<'q> {
        match self {
            Source::Primary => query.bind(1_i64),
            Source::Peer(origin) => query.bind(origin.clone()),
        }
    }

    fn other_key(&self, state: FollowState, asked: &str) -> FollowError {
        match self {
            Source::Primary => {
                FollowError::OtherPrimary { stored: state.vkey, scanned: state.scanned, asked: asked.into() }
            }
            Source::Peer(origin) => FollowError::OtherPeer {
                origin: origin.clone(),
                stored: state.vkey,
                scanned: state.scanned,
                asked: asked.into(),
            },
        }
    }
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>;

/// What applying one followed record did here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The registry changed: these kind-2 records are queued for this log.
    Changed(Vec<RegistryRecord>),
    /// Nothing here needed to change (the registry already says it).
    Unchanged,
    /// The record was applied before (its index is below the scan position).
    AlreadyApplied,
    /// It cannot be applied here, for this reason; the follower moves on
    /// (a revocation of a key this gateway never had, a key this gateway
    /// has on another device).
    Skipped(String),
}

/// Why the follow state refuses a change.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The registry.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The registry follows another primary than the one asked about.
    #[error(
        "this registry followed the primary log {stored} (up to its index {scanned}); it will not follow {asked} \
         as well: a registry follows one primary"
    )]
    OtherPrimary {
        /// The key in the state.
        stored: String,
        /// Its scan position.
        scanned: u64,
        /// The key configured.
        asked: String,
    },
    /// A peer with this origin was followed with another key.
    #[error(
        "the peer log {origin} was followed with the key {stored} (up to its index {scanned}); it will not be \
         followed with {asked}: another key for the same origin is another log"
    )]
    OtherPeer {
        /// The peer log's origin.
        origin: String,
        /// The key in the state.
        stored: String,
        /// Its scan position.
        scanned: u64,
        /// The key configured.
        asked: String,
    },
    /// The state says something else than the caller (a bug, or two
    /// followers on one data directory).
    #[error("the follow state moved unexpectedly: {0}")]
    Moved(String),
}

impl From<sqlx::Error> for FollowError {
    fn from(e: sqlx::Error) -> Self {
        FollowError::Registry(e.into())
    }
}

impl From<StoreError> for FollowError {
    fn from(e: StoreError) -> Self {
        FollowError::Registry(e.into())
    }
}

impl Registry {
    /// Where this registry is in the primary's log, if it ever followed one.
    pub async fn follow_state(&self) -> Result<Option<FollowState>, RegistryError> {
        let mut conn = self.pool.acquire().await?;
        Ok(read_state(&mut conn).await?)
    }

    /// Marks this registry as following the primary with verifier key
    /// `vkey` (`active`), or as no longer following one (`!active`: the
    /// position is kept, local changes are allowed again). Refuses to
    /// follow another primary than the one it followed.
    pub async fn set_following(&self, vkey: &str, active: bool) -> Result<FollowState, FollowError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        match read_state(&mut tx).await? {
            Some(state) if state.vkey != vkey => {
                return Err(FollowError::OtherPrimary {
                    stored: state.vkey,
                    scanned: state.scanned,
                    asked: vkey.to_string(),
                });
            }
            Some(_) => {
                sqlx::query("UPDATE registry_follow SET active = ?, updated_ms = ? WHERE id = 1")
                    .bind(i64::from(active))
                    .bind(to_i64(now_ms()))
                    .execute(&mut *tx)
                    .await?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO registry_follow (id, vkey, active, tree_size, root, scanned, updated_ms) \
                     VALUES (1, ?, ?, 0, ?, 0, ?)",
                )
                .bind(vkey)
                .bind(i64::from(active))
                .bind(&empty_root()[..])
                .bind(to_i64(now_ms()))
                .execute(&mut *tx)
                .await?;
            }
        }
        let state = read_state(&mut tx).await?.ok_or_else(|| FollowError::Moved("the row is gone".into()))?;
        tx.commit().await?;
        Ok(state)
    }

    /// Stops following, if a broker followed (a broker started without
    /// `[registry] follow`): local changes are this registry's own again.
    pub async fn stop_following(&self) -> Result<(), RegistryError> {
        sqlx::query("UPDATE registry_follow SET active = 0, updated_ms = ? WHERE id = 1 AND active = 1")
            .bind(to_i64(now_ms()))
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Where this registry is in the log of `source`, if it ever followed it.
    pub async fn state_of(&self, source: &Source) -> Result<Option<FollowState>, RegistryError> {
        let mut conn = self.pool.acquire().await?;
        Ok(read_state_of(&mut conn, source).await?)
    }

    /// Stores the checkpoint `note` (size `size`, root `root`) of `source`,
    /// which the caller checked: signed by `vkey` and consistent with the
    /// one accepted before. Only ever moves forward.
    pub async fn accept_checkpoint(
        &self,
        source: &Source,
        vkey: &str,
        note: &str,
        size: u64,
        root: &Hash,
    ) -> Result<(), FollowError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let state = expect_state(&mut tx, source, vkey).await?;
        if size < state.tree_size || (size == state.tree_size && *root != state.root) {
            return Err(FollowError::Moved(format!(
                "checkpoint of size {size} offered after size {} was accepted",
                state.tree_size
            )));
        }
        let sql = format!(
            "UPDATE {} SET tree_size = ?, root = ?, checkpoint = ?, updated_ms = ? WHERE {}",
            source.table(),
            source.key_column()
        );
        let query =
            sqlx::query(AssertSqlSafe(sql)).bind(to_i64(size)).bind(&root[..]).bind(note).bind(to_i64(now_ms()));
        source.bind_key(query).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Records that every record of `source` that this registry takes from
    /// it below `size` (at most the accepted checkpoint's) has been applied.
    pub async fn finish_scan(&self, source: &Source, vkey: &str, size: u64) -> Result<(), FollowError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let state = expect_state(&mut tx, source, vkey).await?;
        if size > state.tree_size {
            return Err(FollowError::Moved(format!("scan to {size} past the accepted size {}", state.tree_size)));
        }
        if size > state.scanned {
            let sql =
                format!("UPDATE {} SET scanned = ?, updated_ms = ? WHERE {}", source.table(), source.key_column());
            let query = sqlx::query(AssertSqlSafe(sql)).bind(to_i64(size)).bind(to_i64(now_ms()));
            source.bind_key(query).execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Applies the kind-2 record at `index` of `source`'s log (checked
    /// against the accepted checkpoint by the caller) to this registry, in
    /// one transaction with the scan position: see the module
    /// documentation. From a peer only a revocation is applied; anything
    /// else is skipped.
    pub async fn apply_followed(
        &self,
        source: &Source,
        vkey: &str,
        index: u64,
        record: &RegistryRecord,
    ) -> Result<Applied, FollowError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let state = expect_state(&mut tx, source, vkey).await?;
        if index < state.scanned {
            return Ok(Applied::AlreadyApplied);
        }
        if index >= state.tree_size {
            return Err(FollowError::Moved(format!(
                "record {index} is not below the accepted checkpoint's size {}",
                state.tree_size
            )));
        }
        let now = now_ms();
        let outcome = match validate_device_id(&record.device_id) {
            Err(e) => Err(e.to_string()),
            // A revocation only refuses more: the one change a peer may make.
            Ok(()) if source.is_peer() && !matches!(record.event, RegistryEvent::KeyRevoked { .. }) => {
                Err("a peer's records other than revocations are not applied".to_string())
            }
            Ok(()) => change(&mut tx, record, now).await?,
        };
        let applied = match outcome {
            Ok(records) if records.is_empty() => Applied::Unchanged,
            Ok(records) => {
                queue(&mut tx, &records).await?;
                Applied::Changed(records)
            }
            Err(why) => Applied::Skipped(why),
        };
        let sql = format!(
            "UPDATE {} SET scanned = ?, last_applied = ?, applied = applied + 1, updated_ms = ? WHERE {}",
            source.table(),
            source.key_column()
        );
        let query = sqlx::query(AssertSqlSafe(sql)).bind(to_i64(index + 1)).bind(to_i64(index)).bind(to_i64(now));
        source.bind_key(query).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(applied)
    }
}

/// Refuses a local change of keys or policies while a broker follows a
/// primary (called inside the change's transaction).
pub(super) async fn refuse_if_following(conn: &mut SqliteConnection) -> Result<(), RegistryError> {
    let primary: Option<String> = sqlx::query_scalar("SELECT vkey FROM registry_follow WHERE id = 1 AND active = 1")
        .fetch_optional(&mut *conn)
        .await?;
    match primary {
        Some(primary) => Err(RegistryError::Follower { primary }),
        None => Ok(()),
    }
}

async fn read_state(conn: &mut SqliteConnection) -> Result<Option<FollowState>, StoreError> {
    read_state_of(conn, &Source::Primary).await
}

pub(super) async fn read_state_of(
    conn: &mut SqliteConnection,
    source: &Source,
) -> Result<Option<FollowState>, StoreError> {
    let sql = format!(
        "SELECT vkey, active, tree_size, root, checkpoint, scanned, last_applied, applied FROM {} WHERE {}",
        source.table(),
        source.key_column()
    );
    let row = source.bind_key(sqlx::query(AssertSqlSafe(sql))).fetch_optional(&mut *conn).await?;
    let Some(row) = row else { return Ok(None) };
    let root: Vec<u8> = row.try_get(3)?;
    Ok(Some(FollowState {
        vkey: row.try_get(0)?,
        active: row.try_get::<i64, _>(1)? == 1,
        tree_size: to_u64(row.try_get(2)?)?,
        root: to_hash(&root, &format!("{}.root", source.table()))?,
        checkpoint: row.try_get(4)?,
        scanned: to_u64(row.try_get(5)?)?,
        last_applied: row.try_get::<Option<i64>, _>(6)?.map(to_u64).transpose()?,
        applied: to_u64(row.try_get(7)?)?,
    }))
}

/// The state of `source`, which must be for `vkey`.
async fn expect_state(conn: &mut SqliteConnection, source: &Source, vkey: &str) -> Result<FollowState, FollowError> {
    match read_state_of(conn, source).await? {
        Some(state) if state.vkey == vkey => Ok(state),
        Some(state) => Err(source.other_key(state, vkey)),
        None => Err(FollowError::Moved(format!("this registry does not follow {vkey}"))),
    }
}

/// The change `record` makes here: the local kind-2 records of it (empty
/// when nothing changes), or why it cannot be applied.
async fn change(
    conn: &mut SqliteConnection,
    record: &RegistryRecord,
    now: u64,
) -> Result<Result<Vec<RegistryRecord>, String>, RegistryError> {
    let id = record.device_id.as_str();
    let mut records = Vec::new();
    match record.event {
        RegistryEvent::PolicySet { signed_required } => {
            let policy = if signed_required { Policy::Signed } else { Policy::Legacy };
            let stored: Option<String> = sqlx::query_scalar("SELECT policy FROM devices WHERE id = ?")
                .bind(id)
                .fetch_optional(&mut *conn)
                .await?;
            match stored {
                None => records.push(create_device(conn, id, policy, now).await?),
                Some(stored) if stored == policy.as_str() => {}
                Some(_) => {
                    sqlx::query("UPDATE devices SET policy = ?, updated_ms = ? WHERE id = ?")
                        .bind(policy.as_str())
                        .bind(to_i64(now))
                        .bind(id)
                        .execute(&mut *conn)
                        .await?;
                    records.push(event(now, id, record.event));
                }
            }
        }
        RegistryEvent::KeyAdded { public_key } => {
            if let Err(e) = mqs1::device_key(&public_key) {
                return Ok(Err(format!("the key is not usable: {e}")));
            }
            let kid = mqs1::kid(&public_key);
            match key_holder(conn, &kid).await? {
                Some((holder, _)) if holder != id => {
                    return Ok(Err(format!(
                        "key {} is registered here to device {:?}",
                        hex::encode(kid),
                        shortened(&holder)
                    )));
                }
                // Here already (added, or added and revoked: a revoked key stays revoked).
                Some(_) => {}
                None => {
                    let exists: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM devices WHERE id = ?)")
                        .bind(id)
                        .fetch_one(&mut *conn)
                        .await?;
                    if exists {
                        touch_device(conn, id, now).await?;
                    } else {
                        // The primary logs a device's policy before its first
                        // key; a device without one here gets the default.
                        records.push(create_device(conn, id, Policy::Signed, now).await?);
                    }
                    records.push(insert_key(conn, id, public_key, now).await?);
                }
            }
        }
        RegistryEvent::KeyRevoked { kid } => match key_holder(conn, &kid).await? {
            None => return Ok(Err(format!("key {} was never registered here", hex::encode(kid)))),
            Some((_, true)) => {}
            // A kid names one key whichever device holds it: revoked here
            // whatever device this gateway has it on.
            Some((holder, false)) => {
                sqlx::query("UPDATE device_keys SET revoked_ms = ? WHERE kid = ?")
                    .bind(to_i64(now))
                    .bind(&kid[..])
                    .execute(&mut *conn)
                    .await?;
                touch_device(conn, &holder, now).await?;
                records.push(event(now, &holder, RegistryEvent::KeyRevoked { kid }));
            }
        },
    }
    Ok(Ok(records))
}

/// The device holding key `kid` here and whether it is revoked.
async fn key_holder(conn: &mut SqliteConnection, kid: &Kid) -> Result<Option<(String, bool)>, RegistryError> {
    let row: Option<(String, Option<i64>)> =
        sqlx::query_as("SELECT device_id, revoked_ms FROM device_keys WHERE kid = ?")
            .bind(&kid[..])
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.map(|(device, revoked)| (device, revoked.is_some())))
}

/// Registers a device the primary has: its policy, no password, no ACL
/// restriction. Its PolicySet record.
async fn create_device(
    conn: &mut SqliteConnection,
    id: &str,
    policy: Policy,
    now: u64,
) -> Result<RegistryRecord, RegistryError> {
    sqlx::query(
        "INSERT INTO devices (id, policy, password_hash, allow_pub, allow_sub, created_ms, updated_ms) \
         VALUES (?, ?, NULL, '[]', '[]', ?, ?)",
    )
    .bind(id)
    .bind(policy.as_str())
    .bind(to_i64(now))
    .bind(to_i64(now))
    .execute(&mut *conn)
    .await?;
    Ok(event(now, id, RegistryEvent::PolicySet { signed_required: policy.is_signed() }))
}
