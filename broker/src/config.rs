//! The broker's configuration: embedded defaults, overridden by a TOML file
//! (`broker/sealmq.example.toml` documents every key) and then by command-line flags.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How often a live stream with nothing to say sends a comment: it keeps
/// proxies from closing it, and the listener's idle timeout
/// (`limits.http_idle_timeout_ms`, at least twice this) from taking it for
/// a stalled client.
pub const LIVE_KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Everything `sealmq serve` needs. Every field has a default, so an empty
/// file (or none) is a working broker.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// MQTT listener (3.1.1 and 5 on the same port).
    pub listen: SocketAddr,
    /// MQTT over TLS (conventionally port 8883); needs [`BrokerConfig::tls`].
    pub tls_listen: Option<SocketAddr>,
    /// MQTT over WebSocket, `ws://` (any path, subprotocol `mqtt`).
    pub ws_listen: Option<SocketAddr>,
    /// MQTT over WebSocket over TLS, `wss://`; needs [`BrokerConfig::tls`].
    pub wss_listen: Option<SocketAddr>,
    /// Certificates for the TLS listeners.
    pub tls: Option<TlsConfig>,
    /// HTTP listener for auditors.
    pub http: SocketAddr,
    /// The data directory: log database, log key, registry.
    pub data: PathBuf,
    /// The log's origin, its name in checkpoints (default: chosen once, at creation).
    pub origin: Option<String>,
    /// Seal a block at this many pending records…
    pub block_max_records: u32,
    /// …or this many milliseconds after the first pending one.
    pub block_interval_ms: u64,
    /// What happens to client ids that are not in the device registry.
    pub unknown_devices: UnknownDevices,
    /// Limits that protect the broker from any one client.
    pub limits: Limits,
    /// Where accepted messages are routed.
    pub upstream: Upstream,
    /// The witnesses this log asks to cosign its checkpoints.
    pub witnessing: WitnessingConfig,
    /// The logs this broker witnesses.
    pub witness: WitnessConfig,
    /// Payload retention rules and size cap (`crate::ops::retention`).
    pub retention: crate::ops::retention::RetentionConfig,
    /// The mounted archive and the automatic archive policy.
    pub archive: crate::ops::archive::ArchiveConfig,
    /// Following a primary gateway's device registry (`devices::follow`).
    pub registry: RegistryConfig,
    /// Serve even when the witnesses show the database is an older or
    /// diverging copy of the log. A command-line flag only
    /// (`--accept-rollback`), never a file setting: overriding the check
    /// must be a deliberate act each time.
    #[serde(skip)]
    pub accept_rollback: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([0, 0, 0, 0], 1883)),
            tls_listen: None,
            ws_listen: None,
            wss_listen: None,
            tls: None,
            http: SocketAddr::from(([127, 0, 0, 1], 8080)),
            data: PathBuf::from("./sealmq-data"),
            origin: None,
            block_max_records: 4096,
            block_interval_ms: 250,
            unknown_devices: UnknownDevices::default(),
            limits: Limits::default(),
            upstream: Upstream::default(),
            witnessing: WitnessingConfig::default(),
            witness: WitnessConfig::default(),
            retention: Default::default(),
            archive: crate::ops::archive::ArchiveConfig::default(),
            registry: RegistryConfig::default(),
            accept_rollback: false,
        }
    }
}

/// The TLS listeners' certificates, and client certificates.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM file: the server's certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM file: its private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
    /// PEM file: the CA(s) whose client certificates are accepted. Without
    /// it, clients are not asked for certificates.
    pub client_ca: Option<PathBuf>,
    /// Refuse TLS clients that show no certificate (needs `client_ca`).
    #[serde(default)]
    pub require_client_cert: bool,
    /// Which name in a client certificate is the device id. A client with
    /// a certificate must use that id as its MQTT client id.
    #[serde(default)]
    pub cert_identity: CertIdentity,
}

/// See [`TlsConfig::cert_identity`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CertIdentity {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first DNS, URI or email subject alternative name.
    San,
}

/// The policy for client ids that are not registered devices.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct UnknownDevices {
    /// `legacy` (accept, log unsigned publishes as unsigned), `signed`
    /// (accept, but every publish must carry a valid MQS1 signature — which
    /// an unregistered device cannot have), or `reject` (refuse the CONNECT).
    pub policy: UnknownPolicy,
    /// Topics they may publish to (MQTT filters; `{device}` is the client id).
    pub allow_pub: Vec<String>,
    /// Filters they may subscribe to.
    pub allow_sub: Vec<String>,
}

impl Default for UnknownDevices {
    fn default() -> Self {
        Self {
            policy: UnknownPolicy::Legacy,
            allow_pub: vec!["#".into()],
            allow_sub: vec!["#".into(), "$SYS/#".into()],
        }
    }
}

/// See [`UnknownDevices::policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownPolicy {
    /// Accept and log unsigned publishes as unsigned (the out-of-the-box default).
    Legacy,
    /// Require signatures (so unregistered devices cannot publish).
    Signed,
    /// Refuse the connection (production).
    Reject,
}

/// Per-client and broker-wide limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest MQTT packet accepted or sent, in bytes.
    pub max_packet_size: u32,
    /// Largest CONNECT accepted, in bytes: until a client has logged in it
    /// may make the broker hold no more than this, whatever length it
    /// declares. A larger CONNECT is refused as soon as its fixed header is
    /// read (MQTT 5: CONNACK 0x95 Packet too large; 3.1.1: closed).
    pub max_connect_packet_size: u32,
    /// Most client connections at once.
    pub max_connections: usize,
    /// Time a new connection has to send its CONNECT, in milliseconds.
    pub connect_timeout_ms: u64,
    /// QoS 1 and 2 publishes unacknowledged at once, each way: from a client
    /// (the Receive Maximum the broker announces) and to it (capped further
    /// by the client's own Receive Maximum).
    pub max_inflight: u16,
    /// Topic aliases a v5 client may use.
    pub max_topic_aliases: u16,
    /// Longest topic name or filter, in bytes.
    pub max_topic_length: usize,
    /// Most levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Most subscriptions per client.
    pub max_subscriptions: usize,
    /// Longest a persistent session (3.1.1 clean session 0, MQTT 5 Session
    /// Expiry) is kept for a disconnected client, in seconds.
    pub max_session_expiry_secs: u32,
    /// Messages queued for one session beyond its in-flight window: for a
    /// client slower than its subscriptions, or a disconnected persistent
    /// session. Past it, new deliveries to that session are dropped, counted
    /// and warned about (the audit log still has them).
    pub max_queued_messages: usize,
    /// Publishes per second one client may send, with bursts of up to a
    /// second's worth; a faster client is slowed down (the gateway stops
    /// reading from it), never cut off. 0 (the default): no limit, as in
    /// other brokers; the production checklist recommends one.
    pub max_publish_rate: u32,
    /// Failed logins (bad password, unknown device when unknown devices are
    /// refused, certificate mismatch) one source address may have per
    /// minute, in bursts of as many; past that its CONNECTs are refused
    /// (MQTT 5: 0x9F connection rate exceeded; 3.1.1: 0x03 server
    /// unavailable) without checking the password. 0: no limit.
    pub max_failed_logins_per_minute: u32,
    /// Most HTTP connections at once (live block streams count too); past
    /// it a new connection is answered 503 and closed.
    pub http_max_connections: usize,
    /// Time an HTTP request's head (request line and headers) has to
    /// arrive, in milliseconds, counted from when the connection opened or
    /// its previous answer was sent: so it also closes idle keep-alive
    /// connections.
    pub http_header_timeout_ms: u64,
    /// An HTTP connection on which no byte moves either way for this many
    /// milliseconds is closed: a client that stopped reading an answer or a
    /// live stream. At least twice the live streams' keep-alive interval.
    pub http_idle_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_packet_size: 1024 * 1024 + 1024,
            max_connect_packet_size: 16 * 1024,
            max_connections: 10_000,
            connect_timeout_ms: 10_000,
            max_inflight: 64,
            max_topic_aliases: 64,
            max_topic_length: 1024,
            max_topic_levels: 32,
            max_subscriptions: 256,
            max_session_expiry_secs: 86_400,
            max_queued_messages: 1000,
            max_publish_rate: 0,
            max_failed_logins_per_minute: 10,
            http_max_connections: 128,
            http_header_timeout_ms: 5_000,
            http_idle_timeout_ms: 60_000,
        }
    }
}

/// The router behind the gateway.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Upstream {
    /// An external MQTT 5 broker (`host:port`) that routes between
    /// gateways: shorthand for `addresses` with one node. Default: none,
    /// routing in process.
    pub address: Option<SocketAddr>,
    /// The nodes of an external MQTT 5 cluster, tried in turn when a
    /// connection is made or lost (not together with `address`).
    pub addresses: Vec<SocketAddr>,
    /// Username for the external broker.
    pub username: Option<String>,
    /// Password for the external broker.
    pub password: Option<String>,
    /// Connections to the external broker, shared by all clients (default 2).
    pub connections: Option<usize>,
}

/// One device registry for several gateways: this gateway follows the
/// primary gateway's log, checking its checkpoints and proofs, and applies
/// its key and policy changes here (`crate::devices::follow`).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RegistryConfig {
    /// The primary gateway's HTTP API (`http://HOST:PORT`); default: none,
    /// this registry is its own.
    pub follow: Option<String>,
    /// The primary log's verifier key; required with `follow`.
    pub follow_vkey: Option<String>,
    /// How often the primary, and each peer, is asked for its checkpoint
    /// (default 1 s).
    pub follow_interval_ms: u64,
    /// Gateways whose key revocations this one applies (its own entry and
    /// its primary's, if listed, are skipped): revocations made on any of
    /// them are refused here too. `crate::devices::peers`.
    pub peers: Vec<RegistryPeer>,
}

/// A gateway of `[registry] peers`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryPeer {
    /// Its HTTP API (`http://HOST:PORT`).
    pub url: String,
    /// Its log's verifier key (`sealmq audit vkey` there).
    pub vkey: String,
}

impl RegistryConfig {
    /// `follow` and `follow_vkey` come together, an `http://` URL and a
    /// verifier key; the interval is at least 10 ms.
    fn check(&self) -> Result<(), String> {
        match (&self.follow, &self.follow_vkey) {
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err("registry.follow and registry.follow_vkey go together".into());
            }
            (Some(url), Some(vkey)) => {
                if !url.starts_with("http://") {
                    return Err(format!("registry.follow: {url:?} is not an http:// URL (the primary's HTTP API)"));
                }
                if let Err(e) = vkey.parse::<sealmq_audit::VerifierKey>() {
                    return Err(format!("registry.follow_vkey: {vkey:?}: {e}"));
                }
            }
        }
        if self.follow_interval_ms < 10 {
            return Err("registry.follow_interval_ms must be at least 10".into());
        }
        let mut origins = std::collections::BTreeSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            if !peer.url.starts_with("http://") {
                return Err(format!(
                    "registry.peers[{i}].url: {:?} is not an http:// URL (the peer's HTTP API)",
                    peer.url
                ));
            }
            let vkey = peer
                .vkey
                .parse::<sealmq_audit::VerifierKey>()
                .map_err(|e| format!("registry.peers[{i}].vkey: {:?}: {e}", peer.vkey))?;
            // A peer's position is kept by its origin: one entry per log.
            if !origins.insert(vkey.name().to_string()) {
                return Err(format!("registry.peers[{i}]: the log {} is listed twice", vkey.name()));
            }
        }
        Ok(())
    }
}

impl Default for RegistryConfig {
    fn default() -> Self {
        Self { follow: None, follow_vkey: None, follow_interval_ms: 1000, peers: Vec::new() }
    }
}

impl Upstream {
    /// The external broker's nodes, in the order they are tried; empty:
    /// routing in process.
    pub fn nodes(&self) -> Vec<SocketAddr> {
        self.address.into_iter().chain(self.addresses.iter().copied()).collect()
    }
}

/// The witnesses this log asks to cosign (C2SP tlog-witness).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WitnessingConfig {
    /// A C2SP tlog-policy file: every `witness` line with a URL (its
    /// submission prefix) is asked; the quorum decides which checkpoints
    /// are served as witnessed. Default: none, no witnesses.
    pub policy: Option<PathBuf>,
    /// Rounds of requests start at most this often (default 250 ms).
    pub min_interval_ms: u64,
    /// Each request's timeout (default 3 s).
    pub timeout_ms: u64,
}

impl Default for WitnessingConfig {
    fn default() -> Self {
        Self { policy: None, min_interval_ms: 250, timeout_ms: 3000 }
    }
}

/// This broker as a witness of other logs.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct WitnessConfig {
    /// The verifier keys of the logs to witness; empty: not a witness.
    pub logs: Vec<String>,
    /// The witness key's name, fixed when the key is made (default
    /// `sealmq-witness/<8 hex digits>`).
    pub name: Option<String>,
}

/// A configuration file could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for this configuration.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why, with line and column.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range.
    #[error("{0}")]
    Invalid(String),
}

impl BrokerConfig {
    /// Reads a TOML file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse { path: path.to_path_buf(), source },
            other => other,
        })
    }

    /// Parses TOML over the defaults and checks the values.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let config: Self = toml::from_str(text)
            .map_err(|source| ConfigError::Parse { path: PathBuf::new(), source: Box::new(source) })?;
        config.check()?;
        Ok(config)
    }

    /// Refuses values the broker cannot work with.
    pub fn check(&self) -> Result<(), ConfigError> {
        let invalid = |why: &str| Err(ConfigError::Invalid(why.to_string()));
        if self.block_max_records == 0 {
            return invalid("block_max_records must be at least 1");
        }
        if self.limits.max_packet_size < 64 {
            return invalid("limits.max_packet_size must be at least 64 bytes");
        }
        if self.limits.max_inflight == 0 {
            return invalid("limits.max_inflight must be at least 1");
        }
        if self.limits.http_max_connections == 0 {
            return invalid("limits.http_max_connections must be at least 1");
        }
        if self.limits.http_header_timeout_ms == 0 {
            return invalid("limits.http_header_timeout_ms must be at least 1");
        }
        // Live streams are idle between blocks but for their keep-alives.
        let idle_floor = 2 * LIVE_KEEP_ALIVE.as_millis();
        if u128::from(self.limits.http_idle_timeout_ms) < idle_floor {
            return Err(ConfigError::Invalid(format!(
                "limits.http_idle_timeout_ms must be at least {idle_floor} (twice the live streams' keep-alive)"
            )));
        }
        if self.witnessing.timeout_ms == 0 {
            return invalid("witnessing.timeout_ms must be at least 1");
        }
        for key in &self.witness.logs {
            if let Err(e) = key.parse::<sealmq_audit::VerifierKey>() {
                return Err(ConfigError::Invalid(format!("witness.logs: {key:?}: {e}")));
            }
        }
        self.registry.check().map_err(ConfigError::Invalid)?;
        self.retention.check().map_err(|e| ConfigError::Invalid(e.to_string()))?;
        self.archive.validate().map_err(ConfigError::Invalid)?;
        if self.upstream.address.is_some() && !self.upstream.addresses.is_empty() {
            return invalid("upstream.address is one node of upstream.addresses: set one of them");
        }
        if self.upstream.nodes().is_empty() && (self.upstream.username.is_some() || self.upstream.password.is_some()) {
            return invalid("upstream.username and upstream.password need upstream.address or addresses");
        }
        if (self.tls_listen.is_some() || self.wss_listen.is_some()) && self.tls.is_none() {
            return invalid("tls_listen and wss_listen need a [tls] section with cert and key");
        }
        if let Some(tls) = &self.tls
            && tls.require_client_cert
            && tls.client_ca.is_none()
        {
            return invalid("tls.require_client_cert needs tls.client_ca");
        }
        Ok(())
    }

    /// The block interval as a duration.
    pub fn block_interval(&self) -> Duration {
        Duration::from_millis(self.block_interval_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        let config = BrokerConfig::from_toml("").unwrap();
        assert_eq!(config.listen, SocketAddr::from(([0, 0, 0, 0], 1883)));
        assert_eq!(config.unknown_devices.policy, UnknownPolicy::Legacy);
        assert_eq!(config.block_max_records, 4096);
    }

    #[test]
    fn defaults_throttle_no_legitimate_client() {
        // A load tool or a hub republishing for hundreds of devices must not
        // be slowed by default; the limit is opt-in.
        let limits = Limits::default();
        assert_eq!(limits.max_publish_rate, 0);
        // Before login a connection holds a few KiB at most, yet a CONNECT
        // with credentials and a will of some KiB still fits.
        assert!((4096..=65536).contains(&limits.max_connect_packet_size));
    }

    #[test]
    fn the_example_config_parses() {
        let example = include_str!("../sealmq.example.toml");
        let config = BrokerConfig::from_toml(example).unwrap();
        assert_eq!(config.unknown_devices.policy, UnknownPolicy::Reject);
    }

    #[test]
    fn upstream_nodes_come_from_address_or_addresses_not_both() {
        let one = BrokerConfig::from_toml("[upstream]\naddress = \"10.0.0.5:1883\"").unwrap();
        assert_eq!(one.upstream.nodes(), vec![SocketAddr::from(([10, 0, 0, 5], 1883))]);
        let cluster =
            BrokerConfig::from_toml("[upstream]\naddresses = [\"10.0.0.5:1883\", \"10.0.0.6:1884\"]").unwrap();
        let expected = vec![SocketAddr::from(([10, 0, 0, 5], 1883)), SocketAddr::from(([10, 0, 0, 6], 1884))];
        assert_eq!(cluster.upstream.nodes(), expected, "in the order they are tried");
        assert!(BrokerConfig::from_toml("").unwrap().upstream.nodes().is_empty(), "in process by default");
        let both = "[upstream]\naddress = \"10.0.0.5:1883\"\naddresses = [\"10.0.0.6:1883\"]";
        let err = BrokerConfig::from_toml(both).unwrap_err().to_string();
        assert!(err.contains("upstream.address"), "{err}");
        let err = BrokerConfig::from_toml("[upstream]\nusername = \"u\"").unwrap_err().to_string();
        assert!(err.contains("upstream.username"), "{err}");
        // check-config prints the configuration as TOML: it reads back the same.
        let text = toml::to_string(&cluster).unwrap();
        assert_eq!(BrokerConfig::from_toml(&text).unwrap().upstream.nodes(), expected);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_refused_with_the_reason() {
        let err = BrokerConfig::from_toml("lisen = \"0.0.0.0:1\"").unwrap_err().to_string();
        assert!(err.contains("lisen"), "{err}");
        let err = BrokerConfig::from_toml("block_max_records = 0").unwrap_err().to_string();
        assert!(err.contains("block_max_records"), "{err}");
        let err = BrokerConfig::from_toml("[unknown_devices]\npolicy = \"maybe\"").unwrap_err().to_string();
        assert!(err.contains("maybe") || err.contains("variant"), "{err}");
        let err = BrokerConfig::from_toml("tls_listen = \"0.0.0.0:8883\"").unwrap_err().to_string();
        assert!(err.contains("[tls]"), "{err}");
        let err = BrokerConfig::from_toml("[tls]\ncert = \"c\"\nkey = \"k\"\nrequire_client_cert = true")
            .unwrap_err()
            .to_string();
        assert!(err.contains("client_ca"), "{err}");
        let err = BrokerConfig::from_toml("[limits]\nhttp_idle_timeout_ms = 1000").unwrap_err().to_string();
        assert!(err.contains("http_idle_timeout_ms"), "{err}");
        let err = BrokerConfig::from_toml("[registry]\nfollow = \"http://127.0.0.1:8080\"").unwrap_err().to_string();
        assert!(err.contains("follow_vkey"), "{err}");
        let err = BrokerConfig::from_toml("[registry]\nfollow = \"http://h:1\"\nfollow_vkey = \"nope\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("registry.follow_vkey"), "{err}");
        let err = BrokerConfig::from_toml("[limits]\nhttp_max_connections = 0").unwrap_err().to_string();
        assert!(err.contains("http_max_connections"), "{err}");
        let ok = BrokerConfig::from_toml("wss_listen = \"0.0.0.0:8084\"\n[tls]\ncert = \"c\"\nkey = \"k\"").unwrap();
        assert_eq!(ok.tls.unwrap().cert_identity, CertIdentity::Cn);
    }
}
