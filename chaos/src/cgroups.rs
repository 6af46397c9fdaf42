//! Each Slurm job's cgroup CPU use on a node, as the cgroup exporter (or
//! keel's `linux` source reading cgroup v2 `cpu.stat`) reports it:
//! `cgroup_cpu_total_seconds{cgroup="/system.slice/slurmstepd.scope/job_<id>"}`,
//! a counter of CPU seconds. Written only for clusters with `cgroups` set.
//!
//! A job takes about one CPU per rank on the node (each rank's launch and
//! communication threads); a rank starved of CPU gets a little less. A
//! co-located tenant (`Tenant`: another job's cgroup, id 9000 + the node's
//! index) idles at a few hundredths of a CPU, or is absent until it
//! arrives, and takes its CPUs while its episode lasts; a `CpuBurst` decoy
//! is the same tenant busy while no rank on the node lacks anything.

use crate::plan::{Event, Fault, Plan, Symptom};
use crate::rng::{round_dec, stream, Rng8, RngExt};
use crate::writer::Out;
use keel_model::{MetricLabels, MetricName, Name};

/// Stream id of a node's cgroup readings (apart from its other signals, so
/// that scenarios without cgroups draw exactly what they drew before).
const STREAM: u64 = 20_000;

/// The cgroup v2 path of a Slurm job's cgroup.
pub fn job_cgroup(id: &str) -> Name {
    Name::from(format!("/system.slice/slurmstepd.scope/job_{id}"))
}

/// The tenant job of node `node`.
fn tenant_id(node: usize) -> String {
    (9000 + node).to_string()
}

pub struct CgroupSig {
    rng: Rng8,
    /// CPU seconds so far, per cgroup (jobs in plan order, then the tenant).
    totals: Vec<(Name, f64)>,
}

impl CgroupSig {
    pub fn new(seed: u64, node: usize) -> CgroupSig {
        CgroupSig {
            rng: stream(seed, STREAM + node as u64),
            totals: Vec::new(),
        }
    }

    fn add(&mut self, path: Name, cpus: f64) -> f64 {
        let i = match self.totals.iter().position(|(p, _)| *p == path) {
            Some(i) => i,
            None => {
                self.totals.push((path, 0.0));
                self.totals.len() - 1
            }
        };
        self.totals[i].1 += cpus.max(0.0);
        self.totals[i].1
    }

    /// The node's readings for the second ending at true time `t`.
    pub fn sample(
        &mut self,
        plan: &Plan,
        node: usize,
        t: f64,
        ts: f64,
        name: &Name,
        out: &mut Out,
    ) {
        let mut starved: Option<usize> = None;
        let mut tenant: Option<(f64, bool)> = None;
        for ep in plan.node_episodes(node).filter(|e| e.active(t)) {
            if let Fault::Straggler {
                job,
                rank,
                symptom: Symptom::Host { tenant: tn, .. },
                ..
            } = &ep.fault
            {
                if plan.cluster.jobs[*job].ranks[*rank as usize].node == node {
                    starved = Some(*job);
                    tenant = tn.map(|x| (x.cpus, x.arrives)).or(tenant);
                }
            }
        }
        let arrives = plan.node_episodes(node).any(|ep| match &ep.fault {
            Fault::Straggler {
                symptom: Symptom::Host {
                    tenant: Some(x), ..
                },
                ..
            } => x.arrives,
            _ => false,
        });
        for ev in plan.node_events(node) {
            if let Event::CpuBurst { from, to, rate, .. } = ev {
                if *from <= t && t < *to {
                    tenant = Some((rate * 10.0, false));
                }
            }
        }
        let mut readings: Vec<(Name, f64)> = Vec::new();
        for (j, job) in plan.cluster.jobs.iter().enumerate() {
            let here = job.ranks.iter().filter(|r| r.node == node).count();
            if here == 0 || t < job.start || t >= job.end_time() {
                continue;
            }
            let mut cpus = here as f64 * self.rng.uni(0.9, 1.1);
            if starved == Some(j) {
                cpus *= 0.8;
            }
            let total = self.add(job_cgroup(&job.id), cpus);
            readings.push((job_cgroup(&job.id), total));
        }
        let path = job_cgroup(&tenant_id(node));
        let tenant_cpus = match tenant {
            Some((cpus, _)) => Some(cpus * self.rng.uni(0.9, 1.1)),
            // Idle beforehand, unless it arrives with its episode.
            None if !arrives || self.totals.iter().any(|(p, _)| *p == path) => {
                Some(self.rng.uni(0.01, 0.05))
            }
            None => None,
        };
        if let Some(cpus) = tenant_cpus {
            let total = self.add(path.clone(), cpus);
            readings.push((path, total));
        }
        for (path, total) in readings {
            let labels = MetricLabels {
                cgroup: Some(path),
                ..Default::default()
            };
            out.metric(
                ts,
                name,
                MetricName::CgroupCpuSeconds,
                labels,
                round_dec(total, 3),
            );
        }
    }
}
