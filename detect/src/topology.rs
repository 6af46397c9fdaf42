//! What the detectors know of jobs: where each rank runs (node, GPU, NIC),
//! and which job holds each GPU. Fed by `job` records; a later record for a
//! job replaces the earlier one.

use keel_model::{JobRecord, JobState, Name, Timestamp};
use rustc_hash::FxHashMap as HashMap;

/// Where one rank runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub node: Name,
    pub gpu: Option<u32>,
    pub nic: Option<Name>,
}

#[derive(Debug, Clone)]
pub struct Job {
    pub record: JobRecord,
    pub ranks: HashMap<u32, Placement>,
    /// When a rank of the job last left a collective (trace time), if ever.
    pub last_collective: Option<Timestamp>,
}

/// Who holds a GPU, as the latest job records say.
#[derive(Debug, Clone, PartialEq)]
pub struct Holder {
    pub job: Name,
    pub state: JobState,
    pub since: Timestamp,
}

#[derive(Debug, Default)]
pub struct Topology {
    jobs: HashMap<Name, Job>,
    holders: HashMap<(Name, u32), Holder>,
    /// Nodes for which some job record carried Slurm's GPU allocation
    /// (`node_gpus`): there, a GPU no job holds belongs to no job.
    allocated: rustc_hash::FxHashSet<Name>,
    /// Per node, the running jobs with ranks there whose records carry no
    /// `node_gpus` for it: while any is there, which GPUs are free on the
    /// node is not known.
    unmapped: HashMap<Name, rustc_hash::FxHashSet<Name>>,
}

impl Topology {
    /// Applies a job record. Returns true when the job has finished.
    pub fn apply(&mut self, rec: &JobRecord) -> bool {
        let mut ranks = HashMap::default();
        for (node, rs) in &rec.ranks {
            for &r in rs {
                ranks.insert(
                    r,
                    Placement {
                        node: node.clone(),
                        gpu: rec.gpus.get(&r).copied(),
                        nic: rec.nics.get(&r).cloned(),
                    },
                );
            }
        }
        // Slurm's allocation when the record has it; the ranks' GPUs otherwise.
        let mut held: Vec<(Name, u32)> = Vec::new();
        for (node, gpus) in &rec.node_gpus {
            self.allocated.insert(node.clone());
            held.extend(gpus.iter().map(|g| (node.clone(), *g)));
        }
        for p in ranks.values() {
            let Some(gpu) = p.gpu else { continue };
            if !rec.node_gpus.contains_key(&p.node) {
                held.push((p.node.clone(), gpu));
            }
        }
        for node in rec.ranks.keys() {
            let set = self.unmapped.entry(node.clone()).or_default();
            if rec.state.is_finished() || rec.node_gpus.contains_key(node) {
                set.remove(&rec.job);
            } else {
                set.insert(rec.job.clone());
            }
            if set.is_empty() {
                self.unmapped.remove(node);
            }
        }
        held.sort();
        held.dedup();
        // A record that says which GPUs the job holds replaces what earlier
        // records said: a GPU it no longer names is no longer its.
        if !held.is_empty() {
            self.holders
                .retain(|k, h| h.job != rec.job || held.binary_search(k).is_ok());
        }
        for key in held {
            let keep_running_other = self.holders.get(&key).is_some_and(|h| {
                h.job != rec.job && h.state == JobState::Running && rec.state.is_finished()
            });
            if keep_running_other {
                continue;
            }
            let since = match self.holders.get(&key) {
                Some(h) if h.job == rec.job && h.state == rec.state => h.since,
                _ => rec.ts,
            };
            self.holders.insert(
                key,
                Holder {
                    job: rec.job.clone(),
                    state: rec.state,
                    since,
                },
            );
        }
        let finished = rec.state.is_finished();
        if finished {
            self.jobs.remove(&rec.job);
        } else {
            let last_collective = self.jobs.get(&rec.job).and_then(|j| j.last_collective);
            self.jobs.insert(
                rec.job.clone(),
                Job {
                    record: rec.clone(),
                    ranks,
                    last_collective,
                },
            );
        }
        finished
    }

    /// Notes that a rank of `job` left a collective at `ts`.
    pub fn collective_seen(&mut self, job: &Name, ts: Timestamp) {
        if let Some(j) = self.jobs.get_mut(job) {
            j.last_collective = Some(j.last_collective.map_or(ts, |t| t.max(ts)));
        }
    }

    pub fn job(&self, job: &Name) -> Option<&Job> {
        self.jobs.get(job)
    }

    pub fn holder(&self, node: &Name, gpu: u32) -> Option<&Holder> {
        self.holders.get(&(node.clone(), gpu))
    }

    /// Whether Slurm's GPU allocation on `node` is known: some job record
    /// carried `node_gpus` for it, and every running job with ranks there
    /// does (a job placed by an older prolog, without its GPUs, may hold
    /// any of them).
    pub fn allocation_known(&self, node: &Name) -> bool {
        self.allocated.contains(node) && !self.unmapped.contains_key(node)
    }

    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }
}
