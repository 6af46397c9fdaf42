//! `keel job register/end`: the operator (or a Slurm prolog/epilog) tells
//! the controller where a job's ranks run, and when it ends.

use crate::{ask, ControllerAt, JobCommand};
use anyhow::{bail, Context, Result};
use keel_model::{JobRecord, JobState, Message, Name, Query};
use std::path::Path;
use std::time::Duration;

/// Registrations from `--file` in flight at once.
pub const IN_FLIGHT: usize = 256;
/// Tries per record before it counts as not applied (same session and seq,
/// so a retry of one that did commit is answered with its first outcome).
pub const ATTEMPTS: u32 = 4;

pub fn run(command: JobCommand) -> Result<()> {
    let (record, at) = match command {
        JobCommand::Register {
            file: Some(file),
            at,
            ..
        } => return register_file(&file, &at),
        JobCommand::Register {
            job,
            ranks,
            gpus,
            node_gpus,
            slurm_detail,
            tenant,
            at,
            file: None,
        } => {
            let Some(job) = job else {
                bail!("give --job and --ranks, or --file FILE");
            };
            if ranks.is_empty() {
                bail!("--ranks NODE=RANK,... is required with --job");
            }
            let mut r = register(&job, &ranks, gpus.as_deref(), tenant)?;
            allocated(&mut r, &node_gpus, slurm_detail.as_deref(), true)?;
            (r, at)
        }
        JobCommand::End { job, state, at } => {
            let state: JobState = serde_json::from_value(serde_json::Value::String(state.clone()))
                .with_context(|| format!("--state {state}"))?;
            if !state.is_finished() {
                bail!("--state {state} is not a final state (COMPLETED, FAILED, CANCELLED, TIMEOUT, ...)");
            }
            (record(&job, state), at)
        }
    };
    let params = [(
        "record".to_string(),
        serde_json::to_string(&record).context("encoding the job record")?,
    )]
    .into_iter()
    .collect();
    ask(&at, "job", params)
}

/// One line of a `--file`: a job record as JSON, or `JOB NODE=RANK,... ...`
/// (the `--job` and `--ranks` of one `keel job register`, GPUs by default).
fn parse_line(line: &str) -> Result<JobRecord> {
    if line.starts_with('{') {
        return serde_json::from_str(line).context("not a job record (JSON)");
    }
    let mut words = line.split_whitespace();
    let job = words.next().context("empty line")?;
    let ranks: Vec<String> = words.map(String::from).collect();
    if ranks.is_empty() {
        bail!("expected JOB NODE=RANK,RANK,... or a JSON job record");
    }
    register(job, &ranks, None, None)
}

/// `keel job register --file FILE`: every record of FILE under one session
/// of this process, [`IN_FLIGHT`] at a time. Exits non-zero naming every
/// line that was not applied.
fn register_file(file: &Path, at: &ControllerAt) -> Result<()> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut records = Vec::new();
    let mut bad = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match parse_line(line) {
            Ok(r) => records.push((i + 1, r)),
            Err(e) => bad.push(format!("{}:{}: {e:#}", file.display(), i + 1)),
        }
    }
    if !bad.is_empty() {
        for b in &bad {
            eprintln!("{b}");
        }
        bail!("{} line(s) are not job records; nothing sent", bad.len());
    }
    let op = crate::queries::connect(at)?;
    let client = session(&at.target()?.credentials);
    let total = records.len();
    // Seqs past the records' own, for a record asked again after its first
    // seq fell out of the session's window (refused as stale).
    let fresh = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(total as u64 + 1));
    let failed = op.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        let mut failed = Vec::new();
        let mut records = records.into_iter().enumerate();
        loop {
            while tasks.len() < IN_FLIGHT {
                let Some((i, (line, record))) = records.next() else {
                    break;
                };
                let conn = op.connection();
                let client = client.clone();
                let fresh = fresh.clone();
                tasks.spawn(async move {
                    let r = propose_job(&conn, &client, i as u64 + 1, &fresh, &record).await;
                    (line, record.job, r)
                });
            }
            match tasks.join_next().await {
                None => break,
                Some(Ok((_, _, Ok(())))) => {}
                Some(Ok((line, job, Err(e)))) => failed.push((line, job, e)),
                Some(Err(e)) => failed.push((0, "?".into(), e.to_string())),
            }
        }
        failed
    });
    for (line, job, e) in &failed {
        eprintln!("{}:{line}: job {job}: not applied: {e}", file.display());
    }
    if !failed.is_empty() {
        bail!("{} of {total} job records not applied", failed.len());
    }
    eprintln!("{}: {total} job records applied", file.display());
    Ok(())
}

/// This run's session: the operator's name and a random number.
fn session(credentials: &Path) -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    let who = credentials
        .file_name()
        .map_or_else(|| "operator".into(), |n| n.to_string_lossy().into_owned());
    format!("{who}/{:016x}", h.finish())
}

/// Proposes one record under (`client`, `seq`), asking again under the same
/// seq when the answer is lost (a job record applied twice changes nothing,
/// and the session answers a duplicate with its first outcome); under a
/// fresh seq when the first one is refused as stale.
async fn propose_job(
    conn: &keel_transport::Connection,
    client: &str,
    mut seq: u64,
    fresh: &std::sync::atomic::AtomicU64,
    record: &JobRecord,
) -> std::result::Result<(), String> {
    let command = serde_json::json!({"job": {"record": record}}).to_string();
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(500 << attempt)).await;
        }
        let params = [
            ("client", client.to_string()),
            ("seq", seq.to_string()),
            ("command", command.clone()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect();
        let q = Message::Query(Query {
            id: seq,
            topic: "propose".into(),
            params,
        });
        match conn.request(q, crate::controller::ASK_TIMEOUT).await {
            Ok(Message::QueryReply(r)) if r.ok => return Ok(()),
            Ok(Message::QueryReply(r)) if r.body.contains("\"stale\"") => {
                seq = fresh.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                last = r.body;
            }
            // Rejected by the state machine: asking again changes nothing.
            Ok(Message::QueryReply(r)) if r.body.starts_with("rejected") => return Err(r.body),
            Ok(Message::QueryReply(r)) => last = r.body,
            Ok(other) => last = format!("answered with {}", other.kind()),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

pub(crate) fn record(job: &str, state: JobState) -> JobRecord {
    JobRecord::state_only(job, state, keel_actors::sources::unix_now())
}

/// Adds the GPU indices Slurm allocated to the record's `node_gpus`: from
/// `NODE=0,2-3` arguments (each node must be one of the job's), and from
/// `scontrol show job -d -o ID` output (`detail`: its per-node GRES; a
/// mapping it leaves unknown is said on stderr and left out). With
/// `ranks_follow`, a node's ranks are put on its allocated GPUs in order
/// when Slurm named as many GPUs as the node has ranks (over `--gpus`,
/// which is then a guess).
pub(crate) fn allocated(
    r: &mut JobRecord,
    args: &[String],
    detail: Option<&str>,
    ranks_follow: bool,
) -> Result<()> {
    use keel_adapters::executors::slurm::{parse_scontrol_jobs, Gpus};
    if let Some(text) = detail {
        let jobs = parse_scontrol_jobs(text).context("--slurm-detail")?;
        match jobs.iter().find(|j| j.job_id.to_string() == r.job.as_str()) {
            Some(j) => match &j.gpus {
                Gpus::Known(m) => {
                    for (node, idx) in m {
                        let node: Name = node.as_str().into();
                        if r.nodes.contains(&node) {
                            r.node_gpus.insert(node, idx.clone());
                        }
                    }
                }
                Gpus::Unknown(why) => eprintln!("job {}: GPU indices unknown: {why}", r.job),
            },
            None => eprintln!("job {}: --slurm-detail does not describe it", r.job),
        }
    }
    for arg in args {
        let (node, list) = arg
            .split_once('=')
            .with_context(|| format!("--node-gpus {arg:?}: expected NODE=IDX,IDX-IDX"))?;
        let node: Name = node.trim().into();
        if !r.nodes.contains(&node) {
            bail!("--node-gpus {arg:?}: {node} is not in --ranks");
        }
        let idx = keel_adapters::executors::slurm_gres::parse_index_list(list)
            .map_err(|why| anyhow::anyhow!("--node-gpus {arg:?}: {why}"))?;
        r.node_gpus.insert(node, idx);
    }
    if ranks_follow {
        for (node, idx) in &r.node_gpus {
            if let Some(ranks) = r.ranks.get(node).filter(|x| x.len() == idx.len()) {
                for (rank, gpu) in ranks.iter().zip(idx) {
                    r.gpus.insert(*rank, *gpu);
                }
            }
        }
    }
    Ok(())
}

/// Builds a running job's record from `NODE=R,R,...` and `R=G,...` arguments.
pub(crate) fn register(
    job: &str,
    ranks: &[String],
    gpus: Option<&str>,
    tenant: Option<String>,
) -> Result<JobRecord> {
    let mut r = record(job, JobState::Running);
    r.tenant = tenant.map(|t| t.as_str().into());
    for arg in ranks {
        let (node, list) = arg
            .split_once('=')
            .with_context(|| format!("--ranks {arg:?}: expected NODE=RANK,RANK,..."))?;
        let node: Name = node.trim().into();
        let mut on_node = Vec::new();
        for x in list.split(',').filter(|x| !x.trim().is_empty()) {
            let rank: u32 = x
                .trim()
                .parse()
                .with_context(|| format!("--ranks {arg:?}: rank {x:?} is not a number"))?;
            if r.ranks.values().any(|v| v.contains(&rank)) || on_node.contains(&rank) {
                bail!("--ranks: rank {rank} is given twice");
            }
            on_node.push(rank);
        }
        r.nodes.push(node.clone());
        r.ranks.insert(node, on_node);
    }
    let all: Vec<u32> = r.ranks.values().flatten().copied().collect();
    match gpus {
        Some(g) => {
            for pair in g.split(',').filter(|x| !x.trim().is_empty()) {
                let (rank, gpu) = pair
                    .split_once('=')
                    .with_context(|| format!("--gpus {pair:?}: expected RANK=GPU"))?;
                let rank: u32 = rank
                    .trim()
                    .parse()
                    .with_context(|| format!("--gpus {pair:?}"))?;
                let gpu: u32 = gpu
                    .trim()
                    .parse()
                    .with_context(|| format!("--gpus {pair:?}"))?;
                if !all.contains(&rank) {
                    bail!("--gpus {pair:?}: rank {rank} is not in --ranks");
                }
                r.gpus.insert(rank, gpu);
            }
        }
        None => {
            for rank in &all {
                r.gpus.insert(*rank, rank % 8);
            }
        }
    }
    r.tp = Some(all.len() as u32);
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_gpus_parse() {
        let r = register(
            "j1",
            &["n1=0,1".into(), "n2=2,3".into()],
            Some("0=0,1=1,2=0,3=1"),
            None,
        )
        .unwrap();
        assert_eq!(r.ranks["n2"], vec![2, 3]);
        assert_eq!(r.gpus[&3], 1);
        assert_eq!(r.tp, Some(4));
    }

    #[test]
    fn file_lines_are_records_or_arguments() {
        let r = parse_line("j7 n1=0,1 n2=2").unwrap();
        assert_eq!(r.job, "j7");
        assert_eq!(r.ranks["n2"], vec![2]);
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(parse_line(&json).unwrap(), r);
        assert!(parse_line("j7").is_err());
        assert!(parse_line("{\"job\": 1}").is_err());
    }

    #[test]
    fn bad_arguments_are_named() {
        let e = register("j1", &["n1=0,x".into()], None, None).unwrap_err();
        assert!(format!("{e:#}").contains("rank \"x\""), "{e:#}");
        let e = register("j1", &["n1=0".into(), "n2=0".into()], None, None).unwrap_err();
        assert!(format!("{e:#}").contains("given twice"), "{e:#}");
        let e = register("j1", &["n1=0".into()], Some("5=1"), None).unwrap_err();
        assert!(format!("{e:#}").contains("not in --ranks"), "{e:#}");
    }

    #[test]
    fn allocated_gpus_are_read_per_node() {
        let mut r = register("j1", &["n1=0,1".into()], None, None).unwrap();
        allocated(&mut r, &["n1=0,2-3".into()], None, true).unwrap();
        assert_eq!(r.node_gpus["n1"], vec![0, 2, 3]);
        // Three GPUs for two ranks: the ranks' GPUs stay as they were.
        assert_eq!((r.gpus[&0], r.gpus[&1]), (0, 1));
        let e = allocated(&mut r, &["n9=1".into()], None, true).unwrap_err();
        assert!(format!("{e:#}").contains("not in --ranks"), "{e:#}");
        assert!(allocated(&mut r, &["n1=3-1".into()], None, true).is_err());
        // From scontrol show job -d -o: the ranks follow the allocation.
        let mut r = register("42", &["g1=0,1".into(), "g2=2".into()], None, None).unwrap();
        let detail = "JobId=42 JobState=RUNNING NodeList=g[1-2] Nodes=g1 CPU_IDs=0 Mem=0 GRES=gpu:2(IDX:3,5) Nodes=g2 CPU_IDs=0 Mem=0 GRES=gpu:1(IDX:7)\n";
        allocated(&mut r, &[], Some(detail), true).unwrap();
        assert_eq!(r.node_gpus["g1"], vec![3, 5]);
        assert_eq!((r.gpus[&0], r.gpus[&1], r.gpus[&2]), (3, 5, 7));
        // Unknown (by count): nothing added.
        let mut r = register("42", &["g1=0".into()], None, None).unwrap();
        let detail =
            "JobId=42 JobState=RUNNING NodeList=g1 Nodes=g1 CPU_IDs=0 Mem=0 GRES=gpu:1(CNT:1)\n";
        allocated(&mut r, &[], Some(detail), true).unwrap();
        assert!(r.node_gpus.is_empty());
    }
}
