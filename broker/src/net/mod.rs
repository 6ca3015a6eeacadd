//! The network edge: listeners and transports ([`transport`]: TCP, TLS,
//! WebSocket), the file descriptor budget and accepting past it
//! ([`descriptors`]), and the rate limits that protect the broker from any
//! one client or address ([`limits`]); the broker's outgoing HTTP
//! ([`http_client`]).

pub mod descriptors;
pub mod http_client;
pub mod limits;
pub mod transport;
