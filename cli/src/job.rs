//! `keel job register/end`: the operator (or a Slurm prolog/epilog) tells
//! the controller where a job's ranks run, and when it ends.

use crate::{ask, JobCommand};
use anyhow::{bail, Context, Result};
use keel_model::{JobRecord, JobState, Name};

pub fn run(command: JobCommand) -> Result<()> {
    let (record, at) = match command {
        JobCommand::Register {
            job,
            ranks,
            gpus,
            node_gpus,
            slurm_detail,
            tenant,
            at,
        } => {
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
