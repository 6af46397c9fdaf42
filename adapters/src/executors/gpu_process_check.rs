//! What the GPU process executor reads and decides, sans-IO: `nvidia-smi`'s
//! CSV (which GPU has which UUID, which processes hold which GPU),
//! `/proc/PID/stat` (a process's state and start time), and the decision
//! whether the processes on a GPU may be killed. Which Slurm job a process
//! belongs to is read by `crate::proc_job`, which the push endpoint shares.

use super::slurm_parse::known_job_state;
use super::ExecError;
use keel_model::JobState;
use std::collections::BTreeMap;

/// The most processes read from `nvidia-smi --query-compute-apps` (all
/// GPUs of the node together): more is an error, not a truncated list,
/// because a process left unread could be one of a running job.
pub const MAX_PROCESSES: usize = 4096;

/// One line of `nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory
/// --format=csv,noheader,nounits`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuApp {
    pub gpu_uuid: String,
    pub pid: u32,
    /// MiB; None where the driver does not say (`[N/A]`, `[Insufficient
    /// Permissions]`).
    pub used_mib: Option<u64>,
}

fn parse_err(what: &str, why: impl Into<String>) -> ExecError {
    ExecError::Parse {
        what: what.to_string(),
        why: why.into(),
    }
}

/// The non-empty lines of a CSV answer, each split on commas and trimmed,
/// with exactly `n` fields; an error names the line.
fn csv_lines<'a>(what: &str, text: &'a str, n: usize) -> Result<Vec<Vec<&'a str>>, ExecError> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim();
        if t.is_empty() {
            continue;
        }
        let fields: Vec<&str> = t.split(',').map(str::trim).collect();
        if fields.len() != n {
            return Err(parse_err(
                what,
                format!(
                    "line {} {t:?}: {} fields, expected {n}",
                    i + 1,
                    fields.len()
                ),
            ));
        }
        out.push(fields);
    }
    Ok(out)
}

fn uuid_ok(u: &str) -> bool {
    !u.is_empty()
        && u.len() <= 128
        && u.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'/')
}

/// `nvidia-smi --query-gpu=index,uuid --format=csv,noheader`: GPU index to
/// UUID. An error names the line that is not `INDEX, UUID`.
pub fn parse_gpu_list(text: &str) -> Result<BTreeMap<u32, String>, ExecError> {
    const WHAT: &str = "nvidia-smi --query-gpu=index,uuid";
    let mut out = BTreeMap::new();
    for f in csv_lines(WHAT, text, 2)? {
        let line = f.join(", ");
        let index = f[0]
            .parse::<u32>()
            .map_err(|_| parse_err(WHAT, format!("line {line:?}: index {:?}", f[0])))?;
        if !uuid_ok(f[1]) {
            return Err(parse_err(WHAT, format!("line {line:?}: uuid {:?}", f[1])));
        }
        if out.insert(index, f[1].to_string()).is_some() {
            return Err(parse_err(
                WHAT,
                format!("line {line:?}: GPU {index} listed twice"),
            ));
        }
    }
    Ok(out)
}

/// `nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory
/// --format=csv,noheader,nounits`. Strict: a line that is not `UUID, PID,
/// MIB` (MIB may be a bracketed `[N/A]`-style word) is an error naming it,
/// and more than [`MAX_PROCESSES`] lines is an error.
pub fn parse_compute_apps(text: &str) -> Result<Vec<GpuApp>, ExecError> {
    const WHAT: &str = "nvidia-smi --query-compute-apps=gpu_uuid,pid,used_memory";
    // Some driver versions say so instead of printing nothing.
    if text.trim() == "No running processes found" {
        return Ok(Vec::new());
    }
    let lines = csv_lines(WHAT, text, 3)?;
    if lines.len() > MAX_PROCESSES {
        return Err(parse_err(
            WHAT,
            format!(
                "{} processes listed, more than the {MAX_PROCESSES} read",
                lines.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(lines.len());
    for f in lines {
        let line = f.join(", ");
        if !uuid_ok(f[0]) {
            return Err(parse_err(WHAT, format!("line {line:?}: uuid {:?}", f[0])));
        }
        let pid = f[1]
            .parse::<u32>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| parse_err(WHAT, format!("line {line:?}: pid {:?}", f[1])))?;
        let used_mib =
            if f[2].starts_with('[') && f[2].ends_with(']') {
                None
            } else {
                Some(f[2].parse::<u64>().map_err(|_| {
                    parse_err(WHAT, format!("line {line:?}: used_memory {:?}", f[2]))
                })?)
            };
        out.push(GpuApp {
            gpu_uuid: f[0].to_string(),
            pid,
            used_mib,
        });
    }
    Ok(out)
}

/// What `/proc/PID/stat` says of a process: its state letter and its start
/// time (field 22, clock ticks since boot), which tells a reused pid apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    pub state: char,
    pub start: u64,
}

impl ProcStat {
    /// A zombie has exited: only its parent's `wait` is missing.
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

/// Reads `/proc/PID/stat`. The command name (field 2) may hold spaces and
/// parentheses, so the fields are counted after its last `)`.
pub fn parse_stat(text: &str) -> Result<ProcStat, String> {
    let rest = text
        .rfind(')')
        .map(|i| &text[i + 1..])
        .ok_or_else(|| format!("stat {text:?} has no command name"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // Field 3 (state) is f[0], so field 22 (starttime) is f[19].
    let state = f
        .first()
        .and_then(|s| s.chars().next())
        .ok_or_else(|| format!("stat {text:?} has no state"))?;
    let start = f
        .get(19)
        .and_then(|s| s.parse::<u64>().ok())
        .ok_or_else(|| format!("stat {text:?} has no start time (field 22)"))?;
    Ok(ProcStat { state, start })
}

/// One process holding the GPU, as the check saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Holder {
    pub pid: u32,
    /// Its start time at the check, compared again before each signal.
    pub start: u64,
    pub used_mib: Option<u64>,
    /// The Slurm job it belongs to (cgroup, else environ), or None.
    pub job: Option<u64>,
}

/// What Slurm says now of each job a holder belongs to: its state name, or
/// None when Slurm no longer knows the job.
pub type JobStates = BTreeMap<u64, Option<String>>;

/// What the check decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// No process holds the GPU.
    Free,
    /// Every holder is a leftover: kill these.
    Kill(Vec<Holder>),
}

/// A holder's job as a Change's `before` says it: `job 7 (COMPLETED), 512
/// MiB`, `no job, ? MiB`.
pub fn describe(h: &Holder, jobs: &JobStates) -> String {
    let mib = h.used_mib.map_or("?".to_string(), |m| m.to_string());
    format!("{}, {mib} MiB", job_text(h.job, jobs))
}

/// `job 7 (COMPLETED)`, `job 7 (gone from Slurm)`, `no job`.
pub fn job_text(job: Option<u64>, jobs: &JobStates) -> String {
    match job {
        None => "no job".to_string(),
        Some(j) => match jobs.get(&j) {
            Some(Some(state)) => format!("job {j} ({state})"),
            _ => format!("job {j} (gone from Slurm)"),
        },
    }
}

/// Whether the processes on GPU `gpu` may be killed. Refusals are `Invalid`
/// errors naming the pid, its job and the job's state, in this order:
/// a holder belongs to a job Slurm has not ended (running, pending,
/// suspended, or a state keel does not know); a holder is pid 1 or this
/// executor (`own_pid`); `job` (the ended job the finding named) was given
/// and a holder belongs to another job or to none. No holder: `Free`.
pub fn decide(
    gpu: u32,
    job: Option<u64>,
    holders: &[Holder],
    jobs: &JobStates,
    own_pid: u32,
) -> Result<Verdict, ExecError> {
    let g = gpu.to_string();
    if holders.is_empty() {
        return Ok(Verdict::Free);
    }
    for h in holders {
        let Some(j) = h.job else { continue };
        let Some(Some(state)) = jobs.get(&j) else {
            continue;
        };
        match known_job_state(state) {
            Some(s) if s.is_finished() => {}
            Some(JobState::Running) => {
                return Err(ExecError::invalid(
                    "gpu",
                    &g,
                    format!(
                        "pid {} on GPU {gpu} belongs to running job {j} ({state}); not killed",
                        h.pid
                    ),
                ))
            }
            _ => {
                return Err(ExecError::invalid(
                    "gpu",
                    &g,
                    format!(
                        "pid {} on GPU {gpu} belongs to job {j}, which has not ended ({state}); not killed",
                        h.pid
                    ),
                ))
            }
        }
    }
    if let Some(h) = holders.iter().find(|h| h.pid == 1 || h.pid == own_pid) {
        let who = if h.pid == 1 { "init" } else { "this executor" };
        return Err(ExecError::invalid(
            "gpu",
            &g,
            format!(
                "pid {} on GPU {gpu} is {who} ({}); never killed",
                h.pid,
                describe(h, jobs)
            ),
        ));
    }
    if let Some(want) = job {
        if let Some(h) = holders.iter().find(|h| h.job != Some(want)) {
            return Err(ExecError::invalid(
                "job",
                &want.to_string(),
                format!(
                    "pid {} on GPU {gpu} belongs to {}, not to job {want} the finding named; not killed",
                    h.pid,
                    match h.job {
                        None => "no Slurm job".to_string(),
                        Some(_) => job_text(h.job, jobs),
                    }
                ),
            ));
        }
    }
    Ok(Verdict::Kill(holders.to_vec()))
}
