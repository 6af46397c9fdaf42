//! What keel concludes: a finding names a kind, the locus it points at, the
//! cause it is attributed to, and the evidence that decided it
//! (`spec/taxonomy.md`, `spec/trace-format.md` "Findings").

use crate::{Name, Timestamp};
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a finding points at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LocusKind {
    Rank,
    Gpu,
    Node,
    Job,
    Link,
    Cluster,
}

macro_rules! finding_kinds {
    ($( $variant:ident => $wire:literal, $locus:ident; )*) => {
        /// Every finding kind of the taxonomy, by its wire name.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(rename_all = "snake_case")]
        pub enum FindingKind { $( $variant, )* }

        impl FindingKind {
            pub const ALL: &'static [FindingKind] = &[ $( FindingKind::$variant, )* ];

            pub fn wire(self) -> &'static str {
                match self { $( FindingKind::$variant => $wire, )* }
            }

            pub fn locus_kind(self) -> LocusKind {
                match self { $( FindingKind::$variant => LocusKind::$locus, )* }
            }

            pub fn from_wire(name: &str) -> Option<FindingKind> {
                match name { $( $wire => Some(FindingKind::$variant), )* _ => None }
            }
        }
    };
}

impl FindingKind {
    /// The kinds a node's sensor watches and reports, for every GPU of the
    /// node until each clears: GPU-level conditions that outlive the job
    /// that caused them. A sensor may report these, for its own node only.
    pub const NODE_WATCHED: &'static [FindingKind] =
        &[FindingKind::GpuSquatter, FindingKind::IdleGpuReservation];
}

finding_kinds! {
    // East-west (seed 000, Table 3c)
    TpStraggler => "tp_straggler", Rank;
    PpBubble => "pp_bubble", Job;
    CrossNodeLoadSkew => "cross_node_load_skew", Node;
    NetworkCongestion => "network_congestion", Cluster;
    HeadOfLineBlocking => "head_of_line_blocking", Node;
    RetransmitStorm => "retransmit_storm", Node;
    RdmaCreditStarvation => "rdma_credit_starvation", Node;
    KvTransferBottleneck => "kv_transfer_bottleneck", Job;
    EarlyStopSkew => "early_stop_skew", Job;
    CollectiveHang => "collective_hang", Rank;
    // PCIe observer (seed 000, Table 3b)
    H2dStarvation => "h2d_starvation", Gpu;
    D2hBacklog => "d2h_backlog", Gpu;
    LaunchLatency => "launch_latency", Gpu;
    IntraNodeGpuSkew => "intra_node_gpu_skew", Gpu;
    PcieSaturation => "pcie_saturation", Node;
    P2pThrottling => "p2p_throttling", Node;
    PinnedMemoryShortage => "pinned_memory_shortage", Node;
    HostCpuBottleneck => "host_cpu_bottleneck", Node;
    MemoryRegistrationChurn => "memory_registration_churn", Node;
    DecodeEarlyStopSkew => "decode_early_stop_skew", Gpu;
    // North-south (seed 000, Table 3a)
    IngressBurstBacklog => "ingress_burst_backlog", Node;
    IngressStarvation => "ingress_starvation", Node;
    FlowSkew => "flow_skew", Node;
    IngressRetransmit => "ingress_retransmit", Node;
    EgressBacklog => "egress_backlog", Node;
    EgressJitter => "egress_jitter", Node;
    EgressRetransmit => "egress_retransmit", Node;
    EarlyCompletionSkew => "early_completion_skew", Job;
    NicSaturation => "nic_saturation", Node;
    // Engine and cluster (seed 001)
    KvCacheSaturation => "kv_cache_saturation", Node;
    SwapThrashing => "swap_thrashing", Node;
    EngineStall => "engine_stall", Node;
    GpuSquatter => "gpu_squatter", Gpu;
    IdleGpuReservation => "idle_gpu_reservation", Gpu;
    OomKill => "oom_kill", Node;
    // Tail and tenancy (seed 002)
    TailLatency => "tail_latency", Job;
    NoisyNeighbor => "noisy_neighbor", Node;
}

impl fmt::Display for FindingKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire())
    }
}

/// Attribution classes: where the trouble comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Cause {
    Network,
    Pcie,
    Host,
    Gpu,
    Engine,
    Workload,
    /// No signal family decided: the finding's evidence names the families
    /// that were missing and those that were ruled out. Nothing should act
    /// on it as if a cause were known.
    Unknown,
}

impl Cause {
    pub const ALL: &'static [Cause] = &[
        Cause::Network,
        Cause::Pcie,
        Cause::Host,
        Cause::Gpu,
        Cause::Engine,
        Cause::Workload,
        Cause::Unknown,
    ];

    pub fn wire(self) -> &'static str {
        match self {
            Cause::Network => "network",
            Cause::Pcie => "pcie",
            Cause::Host => "host",
            Cause::Gpu => "gpu",
            Cause::Engine => "engine",
            Cause::Workload => "workload",
            Cause::Unknown => "unknown",
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    Info,
    Warning,
    Critical,
}

impl Severity {
    pub fn wire(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Critical => "critical",
        }
    }
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.wire())
    }
}

/// The thing a finding or label points at; two agree when their loci are equal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Locus {
    Rank {
        job: Name,
        rank: u32,
    },
    /// A GPU, or one MIG instance of it (`instance`: DCGM's `GPU_I_ID`).
    Gpu {
        node: Name,
        gpu: u32,
        instance: Option<u32>,
    },
    Node {
        node: Name,
    },
    Job {
        job: Name,
    },
    Link {
        a: Name,
        b: Name,
    },
    Cluster,
}

impl Locus {
    /// Builds the locus a kind needs from the optional fields that findings and
    /// labels carry; `None` when a needed field is missing.
    pub fn for_kind(
        kind: FindingKind,
        job: Option<&Name>,
        node: Option<&Name>,
        rank: Option<u32>,
        gpu: Option<u32>,
        peer: Option<&Name>,
    ) -> Option<Locus> {
        Some(match kind.locus_kind() {
            LocusKind::Rank => Locus::Rank {
                job: job?.clone(),
                rank: rank?,
            },
            LocusKind::Gpu => Locus::Gpu {
                node: node?.clone(),
                gpu: gpu?,
                instance: None,
            },
            LocusKind::Node => Locus::Node {
                node: node?.clone(),
            },
            LocusKind::Job => Locus::Job { job: job?.clone() },
            LocusKind::Link => {
                let (a, b) = (node?.clone(), peer?.clone());
                if a <= b {
                    Locus::Link { a, b }
                } else {
                    Locus::Link { a: b, b: a }
                }
            }
            LocusKind::Cluster => Locus::Cluster,
        })
    }
}

impl fmt::Display for Locus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Locus::Rank { job, rank } => write!(f, "job {job} rank {rank}"),
            Locus::Gpu {
                node,
                gpu,
                instance: None,
            } => write!(f, "{node} gpu {gpu}"),
            Locus::Gpu {
                node,
                gpu,
                instance: Some(i),
            } => write!(f, "{node} gpu {gpu} mig {i}"),
            Locus::Node { node } => write!(f, "{node}"),
            Locus::Job { job } => write!(f, "job {job}"),
            Locus::Link { a, b } => write!(f, "link {a}<->{b}"),
            Locus::Cluster => write!(f, "cluster"),
        }
    }
}

/// One finding episode, as `keel replay` writes it (one line per episode).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Trace time at which keel concluded.
    pub ts: Timestamp,
    pub kind: FindingKind,
    pub cause: Cause,
    pub severity: Severity,
    /// 0..1: how sure the attribution is; lower when few signals were present.
    pub confidence: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    /// Network device, for findings about a NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Name>,
    /// Sentences an operator can check against the telemetry.
    #[serde(default)]
    pub evidence: Vec<String>,
    /// What the conclusion rests on (GPU findings; see [`Basis`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub basis: Option<Basis>,
    /// The MIG instance (DCGM's `GPU_I_ID`) of `gpu` the finding is about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_instance: Option<u32>,
    /// Open findings this one explains or is explained by (the NIC
    /// saturation under a `network` straggler on that NIC): one incident.
    /// The controller resolves each to the id of the open finding it names.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub related: Vec<Related>,
}

/// Another finding, named by its kind and the fields its locus needs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Related {
    pub kind: FindingKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rank: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Name>,
}

impl Related {
    /// The reference to `f`.
    pub fn to(f: &Finding) -> Related {
        Related {
            kind: f.kind,
            job: f.job.clone(),
            node: f.node.clone(),
            rank: f.rank,
            gpu: f.gpu,
            device: f.device.clone(),
        }
    }

    /// Whether `f` is the finding this names (same kind, same locus).
    pub fn names(&self, f: &Finding) -> bool {
        f.kind == self.kind
            && f.job == self.job
            && f.node == self.node
            && f.rank == self.rank
            && f.gpu == self.gpu
            && f.device == self.device
    }
}

impl Finding {
    /// A finding about `node`, concluded at `ts` (trace time): severity
    /// warning, confidence 0.8, no job, rank, GPU or device, no evidence
    /// yet. Detectors of node-level kinds start from it and set the rest.
    pub fn on_node(kind: FindingKind, cause: Cause, ts: Timestamp, node: &Name) -> Finding {
        Finding {
            ts,
            kind,
            cause,
            severity: Severity::Warning,
            confidence: 0.8,
            job: None,
            node: Some(node.clone()),
            rank: None,
            gpu: None,
            device: None,
            evidence: Vec::new(),
            basis: None,
            gpu_instance: None,
            related: Vec::new(),
        }
    }

    pub fn locus(&self) -> Option<Locus> {
        let mut locus = Locus::for_kind(
            self.kind,
            self.job.as_ref(),
            self.node.as_ref(),
            self.rank,
            self.gpu,
            None,
        )?;
        if let Locus::Gpu { instance, .. } = &mut locus {
            *instance = self.gpu_instance;
        }
        Some(locus)
    }
}

/// What a GPU finding's conclusion rests on: who holds the GPU and what
/// keel saw of it. `gpu_squatter` rests on `job_ended`, `no_job`,
/// `engine_dead`, `engine_hung` or `job_stalled` (or `mapping_unknown`: the memory is held
/// but keel cannot tell by whom, and no rule may reclaim on that);
/// `idle_gpu_reservation` on `engine_idle` or `no_engine_signal`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Basis {
    /// The job that holds the GPU ended (a Slurm terminal state).
    JobEnded,
    /// Slurm's allocation on the node is known and no job holds the GPU.
    NoJob,
    /// The engine of the running job stopped answering its metrics.
    EngineDead,
    /// The engine of the running job has requests waiting and none running.
    EngineHung,
    /// The running job (no engine metrics on the node) stopped arriving at
    /// its collectives after it had been running them.
    JobStalled,
    /// The engine of the running job answers, with nothing to do.
    EngineIdle,
    /// A running job holds the GPU; no engine metrics tell whether it lives.
    NoEngineSignal,
    /// Which job holds the GPU is not known.
    MappingUnknown,
}

impl Basis {
    pub fn wire(self) -> &'static str {
        match self {
            Basis::JobEnded => "job_ended",
            Basis::NoJob => "no_job",
            Basis::EngineDead => "engine_dead",
            Basis::EngineHung => "engine_hung",
            Basis::JobStalled => "job_stalled",
            Basis::EngineIdle => "engine_idle",
            Basis::NoEngineSignal => "no_engine_signal",
            Basis::MappingUnknown => "mapping_unknown",
        }
    }
}

/// A Unix time (s) written as the UTC time of day, `HH:MM:SS.s UTC`, for
/// evidence an operator reads beside logs and dashboards (a finding keeps
/// the full time in `ts`). A time outside 1970..5138 is written as it is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clock(pub f64);

impl std::fmt::Display for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if !(0.0..1e11).contains(&self.0) {
            return write!(f, "{:.1}", self.0);
        }
        let tenths = (self.0 * 10.0).round() as i64 % 864_000;
        let (h, m, s) = (tenths / 36_000, tenths % 36_000 / 600, tenths % 600);
        write!(f, "{h:02}:{m:02}:{:02}.{} UTC", s / 10, s % 10)
    }
}

#[cfg(test)]
mod clock_tests {
    use super::Clock;

    #[test]
    fn a_unix_time_reads_as_the_utc_time_of_day() {
        // 2025-11-22T08:26:40Z
        assert_eq!(Clock(1_763_800_000.0).to_string(), "08:26:40.0 UTC");
        assert_eq!(Clock(1_763_800_000.96).to_string(), "08:26:41.0 UTC");
        assert_eq!(Clock(86_399.94).to_string(), "23:59:59.9 UTC");
        assert_eq!(Clock(f64::NAN).to_string(), "NaN");
        assert_eq!(Clock(-5.0).to_string(), "-5.0");
    }
}
