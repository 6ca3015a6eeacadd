//! The sealmq gateway: terminates MQTT 3.1.1 and 5 clients, checks identity
//! and MQS1 signatures, appends every accepted PUBLISH to the audit log
//! ([`sealmq_audit::store::Log`]) and only then routes it: in process by
//! default ([`route::TopicIndex`]), or through an external MQTT 5 broker
//! shared by several gateways ([`route::External`]).
//!
//! Modules, from the wire inwards (each uses only those above it, but for
//! [`server`], which assembles them all):
//!
//! - [`codec`]: MQTT 3.1.1 and 5 framing, translation to one v5 model, and
//!   the validation the decoders leave out;
//! - [`ops`]: running for years: payload retention rules and erasure
//!   requests (`[retention]`, `sealmq erase`), carried out by the sequencer;
//! - [`config`] ([`BrokerConfig`]): embedded defaults, TOML, flags;
//! - [`ops`]: running it for years: the broker's counters and `/metrics`
//!   (it imports nothing of the crate: everything may count);
//! - [`net`]: TCP, TLS and WebSocket listeners, the descriptor budget,
//!   rate limits;
//! - [`devices`]: the device registry view (identity, ACLs, keys) and MQS1
//!   replay windows;
//! - [`checks`]: the MQS1 signature-check pool, off the connections' tasks;
//! - [`witness`]: witnesses (C2SP tlog-witness): this log asking them to
//!   cosign ([`witness::Witnessing`]), the rollback check on start, and
//!   sealmq as a witness of other logs ([`witness::WitnessService`]);
//! - [`route`]: the router interface ([`route::Router`]), sessions'
//!   inboxes, the in-process topic index, the external router, retained
//!   messages and Message Expiry;
//! - [`gateway`]: what every connection shares ([`gateway::Shared`]);
//! - [`admission`]: the decision on one PUBLISH (policy, ACL, MQS1, replay)
//!   and the record and message it becomes;
//! - [`system`]: checkpoints on `$SYS/sealmq/checkpoint`, wills;
//! - [`session`]: one client connection, the path of every PUBLISH;
//! - [`http`]: the HTTP API for auditors and monitors, C2SP tlog-tiles,
//!   the explorer page, served within limits of its own;
//! - [`server`] ([`Broker`]): starts everything, accepts, stops.

pub mod admission;
pub mod checks;
pub mod codec;
pub mod config;
pub mod devices;
pub mod gateway;
pub mod http;
pub mod net;
pub mod ops;
pub mod route;
pub mod server;
pub mod session;
pub mod system;
pub mod witness;

pub use config::BrokerConfig;
pub use server::{Broker, StartError};
