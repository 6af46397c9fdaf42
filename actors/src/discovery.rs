//! Job discovery from Slurm, run by an executor that has `[slurm]`: every
//! few seconds `squeue --json` is read and what changed since the last look
//! is told to the controller (topic `job`): a job that appeared, one whose
//! state changed, one that left the queue (with its final state from
//! `scontrol show job`, while Slurm still remembers it). The prolog and
//! epilog in `deploy/slurm/` report the same events as they happen, with
//! the ranks' placement; discovery is the safety net that catches the jobs
//! whose epilog never ran.
//!
//! Each look is one pass over the listing (hash maps, O(n) in the jobs
//! listed). Slurm is asked for the whole queue each time: `squeue` has no
//! option to list only the jobs changed since a time (its `--iterate` only
//! repeats the listing). slurmrestd's `GET /slurm/v0.0.4x/jobs` does take
//! `update_time` ("Filter jobs since update timestamp" in its OpenAPI
//! description); an executor that talks to slurmrestd instead of running
//! `squeue` could pass the time of its last look there.

use keel_adapters::executors::slurm::{SlurmExecutor, SlurmJob};
use keel_adapters::executors::Journal;
use keel_model::{JobRecord, JobState, Message, Query};
use keel_transport::Link;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

/// What Slurm said at the last look, per job id.
#[derive(Debug, Default)]
pub struct Discovery {
    known: HashMap<u64, JobState>,
}

impl Discovery {
    /// The jobs to report after a look at the queue: new or changed ones,
    /// and the ids of those that left it (in id order). O(n) in the jobs
    /// listed and known. A job listed twice counts once, as last listed.
    pub fn step<'a>(&mut self, listed: &'a [SlurmJob]) -> (Vec<&'a SlurmJob>, Vec<u64>) {
        let mut now: HashMap<u64, JobState> = HashMap::with_capacity(listed.len());
        let mut changed: Vec<&SlurmJob> = Vec::new();
        let mut reported: HashSet<u64> = HashSet::new();
        for j in listed {
            let state = j.job_state();
            now.insert(j.job_id, state);
            if self.known.get(&j.job_id) != Some(&state) && reported.insert(j.job_id) {
                changed.push(j);
            }
        }
        let mut gone: Vec<u64> = self
            .known
            .keys()
            .filter(|id| !now.contains_key(id))
            .copied()
            .collect();
        gone.sort_unstable();
        self.known = now;
        (changed, gone)
    }
}

/// Looks at the queue every `every` and tells the controller (any replica
/// that answers) what changed. Rank placement is left to the prolog unless
/// `ranks_per_node` says how many ranks each node runs.
pub fn spawn(
    links: Arc<Vec<Arc<Link>>>,
    every: Duration,
    ranks_per_node: u32,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut d = Discovery::default();
        loop {
            let look = tokio::task::spawn_blocking(move || {
                let records = look(&mut d, ranks_per_node);
                (d, records)
            })
            .await;
            match look {
                Ok((back, records)) => {
                    d = back;
                    match records {
                        Ok(records) => {
                            for r in records {
                                tell(&links, &r).await;
                            }
                        }
                        Err(e) => tracing::warn!(error = %e, "squeue: jobs not discovered"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "job discovery stopped");
                    return;
                }
            }
            tokio::time::sleep(every).await;
        }
    })
}

/// One look at Slurm (blocking: it runs squeue and scontrol).
fn look(
    d: &mut Discovery,
    ranks_per_node: u32,
) -> Result<Vec<JobRecord>, keel_adapters::ExecError> {
    let mut slurm = SlurmExecutor::new(Journal::in_memory());
    let listed = slurm.jobs()?;
    let now = crate::sources::unix_now();
    let (changed, gone) = d.step(&listed);
    let mut records: Vec<JobRecord> = changed
        .iter()
        .map(|j| j.to_record(now, ranks_per_node))
        .collect();
    for id in gone {
        let last = slurm
            .job(id)
            .ok()
            .flatten()
            .map(|j| j.job_state())
            .filter(|s| s.is_finished())
            .unwrap_or(JobState::Completed);
        records.push(JobRecord::state_only(&id.to_string(), last, now));
    }
    Ok(records)
}

async fn tell(links: &[Arc<Link>], record: &JobRecord) {
    let Ok(json) = serde_json::to_string(record) else {
        return;
    };
    for link in links {
        let q = Query {
            id: 0,
            topic: "job".into(),
            params: BTreeMap::from([("record".to_string(), json.clone())]),
        };
        match link
            .request(Message::Query(q), Duration::from_secs(2))
            .await
        {
            Ok(Message::QueryReply(r)) if r.ok => {
                tracing::info!(job = %record.job, state = %record.state, "job discovered in Slurm");
                return;
            }
            other => tracing::debug!(?other, "job not told to this replica"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(id: u64, state: &str) -> SlurmJob {
        SlurmJob {
            job_id: id,
            state: state.into(),
            nodes: vec!["n1".into()],
            user: "u".into(),
            account: String::new(),
            partition: "p".into(),
            name: "j".into(),
            excluded_nodes: Vec::new(),
            reason: String::new(),
            gpus: Default::default(),
        }
    }

    #[test]
    fn only_what_changed_is_reported() {
        let mut d = Discovery::default();
        let first = [job(1, "PENDING"), job(2, "RUNNING")];
        let (changed, gone) = d.step(&first);
        assert_eq!(changed.len(), 2);
        assert!(gone.is_empty());
        let same = [job(1, "PENDING"), job(2, "RUNNING")];
        assert_eq!(d.step(&same), (vec![], vec![]));
        let later = [job(1, "RUNNING")];
        let (changed, gone) = d.step(&later);
        assert_eq!(changed.iter().map(|j| j.job_id).collect::<Vec<_>>(), [1]);
        assert_eq!(gone, [2]);
    }

    #[test]
    fn a_large_queue_is_diffed_in_one_pass() {
        let mut d = Discovery::default();
        let all: Vec<SlurmJob> = (0..50_000).map(|i| job(i, "RUNNING")).collect();
        assert_eq!(d.step(&all).0.len(), 50_000);
        // Every other job left, one changed.
        let mut half: Vec<SlurmJob> = (0..50_000).step_by(2).map(|i| job(i, "RUNNING")).collect();
        half[0] = job(0, "COMPLETING");
        let (changed, gone) = d.step(&half);
        assert_eq!(changed.iter().map(|j| j.job_id).collect::<Vec<_>>(), [0]);
        assert_eq!(gone.len(), 25_000);
        assert!(gone.iter().all(|id| id % 2 == 1));
        assert!(gone.windows(2).all(|w| w[0] < w[1]));
    }
}
