//! Retention: what is old leaves the replicated state at a committed index,
//! so every replica drops the same records, and moves to each replica's
//! on-disk history ([`crate::history`]).
//!
//! Sans-IO: the leader asks [`Retention::due`] with its clock and proposes
//! the `Command::Expire` it returns; applying it is [`State::expire`].

use crate::history::HistoryRecord;
use crate::state::{Command, State};
use keel_model::Timestamp;
use serde::Deserialize;

/// How long settled records stay in the replicated state.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Retention {
    /// Closed findings, actions no longer in flight and audit events older
    /// than this (seconds) leave the state. Default 7 days: longer than any
    /// policy guard's window (cooldowns and rate limits read the ledger).
    pub keep_s: f64,
    /// How often the leader checks (seconds). Default 60.
    pub every_s: f64,
    /// Client sessions inactive for this many log entries are forgotten.
    /// Default 1,000,000 (a client that comes back after that is a new
    /// session; its retries of older proposals are refused as stale).
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
    /// The `Expire` the leader should propose at `now` (seconds since the
    /// Unix epoch), or `None` when it checked less than `every_s` ago
    /// (`last_proposed`) or nothing in `state` is old enough.
    pub fn due(&self, state: &State, now: Timestamp, last_proposed: Timestamp) -> Option<Command> {
        if now - last_proposed < self.every_s || !now.is_finite() {
            return None;
        }
        let before = now - self.keep_s;
        let sessions_before = state.applied.saturating_sub(self.session_idle_entries);
        if state.expirable(before, sessions_before) {
            Some(Command::Expire {
                before,
                sessions_before,
            })
        } else {
            None
        }
    }
}

impl State {
    /// Whether an `Expire { before, sessions_before }` would remove anything.
    /// One pass over the ledger and one over the findings (the leader asks
    /// this every `every_s`, whatever the state's size).
    pub fn expirable(&self, before: Timestamp, sessions_before: u64) -> bool {
        let in_use = self.findings_in_use();
        self.findings
            .values()
            .any(|f| f.closed.is_some_and(|c| c < before) && !in_use.contains(&f.id))
            || self
                .ledger
                .values()
                .any(|a| !a.status.in_flight() && a.since < before)
            || self.audit.front().is_some_and(|e| e.ts < before)
            || self.sessions_idle_before(sessions_before)
    }

    /// Findings an action still in flight refers to: they stay (its
    /// verification reads them).
    fn findings_in_use(&self) -> std::collections::BTreeSet<u64> {
        self.ledger
            .values()
            .filter(|a| a.status.in_flight())
            .filter_map(|a| a.finding)
            .collect()
    }

    /// Applies `Command::Expire`: returns how many records left.
    pub(crate) fn expire(&mut self, before: Timestamp, sessions_before: u64) -> u64 {
        let mut moved = 0;
        let in_use = self.findings_in_use();
        let old: Vec<u64> = self
            .findings
            .values()
            .filter(|f| f.closed.is_some_and(|c| c < before) && !in_use.contains(&f.id))
            .map(|f| f.id)
            .collect();
        for id in old {
            if let Some(f) = self.findings.remove(&id) {
                self.move_to_history(HistoryRecord::Finding(f));
                moved += 1;
            }
        }
        let settled: Vec<String> = self
            .ledger
            .values()
            .filter(|a| !a.status.in_flight() && a.since < before)
            .map(|a| a.key.clone())
            .collect();
        for key in settled {
            if let Some(a) = self.ledger.remove(&key) {
                self.move_to_history(HistoryRecord::Action(a));
                moved += 1;
            }
        }
        while self.audit.front().is_some_and(|e| e.ts < before) {
            if let Some(e) = self.audit.pop_front() {
                self.move_to_history(HistoryRecord::Audit(e));
                moved += 1;
            }
        }
        moved + self.expire_sessions(sessions_before)
    }
}
