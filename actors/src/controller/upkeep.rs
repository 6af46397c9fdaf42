//! What a replica does beside raft's loop: the history of what retention
//! removed, and (on the leader) retention itself.

use super::history;
use super::ControllerState;
use keel_consensus::state::Proposal;

/// Appends what retention removed from the state to the history file (one
/// write and one fsync per batch). A failed write loses those records from
/// the history (never from the replicated state's decisions): logged.
pub fn keep_history(state: &mut ControllerState) {
    let expired = state.node.state.take_expired();
    if expired.is_empty() {
        return;
    }
    let file = history::path(&state.cfg.data_dir);
    if let Err(e) = history::append(&file, &expired) {
        state.history_lost += expired.len() as u64;
        tracing::error!(
            records = expired.len(),
            lost_total = state.history_lost,
            "appending to {}: {e}",
            file.display()
        );
    }
}

/// The leader proposes what retention says is due (at most once a second).
pub fn retain(state: &mut ControllerState) {
    if !state.node.is_leader() {
        return;
    }
    let now = crate::sources::unix_now();
    let Some(command) = state
        .retention
        .due(&state.node.state, now, state.last_retention)
    else {
        return;
    };
    state.last_retention = now;
    let (client, seq) = state.sessions.next("retention", "leader");
    let p = Proposal {
        client,
        seq,
        command,
    };
    tracing::info!(seq, "proposing retention");
    let _ = state.node.propose(p.encode());
}
