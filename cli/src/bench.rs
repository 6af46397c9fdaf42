//! `keel bench replay`: replay throughput and peak memory on generated
//! traces of growing length, so that "memory does not grow with the trace"
//! is measured, not assumed.

use crate::demo::TempDir;
use anyhow::{Context, Result};
use keel_adapters::open_trace;
use keel_chaos::{generate, GenOptions};
use keel_detect::Engine;
use std::time::Instant;

/// Peak resident memory of this process since the last reset, in KiB.
fn peak_rss_kib() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Resets the peak so that each run measures only itself (Linux 4.0+).
fn reset_peak_rss() {
    let _ = std::fs::write("/proc/self/clear_refs", "5");
}

/// What a benchmark trace holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mix {
    /// The `large` scenario as generated: about 65% metric records (short
    /// labels), 35% collectives.
    Large,
    /// The same trace made metric-heavy as a real scrape is: every
    /// dcgm-exporter sample carries the exporter's own label set (`UUID`,
    /// `device`, `modelName`, `Hostname`, `DCGM_FI_DRIVER_VERSION`), and
    /// each GPU scrape also carries the exporter's other default counters
    /// (`etc/default-counters.csv`: memory clock and temperature, energy,
    /// PCIe replays, copy/encoder/decoder utilisation), which keel reads and
    /// counts but does not use, until metrics are 80% of the records.
    MetricHeavy,
}

/// dcgm-exporter's default counters keel does not use: read, counted as
/// unknown, skipped.
const UNUSED_DCGM: &[&str] = &[
    "DCGM_FI_DEV_MEM_CLOCK",
    "DCGM_FI_DEV_MEMORY_TEMP",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_ENC_UTIL",
    "DCGM_FI_DEV_DEC_UTIL",
];

/// Rewrites a generated trace as `Mix::MetricHeavy` describes.
fn metric_heavy(from: &std::path::Path, to: &std::path::Path) -> Result<()> {
    use std::io::Write;
    let text = std::fs::read(from)?;
    let lines: Vec<&[u8]> = text.split(|&b| b == b'\n').collect();
    let is = |l: &[u8], pat: &str| l.windows(pat.len()).any(|w| w == pat.as_bytes());
    let metrics = lines.iter().filter(|l| is(l, "\"t\":\"metric\"")).count();
    let collectives = lines
        .iter()
        .filter(|l| is(l, "\"t\":\"collective\""))
        .count();
    let scrapes = lines
        .iter()
        .filter(|l| is(l, "\"name\":\"DCGM_FI_DEV_GPU_UTIL\""))
        .count()
        .max(1);
    // metrics + extra = 4 * collectives: 80% of the records.
    let extra = (4 * collectives).saturating_sub(metrics);
    let per_scrape = extra.div_ceil(scrapes);
    let mut out = std::io::BufWriter::new(std::fs::File::create(to)?);
    for raw in lines.iter().take(lines.len().saturating_sub(1)) {
        // The generator's junk lines (not UTF-8) stay as they are.
        let Ok(line) = std::str::from_utf8(raw) else {
            out.write_all(raw)?;
            out.write_all(b"\n")?;
            continue;
        };
        let dcgm = line.contains("\"name\":\"DCGM_");
        let (Some(g0), true) = (line.find("\"labels\":{\"gpu\":\""), dcgm) else {
            writeln!(out, "{line}")?;
            continue;
        };
        let rest = &line[g0 + 17..];
        let Some(g1) = rest.find('"') else {
            writeln!(out, "{line}")?;
            continue;
        };
        let gpu = &rest[..g1];
        let node = line
            .split("\"node\":\"")
            .nth(1)
            .and_then(|r| r.split('"').next())
            .unwrap_or("n00");
        let labels = format!(
            "\"labels\":{{\"gpu\":\"{gpu}\",\"UUID\":\"GPU-5fa3c7e1-1b2d-4c6e-9f0a-{gpu:0>12}\",\"device\":\"nvidia{gpu}\",\"modelName\":\"NVIDIA H200\",\"Hostname\":\"{node}\",\"DCGM_FI_DRIVER_VERSION\":\"550.54.15\"}}"
        );
        let old = format!("\"labels\":{{\"gpu\":\"{gpu}\"}}");
        let line = line.replacen(&old, &labels, 1);
        writeln!(out, "{line}")?;
        if line.contains("\"name\":\"DCGM_FI_DEV_GPU_UTIL\"") {
            let ts = line
                .split("\"ts\":")
                .nth(1)
                .and_then(|r| r.split(',').next())
                .unwrap_or("0");
            for i in 0..per_scrape {
                let name = UNUSED_DCGM[i % UNUSED_DCGM.len()];
                writeln!(
                    out,
                    "{{\"t\":\"metric\",\"ts\":{ts},\"node\":\"{node}\",\"name\":\"{name}\",{labels},\"value\":{}.0}}",
                    1000 + i
                )?;
            }
        }
    }
    out.flush()?;
    Ok(())
}

/// What `keel bench replay` measures.
pub struct ReplayArgs<'a> {
    pub durations: &'a [f64],
    pub seed: u64,
    pub mix: Mix,
    /// Measure this trace instead of generated ones.
    pub trace: Option<&'a std::path::Path>,
    /// Keep the generated traces in this folder.
    pub keep: Option<&'a std::path::Path>,
    /// Also time reading and detecting apart.
    pub split: bool,
}

pub fn run(a: &ReplayArgs) -> Result<()> {
    let tmp = TempDir::new("keel-bench")?;
    let dir = match a.keep {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.to_path_buf()
        }
        None => tmp.0.clone(),
    };
    println!(
        "{:>10} {:>12} {:>12} {:>10} {:>14} {:>12} {:>10}",
        "trace_s", "lines", "used", "MiB", "lines/s", "MB/s", "peak_RSS"
    );
    if let Some(path) = a.trace {
        return measure(path, None, a.split);
    }
    let (seed, mix) = (a.seed, a.mix);
    for &d in a.durations {
        let path = dir.join(format!("large-{d}.jsonl"));
        {
            let mut trace = std::io::BufWriter::new(
                std::fs::File::create(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
            );
            let mut labels = std::io::sink();
            generate(
                "large",
                seed,
                &GenOptions {
                    duration_s: Some(d),
                },
                &mut trace,
                &mut labels,
            )?;
        }
        if mix == Mix::MetricHeavy {
            let heavy = dir.join(format!("heavy-{d}.jsonl"));
            metric_heavy(&path, &heavy)?;
            std::fs::rename(&heavy, &path)?;
        }
        measure(&path, Some(d), a.split)?;
        if a.keep.is_none() {
            std::fs::remove_file(&path).ok();
        }
    }
    Ok(())
}

/// Replays `path` once through a fresh engine and prints one row.
/// `d`: the trace's length (s) when generated; a given trace shows `-`.
fn measure(path: &std::path::Path, d: Option<f64>, split: bool) -> Result<()> {
    {
        let bytes = std::fs::metadata(path)
            .with_context(|| format!("reading {}", path.display()))?
            .len();
        reset_peak_rss();
        let start = Instant::now();
        let mut reader = open_trace(path)?;
        let mut engine = Engine::default();
        let mut out = Vec::new();
        let mut n = 0u64;
        while let Some(record) = reader.next_ref() {
            engine.push(record, &mut out);
            out.clear();
            n += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        let peak =
            peak_rss_kib().map_or_else(|| "-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        // Every line counts: a sample of a metric keel does not use is read,
        // counted and skipped, as a real scrape's are.
        let lines = reader.stats().lines;
        println!(
            "{:>10} {:>12} {:>12} {:>10.1} {:>14.0} {:>12.1} {:>10}",
            d.map_or_else(|| "-".into(), |d| format!("{d:.0}")),
            lines,
            n,
            bytes as f64 / (1 << 20) as f64,
            lines as f64 / secs,
            bytes as f64 / 1e6 / secs,
            peak
        );
        if split {
            split_times(path)?;
        }
    }
    Ok(())
}

/// The same trace timed in two halves: reading and parsing every record
/// into memory, then the detectors alone over them. Holds the whole trace's
/// records in memory (about 150 bytes each).
fn split_times(path: &std::path::Path) -> Result<()> {
    let start = Instant::now();
    let mut reader = open_trace(path)?;
    let records: Vec<_> = reader.by_ref().collect();
    let read_s = start.elapsed().as_secs_f64();
    let lines = reader.stats().lines;
    let start = Instant::now();
    let mut engine = Engine::default();
    let mut out = Vec::new();
    for record in &records {
        engine.push(record, &mut out);
        out.clear();
    }
    let detect_s = start.elapsed().as_secs_f64();
    println!(
        "  read+parse alone: {:.0} lines/s; detectors alone: {:.0} records/s ({} records)",
        lines as f64 / read_s,
        records.len() as f64 / detect_s,
        records.len()
    );
    Ok(())
}

/// `keel bench ...`
#[derive(clap::Subcommand)]
pub(crate) enum BenchCommand {
    /// Commits/s and commit latency of 3 local controller processes (fsync on), then failover time
    Controller {
        #[arg(long, default_value_t = 10.0)]
        seconds: f64,
        /// Proposals in flight at once
        #[arg(long, default_value_t = 64)]
        concurrency: usize,
    },
    /// Onset-to-committed-finding latency in `keel demo`-like live runs (80 s each)
    Live {
        #[arg(long, value_delimiter = ',', default_values_t = [1, 2, 3, 4, 5])]
        seeds: Vec<u64>,
        #[arg(long, default_value = "live")]
        scenario: String,
    },
    /// Sensor edge aggregation rate (collective events/s on one core) and memory per tracked rank
    Edge {
        #[arg(long, default_value_t = 20_000_000)]
        events: u64,
        /// Collectives per window
        #[arg(long, default_value_t = 2)]
        window_len: u64,
    },
    /// Controller CPU, memory, routing and commit latency on a simulated cluster of N nodes
    Scale(crate::bench_scale::ScaleArgs),
    /// Three controllers for an hour under steady findings, the leader killed every 2 minutes; RSS and state size into a CSV
    Soak(crate::bench_soak::SoakArgs),
    /// Replay throughput (trace lines/s on one core) and peak memory on traces of growing length
    Replay {
        /// Trace lengths to measure, in seconds of trace time
        #[arg(long, value_delimiter = ',', default_values_t = [120.0, 480.0])]
        durations: Vec<f64>,
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// What the trace holds (`metric-heavy`: 80% metric records with
        /// dcgm-exporter's own labels, as a real scrape writes them)
        #[arg(long, value_enum, default_value_t = Mix::Large)]
        mix: Mix,
        /// Measure this trace (spec/trace-format.md) instead of generated ones
        #[arg(long)]
        trace: Option<std::path::PathBuf>,
        /// Keep the generated traces in this folder
        #[arg(long)]
        keep: Option<std::path::PathBuf>,
        /// Also time reading+parsing and the detectors apart (holds the trace's records in memory)
        #[arg(long)]
        split: bool,
    },
}
