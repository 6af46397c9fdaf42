//! Job discovery from Slurm, run by an executor that has `[slurm]`: every
//! few seconds `squeue --json` is read and what changed since the last look
//! is told to the controller (topic `job`): a job that appeared, one whose
//! state changed, one that left the queue (with its final state from
//! `scontrol show job`, while Slurm still remembers it). The prolog and
//! epilog in `deploy/slurm/` report the same events as they happen, with
//! the ranks' placement; discovery is the safety net that catches the jobs
//! whose epilog never ran.

use keel_adapters::executors::slurm::{SlurmExecutor, SlurmJob};
use keel_adapters::executors::Journal;
use keel_model::{JobRecord, JobState, Message, Query};
use keel_transport::Link;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// What Slurm said at the last look, per job id.
#[derive(Debug, Default)]
pub struct Discovery {
    known: BTreeMap<u64, JobState>,
}

impl Discovery {
    /// The jobs to report after a look at the queue: new or changed ones,
    /// and the ids of those that left it.
    pub fn step<'a>(&mut self, listed: &'a [SlurmJob]) -> (Vec<&'a SlurmJob>, Vec<u64>) {
        let changed: Vec<&SlurmJob> = listed
            .iter()
            .filter(|j| self.known.get(&j.job_id) != Some(&j.job_state()))
            .collect();
        let gone: Vec<u64> = self
            .known
            .keys()
            .filter(|id| !listed.iter().any(|j| j.job_id == **id))
            .copied()
            .collect();
        self.known = listed.iter().map(|j| (j.job_id, j.job_state())).collect();
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
}
