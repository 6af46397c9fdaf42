//! The node's `reclaim_zombie` for a leftover process: a process that still
//! holds a GPU after its Slurm job ended (or that belongs to no job), with
//! no Slurm job left to cancel. It runs on the GPU's node and kills that
//! process, only after checking there that it holds the GPU and belongs to
//! no job Slurm still runs.
//!
//! Command: target a GPU index on this node (the executor actor turns
//! `node/N/gpu/G` into `G`); params `node` and `gpu` (required, `gpu`
//! equal to the target), `job` (optional: the ended job the finding named)
//! and `state` (optional: the state the finding assumed, informative).
//! A MIG instance (`gpu_instance`) is refused: `nvidia-smi` lists a MIG
//! GPU's processes under the whole GPU, so those of one instance cannot be
//! told apart from the others' yet.
//!
//! At the moment of acting it reads, in order:
//! 1. `nvidia-smi --query-gpu=index,uuid` for the GPU's UUID, and
//!    `nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory` for the
//!    processes holding it (the driver's own tool, on every GPU node);
//! 2. for each process, `/proc/PID/stat` (its start time), then its Slurm
//!    job: `/proc/PID/cgroup` (a `job_<id>` component, as proctrack/cgroup
//!    places tasks), else `SLURM_JOB_ID` in `/proc/PID/environ`, else none;
//! 3. `scontrol show job -d -o J` for each such job's state (a job Slurm no
//!    longer knows has ended).
//!
//! It refuses when any process on the GPU belongs to a job that has not
//! ended, when one is pid 1 or the executor itself, or, with `job`, when
//! one belongs to another job or to none (see
//! [`gpu_process_check::decide`](super::gpu_process_check::decide)). No
//! process on the GPU: "already done". Otherwise each process gets SIGTERM,
//! `grace` to exit, then SIGKILL; before each signal its start time is read
//! again, and a process whose pid now names another process (start time
//! changed) is not signalled. Not reversible.

pub use super::gpu_process_check::{
    decide, describe, parse_compute_apps, parse_gpu_list, parse_stat, GpuApp, Holder, JobStates,
    ProcStat, Verdict, MAX_PROCESSES,
};
use super::run::{argv, checked, Runner, SystemRunner};
use super::slurm::{job_by_id, known_job_state, SlurmBins};
use super::{
    seen_before, summarize, to_roll_back, undo_list, validate, Applied, Change, ChangeStatus,
    ExecCommand, ExecError, Executor, Journal, Outcome,
};
pub use crate::proc_job::{job_from_cgroup, job_from_environ, MAX_ENVIRON};
use crate::proc_job::{job_of, read_proc_file, ProcJobError};
use keel_model::Action;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// How long a process has, after SIGTERM, before SIGKILL.
pub const DEFAULT_GRACE: Duration = Duration::from_secs(10);
/// How long a process has to be gone after SIGKILL (one in an
/// uninterruptible wait in the driver may never go).
pub const KILL_WAIT: Duration = Duration::from_secs(5);
const POLL: Duration = Duration::from_millis(20);
/// The highest GPU index taken (NVML numbers a node's GPUs from 0).
pub const MAX_GPU_INDEX: u64 = 1023;

/// The command's parameters, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReclaimGpu {
    pub gpu: u32,
    pub node: String,
    pub job: Option<u64>,
    pub state: Option<String>,
}

impl ReclaimGpu {
    pub fn from_command(cmd: &ExecCommand) -> Result<Self, ExecError> {
        for mig in ["gpu_instance", "instance"] {
            if let Some(v) = cmd.params.get(mig) {
                return Err(ExecError::invalid(
                    mig,
                    v,
                    "processes of MIG instances are not told apart yet; not reclaimed",
                ));
            }
        }
        validate::known_params(&cmd.params, &["node", "gpu", "job", "state"])?;
        let gpu = validate::uint("target", &cmd.target, 0, MAX_GPU_INDEX)? as u32;
        let need = |name: &str, what: &str| {
            cmd.params
                .get(name)
                .cloned()
                .ok_or_else(|| ExecError::invalid(name, "", format!("required: {what}")))
        };
        let g = need("gpu", "the GPU index the finding is about (the target)")?;
        if validate::uint("gpu", &g, 0, MAX_GPU_INDEX)? != u64::from(gpu) {
            return Err(ExecError::invalid(
                "gpu",
                &g,
                format!("differs from the target GPU {gpu}"),
            ));
        }
        let node = need("node", "the node the finding is about")?;
        validate::node_name("node", &node)?;
        let job = match cmd.params.get("job") {
            Some(j) => Some(validate::job_id("job", j)?),
            None => None,
        };
        let state = match cmd.params.get("state") {
            Some(s) => {
                let s = s.to_ascii_uppercase();
                if known_job_state(&s).is_none() {
                    return Err(ExecError::invalid(
                        "state",
                        &s,
                        "not a Slurm job state keel knows",
                    ));
                }
                Some(s)
            }
            None => None,
        };
        Ok(ReclaimGpu {
            gpu,
            node,
            job,
            state,
        })
    }
}

fn proc_error(e: ProcJobError) -> ExecError {
    match e {
        ProcJobError::Io { path, error } => ExecError::Io {
            what: format!("reading {}", path.display()),
            error,
        },
        ProcJobError::Parse { path, why } => ExecError::Parse {
            what: path.display().to_string(),
            why,
        },
    }
}

/// Signals are sent with the `kill` program (procps) through the
/// [`Runner`], like every other executor's action: the signal shows in
/// the runner's record (the unit tests read it), and a fork per signal
/// costs nothing next to the grace period.
/// The pid's start time is read again just before each `kill`, which
/// leaves the narrow window any pid-based kill has without pidfds.
pub struct GpuProcessExecutor<R: Runner = SystemRunner> {
    runner: R,
    journal: Journal,
    /// `nvidia-smi` (by default found on `PATH`).
    pub nvidia_smi: String,
    /// Slurm's clients; only `scontrol` is used.
    pub slurm: SlurmBins,
    /// The `kill` program.
    pub kill: String,
    /// Where processes are read (`/proc`).
    pub proc_root: PathBuf,
    /// Between SIGTERM and SIGKILL ([`DEFAULT_GRACE`]).
    pub grace: Duration,
}

impl GpuProcessExecutor<SystemRunner> {
    pub fn new(journal: Journal) -> Self {
        GpuProcessExecutor::with_runner(SystemRunner::default(), journal)
    }
}

/// A signal not sent: the process had already gone.
enum Sent {
    Yes,
    Gone(String),
}

impl<R: Runner> GpuProcessExecutor<R> {
    pub fn with_runner(runner: R, journal: Journal) -> Self {
        GpuProcessExecutor {
            runner,
            journal,
            nvidia_smi: "nvidia-smi".into(),
            slurm: SlurmBins::default(),
            kill: "kill".into(),
            proc_root: PathBuf::from("/proc"),
            grace: DEFAULT_GRACE,
        }
    }

    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    fn uuid_of(&mut self, gpu: u32) -> Result<String, ExecError> {
        let a = argv([
            self.nvidia_smi.as_str(),
            "--query-gpu=index,uuid",
            "--format=csv,noheader",
        ]);
        let out = checked(&mut self.runner, &a)?;
        parse_gpu_list(&out.stdout)?
            .remove(&gpu)
            .ok_or_else(|| ExecError::NotFound {
                what: "GPU",
                name: gpu.to_string(),
            })
    }

    /// The processes on the GPU with `uuid`, one entry per pid.
    fn apps_on(&mut self, uuid: &str) -> Result<Vec<GpuApp>, ExecError> {
        let a = argv([
            self.nvidia_smi.as_str(),
            "--query-compute-apps=gpu_uuid,pid,used_memory",
            "--format=csv,noheader,nounits",
        ]);
        let out = checked(&mut self.runner, &a)?;
        let mut by_pid: BTreeMap<u32, GpuApp> = BTreeMap::new();
        for app in parse_compute_apps(&out.stdout)?
            .into_iter()
            .filter(|a| a.gpu_uuid == uuid)
        {
            match by_pid.get_mut(&app.pid) {
                // One process with several contexts: its memory together.
                Some(seen) => seen.used_mib = seen.used_mib.zip(app.used_mib).map(|(a, b)| a + b),
                None => {
                    by_pid.insert(app.pid, app);
                }
            }
        }
        Ok(by_pid.into_values().collect())
    }

    /// A file of `/proc/PID/`, at most `max` bytes; None when the process
    /// is gone.
    fn proc_file(&self, pid: u32, file: &str, max: u64) -> Result<Option<Vec<u8>>, ExecError> {
        read_proc_file(&self.proc_root, pid, file, max).map_err(proc_error)
    }

    /// `/proc/PID/stat`; None when the process is gone.
    pub fn stat(&self, pid: u32) -> Result<Option<ProcStat>, ExecError> {
        let Some(b) = self.proc_file(pid, "stat", 4096)? else {
            return Ok(None);
        };
        parse_stat(&String::from_utf8_lossy(&b))
            .map(Some)
            .map_err(|why| ExecError::Parse {
                what: format!("{}/{pid}/stat", self.proc_root.display()),
                why,
            })
    }

    /// The process as the check sees it; None when it is gone (or exited).
    fn holder(&self, app: &GpuApp) -> Result<Option<Holder>, ExecError> {
        let pid = app.pid;
        let Some(stat) = self.stat(pid)?.filter(|s| !s.exited()) else {
            return Ok(None);
        };
        let job = match job_of(&self.proc_root, pid) {
            Ok(Some(job)) => job,
            Ok(None) => return Ok(None),
            Err(ProcJobError::Parse { path, why }) => {
                return Err(ExecError::Parse {
                    what: path.display().to_string(),
                    why: format!(
                        "{why}; which job pid {pid} belongs to is unknown, so nothing is killed"
                    ),
                })
            }
            Err(e) => return Err(proc_error(e)),
        };
        Ok(Some(Holder {
            pid,
            start: stat.start,
            used_mib: app.used_mib,
            job,
        }))
    }

    /// Every process on GPU `gpu`, with its job.
    pub fn holders(&mut self, gpu: u32) -> Result<Vec<Holder>, ExecError> {
        let uuid = self.uuid_of(gpu)?;
        let mut holders = Vec::new();
        let mut missing = Vec::new();
        for app in self.apps_on(&uuid)? {
            match self.holder(&app)? {
                Some(h) => holders.push(h),
                None => missing.push(app.pid),
            }
        }
        if !missing.is_empty() {
            // Gone since nvidia-smi answered, or never visible here.
            if let Some(a) = self
                .apps_on(&uuid)?
                .into_iter()
                .find(|a| missing.contains(&a.pid))
            {
                return Err(ExecError::Unsupported {
                    target: format!("GPU {gpu}"),
                    why: format!(
                        "nvidia-smi lists pid {} on it, which {} does not show running (another pid namespace?); nothing killed",
                        a.pid,
                        self.proc_root.display()
                    ),
                });
            }
        }
        Ok(holders)
    }

    /// What Slurm says of each holder's job now.
    pub fn job_states(&mut self, holders: &[Holder]) -> Result<JobStates, ExecError> {
        let mut out = JobStates::new();
        for j in holders.iter().filter_map(|h| h.job) {
            if out.contains_key(&j) {
                continue;
            }
            let now = job_by_id(&mut self.runner, &self.slurm.scontrol, j)?;
            out.insert(j, now.map(|job| job.state));
        }
        Ok(out)
    }

    /// Whether the process the check saw is gone: no such pid, a zombie,
    /// or the pid now names a process started at another time.
    fn gone(&self, h: &Holder) -> Result<Option<String>, ExecError> {
        Ok(match self.stat(h.pid)? {
            None => Some("exited".into()),
            Some(s) if s.exited() => Some("exited".into()),
            Some(s) if s.start != h.start => Some(format!(
                "exited; pid {} since names another process (start time {}, was {})",
                h.pid, s.start, h.start
            )),
            Some(_) => None,
        })
    }

    fn signal(&mut self, h: &Holder, sig: &str) -> Result<Sent, ExecError> {
        if let Some(why) = self.gone(h)? {
            return Ok(Sent::Gone(format!("{why} before SIG{sig}")));
        }
        let a = argv([
            self.kill.clone(),
            "-s".into(),
            sig.into(),
            h.pid.to_string(),
        ]);
        let out = self.runner.run(&a)?;
        if out.success() {
            Ok(Sent::Yes)
        } else if out.text().contains("No such process") {
            Ok(Sent::Gone(format!("exited before SIG{sig}")))
        } else {
            Err(super::run::failed(&a, &out))
        }
    }

    /// Waits up to `limit` for the processes to go; returns those left.
    fn wait_gone(
        &self,
        mut left: Vec<(Holder, String)>,
        limit: Duration,
        sig: &str,
        changes: &mut Vec<Change>,
    ) -> Result<Vec<(Holder, String)>, ExecError> {
        let end = Instant::now() + limit;
        loop {
            let mut still = Vec::new();
            for (h, before) in left {
                if self.gone(&h)?.is_some() {
                    changes.push(Change::applied(
                        &field(&h),
                        Some(before),
                        format!("killed ({sig})"),
                    ));
                } else {
                    still.push((h, before));
                }
            }
            left = still;
            if left.is_empty() || Instant::now() >= end {
                return Ok(left);
            }
            std::thread::sleep(POLL);
        }
    }

    /// SIGTERM to each, `grace`, then SIGKILL to those left.
    fn kill_all(&mut self, victims: &[Holder], jobs: &JobStates) -> Result<Vec<Change>, ExecError> {
        let mut changes = Vec::new();
        let partial = |e: ExecError, changes: &[Change]| {
            if changes.is_empty() {
                e
            } else {
                ExecError::Partial {
                    error: Box::new(e),
                    undo: format!("already done, and not reversible: {}", summarize(changes)),
                }
            }
        };
        let mut pending = Vec::new();
        for h in victims {
            let before = describe(h, jobs);
            match self.signal(h, "TERM") {
                Ok(Sent::Yes) => pending.push((h.clone(), before)),
                Ok(Sent::Gone(why)) => changes.push(gone_change(h, before, why)),
                Err(e) => return Err(partial(e, &changes)),
            }
        }
        let left = self.wait_gone(pending, self.grace, "TERM", &mut changes)?;
        let mut pending = Vec::new();
        for (h, before) in left {
            match self.signal(&h, "KILL") {
                Ok(Sent::Yes) => pending.push((h, before)),
                // It went between the last look and the signal: TERM did it.
                Ok(Sent::Gone(_)) => {
                    changes.push(Change::applied(&field(&h), Some(before), "killed (TERM)"))
                }
                Err(e) => return Err(partial(e, &changes)),
            }
        }
        let left = self.wait_gone(pending, KILL_WAIT, "KILL", &mut changes)?;
        if let Some((h, _)) = left.first() {
            let state = self.stat(h.pid)?.map_or('?', |s| s.state);
            let e = ExecError::Failed {
                argv: super::run::show(&argv([
                    self.kill.clone(),
                    "-s".into(),
                    "KILL".into(),
                    h.pid.to_string(),
                ])),
                status: format!("pid {} still there {KILL_WAIT:?} after SIGKILL", h.pid),
                stderr: format!("process state {state} (D: waiting in the kernel or the driver)"),
            };
            return Err(partial(e, &changes));
        }
        Ok(changes)
    }

    fn reclaim(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        let t = ReclaimGpu::from_command(cmd)?;
        let holders = self.holders(t.gpu)?;
        let jobs = self.job_states(&holders)?;
        let victims = match decide(t.gpu, t.job, &holders, &jobs, std::process::id())? {
            Verdict::Free => {
                return Ok(Applied::new(
                    Outcome::AlreadyDone,
                    vec![Change::already("processes", "none")],
                    format!("nothing holds GPU {} on {} any more", t.gpu, t.node),
                ))
            }
            Verdict::Kill(v) => v,
        };
        let changes = self.kill_all(&victims, &jobs)?;
        let outcome = if changes.iter().any(|c| c.status == ChangeStatus::Applied) {
            Outcome::Done
        } else {
            Outcome::AlreadyDone
        };
        let named = match t.job {
            Some(j) => format!(", each of ended job {j}"),
            None => String::new(),
        };
        let detail = format!(
            "reclaimed GPU {} on {}: {}; checked first: {} process(es) on it, none of a job Slurm has not ended{named}",
            t.gpu,
            t.node,
            summarize(&changes),
            victims.len()
        );
        Ok(Applied::new(outcome, changes, detail))
    }
}

fn field(h: &Holder) -> String {
    format!("pid:{}", h.pid)
}

fn gone_change(h: &Holder, before: String, why: String) -> Change {
    Change {
        field: field(h),
        before: Some(before),
        after: Some(why),
        status: ChangeStatus::AlreadySet,
    }
}

impl<R: Runner> Executor for GpuProcessExecutor<R> {
    fn name(&self) -> &'static str {
        "gpu"
    }

    fn handles(&self, action: Action) -> bool {
        action == Action::ReclaimZombie
    }

    fn apply(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        if let Some(done) = seen_before(self, &self.journal, cmd)? {
            return Ok(done);
        }
        let applied = self.reclaim(cmd)?;
        self.journal.record(cmd, &applied)?;
        Ok(applied)
    }

    fn rollback(&mut self, cmd: &ExecCommand) -> Result<Applied, ExecError> {
        let applied = match to_roll_back(self, &self.journal, cmd)? {
            Ok(a) => a,
            Err(already) => return Ok(already),
        };
        if !undo_list(&applied).is_empty() {
            return Err(ExecError::NotReversible {
                action: cmd.action,
                why: "a killed process cannot be brought back".into(),
            });
        }
        self.journal.mark_rolled_back(&cmd.idempotency_key)?;
        Ok(Applied::new(
            Outcome::RolledBack,
            Vec::new(),
            format!(
                "nothing to roll back for {} {}: it killed nothing",
                cmd.action, cmd.target
            ),
        ))
    }
}

#[cfg(test)]
#[path = "gpu_process_tests.rs"]
mod tests;
