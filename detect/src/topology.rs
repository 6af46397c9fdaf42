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
        for p in ranks.values() {
            let Some(gpu) = p.gpu else { continue };
            let key = (p.node.clone(), gpu);
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
            self.jobs.insert(
                rec.job.clone(),
                Job {
                    record: rec.clone(),
                    ranks,
                },
            );
        }
        finished
    }

    pub fn job(&self, job: &Name) -> Option<&Job> {
        self.jobs.get(job)
    }

    pub fn holder(&self, node: &Name, gpu: u32) -> Option<&Holder> {
        self.holders.get(&(node.clone(), gpu))
    }

    pub fn jobs(&self) -> impl Iterator<Item = &Job> {
        self.jobs.values()
    }
}
