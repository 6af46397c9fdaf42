//! `keel slurm jobs`: what keel reads from Slurm, for an operator to check
//! against their cluster: each job, its state, its nodes and the GPU
//! indices Slurm allocated on each, and what keel could not tell (a GPU
//! mapping left unknown, with the reason). From the live Slurm (`squeue
//! --json`, with `scontrol show job -d` for GRES detail, or that text alone
//! where squeue has no JSON), or from a saved `squeue --json`, `scontrol
//! show job -d --json` or `scontrol show job -d` output.

use anyhow::{bail, Context, Result};
use keel_adapters::executors::slurm::{
    parse_scontrol_jobs, parse_squeue_json, Gpus, SlurmExecutor, SlurmJob,
};
use keel_adapters::Journal;
use std::path::PathBuf;

/// The largest saved output read (bytes): Slurm's JSON for a very large
/// queue stays well under it.
pub const MAX_INPUT: u64 = 512 << 20;

#[derive(clap::Subcommand)]
pub(crate) enum SlurmCommand {
    /// Each job Slurm lists: state, nodes, GPU indices per node, and what keel could not tell
    Jobs {
        /// A saved `squeue --json`, `scontrol show job -d --json` or
        /// `scontrol show job -d` output (the kind is detected), or `-` for
        /// standard input; without it, the live Slurm is asked
        #[arg(long)]
        input: Option<PathBuf>,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
}

pub(crate) fn run(command: SlurmCommand) -> Result<()> {
    match command {
        SlurmCommand::Jobs { input, json } => {
            let (jobs, source) = match input {
                Some(path) => {
                    let text = read(&path)?;
                    let (jobs, kind) =
                        parse_any(&text).with_context(|| format!("reading {}", path.display()))?;
                    (jobs, format!("{} ({kind})", path.display()))
                }
                None => SlurmExecutor::new(Journal::in_memory())
                    .jobs_from()
                    .context("asking Slurm")?,
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&to_json(&jobs, &source))?
                );
            } else {
                print!("{}", table(&jobs, &source));
            }
            Ok(())
        }
    }
}

fn read(path: &PathBuf) -> Result<String> {
    use std::io::Read;
    let mut text = String::new();
    if path.as_os_str() == "-" {
        std::io::stdin()
            .take(MAX_INPUT + 1)
            .read_to_string(&mut text)?;
    } else {
        std::fs::File::open(path)
            .with_context(|| format!("opening {}", path.display()))?
            .take(MAX_INPUT + 1)
            .read_to_string(&mut text)
            .with_context(|| format!("reading {}", path.display()))?;
    }
    if text.len() as u64 > MAX_INPUT {
        bail!("{} is over {MAX_INPUT} bytes", path.display());
    }
    Ok(text)
}

/// Reads any of the outputs keel knows, and says which it took it for.
pub(crate) fn parse_any(text: &str) -> Result<(Vec<SlurmJob>, &'static str)> {
    let t = text.trim_start();
    if t.starts_with('{') {
        let jobs = parse_squeue_json(text)?;
        return Ok((
            jobs,
            "Slurm JSON: squeue --json or scontrol show job --json",
        ));
    }
    if t.is_empty() || t.starts_with("No jobs") || t.contains("JobId=") {
        let jobs = parse_scontrol_jobs(text)?;
        return Ok((jobs, "scontrol show job text"));
    }
    bail!("neither Slurm JSON (squeue --json) nor scontrol show job text")
}

fn gpus_cell(g: &[u32]) -> String {
    if g.is_empty() {
        "none".to_string()
    } else {
        g.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
    }
}

/// One row per job and node: JOB STATE NODE GPUS, then what keel could not
/// tell (`-` for a job without nodes).
pub(crate) fn table(jobs: &[SlurmJob], source: &str) -> String {
    let mut rows: Vec<[String; 5]> = vec![[
        "JOB".into(),
        "STATE".into(),
        "NODE".into(),
        "GPUS".into(),
        "NOT KNOWN".into(),
    ]];
    for j in jobs {
        let id = j.job_id.to_string();
        if j.nodes.is_empty() {
            let note = if j.reason.is_empty() {
                "-".to_string()
            } else {
                format!("no nodes yet ({})", j.reason)
            };
            rows.push([id, j.state.clone(), "-".into(), "-".into(), note]);
            continue;
        }
        for n in &j.nodes {
            let (gpus, note) = match &j.gpus {
                Gpus::Known(m) => (
                    m.get(n).map_or("unknown".into(), |g| gpus_cell(g)),
                    "-".to_string(),
                ),
                Gpus::Unknown(why) => ("unknown".to_string(), format!("GPU indices: {why}")),
            };
            rows.push([id.clone(), j.state.clone(), n.clone(), gpus, note]);
        }
    }
    let mut width = [0usize; 4];
    for r in &rows {
        for (w, c) in width.iter_mut().zip(r.iter()) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = format!("from {source}: {} jobs\n", jobs.len());
    for r in &rows {
        for (c, w) in r.iter().zip(width) {
            out.push_str(&format!("{c:<w$}  "));
        }
        out.push_str(&r[4]);
        out.push('\n');
    }
    out
}

/// The same as JSON: `gpus` maps node -> indices when known, else is null
/// with `gpus_unknown` saying why.
pub(crate) fn to_json(jobs: &[SlurmJob], source: &str) -> serde_json::Value {
    let jobs: Vec<serde_json::Value> = jobs
        .iter()
        .map(|j| {
            let (gpus, unknown) = match &j.gpus {
                Gpus::Known(m) => (serde_json::json!(m), serde_json::Value::Null),
                Gpus::Unknown(why) => (serde_json::Value::Null, serde_json::json!(why)),
            };
            serde_json::json!({
                "job": j.job_id,
                "state": j.state,
                "keel_state": j.job_state().wire(),
                "nodes": j.nodes,
                "gpus": gpus,
                "gpus_unknown": unknown,
                "user": j.user,
                "account": j.account,
                "partition": j.partition,
                "name": j.name,
                "reason": j.reason,
            })
        })
        .collect();
    serde_json::json!({ "source": source, "jobs": jobs })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wild(path: &str) -> String {
        let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/data/wild")
            .join(path);
        std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// The table rows (job, state, node, GPUs) of a fixture read as
    /// `keel slurm jobs --input` reads it.
    fn rows(path: &str) -> Vec<(String, String, String, String)> {
        let (jobs, _) = parse_any(&wild(path)).unwrap();
        table(&jobs, "f")
            .lines()
            .skip(2)
            .map(|l| {
                let c: Vec<&str> = l.split_whitespace().collect();
                (c[0].into(), c[1].into(), c[2].into(), c[3].into())
            })
            .collect()
    }

    fn row(j: &str, s: &str, n: &str, g: &str) -> (String, String, String, String) {
        (j.into(), s.into(), n.into(), g.into())
    }

    #[test]
    fn entry_24_text_gives_gpu_indices_per_job() {
        let r = rows("24-slurm-scontrol-show-job-multi/scontrol-show-job.txt");
        assert_eq!(
            r,
            [
                row("1", "RUNNING", "node-63", "none"),
                row("1", "RUNNING", "node-64", "none"),
                row("1", "RUNNING", "node-65", "none"),
                row("2398617", "COMPLETED", "node-44", "none"),
                row("153291", "RUNNING", "node-06", "0,2,3,5"),
                row("134238037", "PENDING", "-", "-"),
                row("2423559", "RUNNING", "gpu-node-08", "5"),
                row("20547", "PENDING", "-", "-"),
                row("1306093", "RUNNING", "node-12", "none"),
                row("25686416", "RUNNING", "node-005", "3"),
                row("25687666", "RUNNING", "node-001", "1"),
            ]
        );
        let (jobs, kind) = parse_any(&wild(
            "24-slurm-scontrol-show-job-multi/scontrol-show-job.txt",
        ))
        .unwrap();
        assert_eq!(kind, "scontrol show job text");
        let v = to_json(&jobs, "f");
        assert_eq!(
            v["jobs"][2]["gpus"]["node-06"],
            serde_json::json!([0, 2, 3, 5])
        );
        assert_eq!(v["jobs"][4]["gpus"]["gpu-node-08"], serde_json::json!([5]));
    }

    #[test]
    fn json_fixtures_say_what_they_cannot_tell() {
        let r = rows("03-slurm-23.11-jobs/squeue.json");
        let ids: Vec<&str> = r.iter().map(|x| x.0.as_str()).collect();
        assert_eq!(
            ids,
            [
                "776", "777", "778", "779", "780", "781", "782", "783", "784", "785", "786", "787",
                "788", "789"
            ]
        );
        assert_eq!(r[0], row("776", "TIMEOUT", "cn1", "unknown"));
        assert_eq!(r[2], row("778", "FAILED", "cn1", "unknown"));
        assert_eq!(r[8], row("784", "RUNNING", "cn4", "unknown"));
        assert_eq!(r[11], row("787", "PENDING", "-", "-"));
        assert_eq!(
            rows("04-slurm-24.05-job-timeout/scontrol-job.json"),
            [row("649717", "TIMEOUT", "cn001", "unknown")]
        );
        assert_eq!(
            rows("06-slurm-24.11-job-failed/scontrol-job.json"),
            [row("6359", "FAILED", "cn1", "unknown")]
        );
        assert_eq!(
            rows("07-slurm-21.08-squeue-mixed/squeue.json"),
            [
                row("26515966", "RUNNING", "gpu-node-01", "unknown"),
                row("58948420", "PENDING", "-", "-")
            ]
        );
        let (jobs, _) = parse_any(&wild("06-slurm-24.11-job-failed/scontrol-job.json")).unwrap();
        let t = table(&jobs, "f");
        assert!(
            t.contains("GPU indices: Slurm gave no per-node GRES detail"),
            "{t}"
        );
        let v = to_json(&jobs, "f");
        assert!(v["jobs"][0]["gpus"].is_null());
        assert_eq!(v["jobs"][0]["keel_state"], "FAILED");
    }

    #[test]
    fn other_input_is_refused() {
        assert!(parse_any("hello").is_err());
        assert!(parse_any("{\"nodes\": []}").is_err());
        assert!(parse_any("No jobs in the system\n").unwrap().0.is_empty());
    }
}
