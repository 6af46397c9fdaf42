//! The Slurm adapter: job discovery, and `reclaim_zombie`, `drain_node`,
//! `resume_node` and `rebalance_ranks` through Slurm's own clients.
//!
//! Commands and their parameters:
//! - `reclaim_zombie`, target a job id; `node`, `gpu` and `state`, all
//!   required: the node and GPU index the finding is about and the Slurm
//!   state it assumed the job in. At the moment of acting the executor asks
//!   Slurm (`scontrol show job -d -o ID`) and cancels (`scancel ID`) only
//!   when the job still runs on that node, holds that GPU there (GRES
//!   `IDX`), and is in the assumed state; otherwise it refuses, naming what
//!   did not hold (state changed since the finding, not on the node, GPU
//!   mapping unknown, not holding that GPU). A job already ended or gone is
//!   "already done". Not reversible.
//! - `drain_node`, target a node; `reason` (optional). `scontrol update
//!   NodeName=N State=DRAIN Reason=keel: ...`: the reason always starts
//!   with `keel:`. Rollback resumes it (a keel drain only).
//! - `resume_node`, target a node. `State=RESUME`, only for a drain (or
//!   down) whose reason starts with `keel:`: an operator's drain is refused
//!   with its reason. Rollback drains it again (or sets it down, if it was
//!   down) with the reason it had.
//! - `rebalance_ranks`, target a job id; `node` (required): the node to take
//!   the job off. `scontrol requeuehold`, then `update JobId=ID
//!   ExcNodeList=...`, then `release`: Slurm refuses to change a running
//!   job's exclusions, and a plain requeue could start the job again on the
//!   same node before the exclusion lands. Not reversible.

use super::run::{argv, checked, Runner, SystemRunner};
use super::slurm_check::describe;
pub use super::slurm_check::{check_reclaim, check_resume, ReclaimTarget, Verdict, DRAIN_PREFIX};
pub use super::slurm_parse::{
    expand_hostlist, known_job_state, parse_scontrol_jobs, parse_scontrol_node, parse_squeue_json,
    Gpus, SlurmJob, SlurmNode,
};
use super::{
    seen_before, summarize, to_roll_back, undo_list, validate, Applied, Change, ExecCommand,
    ExecError, Executor, Journal, Outcome,
};
use keel_model::{Action, JobState};

/// The actions this executor carries out.
pub const ACTIONS: &[Action] = &[
    Action::ReclaimZombie,
    Action::DrainNode,
    Action::ResumeNode,
    Action::RebalanceRanks,
];

/// The longest drain reason passed on.
pub const MAX_REASON: usize = 200;

/// Paths of Slurm's clients (by default found on `PATH`).
#[derive(Debug, Clone)]
pub struct SlurmBins {
    pub squeue: String,
    pub scontrol: String,
    pub scancel: String,
}

impl Default for SlurmBins {
    fn default() -> Self {
        SlurmBins {
            squeue: "squeue".into(),
            scontrol: "scontrol".into(),
            scancel: "scancel".into(),
        }
    }
}

pub struct SlurmExecutor<R: Runner = SystemRunner> {
    runner: R,
    journal: Journal,
    pub bins: SlurmBins,
}

impl SlurmExecutor<SystemRunner> {
    pub fn new(journal: Journal) -> Self {
        SlurmExecutor::with_runner(SystemRunner::default(), journal)
    }
}

impl<R: Runner> SlurmExecutor<R> {
    pub fn with_runner(runner: R, journal: Journal) -> Self {
        SlurmExecutor {
            runner,
            journal,
            bins: SlurmBins::default(),
        }
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Every job `squeue --json` lists (recently ended ones included, with
    /// their final state); see [`SlurmExecutor::jobs_from`].
    pub fn jobs(&mut self) -> Result<Vec<SlurmJob>, ExecError> {
        self.jobs_from().map(|(jobs, _)| jobs)
    }

    /// Every job Slurm lists, and the commands that said so: `squeue
    /// --json`, or `scontrol show job -d` text where squeue has no JSON
    /// (or its JSON cannot be read). Where squeue's JSON leaves a placed
    /// job's GPUs unknown (its `gres_detail` is filled only on request),
    /// `scontrol show job -d` is asked once for the GRES detail of all
    /// jobs; if that fails the GPUs stay unknown, never guessed.
    pub fn jobs_from(&mut self) -> Result<(Vec<SlurmJob>, String), ExecError> {
        let squeue = argv([&self.bins.squeue, "--json"]);
        let detail = argv([&self.bins.scontrol, "show", "job", "-d"]);
        let mut jobs = match checked(&mut self.runner, &squeue)
            .and_then(|out| parse_squeue_json(&out.stdout))
        {
            Ok(jobs) => jobs,
            Err(first) => {
                // Both failing: the error says both, squeue's first.
                let both = |e: ExecError| ExecError::Parse {
                    what: "Slurm's job list".into(),
                    why: format!("squeue --json: {first}; then scontrol show job -d: {e}"),
                };
                let out = checked(&mut self.runner, &detail).map_err(both)?;
                let jobs = parse_scontrol_jobs(&out.stdout).map_err(both)?;
                return Ok((jobs, super::run::show(&detail)));
            }
        };
        let unknown = |j: &SlurmJob| !j.nodes.is_empty() && !j.gpus.is_known();
        if !jobs.iter().any(unknown) {
            return Ok((jobs, super::run::show(&squeue)));
        }
        let Ok(out) = checked(&mut self.runner, &detail) else {
            return Ok((jobs, super::run::show(&squeue)));
        };
        let Ok(text) = parse_scontrol_jobs(&out.stdout) else {
            return Ok((jobs, super::run::show(&squeue)));
        };
        for j in jobs.iter_mut().filter(|j| unknown(j)) {
            if let Some(t) = text
                .iter()
                .find(|t| t.job_id == j.job_id && t.nodes == j.nodes)
            {
                j.gpus = t.gpus.clone();
            }
        }
        Ok((
            jobs,
            format!(
                "{} + {}",
                super::run::show(&squeue),
                super::run::show(&detail)
            ),
        ))
    }

    /// One job from `scontrol show job -d -o ID` (with its GRES detail);
    /// None when Slurm no longer knows it.
    pub fn job(&mut self, id: u64) -> Result<Option<SlurmJob>, ExecError> {
        job_by_id(&mut self.runner, &self.bins.scontrol, id)
    }

    /// One node from `scontrol show node -o NAME`.
    pub fn node(&mut self, name: &str) -> Result<SlurmNode, ExecError> {
        validate::node_name("node", name)?;
        let a = argv([&self.bins.scontrol, "show", "node", "-o", name]);
        let out = self.runner.run(&a)?;
        if !out.success() {
            if out.text().contains("not found") {
                return Err(ExecError::NotFound {
                    what: "node",
                    name: name.to_string(),
                });
            }
            return Err(super::run::failed(&a, &out));
        }
        parse_scontrol_node(&out.stdout)
    }

    /// The argv that sets `node`'s state (`DRAIN`, `RESUME`, `DOWN`).
    pub fn node_state_argv(&self, node: &str, state: &str, reason: Option<&str>) -> Vec<String> {
        let mut a = argv([
            self.bins.scontrol.as_str(),
            "update",
            &format!("NodeName={node}"),
            &format!("State={state}"),
        ]);
        if let Some(r) = reason {
            a.push(format!("Reason={r}"));
        }
        a
    }

    fn set_node_state(
        &mut self,
        node: &str,
        state: &str,
        reason: Option<&str>,
    ) -> Result<(), ExecError> {
        let a = self.node_state_argv(node, state, reason);
        checked(&mut self.runner, &a).map(drop)
    }

    fn scontrol(&mut self, args: &[String]) -> Result<(), ExecError> {
        let mut a = vec![self.bins.scontrol.clone()];
        a.extend_from_slice(args);
        checked(&mut self.runner, &a).map(drop)
    }

    fn reclaim(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        validate::known_params(&cmd.params, &["node", "gpu", "state"])?;
        let id = validate::job_id("target", &cmd.target)?;
        let target = ReclaimTarget::from_params(id, &cmd.params)?;
        let now = self.job(id)?;
        match check_reclaim(&target, now.as_ref())? {
            Verdict::Ended(state) => Ok(Applied::new(
                Outcome::AlreadyDone,
                vec![Change::already("state", state.clone())],
                format!("job {id} already ended ({state})"),
            )),
            Verdict::Cancel => {
                let job = now.unwrap_or_default();
                checked(
                    &mut self.runner,
                    &argv([self.bins.scancel.clone(), id.to_string()]),
                )?;
                let changes = vec![Change::applied("state", Some(job.state), "CANCELLED")];
                Ok(Applied::new(
                    Outcome::Done,
                    changes,
                    format!(
                        "cancelled job {id} (scancel), checked first: on {}, holding GPU {} there, {}",
                        target.node, target.gpu, target.state
                    ),
                ))
            }
        }
    }

    fn drain(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        validate::known_params(&cmd.params, &["reason"])?;
        validate::node_name("target", &cmd.target)?;
        let reason = match cmd.params.get("reason") {
            Some(r) => {
                validate::text("reason", r, MAX_REASON)?;
                keel_reason(r)
            }
            None => keel_reason(&format!("{} ({})", cmd.action, cmd.idempotency_key)),
        };
        validate::text("reason", &reason, MAX_REASON + DRAIN_PREFIX.len() + 1)?;
        let node = self.node(&cmd.target)?;
        if node.is_drained() {
            return Ok(Applied::new(
                Outcome::AlreadyDone,
                vec![Change::already("state", node.state.clone())],
                format!(
                    "node {} already drained ({}: {})",
                    cmd.target, node.state, node.reason
                ),
            ));
        }
        self.set_node_state(&cmd.target, "DRAIN", Some(&reason))?;
        let changes = vec![Change::applied("state", Some(node.state), "DRAIN")];
        Ok(Applied::new(
            Outcome::Done,
            changes,
            format!("drained node {} (reason {reason:?})", cmd.target),
        ))
    }

    fn resume(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        validate::known_params(&cmd.params, &[])?;
        validate::node_name("target", &cmd.target)?;
        let node = self.node(&cmd.target)?;
        if !node.is_drained() && !node.is_down() {
            return Ok(Applied::new(
                Outcome::AlreadyDone,
                vec![Change::already("state", node.state.clone())],
                format!("node {} already in service ({})", cmd.target, node.state),
            ));
        }
        check_resume(&node)?;
        self.set_node_state(&cmd.target, "RESUME", None)?;
        // The reason first, so that undoing (last change first) restores the
        // state with the reason at hand.
        let changes = vec![
            Change::applied("reason", Some(node.reason.clone()), ""),
            Change::applied("state", Some(node.state), "RESUME"),
        ];
        Ok(Applied::new(
            Outcome::Done,
            changes,
            format!("resumed node {}", cmd.target),
        ))
    }

    fn rebalance(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        validate::known_params(&cmd.params, &["node"])?;
        let id = validate::job_id("target", &cmd.target)?;
        let bad = cmd
            .params
            .get("node")
            .ok_or_else(|| ExecError::invalid("node", "", "required: the node to exclude"))?;
        validate::node_name("node", bad)?;
        let job = self.job(id)?.ok_or_else(|| ExecError::NotFound {
            what: "job",
            name: id.to_string(),
        })?;
        let state = job.job_state();
        if state.is_finished() {
            return Err(ExecError::Unsupported {
                target: format!("job {id}"),
                why: format!("it has ended ({}): nothing to requeue", job.state),
            });
        }
        let on_bad = job.nodes.iter().any(|n| n == bad);
        let excluded = job.excluded_nodes.iter().any(|n| n == bad);
        if excluded && !on_bad {
            return Ok(Applied::new(
                Outcome::AlreadyDone,
                vec![Change::already(
                    "excluded_nodes",
                    job.excluded_nodes.join(","),
                )],
                format!("job {id} already excludes {bad} ({})", job.state),
            ));
        }
        let running = !matches!(state, JobState::Pending);
        if running && !on_bad {
            return Err(ExecError::invalid(
                "node",
                bad,
                format!(
                    "job {id} does not run on it (it runs on {}); not requeued",
                    describe(&job.nodes)
                ),
            ));
        }
        for n in &job.excluded_nodes {
            validate::node_name("excluded node from Slurm", n)?;
        }
        let mut exclude = job.excluded_nodes.clone();
        if !excluded {
            exclude.push(bad.clone());
        }
        let exc = format!("ExcNodeList={}", exclude.join(","));
        let jid = id.to_string();
        let mut changes = Vec::new();
        if running {
            self.scontrol(&argv(["requeuehold", jid.as_str()]))?;
            changes.push(Change::applied(
                "state",
                Some(job.state.clone()),
                "REQUEUED",
            ));
        }
        let update = self.scontrol(&argv(["update", &format!("JobId={jid}"), &exc]));
        if running {
            // Release whatever the update did: a job left held runs nowhere.
            let release = self.scontrol(&argv(["release", jid.as_str()]));
            if let Err(e) = update {
                return Err(ExecError::Partial {
                    error: Box::new(e),
                    undo: match release {
                        Ok(()) => {
                            format!("job {id} was requeued and released without the exclusion")
                        }
                        Err(r) => format!("job {id} was requeued and is still held: {r}"),
                    },
                });
            }
            release?;
        } else {
            update?;
        }
        changes.push(Change::applied(
            "excluded_nodes",
            Some(job.excluded_nodes.join(",")),
            exclude.join(","),
        ));
        Ok(Applied::new(
            Outcome::Done,
            changes,
            format!(
                "{} job {id} excluding {bad} (was on {})",
                if running {
                    "requeued"
                } else {
                    "updated pending"
                },
                describe(&job.nodes)
            ),
        ))
    }
}

/// One job from `scontrol show job -d -o ID`, run with `scontrol`; None
/// when Slurm no longer knows it (`Invalid job id`). Shared by the Slurm
/// executor and the node's GPU process executor.
pub fn job_by_id(
    runner: &mut dyn Runner,
    scontrol: &str,
    id: u64,
) -> Result<Option<SlurmJob>, ExecError> {
    let a = argv([
        scontrol.to_string(),
        "show".into(),
        "job".into(),
        "-d".into(),
        "-o".into(),
        id.to_string(),
    ]);
    let out = runner.run(&a)?;
    if !out.success() {
        if out.text().contains("Invalid job id") {
            return Ok(None);
        }
        return Err(super::run::failed(&a, &out));
    }
    Ok(parse_scontrol_jobs(&out.stdout)?
        .into_iter()
        .find(|j| j.job_id == id))
}

/// The reason as keel sets it: `keel: ...` (a reason that already starts
/// with the prefix is kept as it is).
pub fn keel_reason(reason: &str) -> String {
    let r = reason.trim();
    if r.starts_with(DRAIN_PREFIX) {
        r.to_string()
    } else {
        format!("{DRAIN_PREFIX} {r}")
    }
}

impl<R: Runner> Executor for SlurmExecutor<R> {
    fn name(&self) -> &'static str {
        "slurm"
    }

    fn handles(&self, action: Action) -> bool {
        ACTIONS.contains(&action)
    }

    fn apply(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        if let Some(done) = seen_before(self, &self.journal, cmd)? {
            return Ok(done);
        }
        let applied = match cmd.action {
            Action::ReclaimZombie => self.reclaim(cmd)?,
            Action::DrainNode => self.drain(cmd)?,
            Action::ResumeNode => self.resume(cmd)?,
            Action::RebalanceRanks => self.rebalance(cmd)?,
            other => {
                return Err(ExecError::WrongAction {
                    executor: "slurm",
                    action: other,
                })
            }
        };
        self.journal.record(cmd, &applied)?;
        Ok(applied)
    }

    fn rollback(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        let applied = match to_roll_back(self, &self.journal, cmd)? {
            Ok(a) => a,
            Err(already) => return Ok(already),
        };
        let undo = undo_list(&applied);
        let mut changes = Vec::new();
        match cmd.action {
            Action::ReclaimZombie | Action::RebalanceRanks if !undo.is_empty() => {
                return Err(ExecError::NotReversible {
                    action: cmd.action,
                    why: "a cancelled or requeued job cannot be put back as it was".into(),
                })
            }
            Action::DrainNode if !undo.is_empty() => {
                let node = self.node(&cmd.target)?;
                if node.is_drained() && check_resume(&node).is_ok() {
                    self.set_node_state(&cmd.target, "RESUME", None)?;
                    changes.push(Change::applied("state", Some(node.state), "RESUME"));
                } else {
                    changes.push(Change::already("state", node.state));
                }
            }
            Action::ResumeNode if !undo.is_empty() => {
                let before = applied.previous();
                let was = before.get("state").cloned().unwrap_or_default();
                let reason = match before.get("reason") {
                    Some(r)
                        if !r.trim().is_empty()
                            && validate::text("reason", r, MAX_REASON).is_ok() =>
                    {
                        r.clone()
                    }
                    _ => format!("keel rollback of {}", cmd.idempotency_key),
                };
                let target = if was.contains("DRAIN") || !was.contains("DOWN") {
                    "DRAIN"
                } else {
                    "DOWN"
                };
                let node = self.node(&cmd.target)?;
                if (target == "DRAIN" && node.is_drained()) || (target == "DOWN" && node.is_down())
                {
                    changes.push(Change::already("state", node.state));
                } else {
                    self.set_node_state(&cmd.target, target, Some(&reason))?;
                    changes.push(Change::applied("state", Some(node.state), target));
                }
            }
            _ => {}
        }
        let detail = if changes.is_empty() {
            format!(
                "nothing to roll back for {} {}: it changed nothing",
                cmd.action, cmd.target
            )
        } else {
            format!(
                "rolled back {} {}: {}",
                cmd.action,
                cmd.target,
                summarize(&changes)
            )
        };
        self.journal.mark_rolled_back(&cmd.idempotency_key)?;
        Ok(Applied::new(Outcome::RolledBack, changes, detail))
    }
}

#[cfg(test)]
#[path = "slurm_tests.rs"]
mod tests;
