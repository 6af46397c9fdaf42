//! `scontrol show job [-d] [-o] [ID]` text, sans-IO: records of
//! `Key=Value` words, one per line with `-o` or spread over indented lines
//! without it (records then start at a line beginning `JobId=`). With `-d`
//! each record carries per-node detail groups, `Nodes=H CPU_IDs=... Mem=...
//! GRES=gpu:2(IDX:0,2)` (`GRES_IDX=` in versions before 20.02), which say
//! the GPU indices the job holds on each node (a group may name several
//! nodes with the same allocation: `Nodes=node-[63-65]`).

use super::slurm_gres::{gpus_in_gres, Gpus};
use super::slurm_parse::{bad, checked_state, expand_hostlist, is_key, unset, SlurmJob, MAX_JOBS};
use super::ExecError;
use std::collections::BTreeMap;

/// The keys of a per-node detail group, after its `Nodes=`.
const DETAIL_KEYS: &[&str] = &["CPU_IDs", "Mem", "GRES", "GRES_IDX"];

/// The words of one record as ordered `(key, value)` pairs; a word that
/// does not start a `Key=` continues the previous value (`Command=a b`).
fn pairs(record: &str) -> Vec<(String, String)> {
    let mut out: Vec<(String, String)> = Vec::new();
    for word in record.split_whitespace() {
        match word.split_once('=') {
            Some((k, v)) if is_key(k) => out.push((k.to_string(), v.to_string())),
            _ => {
                if let Some((_, v)) = out.last_mut() {
                    v.push(' ');
                    v.push_str(word);
                }
            }
        }
    }
    out
}

/// Splits the text into records: each starts at a line whose first word is
/// `JobId=`; lines before the first (`No jobs in the system`) are dropped.
fn records(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        if line.trim_start().starts_with("JobId=") {
            out.push(String::new());
        }
        if let Some(r) = out.last_mut() {
            r.push_str(line);
            r.push('\n');
        }
    }
    out
}

/// `root(0)` -> `root`.
fn name_of_id(v: Option<&String>) -> String {
    let s = unset(v);
    match s.split_once('(') {
        Some((name, _)) => name.to_string(),
        None => s,
    }
}

/// The jobs of `scontrol show job [-d] [-o] [ID]`, one-line or multi-line.
/// A job without a numeric `JobId` or a state keel knows is an error that
/// names it. Its GPUs are known when every node it runs on has a detail
/// group (`-d`), else unknown, with the reason.
pub fn parse_scontrol_jobs(text: &str) -> Result<Vec<SlurmJob>, ExecError> {
    const WHAT: &str = "scontrol show job";
    let mut out = Vec::new();
    for record in records(text) {
        if out.len() >= MAX_JOBS {
            return Err(bad(WHAT, format!("more than {MAX_JOBS} jobs")));
        }
        let mut kv: BTreeMap<String, String> = BTreeMap::new();
        // Per-node detail: nodes -> GRES, or Err(why) for a group whose
        // GPUs cannot be read.
        let mut detail: BTreeMap<String, Result<Vec<u32>, String>> = BTreeMap::new();
        let mut groups = 0usize;
        let mut group: Option<(Vec<String>, Option<String>)> = None;
        let close = |g: Option<(Vec<String>, Option<String>)>,
                     detail: &mut BTreeMap<String, Result<Vec<u32>, String>>| {
            if let Some((nodes, gres)) = g {
                let gpus = gpus_in_gres(gres.as_deref().unwrap_or(""));
                for n in nodes {
                    detail.insert(n, gpus.clone());
                }
            }
        };
        for (k, v) in pairs(&record) {
            if k == "Nodes" {
                close(group.take(), &mut detail);
                groups += 1;
                group = Some((expand_hostlist(&v)?, None));
                continue;
            }
            if let Some((_, gres)) = group.as_mut() {
                if DETAIL_KEYS.contains(&k.as_str()) {
                    if k.starts_with("GRES") {
                        *gres = Some(v);
                    }
                    continue;
                }
                close(group.take(), &mut detail);
            }
            kv.entry(k).or_insert(v);
        }
        close(group.take(), &mut detail);
        let Some(id) = kv.get("JobId") else { continue };
        let job_id: u64 = id
            .parse()
            .map_err(|_| bad(WHAT, format!("JobId={id} is not a number")))?;
        let state = checked_state(WHAT, job_id, "JobState", &unset(kv.get("JobState")))?;
        let nodes = expand_hostlist(&unset(kv.get("NodeList")))?;
        let gpus = if nodes.is_empty() {
            Gpus::Known(BTreeMap::new())
        } else if groups == 0 {
            Gpus::Unknown("no per-node detail (scontrol show job without -d)".into())
        } else {
            let mut m = BTreeMap::new();
            let mut why = None;
            for n in &nodes {
                match detail.get(n) {
                    Some(Ok(g)) => {
                        m.insert(n.clone(), g.clone());
                    }
                    Some(Err(e)) => {
                        why = Some(format!("{n}: {e}"));
                        break;
                    }
                    None => {
                        why = Some(format!("{n}: no detail line names it"));
                        break;
                    }
                }
            }
            match why {
                Some(w) => Gpus::Unknown(w),
                None => Gpus::Known(m),
            }
        };
        out.push(SlurmJob {
            job_id,
            state,
            nodes,
            user: name_of_id(kv.get("UserId")),
            account: unset(kv.get("Account")),
            partition: unset(kv.get("Partition")),
            name: unset(kv.get("JobName")),
            excluded_nodes: expand_hostlist(&unset(kv.get("ExcNodeList")))?,
            reason: unset(kv.get("Reason")),
            gpus,
        });
    }
    Ok(out)
}
