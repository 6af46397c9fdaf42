//! What leaves the replicated state: closed findings, settled actions, old
//! audit events, old policy versions and forgotten ended jobs. Each replica
//! appends them, as it applies the entry that removed them, to an on-disk
//! history (JSON lines) that `keel findings --since` and `keel actions
//! --since` still read.

use crate::state::{AuditEvent, FindingEntry, LedgerEntry, PolicyVersion};
use keel_model::{JobRecord, Timestamp};
use serde::{Deserialize, Serialize};

/// One record of the history, tagged by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HistoryRecord {
    Finding(FindingEntry),
    Action(LedgerEntry),
    Audit(AuditEvent),
    Policy {
        name: String,
        version: PolicyVersion,
    },
    Job(JobRecord),
}

impl HistoryRecord {
    /// When the record last changed (seconds since the Unix epoch): a
    /// finding's close, an action's last transition, an audit event's time,
    /// a job record's time; 0 for a policy version (it carries no time).
    pub fn ts(&self) -> Timestamp {
        match self {
            HistoryRecord::Finding(f) => f.closed.unwrap_or(f.opened),
            HistoryRecord::Action(a) => a.since,
            HistoryRecord::Audit(e) => e.ts,
            HistoryRecord::Policy { .. } => 0.0,
            HistoryRecord::Job(j) => j.ts,
        }
    }

    /// The record's kind as written in its `kind` field.
    pub fn kind(&self) -> &'static str {
        match self {
            HistoryRecord::Finding(_) => "finding",
            HistoryRecord::Action(_) => "action",
            HistoryRecord::Audit(_) => "audit",
            HistoryRecord::Policy { .. } => "policy",
            HistoryRecord::Job(_) => "job",
        }
    }
}
