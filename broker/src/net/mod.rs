//! The network edge: listeners and transports ([`transport`]: TCP, TLS,
//! WebSocket), the file descriptor budget and accepting past it
//! ([`descriptors`]), and the rate limits that protect the broker from any
//! one client or address ([`limits`]).

pub mod descriptors;
pub mod limits;
pub mod transport;
