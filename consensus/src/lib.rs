//! The controller's core, written sans-IO.
//!
//! The controller is the one place where keel decides and remembers: cluster
//! topology, jobs, open findings, the active policy set and the mitigation
//! ledger. This crate holds the replicated state machine (`state`): every
//! replica applies the same committed proposals in the same order and so
//! holds the same state, with retried proposals applied once and every
//! ledger action recorded with its idempotency key and an audit trail. The
//! Raft node that orders the proposals drives `raft::RawNode` around it.

pub mod assign;
pub mod history;
mod inject;
pub mod memstore;
pub mod node;
pub mod retention;
pub mod routing;
pub mod state;
pub mod storage;

pub use state::{
    ActionStatus, AuditEvent, Command, LedgerEntry, Outcome, Proposal, Rejection, State,
};

/// raft-rs's message type, for runners that carry it.
pub use raft::prelude::Message as RaftMessage;
