//! Trace records (`spec/trace-format.md`): what sensors saw, one per line.
//!
//! `Record` serialises to the spec's JSON shape (`"t"` names the type). Parsing
//! lives in `adapters`, which reads these lines fast and tolerantly.

use crate::{MetricLabels, MetricName, Name, Timestamp};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "t", rename_all = "snake_case")]
pub enum Record {
    /// Boxed: job records are rare and large, and every record moves
    /// through the reorder window by value.
    Job(Box<JobRecord>),
    Collective(CollectiveRecord),
    Metric(MetricSample),
    Request(RequestRecord),
}

impl Record {
    /// When the record was produced, on its node's clock.
    pub fn ts(&self) -> Timestamp {
        match self {
            Record::Job(r) => r.ts,
            Record::Collective(r) => r.ts,
            Record::Metric(r) => r.ts,
            Record::Request(r) => r.ts,
        }
    }
}

/// Slurm job states, plus `Other` for states keel has no use for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum JobState {
    Pending,
    Running,
    Completing,
    Completed,
    Failed,
    Timeout,
    OutOfMemory,
    Cancelled,
    NodeFail,
    Preempted,
    Suspended,
    #[serde(other)]
    Other,
}

impl JobState {
    /// Slurm's spelling, as the trace carries it.
    pub fn wire(self) -> &'static str {
        match self {
            JobState::Pending => "PENDING",
            JobState::Running => "RUNNING",
            JobState::Completing => "COMPLETING",
            JobState::Completed => "COMPLETED",
            JobState::Failed => "FAILED",
            JobState::Timeout => "TIMEOUT",
            JobState::OutOfMemory => "OUT_OF_MEMORY",
            JobState::Cancelled => "CANCELLED",
            JobState::NodeFail => "NODE_FAIL",
            JobState::Preempted => "PREEMPTED",
            JobState::Suspended => "SUSPENDED",
            JobState::Other => "OTHER",
        }
    }

    /// The job no longer runs: any GPU memory still held for it is held by nothing useful.
    pub fn is_finished(self) -> bool {
        matches!(
            self,
            JobState::Completed
                | JobState::Failed
                | JobState::Timeout
                | JobState::OutOfMemory
                | JobState::Cancelled
                | JobState::NodeFail
                | JobState::Preempted
        )
    }
}

impl std::fmt::Display for JobState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.wire())
    }
}

/// Job topology; a later record for the same job replaces the earlier one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    pub ts: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Name>,
    pub job: Name,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<Name>,
    #[serde(default)]
    pub nodes: Vec<Name>,
    /// node -> ranks on it
    #[serde(default)]
    pub ranks: BTreeMap<Name, Vec<u32>>,
    /// rank -> GPU index on its node
    #[serde(default)]
    pub gpus: BTreeMap<u32, u32>,
    /// rank -> network device carrying its traffic
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub nics: BTreeMap<u32, Name>,
    /// node -> the GPU indices Slurm allocated to the job there (GRES
    /// `IDX` of `scontrol show job -d`, `SLURM_JOB_GPUS` in the prolog).
    /// Empty when not known: which GPUs the job holds is then unknown, and
    /// no rule may reclaim on that guess. An optional field beyond the trace
    /// format's job record; readers of older traces get it empty.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_gpus: BTreeMap<Name, Vec<u32>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tp: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pp: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replica: Option<Name>,
}

impl JobRecord {
    /// A record that says only the job's state: no placement (the
    /// controller keeps the placement it knows for such a record).
    pub fn state_only(job: &str, state: JobState, ts: Timestamp) -> JobRecord {
        JobRecord {
            ts,
            node: None,
            job: job.into(),
            state,
            tenant: None,
            nodes: Vec::new(),
            ranks: BTreeMap::new(),
            gpus: BTreeMap::new(),
            nics: BTreeMap::new(),
            node_gpus: Default::default(),
            tp: None,
            pp: None,
            replica: None,
        }
    }

    /// A record without placement (an epilog's end, `keel job end`) takes
    /// the placement `known` has: nodes, ranks, their GPUs and NICs,
    /// Slurm's GPU allocation, tp and tenant. A record with placement is
    /// left as it is.
    ///
    /// A record of an ended job with the same ranks but no GPUs keeps the
    /// GPUs known: Slurm no longer says which GPUs a job held once it has
    /// ended, and that is when a GPU it left held must still be traced to
    /// it.
    pub fn keep_placement_of(&mut self, known: &JobRecord) {
        if !self.ranks.is_empty() {
            // Slurm's detail of an ended job lists its nodes with no GPU
            // index, and discovery then guesses rank r on GPU r: neither
            // says what the job held while it ran.
            let told_none = self.node_gpus.values().all(Vec::is_empty);
            if self.state.is_finished() && self.ranks == known.ranks && told_none {
                self.node_gpus.clone_from(&known.node_gpus);
                self.gpus.clone_from(&known.gpus);
            }
            return;
        }
        self.nodes.clone_from(&known.nodes);
        self.ranks.clone_from(&known.ranks);
        self.gpus.clone_from(&known.gpus);
        self.nics.clone_from(&known.nics);
        if self.node_gpus.is_empty() {
            self.node_gpus.clone_from(&known.node_gpus);
        }
        self.tp = self.tp.or(known.tp);
        self.tenant = self.tenant.take().or_else(|| known.tenant.clone());
    }

    /// The node a rank runs on.
    pub fn node_of(&self, rank: u32) -> Option<&Name> {
        self.ranks
            .iter()
            .find(|(_, ranks)| ranks.contains(&rank))
            .map(|(node, _)| node)
    }

    pub fn rank_count(&self) -> usize {
        self.ranks.values().map(Vec::len).sum()
    }
}

/// One rank's part in one collective operation. `arrive` and `ts` are on the
/// rank's node clock; `dur_us` is measured on that one clock, so it is the
/// only timing that compares across nodes without clock sync.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CollectiveRecord {
    pub ts: Timestamp,
    pub node: Name,
    pub job: Name,
    pub rank: u32,
    pub op: Name,
    pub seq: u64,
    #[serde(default)]
    pub bytes: u64,
    pub arrive: Timestamp,
    pub dur_us: f64,
}

/// One sample of a gauge or counter, with a finite value.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSample {
    pub ts: Timestamp,
    pub node: Name,
    pub name: MetricName,
    #[serde(default)]
    pub labels: MetricLabels,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RequestPhase {
    Arrive,
    FirstToken,
    Done,
}

/// A serving event (north-south traffic).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RequestRecord {
    pub ts: Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Name>,
    pub id: Name,
    pub phase: RequestPhase,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_tokens: Option<u32>,
}

#[cfg(test)]
mod placement_tests {
    use super::*;

    fn placed(state: JobState, gpus: &[u32]) -> JobRecord {
        let mut r = JobRecord::state_only("7", state, 1.0);
        r.nodes = vec!["n1".into()];
        r.ranks = BTreeMap::from([("n1".into(), vec![0])]);
        if !gpus.is_empty() {
            r.node_gpus = BTreeMap::from([("n1".into(), gpus.to_vec())]);
            r.gpus = BTreeMap::from([(0, gpus[0])]);
        }
        r
    }

    #[test]
    fn an_end_told_without_gpus_keeps_the_gpus_known() {
        let known = placed(JobState::Running, &[1]);
        // Slurm's record of the ended job: same placement, no GRES index
        // (or its node listed with none), rank 0 guessed on GPU 0.
        for told in [BTreeMap::new(), BTreeMap::from([("n1".into(), vec![])])] {
            let mut end = placed(JobState::Failed, &[]);
            end.node_gpus = told;
            end.gpus = BTreeMap::from([(0, 0)]);
            end.keep_placement_of(&known);
            assert_eq!(end.node_gpus, known.node_gpus);
            assert_eq!(end.gpus, known.gpus);
        }
        // An end without any placement takes the whole placement.
        let mut bare = JobRecord::state_only("7", JobState::Failed, 2.0);
        bare.keep_placement_of(&known);
        assert_eq!(
            (bare.ranks, bare.node_gpus),
            (known.ranks.clone(), known.node_gpus.clone())
        );
        // A running job told on other GPUs is told right: nothing is kept.
        let mut moved = placed(JobState::Running, &[3]);
        moved.keep_placement_of(&known);
        assert_eq!(moved.node_gpus["n1"], vec![3]);
    }
}
