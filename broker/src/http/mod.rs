//! The HTTP listener for auditors and monitors: the JSON API under `/v1/`,
//! the C2SP tlog-tiles read layout (`/checkpoint`, `/tile/…`) and the log
//! explorer page ([`crate::http::explorer`]).
//!
//! Everything here only reads the log ([`LogReader`]) and the registry.
//! Bad requests are answered 400 or 404 with `{"error": "…"}`; a store that
//! cannot be read is 503. Every answer is bounded: pages, ranges and tiles
//! have fixed maxima.

pub mod explorer;
mod metrics;
mod records;
mod rules;
pub mod serve;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;

use axum::Router;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{Stream, StreamExt, stream};
use sealmq_audit::store::archive::{ArchiveDir, ArchiveError, archived_size};
use sealmq_audit::store::registry::Registry;
use sealmq_audit::store::{LogReader, SealedBlock, StoreError};
use sealmq_audit::tiles::{TILE_HEIGHT, TILE_WIDTH, push_entry};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::ops::metrics::{Metrics, RouterView};
use crate::witness::Witnessing;

/// Blocks per page: the default and the maximum.
const BLOCKS_PAGE: u32 = 20;
const BLOCKS_PAGE_MAX: u32 = 200;
/// Blocks one live update sends at most (a client that fell further behind
/// reloads the list).
const LIVE_BATCH: u32 = 64;
pub use crate::config::LIVE_KEEP_ALIVE;
/// Cache-Control of tiles: a tile's content never changes.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// What the handlers share.
#[derive(Clone)]
pub struct ApiState {
    reader: LogReader,
    registry: Registry,
    sealed: watch::Receiver<Option<SealedBlock>>,
    shutdown: watch::Receiver<bool>,
    witnessing: Option<Arc<Witnessing>>,
    /// The mounted archive: archived records are answered from it.
    archive: Option<ArchiveDir>,
    metrics: Option<Arc<Metrics>>,
    /// The external router's counters for `/metrics`, when there is one.
    router: Option<Arc<dyn Fn() -> RouterView + Send + Sync>>,
}

impl ApiState {
    /// The log to read, the registry (for `/v1/devices`), the stream of
    /// sealed blocks (for live updates) and the broker's shutdown signal,
    /// which ends live streams.
    pub fn new(
        reader: LogReader,
        registry: Registry,
        sealed: watch::Receiver<Option<SealedBlock>>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        Self { reader, registry, sealed, shutdown, witnessing: None, archive: None, metrics: None, router: None }
    }

    /// Answers archived records (`/tile/…`, `/v1/proof/N`, `/v1/records/N`)
    /// from the archive in `dir` (`[archive] dir`).
    pub fn with_archive(mut self, dir: ArchiveDir) -> Self {
        self.archive = Some(dir);
        self
    }

    /// The mounted archive, or 410 Gone naming where the record went.
    fn archive_or_gone(&self, index: u64, archived: u64) -> Result<&ArchiveDir, ApiError> {
        self.archive.as_ref().ok_or_else(|| gone(index, archived))
    }

    /// Serves checkpoints with their witnesses' cosignatures, and the
    /// witnessed checkpoint and witnesses' state.
    pub fn with_witnessing(mut self, witnessing: Arc<Witnessing>) -> Self {
        self.witnessing = Some(witnessing);
        self
    }

    /// Serves the broker's counters on `/metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Adds the external router's counters to `/metrics`.
    pub fn with_router(mut self, counts: Arc<dyn Fn() -> RouterView + Send + Sync>) -> Self {
        self.router = Some(counts);
        self
    }

    /// `note` of tree size `size` with the cosignatures stored for it.
    async fn cosigned(&self, note: String, size: u64) -> Result<String, ApiError> {
        match &self.witnessing {
            Some(witnessing) => Ok(witnessing.with_cosignatures(&note, size).await?),
            None => Ok(note),
        }
    }
}

type Shared = State<Arc<ApiState>>;
type Params = Result<Query<HashMap<String, String>>, QueryRejection>;
type Segment = Result<Path<String>, PathRejection>;

/// The routes served on the broker's HTTP listener.
pub fn router(state: ApiState) -> Router {
    Router::new()
        .route("/v1/checkpoint", get(checkpoint))
        .route("/checkpoint", get(checkpoint))
        .route("/v1/checkpoint/witnessed", get(witnessed_checkpoint))
        .route("/v1/witnesses", get(witnesses))
        .route("/v1/vkey", get(vkey))
        .route("/v1/proof/{index}", get(proof))
        .route("/v1/consistency", get(consistency))
        .route("/v1/records", get(records::records))
        .route("/v1/records/{index}", get(records::record))
        .route("/v1/rules", get(rules::rules))
        .route("/v1/rules/{name}", get(rules::rule))
        .route("/v1/blocks", get(blocks))
        .route("/v1/blocks/live", get(live_blocks))
        .route("/v1/blocks/{height}", get(block))
        .route("/v1/devices", get(devices))
        .route("/v1/devices/{id}", get(device))
        .route("/tile/{*path}", get(tile))
        .route("/metrics", get(metrics::metrics))
        .merge(crate::http::explorer::routes())
        .fallback(|| async { ApiError::not_found("no such endpoint; see the README's HTTP API section") })
        .with_state(Arc::new(state))
}

/// An error answer: status and a JSON `{"error": …}` body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        Self { status: StatusCode::BAD_REQUEST, message: message.into() }
    }

    fn not_found(message: impl Into<String>) -> Self {
        Self { status: StatusCode::NOT_FOUND, message: message.into() }
    }

    /// The store failed: logged in full, answered without internals.
    fn unavailable(error: &dyn std::fmt::Display) -> Self {
        tracing::error!(%error, "an HTTP request could not read the log");
        Self { status: StatusCode::SERVICE_UNAVAILABLE, message: "the log cannot be read right now".into() }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound(message) => Self::not_found(message),
            StoreError::Archived { index, archived } => gone(index, archived),
            StoreError::Query(message) => Self::bad_request(message),
            StoreError::Proof(sealmq_audit::ProofError::IndexOutOfRange { index, size }) => Self::not_found(format!(
                "record {index} is not in the tree of size {size} (records are provable once a block seals them)"
            )),
            StoreError::Proof(e @ sealmq_audit::ProofError::SizesOutOfOrder { .. }) => Self::not_found(e.to_string()),
            other => Self::unavailable(&other),
        }
    }
}

/// 410 Gone: the record was archived and no archive is mounted here.
fn gone(index: u64, archived: u64) -> ApiError {
    ApiError {
        status: StatusCode::GONE,
        message: format!(
            "record {index} is archived: this log keeps records from {archived} on; the archive written by \
             `sealmq archive` (a C2SP tlog-tiles directory) holds it, and is served here when [archive] dir is set"
        ),
    }
}

impl From<ArchiveError> for ApiError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::Store(e) => e.into(),
            other => Self::unavailable(&other),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, axum::Json(json!({ "error": self.message }))).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

fn ok_json(value: Value) -> ApiResult {
    Ok(([(header::CACHE_CONTROL, "no-cache")], axum::Json(value)).into_response())
}

fn text(body: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8"), (header::CACHE_CONTROL, "no-cache")], body).into_response()
}

/// The query string as a map; a malformed one is a 400 in JSON.
fn params(params: Params) -> Result<HashMap<String, String>, ApiError> {
    params.map(|Query(map)| map).map_err(|e| ApiError::bad_request(format!("malformed query string: {e}")))
}

fn segment(segment: Segment) -> Result<String, ApiError> {
    segment.map(|Path(s)| s).map_err(|e| ApiError::bad_request(format!("malformed path: {e}")))
}

/// A log position: decimal digits, below 2^63 (SQLite's integers).
fn position(what: &str, text: &str) -> Result<u64, ApiError> {
    let bad = || ApiError::bad_request(format!("{what} must be a whole number from 0 to {}, not {text:?}", i64::MAX));
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    text.parse::<u64>().ok().filter(|n| i64::try_from(*n).is_ok()).ok_or_else(bad)
}

fn optional_position(params: &HashMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    params.get(name).map(|text| position(name, text)).transpose()
}

fn page_limit(params: &HashMap<String, String>, default: u32, max: u32) -> Result<u32, ApiError> {
    match optional_position(params, "limit")? {
        None => Ok(default),
        Some(0) => Err(ApiError::bad_request("limit must be at least 1")),
        Some(n) if n > u64::from(max) => Err(ApiError::bad_request(format!("limit must be at most {max}"))),
        Some(n) => Ok(u32::try_from(n).unwrap_or(max)),
    }
}

/// The latest signed checkpoint (a C2SP signed note), with the
/// cosignatures its witnesses returned so far.
async fn checkpoint(State(api): Shared) -> ApiResult {
    match api.reader.latest_block().await? {
        Some(block) => Ok(text(api.cosigned(block.checkpoint, block.header.tree_size).await?)),
        None => Err(ApiError::not_found("no block has been sealed yet")),
    }
}

/// The latest checkpoint whose cosignatures meet the witness policy's quorum.
async fn witnessed_checkpoint(State(api): Shared) -> ApiResult {
    let witnessing = api.witnessing.as_ref().ok_or_else(no_policy)?;
    let (_, note) =
        witnessing.witnessed().ok_or_else(|| ApiError::not_found("no checkpoint has met the witness quorum yet"))?;
    Ok(text(note))
}

/// Each witness's state, and who cosigned the recent checkpoints.
async fn witnesses(State(api): Shared) -> ApiResult {
    let witnessing = api.witnessing.as_ref().ok_or_else(no_policy)?;
    ok_json(witnessing.status().await?)
}

fn no_policy() -> ApiError {
    ApiError::not_found("no witnesses are configured (witnessing.policy)")
}

/// The log's verifier key.
async fn vkey(State(api): Shared) -> Response {
    text(format!("{}\n", api.reader.verifier_key()))
}

/// `sealmq-proof/v1` for one record, against the latest checkpoint, `?size=`
/// or (`?witnessed=true`) the latest witnessed one; the checkpoint carries
/// the cosignatures stored for it.
async fn proof(State(api): Shared, index: Segment, query: Params) -> ApiResult {
    let index = position("index", &segment(index)?)?;
    let params = params(query)?;
    let mut size = optional_position(&params, "size")?;
    match params.get("witnessed").map(String::as_str) {
        None | Some("false") => {}
        Some("true") => {
            let witnessing = api.witnessing.as_ref().ok_or_else(no_policy)?;
            let (witnessed, _) = witnessing
                .witnessed()
                .ok_or_else(|| ApiError::not_found("no checkpoint has met the witness quorum yet"))?;
            if size.is_some_and(|s| s != witnessed) {
                return Err(ApiError::bad_request("size and witnessed=true name different checkpoints"));
            }
            size = Some(witnessed);
        }
        Some(other) => return Err(ApiError::bad_request(format!("witnessed must be true or false, not {other:?}"))),
    }
    let mut bundle = match api.reader.prove(index, size).await {
        Err(StoreError::Archived { index, archived }) => {
            api.reader.prove_archived(index, size, api.archive_or_gone(index, archived)?).await?
        }
        other => other?,
    };
    bundle.checkpoint = api.cosigned(bundle.checkpoint, bundle.tree_size).await?;
    Ok(([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")], bundle.to_json())
        .into_response())
}

/// `sealmq-consistency/v1` between two checkpoints.
async fn consistency(State(api): Shared, query: Params) -> ApiResult {
    let params = params(query)?;
    let old = optional_position(&params, "old")?.ok_or_else(|| ApiError::bad_request("old is required"))?;
    let new = optional_position(&params, "new")?;
    if let Some(new) = new
        && old > new
    {
        return Err(ApiError::bad_request(format!("old ({old}) must not be larger than new ({new})")));
    }
    let mut bundle = api.reader.consistency(old, new).await?;
    if let Some(note) = bundle.old_checkpoint.take() {
        bundle.old_checkpoint = Some(api.cosigned(note, bundle.old_size).await?);
    }
    if let Some(note) = bundle.new_checkpoint.take() {
        bundle.new_checkpoint = Some(api.cosigned(note, bundle.new_size).await?);
    }
    Ok(([(header::CONTENT_TYPE, "application/json"), (header::CACHE_CONTROL, "no-cache")], bundle.to_json())
        .into_response())
}

fn block_view(block: &SealedBlock) -> Value {
    let h = &block.header;
    json!({
        "height": h.height,
        "hash": hex::encode(block.hash),
        "prev_block_hash": hex::encode(h.prev_block_hash),
        "first_index": h.first_index,
        "leaf_count": h.leaf_count,
        "block_root": hex::encode(h.block_root),
        "tree_size": h.tree_size,
        "tree_root": hex::encode(h.tree_root),
        "sealed_ms": h.sealed_ms,
        "header": B64.encode(h.encode()),
        "checkpoint": block.checkpoint,
    })
}

/// One block by height.
async fn block(State(api): Shared, height: Segment) -> ApiResult {
    let height = position("height", &segment(height)?)?;
    let block = api.reader.block(height).await?.ok_or_else(|| ApiError::not_found(format!("no block {height}")))?;
    ok_json(block_view(&block))
}

/// A page of blocks by height: from `from`, or the latest ones.
async fn blocks(State(api): Shared, query: Params) -> ApiResult {
    let params = params(query)?;
    let limit = page_limit(&params, BLOCKS_PAGE, BLOCKS_PAGE_MAX)?;
    let latest = api.reader.latest_block().await?.map(|b| b.header.height);
    let from = match optional_position(&params, "from")? {
        Some(from) => from,
        None => latest.map_or(0, |h| (h + 1).saturating_sub(u64::from(limit))),
    };
    let page = api.reader.blocks(from, limit).await?;
    let next = page.last().map(|b| b.header.height + 1).filter(|next| latest.is_some_and(|l| *next <= l));
    ok_json(json!({
        "blocks": page.iter().map(block_view).collect::<Vec<_>>(),
        "latest_height": latest,
        "next": next,
    }))
}

/// Server-Sent Events: each block as it is sealed.
async fn live_blocks(State(api): Shared) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let mut sealed = api.sealed.clone();
    let last = sealed.borrow_and_update().as_ref().map(|b| b.header.height);
    let state = (api, sealed, last);
    let updates = stream::unfold(state, |(api, mut sealed, last)| async move {
        let mut shutdown = api.shutdown.clone();
        tokio::select! {
            changed = sealed.changed() => changed.ok()?,
            _ = shutdown.wait_for(|stop| *stop) => return None,
        }
        let latest = sealed.borrow_and_update().as_ref().map(|b| b.header.height)?;
        // The watch keeps only the newest block: read any skipped ones.
        let from = last.map_or(0, |h| h + 1).max((latest + 1).saturating_sub(u64::from(LIVE_BATCH)));
        let events = match api.reader.blocks(from, LIVE_BATCH).await {
            Ok(blocks) => {
                blocks.iter().map(|b| Ok(Event::default().event("block").data(block_view(b).to_string()))).collect()
            }
            Err(e) => {
                tracing::warn!(error = %e, "live blocks: cannot read the new blocks");
                Vec::new()
            }
        };
        Some((stream::iter(events), (api, sealed, Some(latest))))
    })
    .flatten();
    Sse::new(updates).keep_alive(KeepAlive::new().interval(LIVE_KEEP_ALIVE))
}

/// Every device with its keys (public information: no passwords, no ACLs).
async fn devices(State(api): Shared) -> ApiResult {
    let devices = api.registry.list().await.map_err(|e| ApiError::unavailable(&e))?;
    ok_json(json!({ "devices": devices.iter().map(device_view).collect::<Vec<_>>() }))
}

/// One device.
async fn device(State(api): Shared, id: Segment) -> ApiResult {
    let id = segment(id)?;
    let devices = api.registry.list().await.map_err(|e| ApiError::unavailable(&e))?;
    let device = devices.iter().find(|d| d.id == id).ok_or_else(|| ApiError::not_found(format!("no device {id:?}")))?;
    ok_json(device_view(device))
}

fn device_view(device: &sealmq_audit::store::Device) -> Value {
    json!({
        "id": device.id,
        "policy": device.policy.as_str(),
        "created_ms": device.created_ms,
        "updated_ms": device.updated_ms,
        "keys": device.keys.iter().map(|k| json!({
            "kid": hex::encode(k.kid),
            "public_key": hex::encode(k.public_key),
            "added_ms": k.added_ms,
            "revoked_ms": k.revoked_ms,
            "active": k.is_active(),
        })).collect::<Vec<_>>(),
    })
}

/// Which tile a `/tile/…` path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct TileRef {
    /// `None`: the entry bundle.
    level: Option<u32>,
    index: u64,
    width: u64,
}

/// Parses `<L>/<N>[.p/<W>]` or `entries/<N>[.p/<W>]` (C2SP tlog-tiles):
/// N in 3-digit path elements, all but the last prefixed with `x`; only
/// the canonical spelling of each tile is accepted.
fn parse_tile(path: &str) -> Option<TileRef> {
    let (level, rest) = path.split_once('/')?;
    let level = match level {
        "entries" => None,
        digits => Some(u32::try_from(canonical_decimal(digits)?).ok().filter(|l| *l < 64)?),
    };
    let (index_part, width) = match rest.split_once(".p/") {
        Some((index, width)) => (index, Some(canonical_decimal(width)?).filter(|w| (1..TILE_WIDTH).contains(w))?),
        None => (rest, TILE_WIDTH),
    };
    let elements: Vec<&str> = index_part.split('/').collect();
    let (last, leading) = elements.split_last()?;
    let mut index: u64 = 0;
    for (n, element) in leading.iter().map(|e| e.strip_prefix('x')).chain([Some(*last)]).enumerate() {
        let element = element?;
        if element.len() != 3 || !element.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        // A leading element of 000 would make two spellings of one tile.
        if n == 0 && !leading.is_empty() && element == "000" {
            return None;
        }
        index = index.checked_mul(1000)?.checked_add(element.parse::<u64>().ok()?)?;
    }
    Some(TileRef { level, index, width })
}

/// A decimal number without leading zeros (so each has one spelling).
fn canonical_decimal(text: &str) -> Option<u64> {
    let valid = !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) && (text == "0" || !text.starts_with('0'));
    valid.then(|| text.parse().ok()).flatten()
}

/// A tile or entry bundle, from the latest checkpoint's tree.
async fn tile(State(api): Shared, path: Segment) -> ApiResult {
    let path = segment(path)?;
    let tile = parse_tile(&path).ok_or_else(|| {
        ApiError::bad_request(format!(
            "{path:?} is not a tile path (<L>/<N>[.p/<W>] or entries/<N>[.p/<W>], C2SP tlog-tiles)"
        ))
    })?;
    let size = api.reader.latest_block().await?.map_or(0, |b| b.header.tree_size);
    let beyond = || ApiError::not_found(format!("tile {path} is beyond the tree of the latest checkpoint ({size})"));
    // Complete nodes at the tile's level in the tree of `size`.
    let available = match tile.level {
        Some(level) => size.checked_shr(level * u32::from(TILE_HEIGHT)).unwrap_or(0),
        None => size,
    };
    let start = tile.index.checked_mul(TILE_WIDTH).ok_or_else(beyond)?;
    let end = start.checked_add(tile.width).filter(|end| *end <= available).ok_or_else(beyond)?;
    let archived = archived_size(api.reader.pool()).await?;
    let body = match tile.level {
        Some(0) if start < archived => {
            let dir = api.archive_or_gone(start, archived)?;
            let mut hashes = dir.leaf_hashes(start, end.min(archived), archived)?;
            if end > archived {
                hashes.extend(api.reader.hashes_at(0, archived, end).await?);
            }
            hashes.concat()
        }
        Some(level) => {
            let level = u8::try_from(level * u32::from(TILE_HEIGHT)).map_err(|_| beyond())?;
            api.reader.hashes_at(level, start, end).await?.concat()
        }
        None => {
            let mut bodies = Vec::new();
            if start < archived {
                let dir = api.archive_or_gone(start, archived)?;
                bodies = dir.entries(start, end.min(archived), archived)?;
            }
            if end > archived {
                bodies.extend(api.reader.record_bodies(start.max(archived), end).await?);
            }
            let mut bundle = Vec::new();
            for (index, record) in (start..).zip(bodies) {
                push_entry(&mut bundle, index, &record).map_err(|e| ApiError::unavailable(&e.to_string()))?;
            }
            bundle
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream")),
            (header::CACHE_CONTROL, HeaderValue::from_static(IMMUTABLE)),
        ],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tile(level: Option<u32>, index: u64, width: u64) -> Option<TileRef> {
        Some(TileRef { level, index, width })
    }

    #[test]
    fn tile_paths_parse_in_their_one_canonical_spelling() {
        assert_eq!(parse_tile("0/000"), tile(Some(0), 0, 256));
        assert_eq!(parse_tile("1/067.p/12"), tile(Some(1), 67, 12));
        assert_eq!(parse_tile("entries/x001/x234/067"), tile(None, 1_234_067, 256));
        assert_eq!(parse_tile("2/x001/000.p/255"), tile(Some(2), 1000, 255));
        for bad in [
            "",
            "0",
            "0/",
            "0/0",
            "0/1234",
            "0/x000/001",
            "0/001.p/0",
            "0/001.p/256",
            "0/001.p/01",
            "00/001",
            "64/000",
            "x/000",
            "0/001/002",
            "0/x1/002",
            "entries/abc",
            "0/-01",
            "0/001.p/",
            "0/x999/x999/x999/x999/x999/x999/x999/999",
        ] {
            assert_eq!(parse_tile(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn positions_are_plain_decimal_below_2_63() {
        assert_eq!(position("i", "0").unwrap(), 0);
        assert_eq!(position("i", "9223372036854775807").unwrap(), i64::MAX as u64);
        for bad in ["", "-1", "+1", "1e3", " 1", "9223372036854775808", "18446744073709551616", "0x10"] {
            assert!(position("i", bad).is_err(), "{bad:?}");
        }
    }
}
