//! Witnesses (C2SP tlog-witness, tlog-cosignature, tlog-policy): no single
//! party can rewrite or fork the log unseen.
//!
//! Both sides live here:
//! - the log asks its witnesses to cosign ([`cosigning::Witnessing`], in
//!   rounds after seals; [`exchange`], one request and its 409s;
//!   [`client`], HTTP), and checks them on start ([`startup::check`]:
//!   a rolled-back or forked database refuses to serve);
//! - sealmq is a witness for other logs ([`serve::WitnessService`]).

pub mod client;
pub mod cosigning;
pub mod exchange;
pub mod serve;
pub mod startup;

pub use cosigning::Witnessing;
pub use serve::WitnessService;
pub use startup::RollbackError;
