//! A scenario's plan: the cluster, the faults to inject (each becomes one or
//! more labels), the nuisances that must not be labelled, and how dirty the
//! lines get.

use crate::cluster::Cluster;
use keel_model::{Cause, Dir, FindingKind, Label, Name};

/// What a straggling rank looks like from outside, with its magnitudes drawn
/// once per episode.
#[derive(Clone, Debug)]
pub enum Symptom {
    /// Pageable host copies hammer the GPU's PCIe link.
    Pcie {
        rx_peak: f64,
        /// Device-to-host rate during the episode, when it rises too.
        tx: Option<f64>,
    },
    /// The rank's PCIe link runs at capacity (competing DMAs on a shared
    /// switch, a narrowed link): host-to-GPU copies fill it and, queued
    /// behind them, the doorbell writes come late.
    PcieSaturated { share: f64, doorbell_mult: f64 },
    /// The rank's CPU is starved: runnable tasks wait, kernel launches lag;
    /// with a `tenant`, another job on the node took the CPUs.
    Host {
        cpu_rate: f64,
        doorbell_mult: f64,
        tenant: Option<Tenant>,
    },
    /// The runtime's launch path is slow (IRQs on the wrong cores, polling
    /// off) with no CPU pressure to show for it: doorbells come late while
    /// the bus has room.
    Launch { doorbell_mult: f64 },
    /// The rank's NIC is congested.
    Network {
        queue: f64,
        stall_rate: f64,
        link_add: f64,
        retrans_frac: f64,
        drop_rate: f64,
    },
    /// The GPU throttles: clock down, temperature up.
    Thermal { clock: f64, temp: f64 },
    /// More device work per step with no telemetry to show for it.
    Silent,
    /// The rank's GPU is fed thin: its host-to-GPU DMA falls to `h2d_share`
    /// of its usual (irregular, in bursts and silences) because the
    /// process feeding it launches late (doorbells `doorbell_mult` late),
    /// while its peers on the node stay steady and the node's CPU is calm.
    Thin { h2d_share: f64, doorbell_mult: f64 },
}

impl Symptom {
    pub fn cause(&self) -> Cause {
        match self {
            Symptom::Pcie { .. } | Symptom::PcieSaturated { .. } => Cause::Pcie,
            Symptom::Host { .. } | Symptom::Launch { .. } | Symptom::Thin { .. } => Cause::Host,
            Symptom::Network { .. } => Cause::Network,
            Symptom::Thermal { .. } | Symptom::Silent => Cause::Gpu,
        }
    }
}

/// A co-located tenant (another Slurm job's cgroup) taking a node's CPUs.
#[derive(Clone, Copy, Debug)]
pub struct Tenant {
    /// CPUs it takes (cores' worth of time per second).
    pub cpus: f64,
    /// Whether it starts at the onset (a job just placed there) rather
    /// than idling there before.
    pub arrives: bool,
}

#[derive(Clone, Debug)]
pub enum Fault {
    Straggler {
        job: usize,
        rank: u32,
        slowdown: f64,
        symptom: Symptom,
    },
    /// The job fails at onset; these ranks' processes keep their memory until end.
    Squatter {
        job: usize,
        ranks: Vec<u32>,
        fb_frac: Vec<f64>,
        power: Vec<f64>,
    },
    /// The job hangs at onset (still RUNNING) and is cancelled at end.
    Hung {
        job: usize,
        fb_frac: f64,
    },
    /// One rank stops (its process frozen) before a collective; its peers
    /// wait inside that collective, their GPUs spinning, until it resumes
    /// at the episode's end. No rank leaves a collective meanwhile.
    RankStop {
        job: usize,
        rank: u32,
    },
    /// The cache climbs for `lead_s` before the labelled onset (the moment
    /// it pins) while the queue builds to `waiting_base`; from the onset it
    /// stays pinned at `usage` and the queue grows to `waiting_peak`.
    KvSaturation {
        job: usize,
        waiting_peak: f64,
        running: f64,
        usage: f64,
        lead_s: f64,
        waiting_base: f64,
    },
    EngineStall {
        job: usize,
        waiting_rate: f64,
    },
    RetransStorm {
        node: usize,
        frac: f64,
    },
    NicSaturation {
        node: usize,
        dev: u32,
        dir: Dir,
        queue_peak: f64,
    },
    /// Competing transfers fill the node's shared PCIe: these GPUs' links
    /// run at capacity (`symptom`, a `PcieSaturated`) and their compute
    /// stalls now and then. A straggler's GPU may be among them.
    BusSaturation {
        node: usize,
        gpus: Vec<u32>,
        symptom: Symptom,
    },
    /// Serving faults (`serving.rs`): the engine preempting its running
    /// requests many times a second, an OOM kill, a latency tail, an
    /// arrival burst and its backlog.
    Serving(crate::serving::ServingFault),
    /// Fabric faults (`fabric.rs`): congestion across nodes, RDMA credit
    /// starvation and a transmit backlog on one NIC.
    Fabric(crate::fabric::FabricFault),
}

#[derive(Clone, Debug)]
pub struct Episode {
    pub fault: Fault,
    pub onset: f64,
    pub end: f64,
}

impl Episode {
    pub fn active(&self, t: f64) -> bool {
        self.onset <= t && t < self.end
    }

    pub fn labels(&self, cluster: &Cluster) -> Vec<Label> {
        let node_name = |n: usize| Some(cluster.nodes[n].name.clone());
        let base = |kind: FindingKind, cause: Cause| Label {
            kind,
            cause: Some(cause),
            job: None,
            node: None,
            rank: None,
            gpu: None,
            peer: None,
            onset: self.onset,
            end: self.end,
        };
        match &self.fault {
            Fault::Straggler {
                job, rank, symptom, ..
            } => {
                let j = &cluster.jobs[*job];
                let node = j.ranks[*rank as usize].node;
                let mut out = vec![Label {
                    job: Some(j.id.clone()),
                    node: node_name(node),
                    rank: Some(*rank),
                    ..base(FindingKind::TpStraggler, symptom.cause())
                }];
                // A tenant's cgroup seen taking the CPUs: a noisy neighbour.
                if matches!(
                    symptom,
                    Symptom::Host {
                        tenant: Some(_),
                        ..
                    }
                ) && cluster.cgroups
                {
                    out.push(Label {
                        node: node_name(node),
                        ..base(FindingKind::NoisyNeighbor, Cause::Host)
                    });
                }
                // Without a DPU the congestion shows as TCP retransmits on the
                // node: a real storm, so it is labelled in its own right.
                if matches!(symptom, Symptom::Network { .. }) && !cluster.dpu {
                    out.push(Label {
                        node: node_name(node),
                        ..base(FindingKind::RetransmitStorm, Cause::Network)
                    });
                }
                out.extend(
                    bus_label(cluster, node, j.ranks[*rank as usize].gpu, symptom).map(
                        |(kind, gpu)| Label {
                            node: node_name(node),
                            gpu,
                            ..base(kind, symptom.cause())
                        },
                    ),
                );
                // With one, the rank's NIC is seen waiting for credits 5-50%
                // of the time with hundreds of packets queued to send while
                // its link has room: credit starvation and a transmit
                // backlog, each labelled in its own right.
                if matches!(symptom, Symptom::Network { .. }) && cluster.dpu {
                    for kind in [
                        FindingKind::RdmaCreditStarvation,
                        FindingKind::EgressBacklog,
                    ] {
                        out.push(Label {
                            node: node_name(node),
                            ..base(kind, Cause::Network)
                        });
                    }
                }
                out
            }
            Fault::Squatter { job, ranks, .. } => {
                let j = &cluster.jobs[*job];
                ranks
                    .iter()
                    .map(|&r| Label {
                        node: node_name(j.ranks[r as usize].node),
                        gpu: Some(j.ranks[r as usize].gpu),
                        ..base(FindingKind::GpuSquatter, Cause::Engine)
                    })
                    .collect()
            }
            Fault::Hung { job, .. } => cluster.jobs[*job]
                .ranks
                .iter()
                .map(|r| Label {
                    node: node_name(r.node),
                    gpu: Some(r.gpu),
                    ..base(FindingKind::GpuSquatter, Cause::Engine)
                })
                .collect(),
            Fault::RankStop { job, rank } => {
                let j = &cluster.jobs[*job];
                vec![Label {
                    job: Some(j.id.clone()),
                    node: node_name(j.ranks[*rank as usize].node),
                    rank: Some(*rank),
                    ..base(FindingKind::CollectiveHang, Cause::Host)
                }]
            }
            Fault::KvSaturation { job, .. } => vec![Label {
                node: node_name(cluster.server_node(*job)),
                ..base(FindingKind::KvCacheSaturation, Cause::Engine)
            }],
            Fault::EngineStall { job, .. } => vec![Label {
                node: node_name(cluster.server_node(*job)),
                ..base(FindingKind::EngineStall, Cause::Engine)
            }],
            Fault::RetransStorm { node, .. } => vec![Label {
                node: node_name(*node),
                ..base(FindingKind::RetransmitStorm, Cause::Network)
            }],
            Fault::NicSaturation { node, .. } => vec![Label {
                node: node_name(*node),
                ..base(FindingKind::NicSaturation, Cause::Network)
            }],
            Fault::BusSaturation { node, .. } => vec![Label {
                node: node_name(*node),
                ..base(FindingKind::PcieSaturation, Cause::Pcie)
            }],
            Fault::Serving(f) => vec![f.label(cluster, base(f.kind(), f.cause()))],
            Fault::Fabric(f) => f.labels(cluster, self.onset, self.end),
        }
    }
}

/// The bus finding a straggler's symptom is in its own right, where the
/// telemetry can show it (seed 000 Table 3b): a starved CPU with late
/// doorbells is a `host_cpu_bottleneck` (the doorbells only a DPU sees); a
/// GPU fed thin among steady peers an `intra_node_gpu_skew`. Late
/// doorbells with a calm CPU (`Launch`) are none of these, and one GPU's
/// own link at capacity (`PcieSaturated`) is its rank's `pcie` cause, not
/// its node's bus: that takes a `BusSaturation`.
fn bus_label(
    cluster: &Cluster,
    node: usize,
    gpu: u32,
    symptom: &Symptom,
) -> Option<(FindingKind, Option<u32>)> {
    let dcgm = !cluster.no_dcgm.contains(&node);
    match symptom {
        Symptom::Host { .. } if cluster.dpu => Some((FindingKind::HostCpuBottleneck, None)),
        Symptom::Thin { .. } if cluster.dpu || dcgm => {
            Some((FindingKind::IntraNodeGpuSkew, Some(gpu)))
        }
        _ => None,
    }
}

/// Things that happen on real clusters, look a little like faults, and must
/// not be labelled.
#[derive(Clone, Debug)]
pub enum Event {
    /// A node's scrapes are missing (exporter or shipper down).
    Gap { node: usize, from: f64, to: f64 },
    /// node-exporter restarts: its counters start again near zero.
    CounterReset { node: usize, at: f64 },
    /// Every rank of a job slows alike (a longer batch, a bigger prompt mix).
    JobSlowdown {
        job: usize,
        from: f64,
        to: f64,
        factor: f64,
    },
    /// One rank's single step takes longer (GC pause, page fault storm).
    Spike {
        job: usize,
        rank: u32,
        at: f64,
        factor: f64,
    },
    /// A host job (a compaction, a log compressor) loads the node's CPUs:
    /// pressure at `rate` s/s while every GPU is fed on time.
    CpuBurst {
        node: usize,
        from: f64,
        to: f64,
        rate: f64,
    },
    /// Checkpoint or weight loads: a short PCIe burst on a healthy GPU.
    PcieBurst {
        node: usize,
        gpu: u32,
        from: f64,
        to: f64,
        rate: f64,
    },
    /// A serving look-alike (`serving.rs`): a one-scrape preemption burst,
    /// a one-second arrival spike, a whole service slowing, a few slow
    /// requests, a job that fails without running out of memory.
    Serving(crate::serving::ServingDecoy),
}

/// Per-line and per-scrape probabilities of dirt in the output.
#[derive(Clone, Debug, Default)]
pub struct Noise {
    /// A metric value written as "NaN" or "+Inf".
    pub nan: f64,
    /// A single line shipped late (out of order).
    pub late_line: f64,
    /// A whole node scrape shipped late.
    pub late_scrape: f64,
    /// A truncated line, a bare word, or binary junk.
    pub malformed: f64,
    /// A record of a type readers do not know, per node scrape.
    pub unknown_record: f64,
    /// A metric name readers do not know, per node scrape.
    pub unknown_metric: f64,
    /// Extra exporter labels and fields on a metric line.
    pub extra_fields: f64,
}

impl Noise {
    pub fn low() -> Noise {
        Noise {
            nan: 0.0004,
            late_line: 0.0005,
            late_scrape: 0.003,
            malformed: 0.0001,
            unknown_record: 0.01,
            unknown_metric: 0.01,
            extra_fields: 0.002,
        }
    }

    pub fn heavy() -> Noise {
        Noise {
            nan: 0.01,
            late_line: 0.01,
            late_scrape: 0.04,
            malformed: 0.002,
            unknown_record: 0.15,
            unknown_metric: 0.25,
            extra_fields: 0.05,
        }
    }
}

pub struct Plan {
    pub cluster: Cluster,
    pub episodes: Vec<Episode>,
    pub events: Vec<Event>,
    pub noise: Noise,
    /// vLLM before the V1 engine names the KV-cache gauge differently.
    pub old_kv_name: bool,
    /// Request records and `node_vmstat_oom_kill` are written (the
    /// serving scenarios); other scenarios' traces stay as they were.
    pub serving: bool,
    /// [node][gpu] -> (job, rank) that ever run there.
    pub occupants: Vec<Vec<Vec<(usize, u32)>>>,
    // Indexes into `episodes` and `events`, so that long traces with many
    // faults do not scan them all for every sample.
    node_episodes: Vec<Vec<usize>>,
    job_episodes: Vec<Vec<usize>>,
    node_events: Vec<Vec<usize>>,
    job_events: Vec<Vec<usize>>,
}

impl Plan {
    pub fn new(
        cluster: Cluster,
        mut episodes: Vec<Episode>,
        events: Vec<Event>,
        noise: Noise,
        old_kv_name: bool,
    ) -> Plan {
        episodes.sort_by(|a, b| a.onset.total_cmp(&b.onset));
        let mut occupants =
            vec![vec![Vec::new(); crate::cluster::GPUS as usize]; cluster.nodes.len()];
        for (j, job) in cluster.jobs.iter().enumerate() {
            for (r, rank) in job.ranks.iter().enumerate() {
                occupants[rank.node][rank.gpu as usize].push((j, r as u32));
            }
        }
        let mut node_episodes = vec![Vec::new(); cluster.nodes.len()];
        let mut job_episodes = vec![Vec::new(); cluster.jobs.len()];
        for (i, ep) in episodes.iter().enumerate() {
            let (job, nodes) = match &ep.fault {
                Fault::Straggler { job, rank, .. } => (
                    Some(*job),
                    vec![cluster.jobs[*job].ranks[*rank as usize].node],
                ),
                Fault::Squatter { job, .. }
                | Fault::Hung { job, .. }
                | Fault::RankStop { job, .. } => (Some(*job), cluster.jobs[*job].nodes()),
                Fault::KvSaturation { job, .. } | Fault::EngineStall { job, .. } => {
                    (Some(*job), vec![cluster.server_node(*job)])
                }
                Fault::RetransStorm { node, .. }
                | Fault::NicSaturation { node, .. }
                | Fault::BusSaturation { node, .. } => (None, vec![*node]),
                Fault::Serving(f) => f.place(&cluster),
                Fault::Fabric(f) => (None, f.nodes()),
            };
            for n in nodes {
                node_episodes[n].push(i);
            }
            if let Some(j) = job {
                job_episodes[j].push(i);
            }
        }
        let mut node_events = vec![Vec::new(); cluster.nodes.len()];
        let mut job_events = vec![Vec::new(); cluster.jobs.len()];
        for (i, ev) in events.iter().enumerate() {
            match ev {
                Event::Gap { node, .. }
                | Event::CounterReset { node, .. }
                | Event::PcieBurst { node, .. }
                | Event::CpuBurst { node, .. } => node_events[*node].push(i),
                Event::JobSlowdown { job, .. } => job_events[*job].push(i),
                // The step loop takes its spikes once, in order; serving
                // look-alikes are read by `serving.rs`, which scans them.
                Event::Spike { .. } | Event::Serving(_) => {}
            }
        }
        Plan {
            cluster,
            episodes,
            events,
            noise,
            old_kv_name,
            serving: false,
            occupants,
            node_episodes,
            job_episodes,
            node_events,
            job_events,
        }
    }

    /// Faults that touch `node`.
    pub fn node_episodes(&self, node: usize) -> impl Iterator<Item = &Episode> {
        self.node_episodes[node].iter().map(|&i| &self.episodes[i])
    }

    /// Faults of `job`.
    pub fn job_episodes(&self, job: usize) -> impl Iterator<Item = &Episode> {
        self.job_episodes[job].iter().map(|&i| &self.episodes[i])
    }

    /// Gaps, counter resets and PCIe bursts on `node`.
    pub fn node_events(&self, node: usize) -> impl Iterator<Item = &Event> {
        self.node_events[node].iter().map(|&i| &self.events[i])
    }

    /// Whole-job slowdowns of `job`.
    pub fn job_events(&self, job: usize) -> impl Iterator<Item = &Event> {
        self.job_events[job].iter().map(|&i| &self.events[i])
    }

    pub fn labels(&self) -> Vec<Label> {
        let mut labels: Vec<Label> = self
            .episodes
            .iter()
            .flat_map(|e| e.labels(&self.cluster))
            .collect();
        labels.sort_by(|a, b| {
            a.onset
                .total_cmp(&b.onset)
                .then_with(|| a.kind.cmp(&b.kind))
                .then_with(|| a.node.cmp(&b.node))
                .then_with(|| a.gpu.cmp(&b.gpu))
        });
        labels
    }

    pub fn node_name(&self, node: usize) -> &Name {
        &self.cluster.nodes[node].name
    }
}
