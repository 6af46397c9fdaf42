//! Deterministic simulation of the replicated controller: real
//! `raft::RawNode`s and the real state machine, over a seeded network that
//! drops, delays, duplicates and reorders messages, partitions a node off,
//! crashes and restarts nodes (keeping what they persisted), compacts every
//! log behind snapshots (so lagging and restarted replicas catch up from a
//! snapshot), and changes membership: 3 -> 4 (a new replica joins from a
//! snapshot), a member replaced, 4 -> 3.
//!
//! Checked after every tick: never two leaders in one term; every replica
//! applies the same entry at the same index (nothing committed is lost or
//! changed); replicas at the same applied index hold the same state digest.
//! At the end: every member up, identical state, every client proposal
//! applied, no ledger action applied twice. A failing seed is printed with
//! the command that replays it alone (`KEEL_SIM_SEED=N`).

#[path = "sim/mod.rs"]
mod sim;

use keel_consensus::memstore::MemStore;
use keel_consensus::storage::DiskStorage;
use sim::{run, Opened};
use std::cell::RefCell;
use std::collections::HashMap;

/// Each replica's "disk": the same store object survives its crashes.
fn in_memory() -> Opened<MemStore> {
    let disks: RefCell<HashMap<usize, MemStore>> = RefCell::new(HashMap::new());
    Box::new(move |i, voters: &[u64]| {
        disks
            .borrow_mut()
            .entry(i)
            .or_insert_with(|| {
                if voters.is_empty() {
                    MemStore::joining()
                } else {
                    MemStore::new(voters)
                }
            })
            .clone()
    })
}

fn on_disk(seed: u64) -> Opened<DiskStorage> {
    let dir = std::env::temp_dir().join(format!("keel-sim-{}-{seed}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    Box::new(move |i, voters: &[u64]| {
        DiskStorage::open(&dir.join(format!("replica-{}.redb", i + 1)), voters).unwrap()
    })
}

/// Runs `seed`, turning a panic into a message that names the seed and how
/// to replay it.
fn checked<S: keel_consensus::node::LogStore + Clone>(seed: u64, opened: Opened<S>) {
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(seed, opened)));
    if let Err(e) = r {
        let why = e
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default();
        panic!(
            "simulation seed {seed} failed: {why}\nreplay it alone: KEEL_SIM_SEED={seed} cargo test --release -p keel-consensus --test simulation"
        );
    }
}

fn seeds(default: u64) -> Vec<u64> {
    if let Some(one) = std::env::var("KEEL_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    {
        return vec![one];
    }
    let n = std::env::var("KEEL_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    (0..n).collect()
}

#[test]
fn a_thousand_seeds_of_faults_compaction_and_membership_keep_every_invariant() {
    for seed in seeds(1000) {
        checked(seed, in_memory());
    }
}

/// The same faults over the real store: a crashed replica is reopened from
/// its redb file, so a restart sees exactly what was fsynced, and restores
/// its state machine from the snapshot on disk.
#[test]
fn replicas_restarted_from_their_redb_files_keep_every_invariant() {
    for seed in seeds(3).into_iter().take(3) {
        checked(seed, on_disk(seed));
        let dir = std::env::temp_dir().join(format!("keel-sim-{}-{seed}", std::process::id()));
        std::fs::remove_dir_all(dir).ok();
    }
}
