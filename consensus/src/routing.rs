//! Which correlator host holds which job, kept as indexes and handed out as
//! versioned changes, sans-IO.
//!
//! Each controller replica keeps this soft state (it is not replicated):
//! the correlator hosts alive (by their last `hello`, within
//! [`HOST_TTL_S`]), and every job that needs a correlator — one that runs,
//! or one that ended less than [`LINGER_S`] ago (a GPU an ended job leaves
//! held shows only after the end). A job that is still PENDING gets none.
//! Each job's host comes from [`crate::assign::assign`] over the hosts
//! alive, so every replica that knows the same hosts agrees.
//!
//! Nothing is recomputed per request. The caller feeds changes as they
//! happen — a job record applied ([`Routing::job`]), a host's greeting
//! ([`Routing::hello`]), the time passing ([`Routing::expire`]) — and the
//! indexes (jobs per host, jobs per node) are updated then: a host that
//! joins takes its share in one pass over the jobs, a host that is lost
//! hands only its own jobs on. Every change gets a version number; a caller
//! that passes the `epoch` and `version` of its last answer gets only what
//! changed since ([`Delta`]), in pages of at most a byte budget, or
//! everything (`reset`) when it is new, when this replica restarted (a new
//! epoch) or when its version is older than the removals still remembered.
//!
//! Time is an argument (`now`, seconds since the Unix epoch, the clock job
//! records carry); nothing here reads a clock or opens a socket.

use crate::assign::assign;
use delta::{Index, Set};
use keel_model::{JobRecord, JobState, Name};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;

/// A correlator host silent for this many seconds is taken as gone: its
/// jobs move to the others.
pub const HOST_TTL_S: f64 = 2.0;
/// A job that ended keeps its correlator this many seconds.
pub const LINGER_S: f64 = 90.0;
/// Correlator hosts known at once; a greeting from one more is refused
/// and counted ([`Routing::hosts_refused`]).
pub const MAX_HOSTS: usize = 1024;
/// Jobs routed at once (running or lingering); one more is left without a
/// correlator and counted ([`Routing::jobs_refused`]).
pub const MAX_JOBS: usize = 200_000;
/// Removals remembered for deltas; a caller whose version is older than
/// the oldest one kept gets everything again.
pub const MAX_REMOVALS: usize = 65_536;

/// Where one job's summaries go.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Route {
    pub job: Name,
    /// The correlator host holding the job, when any host is alive.
    pub host: Option<String>,
    pub addr: Option<SocketAddr>,
    pub ended: bool,
    /// The job's record cut to the node that asked (its state, its ranks
    /// there with their GPUs and NICs, and Slurm's GPU allocation there),
    /// so that the node's sensor can tell which job holds which of its
    /// GPUs. None in `keel routes`, which asks for no node.
    #[serde(default)]
    pub record: Option<JobRecord>,
}

/// What changed for one caller since its last answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta<T> {
    /// This replica's routing epoch: pass it back with `version`.
    pub epoch: u64,
    /// Pass it back to get what changed after this answer.
    pub version: u64,
    /// Everything the caller holds is to be dropped first: `changed` (with
    /// the pages that follow while `more`) is the whole set.
    pub reset: bool,
    /// The budget was reached: ask again at once with `version` for the rest.
    pub more: bool,
    /// Added or changed, oldest change first.
    pub changed: Vec<T>,
    /// Jobs that left the caller's set.
    pub removed: Vec<Name>,
}

/// `record` with only what concerns `node`: its ranks there, their GPUs
/// and NICs, and Slurm's GPU allocation there.
pub fn cut_to_node(record: &JobRecord, node: &str) -> JobRecord {
    let ranks: Vec<u32> = record.ranks.get(node).cloned().unwrap_or_default();
    let mut cut = JobRecord {
        nodes: record
            .nodes
            .iter()
            .filter(|n| n.as_str() == node)
            .cloned()
            .collect(),
        ranks: BTreeMap::new(),
        gpus: BTreeMap::new(),
        nics: BTreeMap::new(),
        node_gpus: BTreeMap::new(),
        ..record.clone()
    };
    for r in &ranks {
        if let Some(g) = record.gpus.get(r) {
            cut.gpus.insert(*r, *g);
        }
        if let Some(n) = record.nics.get(r) {
            cut.nics.insert(*r, n.clone());
        }
    }
    if let Some((n, g)) = record.node_gpus.get_key_value(node) {
        cut.node_gpus.insert(n.clone(), g.clone());
    }
    if let Some((n, _)) = record.ranks.get_key_value(node) {
        cut.ranks.insert(n.clone(), ranks);
    }
    cut
}

/// A job that left a set at `version`: its host's, and these nodes'.
#[derive(Debug)]
struct Removal {
    version: u64,
    job: Name,
    host: Option<String>,
    nodes: Vec<Name>,
}

#[derive(Debug)]
struct Live {
    record: JobRecord,
    host: Option<String>,
    /// Nodes with ranks of the job.
    nodes: Vec<Name>,
    /// For an ended job: when it stops being routed.
    linger_until: Option<f64>,
}

#[derive(Debug)]
struct Host {
    addr: SocketAddr,
    seen: f64,
}

/// The replica's routing index; see the module doc.
#[derive(Debug)]
pub struct Routing {
    epoch: u64,
    version: u64,
    hosts: BTreeMap<String, Host>,
    jobs: HashMap<Name, Live>,
    by_host: HashMap<String, Index>,
    by_node: HashMap<Name, Index>,
    /// Jobs with no host (none alive).
    unassigned: BTreeSet<Name>,
    /// (end of lingering in ms, job), soonest first.
    lingering: BTreeSet<(u64, Name)>,
    removals: VecDeque<Removal>,
    max_removals: usize,
    /// Deltas since a version below this cannot be answered: reset.
    horizon: u64,
    /// Greetings refused because [`MAX_HOSTS`] hosts were known.
    pub hosts_refused: u64,
    /// Jobs left unrouted because [`MAX_JOBS`] were routed.
    pub jobs_refused: u64,
}

impl Routing {
    /// An empty index; `epoch` names this instance (a replica's boot), so
    /// that versions from another one are never taken for its own.
    pub fn new(epoch: u64) -> Routing {
        Routing {
            epoch,
            version: 0,
            hosts: BTreeMap::new(),
            jobs: HashMap::new(),
            by_host: HashMap::new(),
            by_node: HashMap::new(),
            unassigned: BTreeSet::new(),
            lingering: BTreeSet::new(),
            removals: VecDeque::new(),
            max_removals: MAX_REMOVALS,
            horizon: 0,
            hosts_refused: 0,
            jobs_refused: 0,
        }
    }

    /// This instance's epoch.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// The version of the latest change.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// Jobs routed now (running or lingering).
    pub fn jobs(&self) -> usize {
        self.jobs.len()
    }

    /// Jobs routed but held by no host (none alive).
    pub fn unassigned(&self) -> usize {
        self.unassigned.len()
    }

    /// The host holding `job`, if it is routed and a host is alive.
    pub fn host_of(&self, job: &str) -> Option<&str> {
        self.jobs.get(job)?.host.as_deref()
    }

    /// Whether `host` holds a job with ranks on `node`.
    pub fn host_on_node(&self, host: &str, node: &str) -> bool {
        self.by_node.get(node).is_some_and(|i| {
            i.at.keys()
                .any(|j| self.jobs.get(j).and_then(|l| l.host.as_deref()) == Some(host))
        })
    }

    /// Whether `job` is routed (running, or ended less than [`LINGER_S`] ago).
    pub fn routed(&self, job: &str) -> bool {
        self.jobs.contains_key(job)
    }

    /// Hosts alive, by name.
    pub fn hosts(&self) -> impl Iterator<Item = &str> {
        self.hosts.keys().map(String::as_str)
    }

    /// A job record as applied (its latest state) at `now`.
    pub fn job(&mut self, record: &JobRecord, now: f64) {
        // A record without placement (an end told by an epilog) keeps the
        // placement known, as the replicated state does.
        let merged;
        let record = match self.jobs.get(&record.job) {
            Some(l) if !l.record.ranks.is_empty() => {
                let mut r = record.clone();
                r.keep_placement_of(&l.record);
                merged = r;
                &merged
            }
            _ => record,
        };
        if record.state == JobState::Pending {
            self.remove(&record.job);
            return;
        }
        if !record.state.is_finished() {
            self.place(record, None);
            return;
        }
        let until = match self.jobs.get(&record.job).map(|l| l.linger_until) {
            Some(Some(until)) => until,
            Some(None) => now + LINGER_S,
            // Ended before this replica saw it run (a restart, a snapshot):
            // it lingers for what is left after the record's time, if it
            // ran at all (it has a placement).
            None => {
                let until = (record.ts + LINGER_S).min(now + LINGER_S);
                if record.ranks.is_empty() || until <= now {
                    return;
                }
                until
            }
        };
        self.place(record, Some(until));
    }

    /// Every job the state holds, after a restore from a snapshot or at
    /// start: the index then matches `jobs`. Jobs routed but absent from
    /// `jobs` stop being routed unless they linger.
    pub fn resync<'a>(&mut self, jobs: impl IntoIterator<Item = &'a JobRecord>, now: f64) {
        let mut seen = HashSet::new();
        for r in jobs {
            seen.insert(r.job.clone());
            self.job(r, now);
        }
        let gone: Vec<Name> = self
            .jobs
            .iter()
            .filter(|(n, l)| !seen.contains(*n) && l.linger_until.is_none())
            .map(|(n, _)| n.clone())
            .collect();
        for n in gone {
            self.remove(&n);
        }
    }

    /// A host's greeting at `now`, with where sensors reach it. A new host
    /// takes its share of the jobs. False (and counted) when refused.
    pub fn hello(&mut self, host: &str, addr: SocketAddr, now: f64) -> bool {
        if let Some(h) = self.hosts.get_mut(host) {
            h.seen = now;
            if h.addr != addr {
                h.addr = addr;
                let mine: Vec<Name> = self
                    .by_host
                    .get(host)
                    .map(|i| i.at.keys().cloned().collect())
                    .unwrap_or_default();
                for j in mine {
                    self.touch(&j);
                }
            }
            return true;
        }
        if self.hosts.len() >= MAX_HOSTS {
            self.hosts_refused += 1;
            return false;
        }
        self.hosts
            .insert(host.to_string(), Host { addr, seen: now });
        // Rendezvous hashing: a job moves to the new host exactly when the
        // new host outweighs the one holding it.
        let moving: Vec<Name> = self
            .jobs
            .iter()
            .filter(|(n, l)| match &l.host {
                None => true,
                Some(h) => assign(n, &[h.as_str(), host]) == Some(host),
            })
            .map(|(n, _)| n.clone())
            .collect();
        for j in moving {
            self.move_to(&j, Some(host.to_string()));
        }
        true
    }

    /// Lets time pass to `now`: hosts silent too long are dropped (their
    /// jobs move), ended jobs past their lingering stop being routed.
    pub fn expire(&mut self, now: f64) {
        let lost: Vec<String> = self
            .hosts
            .iter()
            .filter(|(_, h)| now - h.seen >= HOST_TTL_S)
            .map(|(n, _)| n.clone())
            .collect();
        for host in lost {
            self.hosts.remove(&host);
            let jobs: Vec<Name> = self
                .by_host
                .get(&host)
                .map(|i| i.at.keys().cloned().collect())
                .unwrap_or_default();
            let live: Vec<&str> = self.hosts.keys().map(String::as_str).collect();
            let moves: Vec<(Name, Option<String>)> = jobs
                .into_iter()
                .map(|j| {
                    let to = assign(&j, &live).map(str::to_string);
                    (j, to)
                })
                .collect();
            for (j, to) in moves {
                self.move_to(&j, to);
            }
            self.by_host.remove(&host);
        }
        let now_ms = millis(now);
        while let Some((until, job)) = self.lingering.first().cloned() {
            if until > now_ms {
                break;
            }
            self.lingering.remove(&(until, job.clone()));
            let still = self
                .jobs
                .get(&job)
                .and_then(|l| l.linger_until)
                .is_some_and(|u| millis(u) == until);
            if still {
                self.remove(&job);
            }
        }
    }

    /// The routes of the jobs with ranks on `node` that changed since
    /// (`epoch`, `since`), at most about `budget` bytes as `cost` counts
    /// them.
    pub fn routes(
        &self,
        node: &str,
        epoch: Option<u64>,
        since: u64,
        budget: usize,
        cost: impl Fn(&Route) -> usize,
    ) -> Delta<Route> {
        self.delta(
            Set::Node(node),
            epoch,
            since,
            budget,
            |l| Route {
                record: Some(cut_to_node(&l.record, node)),
                ..self.route(l)
            },
            cost,
        )
    }

    /// The records of the jobs `host` holds that changed since (`epoch`,
    /// `since`), at most about `budget` bytes as `cost` counts them.
    pub fn assigned(
        &self,
        host: &str,
        epoch: Option<u64>,
        since: u64,
        budget: usize,
        cost: impl Fn(&JobRecord) -> usize,
    ) -> Delta<JobRecord> {
        self.delta(
            Set::Host(host),
            epoch,
            since,
            budget,
            |l| l.record.clone(),
            cost,
        )
    }

    /// Every route, by job (for an operator: `keel routes`).
    pub fn all_routes(&self) -> Vec<Route> {
        let mut all: Vec<Route> = self.jobs.values().map(|l| self.route(l)).collect();
        all.sort_by(|a, b| a.job.cmp(&b.job));
        all
    }

    fn route(&self, l: &Live) -> Route {
        Route {
            job: l.record.job.clone(),
            host: l.host.clone(),
            addr: l
                .host
                .as_ref()
                .and_then(|h| self.hosts.get(h))
                .map(|h| h.addr),
            ended: l.linger_until.is_some(),
            record: None,
        }
    }

    /// Inserts or updates a job that needs a correlator (`linger_until`
    /// set for an ended one).
    fn place(&mut self, record: &JobRecord, linger_until: Option<f64>) {
        let name = record.job.clone();
        let nodes: Vec<Name> = record.ranks.keys().cloned().collect();
        match self.jobs.get_mut(&name) {
            Some(l) => {
                if l.record == *record && l.linger_until == linger_until {
                    return;
                }
                l.record = record.clone();
                if l.linger_until != linger_until {
                    l.linger_until = linger_until;
                    if let Some(until) = linger_until {
                        self.lingering.insert((millis(until), name.clone()));
                    }
                }
                let old = std::mem::replace(&mut l.nodes, nodes.clone());
                let left: Vec<Name> = old.into_iter().filter(|n| !nodes.contains(n)).collect();
                for n in &left {
                    if let Some(i) = self.by_node.get_mut(n) {
                        i.remove(&name);
                        if i.at.is_empty() {
                            self.by_node.remove(n);
                        }
                    }
                }
                if !left.is_empty() {
                    self.removal(name.clone(), None, left);
                }
            }
            None => {
                if self.jobs.len() >= MAX_JOBS {
                    self.jobs_refused += 1;
                    return;
                }
                let live: Vec<&str> = self.hosts.keys().map(String::as_str).collect();
                let host = assign(&name, &live).map(str::to_string);
                if host.is_none() {
                    self.unassigned.insert(name.clone());
                }
                if let Some(until) = linger_until {
                    self.lingering.insert((millis(until), name.clone()));
                }
                self.jobs.insert(
                    name.clone(),
                    Live {
                        record: record.clone(),
                        host,
                        nodes,
                        linger_until,
                    },
                );
            }
        }
        self.touch(&name);
    }

    /// `job` changed: a new version in every set it is in.
    fn touch(&mut self, job: &Name) {
        let Some(l) = self.jobs.get(job) else {
            return;
        };
        self.version += 1;
        let v = self.version;
        if let Some(h) = &l.host {
            self.by_host.entry(h.clone()).or_default().put(job, v);
        }
        for n in &l.nodes {
            self.by_node.entry(n.clone()).or_default().put(job, v);
        }
    }

    /// Hands `job` to `to` (none: no host alive).
    fn move_to(&mut self, job: &Name, to: Option<String>) {
        let Some(l) = self.jobs.get_mut(job) else {
            return;
        };
        if l.host == to {
            return;
        }
        let from = std::mem::replace(&mut l.host, to.clone());
        match &from {
            Some(h) => {
                if let Some(i) = self.by_host.get_mut(h) {
                    i.remove(job);
                }
                self.removal(job.clone(), from, Vec::new());
            }
            None => {
                self.unassigned.remove(job);
            }
        }
        if to.is_none() {
            self.unassigned.insert(job.clone());
        }
        self.touch(job);
    }

    /// `job` stops being routed.
    fn remove(&mut self, job: &str) {
        let Some(l) = self.jobs.remove(job) else {
            return;
        };
        let name = l.record.job;
        if let Some(h) = &l.host {
            if let Some(i) = self.by_host.get_mut(h) {
                i.remove(&name);
            }
        } else {
            self.unassigned.remove(&name);
        }
        for n in &l.nodes {
            if let Some(i) = self.by_node.get_mut(n) {
                i.remove(&name);
                if i.at.is_empty() {
                    self.by_node.remove(n);
                }
            }
        }
        if let Some(until) = l.linger_until {
            self.lingering.remove(&(millis(until), name.clone()));
        }
        self.removal(name, l.host, l.nodes);
    }

    fn removal(&mut self, job: Name, host: Option<String>, nodes: Vec<Name>) {
        self.version += 1;
        self.removals.push_back(Removal {
            version: self.version,
            job,
            host,
            nodes,
        });
        while self.removals.len() > self.max_removals {
            if let Some(r) = self.removals.pop_front() {
                self.horizon = r.version;
            }
        }
    }
}

/// Seconds to whole milliseconds, for ordering (negative and NaN as 0).
fn millis(s: f64) -> u64 {
    if s.is_finite() && s > 0.0 {
        (s * 1000.0) as u64
    } else {
        0
    }
}

#[path = "routing_delta.rs"]
mod delta;

#[cfg(test)]
#[path = "routing_tests.rs"]
mod tests;
