//! keel's policy language: which findings lead to which actions, under
//! which guards.
//!
//! A policy document is TOML with one `[[rule]]` table per rule (see
//! `deploy/policies/default.toml` for a commented one). [`check`] validates a
//! document and reports every problem with its file, line and column;
//! [`PolicySet::explain`] says which rules a finding matches and why the
//! others do not; [`Planner`] turns a finding into guarded [`Decision`]s.
//!
//! Sans-IO: nothing here opens a socket or reads a clock. The caller passes
//! the time, the cluster's size and the ledger's recent actions in a
//! [`Context`], so that every replica, replay and test decides alike.

mod check;
pub mod dispatch;
mod error;
mod explain;
mod links;
mod params;
mod plan;
mod rule;
mod selectors;
mod steward;
mod tree;
mod when;

pub use check::{check, check_file};
pub use error::{Level, PolicyError};
pub use explain::{RuleVerdict, Selector, Verdict};
pub use plan::{
    idempotency_key, target_for, ActionStatus, Context, Decision, Guard, PastAction, Plan, Planner,
};
pub use rule::{
    BlastRadius, Match, Mode, OnFailure, Pattern, PolicyBrakes, PolicySet, RateLimit, Rule,
};
pub use steward::{
    injection_s, steward, Brakes, Breaker, Entry, OpenFinding, Step, World, DEFAULT_VERIFY_S,
};
pub use when::{When, FINDING_FIELDS, VARIABLES};
