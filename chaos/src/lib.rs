//! Scenario generator for keel: simulated GPU inference clusters whose
//! telemetry (job topology, per-rank collective timings, dcgm-exporter,
//! node-exporter, vLLM and DPU metrics) is written as a trace in the format of
//! `spec/trace-format.md`, together with a label file that says which faults
//! were injected, where and when. Traces carry the dirt real collectors ship
//! (clock skew, gaps, counter resets, late and malformed lines, unknown
//! records) and faults' look-alikes that must not be flagged, so that keel's
//! detectors can be scored on them. Output is a pure function of the scenario,
//! the seed and the options.
//!
//! `live`, `testbed` and `faults` are the other half: `keel chaos run`
//! builds a test cluster of network-namespace nodes on one machine, runs a
//! real MPI workload across them and injects real faults (CPU quota,
//! `tbf`, nftables drops) on a schedule, writing the labels as it goes.

mod build;
mod cgroups;
mod cluster;
mod collectives;
mod fabric;
pub mod faults;
mod gen;
mod inject;
pub mod live;
mod netsig;
mod plan;
mod rng;
mod scenarios;
mod serving;
mod signals;
mod sweep;
pub mod testbed;
mod vllm;
mod writer;

#[cfg(test)]
mod tests;

use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// A scenario's name and a one-line description.
#[derive(Debug, Clone, Copy)]
pub struct ScenarioInfo {
    pub name: &'static str,
    pub about: &'static str,
}

/// Every scenario `generate` knows.
pub fn scenarios() -> &'static [ScenarioInfo] {
    scenarios::SCENARIOS
}

#[derive(Debug, Default, Clone)]
pub struct GenOptions {
    /// Trace length in seconds, instead of the scenario's own.
    pub duration_s: Option<f64>,
}

/// What was written.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSummary {
    /// Lines in the trace, nuisance lines included.
    pub records: u64,
    pub labels: u64,
    /// Trace start and end, true time.
    pub start: f64,
    pub end: f64,
}

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    #[error("unknown scenario {name:?}; known scenarios: {known}")]
    UnknownScenario { name: String, known: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> ChaosError {
    let path = path.into();
    move |source| ChaosError::Io { path, source }
}

/// Writes the trace of `scenario` for `seed` to `trace`, its labels to `labels`.
pub fn generate(
    scenario: &str,
    seed: u64,
    opts: &GenOptions,
    trace: &mut dyn Write,
    labels: &mut dyn Write,
) -> Result<GenSummary, ChaosError> {
    let plan = scenarios::build(scenario, seed, opts)?;
    let targets = (Path::new("trace"), Path::new("labels"));
    write_plan(&plan, seed, trace, labels, targets).map(|(s, _)| s)
}

/// Writes `dir/trace.jsonl` and `dir/labels.jsonl`, creating `dir`.
pub fn generate_to_dir(
    scenario: &str,
    seed: u64,
    opts: &GenOptions,
    dir: &Path,
) -> Result<GenSummary, ChaosError> {
    // An unknown name fails before anything is created.
    let plan = scenarios::build(scenario, seed, opts)?;
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let trace_path = dir.join("trace.jsonl");
    let labels_path = dir.join("labels.jsonl");
    let mut trace = std::fs::File::create(&trace_path).map_err(io_err(&trace_path))?;
    let mut labels = std::fs::File::create(&labels_path).map_err(io_err(&labels_path))?;
    let targets = (trace_path.as_path(), labels_path.as_path());
    write_plan(&plan, seed, &mut trace, &mut labels, targets).map(|(s, _)| s)
}

/// `names` says what to call the two outputs in errors.
fn write_plan(
    plan: &plan::Plan,
    seed: u64,
    trace: &mut dyn Write,
    labels: &mut dyn Write,
    names: (&Path, &Path),
) -> Result<(GenSummary, writer::Stats), ChaosError> {
    let stats = gen::run(plan, seed, trace).map_err(io_err(names.0))?;
    let label_list = plan.labels();
    let mut buf = Vec::new();
    for l in &label_list {
        serde_json::to_writer(&mut buf, l).expect("labels serialise");
        buf.push(b'\n');
    }
    labels
        .write_all(&buf)
        .and_then(|_| labels.flush())
        .map_err(io_err(names.1))?;
    let summary = GenSummary {
        records: stats.lines,
        labels: label_list.len() as u64,
        start: plan.cluster.ts0,
        end: plan.cluster.end(),
    };
    Ok((summary, stats))
}

/// The evaluation corpus: (scenario, seed) pairs covering every scenario but
/// `large`, several seeds of the straggler scenarios.
pub fn corpus() -> Vec<(&'static str, u64)> {
    let mut c = Vec::new();
    for s in scenarios() {
        let seeds: &[u64] = match s.name {
            "large" => &[],
            "straggler-pcie" | "straggler-host" | "straggler-network" | "straggler-gpu"
            | "straggler-no-dpu" => &[1, 2, 3],
            "pcie-saturation" | "host-cpu-bottleneck" | "intra-node-gpu-skew" => &[1, 2, 3, 4],
            "straggler-pcie-saturated"
            | "straggler-host-launch"
            | "straggler-back-to-back"
            | "straggler-habitual"
            | "collective-hang"
            | "swap-thrashing"
            | "oom-kill"
            | "tail-latency"
            | "ingress-burst" => &[1, 2],
            "network-congestion" => &[1, 2, 3, 4],
            "straggler-tp2" | "straggler-cross-node" | "gpu-squatter" | "noisy" | "healthy" => {
                &[1, 2]
            }
            _ => &[1],
        };
        c.extend(seeds.iter().map(|&seed| (s.name, seed)));
    }
    c
}
