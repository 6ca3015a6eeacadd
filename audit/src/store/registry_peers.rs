//! Peers' revocations (`[registry] peers`): which peer logs this registry
//! follows and where it is in each (`registry_peers`, migration 0010).
//!
//! A peer is followed with the primary's code and checks
//! (`registry_follow.rs` with [`Source::Peer`]), for its `KeyRevoked`
//! records only: a revocation only refuses more, so it is safe to take from
//! any gateway of the configured set, where a key or policy added by a peer
//! would let a second gateway widen what the primary decided. A peer is
//! known by its log's origin; another key for the same origin is refused
//! (it is another log, or an impostor), as a follower refuses another
//! primary.

use sqlx::Connection;

use super::registry::{Registry, RegistryError};
use super::registry_follow::{FollowError, FollowState, Source, origin_of, read_state_of};
use super::{now_ms, to_i64};
use crate::empty_root;

impl Registry {
    /// Marks the peer log with verifier key `vkey` as followed (active),
    /// starting at its beginning the first time. Refuses another key than
    /// the one its origin was followed with, once a checkpoint was accepted
    /// with that one (before, nothing was taken from it: a mistyped key can
    /// be corrected).
    pub async fn set_peer(&self, vkey: &str) -> Result<FollowState, FollowError> {
        let source = Source::Peer(origin_of(vkey).to_string());
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let stored = read_state_of(&mut tx, &source).await?;
        if stored.as_ref().is_some_and(|state| state.vkey != vkey && state.checkpoint.is_none() && state.applied == 0) {
            sqlx::query("DELETE FROM registry_peers WHERE origin = ?").bind(origin_of(vkey)).execute(&mut *tx).await?;
        }
        match read_state_of(&mut tx, &source).await? {
            Some(state) if state.vkey != vkey => {
                return Err(FollowError::OtherPeer {
                    origin: origin_of(vkey).to_string(),
                    stored: state.vkey,
                    scanned: state.scanned,
                    asked: vkey.to_string(),
                });
            }
            Some(_) => {
                sqlx::query("UPDATE registry_peers SET active = 1, updated_ms = ? WHERE origin = ?")
                    .bind(to_i64(now_ms()))
                    .bind(origin_of(vkey))
                    .execute(&mut *tx)
                    .await?;
            }
            None => {
                sqlx::query(
                    "INSERT INTO registry_peers (origin, vkey, active, tree_size, root, scanned, updated_ms) \
                     VALUES (?, ?, 1, 0, ?, 0, ?)",
                )
                .bind(origin_of(vkey))
                .bind(vkey)
                .bind(&empty_root()[..])
                .bind(to_i64(now_ms()))
                .execute(&mut *tx)
                .await?;
            }
        }
        let state =
            read_state_of(&mut tx, &source).await?.ok_or_else(|| FollowError::Moved("the row is gone".into()))?;
        tx.commit().await?;
        Ok(state)
    }

    /// Marks every peer whose origin is not in `origins` as no longer
    /// followed (a broker started without it); positions are kept, so a
    /// peer listed again resumes where it was.
    pub async fn retire_peers_except(&self, origins: &[String]) -> Result<(), RegistryError> {
        let mut conn = self.pool.acquire().await?;
        let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
        let active: Vec<String> =
            sqlx::query_scalar("SELECT origin FROM registry_peers WHERE active = 1").fetch_all(&mut *tx).await?;
        for origin in active.iter().filter(|o| !origins.contains(o)) {
            sqlx::query("UPDATE registry_peers SET active = 0, updated_ms = ? WHERE origin = ?")
                .bind(to_i64(now_ms()))
                .bind(origin)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    /// Every peer this registry followed, by origin; `active` ones are
    /// followed by the running (or last) broker.
    pub async fn peer_states(&self) -> Result<Vec<FollowState>, RegistryError> {
        let mut conn = self.pool.acquire().await?;
        let origins: Vec<String> =
            sqlx::query_scalar("SELECT origin FROM registry_peers ORDER BY origin").fetch_all(&mut *conn).await?;
        let mut states = Vec::with_capacity(origins.len());
        for origin in origins {
            if let Some(state) = read_state_of(&mut conn, &Source::Peer(origin)).await? {
                states.push(state);
            }
        }
        Ok(states)
    }
}
