//! Topology of a simulated cluster: nodes with their own clocks, jobs placed on
//! GPUs, and the vLLM servers some jobs are.

use crate::rng::{Rng8, RngExt};
use keel_model::{JobRecord, JobState, Name};
use std::collections::BTreeMap;

/// H200 framebuffer as NVML reports it.
pub const FB_TOTAL_MIB: f64 = 143_771.0;
/// What an H200 with no process on it reports as used (driver reservations).
pub const FB_IDLE_MIB: f64 = 615.0;
pub const GPUS: u32 = 8;
pub const NICS: u32 = 4;
/// 400 Gb/s ConnectX-7 port, in bytes per second.
pub const NIC_LINE_BPS: f64 = 50e9;
/// PCIe Gen5 x16 capacity as a DPU reports utilisation against it.
pub const PCIE_BPS: f64 = 64e9;
pub const COLLECTIVE_BYTES: u64 = 16 * 1024 * 1024;
/// Clock error bound: offsets of ±50 ms plus drift up to 40 ppm.
pub const MAX_OFFSET_S: f64 = 0.05;
pub const MAX_DRIFT: f64 = 40e-6;

/// Rail-optimised wiring: each pair of GPUs shares one NIC.
pub fn nic_of(gpu: u32) -> u32 {
    gpu / 2
}

pub fn nic_name(dev: u32) -> Name {
    Name::from(format!("mlx5_{dev}"))
}

const MODELS: &[&str] = &[
    "meta-llama/Llama-3.1-70B-Instruct",
    "Qwen/Qwen2.5-72B-Instruct",
    "mistralai/Mixtral-8x22B-Instruct-v0.1",
    "deepseek-ai/DeepSeek-R1-Distill-Llama-70B",
];
const TENANTS: &[&str] = &["team-a", "search", "research", "chat", "batch", "infra"];

pub struct Node {
    pub name: Name,
    offset: f64,
    drift: f64,
    /// Where in each second this node's exporters are scraped.
    pub phase: f64,
}

pub struct Rank {
    pub node: usize,
    pub gpu: u32,
}

pub struct Job {
    pub id: Name,
    pub tenant: Name,
    pub replica: Name,
    pub ranks: Vec<Rank>,
    /// True time of the first job record.
    pub start: f64,
    /// Model load before the first step (GPUs hold memory, do no work).
    pub load_s: f64,
    pub end: Option<(f64, JobState)>,
    /// Compute time of one step on an unimpeded rank.
    pub base_step: f64,
    /// Each rank's habitual lateness, a fraction of `base_step`.
    pub bias: Vec<f64>,
    /// All-reduce transfer time once the last rank arrives.
    pub transfer: f64,
    pub fb_mib: Vec<f64>,
    /// The vLLM model this job serves, when it is an inference server.
    pub model: Option<Name>,
}

impl Job {
    pub fn tp(&self) -> u32 {
        self.ranks.len() as u32
    }

    /// Distinct nodes in rank order.
    pub fn nodes(&self) -> Vec<usize> {
        let mut nodes: Vec<usize> = Vec::new();
        for r in &self.ranks {
            if !nodes.contains(&r.node) {
                nodes.push(r.node);
            }
        }
        nodes
    }

    pub fn cross_node(&self) -> bool {
        self.nodes().len() > 1
    }

    pub fn first_step(&self) -> f64 {
        self.start + self.load_s
    }

    pub fn end_time(&self) -> f64 {
        self.end.map_or(f64::INFINITY, |(t, _)| t)
    }

    pub fn record(&self, cluster: &Cluster, t: f64, state: JobState) -> JobRecord {
        let mut ranks: BTreeMap<Name, Vec<u32>> = BTreeMap::new();
        let mut gpus = BTreeMap::new();
        let mut nics = BTreeMap::new();
        let cross = self.cross_node();
        for (i, r) in self.ranks.iter().enumerate() {
            let i = i as u32;
            ranks
                .entry(cluster.nodes[r.node].name.clone())
                .or_default()
                .push(i);
            gpus.insert(i, r.gpu);
            // Only ranks whose traffic leaves the node have a NIC that matters.
            if cross {
                nics.insert(i, nic_name(nic_of(r.gpu)));
            }
        }
        let node0 = self.ranks[0].node;
        JobRecord {
            ts: crate::rng::round_dec(cluster.clock(node0, t), 3),
            node: None,
            job: self.id.clone(),
            state,
            tenant: Some(self.tenant.clone()),
            nodes: self
                .nodes()
                .into_iter()
                .map(|n| cluster.nodes[n].name.clone())
                .collect(),
            ranks,
            gpus,
            nics,
            node_gpus: Default::default(),
            tp: Some(self.tp()),
            pp: Some(1),
            replica: Some(self.replica.clone()),
        }
    }
}

/// How a job is placed and when it runs, relative to the trace start.
#[derive(Default, Clone)]
pub struct JobOpts {
    /// Seconds after the trace start; `None`: already running when it starts.
    pub start: Option<f64>,
    pub serving: bool,
    /// Seconds after the trace start, and the final state.
    pub end: Option<(f64, JobState)>,
}

pub struct Cluster {
    pub ts0: f64,
    pub duration: f64,
    pub dpu: bool,
    /// The GPUs' PCIe link (generation, width) when dcgm-exporter reports
    /// it; utilisation is then measured against it rather than `PCIE_BPS`.
    pub pcie_link: Option<(u32, u32)>,
    /// Share of its link that every busy GPU streams from the host all the
    /// time (offloaded weights or KV cache), when the jobs do.
    pub h2d_stream: Option<f64>,
    /// Nodes whose dcgm-exporter is not scraped: no GPU metrics at all.
    pub no_dcgm: Vec<usize>,
    /// Whether each node reports every Slurm job's cgroup CPU use
    /// (`cgroup_cpu_total_seconds`, `cgroups.rs`).
    pub cgroups: bool,
    pub nodes: Vec<Node>,
    pub jobs: Vec<Job>,
    next_job_id: u32,
}

impl Cluster {
    pub fn new(rng: &mut Rng8, ts0: f64, duration: f64, n_nodes: usize, dpu: bool) -> Cluster {
        let nodes = (0..n_nodes)
            .map(|i| Node {
                name: Name::from(format!("n{:02}", i + 1)),
                offset: rng.uni(-MAX_OFFSET_S, MAX_OFFSET_S),
                drift: rng.uni(-MAX_DRIFT, MAX_DRIFT),
                phase: rng.uni(0.05, 0.95),
            })
            .collect();
        Cluster {
            ts0,
            duration,
            dpu,
            pcie_link: None,
            h2d_stream: None,
            no_dcgm: Vec::new(),
            cgroups: false,
            nodes,
            jobs: Vec::new(),
            next_job_id: rng.int(1000, 8999),
        }
    }

    /// Bytes per second a GPU's PCIe link carries each way: the link
    /// dcgm-exporter reports, or the Gen5 x16 a DPU measures against.
    pub fn pcie_bps(&self) -> f64 {
        match self.pcie_link {
            // 8 GT/s per lane at Gen3, doubling each generation, with the
            // 128b/130b line code of Gen3-5 (PCI-SIG base specifications).
            Some((gen, width)) => {
                8e9 * 2.0f64.powi(gen as i32 - 3) / 8.0 * 128.0 / 130.0 * width as f64
            }
            None => PCIE_BPS,
        }
    }

    pub fn end(&self) -> f64 {
        self.ts0 + self.duration
    }

    /// What node `node`'s clock reads at true time `t`.
    pub fn clock(&self, node: usize, t: f64) -> f64 {
        let n = &self.nodes[node];
        t + n.offset + n.drift * (t - self.ts0)
    }

    /// Largest amount by which any clock can read earlier than true time at `t`.
    pub fn clock_slack(&self, t: f64) -> f64 {
        MAX_OFFSET_S + MAX_DRIFT * (t - self.ts0).abs() + 0.002
    }

    /// Places a job; `place` lists (node, GPUs on it) in rank order.
    pub fn add_job(&mut self, rng: &mut Rng8, place: &[(usize, &[u32])], opts: JobOpts) -> usize {
        let ranks: Vec<Rank> = place
            .iter()
            .flat_map(|&(node, gpus)| gpus.iter().map(move |&gpu| Rank { node, gpu }))
            .collect();
        let n = ranks.len();
        let cross = place.len() > 1;
        let idx = self.jobs.len();
        self.next_job_id += rng.int(1, 40);
        let (start, load_s) = match opts.start {
            None => (self.ts0 + rng.uni(0.05, 0.5), 0.0),
            Some(s) => (self.ts0 + s, rng.uni(5.0, 8.0)),
        };
        let fb_frac = rng.uni(0.60, 0.85);
        let job = Job {
            id: Name::from(self.next_job_id.to_string()),
            tenant: Name::from(*rng.pick(TENANTS)),
            replica: Name::from(format!("r{}", idx)),
            start,
            load_s,
            end: opts.end.map(|(t, s)| (self.ts0 + t, s)),
            base_step: rng.uni(0.020, 0.050),
            bias: (0..n).map(|_| rng.uni(-0.015, 0.015)).collect(),
            transfer: if cross {
                rng.uni(1e-3, 3e-3)
            } else {
                rng.uni(100e-6, 500e-6)
            },
            fb_mib: (0..n)
                .map(|_| (FB_TOTAL_MIB * fb_frac * rng.uni(0.995, 1.005)).round())
                .collect(),
            model: opts.serving.then(|| Name::from(*rng.pick(MODELS))),
            ranks,
        };
        self.jobs.push(job);
        idx
    }

    /// Jobs with at least one rank on `node`.
    pub fn jobs_on(&self, node: usize) -> impl Iterator<Item = usize> + '_ {
        self.jobs
            .iter()
            .enumerate()
            .filter(move |(_, j)| j.ranks.iter().any(|r| r.node == node))
            .map(|(i, _)| i)
    }

    /// Whether a job that spans nodes has ranks on `node`.
    pub fn has_cross_node_job(&self, node: usize) -> bool {
        self.jobs_on(node).any(|j| self.jobs[j].cross_node())
    }

    /// Whether the NIC `dev` of `node` carries a cross-node job's traffic.
    pub fn nic_carries_cross(&self, node: usize, dev: u32) -> bool {
        self.jobs.iter().filter(|j| j.cross_node()).any(|j| {
            j.ranks
                .iter()
                .any(|r| r.node == node && nic_of(r.gpu) == dev)
        })
    }

    /// The node whose exporters publish a serving job's vLLM metrics.
    pub fn server_node(&self, job: usize) -> usize {
        self.jobs[job].ranks[0].node
    }
}
