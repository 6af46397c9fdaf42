//! keel's edge to the outside world.
//!
//! Sources turn what a cluster emits into `keel_model::Record`s for the
//! detectors (`sources::SourceConfig` is the registry a sensor config
//! names them from, by `type`); executors carry planned actions out (`executors/`: Slurm,
//! HAProxy, a webhook, the NIC, a GPU's leftover processes). Each source
//! is one module under `sources/`:
//! - `replay`: a tolerant, streaming reader of the JSON Lines format of
//!   `spec/trace-format.md`, which real recorders and other people's
//!   generators write too;
//! - `prometheus` and `scrape`: exporters' text exposition, parsed sans-IO
//!   and fetched live over HTTP/1.1;
//! - `linux`: TCP, interface and CPU-pressure counters from `/proc` and `/sys`;
//! - `push`: datagrams of trace records (JSON lines or MessagePack) that ranks
//!   and agents send, such as collective timings; `push_peer` decides what
//!   each sending process may report, by its Slurm job (`proc_job`);
//! - `nvml`: GPU readings from the driver's NVML (the `nvml` feature);
//! - `nccl_inspector`: NCCL's own per-rank collective records, tailed from
//!   the NCCL Inspector profiler plugin's dump files.

pub mod executors;
pub mod http_client;
pub mod proc_job;
pub mod sources;

pub use executors::gpu_process::GpuProcessExecutor;
pub use executors::haproxy::HaproxyExecutor;
pub use executors::nic::NicExecutor;
pub use executors::slurm::{SlurmExecutor, SlurmJob, SlurmNode};
pub use executors::webhook::WebhookExecutor;
pub use executors::{
    Applied, Change, ChangeStatus, ExecCommand, ExecError, Executor, Journal, Outcome,
};

pub use sources::linux::{IfaceFilter, LinuxError, LinuxSource, LinuxStats};
pub use sources::nccl_inspector::{InspectorStats, InspectorTail, NcclInspectorConfig};
pub use sources::nvml::{samples_of as nvml_samples_of, GpuReading, MemoryBytes};
#[cfg(feature = "nvml")]
pub use sources::nvml::{Nvml, NvmlError, NvmlStats};
pub use sources::push::{
    decode_datagram, Decoded, PushAddr, PushEndpoint, PushError, PushOptions, RecvStats,
};
pub use sources::replay::{open_trace, read_all, ReadStats, TraceReader};
pub use sources::scrape::{scrape, ScrapeError, ScrapeErrorKind, ScrapeTarget, Url};
pub use sources::trace_line::{parse_line, LineError, Parsed};
pub use sources::{Source, SourceConfig, SourceCounters, Timed};
