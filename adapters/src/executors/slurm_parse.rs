//! Reading what Slurm's clients print, sans-IO: `squeue --json` and
//! `scontrol show job --json` (the OpenAPI v0.0.37/38 shapes of Slurm
//! 21.08–22.05, and the later data_parser shapes where states are lists and
//! numbers are `{set, number}` objects), `scontrol show node -o` (one
//! `Key=Value` line per record), and hostlist expressions (`gpu[01-04,07]`).
//! `scontrol show job [-d] [-o]` text is read in `slurm_text.rs`.
//!
//! A job state is never read loosely: a job whose state field is missing,
//! of the wrong type, or a name keel does not know is an error naming the
//! job, the field and the value (so that a new Slurm is noticed, not read
//! as `OTHER`).

use super::slurm_gres::from_gres_detail;
pub use super::slurm_gres::Gpus;
pub use super::slurm_text::parse_scontrol_jobs;
use super::ExecError;
use keel_model::{JobRecord, JobState, Name, Timestamp};
use serde_json::Value;
use std::collections::BTreeMap;

/// The most names one hostlist may expand to: a typo such as `n[1-99999999]`
/// must not eat the executor's memory.
pub const MAX_HOSTS: usize = 100_000;

/// One job as Slurm lists it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlurmJob {
    pub job_id: u64,
    /// Slurm's spelling of the base state (`RUNNING`, `CANCELLED`, ...).
    pub state: String,
    /// The nodes allocated to it, expanded (empty while pending).
    pub nodes: Vec<String>,
    pub user: String,
    pub account: String,
    pub partition: String,
    pub name: String,
    pub excluded_nodes: Vec<String>,
    /// Why it waits, or `None`.
    pub reason: String,
    /// The GPUs Slurm allocated to it on each node, or why that is unknown.
    pub gpus: Gpus,
}

impl SlurmJob {
    /// keel's name for the state. The parsers only ever produce states
    /// that [`known_job_state`] reads; a hand-built job with another name
    /// is `Other`.
    pub fn job_state(&self) -> JobState {
        known_job_state(&self.state).unwrap_or(JobState::Other)
    }

    /// The job as keel's trace and controller describe jobs. `node_gpus`
    /// holds the GPU indices Slurm allocated on each node when Slurm said
    /// (a node with an empty list: the job holds no GPU there), and is
    /// empty when that is unknown. Slurm does not say where ranks run; with
    /// `ranks_per_node` > 0 they are numbered node by node in allocation
    /// order (as `srun` places block-distributed tasks), otherwise left for
    /// the prolog or the operator to register. A rank's GPU (`gpus`) is
    /// then the node's allocated GPU in the same local order when Slurm
    /// named as many GPUs as ranks, else local rank i on GPU i (a guess,
    /// kept out of `node_gpus`). The tenant is the account where one is
    /// set, else the user.
    pub fn to_record(&self, ts: Timestamp, ranks_per_node: u32) -> JobRecord {
        let mut ranks = BTreeMap::new();
        let mut gpus = BTreeMap::new();
        if ranks_per_node > 0 {
            for (i, node) in self.nodes.iter().enumerate() {
                let first = i as u32 * ranks_per_node;
                let on_node: Vec<u32> = (first..first + ranks_per_node).collect();
                let allocated = match self.gpus.on(node) {
                    Ok(Some(g)) if g.len() == on_node.len() => Some(g),
                    _ => None,
                };
                for (local, rank) in on_node.iter().enumerate() {
                    let gpu = allocated.map_or(local as u32, |g| g[local]);
                    gpus.insert(*rank, gpu);
                }
                ranks.insert(Name::from(node.as_str()), on_node);
            }
        }
        let node_gpus = match &self.gpus {
            Gpus::Known(m) => m
                .iter()
                .map(|(n, g)| (Name::from(n.as_str()), g.clone()))
                .collect(),
            Gpus::Unknown(_) => BTreeMap::new(),
        };
        let tenant = if !self.account.is_empty() {
            Some(Name::from(self.account.as_str()))
        } else if !self.user.is_empty() {
            Some(Name::from(self.user.as_str()))
        } else {
            None
        };
        JobRecord {
            ts,
            node: None,
            job: Name::from(self.job_id.to_string()),
            state: self.job_state(),
            tenant,
            nodes: self.nodes.iter().map(|n| Name::from(n.as_str())).collect(),
            ranks,
            gpus,
            nics: BTreeMap::new(),
            node_gpus,
            tp: None,
            pp: None,
            replica: None,
        }
    }
}

/// Slurm's job state names onto keel's: the base states of every version
/// from 21.08 to 24.11, and the flags that `scontrol show job` prints in
/// place of the base state (`JobState=STAGE_OUT`). None for a name keel
/// does not know (`REVOKED`, `UPDATE_DB`, a state of a later Slurm): the
/// parsers turn that into an error naming the job.
pub fn known_job_state(s: &str) -> Option<JobState> {
    Some(match s {
        "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" | "SPECIAL_EXIT"
        | "RESV_DEL_HOLD" | "POWER_UP_NODE" => JobState::Pending,
        "RUNNING" | "CONFIGURING" | "RESIZING" | "SIGNALING" => JobState::Running,
        "COMPLETING" | "STAGE_OUT" => JobState::Completing,
        "COMPLETED" => JobState::Completed,
        "FAILED" | "BOOT_FAIL" | "LAUNCH_FAILED" => JobState::Failed,
        "TIMEOUT" | "DEADLINE" => JobState::Timeout,
        "OUT_OF_MEMORY" => JobState::OutOfMemory,
        "CANCELLED" => JobState::Cancelled,
        "NODE_FAIL" => JobState::NodeFail,
        "PREEMPTED" => JobState::Preempted,
        "SUSPENDED" | "STOPPED" => JobState::Suspended,
        _ => return None,
    })
}

/// Checks a state name read from Slurm: the error names the job, the
/// field and what it held.
pub(crate) fn checked_state(
    what: &str,
    job: u64,
    field: &str,
    name: &str,
) -> Result<String, ExecError> {
    if name.is_empty() {
        return Err(bad(what, format!("job {job}: {field} is empty or missing")));
    }
    match known_job_state(name) {
        Some(_) => Ok(name.to_string()),
        None => Err(bad(
            what,
            format!("job {job}: {field} {name:?} is not a state keel knows"),
        )),
    }
}

pub(crate) fn bad(what: &str, why: impl Into<String>) -> ExecError {
    ExecError::Parse {
        what: what.to_string(),
        why: why.into(),
    }
}

/// A number as any Slurm version writes it: `5`, `"5"`, or `{"set": true, "number": 5}`.
fn number(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        Value::Object(o) => {
            if o.get("set").and_then(Value::as_bool) == Some(false) {
                return None;
            }
            o.get("number").and_then(number)
        }
        _ => None,
    }
}

fn string(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        _ => String::new(),
    }
}

/// The base state: a string (21.08–22.05) or the first known name in a
/// list of state and flags (23.02 and later). An error names the job and
/// the field when there is none, or none keel knows.
fn state_of(what: &str, job: u64, v: Option<&Value>) -> Result<String, ExecError> {
    const FIELD: &str = "job_state";
    match v {
        Some(Value::String(s)) => checked_state(what, job, FIELD, s),
        Some(Value::Array(a)) => {
            let names: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
            match names.iter().find(|s| known_job_state(s).is_some()) {
                Some(s) => Ok(s.to_string()),
                None if names.is_empty() => {
                    Err(bad(what, format!("job {job}: {FIELD} is an empty list")))
                }
                None => Err(bad(
                    what,
                    format!("job {job}: {FIELD} {names:?} holds no state keel knows"),
                )),
            }
        }
        None | Some(Value::Null) => Err(bad(what, format!("job {job}: no {FIELD}"))),
        Some(other) => Err(bad(
            what,
            format!("job {job}: {FIELD} is neither a name nor a list ({other})"),
        )),
    }
}

/// The most jobs one Slurm output is read for: beyond it the output is
/// refused, not cut (a cut list would read as jobs that ended).
pub const MAX_JOBS: usize = 1_000_000;

/// Parses `squeue --json` or `scontrol show job [-d] --json` (the same
/// `jobs` list). Jobs without a readable id or state are an error (so that
/// a format change is noticed, not read as an empty queue or as `OTHER`).
/// GPU indices come from `gres_detail` (filled by `scontrol show job -d
/// --json`; often empty in `squeue --json`, which leaves them unknown).
pub fn parse_squeue_json(text: &str) -> Result<Vec<SlurmJob>, ExecError> {
    const WHAT: &str = "Slurm JSON";
    let doc: Value = serde_json::from_str(text).map_err(|e| bad(WHAT, e.to_string()))?;
    let jobs = doc
        .get("jobs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(WHAT, "no \"jobs\" list"))?;
    if jobs.len() > MAX_JOBS {
        return Err(bad(WHAT, format!("more than {MAX_JOBS} jobs")));
    }
    let mut out = Vec::with_capacity(jobs.len());
    for (i, j) in jobs.iter().enumerate() {
        let job_id = j
            .get("job_id")
            .and_then(number)
            .ok_or_else(|| bad(WHAT, format!("job {i} has no job_id")))?;
        let nodes = match j.get("nodes") {
            Some(Value::String(s)) => expand_hostlist(s)?,
            _ => Vec::new(),
        };
        let excluded_nodes = match j.get("excluded_nodes") {
            Some(Value::String(s)) => expand_hostlist(s)?,
            _ => Vec::new(),
        };
        let state = state_of(WHAT, job_id, j.get("job_state"))?;
        let details: Vec<String> = match j.get("gres_detail") {
            Some(Value::Array(a)) => a
                .iter()
                .map(|d| d.as_str().unwrap_or_default().to_string())
                .collect(),
            _ => Vec::new(),
        };
        let gpus = from_gres_detail(&nodes, &details);
        out.push(SlurmJob {
            job_id,
            state,
            nodes,
            user: string(j.get("user_name")),
            account: string(j.get("account")),
            partition: string(j.get("partition")),
            name: string(j.get("name")),
            excluded_nodes,
            reason: string(j.get("state_reason")),
            gpus,
        });
    }
    Ok(out)
}

/// Splits one `scontrol show ... -o` line into its fields. Values may hold
/// spaces (`Reason=keel: slow nic [root@2024-...]`, `OS=Linux 6.1 #1 SMP`):
/// a word that does not start a `Key=` is the previous value's continuation.
pub fn parse_kv(line: &str) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    let mut last: Option<String> = None;
    for word in line.split_whitespace() {
        match word.split_once('=') {
            Some((k, v)) if is_key(k) => {
                out.insert(k.to_string(), v.to_string());
                last = Some(k.to_string());
            }
            _ => {
                if let Some(v) = last.as_ref().and_then(|k| out.get_mut(k)) {
                    v.push(' ');
                    v.push_str(word);
                }
            }
        }
    }
    out
}

pub(crate) fn is_key(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || b"_:/".contains(&c))
}

/// `(null)` and `N/A` mean "unset" in scontrol's output.
pub(crate) fn unset(v: Option<&String>) -> String {
    match v.map(String::as_str) {
        None | Some("(null)") | Some("N/A") => String::new(),
        Some(s) => s.to_string(),
    }
}

/// One node as `scontrol show node -o NAME` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SlurmNode {
    pub name: String,
    /// `IDLE`, `IDLE+DRAIN`, `DOWN+NOT_RESPONDING`, ...
    pub state: String,
    /// The reason given at drain or down, without Slurm's `[user@time]` stamp.
    pub reason: String,
}

impl SlurmNode {
    fn flags(&self) -> impl Iterator<Item = &str> {
        self.state.split('+')
    }

    /// Drained or draining: no new work lands on it.
    pub fn is_drained(&self) -> bool {
        self.flags().any(|f| f.starts_with("DRAIN"))
    }

    pub fn is_down(&self) -> bool {
        self.flags().any(|f| f == "DOWN" || f == "FAIL")
    }
}

pub fn parse_scontrol_node(text: &str) -> Result<SlurmNode, ExecError> {
    let line = text
        .lines()
        .find(|l| l.starts_with("NodeName="))
        .ok_or_else(|| bad("scontrol show node", "no NodeName= line"))?;
    let kv = parse_kv(line);
    let mut reason = unset(kv.get("Reason"));
    if reason.ends_with(']') {
        if let Some(at) = reason.rfind(" [") {
            reason.truncate(at);
        }
    }
    Ok(SlurmNode {
        name: unset(kv.get("NodeName")),
        state: unset(kv.get("State")),
        reason,
    })
}

/// Expands a Slurm hostlist (`a,b[1-3,07],r[1-2]-n[01-02]`) into names.
pub fn expand_hostlist(expr: &str) -> Result<Vec<String>, ExecError> {
    let what = |why: String| bad("hostlist", format!("{expr:?}: {why}"));
    let mut out = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in expr.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => {
                depth = depth
                    .checked_sub(1)
                    .ok_or_else(|| what("unbalanced ]".into()))?
            }
            ',' if depth == 0 => {
                expand_one(expr[start..i].trim(), &mut out).map_err(what)?;
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        return Err(what("unbalanced [".into()));
    }
    expand_one(expr[start..].trim(), &mut out).map_err(what)?;
    Ok(out)
}

fn expand_one(item: &str, out: &mut Vec<String>) -> Result<(), String> {
    if item.is_empty() || item == "(null)" {
        return Ok(());
    }
    let Some(open) = item.find('[') else {
        if out.len() >= MAX_HOSTS {
            return Err(format!("more than {MAX_HOSTS} hosts"));
        }
        out.push(item.to_string());
        return Ok(());
    };
    let close = item[open..]
        .find(']')
        .map(|c| open + c)
        .ok_or("unbalanced [")?;
    let (prefix, ranges, rest) = (&item[..open], &item[open + 1..close], &item[close + 1..]);
    // The rest may hold more brackets: expand it once, then prefix each.
    let mut tails = Vec::new();
    expand_one(rest, &mut tails)?;
    if rest.is_empty() {
        tails.push(String::new());
    }
    for range in ranges.split(',') {
        let (lo, hi) = range.split_once('-').unwrap_or((range, range));
        let parse = |s: &str| {
            if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
                Err(format!("bad range {range:?}"))
            } else {
                s.parse::<u64>().map_err(|_| format!("bad range {range:?}"))
            }
        };
        let (a, b) = (parse(lo)?, parse(hi)?);
        if a > b {
            return Err(format!("range {range:?} runs backwards"));
        }
        if (b - a) as usize >= MAX_HOSTS
            || out.len() + ((b - a) as usize + 1) * tails.len() > MAX_HOSTS
        {
            return Err(format!("more than {MAX_HOSTS} hosts"));
        }
        // Zero padding follows the first bound's width, as Slurm does.
        let width = lo.len();
        for n in a..=b {
            for tail in &tails {
                out.push(format!("{prefix}{n:0width$}{tail}"));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "slurm_parse_tests.rs"]
mod tests;
