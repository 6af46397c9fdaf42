//! The checks the Slurm executor makes at the moment of acting, sans-IO:
//! before `scancel`, that the job Slurm describes now is the one the
//! finding named (on that node, holding that GPU, in that state); before
//! `resume_node`, that the drain is keel's own.

use super::slurm_parse::{known_job_state, SlurmJob, SlurmNode};
use super::ExecError;
use keel_model::JobState;

/// The prefix of every drain reason keel sets; `resume_node` resumes only
/// drains whose reason starts with it, so that an operator's own drain is
/// never undone by keel.
pub const DRAIN_PREFIX: &str = "keel:";

/// What a `reclaim_zombie` command says about its target, from its params:
/// `node` (the node the finding saw the GPU on), `gpu` (the GPU index
/// there) and `state` (the Slurm state the finding assumed, e.g. `RUNNING`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReclaimTarget {
    pub job: u64,
    pub node: String,
    pub gpu: u32,
    /// Slurm's spelling, as the command gave it.
    pub state: String,
    /// keel's reading of `state`.
    pub assumed: JobState,
}

impl ReclaimTarget {
    /// Reads the params; every one is required, and an error names the
    /// missing or malformed one (nothing is asked of Slurm then).
    pub fn from_params(
        job: u64,
        params: &std::collections::BTreeMap<String, String>,
    ) -> Result<Self, ExecError> {
        let need = |name: &str, what: &str| {
            params.get(name).cloned().ok_or_else(|| {
                ExecError::invalid(
                    name,
                    "",
                    format!("required: {what}, so that the target can be checked in Slurm before scancel"),
                )
            })
        };
        let node = need("node", "the node the finding is about")?;
        super::validate::node_name("node", &node)?;
        let gpu_s = need("gpu", "the GPU index the finding is about")?;
        let gpu = gpu_s
            .parse::<u32>()
            .map_err(|_| ExecError::invalid("gpu", &gpu_s, "a GPU index is a small number"))?;
        let state = need(
            "state",
            "the job state the finding assumed (RUNNING, FAILED, ...)",
        )?
        .to_ascii_uppercase();
        let assumed = known_job_state(&state).ok_or_else(|| {
            ExecError::invalid("state", &state, "not a Slurm job state keel knows")
        })?;
        Ok(ReclaimTarget {
            job,
            node,
            gpu,
            state,
            assumed,
        })
    }
}

/// What the check of a reclaim decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Slurm no longer runs the job (gone, or ended): nothing to cancel.
    Ended(String),
    /// Every point holds: cancel.
    Cancel,
}

/// Checks `t` against what Slurm says now (`now`: None when Slurm no
/// longer knows the job). Refusals are `Invalid` errors on the param that
/// did not hold, in this order: the state changed since the finding (a
/// job that runs, or waits, in another state than assumed), the job does
/// not run on the node, which GPUs it holds there is unknown, it does not
/// hold that GPU.
pub fn check_reclaim(t: &ReclaimTarget, now: Option<&SlurmJob>) -> Result<Verdict, ExecError> {
    let Some(job) = now else {
        return Ok(Verdict::Ended("gone".into()));
    };
    let state = job.job_state();
    if state.is_finished() {
        return Ok(Verdict::Ended(job.state.clone()));
    }
    if state != t.assumed {
        return Err(ExecError::invalid(
            "state",
            &t.state,
            format!(
                "job {} changed state since the finding: it assumed {}, Slurm says {} now; not cancelled",
                t.job, t.state, job.state
            ),
        ));
    }
    if !job.nodes.contains(&t.node) {
        return Err(ExecError::invalid(
            "node",
            &t.node,
            format!(
                "job {} does not run on it (it runs on {}); not cancelled",
                t.job,
                describe(&job.nodes)
            ),
        ));
    }
    match job.gpus.on(&t.node) {
        Err(why) => Err(ExecError::invalid(
            "gpu",
            &t.gpu.to_string(),
            format!(
                "which GPUs job {} holds on {} is unknown ({why}); not cancelled on a guess",
                t.job, t.node
            ),
        )),
        Ok(held) => {
            let held = held.unwrap_or(&[]);
            if held.contains(&t.gpu) {
                Ok(Verdict::Cancel)
            } else {
                Err(ExecError::invalid(
                    "gpu",
                    &t.gpu.to_string(),
                    format!(
                        "job {} does not hold GPU {} on {} (Slurm allocated it {}); not cancelled",
                        t.job,
                        t.gpu,
                        t.node,
                        describe_gpus(held)
                    ),
                ))
            }
        }
    }
}

/// Whether `resume_node` may resume this node: only a drain (or down) whose
/// reason carries [`DRAIN_PREFIX`]; an error names the reason otherwise.
pub fn check_resume(node: &SlurmNode) -> Result<(), ExecError> {
    if node.reason.trim_start().starts_with(DRAIN_PREFIX) {
        return Ok(());
    }
    Err(ExecError::invalid(
        "target",
        &node.name,
        format!(
            "it is {} with reason {:?}, not a drain keel made (reasons starting {DRAIN_PREFIX:?}); an operator's drain is left alone",
            node.state, node.reason
        ),
    ))
}

/// `a,b`, or `no node`.
pub fn describe(nodes: &[String]) -> String {
    if nodes.is_empty() {
        "no node".to_string()
    } else {
        nodes.join(",")
    }
}

fn describe_gpus(g: &[u32]) -> String {
    if g.is_empty() {
        "no GPU there".to_string()
    } else {
        let l: Vec<String> = g.iter().map(u32::to_string).collect();
        format!("GPUs {}", l.join(","))
    }
}
