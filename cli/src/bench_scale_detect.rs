//! The stragglers of `keel bench scale`: chaos scenarios with stragglers of
//! every cause, replayed through the sensors' edge aggregation and the
//! detectors (as `keel eval --edge` does); for each labelled straggler, the
//! first finding that names it, and how long after its onset (trace time)
//! the detector concluded.

use anyhow::Result;
use keel_chaos::{generate_to_dir, GenOptions};
use keel_detect::score::LATE_SLACK_S;
use keel_model::{Finding, FindingKind, Label};
use std::path::Path;

/// The scenarios replayed, one straggler cause each.
pub const SCENARIOS: [&str; 4] = [
    "straggler-gpu",
    "straggler-pcie",
    "straggler-host",
    "straggler-network",
];

/// A straggler the detector found.
pub struct Detected {
    pub finding: Finding,
    /// Onset to finding, seconds of trace time.
    pub detect_s: f64,
}

/// Every straggler of `SCENARIOS` over seeds `1..=seeds`: those found, and
/// how many there were.
pub fn stragglers(dir: &Path, seeds: u64) -> Result<(Vec<Detected>, usize)> {
    let mut found = Vec::new();
    let mut labelled = 0;
    for scenario in SCENARIOS {
        for seed in 1..=seeds {
            let d = dir.join(format!("{scenario}-{seed}"));
            generate_to_dir(scenario, seed, &GenOptions::default(), &d)?;
            let labels: Vec<Label> = crate::eval::read_jsonl(&d.join("labels.jsonl"))?;
            let mut findings = Vec::new();
            crate::replay::replay(&d.join("trace.jsonl"), true, |f| {
                findings.push(f.clone());
                Ok(())
            })?;
            std::fs::remove_dir_all(&d).ok();
            for label in labels.iter().filter(|l| l.kind == FindingKind::TpStraggler) {
                labelled += 1;
                let Some(locus) = label.locus() else {
                    continue;
                };
                let first = findings
                    .iter()
                    .filter(|f| {
                        f.kind == label.kind
                            && f.locus().as_ref() == Some(&locus)
                            && f.ts >= label.onset
                            && f.ts <= label.end + LATE_SLACK_S
                    })
                    .min_by(|a, b| a.ts.total_cmp(&b.ts));
                if let Some(f) = first {
                    found.push(Detected {
                        finding: f.clone(),
                        detect_s: f.ts - label.onset,
                    });
                }
            }
        }
    }
    Ok((found, labelled))
}
