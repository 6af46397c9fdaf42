//! The Raft node: `raft::RawNode` driven the way raft-rs documents it, with
//! the replicated `State` applied beside it. Sans-IO: ticks, messages and
//! proposals go in; messages to send and applied outcomes come out. The
//! async runner (sockets, timers) is a thin loop around `Node::ready`.
//!
//! The order inside `ready` is the one raft-rs requires: messages a leader
//! may send at once go out first; then the snapshot, the new entries and the
//! hard state are persisted; only then go the messages that depend on them
//! (votes and appends acknowledged), so nothing is promised that a crash
//! could take back.

use crate::state::{Outcome, State};
use raft::prelude::*;
use raft::{Config, RawNode, StateRole};
use raft_proto::ConfChangeI;

/// Where a node keeps its log: `storage::DiskStorage` (redb) in a
/// controller, `memstore::MemStore` in the deterministic simulation, where
/// "the disk" is what survives a crash: it keeps exactly what `ready`
/// persisted.
pub trait LogStore: raft::Storage {
    fn append(&self, entries: &[Entry]) -> raft::Result<()>;
    fn set_hard_state(&self, hs: HardState);
    fn set_commit(&self, commit: u64);
    fn apply_snapshot(&self, snapshot: Snapshot) -> raft::Result<()>;
    fn set_conf_state(&self, cs: ConfState);
    /// Keeps a snapshot of the state machine at `index` for peers that fall
    /// behind, and drops the log before it. May decline (returns false).
    fn snapshot_at(&self, index: u64, data: Vec<u8>) -> bool;
    /// Appends entries and records the hard state together: a store that
    /// can make both durable in one write (one fsync) should.
    fn persist(&self, entries: &[Entry], hs: Option<HardState>) -> raft::Result<()> {
        if !entries.is_empty() {
            self.append(entries)?;
        }
        if let Some(hs) = hs {
            self.set_hard_state(hs);
        }
        Ok(())
    }
}

/// Election and heartbeat timing, in ticks (the controller ticks every 50 ms:
/// an election after 0.5-1 s of silence, heartbeats every 150 ms).
pub const ELECTION_TICK: usize = 10;
pub const HEARTBEAT_TICK: usize = 3;

/// The most bytes of entries one append message carries (raft's
/// `max_size_per_msg`): a quarter of the transport's 1 MiB frame, so an
/// append with its envelope stays far below the frame limit. A single entry
/// larger than this still travels alone; proposals are bounded by
/// [`MAX_PROPOSAL_BYTES`] so that such an entry also fits a frame.
pub const MAX_APPEND_BYTES: u64 = 256 * 1024;

/// The largest encoded proposal a replica accepts (bytes).
pub const MAX_PROPOSAL_BYTES: usize = 256 * 1024;

/// What one round of `ready` produced.
#[derive(Debug, Default)]
pub struct Output {
    pub messages: Vec<Message>,
    /// (log index, outcome) of every normal entry applied, in order.
    pub applied: Vec<(u64, Outcome)>,
    /// Linearizable reads confirmed by a quorum: (request context, the
    /// commit index the read must wait to be applied).
    pub reads: Vec<(Vec<u8>, u64)>,
    /// Membership changes applied: (node id, added, the context the
    /// proposer attached, e.g. where to reach the node).
    pub members: Vec<(u64, bool, Vec<u8>)>,
}

pub struct Node<S: LogStore> {
    raw: RawNode<S>,
    pub state: State,
    /// Snapshots from a peer whose state could not be decoded (the replica
    /// kept its own state; a newer peer's format, or a bug): counted.
    pub bad_snapshots: u64,
    /// This replica applied its own removal: it must stop. `ready` does
    /// nothing more (raft-rs cannot go on as a leader outside its own
    /// configuration).
    pub removed: bool,
}

impl<S: LogStore + Clone> Node<S> {
    /// Starts (or restarts) a node over `store`. On restart the state
    /// machine is restored from the store's latest snapshot (taken at every
    /// compaction and membership change), then raft hands the committed
    /// entries after it to `ready` again, so the state machine needs no
    /// persistence of its own. A snapshot whose state cannot be decoded is
    /// an error (`raft::Error::Store`), never a silently empty state.
    pub fn new(id: u64, store: S) -> raft::Result<Self> {
        let mut state = State::default();
        if let Ok(snap) = raft::Storage::snapshot(&store, 0, id) {
            if !snap.get_data().is_empty() {
                state = State::restore(snap.get_data()).map_err(|e| {
                    raft::Error::Store(raft::StorageError::Other(
                        format!("snapshot at {}: {e}", snap.get_metadata().index).into(),
                    ))
                })?;
                state.mark_applied(snap.get_metadata().index);
            }
        }
        let cfg = Config {
            id,
            election_tick: ELECTION_TICK,
            heartbeat_tick: HEARTBEAT_TICK,
            max_size_per_msg: MAX_APPEND_BYTES,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        cfg.validate()?;
        let logger = slog::Logger::root(slog::Discard, slog::o!());
        Ok(Node {
            raw: RawNode::new(&cfg, store, &logger)?,
            state,
            bad_snapshots: 0,
            removed: false,
        })
    }

    pub fn id(&self) -> u64 {
        self.raw.raft.id
    }

    pub fn tick(&mut self) {
        self.raw.tick();
    }

    /// Tells raft whether a snapshot sent to `to` arrived whole (`ok`) or
    /// not; after a failure raft probes the peer and sends it again.
    pub fn report_snapshot(&mut self, to: u64, ok: bool) {
        let status = if ok {
            raft::SnapshotStatus::Finish
        } else {
            raft::SnapshotStatus::Failure
        };
        self.raw.report_snapshot(to, status);
    }

    /// Tells raft that a message to `to` could not be delivered, so it stops
    /// pipelining appends to that peer and probes it instead.
    pub fn report_unreachable(&mut self, to: u64) {
        self.raw.report_unreachable(to);
    }

    /// Feeds a message from a peer. Errors (a message for another term or a
    /// removed peer) are raft's to judge and are dropped.
    pub fn step(&mut self, msg: Message) {
        let _ = self.raw.step(msg);
    }

    /// Asks for a linearizable read (ReadIndex): once `ready` returns the
    /// context with an index, a read of the state after that index has been
    /// applied sees every write committed before the request.
    pub fn read_index(&mut self, ctx: Vec<u8>) {
        self.raw.read_index(ctx);
    }

    /// Proposes a membership change (joint consensus when it has several
    /// steps, or when `transition` asks for it).
    pub fn propose_conf_change(&mut self, context: Vec<u8>, cc: ConfChangeV2) -> raft::Result<()> {
        self.raw.propose_conf_change(context, cc)
    }

    /// The (client, seq) of the proposal in the log entry at `index`, if
    /// it holds one: how a runner finds whom to answer once it is applied.
    pub fn state_entry_client(&self, index: u64) -> Option<(String, u64)> {
        let p = crate::state::Proposal::decode(&self.state_entry_data(index)?).ok()?;
        Some((p.client, p.seq))
    }

    /// The data of the log entry at `index`, while the log still holds it.
    pub fn state_entry_data(&self, index: u64) -> Option<Vec<u8>> {
        let store = &self.raw.raft.raft_log.store;
        let e = store
            .entries(
                index,
                index + 1,
                None,
                raft::GetEntriesContext::empty(false),
            )
            .ok()?;
        Some(e.first()?.data.to_vec())
    }

    /// The current voters.
    pub fn voters(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.raw.raft.prs().conf().voters().ids().iter().collect();
        v.sort_unstable();
        v
    }

    /// Snapshots the state machine at its applied index and compacts the log
    /// behind it, once the log holds more than `keep` entries past the last
    /// snapshot. Returns whether it did.
    pub fn maybe_compact(&mut self, keep: u64) -> bool {
        let store = &self.raw.raft.raft_log.store;
        let first = store.first_index().unwrap_or(1);
        let applied = self.state.applied;
        if applied < first + keep {
            return false;
        }
        store.snapshot_at(applied, self.state.snapshot())
    }

    /// Proposes an encoded `Proposal`; followers forward it to the leader.
    pub fn propose(&mut self, data: Vec<u8>) -> raft::Result<()> {
        self.raw.propose(vec![], data)
    }

    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    pub fn term(&self) -> u64 {
        self.raw.raft.term
    }

    pub fn leader_id(&self) -> u64 {
        self.raw.raft.leader_id
    }

    pub fn commit_index(&self) -> u64 {
        self.raw.raft.raft_log.committed
    }

    /// Drives one round of raft's `Ready`: send, persist, send what depended
    /// on persistence, apply, advance.
    pub fn ready(&mut self) -> Output {
        let mut out = Output::default();
        if self.removed || !self.raw.has_ready() {
            return out;
        }
        let store = self.raw.raft.raft_log.store.clone();
        let mut ready = self.raw.ready();
        out.messages.extend(ready.take_messages());
        out.reads.extend(
            ready
                .take_read_states()
                .into_iter()
                .map(|r| (r.request_ctx, r.index)),
        );
        if !ready.snapshot().is_empty() {
            let snap = ready.snapshot().clone();
            match State::restore(snap.get_data()) {
                Ok(mut state) => {
                    state.mark_applied(snap.get_metadata().index);
                    self.state = state;
                }
                Err(_) => self.bad_snapshots += 1,
            }
            // A snapshot older than the log is refused by the store; the
            // node then simply keeps its own entries.
            let _ = store.apply_snapshot(snap);
        }
        let committed = ready.take_committed_entries();
        self.apply(committed, &mut out);
        if self.removed {
            return out;
        }
        store
            .persist(ready.entries(), ready.hs().cloned())
            .expect("raft hands the store a contiguous run of entries");
        out.messages.extend(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            store.set_commit(commit);
        }
        out.messages.extend(light.take_messages());
        let committed = light.take_committed_entries();
        self.apply(committed, &mut out);
        self.raw.advance_apply();
        out
    }

    fn apply(&mut self, entries: Vec<Entry>, out: &mut Output) {
        for entry in entries {
            match entry.get_entry_type() {
                EntryType::EntryNormal => {
                    // A new leader's empty entry carries no proposal.
                    if entry.data.is_empty() {
                        continue;
                    }
                    let outcome = self.state.apply(entry.index, &entry.data);
                    out.applied.push((entry.index, outcome));
                }
                EntryType::EntryConfChange | EntryType::EntryConfChangeV2 => {
                    let cc: ConfChangeV2 = if entry.get_entry_type() == EntryType::EntryConfChange {
                        match protobuf::Message::parse_from_bytes(&entry.data) {
                            Ok(cc) => ConfChangeI::into_v2(ConfChange::clone(&cc)),
                            Err(_) => continue,
                        }
                    } else {
                        match protobuf::Message::parse_from_bytes(&entry.data) {
                            Ok(cc) => cc,
                            Err(_) => continue,
                        }
                    };
                    self.state.mark_applied(entry.index);
                    let me = self.id();
                    for c in cc.get_changes() {
                        let added = c.get_change_type() != ConfChangeType::RemoveNode;
                        out.members.push((c.node_id, added, entry.context.to_vec()));
                        if !added && c.node_id == me {
                            self.removed = true;
                        }
                    }
                    if self.removed {
                        // Applying it would leave raft a leader outside its
                        // own configuration (raft-rs then panics on the next
                        // persist); the runner stops this replica instead.
                        return;
                    }
                    if let Ok(cs) = self.raw.apply_conf_change(&cc) {
                        let store = &self.raw.raft.raft_log.store;
                        store.set_conf_state(cs);
                        // raft-rs refuses a snapshot whose configuration
                        // leaves the receiver out, so a newcomer needs one
                        // taken after it joined.
                        store.snapshot_at(entry.index, self.state.snapshot());
                    }
                }
            }
        }
    }
}

/// A Raft message as it travels between controllers (raft-rs's protobuf).
pub fn encode_message(msg: &Message) -> Vec<u8> {
    protobuf::Message::write_to_bytes(msg).expect("raft messages encode")
}

/// Decodes a peer's Raft message; a malformed one is an error, never a panic.
pub fn decode_message(bytes: &[u8]) -> Result<Message, protobuf::ProtobufError> {
    protobuf::Message::parse_from_bytes(bytes)
}
