//! The `routes` and `hello` topics, on the replica's routing index
//! (`keel_consensus::routing`).
//!
//! The index is fed as the state changes: every applied `job` command
//! updates the job's entry, and a restore from a snapshot (or anything
//! this replica did not see applied one by one) resyncs it from the job
//! map. Requests only read it: a sensor's `routes` poll asks for its node
//! and gets what changed since its last version; a correlator host's
//! `hello` gets the records of the jobs it holds that changed since its
//! last version, in pages that stay well under the transport's frame.

use super::ControllerState;
use crate::sources::unix_now;
use anyhow::{bail, Context, Result};
use keel_consensus::routing::Routing;
use keel_consensus::state::{Command, Outcome, Proposal, State};
use keel_consensus::storage::DiskStorage;
use keel_model::{JobRecord, Name, Query};
use std::net::SocketAddr;

pub use keel_consensus::routing::{Delta, Route};

/// The most bytes of records or routes in one answer: half the transport's
/// 1 MiB frame, leaving room for the envelope.
pub const REPLY_BUDGET: usize = 512 * 1024;

/// The replica's routing index and what feeds it.
pub struct Routes {
    pub index: Routing,
    /// The log, to read the job records of applied entries.
    store: DiskStorage,
    /// The last log index fed to the index.
    fed: u64,
    /// Times the index was rebuilt from the job map (after a snapshot, a
    /// gap, an unreadable entry).
    pub resyncs: u64,
}

impl Routes {
    /// An index of `state`'s jobs; `epoch` is new at each start of the
    /// replica.
    pub fn new(store: DiskStorage, state: &State, epoch: u64) -> Routes {
        let mut index = Routing::new(epoch);
        index.resync(state.jobs.values(), unix_now());
        Routes {
            index,
            store,
            fed: state.applied,
            resyncs: 0,
        }
    }

    /// Feeds the entries just applied (index and outcome, in order).
    pub fn applied(&mut self, state: &State, applied: &[(u64, Outcome)]) {
        let now = unix_now();
        let mut gap = false;
        for (index, outcome) in applied {
            gap |= *index != self.fed + 1 && !self.no_jobs_between(self.fed + 1, *index);
            self.fed = *index;
            if gap || *outcome != Outcome::Applied {
                continue;
            }
            match self.job_at(*index) {
                Ok(Some(record)) => {
                    // The state's copy has the placement merged in.
                    let r = state.jobs.get(&record.job).unwrap_or(&record);
                    self.index.job(r, now);
                }
                Ok(None) => {}
                // Unreadable here: the job map says what it changed.
                Err(()) => gap = true,
            }
        }
        // Membership changes at the end change no job.
        if !gap && state.applied > self.fed && self.no_jobs_between(self.fed + 1, state.applied + 1)
        {
            self.fed = state.applied;
        }
        // A snapshot, or anything not seen applied one by one: what
        // happened in between is read from the job map.
        if gap || state.applied != self.fed {
            tracing::debug!(applied = state.applied, "routing index resynced");
            self.index.resync(state.jobs.values(), now);
            self.fed = state.applied;
            self.resyncs += 1;
        }
    }

    /// Whether the entries in `lo..hi`, which were not reported applied,
    /// are all a new leader's empty entries or membership changes (a few
    /// at most), so that no job changed in them.
    fn no_jobs_between(&self, lo: u64, hi: u64) -> bool {
        if hi <= lo || hi - lo > 64 {
            return hi <= lo;
        }
        let Ok(entries) = raft::Storage::entries(
            &self.store,
            lo,
            hi,
            None,
            raft::GetEntriesContext::empty(false),
        ) else {
            return false;
        };
        entries.len() as u64 == hi - lo
            && entries.iter().all(|e| {
                e.get_entry_type() != raft::prelude::EntryType::EntryNormal || e.data.is_empty()
            })
    }

    /// The job record a `job` command at `index` carried (`None`: another
    /// command; `Err`: the entry could not be read back).
    fn job_at(&self, index: u64) -> Result<Option<JobRecord>, ()> {
        let entries = raft::Storage::entries(
            &self.store,
            index,
            index + 1,
            None,
            raft::GetEntriesContext::empty(false),
        )
        .map_err(|_| ())?;
        let entry = entries.first().ok_or(())?;
        match Proposal::decode(&entry.data).map_err(|_| ())?.command {
            Command::Job { record } => Ok(Some(record)),
            _ => Ok(None),
        }
    }
}

/// The caller's last answer, from params `epoch` and `since` (none: a
/// first question, answered with everything).
fn cursor(q: &Query) -> Result<Option<(u64, u64)>> {
    match (q.params.get("epoch"), q.params.get("since")) {
        (Some(e), Some(v)) => Ok(Some((
            e.parse().context("param `epoch`")?,
            v.parse().context("param `since`")?,
        ))),
        (None, None) => Ok(None),
        _ => bail!("params `epoch` and `since` go together"),
    }
}

/// `routes`: with `node` and a cursor, what changed for the node (a
/// `Delta<Route>`; a first question passes epoch 0 and since 0); without a
/// cursor, the routes of every job (or of the node's jobs) as a list, for
/// operators.
pub fn routes(s: &mut ControllerState, q: &Query) -> Result<String> {
    let node: Option<Name> = q.params.get("node").map(|n| n.as_str().into());
    let at = cursor(q)?;
    let r = &mut s.routing.index;
    r.expire(unix_now());
    match (node, at) {
        (Some(node), Some((epoch, since))) => {
            let d = r.routes(&node, Some(epoch), since, REPLY_BUDGET, cost);
            Ok(serde_json::to_string(&d)?)
        }
        (Some(node), None) => {
            let d = r.routes(&node, None, 0, usize::MAX, |_| 0);
            Ok(serde_json::to_string(&d.changed)?)
        }
        (None, _) => Ok(serde_json::to_string(&r.all_routes())?),
    }
}

/// `hello` from correlator host `host` (params `addr` and the cursor of
/// its source replica): the host is alive; the answer is a
/// `Delta<JobRecord>` of the jobs it holds. A cursor from another replica
/// is refused, so that a host greeting every replica takes its changes
/// from one.
pub fn hello(s: &mut ControllerState, host: &str, q: &Query) -> Result<String> {
    let addr: SocketAddr = q
        .params
        .get("addr")
        .context("param `addr` missing")?
        .parse()
        .context("param `addr` is not an address")?;
    let at = cursor(q)?;
    let now = unix_now();
    let r = &mut s.routing.index;
    if !r.hello(host, addr, now) {
        bail!(
            "too many correlator hosts ({} refused, bound {})",
            r.hosts_refused,
            keel_consensus::routing::MAX_HOSTS
        );
    }
    r.expire(now);
    let (epoch, since) = match at {
        Some((e, _)) if e != r.epoch() => {
            bail!("greeted; changes come from the replica of epoch {e}")
        }
        Some((e, v)) => (Some(e), v),
        None => (None, 0),
    };
    let d = r.assigned(host, epoch, since, REPLY_BUDGET, cost);
    Ok(serde_json::to_string(&d)?)
}

/// The bytes an item takes in an answer.
fn cost<T: serde::Serialize>(item: &T) -> usize {
    serde_json::to_vec(item).map_or(0, |b| b.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_consensus::node::Node;
    use keel_model::JobState;

    fn record(job: &str, state: JobState) -> JobRecord {
        let mut r = JobRecord::state_only(job, state, unix_now());
        r.nodes = vec!["n1".into()];
        r.ranks = [("n1".into(), vec![0])].into_iter().collect();
        r
    }

    /// Drives a one-replica node until it has nothing more to do, feeding
    /// the index what it applied.
    fn settle(node: &mut Node<DiskStorage>, routes: &mut Routes) {
        for _ in 0..100 {
            node.tick();
            let out = node.ready();
            routes.applied(&node.state, &out.applied);
        }
    }

    #[test]
    fn applied_job_entries_feed_the_index() {
        let dir = std::env::temp_dir().join(format!("keel-routing-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let store = DiskStorage::open(&dir.join("raft.redb"), &[1]).unwrap();
        let mut node = Node::new(1, store.clone()).unwrap();
        let mut routes = Routes::new(store, &node.state, 1);
        let addr: SocketAddr = "127.0.0.1:9".parse().unwrap();
        assert!(routes.index.hello("corr-a", addr, unix_now()));
        settle(&mut node, &mut routes);
        assert!(node.is_leader());
        let resyncs = routes.resyncs;
        let jobs = [
            record("j-run", JobState::Running),
            record("j-wait", JobState::Pending),
        ];
        for (seq, r) in jobs.into_iter().enumerate() {
            let p = Proposal {
                client: "test/1".into(),
                seq: seq as u64 + 1,
                command: Command::Job { record: r },
            };
            node.propose(p.encode()).unwrap();
        }
        settle(&mut node, &mut routes);
        assert_eq!(node.state.jobs.len(), 2);
        assert_eq!(routes.index.host_of("j-run"), Some("corr-a"));
        assert_eq!(routes.index.host_of("j-wait"), None);
        assert_eq!(routes.index.jobs(), 1);
        // The end comes without placement; the index keeps it, lingering.
        let end = JobRecord::state_only("j-run", JobState::Completed, unix_now());
        let p = Proposal {
            client: "test/1".into(),
            seq: 3,
            command: Command::Job { record: end },
        };
        node.propose(p.encode()).unwrap();
        settle(&mut node, &mut routes);
        let all = routes.index.all_routes();
        assert_eq!(all.len(), 1);
        assert!(all[0].ended);
        assert_eq!(all[0].host.as_deref(), Some("corr-a"));
        let d = routes.index.routes("n1", None, 0, REPLY_BUDGET, |_| 1);
        assert_eq!(d.changed.len(), 1);
        // All of it came from the entries themselves, not from a resync.
        assert_eq!(routes.resyncs, resyncs);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
