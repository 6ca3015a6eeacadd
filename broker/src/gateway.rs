//! The gateway's shared state: what every connection shares ([`Shared`])
//! and what an admitted connection holds (`Slot`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use sealmq_audit::mqs1::Kid;
use sealmq_audit::store::Log;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, watch};

use crate::checks::CheckPool;
use crate::config::BrokerConfig;
use crate::devices::identity::Identities;
use crate::devices::replay::ReplayWindows;
use crate::net::limits::LoginLimiter;
use crate::net::transport::TlsSetup;
use crate::ops::metrics::Metrics;
use crate::route::Router;
use crate::route::retained::RetainedStore;

/// What every connection shares.
pub struct Shared {
    /// The configuration.
    pub config: BrokerConfig,
    /// The audit log (its sequencer is the only writer).
    pub log: Arc<Log>,
    /// The device registry view; replaced whole when the registry changes.
    pub identities: RwLock<Arc<Identities>>,
    /// Bumped each time `identities` is replaced: sessions compare it with
    /// the one their device was looked up under, before each decision.
    pub registry_generation: AtomicU64,
    /// Held shared from a decision under the registry (a publish admitted,
    /// a will) until its record is queued in the log; held exclusively
    /// while registry changes are logged and swapped in. So a record
    /// decided under the old registry is always ordered before the change
    /// records, and one decided under the new after them.
    pub registry_gate: tokio::sync::RwLock<()>,
    /// MQS1 replay windows.
    pub replay: ReplayWindows,
    /// Where clients' MQS1 signatures are checked, off the connections'
    /// tasks (see [`crate::checks`]).
    pub checks: CheckPool,
    /// The latest retained message per topic, served by the gateway (and,
    /// behind an external broker, mirrored with the cluster's).
    pub retained: Arc<RetainedStore>,
    /// The router.
    pub router: Router,
    /// What an operator watches (`/metrics`).
    pub stats: Arc<Metrics>,
    /// Keys revoked while the broker runs: connections that used one close.
    pub revoked: broadcast::Sender<Arc<Vec<Kid>>>,
    /// True once the broker is shutting down.
    pub shutdown: watch::Receiver<bool>,
    /// Certificates for the TLS listeners, when configured.
    pub tls: Option<TlsSetup>,
    /// Failed logins per source address.
    pub logins: LoginLimiter,
    /// One permit per client connection, across all listeners
    /// (`limits.max_connections`).
    pub connection_slots: Arc<Semaphore>,
    /// One permit per client's share of the file descriptors
    /// ([`crate::net::descriptors::Budget`]): held by each connection, and kept
    /// by its session when parked, since a parked session keeps its link to
    /// the router open.
    pub descriptor_slots: Arc<Semaphore>,
    /// Connections past the limit that are being told so (bounded: past it
    /// they are simply closed).
    pub refusal_slots: Arc<Semaphore>,
    /// Argon2 checks running at once: each takes tens of milliseconds of
    /// CPU by design, so a flood of logins must queue, not starve the rest.
    pub password_checks: Semaphore,
}

impl Shared {
    /// The current registry view.
    pub fn identities(&self) -> Arc<Identities> {
        Arc::clone(&self.identities.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// The registry view's generation (see [`Shared::registry_generation`]).
    pub fn registry_generation(&self) -> u64 {
        self.registry_generation.load(Ordering::Acquire)
    }

    /// Swaps in a new registry view (call with `registry_gate` held exclusively).
    pub(crate) fn replace_identities(&self, next: Identities) {
        *self.identities.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(next);
        self.registry_generation.fetch_add(1, Ordering::AcqRel);
    }
}

/// What an admitted connection holds until it ends.
pub(crate) struct Slot {
    _connection: OwnedSemaphorePermit,
    _descriptors: OwnedSemaphorePermit,
}

impl Slot {
    /// A place under the connection limit and room in the descriptor
    /// budget, if there are both.
    pub(crate) fn take(shared: &Shared) -> Option<Self> {
        let descriptors = Arc::clone(&shared.descriptor_slots).try_acquire_owned().ok()?;
        let connection = Arc::clone(&shared.connection_slots).try_acquire_owned().ok()?;
        Some(Self { _connection: connection, _descriptors: descriptors })
    }
}
