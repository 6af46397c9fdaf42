//! Metric names as the exporters a real cluster runs write them, and the labels
//! keel reads from them. An unknown name is not an error: readers count it and
//! move on, because exporters add metrics all the time.

use crate::Name;
use serde::{Deserialize, Serialize};

/// Whether a metric is a gauge (a reading) or a counter (monotonic, may reset).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Gauge,
    Counter,
}

macro_rules! metric_names {
    ($( $variant:ident => $wire:literal, $kind:ident; )*) => {
        /// A metric keel understands. The wire name is the exporter's own.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum MetricName { $( $variant, )* }

        impl MetricName {
            pub const ALL: &'static [MetricName] = &[ $( MetricName::$variant, )* ];

            /// The exporter's name for this metric.
            pub fn wire(self) -> &'static str {
                match self { $( MetricName::$variant => $wire, )* }
            }

            pub fn kind(self) -> MetricKind {
                match self { $( MetricName::$variant => MetricKind::$kind, )* }
            }

            /// Parses an exporter's name; `None` for names keel does not use.
            pub fn from_wire(name: &str) -> Option<MetricName> {
                match name {
                    $( $wire => Some(MetricName::$variant), )*
                    // vLLM before the V1 engine called the KV-cache gauge this.
                    "vllm:gpu_cache_usage_perc" => Some(MetricName::VllmKvCacheUsage),
                    _ => None,
                }
            }
        }
    };
}

metric_names! {
    GpuUtil => "DCGM_FI_DEV_GPU_UTIL", Gauge;
    FbUsed => "DCGM_FI_DEV_FB_USED", Gauge;
    FbFree => "DCGM_FI_DEV_FB_FREE", Gauge;
    PowerUsage => "DCGM_FI_DEV_POWER_USAGE", Gauge;
    SmClock => "DCGM_FI_DEV_SM_CLOCK", Gauge;
    GpuTemp => "DCGM_FI_DEV_GPU_TEMP", Gauge;
    XidErrors => "DCGM_FI_DEV_XID_ERRORS", Gauge;
    PcieTxBytes => "DCGM_FI_PROF_PCIE_TX_BYTES", Gauge;
    GrEngineActive => "DCGM_FI_PROF_GR_ENGINE_ACTIVE", Gauge;
    PcieRxBytes => "DCGM_FI_PROF_PCIE_RX_BYTES", Gauge;
    PcieLinkGen => "DCGM_FI_DEV_PCIE_LINK_GEN", Gauge;
    PcieLinkWidth => "DCGM_FI_DEV_PCIE_LINK_WIDTH", Gauge;
    VllmKvCacheUsage => "vllm:kv_cache_usage_perc", Gauge;
    VllmRequestsWaiting => "vllm:num_requests_waiting", Gauge;
    VllmRequestsRunning => "vllm:num_requests_running", Gauge;
    VllmPreemptions => "vllm:num_preemptions_total", Counter;
    TcpRetransSegs => "node_netstat_Tcp_RetransSegs", Counter;
    TcpOutSegs => "node_netstat_Tcp_OutSegs", Counter;
    NetRxBytes => "node_network_receive_bytes_total", Counter;
    NetTxBytes => "node_network_transmit_bytes_total", Counter;
    NetSpeedBytes => "node_network_speed_bytes", Gauge;
    NetRxDrop => "node_network_receive_drop_total", Counter;
    NetTxDrop => "node_network_transmit_drop_total", Counter;
    CpuPressureWaiting => "node_pressure_cpu_waiting_seconds_total", Counter;
    VmstatOomKill => "node_vmstat_oom_kill", Counter;
    DpuNicLinkUtil => "dpu_nic_link_util", Gauge;
    DpuNicQueueDepth => "dpu_nic_queue_depth", Gauge;
    DpuPcieH2dBytes => "dpu_pcie_h2d_bytes_total", Counter;
    DpuPcieD2hBytes => "dpu_pcie_d2h_bytes_total", Counter;
    DpuPcieLinkUtil => "dpu_pcie_link_util", Gauge;
    DpuPcieDoorbellGap => "dpu_pcie_doorbell_gap_us", Gauge;
    DpuRdmaCreditStall => "dpu_rdma_credit_stall_us_total", Counter;
    CgroupCpuSeconds => "cgroup_cpu_total_seconds", Counter;
}

impl Serialize for MetricName {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.wire())
    }
}

impl<'de> Deserialize<'de> for MetricName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        MetricName::from_wire(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown metric name {name:?}")))
    }
}

/// Traffic direction of a NIC metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Dir {
    Rx,
    Tx,
}

/// The labels keel reads. Exporters attach many more (`UUID`, `Hostname`,
/// `pci_bus_id`, ...); those are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MetricLabels {
    /// GPU index on its node (dcgm-exporter writes it as a string).
    #[serde(default, skip_serializing_if = "Option::is_none", with = "gpu_label")]
    pub gpu: Option<u32>,
    /// Network device (`mlx5_0`, `eth0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<Name>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir: Option<Dir>,
    /// vLLM's served model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model_name: Option<Name>,
    /// A MIG instance of `gpu` (dcgm-exporter's `GPU_I_ID`): a GPU of its own.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "opt_index")]
    pub gpu_instance: Option<u32>,
    /// The cgroup a per-cgroup metric is about, as its path under the
    /// cgroup root (the `cgroup` label of the cgroup exporter:
    /// `/system.slice/slurmstepd.scope/job_12` on cgroup v2,
    /// `/slurm/uid_20821/job_12` on v1). Slurm's job id is the `job_<id>`
    /// component ([`slurm_job_of_cgroup`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<Name>,
}

/// Longest job, node or operation name accepted, in bytes: a DNS name's
/// limit (RFC 1035, 253). Slurm job ids and NCCL operation names are far
/// shorter; a longer name is a forgery meant to fill memory (each held job
/// keeps its name). Checked at the edge, the correlator and the trace reader.
pub const NAME_LEN_MAX: usize = 253;

/// The longest label value keel keeps (bytes). Each kept value is part of
/// a series key held for the series' life; real values are short (a NIC's
/// name, a served model, a cgroup path of a few components), and a longer
/// one is refused where it enters, with the label named.
pub const LABEL_VALUE_MAX: usize = 512;

impl MetricLabels {
    /// Checks the kept values' lengths against [`LABEL_VALUE_MAX`].
    ///
    /// # Errors
    /// Names the first label that is too long, and its length.
    pub fn check(&self) -> Result<(), String> {
        for (label, value) in [
            ("device", &self.device),
            ("model_name", &self.model_name),
            ("cgroup", &self.cgroup),
        ] {
            if let Some(v) = value.as_deref().filter(|v| v.len() > LABEL_VALUE_MAX) {
                return Err(format!(
                    "label `{label}` is {} bytes, more than {LABEL_VALUE_MAX}",
                    v.len()
                ));
            }
        }
        Ok(())
    }
}

/// The Slurm job id a cgroup path names (its last `job_<id>` component:
/// `/system.slice/slurmstepd.scope/job_12/step_0` gives `12`), or `None`
/// when the cgroup is not a Slurm job's (a user slice, a service).
pub fn slurm_job_of_cgroup(path: &str) -> Option<&str> {
    path.split('/')
        .rev()
        .filter_map(|c| c.strip_prefix("job_"))
        .find(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_digit()))
}

mod opt_index {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(g) => s.serialize_str(&g.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let raw = <Option<std::borrow::Cow<'de, str>>>::deserialize(d)?;
        match raw {
            None => Ok(None),
            Some(r) => r.trim().parse::<u32>().map(Some).map_err(|_| {
                serde::de::Error::custom(format!("gpu_instance label {r:?} is not an index"))
            }),
        }
    }
}

/// Prometheus label values are strings; the GPU index is written `"3"`.
mod gpu_label {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(gpu: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
        match gpu {
            Some(g) => s.serialize_str(&g.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
        let raw = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        raw.trim()
            .parse::<u32>()
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("gpu label {raw:?} is not an index")))
    }
}
