//! Mitigations (`spec/taxonomy.md` "Mitigations"): what keel may do about a finding.

use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Move a share of requests away from a replica (router runtime API).
    RemapRequests,
    /// Change NIC rings, channels or coalescing on one interface (node agent).
    RetuneNic,
    /// Take load off a slow rank, or requeue without the bad node.
    RebalanceRanks,
    /// End a job or process that holds GPUs and does no work.
    ReclaimZombie,
    /// Stop new work landing on a node.
    DrainNode,
    /// Let a drained node back once healthy.
    ResumeNode,
    /// Tell a person; change nothing.
    Notify,
    /// Chaos testing only: a bounded, self-reverting fault (`host`,
    /// `network`, `pcie`, `gpu`) in one node open to chaos, asked for by an
    /// operator (`keel chaos inject`), never planned by a rule.
    InjectFault,
}

impl Action {
    pub const ALL: &'static [Action] = &[
        Action::RemapRequests,
        Action::RetuneNic,
        Action::RebalanceRanks,
        Action::ReclaimZombie,
        Action::DrainNode,
        Action::ResumeNode,
        Action::Notify,
        Action::InjectFault,
    ];

    pub fn wire(self) -> &'static str {
        match self {
            Action::RemapRequests => "remap_requests",
            Action::RetuneNic => "retune_nic",
            Action::RebalanceRanks => "rebalance_ranks",
            Action::ReclaimZombie => "reclaim_zombie",
            Action::DrainNode => "drain_node",
            Action::ResumeNode => "resume_node",
            Action::Notify => "notify",
            Action::InjectFault => "inject_fault",
        }
    }
}

/// The longest fault injection the ledger accepts, seconds.
pub const INJECT_MAX_S: f64 = 600.0;

/// The faults `inject_fault` knows (its `cause` parameter).
pub const INJECT_CAUSES: &[&str] = &["host", "network", "pcie", "gpu"];

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire())
    }
}

/// The life of a mitigation in the ledger.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ActionStatus {
    Planned,
    /// An operator approved an action whose rule asked for approval.
    Approved,
    /// A dry run: what would have been done is recorded, nothing is sent.
    Recorded,
    Dispatched,
    Acknowledged,
    Verified,
    Failed,
    RolledBack,
    /// A person refused a planned action before it was sent.
    Rejected,
    /// A person withdrew a planned or approved action before it was sent.
    Cancelled,
}

impl ActionStatus {
    /// The transitions the ledger allows (an acknowledged fault injection
    /// is rolled back straight from `Acknowledged` when its time is up).
    /// Re-dispatching a dispatched action
    /// (a new leader re-sending it under the same key) is allowed; going
    /// back is not.
    pub fn may_become(self, next: ActionStatus) -> bool {
        use ActionStatus::*;
        matches!(
            (self, next),
            (Planned, Dispatched)
                | (Planned, Approved)
                | (Planned, Recorded)
                | (Planned, Failed)
                | (Approved, Dispatched)
                | (Approved, Failed)
                | (Dispatched, Dispatched)
                | (Dispatched, Acknowledged)
                | (Dispatched, Failed)
                | (Acknowledged, Verified)
                | (Acknowledged, Failed)
                | (Acknowledged, RolledBack)
                | (Verified, RolledBack)
                | (Failed, RolledBack)
                | (Planned, Rejected)
                | (Planned, Cancelled)
                | (Approved, Cancelled)
        )
    }

    /// Still acting on its target (or about to): counts against a rule's
    /// blast radius. A dry run's record never does.
    pub fn in_flight(self) -> bool {
        matches!(
            self,
            ActionStatus::Planned
                | ActionStatus::Approved
                | ActionStatus::Dispatched
                | ActionStatus::Acknowledged
        )
    }

    pub fn is_final(self) -> bool {
        matches!(
            self,
            ActionStatus::RolledBack
                | ActionStatus::Recorded
                | ActionStatus::Rejected
                | ActionStatus::Cancelled
        )
    }

    pub fn wire(self) -> &'static str {
        match self {
            ActionStatus::Planned => "planned",
            ActionStatus::Approved => "approved",
            ActionStatus::Recorded => "recorded",
            ActionStatus::Dispatched => "dispatched",
            ActionStatus::Acknowledged => "acknowledged",
            ActionStatus::Verified => "verified",
            ActionStatus::Failed => "failed",
            ActionStatus::RolledBack => "rolled_back",
            ActionStatus::Rejected => "rejected",
            ActionStatus::Cancelled => "cancelled",
        }
    }
}
