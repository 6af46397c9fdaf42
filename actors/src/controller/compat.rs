//! TODO(merge): stand-ins for the consensus crate's retention API
//! (`State::digest`, `State::take_expired`, `consensus::history::HistoryRecord`,
//! `consensus::retention::Retention`) until it lands; each is replaced by
//! the real one when the branch takes it, and this file goes.

use keel_consensus::state::{AuditEvent, Command, FindingEntry, LedgerEntry, State};
use keel_model::Timestamp;
use serde::{Deserialize, Serialize};

/// One thing retention moved out of the replicated state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum HistoryRecord {
    Finding(FindingEntry),
    Action(LedgerEntry),
    Audit(AuditEvent),
}

impl HistoryRecord {
    pub fn ts(&self) -> Timestamp {
        match self {
            HistoryRecord::Finding(f) => f.closed.unwrap_or(f.opened),
            HistoryRecord::Action(a) => a.since,
            HistoryRecord::Audit(a) => a.ts,
        }
    }
}

/// FNV-1a-64 over the state's snapshot, as 16 lowercase hex digits.
pub fn digest(state: &State) -> String {
    let h = state
        .snapshot()
        .iter()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
        });
    format!("{h:016x}")
}

/// What retention removed since the last call (nothing, until it lands).
pub fn take_expired(_state: &mut State) -> Vec<HistoryRecord> {
    Vec::new()
}

/// How long closed things stay in the replicated state.
#[derive(Debug, Clone)]
pub struct Retention {
    pub keep_s: f64,
    pub every_s: f64,
    pub session_idle_entries: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep_s: 7.0 * 86_400.0,
            every_s: 60.0,
            session_idle_entries: 1_000_000,
        }
    }
}

impl Retention {
    /// The command the leader should propose now, if any (none, until it lands).
    pub fn due(&self, _state: &State, _now: Timestamp, _last: Timestamp) -> Option<Command> {
        None
    }
}
