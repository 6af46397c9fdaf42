//! An in-memory log store with state-machine snapshots: raft-rs's
//! `MemStorage` plus the latest snapshot, so that it compacts and serves
//! snapshots exactly like `storage::DiskStorage` (which is this plus redb).
//! It stands in for the durable store in the deterministic simulation and
//! in unit tests: "the disk" is what survives a simulated crash.

use crate::node::LogStore;
use raft::prelude::*;
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState};
use std::sync::{Arc, RwLock};

/// `MemStorage` with state-machine snapshots; clones share one store.
#[derive(Clone)]
pub struct MemStore {
    mem: MemStorage,
    snapshot: Arc<RwLock<Option<Snapshot>>>,
}

impl MemStore {
    /// A new store whose first configuration is `voters`.
    pub fn new(voters: &[u64]) -> MemStore {
        MemStore {
            mem: MemStorage::new_with_conf_state(ConfState::from((voters.to_vec(), vec![]))),
            snapshot: Arc::new(RwLock::new(None)),
        }
    }

    /// A new store with no configuration: a replica that joins a running
    /// cluster and learns its members from the leader's snapshot.
    pub fn joining() -> MemStore {
        MemStore {
            mem: MemStorage::new(),
            snapshot: Arc::new(RwLock::new(None)),
        }
    }

    fn set_snapshot(&self, snap: Snapshot) {
        *self.snapshot.write().unwrap_or_else(|e| e.into_inner()) = Some(snap);
    }
}

impl raft::Storage for MemStore {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.mem.initial_state()
    }
    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.mem.entries(low, high, max_size, context)
    }
    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.mem.term(idx)
    }
    fn first_index(&self) -> raft::Result<u64> {
        self.mem.first_index()
    }
    fn last_index(&self) -> raft::Result<u64> {
        self.mem.last_index()
    }
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        match &*self.snapshot.read().unwrap_or_else(|e| e.into_inner()) {
            Some(s) if s.get_metadata().index >= request_index => Ok(s.clone()),
            _ => Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            )),
        }
    }
}

impl LogStore for MemStore {
    fn append(&self, entries: &[Entry]) -> raft::Result<()> {
        self.mem.wl().append(entries)
    }
    fn set_hard_state(&self, hs: HardState) {
        self.mem.wl().set_hardstate(hs)
    }
    fn set_commit(&self, commit: u64) {
        self.mem.wl().mut_hard_state().set_commit(commit)
    }
    fn apply_snapshot(&self, snapshot: Snapshot) -> raft::Result<()> {
        self.mem.wl().apply_snapshot(snapshot.clone())?;
        self.set_snapshot(snapshot);
        Ok(())
    }
    fn set_conf_state(&self, cs: ConfState) {
        self.mem.wl().set_conf_state(cs)
    }
    fn snapshot_at(&self, index: u64, data: Vec<u8>) -> bool {
        let Ok(term) = self.mem.term(index) else {
            return false;
        };
        let Ok(state) = self.mem.initial_state() else {
            return false;
        };
        let mut snap = Snapshot::default();
        snap.set_data(data.into());
        let meta = snap.mut_metadata();
        meta.index = index;
        meta.term = term;
        meta.set_conf_state(state.conf_state);
        self.set_snapshot(snap);
        self.mem.wl().compact(index).is_ok()
    }
}
