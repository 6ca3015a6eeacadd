//! The broker's HTTP API over plain HTTP; nothing it returns is trusted.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde::Deserialize;

/// A client of the broker's HTTP API (`notes/api.md`), blocking, plain HTTP.
///
/// It only fetches: what it returns is checked by the caller.
#[derive(Clone)]
pub struct Api {
    agent: ureq::Agent,
    base: String,
}

/// A device as `GET /v1/devices` lists it.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceInfo {
    /// The device id (its MQTT client id).
    pub id: String,
    /// `signed` or `legacy`.
    #[serde(default)]
    pub policy: String,
    /// Its MQS1 keys, revoked ones included.
    #[serde(default)]
    pub keys: Vec<DeviceKeyInfo>,
}

/// One key of a device in `GET /v1/devices`.
#[derive(Debug, Clone, Deserialize)]
pub struct DeviceKeyInfo {
    /// The raw Ed25519 public key, hex.
    pub public_key: String,
    /// Whether the key may still sign.
    #[serde(default)]
    pub active: bool,
}

#[derive(Deserialize)]
struct DeviceList {
    devices: Vec<DeviceInfo>,
}

/// A record as `GET /v1/records?…` lists it (only the fields used here).
#[derive(Debug, Clone, Deserialize)]
pub struct RecordSummary {
    /// Its log index.
    pub index: u64,
    /// `publish` or `registry`.
    pub kind: String,
    /// The device it concerns.
    #[serde(default)]
    pub device_id: String,
    /// Registry records: `key_added`, `key_revoked` or `policy_set`.
    #[serde(default)]
    pub action: Option<String>,
    /// Registry `key_added` records: the key, hex.
    #[serde(default)]
    pub public_key: Option<String>,
}

#[derive(Deserialize)]
struct RecordList {
    records: Vec<RecordSummary>,
    next: Option<u64>,
}

impl Api {
    /// A client for `addr`: `host:port` or `http://host:port`. HTTPS is not
    /// compiled in (the examples keep their dependencies small); put a TLS
    /// proxy in front, or build ureq with its `rustls` feature.
    pub fn new(addr: &str) -> Result<Self> {
        let addr = addr.trim().trim_end_matches('/');
        if addr.starts_with("https://") {
            bail!("--http {addr}: this example speaks plain HTTP only");
        }
        let base = if addr.starts_with("http://") { addr.to_string() } else { format!("http://{addr}") };
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            // 404 is an answer here (not sealed yet, no such record), not an error.
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self { agent, base })
    }

    /// The base URL, for messages.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`: the body on 200, `None` on 404, an error (with the
    /// server's `{"error": …}` message) otherwise.
    pub fn get(&self, path: &str) -> Result<Option<String>> {
        let url = format!("{}{path}", self.base);
        let mut response = self.agent.get(&url).call().with_context(|| format!("GET {url}"))?;
        let status = response.status().as_u16();
        let body = response.body_mut().read_to_string().with_context(|| format!("reading the answer to GET {url}"))?;
        match status {
            200 => Ok(Some(body)),
            404 => Ok(None),
            _ => {
                let message = serde_json::from_str::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
                    .unwrap_or_else(|| body.trim().chars().take(200).collect());
                bail!("GET {url}: HTTP {status}: {message}")
            }
        }
    }

    /// The latest signed checkpoint note, `None` before the first block is sealed.
    pub fn checkpoint(&self) -> Result<Option<String>> {
        self.get("/v1/checkpoint")
    }

    /// What the server says its verifier key is. For diagnostics only: a
    /// server cannot vouch for its own key.
    pub fn vkey(&self) -> Result<Option<String>> {
        Ok(self.get("/v1/vkey")?.map(|k| k.trim().to_string()))
    }

    /// The inclusion proof bundle of record `index`, against the checkpoint
    /// of tree size `size` (or the latest). `None` when there is none (yet):
    /// a record is proven once its block is sealed.
    pub fn proof(&self, index: u64, size: Option<u64>) -> Result<Option<String>> {
        match size {
            Some(size) => self.get(&format!("/v1/proof/{index}?size={size}")),
            None => self.get(&format!("/v1/proof/{index}")),
        }
    }

    /// The proof bundle of record `index` against the latest checkpoint
    /// cosigned by the broker's witness quorum; `None` when there is none
    /// yet (not sealed, or not witnessed yet).
    pub fn witnessed_proof(&self, index: u64) -> Result<Option<String>> {
        self.get(&format!("/v1/proof/{index}?witnessed=true"))
    }

    /// The latest checkpoint cosigned by the broker's witness quorum;
    /// `None` before there is one, or when the broker has no witnesses.
    pub fn witnessed_checkpoint(&self) -> Result<Option<String>> {
        self.get("/v1/checkpoint/witnessed")
    }

    /// The consistency proof between the checkpoints of sizes `old` and `new`.
    pub fn consistency(&self, old: u64, new: u64) -> Result<Option<String>> {
        self.get(&format!("/v1/consistency?old={old}&new={new}"))
    }

    /// The registered devices and their keys.
    pub fn devices(&self) -> Result<Vec<DeviceInfo>> {
        let body = self.get("/v1/devices")?.context("GET /v1/devices: 404")?;
        let list: DeviceList = serde_json::from_str(&body).context("GET /v1/devices: unexpected JSON")?;
        Ok(list.devices)
    }

    /// The sealed registry (kind 2) records of `device`, oldest first.
    pub fn registry_records(&self, device: &str) -> Result<Vec<RecordSummary>> {
        let mut out = Vec::new();
        let mut cursor = None;
        loop {
            let mut path = format!("/v1/records?kind=registry&order=asc&limit=500&device={}", url_encode(device));
            if let Some(cursor) = cursor {
                path.push_str(&format!("&cursor={cursor}"));
            }
            let body = self.get(&path)?.with_context(|| format!("GET {path}: 404"))?;
            let page: RecordList =
                serde_json::from_str(&body).with_context(|| format!("GET {path}: unexpected JSON"))?;
            out.extend(page.records);
            match page.next {
                Some(next) => cursor = Some(next),
                None => return Ok(out),
            }
        }
    }

    /// Polls `fetch` until it returns something or `timeout` passes: for
    /// proofs of records whose block is not sealed yet (blocks seal every
    /// 250 ms by default).
    pub fn wait_for<T>(&self, timeout: Duration, mut fetch: impl FnMut() -> Result<Option<T>>) -> Result<Option<T>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(found) = fetch()? {
                return Ok(Some(found));
            }
            if Instant::now() >= deadline {
                return Ok(None);
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Percent-encodes a query value (device ids may hold any UTF-8).
pub(crate) fn url_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => out.push(char::from(byte)),
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
