//! Membership changes on real raft nodes over real (redb) stores: a cluster
//! of three grows to four, the new replica catching up from a snapshot (the
//! log it would need has been compacted away), then shrinks back to three by
//! removing one of the originals; nothing committed is lost on the way.

use keel_consensus::node::Node;
use keel_consensus::state::{Command, Proposal};
use keel_consensus::storage::DiskStorage;
use raft::prelude::*;
use std::collections::BTreeMap;

struct Cluster {
    dir: std::path::PathBuf,
    nodes: BTreeMap<u64, Node<DiskStorage>>,
    seq: u64,
}

impl Cluster {
    fn new(name: &str, voters: &[u64]) -> Cluster {
        let dir = std::env::temp_dir().join(format!("keel-members-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = Cluster {
            dir,
            nodes: BTreeMap::new(),
            seq: 0,
        };
        for &id in voters {
            c.start(id, voters);
        }
        c
    }

    fn start(&mut self, id: u64, voters: &[u64]) {
        let store = DiskStorage::open(&self.dir.join(format!("{id}.redb")), voters).unwrap();
        self.nodes.insert(id, Node::new(id, store).unwrap());
    }

    /// One round: tick everyone, drain every ready, deliver every message.
    fn round(&mut self) {
        let mut wire: Vec<Message> = Vec::new();
        for n in self.nodes.values_mut() {
            n.tick();
        }
        loop {
            for n in self.nodes.values_mut() {
                wire.extend(n.ready().messages);
            }
            if wire.is_empty() {
                break;
            }
            for m in wire.drain(..) {
                if let Some(n) = self.nodes.get_mut(&m.to) {
                    n.step(m);
                }
            }
        }
    }

    fn leader(&mut self) -> u64 {
        for _ in 0..200 {
            if let Some(n) = self.nodes.values().find(|n| n.is_leader()) {
                return n.id();
            }
            self.round();
        }
        panic!("no leader elected");
    }

    fn propose(&mut self, n: u64) {
        for _ in 0..n {
            self.seq += 1;
            let data = Proposal {
                client: "test".into(),
                seq: self.seq,
                command: Command::ApplyPolicy {
                    name: format!("p{}", self.seq % 3),
                    document: format!("version {}", self.seq),
                },
            }
            .encode();
            let leader = self.leader();
            self.nodes.get_mut(&leader).unwrap().propose(data).unwrap();
            self.round();
        }
        for _ in 0..20 {
            self.round();
        }
    }

    fn change(&mut self, change_type: ConfChangeType, node: u64) {
        let leader = self.leader();
        let mut cc = ConfChangeV2::default();
        let mut single = ConfChangeSingle::default();
        single.set_change_type(change_type);
        single.node_id = node;
        cc.set_changes(vec![single].into());
        self.nodes
            .get_mut(&leader)
            .unwrap()
            .propose_conf_change(vec![], cc)
            .unwrap();
        for _ in 0..50 {
            self.round();
        }
    }

    fn assert_same_state(&self) {
        let mut snaps = self.nodes.values().map(|n| (n.id(), n.state.snapshot()));
        let (first_id, first) = snaps.next().unwrap();
        for (id, s) in snaps {
            assert_eq!(s, first, "replica {id} differs from replica {first_id}");
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.nodes.clear();
        std::fs::remove_dir_all(&self.dir).ok();
    }
}

#[test]
fn a_read_on_a_follower_waits_for_everything_committed_before_it() {
    let mut c = Cluster::new("read", &[1, 2, 3]);
    c.propose(20);
    let leader = c.leader();
    let follower = *c.nodes.keys().find(|&&id| id != leader).unwrap();
    let committed = c.nodes[&leader].commit_index();
    c.nodes
        .get_mut(&follower)
        .unwrap()
        .read_index(b"q1".to_vec());
    let mut confirmed = None;
    for _ in 0..20 {
        c.nodes.values_mut().for_each(|n| n.tick());
        let mut wire = Vec::new();
        for n in c.nodes.values_mut() {
            let out = n.ready();
            if n.id() == follower {
                confirmed = confirmed.or(out.reads.into_iter().find(|r| r.0 == b"q1").map(|r| r.1));
            }
            wire.extend(out.messages);
        }
        for m in wire {
            if let Some(n) = c.nodes.get_mut(&m.to) {
                n.step(m);
            }
        }
    }
    let index = confirmed.expect("the leader confirmed the read");
    assert!(
        index >= committed,
        "read index {index} < commit {committed} at request"
    );
}

#[test]
fn three_to_four_to_three_replicas_with_snapshot_catch_up() {
    let mut c = Cluster::new("grow", &[1, 2, 3]);
    c.propose(60);
    // Compact every log behind a snapshot, so a newcomer cannot replay it.
    for n in c.nodes.values_mut() {
        assert!(n.maybe_compact(10), "replica {} compacted", n.id());
    }
    let committed = c.nodes[&1].state.applied;

    c.start(4, &[]);
    c.change(ConfChangeType::AddNode, 4);
    c.propose(10);
    assert_eq!(c.nodes[&4].voters(), vec![1, 2, 3, 4]);
    assert!(
        c.nodes[&4].state.applied > committed,
        "the newcomer caught up"
    );
    assert_eq!(
        c.nodes[&4].state.policies["p1"].len(),
        c.nodes[&1].state.policies["p1"].len()
    );
    c.assert_same_state();

    c.change(ConfChangeType::RemoveNode, 1);
    c.nodes.remove(&1);
    c.propose(10);
    for n in c.nodes.values() {
        assert_eq!(n.voters(), vec![2, 3, 4]);
    }
    c.assert_same_state();
    let policies: usize = c.nodes[&4].state.policies.values().map(Vec::len).sum();
    assert_eq!(policies as u64, c.seq, "every proposal applied once");
}

/// The bug behind lost policies, findings and ledgers: a replica restarted
/// after a compaction must come back with its whole state (from the
/// snapshot on disk, then the entries after it), not only what the log
/// still holds.
#[test]
fn replicas_restarted_after_compaction_keep_their_whole_state() {
    let mut c = Cluster::new("restore", &[1, 2, 3]);
    c.propose(30);
    for n in c.nodes.values_mut() {
        assert!(n.maybe_compact(10), "replica {} compacted", n.id());
    }
    c.propose(5);
    let before: BTreeMap<u64, (u64, String)> = c
        .nodes
        .iter()
        .map(|(id, n)| (*id, (n.state.applied, n.state.digest())))
        .collect();
    // Stop every replica, then start them again from their files.
    c.nodes.clear();
    for id in [1, 2, 3] {
        c.start(id, &[1, 2, 3]);
        let n = &c.nodes[&id];
        assert!(
            n.state.applied >= 30,
            "replica {id} restored from its snapshot, applied {}",
            n.state.applied
        );
    }
    for _ in 0..60 {
        c.round();
    }
    for (id, n) in &c.nodes {
        assert_eq!(
            (n.state.applied, n.state.digest()),
            before[id],
            "replica {id} came back with another state"
        );
        let versions: usize = n.state.policies.values().map(Vec::len).sum();
        assert_eq!(versions, 35, "every policy version back on replica {id}");
    }
}
