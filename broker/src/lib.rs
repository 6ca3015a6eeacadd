//! The sealmq gateway: terminates MQTT 3.1.1 and 5 clients, checks identity
//! and MQS1 signatures, appends every accepted PUBLISH to the audit log
//! ([`sealmq_audit::store::Log`]) and only then routes it: in process by
//! default ([`route::TopicIndex`]), or through an external MQTT 5 broker
//! shared by several gateways ([`route::external::External`]).
//!
//! - [`Broker`] ([`server`]): starts and stops everything;
//! - [`config::BrokerConfig`]: embedded defaults, TOML, flags;
//! - [`codec`]: MQTT 3.1.1 and 5 framing, translation to one v5 model, and
//!   the validation the decoders leave out;
//! - [`session`]: one client connection, the path of every PUBLISH;
//! - [`admission`]: the decision on a PUBLISH (policy, ACL, MQS1, replay);
//! - [`identity`], [`replay`]: the device registry view and replay windows;
//! - [`retained`]: retained messages, served by the gateway itself;
//! - [`expiry`]: Message Expiry Interval for held and retained messages;
//! - [`transport`]: TCP, TLS (client certificates) and WebSocket listeners;
//! - [`limits`]: publish rates and failed logins, per client and address;
//! - [`route`]: the router interface ([`route::Router`]), sessions' inboxes,
//!   the in-process topic index and the external router;
//! - [`system`]: checkpoints on `$SYS/sealmq/checkpoint`, wills;
//! - [`http`]: the HTTP API for auditors and monitors, C2SP tlog-tiles,
//!   served within connection and time limits of its own (`http_serve`);
//! - [`descriptors`]: the file descriptor limit, how many clients fit, and
//!   accepting when the process runs out;
//! - [`explorer`]: the log explorer page served at `/`.

pub mod admission;
pub mod checks;
pub mod codec;
pub mod config;
pub mod descriptors;
pub mod expiry;
pub mod explorer;
pub mod gateway;
pub mod http;
mod http_serve;
pub mod identity;
pub mod limits;
pub mod replay;
pub mod retained;
pub mod route;
pub mod server;
pub mod session;
pub mod system;
pub mod transport;

pub use config::BrokerConfig;
pub use server::{Broker, StartError};
