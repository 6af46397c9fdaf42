//! `keel replay`: a trace in, findings out (JSON Lines, one per episode).

use anyhow::{Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use keel_adapters::{open_trace, ReadStats};
use keel_detect::edge::{EdgeConfig, EdgePipeline};
use keel_detect::{Engine, EngineStats};
use keel_model::Finding;
use std::io::{IsTerminal, Write};
use std::path::Path;

/// Everything a replay learned besides its findings.
pub struct ReplayReport {
    pub read: ReadStats,
    pub engine: EngineStats,
}

/// Replays `trace` through a fresh engine, handing each finding to `sink` as
/// it is concluded. A progress bar is drawn on stderr when it is a terminal.
/// With `edge`, collectives go through per-node edge aggregation first (as
/// sensors do in a live cluster) and the engine sees window summaries.
pub fn replay(
    trace: &Path,
    edge: bool,
    mut sink: impl FnMut(&Finding) -> Result<()>,
) -> Result<ReplayReport> {
    let mut reader = open_trace(trace).context("opening the trace")?;
    let total = std::fs::metadata(trace).map(|m| m.len()).unwrap_or(0);
    let bar = (std::io::stderr().is_terminal() && total > 16 << 20).then(|| {
        let b = ProgressBar::new(total);
        b.set_style(
            ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
            )
            .expect("static template"),
        );
        b
    });
    let mut pipeline = EdgePipeline::new(EdgeConfig::default(), Engine::default());
    let mut out = Vec::new();
    let mut n: u64 = 0;
    while let Some(record) = reader.next_ref() {
        if edge {
            pipeline.push(record, record.ts(), &mut out);
        } else {
            pipeline.engine.push(record, &mut out);
        }
        for f in out.drain(..) {
            sink(&f)?;
        }
        n += 1;
        if n.is_multiple_of(65_536) {
            if let Some(b) = &bar {
                b.set_position(reader.bytes_read());
            }
        }
    }
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let read = reader.stats().clone();
    if read.records == 0 && read.malformed > 0 {
        // Not a trace at all (compressed, binary, another format): saying
        // "0 findings" and succeeding would read as a clean bill of health.
        let first = read
            .errors
            .first()
            .map_or_else(String::new, |e| format!(" (first: {e})"));
        anyhow::bail!(
            "{}: no record could be read: all {} non-blank lines are malformed{first}; is it an uncompressed JSON Lines trace?",
            trace.display(),
            read.malformed
        );
    }
    Ok(ReplayReport {
        read,
        engine: pipeline.engine.stats(),
    })
}

/// Replays and collects every finding.
pub fn replay_all(trace: &Path, edge: bool) -> Result<(Vec<Finding>, ReplayReport)> {
    let mut findings = Vec::new();
    let report = replay(trace, edge, |f| {
        findings.push(f.clone());
        Ok(())
    })?;
    Ok((findings, report))
}

/// The summary printed on stderr after a replay.
pub fn summary(report: &ReplayReport) -> String {
    let e = &report.engine;
    let mut s = format!(
        "{}detector: {} records, {} findings, {} collectives judged ({} with missing ranks, {} dropped), {} counter resets, {} stale samples ignored",
        report.read,
        e.records,
        e.findings,
        e.straggler.collectives,
        e.straggler.judged_incomplete,
        e.straggler.dropped_incomplete,
        e.counter_resets,
        e.stale_samples
    );
    if e.series_dropped > 0 {
        s.push_str(&format!(
            "\n{} samples of new series dropped: more than {} series at once",
            e.series_dropped,
            keel_detect::signals::SERIES_MAX
        ));
    }
    let n = &e.neighbor;
    if n.nodes_dropped + n.starvers_dropped + n.cgroups_skipped > 0 {
        s.push_str(&format!(
            "\nnoisy_neighbor bounds: {} starved nodes, {} starving findings and {} cgroups left out",
            n.nodes_dropped, n.starvers_dropped, n.cgroups_skipped
        ));
    }
    s
}

pub fn run(trace: &Path, out: Option<&Path>, quiet: bool, edge: bool) -> Result<()> {
    let mut writer: Box<dyn Write> = match out {
        Some(p) => Box::new(std::io::BufWriter::new(
            std::fs::File::create(p).with_context(|| format!("creating {}", p.display()))?,
        )),
        None => Box::new(std::io::BufWriter::new(std::io::stdout().lock())),
    };
    let report = replay(trace, edge, |f| {
        serde_json::to_writer(&mut writer, f)?;
        writer.write_all(b"\n")?;
        Ok(())
    })?;
    writer.flush()?;
    if !quiet {
        eprintln!("{}", summary(&report));
    }
    Ok(())
}
