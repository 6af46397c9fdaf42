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

pub fn run(durations: &[f64], seed: u64) -> Result<()> {
    let tmp = TempDir::new("keel-bench")?;
    println!(
        "{:>10} {:>12} {:>10} {:>14} {:>12} {:>10}",
        "trace_s", "records", "MiB", "records/s", "MB/s", "peak_RSS"
    );
    for &d in durations {
        let path = tmp.0.join(format!("large-{d}.jsonl"));
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
        let bytes = std::fs::metadata(&path)?.len();
        reset_peak_rss();
        let start = Instant::now();
        let mut reader = open_trace(&path)?;
        let mut engine = Engine::default();
        let mut out = Vec::new();
        let mut n = 0u64;
        for record in reader.by_ref() {
            engine.push(&record, &mut out);
            out.clear();
            n += 1;
        }
        let secs = start.elapsed().as_secs_f64();
        let peak =
            peak_rss_kib().map_or_else(|| "-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0));
        println!(
            "{:>10.0} {:>12} {:>10.1} {:>14.0} {:>12.1} {:>10}",
            d,
            n,
            bytes as f64 / (1 << 20) as f64,
            n as f64 / secs,
            bytes as f64 / 1e6 / secs,
            peak
        );
        std::fs::remove_file(&path).ok();
    }
    Ok(())
}
