//! The sealmq gateway: terminates MQTT 3.1.1 and 5 clients, checks identity
//! and MQS1 signatures, appends every accepted PUBLISH to the audit log
//! ([`sealmq_audit::store::Log`]) and only then forwards it to the embedded
//! rumqttd.
//!
//! Not built yet: this crate is a placeholder so the workspace has its final
//! shape. See `ARCHITECTURE.md`.
