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
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire())
    }
}
