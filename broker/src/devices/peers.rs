//! A key revoked on any gateway is refused on every gateway: each gateway
//! follows the logs of its `[registry] peers` for their revocations.
//!
//! A revocation only refuses more, so it is safe to take from any gateway of
//! the configured set, primary or follower; keys and policies still come
//! from the primary alone (`follow.rs`), so the peers cannot widen what it
//! decided. Each peer is followed by a [`Follower`] in peer mode, with the
//! checks of following the primary: its checkpoints open with its vkey and
//! extend the one accepted from it (a rollback or fork is refused loudly),
//! and each revocation is proven in the checkpoint before it is applied. A
//! revocation applied from a peer is logged (kind 2) in this gateway's own
//! log, so the gateways that follow this one see it again: it changes
//! nothing where the key is revoked already ([`Applied::Unchanged`], not
//! logged again), so it is not echoed back and forth.
//!
//! Entries for this gateway's own log, and for its primary (whose
//! revocations already arrive by following it), are skipped, so every
//! gateway can be given the same list.
//!
//! [`Applied::Unchanged`]: sealmq_audit::store::registry_follow::Applied::Unchanged

use std::time::Duration;

use sealmq_audit::VerifierKey;
use sealmq_audit::store::registry::Registry;
use tokio::sync::watch;
use tokio::task::JoinSet;

use super::follow::{Follower, keep_following};
use crate::config::RegistryConfig;

/// Follows every configured peer's revocations until shutdown. `own` is
/// this gateway's log key.
pub async fn run(registry: Registry, config: RegistryConfig, own: VerifierKey, shutdown: watch::Receiver<bool>) {
    let primary: Option<VerifierKey> = config.follow_vkey.as_deref().and_then(|v| v.trim().parse().ok());
    let mut peers = Vec::new();
    for peer in &config.peers {
        let vkey: VerifierKey = match peer.vkey.trim().parse() {
            Ok(vkey) => vkey,
            Err(e) => {
                tracing::error!(peer = %peer.url, error = %e, "registry.peers: not a verifier key; not following it");
                continue;
            }
        };
        if vkey.name() == own.name() {
            if vkey != own {
                // Same origin, another key: not this log, and not one to follow.
                tracing::error!(peer = %peer.url, vkey = %vkey, own = %own, "REFUSED the peer: it has this log's origin with another key");
            }
            continue;
        }
        if primary.as_ref().is_some_and(|p| p.name() == vkey.name()) {
            tracing::debug!(peer = %peer.url, "a peer is the primary: its revocations arrive by following it");
            continue;
        }
        peers.push((peer.url.clone(), vkey));
    }
    let origins: Vec<String> = peers.iter().map(|(_, vkey)| vkey.name().to_string()).collect();
    if let Err(e) = registry.retire_peers_except(&origins).await {
        tracing::warn!(error = %e, "cannot mark the peers no longer configured");
    }
    let interval = Duration::from_millis(config.follow_interval_ms);
    let mut followers = JoinSet::new();
    for (url, vkey) in peers {
        match registry.set_peer(&vkey.to_string()).await {
            Ok(state) => tracing::info!(
                peer = %url,
                vkey = %vkey,
                accepted_size = state.tree_size,
                scanned = state.scanned,
                "following the peer's key revocations"
            ),
            Err(e) => {
                tracing::error!(peer = %url, error = %e, "REFUSED to follow the peer's key revocations");
                continue;
            }
        }
        let follower = Follower::peer(&url, vkey, registry.clone(), interval.max(Duration::from_secs(5)));
        followers.spawn(keep_following(follower, interval, shutdown.clone()));
    }
    while followers.join_next().await.is_some() {}
}
