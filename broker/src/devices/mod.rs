//! What the broker knows of devices: the in-memory view of the device
//! registry, admission at CONNECT and ACLs ([`identity`]), and MQS1 replay
//! windows ([`replay`]); following a primary gateway's registry
//! ([`follow`]) and the peers' revocations ([`peers`]).

pub mod follow;
pub mod identity;
pub mod peers;
pub mod replay;
