//! `keel demo`: a whole cluster's telemetry, generated with faults injected,
//! replayed through the detectors, and told as a timeline with the score.

use crate::eval::{read_jsonl, table};
use crate::replay::replay;
use anyhow::{Context, Result};
use keel_chaos::{generate_to_dir, GenOptions};
use keel_detect::score::score;
use keel_model::{Finding, Label};
use std::path::Path;

pub fn run(scenario: &str, seed: u64, keep: Option<&Path>) -> Result<()> {
    let tmp;
    let dir = match keep {
        Some(d) => d.to_path_buf(),
        None => {
            tmp = TempDir::new("keel-demo")?;
            tmp.0.clone()
        }
    };
    let summary = generate_to_dir(scenario, seed, &GenOptions::default(), &dir)
        .with_context(|| format!("generating scenario {scenario}"))?;
    let labels: Vec<Label> = read_jsonl(&dir.join("labels.jsonl"))?;
    println!(
        "keel demo: scenario `{scenario}` (seed {seed}): {} records over {:.0} s of cluster telemetry, {} injected episodes",
        summary.records,
        summary.end - summary.start,
        labels.len()
    );
    println!("injected (what really happened, hidden from the detectors):");
    for l in &labels {
        println!(
            "  t+{:>6.1}s .. t+{:>6.1}s  {:<20} {:<8} {}",
            l.onset - summary.start,
            l.end - summary.start,
            l.kind.wire(),
            l.cause.map_or("-", |c| c.wire()),
            l.locus().map_or_else(|| "?".into(), |x| x.to_string())
        );
    }
    println!("\nfindings, as keel concluded them:");
    let start = summary.start;
    let mut findings: Vec<Finding> = Vec::new();
    let report = replay(&dir.join("trace.jsonl"), false, |f| {
        print_finding(f, start, &labels);
        findings.push(f.clone());
        Ok(())
    })?;
    println!(
        "\nread {} records ({} malformed lines, {} non-finite values, {} unknown records skipped)",
        report.read.records,
        report.read.malformed,
        report.read.non_finite,
        report.read.unknown_type_count() + report.read.unknown_metric_count()
    );
    println!("\nscore against the injected episodes:");
    print!("{}", table(&score(&labels, &findings)));
    if let Some(d) = keep {
        println!("\ntrace and labels kept in {}", d.display());
    }
    Ok(())
}

fn print_finding(f: &Finding, start: f64, labels: &[Label]) {
    let locus = f.locus().map_or_else(|| "?".into(), |l| l.to_string());
    let truth = labels
        .iter()
        .find(|l| {
            l.kind == f.kind
                && l.locus() == f.locus()
                && f.ts >= l.onset
                && f.ts <= l.end + keel_detect::score::LATE_SLACK_S
        })
        .map_or_else(
            || "matches nothing injected".to_string(),
            |l| {
                format!(
                    "injected at t+{:.1}s, found {:.1} s later{}",
                    l.onset - start,
                    f.ts - l.onset,
                    match l.cause {
                        Some(c) if c != f.cause => format!(", but the cause was {c}"),
                        _ => String::new(),
                    }
                )
            },
        );
    println!(
        "  t+{:>6.1}s  {:<20} {:<24} cause {:<8} {:<8} confidence {:.2}  [{truth}]",
        f.ts - start,
        f.kind.wire(),
        locus,
        f.cause.wire(),
        f.severity,
        f.confidence
    );
    for e in &f.evidence {
        println!("             - {e}");
    }
}

/// A directory removed when dropped.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(TempDir(dir))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
