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
        }
    }

    /// Feeds the entries just applied (index and outcome, in order).
    pub fn applied(&mut self, state: &State, applied: &[(u64, Outcome)]) {
        let now = unix_now();
        let mut gap = false;
        for (index, outcome) in applied {
            gap |= *index != self.fed + 1;
            self.fed = *index;
            if gap || *outcome != Outcome::Applied {
                continue;
            }
            if let Some(record) = self.job_at(*index) {
                // The state's copy has the placement merged in.
                let r = state.jobs.get(&record.job).unwrap_or(&record);
                self.index.job(r, now);
            }
        }
        // A snapshot, a membership change or a new leader's empty entry:
        // what happened in between is read from the job map.
        if gap || state.applied != self.fed {
            tracing::debug!(applied = state.applied, "routing index resynced");
            self.index.resync(state.jobs.values(), now);
            self.fed = state.applied;
        }
    }

    /// The job record a `job` command at `index` carried.
    fn job_at(&self, index: u64) -> Option<JobRecord> {
        let entries = raft::Storage::entries(
            &self.store,
            index,
            index + 1,
            None,
            raft::GetEntriesContext::empty(false),
        )
        .ok()?;
        match Proposal::decode(&entries.first()?.data).ok()?.command {
            Command::Job { record } => Some(record),
            _ => None,
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
