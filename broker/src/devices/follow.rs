//! One device registry for several gateways: this gateway follows the
//! primary gateway's log (`[registry] follow`, `follow_vkey`).
//!
//! Every `follow_interval_ms` the follower takes the primary's latest
//! signed checkpoint (`/v1/checkpoint`), opens it with the configured
//! verifier key, and checks that it extends the checkpoint it accepted last
//! (same root at the same size, an RFC 9162 consistency proof from
//! `/v1/consistency` for a larger one). A primary whose checkpoint is
//! smaller (rolled back), or does not extend the accepted one (forked), or
//! is not signed by the key, is refused loudly and nothing more is applied
//! from it. Then it lists the primary's kind-2 records past the last one
//! applied (`/v1/records?kind=registry`), fetches each one's inclusion
//! proof against the accepted checkpoint (`/v1/proof/N?size=`), checks it,
//! and applies the change to this registry
//! ([`Registry::apply_followed`]): the change, its kind-2 records for this
//! gateway's own log and the new position in one transaction. The broker's
//! registry watch then logs them and swaps in the new view, as for a local
//! change, so open sessions look their device up again before their next
//! publish.
//!
//! What the follower cannot check: that the list of registry records is
//! complete. The search is the primary's word; a primary that leaves a
//! record out is caught by an auditor reading its whole log, not here.
//!
//! The same [`Follower`] follows each peer of `[registry] peers`
//! ([`Source::Peer`], `peers.rs`) for its revocations only: it lists the
//! peer's registry records, proves and applies those that revoke a key, with
//! the same checkpoint checks.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use sealmq_audit::store::registry::Registry;
use sealmq_audit::store::registry_follow::{Applied, FollowError as StateError, FollowState, Source};
use sealmq_audit::{Checkpoint, ConsistencyBundle, ProofBundle, Record, RegistryEvent, VerifierKey, mqs1};
use serde::Deserialize;
use tokio::sync::watch;

use crate::config::RegistryConfig;
use crate::net::http_client::{self, describe};

/// The most of one answer read (a page of registry records is ~100 KiB).
const MAX_ANSWER: usize = 4 * 1024 * 1024;
/// Registry records listed per request.
const PAGE: u32 = 500;
/// A refusal or an unreachable primary is logged again at most this often.
const REPEAT_LOG: Duration = Duration::from_secs(60);

/// Why a round of following stopped.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// The followed gateway did not answer, or not as its API does.
    #[error("the {role} {url} gave no usable answer: {why}")]
    Unreachable {
        /// "primary" or "peer".
        role: &'static str,
        /// Its URL.
        url: String,
        /// Why.
        why: String,
    },
    /// The followed gateway showed something a correct one never shows: a
    /// checkpoint not signed by its key, a rollback, a fork, a bad proof.
    #[error("REFUSED the {role} {url}: {why}; nothing more is applied from it")]
    Refused {
        /// "primary" or "peer".
        role: &'static str,
        /// Its URL.
        url: String,
        /// What it showed.
        why: String,
    },
    /// This registry's follow state could not be read or written.
    #[error(transparent)]
    State(#[from] StateError),
}

impl From<sealmq_audit::store::RegistryError> for FollowError {
    fn from(e: sealmq_audit::store::RegistryError) -> Self {
        FollowError::State(e.into())
    }
}

/// One page of `/v1/records`, as far as the follower reads it.
#[derive(Deserialize)]
struct Page {
    records: Vec<Listed>,
    next: Option<u64>,
}

#[derive(Deserialize)]
struct Listed {
    index: u64,
    /// `key_revoked`, `key_added` or `policy_set`.
    action: Option<String>,
}

/// A follower of one primary, or of one peer's revocations.
pub struct Follower {
    url: String,
    vkey: VerifierKey,
    source: Source,
    registry: Registry,
    client: Client<HttpConnector, Empty<Bytes>>,
    timeout: Duration,
}

impl Follower {
    /// A follower of the primary at `url` (its HTTP API) whose log has
    /// verifier key `vkey`, applying to `registry`.
    pub fn new(url: &str, vkey: VerifierKey, registry: Registry, timeout: Duration) -> Self {
        Self::of(Source::Primary, url, vkey, registry, timeout)
    }

    /// A follower of the revocations of the peer at `url` whose log has
    /// verifier key `vkey` (its position kept under the key's name, the
    /// log's origin).
    pub fn peer(url: &str, vkey: VerifierKey, registry: Registry, timeout: Duration) -> Self {
        Self::of(Source::Peer(vkey.name().to_string()), url, vkey, registry, timeout)
    }

    fn of(source: Source, url: &str, vkey: VerifierKey, registry: Registry, timeout: Duration) -> Self {
        let client = http_client::client(timeout);
        Self { url: url.trim_end_matches('/').to_string(), vkey, source, registry, client, timeout }
    }

    /// The followed gateway's URL.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// "primary" or "peer".
    pub fn role(&self) -> &'static str {
        self.source.role()
    }

    fn refused(&self, why: impl Into<String>) -> FollowError {
        FollowError::Refused { role: self.role(), url: self.url.clone(), why: why.into() }
    }

    fn unreachable(&self, why: impl Into<String>) -> FollowError {
        FollowError::Unreachable { role: self.role(), url: self.url.clone(), why: why.into() }
    }

    /// GETs `path` from the primary: status and body.
    async fn get(&self, path: &str) -> Result<(u16, String), FollowError> {
        let url = format!("{}{path}", self.url);
        let uri: hyper::Uri = url.parse().map_err(|_| self.unreachable(format!("bad URL {url:?}")))?;
        let exchange = async {
            let response = self.client.get(uri).await.map_err(|e| describe(&e))?;
            let status = response.status().as_u16();
            let body = Limited::new(response.into_body(), MAX_ANSWER)
                .collect()
                .await
                .map_err(|e| format!("reading the answer: {e}"))?
                .to_bytes();
            let body = String::from_utf8(body.to_vec()).map_err(|_| "the answer is not UTF-8".to_string())?;
            Ok::<_, String>((status, body))
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(Ok(answer)) => Ok(answer),
            Ok(Err(why)) => Err(self.unreachable(format!("GET {path}: {why}"))),
            Err(_) => Err(self.unreachable(format!("GET {path}: no answer within {:?}", self.timeout))),
        }
    }

    /// GETs `path`, which must answer 200.
    async fn get_ok(&self, path: &str) -> Result<String, FollowError> {
        match self.get(path).await? {
            (200, body) => Ok(body),
            (status, body) => Err(self.unreachable(format!("GET {path}: HTTP {status}: {}", body.trim()))),
        }
    }

    /// One round: the followed log's checkpoint checked and accepted, the
    /// registry records below it applied (a peer's revocations only). How
    /// many changed this registry.
    pub async fn sync(&self) -> Result<usize, FollowError> {
        let note = match self.get("/v1/checkpoint").await? {
            (200, note) => note,
            // No block sealed yet: nothing to follow.
            (404, _) => return Ok(0),
            (status, body) => {
                return Err(self.unreachable(format!("GET /v1/checkpoint: HTTP {status}: {}", body.trim())));
            }
        };
        let checkpoint = self
            .vkey
            .open(&note)
            .map_err(|e| self.refused(format!("its checkpoint does not open with {}: {e}", self.vkey)))?;
        let state = self.state().await?;
        self.check_extends(&state, &checkpoint, &note).await?;
        let vkey = self.vkey.to_string();
        if checkpoint.size > state.tree_size {
            self.registry.accept_checkpoint(&self.source, &vkey, &note, checkpoint.size, &checkpoint.root).await?;
        }
        if state.scanned >= checkpoint.size {
            return Ok(0);
        }
        let changed = self.apply_below(state.scanned, &checkpoint).await?;
        self.registry.finish_scan(&self.source, &vkey, checkpoint.size).await?;
        Ok(changed)
    }

    async fn state(&self) -> Result<FollowState, FollowError> {
        match self.registry.state_of(&self.source).await? {
            Some(state) if state.vkey == self.vkey.to_string() => Ok(state),
            Some(state) => Err(self.refused(format!("this registry follows {} already", state.vkey))),
            None => Err(self.refused("this registry's follow state is missing")),
        }
    }

    /// Checks that `checkpoint` (signed) extends the one accepted before.
    async fn check_extends(&self, state: &FollowState, checkpoint: &Checkpoint, note: &str) -> Result<(), FollowError> {
        let (old, new) = (state.tree_size, checkpoint.size);
        if new < old {
            return Err(self.refused(format!(
                "its log was rolled back: its checkpoint has {new} records, but one of {old} records was accepted \
                 from it before"
            )));
        }
        if new == old {
            if checkpoint.root != state.root {
                return Err(self.refused(format!("its log forked: its checkpoint of size {new} has another root")));
            }
            return Ok(());
        }
        let Some(old_note) = &state.checkpoint else { return Ok(()) };
        let path = format!("/v1/consistency?old={old}&new={new}");
        let json = match self.get(&path).await? {
            (200, json) => json,
            (status, body) if (400..500).contains(&status) => {
                return Err(self.refused(format!(
                    "its log forked: it cannot prove that its checkpoint of size {new} extends the one of size \
                     {old} accepted before (HTTP {status}: {})",
                    body.trim()
                )));
            }
            (status, body) => return Err(self.unreachable(format!("GET {path}: HTTP {status}: {}", body.trim()))),
        };
        let bundle = ConsistencyBundle::from_json(&json)
            .map_err(|e| self.unreachable(format!("GET {path}: not a consistency proof: {e}")))?;
        bundle.check(&self.vkey, old_note, note).map_err(|e| {
            self.refused(format!(
                "its log forked: its checkpoint of size {new} does not extend the one of size {old}: {e}"
            ))
        })?;
        Ok(())
    }

    /// Applies the followed log's registry records (a peer's revocations)
    /// from index `from` below the checkpoint, each proven included in it.
    async fn apply_below(&self, from: u64, checkpoint: &Checkpoint) -> Result<usize, FollowError> {
        let mut cursor = from;
        let mut changed = 0;
        loop {
            let path = format!("/v1/records?kind=registry&order=asc&limit={PAGE}&cursor={cursor}");
            let page: Page = serde_json::from_str(&self.get_ok(&path).await?)
                .map_err(|e| self.unreachable(format!("GET {path}: {e}")))?;
            // A peer's other records are not applied: no proof is fetched for
            // them. Leaving a revocation out of the listing is in the peer's
            // power anyway (the listing is its word, see above).
            let wanted = |r: &&Listed| !self.source.is_peer() || r.action.as_deref() == Some("key_revoked");
            let listed = page.records.iter().filter(|r| r.index >= from && r.index < checkpoint.size).filter(wanted);
            for listed in listed {
                changed += self.apply_one(listed.index, checkpoint).await?;
            }
            match page.next {
                Some(next) if next < checkpoint.size && next > cursor => cursor = next,
                _ => return Ok(changed),
            }
        }
    }

    /// Proves and applies the followed log's record `index`. 1 if it
    /// changed this registry.
    async fn apply_one(&self, index: u64, checkpoint: &Checkpoint) -> Result<usize, FollowError> {
        let path = format!("/v1/proof/{index}?size={}", checkpoint.size);
        let json = self.get_ok(&path).await?;
        let bundle =
            ProofBundle::from_json(&json).map_err(|e| self.unreachable(format!("GET {path}: not a proof: {e}")))?;
        if bundle.index != index {
            return Err(self.refused(format!("asked for the proof of record {index}, it sent record {}", bundle.index)));
        }
        let proven = bundle.check(&self.vkey).map_err(|e| self.refused(format!("the proof of record {index}: {e}")))?;
        if proven.checkpoint != *checkpoint {
            return Err(self.refused(format!("the proof of record {index} is against another checkpoint")));
        }
        let Record::Registry(record) = proven.record else {
            return Err(self.refused(format!("record {index} is listed as a registry record but is not one")));
        };
        if self.source.is_peer() && !matches!(record.event, RegistryEvent::KeyRevoked { .. }) {
            return Err(self.refused(format!("record {index} is listed as a revocation but is not one")));
        }
        let applied = self.registry.apply_followed(&self.source, &self.vkey.to_string(), index, &record).await?;
        let (what, from, url) = (describe_event(&record.event), self.role(), self.url.as_str());
        match &applied {
            Applied::Changed(records) => {
                tracing::info!(from, url, index, device = %record.device_id, what, logged = records.len(), "applied a followed registry change");
            }
            Applied::Unchanged => {
                tracing::debug!(from, url, index, device = %record.device_id, what, "a followed registry change is here already");
            }
            Applied::AlreadyApplied => {}
            // A peer revokes keys this gateway may never have had (registered
            // elsewhere only): nothing to worry about.
            Applied::Skipped(why) if self.source.is_peer() => {
                tracing::info!(from, url, index, device = %record.device_id, what, why, "a followed registry change does not apply here");
            }
            Applied::Skipped(why) => {
                tracing::warn!(from, url, index, device = %record.device_id, what, why, "a followed registry change cannot be applied here");
            }
        }
        Ok(usize::from(matches!(applied, Applied::Changed(_))))
    }
}

fn describe_event(event: &RegistryEvent) -> String {
    match event {
        RegistryEvent::KeyAdded { public_key } => format!("key {} added", hex::encode(mqs1::kid(public_key))),
        RegistryEvent::KeyRevoked { kid } => format!("key {} revoked", hex::encode(kid)),
        RegistryEvent::PolicySet { signed_required: true } => "policy signed".into(),
        RegistryEvent::PolicySet { signed_required: false } => "policy legacy".into(),
    }
}

/// Follows the configured primary until shutdown; without `[registry]
/// follow`, marks the registry as its own (local changes allowed).
pub async fn run(registry: Registry, config: RegistryConfig, shutdown: watch::Receiver<bool>) {
    let (Some(url), Some(vkey_text)) = (config.follow, config.follow_vkey) else {
        if let Err(e) = registry.stop_following().await {
            tracing::warn!(error = %e, "cannot mark the registry as no longer following a primary");
        }
        return;
    };
    let vkey: VerifierKey = match vkey_text.trim().parse() {
        Ok(vkey) => vkey,
        Err(e) => {
            tracing::error!(error = %e, "registry.follow_vkey is not a verifier key; not following");
            return;
        }
    };
    // Stored and compared in its canonical text, whatever the file's spacing.
    let vkey_text = vkey.to_string();
    match registry.set_following(&vkey_text, true).await {
        Ok(state) => tracing::info!(
            primary = %url,
            vkey = %vkey_text,
            accepted_size = state.tree_size,
            scanned = state.scanned,
            "following the primary's device registry"
        ),
        Err(e) => {
            tracing::error!(primary = %url, error = %e, "REFUSED to follow the primary's device registry");
            return;
        }
    }
    let interval = Duration::from_millis(config.follow_interval_ms);
    let follower = Follower::new(&url, vkey, registry, interval.max(Duration::from_secs(5)));
    keep_following(follower, interval, shutdown).await;
}

/// Runs `follower` every `interval` until shutdown, logging what it
/// applied and (once a minute while it lasts) why it could not.
pub(super) async fn keep_following(follower: Follower, interval: Duration, mut shutdown: watch::Receiver<bool>) {
    let (role, url) = (follower.role(), follower.url().to_string());
    let mut tick = tokio::time::interval(interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last_error: Option<(String, Instant)> = None;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
        match follower.sync().await {
            Ok(changed) => {
                if last_error.take().is_some() {
                    tracing::info!(role, url = %url, "following the device registry again");
                }
                if changed > 0 {
                    tracing::info!(role, url = %url, changed, "registry changes from the followed log are applied");
                }
            }
            Err(e) => {
                let text = e.to_string();
                let repeat = last_error.as_ref().is_some_and(|(t, at)| *t == text && at.elapsed() < REPEAT_LOG);
                if !repeat {
                    // Unreachable is an outage; anything else is the gateway misbehaving.
                    if matches!(e, FollowError::Unreachable { .. }) {
                        tracing::warn!(error = %text, "cannot follow the {role}'s device registry");
                    } else {
                        tracing::error!(error = %text, "cannot follow the {role}'s device registry");
                    }
                    last_error = Some((text, Instant::now()));
                }
            }
        }
    }
}
