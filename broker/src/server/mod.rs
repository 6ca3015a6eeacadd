//! Starting and stopping the whole broker: log, registry, rules, router,
//! system link, MQTT and HTTP listeners.

mod accept;

use std::net::SocketAddr;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use sealmq_audit::store::registry::{Registry, RegistryError, RegistrySnapshot};
use sealmq_audit::store::{Cosignatures, ErasureOutbox, WitnessStore};
use sealmq_audit::store::{Log, LogConfig, StoreError};
use sealmq_audit::{CosignerKey, Policy, VerifierKey};
use tokio::net::TcpListener;
use tokio::sync::{Semaphore, broadcast, watch};
use tokio::task::JoinHandle;

use self::accept::{accept_loop, listen};
use crate::checks::CheckPool;
use crate::config::BrokerConfig;
use crate::devices::identity::Identities;
use crate::devices::replay::{ReplayWindows, Window};
use crate::gateway::Shared;
use crate::net::descriptors::{Budget, TooFewDescriptors, raise_limit};
use crate::net::limits::LoginLimiter;
use crate::net::transport::{Listener, TlsSetup, TransportError};
use crate::ops::metrics::Metrics;
use crate::ops::metrics::RouterView;
use crate::ops::retention::Retention;
use crate::route::external::retained::MirrorConfig;
use crate::route::external::{Credentials, External, ExternalConfig, LogSource};
use crate::route::retained::RetainedStore;
use crate::route::{RouteError, Router, TopicIndex};
use crate::witness::{RollbackError, WitnessService, Witnessing};

/// How often the registry is checked for changes made by `sealmq device`
/// and `sealmq rule`.
const REGISTRY_POLL: Duration = Duration::from_millis(250);
/// Connections past the connection limit answered with a refusal at
/// once; beyond these they are closed unanswered.
const REFUSALS_AT_ONCE: usize = 64;
/// Connections to an external router when the configuration names none.
const EXTERNAL_CONNECTIONS: usize = 2;
/// In the data directory: the lowest index the external router had not
/// had acknowledged upstream (README, "Clusters: routing and failover").
const ROUTE_WATERMARK: &str = "route-watermark";
/// Argon2 password checks at once (each is tens of ms of one core).
const PASSWORD_CHECKS_AT_ONCE: usize = 4;

/// Errors starting the broker.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The log could not be opened.
    #[error("audit log: {0}")]
    Store(#[from] StoreError),
    /// The device registry could not be read.
    #[error("device registry: {0}")]
    Registry(#[from] RegistryError),
    /// The rules could not be read from the log.
    #[error("rules: {0}")]
    Rules(#[from] sealmq_rules::store::RuleStoreError),
    /// The router could not be started or reached.
    #[error(transparent)]
    Route(#[from] RouteError),
    /// The TLS certificates or key could not be used.
    #[error(transparent)]
    Tls(#[from] TransportError),
    /// The file descriptor limit is too low to serve anyone.
    #[error(transparent)]
    Descriptors(#[from] TooFewDescriptors),
    /// The signature-check threads could not be started.
    #[error("cannot start the signature-check threads: {0}")]
    Checks(std::io::Error),
    /// The witness policy file could not be read or parsed.
    #[error("witness policy {0}")]
    Policy(String),
    /// The witnesses show this database is behind or diverges from what they cosigned.
    #[error(transparent)]
    Rollback(#[from] RollbackError),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
}

/// A running broker.
pub struct Broker {
    shared: Arc<Shared>,
    stop: watch::Sender<bool>,
    listeners: Vec<(Listener, SocketAddr)>,
    http: SocketAddr,
    witness_key: Option<CosignerKey>,
    tasks: Vec<JoinHandle<()>>,
    accepts: Vec<JoinHandle<()>>,
}

impl Broker {
    /// Opens the log, starts the router and listens. Returns once clients can connect.
    pub async fn start(config: BrokerConfig) -> Result<Self, StartError> {
        let (archive_config, data_dir) = (config.archive.clone(), config.data.clone());
        let mut log_config = LogConfig::new(&config.data);
        log_config.origin = config.origin.clone();
        log_config.block_max_records = config.block_max_records;
        log_config.block_interval = config.block_interval();
        // Opening the log also logs registry changes made while no broker ran.
        let log = Arc::new(Log::open(log_config).await?);
        let registry = Registry::open(&config.data).await?;
        let snapshot = logged_snapshot(&log, &registry).await?;
        let identities = Identities::new(&snapshot, config.unknown_devices.clone());
        let registry_version = snapshot.version;
        let windows = registry.replay_windows().await?;
        let replay = ReplayWindows::from_persisted(
            windows.into_iter().map(|(kid, highest, seen)| (kid, Window { highest, seen })),
        );

        // Before anyone is served: a database its witnesses contradict (an
        // older or diverging copy) must not accept publishes.
        let witnessing = match &config.witnessing.policy {
            Some(path) => Some(Arc::new(start_witnessing(&config, path, &log).await?)),
            None => None,
        };
        let witness_service = match config.witness.logs.is_empty() {
            true => None,
            false => {
                let store = WitnessStore::open(&config.data, config.witness.name.as_deref()).await?;
                let keys = config.witness.logs.iter().filter_map(|k| k.parse().ok()).collect();
                Some(Arc::new(WitnessService::new(store, keys)))
            }
        };
        let witness_key = witness_service.as_ref().map(|w| w.store().key().verifier());

        // Before the router starts: it and every client share the process's descriptors.
        let client_listeners = [config.tls_listen, config.ws_listen, config.wss_listen].iter().flatten().count() + 1;
        let refusals = REFUSALS_AT_ONCE + crate::http::serve::REFUSALS_AT_ONCE;
        let budget = Budget::plan(raise_limit(), &config.limits, client_listeners, refusals)?;
        budget.report(config.limits.max_connections);

        // Behind an external broker, retained messages are the cluster's:
        // this log's go up, the others' come down (`route/external/retained.rs`).
        let mut retained_mirror = None;
        let nodes = config.upstream.nodes();
        let router = match nodes.is_empty() {
            false => {
                // Named after this gateway's log, so every gateway in front of
                // the broker has its own connections (and keeps them across
                // restarts), and none knocks another off.
                let origin = log.reader().verifier_key().name().to_string();
                let gateway_id = hex::encode(&sealmq_audit::sha256(origin.as_bytes())[..8]);
                let upstream = &config.upstream;
                let external = External::connect(ExternalConfig {
                    addresses: nodes.iter().map(ToString::to_string).collect(),
                    credentials: Credentials {
                        username: upstream.username.clone().unwrap_or_default(),
                        password: upstream.password.clone().unwrap_or_default(),
                    },
                    gateway_id: gateway_id.clone(),
                    origin,
                    connections: upstream.connections.unwrap_or(EXTERNAL_CONNECTIONS),
                    // What overflows the connections' queues is read back from here.
                    log: Some(LogSource { reader: log.reader().clone(), stats: Arc::clone(log.stats()) }),
                    // What a killed gateway had not routed, routed when it is back.
                    watermark: Some(config.data.join(ROUTE_WATERMARK)),
                })
                .await?;
                retained_mirror = Some(MirrorConfig {
                    addresses: nodes.iter().map(ToString::to_string).collect(),
                    credentials: Credentials {
                        username: upstream.username.clone().unwrap_or_default(),
                        password: upstream.password.clone().unwrap_or_default(),
                    },
                    gateway_id: gateway_id.clone(),
                });
                tracing::info!(?nodes, gateway_id, "routing through an external broker");
                Router::External(external)
            }
            true => {
                // Routing in process: a watermark left by an earlier run
                // through a cluster would be stale when one is configured again.
                let _ = std::fs::remove_file(config.data.join(ROUTE_WATERMARK));
                Router::Embedded(TopicIndex::default())
            }
        };
        // What the records imply, whatever the stored table says (it is repaired if wrong).
        let cluster_origin = retained_mirror.as_ref().map(|_| Arc::from(log.reader().verifier_key().name()));
        let retained = RetainedStore::load(&log.reconcile_retained().await?, log.reader(), cluster_origin).await?;
        let retained = Arc::new(retained);
        // The rules run as the log's follower from its head: every record
        // from here on is evaluated as it is logged, its actions logged
        // right after it and routed once durable (`system::route_actions`).
        // Nothing else appends until the listeners and the registry watch
        // start, so the engine's state is the log's when it is set. (After
        // the retained table is reconciled: the engine reads it.)
        let actions = log.take_derived();
        let rules = sealmq_rules::store::load(log.reader()).await?;
        log.set_follower(Box::new(rules)).await?;

        let tls = config.tls.as_ref().map(TlsSetup::load).transpose()?;
        let mut client_listeners = Vec::new();
        for (kind, addr) in [
            (Listener::Mqtt, Some(config.listen)),
            (Listener::Mqtts, config.tls_listen),
            (Listener::Ws, config.ws_listen),
            (Listener::Wss, config.wss_listen),
        ] {
            let Some(addr) = addr else { continue };
            let listener = listen(addr).map_err(|source| StartError::Bind { addr, source })?;
            let bound = listener.local_addr().map_err(|source| StartError::Bind { addr, source })?;
            client_listeners.push((kind, bound, listener));
        }
        let http_listener =
            TcpListener::bind(config.http).await.map_err(|source| StartError::Bind { addr: config.http, source })?;
        let http = http_listener.local_addr().map_err(|source| StartError::Bind { addr: config.http, source })?;
        let listeners = client_listeners.iter().map(|(kind, addr, _)| (*kind, *addr)).collect();

        let (stop, shutdown) = watch::channel(false);
        let (revoked, _) = broadcast::channel(16);
        let limits = config.limits.clone();
        let sessions = Arc::new(crate::session::Sessions::default());
        let stats = Arc::new(Metrics::new(Arc::clone(log.stats())));
        let shared = Arc::new(Shared {
            config,
            log: Arc::clone(&log),
            identities: RwLock::new(Arc::new(identities)),
            registry_generation: AtomicU64::new(0),
            registry_gate: tokio::sync::RwLock::new(()),
            replay,
            checks: CheckPool::per_core().map_err(StartError::Checks)?,
            retained: Arc::clone(&retained),
            router,
            stats: Arc::clone(&stats),
            revoked,
            shutdown,
            tls,
            logins: LoginLimiter::new(limits.max_failed_logins_per_minute),
            connection_slots: Arc::new(Semaphore::new(limits.max_connections)),
            descriptor_slots: Arc::new(Semaphore::new(budget.clients)),
            refusal_slots: Arc::new(Semaphore::new(REFUSALS_AT_ONCE)),
            password_checks: Semaphore::new(PASSWORD_CHECKS_AT_ONCE),
        });
        let mut tasks = Vec::new();
        tasks.push(tokio::spawn(crate::system::run(Arc::clone(&shared), log.sealed_blocks(), witnessing.clone())));
        if let Some(actions) = actions {
            tasks.push(tokio::spawn(crate::system::route_actions(Arc::clone(&shared), actions)));
        }
        let mut api = crate::http::ApiState::new(
            log.reader().clone(),
            registry.clone(),
            log.sealed_blocks(),
            shared.shutdown.clone(),
        )
        .with_metrics(stats);
        if let Router::External(_) = &shared.router {
            let gateway = Arc::clone(&shared);
            api = api.with_router(Arc::new(move || match &gateway.router {
                Router::External(external) => external.stats().view(),
                Router::Embedded(_) => RouterView::default(),
            }));
        }
        if let Some(witnessing) = witnessing {
            tasks.push(tokio::spawn(crate::witness::cosigning::run(Arc::clone(&witnessing), log.sealed_blocks())));
            api = api.with_witnessing(witnessing);
        }
        // A follower applies the primary's changes to the registry; the
        // watch below logs them and swaps them in like local ones.
        tasks.push(tokio::spawn(crate::devices::follow::run(
            registry.clone(),
            shared.config.registry.clone(),
            shared.shutdown.clone(),
        )));
        // Every gateway applies its peers' revocations, logged and swapped
        // in by the same watch.
        tasks.push(tokio::spawn(crate::devices::peers::run(
            registry.clone(),
            shared.config.registry.clone(),
            log.reader().verifier_key().clone(),
            shared.shutdown.clone(),
        )));
        tasks.push(tokio::spawn(watch_registry(Arc::clone(&shared), registry, registry_version)));
        // Erase requests (`sealmq erase`) and the retention rules, through the sequencer.
        let erasures = ErasureOutbox::open(&shared.config.data).await?;
        let retention = Retention::new(Arc::clone(&log), erasures, shared.config.retention.clone())
            .counting(Arc::clone(&shared.stats));
        tasks.push(tokio::spawn(retention.run(shared.shutdown.clone())));
        if let Some(dir) = archive_config.mounted() {
            api = api.with_archive(dir);
        }
        tasks.push(tokio::spawn(crate::ops::archive::run_policy(
            data_dir,
            log.reader().clone(),
            archive_config,
            Arc::clone(&shared.stats),
            shared.shutdown.clone(),
        )));
        let mut app = crate::http::router(api);
        if let Some(service) = witness_service {
            app = app.merge(crate::witness::serve::routes(service));
        }
        let http_stop = shared.shutdown.clone();
        tasks
            .push(tokio::spawn(async move { crate::http::serve::serve(http_listener, app, &limits, http_stop).await }));
        if let Some(mirror) = retained_mirror {
            // Before the first client: the cluster's retained messages are in.
            tasks.push(crate::route::external::retained::start(mirror, retained).await);
        }
        let accepts = client_listeners
            .into_iter()
            .map(|(kind, _, listener)| {
                tokio::spawn(accept_loop(Arc::clone(&shared), Arc::clone(&sessions), listener, kind))
            })
            .collect();
        Ok(Self { shared, stop, listeners, http, witness_key, tasks, accepts })
    }

    /// The plain MQTT listener's address.
    pub fn mqtt_addr(&self) -> SocketAddr {
        self.listeners[0].1
    }

    /// Every client listener (plain MQTT first) and its address.
    pub fn listeners(&self) -> &[(Listener, SocketAddr)] {
        &self.listeners
    }

    /// The HTTP listener's address.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// The log's verifier key.
    pub fn verifier_key(&self) -> &VerifierKey {
        self.shared.log.reader().verifier_key()
    }

    /// This broker's witness key, when it witnesses other logs.
    pub fn witness_key(&self) -> Option<&CosignerKey> {
        self.witness_key.as_ref()
    }

    /// Counters (what `/metrics` serves).
    pub fn stats(&self) -> &Metrics {
        &self.shared.stats
    }

    /// Stops accepting, lets connections finish their in-flight appends,
    /// seals a final block and closes the log.
    pub async fn shutdown(self) -> Result<(), StoreError> {
        let Self { shared, stop, tasks, accepts, .. } = self;
        let _ = stop.send(true);
        for accept in accepts {
            let _ = accept.await;
        }
        for task in tasks {
            task.abort();
            let _ = task.await;
        }
        let log = Arc::clone(&shared.log);
        drop(shared);
        match Arc::try_unwrap(log) {
            Ok(log) => log.close().await,
            Err(log) => {
                // Someone still holds the log (a will being logged): seal what is pending.
                log.seal_now().await.map(|_| ())
            }
        }
    }
}

/// Reads the witness policy, and asks the witnesses whether this database
/// is the log they cosigned (see [`crate::witness::startup`]).
async fn start_witnessing(config: &BrokerConfig, path: &std::path::Path, log: &Log) -> Result<Witnessing, StartError> {
    let text = std::fs::read_to_string(path).map_err(|e| StartError::Policy(format!("{}: {e}", path.display())))?;
    let policy: Policy = text.parse().map_err(|e| StartError::Policy(format!("{}: {e}", path.display())))?;
    let own = log.reader().verifier_key();
    if !policy.logs().iter().any(|l| &l.key == own) {
        tracing::warn!(vkey = %own, "the witness policy does not list this log; verifiers using it will refuse its checkpoints");
    }
    let asked = policy.witnesses().iter().filter(|w| w.url.is_some()).count();
    if asked == 0 {
        tracing::warn!("the witness policy gives no witness a URL: none will be asked to cosign");
    }
    let store = Cosignatures::open(&config.data).await?;
    let witnessing = Witnessing::new(policy, store, log.reader().clone(), &config.witnessing).await?;
    crate::witness::startup::check(&witnessing, config.accept_rollback).await?;
    tracing::info!(witnesses = asked, "asking witnesses to cosign each checkpoint");
    Ok(witnessing)
}

/// Polls the registry; on a change, logs the change records (through the
/// sequencer), swaps in the new view and disconnects users of revoked keys.
/// `sealmq rule` bumps the same version: its rule changes are logged by the
/// same drain, and the rules (the log's follower) take them in as they are
/// logged.
async fn watch_registry(shared: Arc<Shared>, registry: Registry, mut seen: u64) {
    let mut tick = tokio::time::interval(REGISTRY_POLL);
    loop {
        tick.tick().await;
        let version = match registry.version().await {
            Ok(version) => version,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the registry version");
                continue;
            }
        };
        if version == seen {
            continue;
        }
        // No publish is admitted while the change is logged and swapped in:
        // everything decided under the old registry is queued in the log
        // before the change records, everything after under the new one.
        let gate = shared.registry_gate.write().await;
        let logged = match shared.log.drain_registry_outbox().await {
            Ok(_) => logged_snapshot(&shared.log, &registry).await,
            Err(e) => Err(e.into()),
        };
        match logged {
            Ok(snapshot) => {
                let next = Identities::new(&snapshot, shared.config.unknown_devices.clone());
                let before = shared.identities();
                let revoked = next.newly_revoked(&before);
                shared.replace_identities(next);
                drop(gate);
                if !revoked.is_empty() {
                    let _ = shared.revoked.send(Arc::new(revoked));
                }
                seen = snapshot.version;
                tracing::info!(version = seen, "device registry reloaded");
            }
            Err(e) => tracing::error!(
                error = %e,
                "cannot log or read registry or rule changes; they take effect once logged"
            ),
        }
    }
}

/// A registry snapshot all of whose changes are in the log: a key is in the
/// log before anything it signs is accepted. Changes made meanwhile by
/// `sealmq device` are drained and the snapshot taken again.
async fn logged_snapshot(log: &Log, registry: &Registry) -> Result<RegistrySnapshot, StartError> {
    loop {
        let snapshot = registry.snapshot().await?;
        if snapshot.unlogged == 0 {
            return Ok(snapshot);
        }
        log.drain_registry_outbox().await?;
    }
}
