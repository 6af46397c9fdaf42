//! Reading what Slurm's clients print, sans-IO: `squeue --json` (the
//! OpenAPI v0.0.38 shape of Slurm 22.05, and the later shapes where states
//! are lists and numbers are `{set, number}` objects), `scontrol show job -o`
//! and `scontrol show node -o` (one `Key=Value` line per record), and
//! hostlist expressions (`gpu[01-04,07]`).

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
}

impl SlurmJob {
    pub fn job_state(&self) -> JobState {
        job_state(&self.state)
    }

    /// The job as keel's trace and controller describe jobs. Slurm does not
    /// say where ranks run; with `ranks_per_node` > 0 they are numbered
    /// node by node in allocation order (as `srun` places block-distributed
    /// tasks), otherwise left for the prolog or the operator to register.
    /// The tenant is the account where one is set, else the user.
    pub fn to_record(&self, ts: Timestamp, ranks_per_node: u32) -> JobRecord {
        let mut ranks = BTreeMap::new();
        let mut gpus = BTreeMap::new();
        if ranks_per_node > 0 {
            for (i, node) in self.nodes.iter().enumerate() {
                let first = i as u32 * ranks_per_node;
                let on_node: Vec<u32> = (first..first + ranks_per_node).collect();
                for (local, rank) in on_node.iter().enumerate() {
                    gpus.insert(*rank, local as u32);
                }
                ranks.insert(Name::from(node.as_str()), on_node);
            }
        }
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
            node_gpus: Default::default(),
            tp: None,
            pp: None,
            replica: None,
        }
    }
}

/// Slurm's base job state names onto keel's.
pub fn job_state(s: &str) -> JobState {
    match s {
        "PENDING" | "REQUEUED" | "REQUEUE_HOLD" | "REQUEUE_FED" => JobState::Pending,
        "RUNNING" | "CONFIGURING" => JobState::Running,
        "COMPLETING" => JobState::Completing,
        "COMPLETED" => JobState::Completed,
        "FAILED" | "BOOT_FAIL" => JobState::Failed,
        "TIMEOUT" | "DEADLINE" => JobState::Timeout,
        "OUT_OF_MEMORY" => JobState::OutOfMemory,
        "CANCELLED" => JobState::Cancelled,
        "NODE_FAIL" => JobState::NodeFail,
        "PREEMPTED" => JobState::Preempted,
        "SUSPENDED" => JobState::Suspended,
        _ => JobState::Other,
    }
}

fn bad(what: &str, why: impl Into<String>) -> ExecError {
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

/// The base state: a string (22.05) or the first known name in a list of
/// state and flags (23.02 and later).
fn state_of(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) => {
            let names: Vec<&str> = a.iter().filter_map(Value::as_str).collect();
            names
                .iter()
                .find(|s| job_state(s) != JobState::Other)
                .or(names.first())
                .map(|s| s.to_string())
                .unwrap_or_default()
        }
        _ => String::new(),
    }
}

/// Parses `squeue --json`. Jobs without a readable id are an error (so
/// that a format change is noticed, not read as an empty queue).
pub fn parse_squeue_json(text: &str) -> Result<Vec<SlurmJob>, ExecError> {
    const WHAT: &str = "squeue --json";
    let doc: Value = serde_json::from_str(text).map_err(|e| bad(WHAT, e.to_string()))?;
    let jobs = doc
        .get("jobs")
        .and_then(Value::as_array)
        .ok_or_else(|| bad(WHAT, "no \"jobs\" list"))?;
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
        out.push(SlurmJob {
            job_id,
            state: state_of(j.get("job_state")),
            nodes,
            user: string(j.get("user_name")),
            account: string(j.get("account")),
            partition: string(j.get("partition")),
            name: string(j.get("name")),
            excluded_nodes,
            reason: string(j.get("state_reason")),
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

fn is_key(k: &str) -> bool {
    let mut b = k.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic())
        && b.all(|c| c.is_ascii_alphanumeric() || b"_:/".contains(&c))
}

/// `(null)` and `N/A` mean "unset" in scontrol's output.
fn unset(v: Option<&String>) -> String {
    match v.map(String::as_str) {
        None | Some("(null)") | Some("N/A") => String::new(),
        Some(s) => s.to_string(),
    }
}

/// `root(0)` -> `root`.
fn name_of_id(v: Option<&String>) -> String {
    let s = unset(v);
    match s.split_once('(') {
        Some((name, _)) => name.to_string(),
        None => s,
    }
}

/// The jobs of `scontrol show job -o [ID]`, one per line.
pub fn parse_scontrol_jobs(text: &str) -> Result<Vec<SlurmJob>, ExecError> {
    const WHAT: &str = "scontrol show job";
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let kv = parse_kv(line);
        let Some(id) = kv.get("JobId") else {
            // "No jobs in the system" and the like.
            continue;
        };
        let job_id = id
            .parse()
            .map_err(|_| bad(WHAT, format!("JobId={id} is not a number")))?;
        out.push(SlurmJob {
            job_id,
            state: unset(kv.get("JobState")),
            nodes: expand_hostlist(&unset(kv.get("NodeList")))?,
            user: name_of_id(kv.get("UserId")),
            account: unset(kv.get("Account")),
            partition: unset(kv.get("Partition")),
            name: unset(kv.get("JobName")),
            excluded_nodes: expand_hostlist(&unset(kv.get("ExcNodeList")))?,
            reason: unset(kv.get("Reason")),
        });
    }
    Ok(out)
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
