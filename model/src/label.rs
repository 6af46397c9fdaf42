//! Labels: what really happened in a trace, for scoring only. Detectors never
//! read them.

use crate::{Cause, FindingKind, Locus, Name, Timestamp};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Label {
    pub kind: FindingKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<Cause>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peer: Option<Name>,
    pub onset: Timestamp,
    pub end: Timestamp,
}

impl Label {
    /// `None` when the label lacks a field its kind's locus needs.
    pub fn locus(&self) -> Option<Locus> {
        Locus::for_kind(
            self.kind,
            self.job.as_ref(),
            self.node.as_ref(),
            self.rank,
            self.gpu,
            self.peer.as_ref(),
        )
    }
}
