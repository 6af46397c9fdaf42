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
            tenant,
            at,
        } => {
            let mut r = register(&job, &ranks, gpus.as_deref(), tenant)?;
            allocated(&mut r, &node_gpus)?;
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

/// Adds `NODE=0,2-3` arguments (the GPU indices Slurm allocated on NODE)
/// to the record's `node_gpus`; each node must be one of the job's.
pub(crate) fn allocated(r: &mut JobRecord, args: &[String]) -> Result<()> {
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
        allocated(&mut r, &["n1=0,2-3".into()]).unwrap();
        assert_eq!(r.node_gpus["n1"], vec![0, 2, 3]);
        let e = allocated(&mut r, &["n9=1".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("not in --ranks"), "{e:#}");
        assert!(allocated(&mut r, &["n1=3-1".into()]).is_err());
    }
}
