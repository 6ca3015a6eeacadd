//! sealmq's rules (`spec/rules.md`): automation whose every action is in the
//! log, tied to its trigger and rule, and re-checkable by replay.
//!
//! - [`RuleDocument`]: a rule as installed (TOML), parsed strictly, its CEL
//!   expressions ([`Expression`]) compiled once within documented limits;
//!   [`CEL_VERSION`] names the CEL implementation an auditor replays against.
//! - [`evaluate`], [`Scope`], [`Outcome`]: what a rule does for one trigger
//!   ([`Trigger`]) given the retained state before it ([`RetainedTexts`]).
//! - [`Rules`]: the engine, a fold over the log's records: the active rules
//!   in install order, indexed by filter, and the retained texts; it answers
//!   a trigger with its actions and undoes an aborted group. With feature
//!   `store` it is the sequencer's [`sealmq_audit::store::Follower`], and
//!   `store` adds [`store::load`] (the engine at the log's head),
//!   [`store::RuleOutbox`] (`sealmq rule add/remove`), and [`replay`].

pub mod document;
pub mod engine;
pub mod eval;
pub mod expr;
#[cfg(feature = "store")]
pub mod replay;
#[cfg(feature = "store")]
pub mod store;
pub mod synthetic;
pub mod topic;

pub use document::{RuleDocument, RuleError};
pub use engine::{ActiveRule, PlannedAction, Rules, TriggerResult, Unknown};
pub use eval::{Action, MAX_ACTION_PAYLOAD, Outcome, Retained, RetainedTexts, Scope, Trigger, evaluate};
pub use expr::{CEL_VERSION, CelError, Expression};
pub use topic::{Filter, Template};
